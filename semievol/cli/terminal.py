"""Progress on a terminal: a tqdm bar per stage, or plain throttled lines in a log file.

Every long step reports `progress(done, total, message)`; `terminal_progress` turns that
into what a person reading a terminal (or a background run's log) can follow, and
`step_banner` prints which step of how many starts.
"""

from __future__ import annotations

import re
import sys
import time

LOG_INTERVAL = 5.0  # seconds between plain progress lines in a log


def terminal_progress(desc: str = ""):
    """A Progress callback (done, total, message): a tqdm bar on a terminal, one bar per
    stage (a new bar when the total changes or the count goes back); in a log file (a
    background run) plain lines at most every LOG_INTERVAL seconds, so logs stay readable."""
    from tqdm import tqdm

    state = {"bar": None, "total": None, "last": 0.0, "done": -1}
    interactive = sys.stderr.isatty()

    def update(done: int, total: int, message: str = desc):
        if not interactive:
            now = time.time()
            if done >= total or now - state["last"] >= LOG_INTERVAL:
                print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)
                state["last"] = now
            return
        bar = state["bar"]
        if bar is None or total != state["total"] or done < state["done"]:
            if bar is not None:
                bar.close()
            bar = state["bar"] = tqdm(total=total, unit="it", leave=True, file=sys.stderr)
            state["total"] = total
        state["done"] = done
        bar.set_description_str(message, refresh=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            state["bar"] = None

    return update


def step_banner(round_number: int):
    """An on_step callback: "== round 1, step 2/5: label" on stderr."""
    def banner(index: int, count: int, name: str) -> None:
        where = f"step {index + 1}/{count}: " if count > 1 else ""
        print(f"== round {round_number}, {where}{name}", file=sys.stderr, flush=True)
    return banner


_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text) -> str:
    """Stored text as a terminal should show it: control characters (an escape sequence
    starts with one) written as \\xNN, so a name or note from the workspace cannot move the
    cursor or recolour the screen."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
