"""Numbers as people write them, read one way everywhere: the numeric checker's answers
(a model's response, a gold answer at import, a reviewer's typed answer) all go through
`read_numbers`, and whoever shows a reading says what was read ("'1,00,000' read as
100000") when it differs from what was written.

What is read:
- a sign (also the Unicode minus), a currency sign, a trailing percent sign (dropped);
- digit groups: 1,000,000 and 1.000.000 (groups of three), the Indian 1,00,000, groups
  set off by a thin or no-break space or an apostrophe (1 000, 1'000), or a plain space
  before exactly three digits;
- a decimal part: the last separator when both a comma and a point are used (1,000.50 and
  1.000,50 are both 1000.5); a point alone is a decimal point (1.5), a comma alone a
  grouping (1,000) or a list (1,5 is the numbers 1 and 5);
- an exponent (2.5e3) and a fraction (3/4 is 0.75);
- a number too large for a float (1e400) is no number: `overflowed` says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MINUS = "-\u2212"
_GROUP = "[,.\u00a0\u202f\u2009' ]"
_TOKEN = re.compile(
    r"(?<![\w.,/])(?P<sign>[-+\u2212]?)\s?[$\u20ac\u00a3\u20b9]?\s?"
    r"(?P<body>\d+(?:" + _GROUP + r"\d+)*(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<denominator>\d+))?"
    r"(?:[eE](?P<exponent>[-+]?\d+))?%?(?![\w])")


@dataclass(frozen=True)
class Reading:
    written: str        # the number as the text writes it, e.g. "1,00,000"
    value: float        # what it reads as (finite)
    start: int          # where it stands in the text
    end: int

    @property
    def plain(self) -> str:
        """The value as a pseudo-label or stored answer: 27, -3.5, 100000."""
        return plain(self.value)

    def described(self) -> str:
        """"'1,00,000' read as 100000", or the plain form alone when it is what was written."""
        if self.written.strip() == self.plain:
            return self.plain
        return f"{self.written.strip()!r} read as {self.plain}"


def plain(value: float) -> str:
    """A finite number written plainly: 27, -3.5, 1250000 (no separators, no trailing
    zeros)."""
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".12g")


def _groups_of_three(parts: list[str]) -> bool:
    return 1 <= len(parts[0]) <= 3 and all(len(p) == 3 for p in parts[1:])


def _indian(parts: list[str]) -> bool:
    """1,00,000 and 12,34,567: a last group of three, the ones before it of two."""
    return len(parts) >= 3 and 1 <= len(parts[0]) <= 2 and len(parts[-1]) == 3 and \
        all(len(p) == 2 for p in parts[1:-1])


def _digits(body: str) -> list[str] | None:
    """The body as plain digits with at most one '.' (its decimal point), or None when its
    separators are no number's (the caller then reads its pieces as separate numbers)."""
    separators = [c for c in body if not c.isdigit()]
    if not separators:
        return [body]
    if body.startswith("."):
        return [body] if separators == ["."] else None
    marks = set(separators)
    if {",", "."} <= marks:
        decimal = "." if body.rfind(".") > body.rfind(",") else ","
        whole, _, fraction = body.rpartition(decimal)
        grouping = "," if decimal == "." else "."
        parts = whole.split(grouping)
        if set(whole) - set("0123456789" + grouping) or not (
                _groups_of_three(parts) or _indian(parts)) or not fraction.isdigit():
            return None
        return ["".join(parts) + "." + fraction]
    if len(marks) > 1:
        return None
    mark = separators[0]
    parts = body.split(mark)
    if mark == ".":
        if len(parts) == 2:
            return [body]                          # 1.5
        return ["".join(parts)] if _groups_of_three(parts) else None   # 1.000.000
    if mark == ",":
        return ["".join(parts)] if _groups_of_three(parts) or _indian(parts) else None
    return ["".join(parts)] if _groups_of_three(parts) else None       # 1 000, 1'000


_PIECE = re.compile(r"\d+(?:\.\d+)?")


def _value(digits: str, match: re.Match, *, whole: bool) -> float:
    """The number `digits` (plain, one decimal point at most) with the match's exponent,
    fraction and sign when it stands for the whole match; inf when it overflows."""
    try:
        value = float(digits + (f"e{match['exponent']}" if whole and match["exponent"] else ""))
        if whole and match["denominator"] is not None:
            denominator = float(match["denominator"])
            value = value / denominator if denominator else math.nan
    except OverflowError:
        return math.inf
    return -value if match["sign"] and match["sign"] in MINUS else value


def _scan(text: str) -> tuple[list[Reading], list[str]]:
    """(the readings, the numbers written that overflow a float)."""
    readings, overflowed = [], []
    for match in _TOKEN.finditer(text):
        digits = _digits(match["body"])
        if digits is not None:
            pieces = [(digits[0], match.group(0), match.start(), match.end(), True)]
        else:  # separators that make no one number (1,5 or 3 4): each run its own number
            offset = match.start("body")
            pieces = [(m.group(0), m.group(0), offset + m.start(), offset + m.end(), False)
                      for m in _PIECE.finditer(match["body"])]
        for digits_, written, start, end, whole in pieces:
            value = _value(digits_, match, whole=whole or start == match.start("body"))
            if math.isinf(value):
                overflowed.append(written.strip())
            elif not math.isnan(value):
                readings.append(Reading(written, value, start, end))
    return readings, overflowed


def read_numbers(text: str) -> list[Reading]:
    """Every number in `text`, in order."""
    return _scan(text)[0]


def read_number(text: str) -> Reading | None:
    """The first number in `text`, or None."""
    found = read_numbers(text)
    return found[0] if found else None


def overflowed(text: str) -> list[str]:
    """The numbers `text` writes that are too large to compare (1e400)."""
    return _scan(text)[1]
