"""Load task files (CSV, JSONL, Parquet), map their columns, validate, import all-or-nothing.

Validation collects every problem with its row number before anything is written, so a
user fixes a file in one pass and a bad file never half-lands in the workspace.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from semievol.config import TaskConfig
from semievol.errors import SemiEvolError
from semievol.store import Workspace, now

IMPORT_SPLITS = ("labeled", "unlabeled", "test")
"""The splits a file is imported into (calibration is held out from labeled by round 1)."""
FILE_TYPES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PROBLEMS_SHOWN = 200
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class ColumnMapping:
    """Which file column holds each field. Only `question` is required."""
    question: str = "question"
    answer: str | None = "answer"
    options: str | None = None
    id: str | None = None


@dataclass
class ImportReport:
    file: str
    split: str
    rows: int
    import_id: int


def read_table(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES):
    """Read a file into a DataFrame of strings, or raise with what is wrong and how to fix it."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise SemiEvolError(f"File not found: {path}.")
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind is None:
        raise SemiEvolError(
            f"Unknown file type {path.suffix or '(none)'!r} for {path.name}: use CSV (.csv, "
            ".tsv), JSON Lines (.jsonl) or Parquet (.parquet).")
    size = path.stat().st_size
    if size > max_bytes:
        raise SemiEvolError(
            f"{path.name} is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB "
            "import bound: split it into several files and import each.")
    if kind == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise SemiEvolError(f"{path.name} is not a readable Parquet file ({exc}).") from exc
        return frame.astype(object).where(frame.notna(), None)
    text = _decode(path)
    try:
        if kind == "jsonl":
            return _read_jsonl(text, path.name)
        import io
        frame = pd.read_csv(io.StringIO(text), sep="\t" if kind == "tsv" else ",",
                            dtype=str, keep_default_na=False)
    except SemiEvolError:
        raise
    except Exception as exc:
        raise SemiEvolError(f"{path.name} could not be parsed as {kind.upper()}: {exc}. "
                            "Check the quoting and the delimiter.") from exc
    return frame


def _decode(path: Path) -> str:
    """Decode as UTF-8; on failure name every line that is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        bad = []
        for number, line in enumerate(raw.split(b"\n"), start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(f"line {number}: bytes that are not UTF-8")
        raise SemiEvolError(
            f"{path.name} is not UTF-8 text: re-save it as UTF-8 (in a spreadsheet: "
            "'CSV UTF-8'; or `iconv -f cp1252 -t utf-8`).", bad[:MAX_PROBLEMS_SHOWN])


def _read_jsonl(text: str, name: str):
    import pandas as pd

    records, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            problems.append(f"line {number}: expected a JSON object, got {type(record).__name__}")
            continue
        records.append(record)
    if problems:
        raise SemiEvolError(f"{name} has lines that are not JSON objects; fix them and "
                            "import again.", problems[:MAX_PROBLEMS_SHOWN])
    return pd.DataFrame.from_records(records)


COLUMN_NAMES = {"question": ("question", "text", "prompt", "input", "sentence", "content"),
                "answer": ("answer", "label", "gold", "target", "output"),
                "options": ("options", "choices"),
                "id": ("id", "item_id", "uid", "key")}
"""Column names each field is guessed from (case-insensitive), in preference order."""


def guess_mapping(frame) -> ColumnMapping:
    """A first guess of the column mapping: answer, options and id by their names; the
    question by name, else by content (the column with the longest texts, since an id or
    a label is short)."""
    columns = [str(c) for c in frame.columns]
    lowered = {c.lower(): c for c in columns}

    def by_name(field):
        return next((lowered[n] for n in COLUMN_NAMES[field] if n in lowered), None)

    found = {field: by_name(field) for field in ("answer", "options", "id")}
    question = by_name("question")
    if question is None:
        taken = {c for c in found.values() if c}
        candidates = [c for c in columns if c not in taken] or columns
        sample = frame.head(200)

        def mean_length(column):
            values = [str(v) for v in sample[column].tolist() if v is not None]
            return sum(map(len, values)) / len(values) if values else 0.0

        question = max(candidates, key=mean_length) if candidates else "question"
    return ColumnMapping(question=question, answer=found["answer"], options=found["options"],
                         id=found["id"])


def parse_options(value) -> list[str] | None:
    """Options as a list of strings, from a JSON list (text) or an actual list; else None."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    if not isinstance(value, list) or len(value) < 2:
        return None
    options = [str(v).strip() for v in value]
    return options if all(options) and len(set(options)) == len(options) else None


def resolve_answer(answer: str, options: list[str]) -> str | None:
    """The option an answer names: its text (case-insensitive), letter A.., or number 1.."""
    answer = answer.strip()
    for option in options:
        if option.lower() == answer.lower():
            return option
    if len(answer) == 1 and answer.upper() in LETTERS[: len(options)]:
        return options[LETTERS.index(answer.upper())]
    if answer.isdigit() and 1 <= int(answer) <= len(options):
        return options[int(answer) - 1]
    return None


def validate_rows(frame, mapping: ColumnMapping, split: str, task: TaskConfig,
                  existing_ids: set[str], source_name: str) -> tuple[list[dict], list[str]]:
    """Check every row; return (clean items, problems). Rows are numbered from 1."""
    columns = [str(c) for c in frame.columns]
    needs_answer = split in ("labeled", "test")
    wanted = {"question": mapping.question, "id": mapping.id, "options": mapping.options}
    if needs_answer:
        wanted["answer"] = mapping.answer
    missing = [f"{field} column {col!r}" for field, col in wanted.items()
               if col and col not in columns]
    if needs_answer and not mapping.answer:
        missing.append("an answer column (the labeled and test splits need answers)")
    if task.kind == "choice" and not task.labels and not mapping.options:
        missing.append("an options column (or give the task a label set)")
    if missing:
        raise SemiEvolError(
            f"{source_name}: missing {'; '.join(missing)}. The file has columns: "
            f"{', '.join(columns) or '(none)'}. Map the columns (--question-col, --answer-col, "
            "--options-col, --id-col) or fix the header.")
    if len(frame) == 0:
        raise SemiEvolError(f"{source_name} has no data rows.")

    items, problems, seen = [], [], {}
    records = frame.to_dict("records")
    for number, record in enumerate(records, start=1):
        row_problems = []
        question = _text(record.get(mapping.question))
        if not question:
            row_problems.append("empty question")
        external_id = _text(record.get(mapping.id)) if mapping.id else f"{source_name}:{split}:{number}"
        if mapping.id and not external_id:
            row_problems.append("empty id")
        elif external_id in seen:
            row_problems.append(f"duplicate id {external_id!r} (also row {seen[external_id]})")
        elif external_id in existing_ids:
            row_problems.append(f"id {external_id!r} is already in the workspace")
        seen.setdefault(external_id, number)

        options = None
        if task.kind == "choice":
            if task.labels:
                options = task.labels
            else:
                options = parse_options(record.get(mapping.options))
                if options is None:
                    row_problems.append(
                        f"malformed options {_short(record.get(mapping.options))}: expected a "
                        "JSON list of at least two distinct non-empty strings")
        answer = None
        if needs_answer:
            raw = _text(record.get(mapping.answer))
            if not raw:
                row_problems.append("empty answer")
            elif task.kind == "choice" and options is not None:
                answer = resolve_answer(raw, options)
                if answer is None:
                    row_problems.append(f"answer {raw!r} is not among the options "
                                        f"({', '.join(options)})")
            else:
                answer = raw
        if row_problems:
            problems.extend(f"row {number}: {p}" for p in row_problems)
            continue
        items.append({"external_id": external_id, "question": question, "answer": answer,
                      "options": None if task.labels or task.kind == "open" else options,
                      "source_row": number})
    return items, problems


def import_file(ws: Workspace, path: str | Path, split: str, *,
                mapping: ColumnMapping | None = None, task: TaskConfig | None = None,
                max_bytes: int = MAX_FILE_BYTES) -> ImportReport:
    """Validate the whole file, then insert all of it in one transaction, or nothing.

    `task` sets the workspace's task on its first import; later imports must agree with it.
    """
    if split not in IMPORT_SPLITS:
        raise SemiEvolError(f"split must be one of {', '.join(IMPORT_SPLITS)}; got {split!r}.")
    mapping = mapping or ColumnMapping()
    current = ws.task
    if current is None and task is None:
        raise SemiEvolError("This workspace has no task yet: give the task kind and, for a "
                            "classification task, its label set (--kind, --labels).")
    if current is not None and task is not None and task != current:
        raise SemiEvolError(
            f"The workspace's task is {asdict(current)}; this import asks for {asdict(task)}. "
            "Import into a new workspace, or leave the task options out to use the existing one.")
    task = current or task
    frame = read_table(path, max_bytes=max_bytes)
    existing = {r[0] for r in ws.query("SELECT external_id FROM items")}
    items, problems = validate_rows(frame, mapping, split, task, existing, Path(path).name)
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        raise SemiEvolError(
            f"{Path(path).name}: {len(problems)} problem(s) found; nothing was imported. "
            "Fix them and import again." + (f" ({more} more not shown.)" if more else ""),
            shown)
    with ws.transaction() as conn:
        if current is None:
            ws.set_task(task, conn)
        cur = conn.execute(
            "INSERT INTO imports(file, split, rows, mapping, created_at) VALUES(?,?,?,?,?)",
            (str(Path(path).name), split, len(items), json.dumps(asdict(mapping)), now()))
        import_id = cur.lastrowid
        conn.executemany(
            "INSERT INTO items(external_id, split, question, options, answer, import_id, "
            "source_row) VALUES(?,?,?,?,?,?,?)",
            [(it["external_id"], split, it["question"],
              None if it["options"] is None else json.dumps(it["options"]), it["answer"],
              import_id, it["source_row"]) for it in items])
    return ImportReport(str(path), split, len(items), import_id)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from pandas
        return ""
    return str(value).strip()


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "...'"
