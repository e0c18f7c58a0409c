"""The workspace: a folder with a SQLite database (WAL), a Chroma directory, adapters, run logs.

Everything a person decided and everything a model computed lives in the database, so the
UI holds no truth and a killed process loses nothing. Modules that own a concept (data,
retrieval, collaborators, ...) write their own tables through `Workspace.transaction()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path

from semievol.config import TaskConfig
from semievol.errors import SemiEvolError
from semievol.saved_config import task_config_from_dict, to_dict

SPLITS = ("labeled", "unlabeled", "test", "calibration")

# Each migration moves the schema from version i to i+1; never edit one that has shipped.
MIGRATIONS: list[str] = [
    # 1: items and their retrieval neighbours, the engine's outputs, runs and metrics.
    """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE imports (
        id INTEGER PRIMARY KEY, file TEXT NOT NULL, split TEXT NOT NULL,
        rows INTEGER NOT NULL, mapping TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        external_id TEXT NOT NULL UNIQUE,
        split TEXT NOT NULL CHECK (split IN ('labeled','unlabeled','test','calibration')),
        question TEXT NOT NULL,
        options TEXT,            -- JSON list, NULL when the task has a fixed label set
        answer TEXT,             -- gold answer; NULL for unlabeled items
        import_id INTEGER REFERENCES imports(id),
        source_row INTEGER);
    CREATE INDEX items_split ON items(split);
    CREATE TABLE neighbours (
        item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        rank INTEGER NOT NULL,
        neighbour_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        similarity REAL NOT NULL,
        PRIMARY KEY (item_id, rank));
    CREATE TABLE rounds (
        id INTEGER PRIMARY KEY, number INTEGER NOT NULL UNIQUE,
        status TEXT NOT NULL, config TEXT NOT NULL,
        warmup_adapter TEXT, final_adapter TEXT,
        created_at REAL NOT NULL, finished_at REAL);
    CREATE TABLE responses (
        round_id INTEGER NOT NULL REFERENCES rounds(id) ON DELETE CASCADE,
        item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        collaborator INTEGER NOT NULL,
        cache_key TEXT NOT NULL,
        answer TEXT,
        text TEXT,
        option_probs TEXT,       -- JSON list aligned with the item's options
        option_entropy REAL,
        nll REAL,                -- mean token NLL of the response under the answering model
        PRIMARY KEY (round_id, item_id, collaborator));
    CREATE INDEX responses_cache ON responses(cache_key);
    CREATE TABLE pseudo_labels (
        round_id INTEGER NOT NULL REFERENCES rounds(id) ON DELETE CASCADE,
        item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        label TEXT NOT NULL,
        path TEXT NOT NULL CHECK (path IN ('agreed','reflected')),
        agreement REAL NOT NULL,
        reflection_text TEXT,
        entropy REAL,            -- mean token NLL under the warm-up model (paper eq. 6)
        option_entropy REAL,
        selected INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (round_id, item_id));
    CREATE INDEX pseudo_entropy ON pseudo_labels(round_id, entropy);
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        action TEXT NOT NULL CHECK (action IN ('accept','reject','relabel','clear')),
        label TEXT, reviewer TEXT NOT NULL, note TEXT, created_at REAL NOT NULL);
    CREATE INDEX decisions_item ON decisions(item_id, id);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY, kind TEXT NOT NULL, round_id INTEGER,
        status TEXT NOT NULL, pid INTEGER, progress REAL NOT NULL DEFAULT 0,
        message TEXT, heartbeat REAL, log_path TEXT, config TEXT, error TEXT,
        started_at REAL NOT NULL, finished_at REAL);
    CREATE TABLE metrics (
        id INTEGER PRIMARY KEY, run_id INTEGER, round_id INTEGER,
        name TEXT NOT NULL, step INTEGER, value REAL, created_at REAL NOT NULL);
    CREATE INDEX metrics_run ON metrics(run_id, name, step);
    """,
    # 2: decisions become append-only at the database level; evaluations and guard flags.
    """
    CREATE TRIGGER decisions_no_update BEFORE UPDATE ON decisions
        BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END;
    CREATE TRIGGER decisions_no_delete BEFORE DELETE ON decisions
        BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END;
    ALTER TABLE decisions ADD COLUMN round_id INTEGER;
    CREATE TABLE evaluations (
        id INTEGER PRIMARY KEY, round_id INTEGER, model TEXT NOT NULL, split TEXT NOT NULL,
        accuracy REAL NOT NULL, macro_f1 REAL, report TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE flags (
        round_id INTEGER, item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        kind TEXT NOT NULL, detail TEXT, PRIMARY KEY (round_id, item_id, kind));
    """,
    # 3: one place for a round's applied selection (it was a per-round setting); the
    # current decision per item as a view (the one definition both Python and SQL read);
    # what a run was asked to do, so a background worker needs nothing but its run id.
    """
    CREATE TABLE selections (
        round_id INTEGER PRIMARY KEY REFERENCES rounds(id) ON DELETE CASCADE,
        config TEXT NOT NULL, applied_at REAL NOT NULL);
    INSERT INTO selections(round_id, config, applied_at)
        SELECT CAST(SUBSTR(key, 17) AS INTEGER), value, 0 FROM settings
        WHERE key LIKE 'selection\\_round\\_%' ESCAPE '\\'
        AND CAST(SUBSTR(key, 17) AS INTEGER) IN (SELECT id FROM rounds);
    DELETE FROM settings WHERE key LIKE 'selection\\_round\\_%' ESCAPE '\\';
    CREATE VIEW current_decisions AS
        SELECT d.* FROM decisions d
        WHERE d.id IN (SELECT MAX(id) FROM decisions GROUP BY item_id) AND d.action != 'clear';
    ALTER TABLE runs ADD COLUMN request TEXT;
    """,
    # 4: a trained round's training set, frozen when its training starts (decisions made
    # afterwards belong to the next round); warnings a reviewer confirmed before training.
    """
    CREATE TABLE training_rows (
        round_id INTEGER NOT NULL REFERENCES rounds(id) ON DELETE CASCADE,
        item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        position INTEGER NOT NULL, answer TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('gold','human','pseudo')),
        PRIMARY KEY (round_id, item_id));
    ALTER TABLE rounds ADD COLUMN frozen_at REAL;
    CREATE TABLE confirmations (
        id INTEGER PRIMARY KEY,
        round_id INTEGER NOT NULL REFERENCES rounds(id) ON DELETE CASCADE,
        kind TEXT NOT NULL, message TEXT NOT NULL, reviewer TEXT, created_at REAL NOT NULL);
    """,
    # 5: what the context budget did to each collaborator's prompt (the Review page marks
    # a cut item and the demonstrations that did not fit).
    """
    ALTER TABLE responses ADD COLUMN prompt_tokens INTEGER;
    ALTER TABLE responses ADD COLUMN cut_tokens INTEGER;
    ALTER TABLE responses ADD COLUMN demos_shown INTEGER;
    """,
    # 6: a running run's time left as of its last progress write, so a page counts elapsed
    # and remaining time on its own clock (a model load writes no progress for a while).
    """
    ALTER TABLE runs ADD COLUMN left_seconds REAL;
    ALTER TABLE runs ADD COLUMN progress_at REAL;
    """,
    # 7: the warm-up model's probability of a choice pseudo-label among the options (the one
    # confidence Review shows; empty for rounds labeled before).
    """
    ALTER TABLE pseudo_labels ADD COLUMN probability REAL;
    """,
    # 8: team mode's accounts (a password hash, or none for a single-sign-on identity) with
    # their failed sign-ins, and the sessions signed-in browsers hold (a token's hash only).
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('lead','reviewer')),
        password_hash TEXT,
        created_at REAL NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        failed_at REAL,
        locked_until REAL);
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE ON UPDATE CASCADE,
        created_at REAL NOT NULL,
        seen_at REAL NOT NULL);
    """,
    # 9: review by a team. Items handed to one reviewer at a time (claims); a lead's
    # adjudication of a conflict; each reviewer's standing decision; the decision in force
    # by the workspace's rule: 'latest' (one reviewer, as before: an item's newest
    # decision) or 'team' (the newest adjudication, else the reviewers' decision when they
    # all agree, else a conflict: left out of training, read as a reject). The rule a
    # round trained under is kept with it.
    """
    ALTER TABLE decisions ADD COLUMN adjudication INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rounds ADD COLUMN decision_rule TEXT;
    CREATE TABLE claims (
        round_id INTEGER NOT NULL REFERENCES rounds(id) ON DELETE CASCADE,
        item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
        reviewer TEXT NOT NULL,
        claimed_at REAL NOT NULL,
        PRIMARY KEY (round_id, item_id, reviewer));
    CREATE INDEX decisions_reviewer ON decisions(item_id, reviewer, id);
    CREATE VIEW reviewer_decisions AS
        SELECT d.* FROM decisions d
        WHERE d.id IN (SELECT MAX(id) FROM decisions WHERE adjudication = 0
                       GROUP BY item_id, reviewer)
        AND d.action != 'clear';
    CREATE VIEW adjudications AS
        SELECT d.* FROM decisions d
        WHERE d.id IN (SELECT MAX(id) FROM decisions WHERE adjudication = 1 GROUP BY item_id)
        AND d.action != 'clear';
    DROP VIEW current_decisions;
    CREATE VIEW current_decisions AS
        SELECT d.* FROM decisions d
        WHERE NOT EXISTS (SELECT 1 FROM settings WHERE key = 'decision_rule'
                          AND value = '"team"')
        AND d.id IN (SELECT MAX(id) FROM decisions GROUP BY item_id) AND d.action != 'clear'
        UNION ALL
        SELECT a.* FROM adjudications a
        WHERE EXISTS (SELECT 1 FROM settings WHERE key = 'decision_rule' AND value = '"team"')
        UNION ALL
        SELECT MAX(r.id) AS id, r.item_id,
            CASE WHEN COUNT(DISTINCT r.action || '|' || COALESCE(r.label, '')) = 1
                 THEN r.action ELSE 'reject' END AS action,
            CASE WHEN COUNT(DISTINCT r.action || '|' || COALESCE(r.label, '')) = 1
                 THEN r.label END AS label,
            r.reviewer,
            CASE WHEN COUNT(DISTINCT r.action || '|' || COALESCE(r.label, '')) = 1
                 THEN r.note ELSE 'conflict: the reviewers disagree; left out of training '
                                  || 'until a lead adjudicates' END AS note,
            r.created_at, r.round_id, r.adjudication
        FROM reviewer_decisions r
        WHERE EXISTS (SELECT 1 FROM settings WHERE key = 'decision_rule' AND value = '"team"')
        AND r.item_id NOT IN (SELECT item_id FROM adjudications)
        GROUP BY r.item_id;
    """,
    # 10: a pseudo-label's training weight (SelectionConfig.weighting `confidence`): what
    # the applied selection set it to, and what each frozen training row trained with.
    # NULL is the full weight, 1: every earlier selection and training meant exactly that.
    """
    ALTER TABLE pseudo_labels ADD COLUMN weight REAL;
    ALTER TABLE training_rows ADD COLUMN weight REAL;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
INTEGRITY_SECONDS = 10.0
"""How long `status` lets the full integrity check run before it says it stopped."""


class Workspace:
    """An open workspace folder. Cheap to create; open one per thread or process."""

    def __init__(self, path: str | Path, *, create: bool = False):
        """Open the workspace at `path`; only `create=True` (init, the app's Create button)
        makes a new one. A damaged database is refused with what to do, never re-created."""
        self.path = Path(path).expanduser().resolve()
        db = self.path / "workspace.db"
        if self.path.exists() and not self.path.is_dir():
            raise SemiEvolError(f"{self.path} is a file, not a workspace folder: give a folder "
                                "(a new one for `semievol init`).")
        if not db.exists() and not create:
            raise SemiEvolError(
                f"No workspace at {self.path}. Create it with `semievol init {path}` "
                "(or pick an existing workspace folder).")
        if db.exists() and db.stat().st_size == 0:
            raise SemiEvolError(damaged_message(db, "it is empty (0 bytes)"))
        self.read_only = db.exists() and not (os.access(db, os.W_OK)
                                              and os.access(self.path, os.W_OK))
        self.damage = read_damage(db)  # what an earlier full check found, or None
        self._depth = 0  # nesting of transaction() blocks (savepoints)
        if self.read_only:
            self.conn = _open_read_only(db)
            try:
                if self.conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    raise SemiEvolError(
                        f"The workspace at {self.path} is read-only and was written by another "
                        "version of SemiEvol: make it writable once so its schema can be "
                        "brought up to date.")
            except sqlite3.DatabaseError as exc:
                self.conn.close()
                raise SemiEvolError(damaged_message(db, str(exc))) from exc
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for sub in ("chroma", "adapters", "runs", "exports"):
                (self.path / sub).mkdir(exist_ok=True)
        except OSError as exc:
            raise SemiEvolError(f"Cannot create the workspace folder {self.path}: "
                                f"{exc.strerror or exc}. Choose a folder you can write to.") \
                from exc
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see transaction()).
        self.conn = sqlite3.connect(db, timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            migrate(self.conn, db)
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise SemiEvolError(f"{db} is locked by another process for too long; try "
                                    "again when it has finished.") from exc
            raise SemiEvolError(damaged_message(db, str(exc))) from exc

    def inside(self, path: str | Path) -> Path:
        """`path` (relative to the workspace folder, or absolute) with every link followed,
        refused when it leads outside the workspace: a file the library writes or shows is
        the workspace's own, never one a link planted in the folder points to."""
        candidate = Path(path) if Path(path).is_absolute() else self.path / path
        resolved = candidate.resolve()
        if resolved != self.path and not resolved.is_relative_to(self.path):
            raise SemiEvolError(f"{candidate} leads outside the workspace (to {resolved}); "
                                "nothing was written or read there. Remove that link.")
        return resolved

    def integrity(self, seconds: float = INTEGRITY_SECONDS) -> dict:
        """SQLite's full integrity check (tables, indexes and their agreement: a copy taken
        while two processes wrote once lost 532 index entries that the quick check did not
        see), stopped after `seconds` on a large database, and saying so:
        {ok (True, False, or None when it did not finish), found (what it reported),
        finished}. What it finds is kept beside the database (`workspace.db.damaged`), and
        from then on every write is refused until a check finds the database whole."""
        deadline = time.monotonic() + seconds
        self.conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            rows = self.conn.execute("PRAGMA integrity_check(20)").fetchall()
        except sqlite3.OperationalError as exc:
            if "interrupt" not in str(exc):
                return self._damage_found(str(exc))
            return {"ok": None, "finished": False,
                    "found": f"not finished within {seconds:g} s (a large database): "
                             "nothing was found in the part checked"}
        except sqlite3.DatabaseError as exc:
            return self._damage_found(str(exc))
        finally:
            self.conn.set_progress_handler(None, 0)
        found = [r[0] for r in rows]
        if found != ["ok"]:
            return self._damage_found("; ".join(found))
        if self.damage is not None and not self.read_only:
            damage_file(self.path / "workspace.db").unlink(missing_ok=True)
            self.damage = None
        return {"ok": True, "finished": True, "found": "ok"}

    def _damage_found(self, found: str) -> dict:
        self.damage = found
        if not self.read_only:
            damage_file(self.path / "workspace.db").write_text(found + "\n", encoding="utf-8")
        return {"ok": False, "finished": True, "found": found}

    def check_writable(self) -> None:
        """Refuse a write, before it starts, to a workspace that cannot take one: read-only,
        or found damaged by a full check."""
        if self.read_only:
            raise SemiEvolError(f"The workspace at {self.path} is read-only: nothing can be "
                                "saved in it. Make the folder and workspace.db writable, or "
                                "copy the workspace somewhere you can write to.")
        if self.damage is not None:
            raise SemiEvolError(
                f"The workspace database {self.path / 'workspace.db'} was found damaged "
                f"({self.damage[:200]}), so nothing more is written into it. Restore it from "
                "a backup (`semievol status` checks it again), or export what you need and "
                "start a new workspace.")

    def backup(self, target: str | Path) -> Path:
        """A consistent copy of the database at `target` (SQLite's online backup: safe
        while other processes read and write). Refuses to overwrite a file."""
        target = Path(target).expanduser()
        if target.exists():
            raise SemiEvolError(f"{target} exists already: choose a new file for the backup.")
        target.parent.mkdir(parents=True, exist_ok=True)
        copy = sqlite3.connect(target)
        try:
            self.conn.backup(copy)
        finally:
            copy.close()
        return target

    # -- basics -----------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self):
        """All-or-nothing writes: BEGIN IMMEDIATE takes the write lock up front, so a check
        made inside holds until the commit (no other writer can slip in between).

        Nested, it is a savepoint: the inner block rolls back alone on an error, and
        nothing is committed before the outermost block ends."""
        self.check_writable()
        if self.conn.in_transaction:
            name = f"sp{self._depth}"
            self._depth += 1
            self.conn.execute(f"SAVEPOINT {name}")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
                raise
            else:
                self.conn.execute(f"RELEASE {name}")
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def query(self, sql: str, params=()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def query_in(self, sql: str, ids: list, *, size: int = 900) -> list[sqlite3.Row]:
        """`sql` with one `IN ({})` placeholder, run over `ids` in chunks: SQLite builds
        with the default limit refuse statements with more than 32,766 variables."""
        rows = []
        for start in range(0, len(ids), size):
            chunk = list(ids[start:start + size])
            rows += self.query(sql.format(",".join("?" * len(chunk))), chunk)
        return rows

    def scalar(self, sql: str, params=()):
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- settings ---------------------------------------------------------------------
    def get_setting(self, key: str, default=None):
        value = self.scalar("SELECT value FROM settings WHERE key=?", (key,))
        return default if value is None else json.loads(value)

    def set_setting(self, key: str, value, conn=None) -> None:
        (conn or self.conn).execute(
            "INSERT INTO settings(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, json.dumps(value)))

    @property
    def task(self) -> TaskConfig | None:
        data = self.get_setting("task")
        return None if data is None else task_config_from_dict(data)

    def set_task(self, task: TaskConfig, conn=None) -> None:
        self.set_setting("task", to_dict(task), conn)

    def require_task(self) -> TaskConfig:
        task = self.task
        if task is None:
            raise SemiEvolError("This workspace has no task yet: import a labeled file first "
                                "(`semievol import WORKSPACE FILE --split labeled ...`).",
                                app="This workspace has no task yet: import a labeled file "
                                    "on the Workspace page first.")
        return task

    # -- summaries --------------------------------------------------------------------
    def split_counts(self) -> dict[str, int]:
        rows = self.query("SELECT split, COUNT(*) FROM items GROUP BY split")
        counts = {s: 0 for s in SPLITS}
        counts.update({r[0]: r[1] for r in rows})
        return counts

    def table_counts(self) -> dict[str, int]:
        names = [r[0] for r in self.query(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        return {n: self.scalar(f"SELECT COUNT(*) FROM {n}") for n in sorted(names)}


def damage_file(db: Path) -> Path:
    """Where a full check's findings are kept: beside the database, never in it."""
    return db.with_name(db.name + ".damaged")


def read_damage(db: Path) -> str | None:
    try:
        return damage_file(db).read_text(encoding="utf-8").strip() or "damaged"
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"its damage report cannot be read ({exc})"


def _open_read_only(db: Path) -> sqlite3.Connection:
    """A read-only connection: `mode=ro`, else `immutable` (a WAL database in a folder that
    cannot be written has no shared-memory file to open)."""
    for query in ("mode=ro", "immutable=1"):
        try:
            conn = sqlite3.connect(f"{db.as_uri()}?{query}", uri=True, timeout=30,
                                   isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            continue
    raise SemiEvolError(f"The workspace database {db} is read-only and cannot be opened "
                        "even for reading here; copy it somewhere you can write to.")


def damaged_message(db: Path, found: str) -> str:
    return (f"The workspace database {db} is damaged ({found}). Nothing was changed. Restore "
            "it from a backup (`semievol backup` writes one; a schema upgrade leaves "
            "workspace.db.vN.bak beside it), or move it away and create a new workspace with "
            "`semievol init`.")


def migrate(conn: sqlite3.Connection, db: Path | None = None) -> int:
    """Bring the database to SCHEMA_VERSION, one transaction per migration; an existing
    database is first copied to workspace.db.v<version>.bak beside it."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SemiEvolError(
            f"This workspace was written by a newer SemiEvol (schema {version}, this one "
            f"knows {SCHEMA_VERSION}); upgrade semievol to open it.")
    if 0 < version < SCHEMA_VERSION and db is not None:
        # Always a fresh copy of the database as it is now: an older .bak beside it is the
        # database as it was at some earlier upgrade, not this one.
        backup = db.with_name(f"{db.name}.v{version}.bak")
        if backup.exists():
            backup = db.with_name(f"{db.name}.v{version}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
        copy = sqlite3.connect(backup)
        try:
            conn.backup(copy)
        finally:
            copy.close()
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(MIGRATIONS[target - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={target}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return SCHEMA_VERSION


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit on its own)."""
    statements, buffer = [], ""
    for line in script.splitlines():
        line = line.split("--")[0].rstrip()
        if not line:
            continue
        buffer += line + "\n"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements


def now() -> float:
    return time.time()


def stored_weight(value: float | None) -> float:
    """A pseudo-label's or training row's stored loss weight: NULL counts in full (1), which
    is what every row written before confidence weighting (schema 10) meant."""
    return 1.0 if value is None else float(value)
