"""Task formats: chat prompts (with or without demonstrations), answers, parsing, checkers.

Prompts go through the model's own chat template. A `choice` answer is either the option's
words ("billing") or its letter ("B"); the assistant turn holds only that answer, so the
same text is the training target, the scored continuation, and the pseudo-response whose
NLL is the selection entropy.
"""

from __future__ import annotations

import re
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


def end_of_turn(tokenizer) -> str:
    """The token that closes an assistant turn (ChatML: <|im_end|>)."""
    return tokenizer.eos_token or ""


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
    """The chat-templated prompt text, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# -- parsing and checking ----------------------------------------------------------------
def normalize(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"[^\w\s.-]", " ", text)
    return re.sub(r"\s+", " ", text).strip(" .")


def parse_choice(text: str, options: list[str], answer_format: str) -> str | None:
    """The option a free-text response names, or None."""
    stripped = text.strip()
    if answer_format == "letter":
        # "B", "B.", "(B) ...", but not the capital of a word answer such as "Billing".
        match = re.match(r"^\(?([A-Z])(?:[\).:\s]|$)", stripped)
        if match and LETTERS.index(match.group(1)) < len(options):
            return options[LETTERS.index(match.group(1))]
    norm = normalize(stripped)
    for option in options:
        if normalize(option) == norm:
            return option
    # The earliest option mentioned in the response wins.
    found = [(norm.find(normalize(o)), o) for o in options if normalize(o) and normalize(o) in norm]
    return min(found)[1] if found else None


def parse_open(text: str) -> str:
    """First non-empty line, without a leading 'Answer:'."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(final\s+)?answer\s*[:\-]\s*", "", line, flags=re.I).strip()
        if line:
            return line
    return ""


# A number as people write it: sign (also the Unicode minus), currency, thousands
# separators in groups of three, decimals, an exponent; a percent sign is dropped.
_NUMBER = re.compile(r"(?<![\w.])([-+\u2212]?)\s?[$\u20ac\u00a3]?\s?"
                     r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE]([-+]?\d+))?")
_PREAMBLE = re.compile(
    r"^\s*(?:so\s*,?\s*|therefore\s*,?\s*|thus\s*,?\s*)?(?:the\s+)?(?:final\s+|correct\s+|"
    r"short\s+)?(?:answer|result|solution)\s*(?:is|would be|will be)?\s*[:=\-]?\s*", re.I)


def _numbers(text: str) -> list[float]:
    out = []
    for sign, digits, exponent in _NUMBER.findall(text):
        value = float(digits.replace(",", "") + (f"e{exponent}" if exponent else ""))
        out.append(-value if sign in ("-", "\u2212") else value)
    return out


def format_number(value: float) -> str:
    """A number as a pseudo-label: 27, -3.5, 1250000 (no separators, no trailing zeros)."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".12g")


def extract_answer(task: TaskConfig, text: str | None) -> str | None:
    """The answer a response gives, as the task's checker compares it (None: it gives none).

    - numeric: the number after a `####` marker, else inside the last `\\boxed{}`, else
      after an "answer is" / "Answer:" phrase, else the last number in the text; written
      plainly (thousands separators and currency dropped, the sign kept);
    - normalized: the first line without an answer preamble ("The correct answer is",
      "Answer:"), quotes, markdown emphasis and a final full stop;
    - exact: the first non-empty line without a leading "Answer:".
    Choice tasks name an option instead (`parse_choice`)."""
    if text is None:
        return None
    if task.checker == "numeric":
        for marker in (r"####\s*([^\n]*)", r"\\boxed\{([^{}]*)\}",
                       r"(?:final\s+answer|answer|result)\s*(?:is|:|=)\s*([^\n]*)"):
            found = [m for m in re.findall(marker, text, flags=re.I) if _numbers(m)]
            if found:
                return format_number(_numbers(found[-1])[0])
        numbers = _numbers(text)
        return format_number(numbers[-1]) if numbers else None
    if task.checker == "exact":
        return parse_open(text) or None
    for line in text.strip().splitlines():
        line = _PREAMBLE.sub("", line).strip()
        line = re.sub(r"^[\s\"'*_`]+|[\s\"'*_`]+$", "", line)
        line = re.sub(r"[.!]+$", "", line).strip()
        if line:
            return line
    return None


def same_answer(task: TaskConfig, a: str | None, b: str | None) -> bool:
    """Whether two answers are the same by the task's checker (agreement, reflection,
    evaluation); options and normalised text compare normalised, numbers within tolerance."""
    if a is None or b is None:
        return False
    if task.kind == "open" and task.checker == "numeric":
        x, y = _number(a), _number(b)
        return x is not None and y is not None and \
            abs(x - y) <= task.tolerance * max(1.0, abs(x), abs(y))
    if task.kind == "open" and task.checker == "exact":
        return a.strip() == b.strip()
    return normalize(a) == normalize(b) if task.kind == "open" else a == b


def distinct_answers(task: TaskConfig, answers) -> list[str]:
    """The answers with repeats by the checker removed, first appearance first."""
    out: list[str] = []
    for a in answers:
        if a is not None and not any(same_answer(task, a, b) for b in out):
            out.append(a)
    return out


def _number(text: str) -> float | None:
    numbers = _numbers(text)
    return numbers[0] if numbers else None


def is_correct(task: TaskConfig, predicted: str | None, gold: str) -> bool:
    """Compare an answer with the gold one: options by normalised text; open answers by the
    task's checker (exact, normalised text, numeric within a relative tolerance)."""
    if predicted is None:
        return False
    if task.kind == "open":
        return same_answer(task, predicted, gold)
    return normalize(predicted) == normalize(gold)
