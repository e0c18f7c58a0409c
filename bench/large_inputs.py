"""Large inputs through the real CLI, as a user brings them: memory and time.

    .venv/bin/python bench/large_inputs.py [--huge-rows 190] [--huge-mib 1] [--rows 1000000]

1. A file of `--huge-rows` rows of `--huge-mib` MiB of text each (190 x 1 MiB: under the
   200 MiB import bound) imported with `semievol import`, which prints the lengths report
   after it: the peak RSS of that command, import and report together, and its time.
2. `--rows` short rows imported, then the first `semievol status` after it timed (it reports
   the lengths, in bounded time since the report samples).

Writes bench/results/<cpu>/large_inputs.{json,md} (the CPU model and flags in each).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cpu_identity, cpu_results, log, machine_info  # noqa: E402

SEMIEVOL = [sys.executable, "-m", "semievol"]
WORDS = ("refund", "router", "outage", "invoice", "engineer", "contract", "speed", "signal")


def run(*args) -> dict:
    """A semievol command: its seconds, its own peak RSS (MiB, GNU time's %M) and output."""
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *SEMIEVOL, *map(str, args)],
                            capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{args[:2]} failed:\n{result.stdout}\n{result.stderr[-2000:]}")
    peak_kib = int(result.stderr.strip().splitlines()[-1])
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak_kib / 1024, 1),
            "stdout": result.stdout[-1500:]}


def write_rows(path: Path, rows) -> int:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        count = 0
        for row in rows:
            writer.writerow(row)
            count += 1
    return path.stat().st_size


def huge_rows(n: int, mib: float):
    size = int(mib * 2**20)
    text = " ".join(WORDS[i % len(WORDS)] for i in range(size // 5))[:size - 30]
    for i in range(n):
        yield f"H{i}", text, ("billing", "outage")[i % 2]


def short_rows(n: int):
    for i in range(n):
        yield f"S{i}", f"{WORDS[i % 8]} problem number {i} with my {WORDS[(i * 3) % 8]}", \
            ("billing", "outage")[i % 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--huge-rows", type=int, default=190)
    parser.add_argument("--huge-mib", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    results = {"machine": machine_info(), "cpu": cpu_identity(), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = tmp / "huge.csv"
        size = write_rows(big, huge_rows(args.huge_rows, args.huge_mib))
        log(f"huge file: {args.huge_rows} rows, {size / 2**20:.0f} MiB")
        run("init", tmp / "ws1")
        found = run("import", tmp / "ws1", big, "--split", "labeled", "--question-col", "text",
                    "--answer-col", "label", "--id-col", "id", "--kind", "choice",
                    "--labels", "billing,outage")
        results["huge_import"] = {"rows": args.huge_rows, "file_mib": round(size / 2**20, 1),
                                  **found}
        log(f"huge import + lengths report: {found['seconds']} s, peak RSS "
            f"{found['peak_rss_mib']} MiB")
        many = tmp / "many.csv"
        size = write_rows(many, short_rows(args.rows))
        run("init", tmp / "ws2")
        imported = run("import", tmp / "ws2", many, "--split", "unlabeled", "--question-col",
                       "text", "--id-col", "id", "--kind", "choice", "--labels",
                       "billing,outage")
        status = run("status", tmp / "ws2")
        again = run("status", tmp / "ws2")
        results["many_rows"] = {"rows": args.rows, "file_mib": round(size / 2**20, 1),
                                "import": imported, "first_status": status,
                                "second_status": again}
        log(f"{args.rows:,} rows: import {imported['seconds']} s; first status "
            f"{status['seconds']} s, second {again['seconds']} s")
    out = cpu_results("large_inputs.json")
    out.write_text(json.dumps(results, indent=2))
    huge, many_rows = results["huge_import"], results["many_rows"]
    lines = [
        "# Large inputs through the CLI", "",
        f"CPU: {results['cpu']['model']} (family {results['cpu']['family']}, model "
        f"{results['cpu']['model_number']}; {', '.join(results['cpu']['flags']) or 'no bf16/AMX'})"
        f", {results['machine']['cores']} cores. Command: `{results['command']}`.", "",
        "| case | seconds | peak RSS |", "|---|---|---|",
        f"| import of {huge['rows']} rows of {args.huge_mib:g} MiB ({huge['file_mib']} MiB) "
        f"with its lengths report | {huge['seconds']} | {huge['peak_rss_mib']} MiB |",
        f"| import of {many_rows['rows']:,} short rows | {many_rows['import']['seconds']} | "
        f"{many_rows['import']['peak_rss_mib']} MiB |",
        f"| first `status` after it | {many_rows['first_status']['seconds']} | |",
        f"| second `status` | {many_rows['second_status']['seconds']} | |", "",
        "Peak RSS is each command's own (GNU time's maximum resident set size).", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    log(f"wrote {out} and .md")


if __name__ == "__main__":
    main()
