"""Exports: formula cells escaped, nothing overwritten or deleted, bad arguments refused
before anything is written; through the real CLI where a user would meet it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import add_pseudo, add_round, ids_of

from semievol.errors import SemiEvolError
from semievol.export.dataset import export_dataset, spreadsheet_safe, user_columns
from semievol.export.model import export_adapter
from semievol.export.paths import parse_what

ROOT = Path(__file__).resolve().parents[1]


def semievol(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semievol", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cells_a_spreadsheet_would_run_are_escaped():
    for cell in ("=cmd|' /C calc'!A0", "+1+1", "-2", "@SUM(A1)", "\t=1", "\r=1"):
        assert spreadsheet_safe(cell) == "'" + cell
    assert spreadsheet_safe("plain text") == "plain text" and spreadsheet_safe(None) == ""


def test_the_dataset_export_escapes_formulas_and_never_overwrites(filled_workspace, tmp_path):
    ws = filled_workspace
    labeled = ids_of(ws, "labeled")[0]
    ws.conn.execute("UPDATE items SET question=? WHERE id=?", ("=cmd|' /C calc'!A0", labeled))
    add_round(ws)
    first = export_dataset(ws, 1, tmp_path)
    with open(first["csv"], newline="", encoding="utf-8") as fh:
        questions = [row[user_columns(ws)["question"]] for row in csv.DictReader(fh)]
    assert "'=cmd|' /C calc'!A0" in questions
    assert "=cmd|' /C calc'!A0" in first["jsonl"].read_text()  # JSONL keeps the text exactly
    second = export_dataset(ws, 1, tmp_path)
    assert second["csv"].name == "curated_round1-2.csv" and first["csv"].exists()


def test_an_adapter_export_never_deletes_what_is_there(filled_workspace, tmp_path):
    ws = filled_workspace
    rid = add_round(ws)
    adapter = ws.path / "adapters" / "round1" / "final"
    adapter.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (adapter / name).write_text("{}")
    ws.conn.execute("UPDATE rounds SET final_adapter='adapters/round1/final' WHERE id=?", (rid,))
    mine = tmp_path / "adapter_round1"
    mine.mkdir()
    (mine / "my notes.txt").write_text("keep me")
    written = export_adapter(ws, 1, tmp_path)
    assert written.name == "adapter_round1-2" and (mine / "my notes.txt").read_text() == "keep me"


def test_bad_export_arguments_are_refused_before_writing(filled_workspace, tmp_path):
    ws = filled_workspace
    pool = ids_of(ws, "unlabeled")
    add_pseudo(ws, add_round(ws), [(pool[0], "billing", "agreed", 0.1, 0.1)])
    out = tmp_path / "out"
    for args, message in ((["--round", "7"], "There is no round 7"),
                          (["--round", "0"], "Round numbers start at 1"),
                          (["--what", "bogus"], "Unknown export 'bogus'"),
                          (["--what", "dataset,gguf2"], "Unknown export 'gguf2'")):
        result = semievol("export", ws.path, "--out", out, *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert not out.exists()
    with pytest.raises(SemiEvolError):
        parse_what("")
    ok = semievol("export", ws.path, "--out", out, "--what", "dataset")
    assert ok.returncode == 0 and (out / "curated_round1.csv").exists()
