"""Reading task files row by row (CSV, TSV, JSON Lines, Parquet) with the checks that need
the file's structure: a folder or a missing file, the size bound, text that is not UTF-8, a
duplicate or empty header, a row with more or fewer fields than the header.

Rows are streamed, so a large file is never held in memory: `open_rows` gives the columns
and an iterator of (row number, {column: value}). Values keep their written form: text from
CSV, JSON values from JSON Lines, typed values from Parquet (an integer stays an integer).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from semievol.errors import SemiEvolError

FILE_TYPES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PROBLEMS_SHOWN = 200
PARQUET_BATCH = 2048

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts (abstracts, threads) are fine


@dataclass
class Rows:
    """An open file: its columns, and its rows as (row number from 1, {column: value})."""
    name: str
    kind: str
    columns: list[str]
    rows: Iterator[tuple[int, dict]]


def check_file(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES) -> tuple[Path, str]:
    """(path, kind) of a readable task file, or the error that says what is wrong."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise SemiEvolError(f"{path} is a folder, not a file: give the path of the CSV, JSONL "
                            "or Parquet file inside it.")
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
    return path, kind


def open_rows(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES) -> Rows:
    """The columns and a row iterator of a task file (see the module docstring). Errors a
    user can fix are raised as SemiEvolError, the structural ones of a row with its number."""
    path, kind = check_file(path, max_bytes=max_bytes)
    if kind == "parquet":
        return _parquet(path)
    _check_utf8(path)
    if kind == "jsonl":
        return _jsonl(path)
    return _csv(path, "\t" if kind == "tsv" else ",")


def _check_utf8(path: Path) -> None:
    """Refuse a file that is not UTF-8, naming every bad line (read in chunks: the whole
    file is never decoded at once)."""
    decoder_ok = True
    with open(path, "rb") as fh:
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            decoder_ok = False
    if decoder_ok:
        return
    bad = []
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(f"line {number}: bytes that are not UTF-8")
                if len(bad) >= MAX_PROBLEMS_SHOWN:
                    break
    raise SemiEvolError(
        f"{path.name} is not UTF-8 text: re-save it as UTF-8 (in a spreadsheet: 'CSV UTF-8'; "
        "or `iconv -f cp1252 -t utf-8`).", bad)


def _check_header(name: str, columns: list[str]) -> list[str]:
    columns = [str(c).strip() for c in columns]
    if not columns or all(not c for c in columns):
        raise SemiEvolError(f"{name} has no header row: its first line must name the columns.")
    empty = [k + 1 for k, c in enumerate(columns) if not c]
    if empty:
        raise SemiEvolError(f"{name}: column {empty[0]} of the header has no name; name every "
                            "column in the first line.")
    seen, duplicates = set(), []
    for c in columns:
        if c in seen:
            duplicates.append(c)
        seen.add(c)
    if duplicates:
        raise SemiEvolError(f"{name}: the header names {', '.join(map(repr, duplicates))} more "
                            "than once; give every column its own name.")
    return columns


def _csv(path: Path, delimiter: str) -> Rows:
    fh = open(path, encoding="utf-8-sig", newline="")
    reader = csv.reader(fh, delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        fh.close()
        raise SemiEvolError(f"{path.name} is empty: it needs a header row and data rows.")
    except csv.Error as exc:
        fh.close()
        raise SemiEvolError(f"{path.name} could not be parsed as CSV: {exc}. Check the quoting "
                            "and the delimiter.") from exc
    try:
        columns = _check_header(path.name, header)
    except SemiEvolError:
        fh.close()
        raise

    def rows():
        number = 0
        try:
            for record in reader:
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # a blank line
                number += 1
                if len(record) != len(columns):
                    raise SemiEvolError(
                        f"{path.name}, row {number} (line {reader.line_num}): "
                        f"{len(record)} fields where the header has {len(columns)}. A quote "
                        "or a delimiter inside a text is the usual cause: quote the text, or "
                        "fix the row.")
                yield number, dict(zip(columns, record))
        except csv.Error as exc:
            raise SemiEvolError(f"{path.name}, line {reader.line_num}: {exc}. Check the "
                                "quoting and the delimiter.") from exc
        finally:
            fh.close()

    return Rows(path.name, "csv" if delimiter == "," else "tsv", columns, rows())


def _jsonl(path: Path) -> Rows:
    columns: list[str] = []
    with open(path, encoding="utf-8-sig") as fh:
        for line in fh:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    break  # reported, with its line number, while reading the rows
                if isinstance(first, dict):
                    columns = _check_header(path.name, list(first))
                break
    if not columns:
        raise SemiEvolError(f"{path.name} has no JSON object on its first line: every line "
                            "must be one object, e.g. {\"question\": ..., \"answer\": ...}.")

    def rows():
        problems, number = [], 0
        with open(path, encoding="utf-8-sig") as fh:
            for line_number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                number += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    problems.append(f"line {line_number}: not valid JSON ({exc.msg})")
                    continue
                if not isinstance(record, dict):
                    problems.append(f"line {line_number}: expected a JSON object, got "
                                    f"{type(record).__name__}")
                    continue
                if not problems:
                    yield number, record
        if problems:
            raise SemiEvolError(f"{path.name} has lines that are not JSON objects; fix them and "
                                "import again.", problems[:MAX_PROBLEMS_SHOWN])

    return Rows(path.name, "jsonl", columns, rows())


def _parquet(path: Path) -> Rows:
    try:
        import pyarrow.parquet as pq

        source = pq.ParquetFile(path)
        columns = _check_header(path.name, list(source.schema_arrow.names))
    except SemiEvolError:
        raise
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise SemiEvolError(f"{path.name} is not a readable Parquet file ({exc}).") from exc

    def rows():
        number = 0
        try:
            for batch in source.iter_batches(batch_size=PARQUET_BATCH):
                for record in batch.to_pylist():
                    number += 1
                    yield number, record
        except Exception as exc:
            raise SemiEvolError(f"{path.name} is not a readable Parquet file (row {number + 1}: "
                                f"{exc}).") from exc

    return Rows(path.name, "parquet", columns, rows())


def read_sample(path: str | Path, limit: int = 5) -> tuple[list[str], list[dict], int | None]:
    """(columns, the first `limit` rows, how many rows the file has (None when counting would
    mean reading a large file twice: over 20 MiB)) for a preview."""
    opened = open_rows(path)
    sample = []
    for _, record in opened.rows:
        sample.append(record)
        if len(sample) >= limit:
            break
    total = None
    if Path(path).stat().st_size <= 20 * 2**20:
        total = sum(1 for _ in open_rows(path).rows)
    return opened.columns, sample, total
