"""Where exports go and how they land: in the workspace's exports/ folder (never through a
link out of it) or a folder the user names; under a name not taken yet (`-2`, `-3`, ...), so
an export never overwrites or deletes; written aside and renamed when whole, so a failed
export (a full disk) leaves nothing behind and keeps its name free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from semievol.errors import SemiEvolError
from semievol.workspace.store import Workspace

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


def export_folder(ws: Workspace, out_dir: str | Path | None = None) -> Path:
    """The folder an export writes into: `out_dir` as the user named it, or the workspace's
    exports/ folder, which must stay inside the workspace (a link planted there is refused
    before anything is written)."""
    if out_dir is not None and not Path(out_dir).resolve().is_relative_to(ws.path):
        folder = Path(out_dir)
    else:
        folder = ws.inside(out_dir if out_dir is not None else "exports")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def staged(target: Path):
    """Yield a hidden path beside `target` to write the export into (a file or a folder);
    renamed to `target` when the block ends, removed when it fails. A failure on the disk
    (full, read-only, a permission) is one SemiEvolError line; nothing is left behind."""
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    _remove(partial)
    try:
        yield partial
        partial.rename(target)
    except BaseException as exc:
        _remove(partial)
        if isinstance(exc, (OSError, shutil.Error)):
            raise SemiEvolError(f"The export to {target} failed ({_why(exc)}); nothing was "
                                "written. Free some space (or fix the folder) and export "
                                "again.") from exc
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _why(exc: BaseException) -> str:
    if isinstance(exc, shutil.Error):  # copytree: a list of (source, target, why)
        causes = [str(e[2]) for e in exc.args[0]] if exc.args and isinstance(
            exc.args[0], list) else [str(exc)]
        return f"{len(causes)} file(s) could not be copied: {causes[0]}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the disk is full"
    return getattr(exc, "strerror", None) or str(exc)


def human_size(size: int) -> str:
    """A size in one unit everywhere (the CLI, the app, the card): decimal megabytes."""
    return f"{size / 1e6:,.1f} MB"


def exported(ws: Workspace, round_number: int) -> dict[str, Path]:
    """The newest export of each kind of round `round_number` in the workspace's exports/
    folder (exports never overwrite: a second one is `name-2`): {jsonl, csv, parquet,
    adapter, merged, gguf}, those present. Each is resolved inside the workspace (a link out is
    refused), since the app offers them for download."""
    folder = export_folder(ws)
    names = {"jsonl": f"curated_round{round_number}.jsonl",
             "csv": f"curated_round{round_number}.csv",
             "parquet": f"curated_round{round_number}.parquet",
             "adapter": f"adapter_round{round_number}",
             "merged": f"merged_round{round_number}", "gguf": f"gguf_round{round_number}"}
    return {kind: ws.inside(written[-1]) for kind, name in names.items()
            if (written := versions(folder / name))}


def parse_what(what: str) -> list[str]:
    """The export kinds of a comma-separated list, or an error naming the unknown ones."""
    kinds = [w.strip() for w in what.split(",") if w.strip()]
    unknown = [w for w in kinds if w not in EXPORT_KINDS]
    if unknown or not kinds:
        raise SemiEvolError(f"Unknown export {', '.join(map(repr, unknown)) or '(none)'}: "
                            f"choose from {', '.join(EXPORT_KINDS)} (comma-separated).")
    return kinds
