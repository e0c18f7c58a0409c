"""Team mode's accounts: who may sign in to a workspace, with which role, and the sessions
their browsers hold.

An account is a name and a role (`lead` or `reviewer`) with either a password, kept only
as an Argon2id hash (argon2-cffi), or none when the person signs in through the
organisation's single sign-on (OIDC; the identity provider checks them, the account says
which role the identity has here).

Failed sign-ins are slowed, then locked: after `SLOW_AFTER` failures in a row each further
try must wait twice as long as the last (2 s, 4 s, ...), and the `LOCK_AFTER`-th locks the
account for `LOCK_SECONDS`. An unknown name is refused with the same words as a wrong
password, after the same work, so a sign-in form does not tell which names exist.

A session is a random token the browser holds; the workspace keeps its SHA-256 only. It
ends `IDLE_SECONDS` after its last use or `SESSION_SECONDS` after sign-in, whichever comes
first, and at once when the account is removed or its password is reset.

What a role may do is written once, in `LEAD_ONLY`: a lead launches rounds, trains,
exports, imports and changes settings, and adjudicates conflicts; a reviewer reviews.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from semievol.curation.decisions import MAX_REVIEWER, checked_text
from semievol.errors import SemiEvolError
from semievol.workspace.store import Workspace

ROLES = ("lead", "reviewer")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
SLOW_AFTER = 3
LOCK_AFTER = 6
LOCK_SECONDS = 15 * 60
IDLE_SECONDS = 2 * 3600
SESSION_SECONDS = 12 * 3600
_TOUCH_SECONDS = 60
"""A session's last use is written at most once a minute, not on every page run."""

LEAD_ONLY = {
    "launch": "launch or resume rounds and runs",
    "train": "train and evaluate",
    "export": "export datasets and models",
    "import": "import files and index the workspace",
    "settings": "change selection settings",
    "bulk": "decide on every filtered item at once",
    "adjudicate": "adjudicate conflicts",
    "team": "see the team's agreement and set the overlap share",
}
"""Every action only a lead may take, with the words a refusal uses."""

_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("a password no account has")


class SignInRefused(SemiEvolError):
    """A sign-in that did not succeed; `wait` is how many seconds until the next try counts
    (0 when the user may try again at once)."""

    def __init__(self, message: str, wait: float = 0.0):
        super().__init__(message)
        self.wait = wait


@dataclass(frozen=True)
class Account:
    name: str
    role: str

    @property
    def is_lead(self) -> bool:
        return self.role == "lead"


def may(account: Account | None, action: str) -> bool:
    """Whether `account` may take `action` (a key of LEAD_ONLY, or anything else: open to
    every role). No account is single-user mode, where the one user may do everything."""
    if action in LEAD_ONLY:
        return account is None or account.is_lead
    return True


def require(account: Account | None, action: str) -> None:
    """Refuse `action` to an account whose role does not allow it."""
    if not may(account, action):
        raise SemiEvolError(f"{account.name} is a reviewer here: only a lead can "
                            f"{LEAD_ONLY[action]}. Ask a lead of this workspace.")


# -- accounts -----------------------------------------------------------------------------
def checked_role(role: str) -> str:
    if role not in ROLES:
        raise SemiEvolError(f"role must be one of {', '.join(ROLES)}; got {role!r}.")
    return role


def checked_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise SemiEvolError(f"The password is {len(password)} characters long; use at least "
                            f"{MIN_PASSWORD} (a few words make a good one).")
    if len(password) > MAX_PASSWORD:
        raise SemiEvolError(f"The password is longer than {MAX_PASSWORD} characters.")
    return password


def _checked_name(name: str) -> str:
    name = checked_text("account name", name, MAX_REVIEWER)
    if not name:
        raise SemiEvolError("An account needs a name (it is recorded with every decision).")
    return name


def add_user(ws: Workspace, name: str, role: str, password: str | None = None, *,
             sso: bool = False) -> Account:
    """Create an account: with a password, or with `sso` for a single-sign-on identity
    (its name is the e-mail address the identity provider gives). The workspace's decisions
    follow the team rule from then on."""
    name, role = _checked_name(name), checked_role(role)
    if sso == (password is not None):
        raise SemiEvolError("An account has either a password or single sign-on (--sso), "
                            "not both and not neither.")
    digest = None if sso else _HASHER.hash(checked_password(password))
    with ws.transaction() as conn:
        if conn.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
            raise SemiEvolError(f"An account named {name!r} exists already: "
                                "`semievol users reset-password` changes its password.")
        conn.execute("INSERT INTO users(name, role, password_hash, created_at) "
                     "VALUES(?,?,?,?)", (name, role, digest, time.time()))
        # A workspace with accounts is reviewed by a team: its decisions follow the team
        # rule from now on (curation.decisions.DECISION_RULES).
        ws.set_setting("decision_rule", "team", conn)
    return Account(name, role)


def list_users(ws: Workspace, *, at: float | None = None) -> list[dict]:
    """Every account: name, role, how it signs in, when it was created, whether it is
    locked now and how many live sessions it holds."""
    at = time.time() if at is None else at
    rows = ws.query(
        "SELECT u.name, u.role, u.password_hash IS NULL AS sso, u.created_at, u.failures, "
        "u.locked_until, (SELECT COUNT(*) FROM sessions s WHERE s.user_name = u.name "
        "AND s.seen_at > ? AND s.created_at > ?) AS sessions FROM users u ORDER BY u.name",
        (at - IDLE_SECONDS, at - SESSION_SECONDS))
    return [{"name": r["name"], "role": r["role"], "sign_in": "sso" if r["sso"] else "password",
             "created_at": r["created_at"], "failures": r["failures"],
             "locked": bool(r["locked_until"] and r["locked_until"] > at),
             "sessions": r["sessions"]} for r in rows]


def has_accounts(ws: Workspace) -> bool:
    return bool(ws.scalar("SELECT COUNT(*) FROM users"))


def _existing(conn, name: str):
    row = conn.execute("SELECT name, role, password_hash FROM users WHERE name=?",
                       (name,)).fetchone()
    if row is None:
        raise SemiEvolError(f"No account named {name!r} (`semievol users list` shows them).")
    return row


def remove_user(ws: Workspace, name: str) -> None:
    """Delete an account and end its sessions. Its decisions stay, under its name. The last
    lead is kept while other accounts remain: nobody else could train or export."""
    with ws.transaction() as conn:
        row = _existing(conn, name)
        if row["role"] == "lead":
            leads = conn.execute("SELECT COUNT(*) FROM users WHERE role='lead'").fetchone()[0]
            others = conn.execute("SELECT COUNT(*) FROM users").fetchone()[0] - 1
            if leads == 1 and others:
                raise SemiEvolError(f"{name} is the last lead and {others} other account(s) "
                                    "remain; add another lead first, or remove them.")
        conn.execute("DELETE FROM sessions WHERE user_name=?", (name,))
        conn.execute("DELETE FROM users WHERE name=?", (name,))


def reset_password(ws: Workspace, name: str, password: str) -> None:
    """Set a new password; clears failed sign-ins and a lock, and ends every session."""
    digest = _HASHER.hash(checked_password(password))
    with ws.transaction() as conn:
        row = _existing(conn, name)
        if row["password_hash"] is None:
            raise SemiEvolError(f"{name} signs in through single sign-on and has no password "
                                "here.")
        conn.execute("UPDATE users SET password_hash=?, failures=0, failed_at=NULL, "
                     "locked_until=NULL WHERE name=?", (digest, name))
        conn.execute("DELETE FROM sessions WHERE user_name=?", (name,))


# -- signing in -----------------------------------------------------------------------------
def retry_wait(failures: int) -> float:
    """Seconds a user must wait after `failures` failed sign-ins in a row before the next
    try counts: none for the first SLOW_AFTER - 1, then 2, 4, 8, ..."""
    return 0.0 if failures < SLOW_AFTER else float(2 ** (failures - SLOW_AFTER + 1))


def _minutes(seconds: float) -> str:
    return f"{max(1, round(seconds / 60))} min" if seconds >= 60 else f"{max(1, round(seconds))} s"


def sign_in(ws: Workspace, name: str, password: str, *, at: float | None = None) -> str:
    """Check a name and password; returns a new session token, or raises SignInRefused.

    A try made while the account is locked or must wait is refused without checking the
    password and without counting as a failure. The check and the count are one
    transaction, so simultaneous tries cannot slip past the delay."""
    at = time.time() if at is None else at
    name = name.strip()
    refused = None
    with ws.transaction() as conn:
        row = conn.execute("SELECT password_hash, failures, failed_at, locked_until FROM users "
                           "WHERE name=?", (name,)).fetchone()
        if row is None or row["password_hash"] is None:
            _verify(_DUMMY_HASH, password)  # the same work as a real check
            refused = SignInRefused("Wrong name or password.")
        elif row["locked_until"] and row["locked_until"] > at:
            left = row["locked_until"] - at
            refused = SignInRefused(f"Too many failed sign-ins: this account is locked for "
                                    f"{_minutes(left)} more (a lead can `semievol users "
                                    "reset-password` to unlock it).", wait=left)
        elif (row["failed_at"] or 0) + retry_wait(row["failures"]) > at:
            wait = row["failed_at"] + retry_wait(row["failures"]) - at
            refused = SignInRefused(f"Too many failed sign-ins: wait {_minutes(wait)} before "
                                    "the next try.", wait=wait)
        elif not _verify(row["password_hash"], password):
            failures = row["failures"] + 1
            locked = failures >= LOCK_AFTER
            conn.execute("UPDATE users SET failures=?, failed_at=?, locked_until=? WHERE name=?",
                         (0 if locked else failures, at, at + LOCK_SECONDS if locked else None,
                          name))
            refused = (SignInRefused("Wrong name or password. Too many failed sign-ins: this "
                                     f"account is locked for {_minutes(LOCK_SECONDS)}.",
                                     wait=LOCK_SECONDS) if locked else
                       SignInRefused("Wrong name or password.", wait=retry_wait(failures)))
        else:
            conn.execute("UPDATE users SET failures=0, failed_at=NULL, locked_until=NULL "
                         "WHERE name=?", (name,))
            if _HASHER.check_needs_rehash(row["password_hash"]):
                conn.execute("UPDATE users SET password_hash=? WHERE name=?",
                             (_HASHER.hash(password), name))
            return _open_session(conn, name, at)
    raise refused


def sso_sign_in(ws: Workspace, identity: str | None, *, at: float | None = None) -> str:
    """A session for an identity the organisation's identity provider has signed in (its
    e-mail address); refused unless an account was added for it with `--sso`."""
    at = time.time() if at is None else at
    identity = (identity or "").strip()
    rows = ws.query("SELECT password_hash FROM users WHERE name=?", (identity,))
    if not identity or not rows or rows[0]["password_hash"] is not None:
        raise SignInRefused(f"{identity or 'This identity'} has no single-sign-on account in "
                            "this workspace: a lead adds it with `semievol users add "
                            "WORKSPACE NAME --role reviewer --sso`.")
    with ws.transaction() as conn:
        return _open_session(conn, identity, at)


def _verify(digest: str, password: str) -> bool:
    try:
        return _HASHER.verify(digest, password)
    except (VerificationError, InvalidHashError):
        return False


def _hashed(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _open_session(conn, name: str, at: float) -> str:
    token = secrets.token_urlsafe(32)
    conn.execute("DELETE FROM sessions WHERE seen_at <= ? OR created_at <= ?",
                 (at - IDLE_SECONDS, at - SESSION_SECONDS))
    conn.execute("INSERT INTO sessions(token_hash, user_name, created_at, seen_at) "
                 "VALUES(?,?,?,?)", (_hashed(token), name, at, at))
    return token


def session_account(ws: Workspace, token: str | None, *,
                    at: float | None = None) -> Account | None:
    """The account a session token belongs to, or None when there is no such live session
    (never issued, signed out, expired, its account removed or its password reset)."""
    if not token:
        return None
    at = time.time() if at is None else at
    rows = ws.query("SELECT s.user_name, s.created_at, s.seen_at, u.role FROM sessions s "
                    "JOIN users u ON u.name = s.user_name WHERE s.token_hash=?",
                    (_hashed(token),))
    if not rows:
        return None
    row = rows[0]
    if row["seen_at"] <= at - IDLE_SECONDS or row["created_at"] <= at - SESSION_SECONDS:
        close_session(ws, token)
        return None
    if at - row["seen_at"] > _TOUCH_SECONDS and not ws.read_only:
        with ws.transaction() as conn:
            conn.execute("UPDATE sessions SET seen_at=? WHERE token_hash=?",
                         (at, _hashed(token)))
    return Account(row["user_name"], row["role"])


def close_session(ws: Workspace, token: str | None) -> None:
    """Sign out: the token no longer opens anything."""
    if token:
        with ws.transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE token_hash=?", (_hashed(token),))
