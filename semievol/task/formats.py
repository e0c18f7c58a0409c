"""Task formats: the chat messages of every prompt (with or without demonstrations) and the
text of an answer (the option's words or letter, an open answer). How answers are read back
and compared is in semievol.task.answers.

Prompts go through the model's own chat template. A `choice` answer is either the option's
words ("billing") or its letter ("B"); the assistant turn holds only that answer, so the
same text is the training target, the scored continuation, and the pseudo-response whose
NLL is the selection entropy.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from semievol.config import TaskConfig

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class Example:
    """One item as the prompt builder sees it."""
    question: str
    options: list[str] | None
    answer: str | None = None  # an option's text for `choice`, free text for `open`


def system_message(task: TaskConfig, options: list[str] | None) -> str:
    parts = [task.instruction.strip() or "Answer the question."]
    if task.kind == "choice" and options:
        if task.answer_format == "letter":
            parts.append("Answer with the letter of the correct option only.")
        elif task.labels:
            parts.append("Answer with exactly one of: " + ", ".join(task.labels) + ".")
        else:
            parts.append("Answer with the text of the correct option only.")
    elif task.open_target == "response":
        parts.append("Reason briefly, then give the final answer on the last line as "
                     "'Answer: ...'.")
    elif task.checker == "numeric":
        parts.append("Answer with the final number only.")
    else:
        parts.append("Answer with the short final answer only.")
    return " ".join(parts)


def user_message(task: TaskConfig, example: Example) -> str:
    text = example.question.strip()
    options = example.options
    if task.kind == "choice" and options:
        if task.answer_format == "letter":
            text += "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        elif not task.labels:  # per-item options must be shown; a fixed label set is in the system turn
            text += "\nOptions:\n" + "\n".join(f"- {o}" for o in options)
    return text


def answer_text(task: TaskConfig, answer: str, options: list[str] | None) -> str:
    """The assistant turn for a gold/pseudo answer (the option's text or its letter; an
    open answer, or 'Answer: ...' when the task asks for reasoning first)."""
    if task.kind == "choice" and task.answer_format == "letter" and options:
        return LETTERS[options.index(answer)]
    if task.kind == "open" and task.open_target == "response":
        return f"Answer: {answer}"
    return answer


def generated_tokens(task: TaskConfig) -> int:
    """Tokens an open answer (or an open reflection) may generate, kept free in the
    context budget: a short answer, or some reasoning before it."""
    return 160 if task.open_target == "response" else 32


def option_continuations(task: TaskConfig, options: list[str]) -> list[str]:
    """What the model must produce for each option, in option order."""
    if task.answer_format == "letter":
        return [LETTERS[i] for i in range(len(options))]
    return list(options)


_ANSWER = "\u2063answer\u2063"  # a stand-in no real answer contains (invisible separators)
_END_OF_TURN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""end_of_turn's answer per tokenizer (with the template it was read from): read once, not
per prompt."""


def end_of_turn(tokenizer) -> str:
    """The text that closes an assistant turn in the model's own chat template: ChatML's
    <|im_end|>, Gemma's <end_of_turn>, Llama 3's <|eot_id|>, Phi-3's <|end|>. A model trained
    to close its answer with the eos token instead (Gemma's is <eos>) would learn a turn end
    its template never shows. The eos token when the template shows none."""
    try:
        template, closing = _END_OF_TURN[tokenizer]
        if template == tokenizer.chat_template:
            return closing
    except (KeyError, TypeError):
        pass
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "?"}, {"role": "assistant", "content": _ANSWER}],
            tokenize=False)
        closing = text.split(_ANSWER, 1)[1].strip() if _ANSWER in text else ""
    except Exception:  # noqa: BLE001 (a template that cannot render this falls back to eos)
        closing = ""
    closing = closing or tokenizer.eos_token or ""
    try:
        _END_OF_TURN[tokenizer] = (tokenizer.chat_template, closing)
    except TypeError:  # a tokenizer that cannot be weakly referenced is asked again
        pass
    return closing


def option_targets(task: TaskConfig, options: list[str], tokenizer) -> list[str]:
    """The continuations scored for each option (collaborators, reflection, eq. 6, evaluation).

    Option words end with the end-of-turn token, so that a short option is not preferred
    just for being a prefix of a longer answer; a letter is one token and needs none (its
    probability is read from the prompt's last position)."""
    eot = end_of_turn(tokenizer) if task.answer_format == "words" else ""
    return [c + eot for c in option_continuations(task, options)]


def answer_target(task: TaskConfig, answer: str, options: list[str] | None, tokenizer) -> str:
    """The assistant turn a model is trained on (and an open answer is scored as): the
    answer's text or letter, closed by the end-of-turn token."""
    return answer_text(task, answer, options) + end_of_turn(tokenizer)


def build_messages(task: TaskConfig, example: Example, demonstrations: list[Example] = (),
                   *, with_answer: bool = False) -> list[dict]:
    """System turn, one user/assistant pair per demonstration, then the question."""
    messages = [{"role": "system", "content": system_message(task, example.options)}]
    for demo in demonstrations:
        messages.append({"role": "user", "content": user_message(task, demo)})
        messages.append({"role": "assistant",
                         "content": answer_text(task, demo.answer, demo.options)})
    messages.append({"role": "user", "content": user_message(task, example)})
    if with_answer:
        messages.append({"role": "assistant",
                         "content": answer_text(task, example.answer, example.options)})
    return messages


def reflection_messages(task: TaskConfig, example: Example, answers: list[str | None]) -> list[dict]:
    """Self-justification (paper step 4): show every collaborator's answer, ask for the right one."""
    listed = "\n".join(f"- Assistant {i + 1}: {a if a is not None else '(no answer)'}"
                       for i, a in enumerate(answers))
    question = user_message(task, example)
    content = (f"{question}\n\nSeveral assistants answered this differently:\n{listed}\n"
               "Consider their answers, then give the correct answer.")
    return [{"role": "system", "content": system_message(task, example.options)},
            {"role": "user", "content": content}]


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The chat-templated prompt text, ending where the assistant's answer starts.

    Some templates refuse a system turn (Gemma 2's raises "System role not supported"); for
    those the system text opens the first user turn, as Gemma's own instructions say."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    except Exception as exc:  # jinja's TemplateError, raised by the template itself
        if not messages or messages[0]["role"] != "system" or "system" not in str(exc).lower():
            raise
    return tokenizer.apply_chat_template(fold_system(messages), tokenize=False,
                                         add_generation_prompt=True)


def fold_system(messages: list[dict]) -> list[dict]:
    """The system turn's text placed at the start of the first user turn."""
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for message in rest:
        if message["role"] == "user":
            message["content"] = f"{system}\n\n{message['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]
