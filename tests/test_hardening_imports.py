"""Imports that would change meaning silently, malformed files, two imports at once, and a
large file streamed in bounded memory. Every refusal leaves the workspace unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import write_csv

from semievol.config import TaskConfig
from semievol.errors import SemiEvolError
from semievol.workspace.imports import ColumnMapping, import_file

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["billing", "outage", "equipment"]
TEXT = ColumnMapping(question="text", answer="label", id="id")


def refused(ws, path, split="labeled", mapping=TEXT, task=None, match="problem"):
    before = ws.table_counts()
    with pytest.raises(SemiEvolError, match=match) as caught:
        import_file(ws, path, split, mapping=mapping,
                    task=task or TaskConfig(kind="choice", labels=LABELS))
    assert ws.table_counts() == before
    return caught.value


def test_labels_that_differ_only_by_case_are_refused():
    with pytest.raises(SemiEvolError, match="differ only by case"):
        TaskConfig(kind="choice", labels=["Billing", "billing", "outage"])
    with pytest.raises(SemiEvolError, match="duplicates"):
        TaskConfig(kind="choice", labels=["billing ", "billing", "outage"])


def test_options_must_be_non_empty_strings(workspace, tmp_path):
    path = write_csv(tmp_path / "o.csv", [
        {"id": "a", "text": "q", "options": "[1, 2, null]", "label": "1"},
        {"id": "b", "text": "q", "options": '["yes", null]', "label": "yes"},
        {"id": "c", "text": "q", "options": '["yes", "no"]', "label": "None"}])
    error = refused(workspace, path, mapping=ColumnMapping("text", "label", "options", "id"),
                    task=TaskConfig(kind="choice"))
    assert [p.split(":")[0] for p in error.problems] == ["row 1", "row 2", "row 3"]
    assert "malformed options" in error.problems[0]
    assert "'None' is not among the options" in error.problems[2]


def test_numbers_keep_their_written_form_from_parquet(workspace, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"id": [12345, 7, None], "text": ["a", "b", "c"],
                             "label": ["billing", "outage", "equipment"]}), path)
    with pytest.raises(SemiEvolError, match="empty id"):
        import_file(workspace, path, "labeled", mapping=TEXT,
                    task=TaskConfig(kind="choice", labels=LABELS))
    pq.write_table(pa.table({"id": [12345, 7], "text": ["a", "b"],
                             "label": ["billing", "outage"]}), path)
    import_file(workspace, path, "labeled", mapping=TEXT,
                task=TaskConfig(kind="choice", labels=LABELS))
    assert sorted(r[0] for r in workspace.query("SELECT external_id FROM items")) == \
        ["12345", "7"]


def test_control_characters_are_refused(workspace, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,text,label\na,hello\x00world,billing\nb,fine,outage\n")
    error = refused(workspace, path, match="control character")
    assert error.problems == ["row 1: a control character (U+0000) in the question: remove it "
                              "(the file may not be plain text)"]


def test_test_items_that_duplicate_other_splits_are_reported(workspace, tmp_path):
    task = TaskConfig(kind="choice", labels=LABELS)
    import_file(workspace, write_csv(tmp_path / "l.csv", [
        {"id": "L1", "text": "The router is broken", "label": "equipment"},
        {"id": "L2", "text": "My bill is wrong", "label": "billing"}]), "labeled",
        mapping=TEXT, task=task)
    report = import_file(workspace, write_csv(tmp_path / "t.csv", [
        {"id": "T1", "text": "the router  is BROKEN", "label": "equipment"},
        {"id": "T2", "text": "No internet", "label": "outage"}]), "test", mapping=TEXT)
    assert any(n.startswith("Leakage: 1 test item(s)") and "T1" in n for n in report.notes)
    later = import_file(workspace, write_csv(tmp_path / "u.csv", [
        {"id": "U1", "text": "No internet", "label": ""}]), "unlabeled",
        mapping=ColumnMapping(question="text", answer=None, id="id"))
    assert any("T2" in n for n in later.notes)  # the other direction too


@pytest.mark.parametrize("content, message", [
    ("id,text,text\n1,a,b\n", "more than once"),
    ("id,text,label\n1,a,billing,extra\n", "row 1 (line 2): 4 fields where the header has 3"),
    ("id,text,label\n1,a\n", "2 fields where the header has 3"),
    (",text,label\n1,a,billing\n", "has no name"),
    ("", "is empty"),
])
def test_malformed_files_get_the_right_message(workspace, tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    refused(workspace, path, match=message.replace("(", r"\(").replace(")", r"\)"))


def test_a_folder_and_a_missing_file(workspace, tmp_path):
    refused(workspace, tmp_path, match="is a folder, not a file")
    refused(workspace, tmp_path / "none.csv", match="File not found")


def test_keep_answers_is_gone_and_unlabeled_answers_are_never_read(tmp_path, small_task_files):
    result = subprocess.run([sys.executable, "-m", "semievol", "import", tmp_path / "ws",
                             small_task_files["unlabeled"], "--split", "unlabeled",
                             "--keep-answers"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "unrecognized arguments: --keep-answers" in result.stderr


RACE = '''
import sys
from semievol.cli.main import main
sys.exit(main(["import", sys.argv[1], sys.argv[2], "--split", "labeled", "--question-col",
               "text", "--answer-col", "label", "--id-col", "id", "--kind", "choice",
               "--labels", "billing,outage,equipment"]))
'''


def test_two_imports_of_one_file_at_once_give_one_clear_refusal(tmp_path):
    rows = [{"id": f"r{i}", "text": f"text {i}", "label": LABELS[i % 3]} for i in range(3000)]
    path = write_csv(tmp_path / "big.csv", rows)
    subprocess.run([sys.executable, "-m", "semievol", "init", tmp_path / "ws"], check=True,
                   cwd=ROOT, capture_output=True)
    script = tmp_path / "race.py"
    script.write_text(textwrap.dedent(RACE))
    processes = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "ws"),
                                   str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in processes]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert "Traceback" not in loser[2] and "already in the workspace" in loser[2]
    from semievol.workspace.store import Workspace
    with Workspace(tmp_path / "ws") as ws:
        assert ws.split_counts()["labeled"] == 3000
        assert ws.scalar("SELECT COUNT(*) FROM imports") == 1


MEMORY = '''
import sys
from semievol.config import TaskConfig
from semievol.workspace.imports import ColumnMapping, import_file
from semievol.workspace.store import Workspace
ws = Workspace(sys.argv[1], create=True)
import_file(ws, sys.argv[2], "unlabeled", mapping=ColumnMapping("text", None, None, "id"),
            task=TaskConfig(kind="choice", labels=["a", "b"]))
# VmHWM: this process's own peak (ru_maxrss can carry a forking parent's peak over).
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(int(peak.split()[1]) // 1024)
'''


def test_a_large_file_is_streamed_in_bounded_memory(tmp_path):
    """30 MB of text imports with a peak that does not grow with the file (the 190 MB
    measurement is in the closing note: bench-sized, not a test)."""
    path = tmp_path / "big.csv"
    filler = "lorem ipsum dolor sit amet " * 40
    with path.open("w") as fh:
        fh.write("id,text\n")
        for i in range(30_000):
            fh.write(f"u{i},\"{filler}{i}\"\n")
    assert path.stat().st_size > 30e6
    script = tmp_path / "memory.py"
    script.write_text(textwrap.dedent(MEMORY))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "ws"), str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    peak_mb = int(out.stdout.strip())
    assert peak_mb < 200, peak_mb  # the file alone is 30 MB; loaded whole it was ~9x that


def test_import_refusals_are_rows_with_numbers_and_json_lines(workspace, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "q", "label": "billing"}) + "\n[1, 2]\n"
                    + "{not json\n")
    error = refused(workspace, path, match="not JSON objects")
    assert error.problems == ["line 2: expected a JSON object, got list",
                              "line 3: not valid JSON (Expecting property name enclosed in "
                              "double quotes)"]
