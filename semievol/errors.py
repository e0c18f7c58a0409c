"""The one exception type for errors a user can cause and fix."""


class SemiEvolError(Exception):
    """A problem the user can act on: the message says what is wrong and how to fix it.

    `problems` carries every individual finding (for example one per bad row of an import),
    so callers can show all of them rather than only the first.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])

    def __str__(self) -> str:
        text = super().__str__()
        if self.problems:
            text += "\n" + "\n".join(f"  - {p}" for p in self.problems)
        return text
