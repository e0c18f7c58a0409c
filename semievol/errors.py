"""The one exception type for errors a user can cause and fix, and what any error may say:
never a secret (`redact`)."""

from __future__ import annotations

import re

REDACTED = "[redacted]"
_SECRETS: set[str] = set()
_CREDENTIALS = [
    # An Authorization header as a server may quote it back: "authorization": "Bearer x".
    re.compile(r"(?i)(\bauthorization\W{0,4}\s*(?:bearer|basic|token)?\s*)[^\s\"',;}]+"),
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)((?:api[_-]?key|x-api-key|access[_-]?token)\W{0,4}\s*)[^\s\"',;}]+"),
]


def remember_secret(value: str) -> None:
    """A secret this process holds (an API key read from the environment): `redact`
    removes it from every text from now on."""
    if value:
        _SECRETS.add(value)


def redact(text) -> str:
    """`text` without credentials: every secret this process holds, and what looks like an
    Authorization header, a bearer token or an API key. What a server says and what an
    error says pass through here before they are stored, logged or shown."""
    text = str(text)
    for secret in _SECRETS:
        text = text.replace(secret, REDACTED)
    for pattern in _CREDENTIALS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


class SemiEvolError(Exception):
    """A problem the user can act on: the message says what is wrong and how to fix it.

    `problems` carries every individual finding (for example one per bad row of an import),
    so callers can show all of them rather than only the first. Both are redacted (`redact`):
    an error quoting a server's reply never carries a key.

    `app` is the same message in the app's words where the remedy differs (a page and a
    button, not a command and a flag); the app shows it, the CLI shows `message`.
    """

    def __init__(self, message: str, problems: list[str] | None = None, *,
                 app: str | None = None):
        super().__init__(redact(message))
        self.problems = [redact(p) for p in problems or []]
        self.app = None if app is None else redact(app)

    def __str__(self) -> str:
        text = super().__str__()
        if self.problems:
            text += "\n" + "\n".join(f"  - {p}" for p in self.problems)
        return text
