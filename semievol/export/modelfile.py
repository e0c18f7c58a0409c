"""The Ollama Modelfile of an exported model: its prompt exactly as the app built it.

A model answers as trained only when it is asked as trained. The Modelfile therefore carries
the task's instruction and answer format as its SYSTEM prompt (task.formats.system_message,
the system turn of every training and evaluation prompt), and a TEMPLATE taken from the
model's own chat template rather than written by hand per model: the template is rendered
once with stand-ins for the system text and the question, and the stand-ins become Ollama's
`{{ .System }}` and `{{ .Prompt }}`. So a user who sends only the item's text gets the prompt
the round was trained and measured on (a template mismatch is the most common complaint
about exported GGUFs, hiyouga/LLaMA-Factory#6020).
"""

from __future__ import annotations

from semievol.config import TaskConfig
from semievol.task.formats import Example, build_messages, render_prompt, system_message

_SYSTEM, _PROMPT = "\u0000SEMIEVOL-SYSTEM\u0000", "\u0000SEMIEVOL-PROMPT\u0000"


def system_prompt(task: TaskConfig) -> str:
    """The system turn every prompt of the task starts with. It depends on whether an item
    has options, not on which (a label set is named in it; per-item options are written in
    the user turn, as the app does)."""
    options = task.labels or (["(an option)"] if task.kind == "choice" else None)
    return system_message(task, options)


def template(tokenizer) -> str:
    """The model's chat template for one system turn and one question, as an Ollama
    template; the generation prompt (where the answer starts) closes it."""
    rendered = render_prompt(tokenizer, [{"role": "system", "content": _SYSTEM},
                                         {"role": "user", "content": _PROMPT}])
    if _SYSTEM not in rendered or _PROMPT not in rendered:
        raise ValueError("the chat template does not place a system turn before the question")
    return rendered.replace(_SYSTEM, "{{ .System }}").replace(_PROMPT, "{{ .Prompt }}")


def fill(template_text: str, system: str, prompt: str) -> str:
    """What Ollama sends the model for `template_text` (tests check it is the app's prompt)."""
    return template_text.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt)


def user_text(task: TaskConfig, question: str, options: list[str] | None = None) -> str:
    """What a user sends for an item: its text (with its options, for per-item options)."""
    return build_messages(task, Example(question, options))[-1]["content"]


def modelfile(model_file: str, tokenizer, task: TaskConfig) -> str:
    """An Ollama Modelfile: the GGUF, the task's SYSTEM prompt, the template from the model's
    chat template, its stop tokens, greedy decoding."""
    stops = [t for t in dict.fromkeys([tokenizer.eos_token, "<|im_end|>", "<|eot_id|>",
                                       "<end_of_turn>", "<|end|>"])
             if t and t in (tokenizer.chat_template or "") + (tokenizer.eos_token or "")]
    system = system_prompt(task).replace('"""', '\\"\\"\\"')
    lines = [f"FROM ./{model_file}", f'SYSTEM """{system}"""',
             f'TEMPLATE """{template(tokenizer)}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += ["PARAMETER temperature 0", ""]
    return "\n".join(lines)
