"""The workspace database: schema, pragmas, migrations, append-only decisions, transactions."""

from __future__ import annotations

import sqlite3

import pytest

from semievol.errors import SemiEvolError
from semievol.workspace.store import MIGRATIONS, SCHEMA_VERSION, Workspace, _split_sql, now

EXPECTED_TABLES = {"settings", "imports", "items", "neighbours", "rounds", "responses",
                   "pseudo_labels", "decisions", "runs", "metrics", "evaluations", "flags"}


def _insert_item(conn, external_id="a", split="labeled", answer="billing"):
    return conn.execute(
        "INSERT INTO items(external_id, split, question, answer) VALUES(?,?,?,?)",
        (external_id, split, f"question {external_id}", answer)).lastrowid


def _insert_decision(conn, item_id, action="accept"):
    return conn.execute(
        "INSERT INTO decisions(item_id, action, label, reviewer, created_at) VALUES(?,?,?,?,?)",
        (item_id, action, "billing", "tester", now())).lastrowid


def test_new_workspace_has_current_schema_and_pragmas(workspace):
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 2
    assert workspace.scalar("PRAGMA user_version") == SCHEMA_VERSION
    assert workspace.scalar("PRAGMA journal_mode").lower() == "wal"
    assert workspace.scalar("PRAGMA foreign_keys") == 1
    for sub in ("chroma", "adapters", "runs", "exports"):
        assert (workspace.path / sub).is_dir()


def test_new_workspace_has_every_table(workspace):
    tables = {r[0] for r in workspace.query(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}
    assert EXPECTED_TABLES <= tables
    counts = workspace.table_counts()
    assert set(counts) == tables
    assert all(v == 0 for v in counts.values())
    triggers = {r[0] for r in workspace.query("SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert {"decisions_no_update", "decisions_no_delete"} <= triggers


def test_foreign_keys_are_enforced(workspace):
    with pytest.raises(sqlite3.IntegrityError):
        with workspace.transaction() as conn:
            conn.execute("INSERT INTO neighbours(item_id, rank, neighbour_id, similarity) "
                         "VALUES(999, 0, 998, 0.5)")


def test_reopen_keeps_rows_and_settings(tmp_path):
    ws = Workspace(tmp_path / "ws", create=True)
    with ws.transaction() as conn:
        _insert_item(conn)
        ws.set_setting("retrieval_k", 3, conn)
    ws.close()
    again = Workspace(tmp_path / "ws")
    assert again.split_counts()["labeled"] == 1
    assert again.get_setting("retrieval_k") == 3
    assert again.get_setting("missing", "default") == "default"
    again.close()


def test_migration_from_version_1_keeps_rows(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    db = folder / "workspace.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version=1")
    item_id = _insert_item(conn, "old-1")
    _insert_decision(conn, item_id)
    conn.close()

    ws = Workspace(folder)
    assert ws.scalar("PRAGMA user_version") == SCHEMA_VERSION
    rows = ws.query("SELECT external_id, question FROM items")
    assert [tuple(r) for r in rows] == [("old-1", "question old-1")]
    decision = ws.query("SELECT item_id, action, reviewer, round_id FROM decisions")
    assert [tuple(r) for r in decision] == [(item_id, "accept", "tester", None)]
    tables = {r[0] for r in ws.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"evaluations", "flags"} <= tables
    triggers = {r[0] for r in ws.query("SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert {"decisions_no_update", "decisions_no_delete"} <= triggers
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        ws.conn.execute("DELETE FROM decisions")
    ws.close()
    # Opening again is a no-op for the schema.
    with Workspace(folder) as again:
        assert again.scalar("PRAGMA user_version") == SCHEMA_VERSION
        assert again.scalar("SELECT COUNT(*) FROM decisions") == 1


def test_decisions_are_append_only(workspace):
    with workspace.transaction() as conn:
        item_id = _insert_item(conn)
        _insert_decision(conn, item_id, "accept")
        _insert_decision(conn, item_id, "reject")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        workspace.conn.execute("UPDATE decisions SET action='reject'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        workspace.conn.execute("DELETE FROM decisions WHERE action='accept'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        with workspace.transaction() as conn:
            conn.execute("UPDATE decisions SET note='x'")
    rows = workspace.query("SELECT action, note FROM decisions ORDER BY id")
    assert [tuple(r) for r in rows] == [("accept", None), ("reject", None)]


def test_decision_action_is_checked(workspace):
    with workspace.transaction() as conn:
        item_id = _insert_item(conn)
    with pytest.raises(sqlite3.IntegrityError):
        with workspace.transaction() as conn:
            _insert_decision(conn, item_id, "approve")
    assert workspace.scalar("SELECT COUNT(*) FROM decisions") == 0


def test_transaction_rolls_back_on_exception(workspace):
    with workspace.transaction() as conn:
        _insert_item(conn, "kept")
    before = workspace.table_counts()
    with pytest.raises(RuntimeError, match="boom"):
        with workspace.transaction() as conn:
            item_id = _insert_item(conn, "lost")
            _insert_decision(conn, item_id)
            workspace.set_setting("task", {"kind": "open"}, conn)
            raise RuntimeError("boom")
    assert workspace.table_counts() == before
    assert workspace.get_setting("task") is None
    assert [r[0] for r in workspace.query("SELECT external_id FROM items")] == ["kept"]
    # The connection is usable again after the rollback.
    with workspace.transaction() as conn:
        _insert_item(conn, "after")
    assert workspace.split_counts()["labeled"] == 2


def test_missing_workspace_without_create_is_refused(tmp_path):
    target = tmp_path / "nowhere"
    with pytest.raises(SemiEvolError) as info:
        Workspace(target)
    message = str(info.value)
    assert "No workspace" in message and "semievol init" in message
    assert not target.exists()


def test_newer_schema_is_refused(tmp_path):
    folder = tmp_path / "future"
    folder.mkdir()
    conn = sqlite3.connect(folder / "workspace.db")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SemiEvolError, match="newer SemiEvol"):
        Workspace(folder)


def test_require_task_and_split_counts(workspace, task):
    assert workspace.task is None
    with pytest.raises(SemiEvolError, match="no task"):
        workspace.require_task()
    workspace.set_task(task)
    assert workspace.require_task() == task
    assert workspace.split_counts() == {"labeled": 0, "unlabeled": 0, "test": 0,
                                        "calibration": 0}


def test_split_sql_keeps_statements_whole():
    statements = _split_sql(MIGRATIONS[1])
    assert len(statements) == 5
    assert statements[0].startswith("CREATE TRIGGER") and statements[0].endswith("END;")
    assert all(sqlite3.complete_statement(s) for s in statements)


def test_migration_3_moves_applied_selections_into_their_table(tmp_path):
    """Version 2 kept a round's applied selection as a setting named after the round; the
    migration moves it to the `selections` table (for rounds that exist) and drops the
    settings, leaving every other setting alone."""
    folder = tmp_path / "v2"
    folder.mkdir()
    conn = sqlite3.connect(folder / "workspace.db", isolation_level=None)
    for script in MIGRATIONS[:2]:
        for statement in _split_sql(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version=2")
    conn.execute("INSERT INTO rounds(id, number, status, config, created_at) "
                 "VALUES(4, 1, 'open', '{}', 0)")
    applied = '{"policy": "per_class", "theta": 60.0, "threshold": null, "score": "nll"}'
    conn.executemany("INSERT INTO settings(key, value) VALUES(?, ?)",
                     [("selection" + "_round_4", applied), ("selection" + "_round_9", applied),
                      ("selectionXroundX5", "1"), ("retrieval_k", "3")])
    conn.close()
    with Workspace(folder) as ws:
        assert [tuple(r) for r in ws.query("SELECT round_id, config FROM selections")] == \
            [(4, applied)]
        assert sorted(r[0] for r in ws.query("SELECT key FROM settings")) == \
            ["retrieval_k", "selectionXroundX5"]  # LIKE's "_" is escaped: no stray match
        assert ws.scalar("SELECT COUNT(*) FROM current_decisions") == 0
