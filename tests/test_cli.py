"""The `semievol` command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from semievol.workspace.store import SCHEMA_VERSION, Workspace

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "transformers", "chromadb", "sentence_transformers", "peft", "pandas",
         "streamlit"}
LABELS = "billing,outage,equipment"


def semievol(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "semievol", *map(str, args)], cwd=cwd or ROOT,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"{args}: rc {result.returncode}\n{result.stderr}"
    return result


def import_args(ws, file, split, *extra):
    return ("import", ws, file, "--split", split, "--question-col", "text", "--answer-col",
            "label", "--id-col", "id", *extra)


def counts(ws_path) -> dict:
    with Workspace(ws_path) as ws:
        return ws.table_counts()


def test_help_exits_zero():
    result = semievol("--help")
    for command in ("init", "import", "index", "status", "prepare-model", "demo"):
        assert command in result.stdout
    sub = semievol("import", "--help")
    assert "--question-col" in sub.stdout and "--labels" in sub.stdout


def test_console_script_help():
    script = Path(sys.executable).parent / "semievol"
    if not script.exists():
        pytest.skip("the semievol console script is not installed in this environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "SemiEvol Studio" in result.stdout


def test_no_heavy_imports_at_cli_start():
    code = ("import sys; import semievol.cli.main; semievol.cli.main.build_parser(); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_command_and_bad_arguments_fail():
    assert semievol(check=False).returncode != 0
    result = semievol("import", "ws", "f.csv", check=False)  # --split is required
    assert result.returncode != 0 and "--split" in result.stderr


def test_init_import_status_end_to_end(tmp_path, small_task_files, write_csv):
    ws = tmp_path / "ws"
    out = semievol("init", ws).stdout
    assert "Workspace ready" in out and (ws / "workspace.db").exists()

    out = semievol(*import_args(ws, small_task_files["labeled"], "labeled", "--kind", "choice",
                                "--labels", LABELS)).stdout
    assert "Imported 12 labeled item(s) from labeled.csv" in out
    with Workspace(ws) as opened:
        assert opened.task.labels == ["billing", "outage", "equipment"]
        assert opened.task.answer_format == "words"

    # A malformed file: exit code != 0, every bad row on stderr, nothing written anywhere.
    before = counts(ws)
    bad = write_csv(tmp_path / "bad.csv", [
        {"id": "X1", "text": "fine", "label": "billing"},
        {"id": "X2", "text": "", "label": "outage"},
        {"id": "X3", "text": "fine", "label": "refunds"},
        {"id": "L00", "text": "fine", "label": "billing"},
        {"id": "X1", "text": "fine", "label": "outage"},
    ])
    result = semievol(*import_args(ws, bad, "test"), check=False)
    assert result.returncode != 0
    assert result.stderr.startswith("error:")
    assert "4 problem(s)" in result.stderr and "nothing was imported" in result.stderr
    for line in ("row 2: empty question", "row 3: answer 'refunds' is not among the options",
                 "row 4: id 'L00' is already in the workspace",
                 "row 5: duplicate id 'X1' (also row 1)"):
        assert line in result.stderr
    assert "row 1:" not in result.stderr
    assert "Traceback" not in result.stderr
    assert counts(ws) == before

    # A second import asking for another task is refused, also without writing.
    result = semievol(*import_args(ws, small_task_files["test"], "test", "--labels",
                                   "billing,outage"), check=False)
    assert result.returncode != 0 and "new workspace" in result.stderr
    assert counts(ws) == before

    out = semievol(*import_args(ws, small_task_files["unlabeled"], "unlabeled")).stdout
    assert "Imported 20 unlabeled item(s)" in out
    semievol(*import_args(ws, small_task_files["test"], "test"))

    out = semievol("status", ws).stdout
    assert "Items: labeled 12, unlabeled 20, test 9, calibration 0" in out
    assert "Task: choice (billing, outage, equipment); answer format words" in out
    assert "Neighbours: 0 of 20 unlabeled item(s) have retrieved demonstrations" in out
    assert "Decisions: 0; runs: 0" in out
    status = json.loads(semievol("status", ws, "--json").stdout)
    assert status["splits"] == {"labeled": 12, "unlabeled": 20, "test": 9, "calibration": 0}
    assert status["schema_version"] == SCHEMA_VERSION


def test_commands_on_a_missing_workspace_fail_cleanly(tmp_path, small_task_files):
    for args in (("status", tmp_path / "none"),
                 import_args(tmp_path / "none", small_task_files["labeled"], "labeled")):
        result = semievol(*args, check=False)
        assert result.returncode == 2
        assert "No workspace" in result.stderr and "semievol init" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "none").exists()


def test_import_without_task_options_on_a_new_workspace(tmp_path, small_task_files):
    ws = tmp_path / "ws"
    semievol("init", ws)
    result = semievol(*import_args(ws, small_task_files["labeled"], "labeled"), check=False)
    assert result.returncode == 2 and "--labels" in result.stderr
    assert all(v == 0 for v in counts(ws).values())


def test_index_with_the_real_embedder(tmp_path, small_task_files):
    ws = tmp_path / "ws"
    semievol("init", ws)
    semievol(*import_args(ws, small_task_files["labeled"], "labeled", "--kind", "choice",
                          "--labels", LABELS))
    semievol(*import_args(ws, small_task_files["unlabeled"], "unlabeled"))
    out = semievol("index", ws, "-k", "2").stdout
    assert "Embedded 32 item(s); labeled pool 12; neighbours stored for 20 item(s) (k=2)" in out
    with Workspace(ws) as opened:
        assert opened.scalar("SELECT COUNT(*) FROM neighbours") == 40
        assert opened.get_setting("retrieval_k") == 2
    out = semievol("status", ws).stdout
    assert "Neighbours: 20 of 20 unlabeled item(s) have retrieved demonstrations" in out


def test_an_unexpected_error_is_one_line_and_a_log_with_the_traceback(tmp_path, monkeypatch,
                                                                     capsys):
    import semievol.cli.main as cli

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setenv("SEMIEVOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "cmd_status", broken)
    assert cli.main(["status", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected RuntimeError: a bug" in err
    log = Path(err.split("traceback is in ")[1].strip().rstrip("."))
    assert log.is_file() and "Traceback" in log.read_text() and "in broken" in log.read_text()


def test_a_full_disk_and_a_locked_database_are_clear_lines(tmp_path, monkeypatch, capsys):
    import errno
    import sqlite3

    import semievol.cli.main as cli

    for error, words in ((OSError(errno.ENOSPC, "No space left on device"), "disk is full"),
                         (sqlite3.OperationalError("database is locked"), "locked"),
                         (sqlite3.OperationalError("database or disk is full"), "disk is full"),
                         (sqlite3.DatabaseError("database disk image is malformed"),
                          "damaged")):
        def fail(args, error=error):
            raise error
        monkeypatch.setattr(cli, "cmd_status", fail)
        assert cli.main(["status", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
