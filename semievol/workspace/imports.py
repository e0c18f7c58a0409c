"""Importing a task file into a split: map its columns, check every row, insert all of it
in one transaction or nothing.

Rows are streamed from the file (semievol.workspace.readers) and checked and inserted in batches
inside one write transaction (BEGIN IMMEDIATE: a second import waits, then sees the first
one's ids); when any row has a problem, everything is rolled back and every problem is
reported with its row number, so a user fixes a file in one pass and a bad file never
half-lands. Memory stays bounded by a batch, not the file.

Nothing changes meaning silently: an answer is read as a label only when it is the label's
text (a case or spacing difference is resolved and reported), letters and numbers only in a
letter-format task; control characters are refused; the report says what was resolved and
which test items duplicate items of the other splits (leakage).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path

from semievol.config import TaskConfig
from semievol.errors import SemiEvolError
from semievol.task.numbers import overflowed, read_number
from semievol.workspace.readers import MAX_FILE_BYTES, MAX_PROBLEMS_SHOWN, open_rows
from semievol.workspace.store import Workspace, now

IMPORT_SPLITS = ("labeled", "unlabeled", "test")
"""The splits a file is imported into (calibration is held out from labeled by round 1)."""
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
BATCH = 2000
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""Control characters (a NUL, an escape): invisible, and a sign the file is not text."""


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
    notes: list[str] = field(default_factory=list)
    """What the import resolved or noticed (case differences in answers, leakage)."""


COLUMN_NAMES = {"question": ("question", "text", "prompt", "input", "sentence", "content"),
                "answer": ("answer", "label", "gold", "target", "output"),
                "options": ("options", "choices"),
                "id": ("id", "item_id", "uid", "key")}
"""Column names each field is guessed from (case-insensitive), in preference order."""


def guess_mapping(columns: list[str], sample: list[dict]) -> ColumnMapping:
    """A first guess of the column mapping: answer, options and id by their names; the
    question by name, else by content (the column with the longest texts in `sample`, since
    an id or a label is short)."""
    lowered = {c.lower(): c for c in columns}

    def by_name(name):
        return next((lowered[n] for n in COLUMN_NAMES[name] if n in lowered), None)

    found = {name: by_name(name) for name in ("answer", "options", "id")}
    question = by_name("question")
    if question is None:
        taken = {c for c in found.values() if c}
        candidates = [c for c in columns if c not in taken] or columns

        def mean_length(column):
            values = [str(r.get(column)) for r in sample if r.get(column) is not None]
            return sum(map(len, values)) / len(values) if values else 0.0

        question = max(candidates, key=mean_length) if candidates else "question"
    return ColumnMapping(question=question, answer=found["answer"], options=found["options"],
                         id=found["id"])


SPLIT_WORDS = {"test": ("test", "eval", "evaluation", "holdout"),
               "unlabeled": ("unlabeled", "unlabelled", "pool", "unannotated")}
"""Words in a file's name that say its split (split on anything not a letter)."""


def guess_split(file_name: str, mapping: ColumnMapping) -> str:
    """The split a file most likely is: unlabeled without an answer column, else by a word
    of its name (`fpb_test.csv`, `unlabeled.csv`), else labeled. A first guess the form
    shows; the import itself always takes the split it is given."""
    import re

    if mapping.answer is None:
        return "unlabeled"
    words = set(re.split(r"[^a-z]+", Path(file_name).stem.lower()))
    for split, names in SPLIT_WORDS.items():
        if words & set(names):
            return split
    return "labeled"


def parse_options(value) -> list[str] | None:
    """Options as a list of distinct non-empty strings, from a JSON list (text) or an
    actual list; None when it is anything else (a null or a number among them included)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if hasattr(value, "tolist"):  # numpy arrays
        value = value.tolist()
    if not isinstance(value, list) or len(value) < 2 or \
            not all(isinstance(v, str) for v in value):
        return None
    options = [v.strip() for v in value]
    return options if all(options) and len(set(options)) == len(options) else None


def resolve_answer(answer: str, options: list[str], *, letters: bool = False) -> str | None:
    """The option an answer names: its text (ignoring case and surrounding space), or, with
    `letters` (a letter-format task), its letter A.. or its number 1..; else None."""
    answer = answer.strip()
    if answer in options:
        return answer
    for option in options:
        if option.casefold() == answer.casefold():
            return option
    if letters and len(answer) == 1 and answer.upper() in LETTERS[: len(options)]:
        return options[LETTERS.index(answer.upper())]
    if letters and answer.isdigit() and 1 <= int(answer) <= len(options):
        return options[int(answer) - 1]
    return None


def text_of(value) -> str:
    """A cell as text, in its written form: None and NaN are empty, numbers are not
    reformatted (an integer stays 12345, not 12345.0), a JSON object or list (a JSON Lines
    or Parquet cell) is its JSON text, never a Python repr."""
    if value is None:
        return ""
    if hasattr(value, "tolist"):  # a numpy array or scalar from Parquet
        value = value.tolist()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, float) and value != value:  # NaN
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(value)  # a float column: written as a float
    return str(value).strip()


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "...'"


def text_key(question: str) -> str:
    """What two items share when they are the same text (case and spacing aside): the
    digest the leakage report compares."""
    return hashlib.sha1(" ".join(question.casefold().split()).encode("utf-8")).hexdigest()


class _RowChecker:
    """Checks one row at a time against the mapping and the task; collects the problems
    and what was resolved."""

    def __init__(self, name: str, mapping: ColumnMapping, split: str, task: TaskConfig):
        self.name, self.mapping, self.split, self.task = name, mapping, split, task
        self.needs_answer = split in ("labeled", "test")
        self.letters = task.kind == "choice" and task.answer_format == "letter"
        self.problems: list[str] = []
        self.problem_count = 0
        self.seen: dict[str, int] = {}
        self.case_resolved: list[tuple[str, str]] = []
        self.numbers_read: list[str] = []         # "'1,00,000' read as 100000"
        self.numbers_missing: list[str] = []      # gold answers the checker reads no number in
        self.json_cells: list[str] = []           # fields given as JSON objects or lists

    def _problem(self, number: int, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS_SHOWN:
            self.problems.append(f"row {number}: {text}")

    def check(self, number: int, record: dict) -> dict | None:
        m, task = self.mapping, self.task
        before = self.problem_count
        question = text_of(record.get(m.question))
        for column in (m.question, m.answer if self.needs_answer else None):
            if column and isinstance(record.get(column), (dict, list)):
                self.json_cells.append(f"row {number} {column}")
        if not question:
            self._problem(number, "empty question")
        external_id = text_of(record.get(m.id)) if m.id else f"{self.name}:{self.split}:{number}"
        if m.id and not external_id:
            self._problem(number, "empty id")
        elif external_id in self.seen:
            self._problem(number, f"duplicate id {external_id!r} (also row "
                                  f"{self.seen[external_id]})")
        self.seen.setdefault(external_id, number)
        for label, value in (("question", question), ("id", external_id)):
            bad = CONTROL.search(value)
            if bad:
                self._problem(number, f"a control character (U+{ord(bad.group()):04X}) in the "
                                      f"{label}: remove it (the file may not be plain text)")
        options = None
        if task.kind == "choice":
            options = task.labels or parse_options(record.get(m.options))
            if options is None:
                self._problem(number, f"malformed options {_short(record.get(m.options))}: "
                                      "expected a JSON list of at least two distinct non-empty "
                                      "strings")
            elif not task.labels and any(CONTROL.search(o) for o in options):
                self._problem(number, "a control character in the options: remove it")
        answer = None
        if self.needs_answer:
            raw = text_of(record.get(m.answer))
            if not raw:
                self._problem(number, "empty answer")
            elif CONTROL.search(raw):
                self._problem(number, "a control character in the answer: remove it")
            elif task.kind == "choice" and options is not None:
                answer = resolve_answer(raw, options, letters=self.letters)
                if answer is None:
                    hint = ("" if self.letters or not (
                        resolve_answer(raw, options, letters=True)) else
                        "; letters and numbers name options only in a letter-format task "
                        "(--answer-format letter): write the option's text")
                    self._problem(number, f"answer {raw!r} is not among the options "
                                          f"({', '.join(options)}){hint}")
                elif answer != raw and answer.casefold() == raw.casefold():
                    self.case_resolved.append((raw, answer))
            else:
                answer = raw
                if task.kind == "open" and task.checker == "numeric":
                    self._read_number(number, raw)
        if self.problem_count > before:
            return None
        return {"external_id": external_id, "question": question, "answer": answer,
                "options": None if task.labels or task.kind == "open" else options,
                "source_row": number}


    def _read_number(self, number: int, raw: str) -> None:
        """Note how the numeric checker reads a gold answer, where that is not as written."""
        found = read_number(raw)
        if found is None:
            too_large = overflowed(raw)
            self.numbers_missing.append(f"row {number} {raw!r}" + (
                f" ({too_large[0]} is too large to compare)" if too_large else ""))
        elif found.described() != found.plain or found.written.strip() != raw.strip():
            self.numbers_read.append(f"row {number}: {found.described()}"
                                     + ("" if found.written.strip() == raw.strip()
                                        else f" (from {raw!r})"))


def _check_columns(name: str, columns: list[str], mapping: ColumnMapping, split: str,
                   task: TaskConfig) -> None:
    needs_answer = split in ("labeled", "test")
    wanted = {"question": mapping.question, "id": mapping.id, "options": mapping.options}
    if needs_answer:
        wanted["answer"] = mapping.answer
    missing = [f"{f} column {c!r}" for f, c in wanted.items() if c and c not in columns]
    if needs_answer and not mapping.answer:
        missing.append("an answer column (the labeled and test splits need answers)")
    if task.kind == "choice" and not task.labels and not mapping.options:
        missing.append("an options column (or give the task a label set)")
    if missing:
        raise SemiEvolError(
            f"{name}: missing {'; '.join(missing)}. The file has columns: "
            f"{', '.join(columns) or '(none)'}. Map the columns (--question-col, --answer-col, "
            "--options-col, --id-col) or fix the header.")


def import_file(ws: Workspace, path: str | Path, split: str, *,
                mapping: ColumnMapping | None = None, task: TaskConfig | None = None,
                max_bytes: int = MAX_FILE_BYTES) -> ImportReport:
    """Check every row of the file and insert all of it in one transaction, or nothing.

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
    opened = open_rows(path, max_bytes=max_bytes)
    _check_columns(opened.name, opened.columns, mapping, split, task)
    checker = _RowChecker(opened.name, mapping, split, task)
    try:
        with ws.transaction() as conn:
            if ws.task is None:
                ws.set_task(task, conn)
            import_id = conn.execute(
                "INSERT INTO imports(file, split, rows, mapping, created_at) VALUES(?,?,?,?,?)",
                (opened.name, split, 0, json.dumps(asdict(mapping)), now())).lastrowid
            count = _insert_rows(ws, conn, opened.rows, checker, split, import_id)
            if checker.problem_count:
                more = checker.problem_count - len(checker.problems)
                raise SemiEvolError(
                    f"{opened.name}: {checker.problem_count} problem(s) found; nothing was "
                    "imported. Fix them and import again."
                    + (f" ({more} more not shown.)" if more else ""), checker.problems)
            if not count:
                raise SemiEvolError(f"{opened.name} has no data rows.")
            conn.execute("UPDATE imports SET rows=? WHERE id=?", (count, import_id))
            notes = _notes(ws, checker, split, import_id)
    except sqlite3.IntegrityError as exc:  # an id another import inserted meanwhile
        raise SemiEvolError(f"{opened.name}: an id of this file is already in the workspace "
                            f"({exc}); nothing was imported.") from exc
    return ImportReport(str(path), split, count, import_id, notes)


def _insert_rows(ws: Workspace, conn, rows, checker: _RowChecker, split: str,
                 import_id: int) -> int:
    """Check and insert the rows in batches (inside the caller's transaction); returns how
    many were inserted. Rows with problems are skipped: the caller rolls everything back."""
    count, batch = 0, []

    def flush():
        nonlocal count
        taken = {r[0] for r in ws.query_in("SELECT external_id FROM items WHERE external_id "
                                           "IN ({})", [it["external_id"] for it, _ in batch])}
        fresh = []
        for it, number in batch:
            if it["external_id"] in taken:
                checker._problem(number, f"id {it['external_id']!r} is already in the workspace")
            else:
                fresh.append(it)
        if not checker.problem_count:
            conn.executemany(
                "INSERT INTO items(external_id, split, question, options, answer, import_id, "
                "source_row) VALUES(?,?,?,?,?,?,?)",
                [(it["external_id"], split, it["question"],
                  None if it["options"] is None else json.dumps(it["options"]), it["answer"],
                  import_id, it["source_row"]) for it in fresh])
        count += len(fresh)
        batch.clear()

    for number, record in rows:
        item = checker.check(number, record)
        if item is not None:
            batch.append((item, number))
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return count


def _notes(ws: Workspace, checker: _RowChecker, split: str, import_id: int) -> list[str]:
    """What the import resolved, and the test items that duplicate other splits' items."""
    notes = []
    if checker.case_resolved:
        raw, label = checker.case_resolved[0]
        notes.append(f"{len(checker.case_resolved)} answer(s) matched a label only ignoring "
                     f"case or spacing and were stored as the label (e.g. {raw!r} -> {label!r}).")
    if checker.json_cells:
        notes.append(f"{len(checker.json_cells)} cell(s) held a JSON object or list and are "
                     f"stored as its JSON text ({', '.join(checker.json_cells[:5])}).")
    if checker.numbers_read:
        notes.append(f"{len(checker.numbers_read)} gold answer(s) are read by the numeric "
                     f"checker otherwise than written: {'; '.join(checker.numbers_read[:5])}.")
    if checker.numbers_missing:
        notes.append(f"{len(checker.numbers_missing)} gold answer(s) have no number the "
                     f"numeric checker can read, so every answer to them counts as wrong: "
                     f"{'; '.join(checker.numbers_missing[:5])}. Fix them, or use the "
                     "normalized checker.")
    duplicates = _leakage(ws, split, import_id)
    if duplicates:
        examples = ", ".join(duplicates[:5])
        notes.append(f"Leakage: {len(duplicates)} test item(s) have the same text as a labeled "
                     f"or unlabeled item (e.g. {examples}): a model trained on those is "
                     "measured on what it saw. Remove them from one of the files.")
    return notes


def _leakage(ws: Workspace, split: str, import_id: int) -> list[str]:
    """External ids of test items whose text equals an item of another split, where this
    import brought one side of the pair in. The test split's digests are held (it is the
    small side); the other side is streamed."""
    test_sql = ("SELECT external_id, question FROM items WHERE import_id = ?" if split == "test"
                else "SELECT external_id, question FROM items WHERE split = 'test'")
    test_keys: dict[str, list[str]] = {}
    for external_id, question in ws.conn.execute(test_sql, (import_id,) if split == "test"
                                                 else ()):
        test_keys.setdefault(text_key(question), []).append(external_id)
    if not test_keys:
        return []
    other_sql = ("SELECT question FROM items WHERE split != 'test'" if split == "test"
                 else "SELECT question FROM items WHERE import_id = ?")
    found: set[str] = set()
    for (question,) in ws.conn.execute(other_sql, () if split == "test" else (import_id,)):
        found.update(test_keys.get(text_key(question), ()))
    return sorted(found)
