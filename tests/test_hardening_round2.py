"""The second hostile-input campaign, one test (or a few) per class of finding: secrets kept
out of the workspace, data never rendered, writes and reads kept inside the workspace,
served answers checked before they are cached, bounded memory on large texts, damage seen
and respected, one numeric parser, exports whole or not at all, decisions' text bounded,
JSON cells kept as JSON. Each failed on the code before its fix."""

from __future__ import annotations

import errno
import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import LABELS, add_pseudo, add_round, ids_of, write_csv
from server_support import FakeOpenAI

from semievol.config import ServerConfig, TaskConfig
from semievol.curation.decisions import record_decisions
from semievol.errors import SemiEvolError
from semievol.model.http_client import ServerClient, ServerError
from semievol.model.served import ServedBackend, probe_server
from semievol.runs import jobs
from semievol.workspace.imports import ColumnMapping, import_file
from semievol.workspace.store import Workspace

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-live-7f3a9c1d2e4b5a6f8091"


def semievol(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semievol", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def workspace_bytes(path: Path) -> bytes:
    """Everything the workspace database holds on disk (the WAL too)."""
    return b"".join(p.read_bytes() for p in path.glob("workspace.db*") if p.is_file())


# -- 1. a secret is stored in the workspace -------------------------------------------------
def quote_headers(path, body, headers):
    """A server that refuses what it cannot do by quoting the request's headers, the key
    first (as the campaign's server did); plain echo it answers."""
    if path.endswith("/chat/completions") or "prompt_logprobs" in body:
        return 400, {"error": {"message": f"Authorization: {headers.get('Authorization')} "
                                          f"may not do this; headers {json.dumps(headers)}"}}
    return None


def refuse_everything(path, body, headers):
    return 400, {"error": {"message": f"Authorization: {headers.get('Authorization')}"}}


@pytest.fixture
def round_config(tmp_path):
    def write(url):
        config = tmp_path / "round.yaml"
        config.write_text(yaml.safe_dump({"servers": [
            {"name": "fake", "base_url": url, "api_key_env": "FAKE_KEY"}]}))
        return config
    return write


def test_1_a_servers_reply_quoting_the_key_is_never_stored(filled_workspace, round_config):
    ws = filled_workspace
    with FakeOpenAI(answer=quote_headers) as server:
        result = semievol("servers", ws.path, "--config", round_config(server.url),
                          env={"FAKE_KEY": KEY})
        sent = [r["headers"].get("Authorization") for r in server.requests]
    assert f"Bearer {KEY}" in sent  # the key went to the server, as it must
    assert result.returncode == 0, result.stderr
    assert "chat log-probabilities: not supported" in result.stdout  # the reply, redacted
    assert KEY not in result.stdout + result.stderr
    ws.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert ws.get_setting("server_probes")  # the probe is stored ...
    assert KEY[:10].encode() not in workspace_bytes(ws.path)  # ... without the key


def test_9_servers_stores_nothing_when_it_refuses(filled_workspace, round_config):
    ws = filled_workspace
    with FakeOpenAI(answer=refuse_everything) as server:
        result = semievol("servers", ws.path, "--config", round_config(server.url),
                          env={"FAKE_KEY": KEY})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert KEY not in result.stdout + result.stderr
    assert ws.get_setting("server_probes") is None


def test_1_a_failed_runs_error_never_carries_the_key(filled_workspace, monkeypatch):
    ws = filled_workspace
    monkeypatch.setenv("FAKE_KEY", KEY)
    with FakeOpenAI(answer=refuse_everything) as server:
        client = ServerClient(server.url, api_key_env="FAKE_KEY", retries=0)
        run_id = jobs.register_run(ws, "label", round_id=None, pid=os.getpid())
        with pytest.raises(ServerError) as raised:
            with jobs.run_context(ws, run_id):
                client.post("/completions", {"prompt": "x"})
    assert "Authorization" in str(raised.value) and KEY not in str(raised.value)
    error = jobs.get_run(ws, run_id)["error"]
    assert "[redacted]" in error and KEY not in error


# -- 3. a workspace reaches outside itself ----------------------------------------------------
def test_3_a_link_at_the_next_runs_log_is_refused_and_the_target_untouched(pool, tmp_path):
    ws, round_id, _ = pool
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    next_id = (ws.scalar("SELECT MAX(id) FROM runs") or 0) + 1
    (ws.path / "runs" / f"{next_id}.log").symlink_to(victim)
    result = semievol("select", ws.path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "outside the workspace" in result.stderr
    assert victim.read_text() == "precious\n"


def test_3_the_log_shown_is_the_runs_own_never_a_stored_path(workspace, tmp_path):
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not the workspace's\n")
    run_id = jobs.register_run(workspace, "select", pid=os.getpid())
    workspace.conn.execute("UPDATE runs SET log_path=? WHERE id=?", (str(secret), run_id))
    assert jobs.log_tail(workspace, jobs.get_run(workspace, run_id)) == ""
    (workspace.path / "runs" / f"{run_id}.log").write_text("its own log\n")
    assert jobs.log_tail(workspace, jobs.get_run(workspace, run_id)) == "its own log"


def test_3_an_exports_folder_linked_out_of_the_workspace_is_refused(pool, tmp_path):
    from semievol.export.dataset import export_dataset

    ws, round_id, _ = pool
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.path / "exports").rmdir()
    (ws.path / "exports").symlink_to(outside, target_is_directory=True)
    with pytest.raises(SemiEvolError, match="outside the workspace"):
        export_dataset(ws, 1)
    assert list(outside.iterdir()) == []


# -- 4. served models poison the cache and stall ------------------------------------------
@pytest.fixture
def tokenizer(tiny_model_dir):
    from semievol.model.loading import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def served(server: FakeOpenAI, tokenizer, workspace, **config) -> ServedBackend:
    config = ServerConfig(name="fake", base_url=server.url, **config)
    caps = probe_server(workspace, config, tokenizer)
    return ServedBackend(config, caps, tokenizer, served_model=caps.model)


@pytest.mark.parametrize("bad", [float("nan"), "-0.3", None, True, 5.0])
def test_4_log_probabilities_that_are_not_numbers_are_refused_not_cached(
        bad, tokenizer, workspace):
    healthy = FakeOpenAI()
    with healthy:
        backend = served(healthy, tokenizer, workspace)
    with FakeOpenAI(logprob=bad) as sick:
        backend.server = ServerConfig(name="fake", base_url=sick.url, retries=0)
        backend._client = None
        with pytest.raises(ServerError, match="not a number|finite number at most 0|did not"):
            backend.score_continuations(["Question?"], [["a", "b"]])
    assert backend._memo == {}  # nothing kept for a later call


def test_4_a_server_error_while_probing_stores_no_verdict(tokenizer, workspace):
    failing = {"on": True}

    def flaky(path, body, headers):
        if failing["on"] and body.get("echo"):
            return 500, {"error": "restarting"}
        return None

    with FakeOpenAI(answer=flaky) as server:
        config = ServerConfig(name="fake", base_url=server.url, retries=0)
        with pytest.raises(SemiEvolError, match="failed while it was asked"):
            probe_server(workspace, config, tokenizer)
        assert workspace.get_setting("server_probes") is None
        failing["on"] = False  # the server recovered: the next probe is a real one
        assert probe_server(workspace, config, tokenizer).echo


def test_4_a_slow_answer_and_a_hung_server_are_cut_at_the_deadline():
    answer = (200, {"choices": [{"text": "x" * 200}]})
    with FakeOpenAI(answer=lambda *a: answer, slow_body=0.05) as slow:
        client = ServerClient(slow.url, timeout=1.0, retries=0)
        started = time.monotonic()
        with pytest.raises(ServerError, match="within 1 s|Timeout"):
            client.post("/completions", {"prompt": "x"})
        # Per read, the ~240 bytes at 0.05 s each would take 12 s to arrive.
        assert time.monotonic() - started < 6
    with FakeOpenAI(hang=True) as hung:
        client = ServerClient(hung.url, timeout=1.0, retries=1, concurrency=4, backoff=0.01)
        started = time.monotonic()
        with pytest.raises(ServerError):
            client.map(lambda i: client.post("/completions", {"prompt": str(i)}), range(40))
        # 40 requests of 2 attempts each would be 20 s four at a time; the batch stops at
        # its first failure.
        assert time.monotonic() - started < 10


# -- 5. memory on large texts ----------------------------------------------------------------
def test_5_the_lengths_report_never_tokenizes_a_huge_text_whole(workspace, tmp_path,
                                                                 monkeypatch):
    from semievol.model import loading
    from semievol.views import status

    huge = "word " * 400_000  # 2 MB
    write_csv(tmp_path / "l.csv", [{"question": huge, "answer": "billing"},
                                   {"question": "short", "answer": "outage"}])
    import_file(workspace, tmp_path / "l.csv", "labeled",
                task=TaskConfig(labels=list(LABELS)))
    seen = []

    class Recording:
        """The real tokenizer, recording the length of every text it is given."""

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, texts, *args, **kwargs):
            seen.extend(len(t) for t in (texts if isinstance(texts, list) else [texts]))
            return self.inner(texts, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(status, "load_tokenizer",
                        lambda path: Recording(loading.load_tokenizer(path)))
    report = status.length_report(workspace)
    assert report["over"] == 1 and report["estimated"] == 1
    assert max(seen) < 200_000  # cut to what already overflows the budget


def test_5_a_large_workspace_is_sampled_and_says_so(workspace, tmp_path, monkeypatch):
    from semievol.views import status

    rows = [{"question": f"message number {i}", "answer": LABELS[i % 3]} for i in range(60)]
    write_csv(tmp_path / "l.csv", rows)
    import_file(workspace, tmp_path / "l.csv", "labeled",
                task=TaskConfig(labels=list(LABELS)))
    monkeypatch.setattr(status, "SAMPLE", 10)
    report = status.length_report(workspace)
    assert report["sampled"] == 10 and report["items"] == 60
    report["over"], report["by_split"] = 30, {"labeled": 30}
    assert "from a sample of 10 of the 60 items" in status.length_line(report)


# -- 6. damage that is missed or misreported ------------------------------------------------
def corrupt_an_index(path: Path) -> None:
    """Declare the items_split index over another column than it was built on: its entries
    then no longer match the table, which quick_check does not look at."""
    conn = sqlite3.connect(path / "workspace.db")
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute("UPDATE sqlite_master SET sql='CREATE INDEX items_split ON items(question)' "
                 "WHERE name='items_split'")
    conn.commit()
    conn.close()


def test_6_index_damage_is_found_and_writes_are_refused_after(filled_workspace):
    path = filled_workspace.path
    rid = add_round(filled_workspace)
    add_pseudo(filled_workspace, rid, [(ids_of(filled_workspace, "unlabeled")[0], "billing",
                                        "agreed", 0.1, 0.1)])
    filled_workspace.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filled_workspace.close()
    corrupt_an_index(path)
    quick = sqlite3.connect(path / "workspace.db").execute("PRAGMA quick_check").fetchall()
    assert quick == [("ok",)]  # what status ran before: it saw nothing
    result = semievol("status", path)
    assert result.returncode == 2 and "DAMAGED" in result.stdout
    with Workspace(path) as ws:
        before = ws.scalar("SELECT COUNT(*) FROM decisions")
        item = ws.scalar("SELECT item_id FROM pseudo_labels")
    decided = semievol("decide", path, item, "--action", "accept", "--reviewer", "ann")
    assert decided.returncode == 2 and "found damaged" in decided.stderr
    assert "Traceback" not in decided.stderr
    with Workspace(path) as ws:
        assert ws.scalar("SELECT COUNT(*) FROM decisions") == before


def test_6_a_schema_upgrade_always_takes_a_fresh_backup(filled_workspace):
    path = filled_workspace.path
    filled_workspace.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filled_workspace.close()
    stale = path / "workspace.db.v4.bak"
    stale.write_bytes(b"an old backup")
    conn = sqlite3.connect(path / "workspace.db")
    for statement in ("DROP VIEW current_decisions", "DROP VIEW reviewer_decisions",
                      "DROP VIEW adjudications", "DROP INDEX decisions_reviewer",
                      "DROP TABLE claims", "DROP TABLE sessions", "DROP TABLE users"):
        conn.execute(statement)  # undo migrations 8, 9 (and 10, below)
    for table, column in (("responses", "prompt_tokens"), ("responses", "cut_tokens"),
                          ("responses", "demos_shown"),  # undo migrations 5, 6, 7 and 9
                          ("runs", "left_seconds"), ("runs", "progress_at"),
                          ("pseudo_labels", "probability"), ("decisions", "adjudication"),
                          ("rounds", "decision_rule"),  # and 10
                          ("pseudo_labels", "weight"), ("training_rows", "weight")):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("CREATE VIEW current_decisions AS SELECT d.* FROM decisions d WHERE d.id IN "
                 "(SELECT MAX(id) FROM decisions GROUP BY item_id) AND d.action != 'clear'")
    conn.execute("PRAGMA user_version=4")
    conn.commit()
    conn.close()
    Workspace(path).close()
    fresh = [p for p in path.glob("workspace.db.v4.*.bak")]
    assert stale.read_bytes() == b"an old backup" and len(fresh) == 1
    copy = sqlite3.connect(fresh[0])
    assert copy.execute("PRAGMA user_version").fetchone()[0] == 4
    copy.close()


def test_6_a_read_only_workspace_is_called_read_only_not_damaged(filled_workspace,
                                                                  monkeypatch):
    from semievol.cli.main import main

    path = filled_workspace.path
    filled_workspace.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filled_workspace.close()
    # Tests run as root, for whom every file is writable: the check is what is stubbed.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if mode == os.W_OK
                        and str(p).startswith(str(path)) else real_access(p, mode, *a, **k))
    ws = Workspace(path)
    assert ws.read_only and ws.split_counts()["labeled"] == 12
    with pytest.raises(SemiEvolError, match="read-only"):
        record_decisions(ws, [ids_of(ws, "unlabeled")[0]], "relabel", reviewer="ann",
                         label="billing")
    ws.close()
    assert main(["status", str(path)]) == 0


# -- 7. the numeric checker crashes and misreads ---------------------------------------------
@pytest.mark.parametrize("written,value", [
    ("1,00,000", 100000), ("1.000,50", 1000.5), ("3/4", 0.75), ("1,250,000", 1250000),
    ("-3.5", -3.5), ("12%", 12), ("1'000", 1000), ("2.5e3", 2500)])
def test_7_one_parser_reads_numbers_as_people_write_them(written, value):
    from semievol.task.numbers import read_number

    assert read_number(written).value == pytest.approx(value)


def test_7_a_number_too_large_is_no_number():
    from semievol.task.answers import extract_answer, is_correct

    task = TaskConfig(kind="open", checker="numeric")
    assert extract_answer(task, "the answer is 1e400") is None
    assert not is_correct(task, "5", "1e400") and not is_correct(task, "1e400", "1e400")


@pytest.fixture
def numeric_workspace(workspace, tmp_path):
    task = TaskConfig(kind="open", checker="numeric")
    write_csv(tmp_path / "l.csv", [{"question": f"q{i}", "answer": a} for i, a in
                                   enumerate(["12", "1,00,000", "n/a", "1e400", "7"])])
    report = import_file(workspace, tmp_path / "l.csv", "labeled", task=task)
    write_csv(tmp_path / "u.csv", [{"question": "How many?"}])
    import_file(workspace, tmp_path / "u.csv", "unlabeled",
                mapping=ColumnMapping(answer=None))
    return workspace, report


def test_7_imports_say_how_numbers_were_read_and_which_have_none(numeric_workspace):
    _, report = numeric_workspace
    notes = " ".join(report.notes)
    assert "'1,00,000' read as 100000" in notes
    assert "row 3 'n/a'" in notes and "1e400 is too large" in notes


def test_7_a_relabel_that_overflows_is_refused_and_one_read_otherwise_says_so(
        numeric_workspace):
    ws, _ = numeric_workspace
    item = ids_of(ws, "unlabeled")[0]
    result = semievol("decide", ws.path, item, "--action", "relabel", "--label", "1e400",
                      "--reviewer", "ann")
    assert result.returncode == 2 and "too large" in result.stderr
    assert "Traceback" not in result.stderr
    result = semievol("decide", ws.path, item, "--action", "relabel", "--label", "1,00,000",
                      "--reviewer", "ann")
    assert result.returncode == 0 and "'1,00,000' read as 100000" in result.stdout
    assert ws.scalar("SELECT label FROM decisions") == "100000"


# -- 8. failed exports look like exports; decisions take any text ----------------------------
def test_8_an_export_on_a_full_disk_leaves_nothing_and_keeps_its_name(pool, monkeypatch):
    from semievol.export import dataset

    ws, round_id, _ = pool
    real = Path.open

    class Full:
        """A file on a disk with no space left: every write fails."""

        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full(self, *args, **kwargs):
        handle = real(self, *args, **kwargs)
        return Full(handle) if ".partial" in self.name else handle

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(SemiEvolError, match=r"failed \(the disk is full\); nothing was written"):
        dataset.export_dataset(ws, 1)
    monkeypatch.setattr(Path, "open", real)
    assert list((ws.path / "exports").iterdir()) == []
    written = dataset.export_dataset(ws, 1)
    assert written["jsonl"].name == "curated_round1.jsonl"  # not -2


@pytest.mark.parametrize("reviewer,note,why", [
    ("ann\x1b[2J", None, "control character"), ("x" * 100_000, None, "characters long"),
    ("ann", "fine\x1b]0;owned\x07", "control character"), ("ann", "y" * 5000, "characters")])
def test_8_reviewer_names_and_notes_are_bounded_and_plain(pool, reviewer, note, why):
    ws, round_id, items = pool
    with pytest.raises(SemiEvolError, match=why):
        record_decisions(ws, items[:1], "accept", reviewer=reviewer, note=note)
    assert ws.scalar("SELECT COUNT(*) FROM decisions") == 0


def test_8_a_note_keeps_its_lines():
    from semievol.curation.decisions import checked_text

    assert checked_text("note", " two\nlines\t ", 100, lines=True) == "two\nlines"


# -- 9. leftovers from the first campaign ----------------------------------------------------
def test_9_a_json_object_question_is_stored_as_json_text(workspace, tmp_path):
    lines = [json.dumps({"question": {"nested": [1, 2]}, "answer": "billing"}),
             json.dumps({"question": "plain text", "answer": "outage"})]
    (tmp_path / "l.jsonl").write_text("\n".join(lines) + "\n")
    report = import_file(workspace, tmp_path / "l.jsonl", "labeled",
                         task=TaskConfig(labels=list(LABELS)))
    stored = [r[0] for r in workspace.query("SELECT question FROM items ORDER BY id")]
    assert stored[0] == '{"nested": [1, 2]}' and json.loads(stored[0]) == {"nested": [1, 2]}
    assert any("JSON object or list" in note for note in report.notes)


def test_numbers_module_is_finite_everywhere():
    from semievol.task.numbers import read_numbers

    values = [r.value for r in read_numbers("1e308 1e309 -1e400 3/0 0.1 7")]
    assert all(math.isfinite(v) for v in values) and values[-2:] == [0.1, 7]
    assert np.isfinite(values).all()
