"""`semievol round` in a real terminal (a pseudo-terminal here) draws tqdm bars for the
warm-up, the labeling and the evaluation; in a log file it writes plain lines instead."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time

from test_engine_cli import COLLABORATORS, ENV, ROOT, build_workspace

BAR = re.compile(r"100%\|[^|\n\r]*\| (\d+)/\1 ")  # a finished tqdm bar: "100%|████| 6/6 "


def run_in_terminal(args: list[str], timeout: float = 300) -> str:
    """The process's terminal output (stdout and stderr on one pseudo-terminal)."""
    main, child = pty.openpty()
    # A terminal 120 columns wide (a fresh pseudo-terminal says 0, and tqdm draws nothing).
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(args, cwd=ROOT, env=ENV, stdin=child,
                               stdout=child, stderr=child, close_fds=True)
    os.close(child)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(main, 65536)
        except OSError:  # the other end closed: the process has exited
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert process.wait(timeout=30) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_a_round_in_a_terminal_shows_bars_for_warmup_labeling_and_evaluation(
        tmp_path, tiny_model_dir):
    ws = build_workspace(tmp_path / "ws", tmp_path / "files")
    out = run_in_terminal([sys.executable, "-m", "semievol", "round", str(ws), "--no-review",
                           "--model", str(tiny_model_dir), "--dtype", "float32",
                           "--max-steps", "2", "--min-steps", "0", "--batch-size", "4",
                           "--calibration", "0.25", "--unlabeled-limit", "6",
                           "--collaborators", COLLABORATORS])
    lines = re.split(r"[\r\n]+", out)
    finished = [line for line in lines if BAR.search(line)]
    for what in ("loss", "collaborators done", "pseudo-labels", "scoring"):
        assert any(what in line for line in finished), (what, finished)
    # Bars, not the log-file form ("[6/6] scoring") a background run writes.
    assert not any(re.match(r"\[\d+/\d+\] ", line) for line in lines), out[-2000:]
