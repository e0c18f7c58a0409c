"""A percentage estimated from a sample, in words: with its n, with its interval while n is
small, and not at all before there is enough of a sample to mean something.

The one rule for every page, the CLI and the model card. A walk through the app showed
"Estimated error rate 0 %" in large type after 1 of 20 audit items (its interval 0-96 %; by
the hidden truth the selection was 34 % wrong), and the Rounds chart plotted that audit as
100 % precision.
"""

from __future__ import annotations

MIN_SAMPLE = 10
"""Below this many sampled items no percentage is shown."""
SMALL_SAMPLE = 100
"""Below this many the 95 % interval is written beside the percentage."""


def enough(n: int | None) -> bool:
    """Whether a sample of `n` items is enough to show its percentage."""
    return bool(n) and n >= MIN_SAMPLE


def sampled_percent(share: float | None, n: int | None, interval=None, *,
                    need: str = "audit at least") -> str:
    """"66% (n=12, 95% 39%–86%)", "91% (n=240)", or "–, audit at least 10 (3 so far)".
    `need` says what it takes to get an estimate (an audit, calibration items)."""
    if share is None or not enough(n):
        return f"–, {need} {MIN_SAMPLE}" + (f" ({n} so far)" if n else "")
    text = f"{share:.0%} (n={n}"
    if interval is not None and n < SMALL_SAMPLE:
        text += f", 95% {interval[0]:.0%}–{interval[1]:.0%}"
    return text + ")"
