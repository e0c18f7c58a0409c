"""Where exports go: a name that is taken gets a numbered sibling (`-2`, `-3`, ...), so an
export never overwrites or deletes; and which exports there are."""

from __future__ import annotations

from pathlib import Path

from semievol.errors import SemiEvolError

EXPORT_KINDS = ("dataset", "adapter", "merged", "gguf")


def _numbered(path: Path, n: int) -> Path:
    if n == 1:
        return path
    stem, suffix = (path.stem, path.suffix) if path.suffix else (path.name, "")
    return path.with_name(f"{stem}-{n}{suffix}")


def versions(path: Path) -> list[Path]:
    """The exports written under `path`'s name, oldest first: path, path-2, path-3, ..."""
    found, n = [], 1
    while _numbered(path, n).exists():
        found.append(_numbered(path, n))
        n += 1
    return found


def free_path(path: Path) -> Path:
    """`path`, or the first of path-2, path-3, ... that does not exist yet."""
    return _numbered(path, len(versions(path)) + 1)


def parse_what(what: str) -> list[str]:
    """The export kinds of a comma-separated list, or an error naming the unknown ones."""
    kinds = [w.strip() for w in what.split(",") if w.strip()]
    unknown = [w for w in kinds if w not in EXPORT_KINDS]
    if unknown or not kinds:
        raise SemiEvolError(f"Unknown export {', '.join(map(repr, unknown)) or '(none)'}: "
                            f"choose from {', '.join(EXPORT_KINDS)} (comma-separated).")
    return kinds
