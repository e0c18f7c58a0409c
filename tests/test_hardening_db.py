"""A damaged or missing database, init on odd paths, backups: every case one clear message
through the real CLI, no traceback, and nothing created or changed that was not asked for."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from semievol.errors import SemiEvolError
from semievol.workspace.store import MIGRATIONS, SCHEMA_VERSION, Workspace, _split_sql

ROOT = Path(__file__).resolve().parents[1]


def semievol(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semievol", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def assert_clear_refusal(result, *words):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
    for word in words:
        assert word in result.stderr, result.stderr


def test_an_empty_database_file_is_refused_not_recreated(tmp_path):
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "workspace.db").write_bytes(b"")
    for command in ("status", "runs", "index"):
        assert_clear_refusal(semievol(command, folder), "damaged", "empty (0 bytes)", "backup")
    assert (folder / "workspace.db").stat().st_size == 0  # left as it was
    assert sorted(p.name for p in folder.iterdir()) == ["workspace.db"]


def test_a_file_of_random_bytes_is_refused(tmp_path):
    folder = tmp_path / "ws"
    folder.mkdir()
    junk = bytes(range(256)) * 64
    (folder / "workspace.db").write_bytes(junk)
    assert_clear_refusal(semievol("status", folder), "damaged", str(folder / "workspace.db"))
    assert (folder / "workspace.db").read_bytes() == junk


@pytest.fixture
def real_workspace(filled_workspace) -> Path:
    path = filled_workspace.path
    filled_workspace.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filled_workspace.close()
    return path


def test_a_truncated_database_gets_a_clear_message(real_workspace):
    db = real_workspace / "workspace.db"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    result = semievol("status", real_workspace)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "damaged" in (result.stderr + result.stdout).lower()


def test_status_runs_the_integrity_check_and_says_what_it_found(real_workspace):
    ok = semievol("status", real_workspace)
    assert ok.returncode == 0 and "integrity check ok" in ok.stdout
    db = real_workspace / "workspace.db"
    data = bytearray(db.read_bytes())
    middle = (len(data) // 2) // 4096 * 4096
    data[middle:middle + 8192] = bytes(8192)  # two pages zeroed in the middle
    db.write_bytes(bytes(data))
    result = semievol("status", real_workspace)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "DAMAGED" in result.stdout or "damaged" in result.stderr


def test_opening_never_creates_only_init_does(tmp_path):
    with pytest.raises(SemiEvolError, match="semievol init"):
        Workspace(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    assert_clear_refusal(semievol("status", tmp_path / "nothing"), "No workspace")
    assert not (tmp_path / "nothing").exists()


def test_init_on_a_file_an_impossible_path_and_an_existing_workspace(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    assert_clear_refusal(semievol("init", a_file), "is a file, not a workspace folder")
    assert a_file.read_text() == "not a folder"
    assert_clear_refusal(semievol("init", a_file / "below"), "Cannot create")
    first = semievol("init", tmp_path / "ws")
    assert first.returncode == 0 and "Workspace ready" in first.stdout
    again = semievol("init", tmp_path / "ws")
    assert again.returncode == 0 and "already exists" in again.stdout


def test_backup_is_a_consistent_copy_and_never_overwrites(real_workspace, tmp_path):
    out = tmp_path / "copy.db"
    result = semievol("backup", real_workspace, "--out", out)
    assert result.returncode == 0 and str(out) in result.stdout
    with sqlite3.connect(out) as copy:
        assert copy.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 41
        assert copy.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert_clear_refusal(semievol("backup", real_workspace, "--out", out), "exists already")
    default = semievol("backup", real_workspace)
    assert default.returncode == 0 and "backups/workspace-" in default.stdout


def test_a_schema_upgrade_backs_the_old_database_up_first(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    conn = sqlite3.connect(folder / "workspace.db", isolation_level=None)
    for statement in _split_sql(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO settings(key, value) VALUES('marker', '1')")
    conn.close()
    with Workspace(folder) as ws:
        assert ws.scalar("PRAGMA user_version") == SCHEMA_VERSION
    backup = folder / "workspace.db.v1.bak"
    with sqlite3.connect(backup) as old:
        assert old.execute("PRAGMA user_version").fetchone()[0] == 1
        assert old.execute("SELECT value FROM settings").fetchone()[0] == "1"
