"""How an answer is read and compared: the option a response names, an open answer's text
or number as the task's checker reads it, and whether two answers are the same.

Every step that compares answers (agreement, reflection, evaluation, the calibration slice,
a reviewer's typed answer) goes through `extract_answer` and `same_answer`/`is_correct`.
"""

from __future__ import annotations

import re

from semievol.config import TaskConfig
from semievol.task.formats import LETTERS
from semievol.task.numbers import read_number, read_numbers


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


_PREAMBLE = re.compile(
    r"^\s*(?:so\s*,?\s*|therefore\s*,?\s*|thus\s*,?\s*)?(?:the\s+)?(?:final\s+|correct\s+|"
    r"short\s+)?(?:answer|result|solution)\s*(?:is|would be|will be)?\s*[:=\-]?\s*", re.I)


def extract_answer(task: TaskConfig, text: str | None) -> str | None:
    """The answer a response gives, as the task's checker compares it (None: it gives none).

    - numeric: the number after a `####` marker, else inside the last `\\boxed{}`, else
      after an "answer is" / "Answer:" phrase, else the last number in the text; written
      plainly (semievol.task.numbers: separators and currency dropped, the sign kept);
    - normalized: the first line without an answer preamble ("The correct answer is",
      "Answer:"), quotes, markdown emphasis and a final full stop;
    - exact: the first non-empty line without a leading "Answer:".
    Choice tasks name an option instead (`parse_choice`)."""
    if text is None:
        return None
    if task.checker == "numeric":
        for marker in (r"####\s*([^\n]*)", r"\\boxed\{([^{}]*)\}",
                       r"(?:final\s+answer|answer|result)\s*(?:is|:|=)\s*([^\n]*)"):
            found = [m for m in re.findall(marker, text, flags=re.I) if read_numbers(m)]
            if found:
                return read_numbers(found[-1])[0].plain
        numbers = read_numbers(text)
        return numbers[-1].plain if numbers else None
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
    found = read_number(text)
    return None if found is None else found.value


def is_correct(task: TaskConfig, predicted: str | None, gold: str) -> bool:
    """Compare an answer with the gold one: options by normalised text; open answers by the
    task's checker (exact, normalised text, numeric within a relative tolerance)."""
    if predicted is None:
        return False
    if task.kind == "open":
        return same_answer(task, predicted, gold)
    return normalize(predicted) == normalize(gold)
