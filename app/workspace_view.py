"""The workspace overview (Home) and the sections of the Workspace and data page.

Two halves: plain functions that read or change the workspace and return values (tested
directly: `split_label_counts`, `question_lengths`, `preview_items`, `run_import`,
`run_index`, `next_steps`), and `show_*` functions that render them. Every read goes to
SQLite on each run; item previews are paginated in SQL, never loaded whole.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st
from common import allow, flash, literal, may_here, show_error, user_errors

from semievol.config import ANSWER_FORMATS, CHECKERS, TASK_KINDS, TaskConfig
from semievol.errors import SemiEvolError
from semievol.method.retrieval import SentenceTransformerEmbedder, index_workspace
from semievol.views import workspace as browse
from semievol.views.status import length_line, length_report, workspace_status
from semievol.views.workflow import next_steps
from semievol.workspace.imports import (IMPORT_SPLITS, ColumnMapping, ImportReport, guess_mapping,
                                        guess_split, import_file)
from semievol.workspace.readers import FILE_TYPES, read_sample
from semievol.workspace.store import SPLITS, Workspace

MAX_BARS = 30
NONE = "(none)"
PAGE_LINKS = [("pages/1_Workspace.py", "Workspace and data", ":material/database:"),
              ("pages/2_Round_setup.py", "Round setup", ":material/settings:"),
              ("pages/4_Review.py", "Review", ":material/rate_review:"),
              ("pages/6_Train_and_evaluate.py", "Train and evaluate", ":material/model_training:")]


# -- reads --------------------------------------------------------------------------------
def split_label_counts(ws: Workspace) -> pd.DataFrame:
    """Gold answers per class in the labeled and test splits: columns split, label, items."""
    return pd.DataFrame(browse.label_counts(ws), columns=["split", "label", "items"])


def question_lengths(ws: Workspace) -> pd.DataFrame:
    """Question length in characters per split (min, mean, max)."""
    frame = pd.DataFrame(browse.question_lengths(ws),
                         columns=["split", "items", "min", "mean", "max"])
    frame = frame.rename(columns={"min": "min chars", "mean": "mean chars", "max": "max chars"})
    frame["mean chars"] = frame["mean chars"].round(1)
    order = {s: i for i, s in enumerate(SPLITS)}
    return frame.sort_values("split", key=lambda s: s.map(order)).reset_index(drop=True)


def rounds_frame(rounds: list[dict]) -> pd.DataFrame:
    """The rounds in words (never the database's `pseudo_labels` or `awaiting_review`)."""
    return pd.DataFrame(
        [{"round": r["number"], "status": r["status_name"], "pseudo-labels": r["pseudo_labels"],
          "calibration labels": r["calibration_labels"], "selected": r["selected"],
          "accuracy": r["score"] or "—",
          "best": "best" if r["best"] else ""} for r in rounds],
        columns=["round", "status", "pseudo-labels", "calibration labels", "selected",
                 "accuracy", "best"])


def preview_items(ws: Workspace, split: str, page: int = 1, *, search: str = "",
                  page_size: int = browse.PREVIEW_PAGE_SIZE) -> pd.DataFrame:
    """One page (1-based) of a split's items, in import order, with their neighbour count;
    a missing answer or options shows as "—" (a table would print a raw None)."""
    frame = pd.DataFrame(browse.preview_rows(ws, split, page, search=search,
                                             page_size=page_size),
                         columns=["id", "question", "answer", "options", "neighbours"])
    for column in ("id", "answer", "options"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), "—")
    return frame


# -- changes ------------------------------------------------------------------------------
def upload_root() -> Path:
    """A folder only this user can read (0700): uploads wait there until imported."""
    root = Path(tempfile.gettempdir()) / f"semievol-uploads-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)  # an existing folder too
    return root


def save_upload(name: str, data: bytes, file_id: str) -> Path:
    """Write an uploaded file to the private upload folder under its own name (the name is
    recorded with the import and, without an id column, makes the item ids), once per
    upload; `discard_upload` deletes it once imported."""
    folder = upload_root() / re.sub(r"\W", "_", file_id)
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / (Path(name).name or "upload")
    if not path.exists():
        path.write_bytes(data)
        os.chmod(path, 0o600)
    return path


def discard_upload(path: Path) -> None:
    """Delete an imported upload and its folder."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def mapping_from_choices(question: str, answer: str, options: str, id: str) -> ColumnMapping:
    """A ColumnMapping from the selectboxes, where "(none)" means no column."""
    def pick(col):
        return None if col in (None, NONE) else col
    return ColumnMapping(question=question, answer=pick(answer), options=pick(options),
                         id=pick(id))


def task_from_form(kind: str, labels: str, answer_format: str = "words",
                   checker: str = "normalized", instruction: str = "") -> TaskConfig:
    """The TaskConfig of the form; raises SemiEvolError when it is not valid."""
    names = [x.strip() for x in labels.split(",") if x.strip()] or None
    return TaskConfig(kind=kind, labels=names, answer_format=answer_format, checker=checker,
                      instruction=instruction.strip())


def run_import(ws: Workspace, path: str | Path, split: str, mapping: ColumnMapping,
               task: TaskConfig | None = None
               ) -> tuple[ImportReport | None, SemiEvolError | None]:
    """Import all of the file or none of it: (report, None) or (None, the validation error)."""
    try:
        allow(ws, "import")
        return import_file(ws, path, split, mapping=mapping, task=task), None
    except SemiEvolError as exc:
        return None, exc


def run_index(ws: Workspace, k: int, progress=None, embedder=None) -> dict:
    """Embed and retrieve neighbours (the bundled embedder unless one is given)."""
    allow(ws, "import")
    embedder = embedder or SentenceTransformerEmbedder("bundled")
    return index_workspace(ws, embedder, k=k, progress=progress)


def index_summary(result: dict, k: int) -> str:
    if not result["embedded"] and not result["queried"]:
        return f"Nothing to do: all items embedded, neighbours up to date (k={k})."
    return (f"Embedded {result['embedded']} item(s); labeled pool {result['pool']}; "
            f"neighbours stored for {result['queried']} item(s) (k={k}).")


# -- rendering ----------------------------------------------------------------------------
def show_split_metrics(counts: dict[str, int]) -> None:
    for column, split in zip(st.columns(len(SPLITS)), SPLITS):
        column.metric(split.capitalize(), counts.get(split, 0))


def show_label_warnings(warnings: list[dict]) -> None:
    """The classes short of labels (curation.sufficiency), before any round is spent."""
    if warnings:
        st.warning("**Some classes have too few labeled examples to be learnt:**\n\n"
                   + "\n".join(f"- {literal(w['message'])}" for w in warnings),
                   icon=":material/warning:")


def show_overview(ws: Workspace, state: dict | None = None) -> None:
    """Home: the task, split counts, neighbour coverage, rounds, and what to do next."""
    status = workspace_status(ws)
    task = status["task"]
    if task:
        labels = literal(", ".join(task["labels"])) if task["labels"] else "options per item"
        st.markdown(f"**Task:** `{task['kind']}` · labels: {labels} · answer format "
                    f"`{task['answer_format']}`")
        if task.get("instruction"):
            st.caption(literal(task["instruction"]))
    else:
        st.markdown("**Task:** not set yet (the first import sets it).")
    show_split_metrics(status["splits"])
    if status["held_out"]:
        st.caption(status["held_out"])
    show_label_warnings(status["label_warnings"])
    unlabeled = status["splits"]["unlabeled"]
    covered = status["unlabeled_with_neighbours"] or 0
    st.markdown(f"**Neighbours:** {covered} of {unlabeled} unlabeled item(s) have retrieved "
                f"demonstrations" + (f" (k={status['retrieval_k']})." if status["retrieval_k"]
                                     else "."))
    if unlabeled:
        st.progress(min(covered / unlabeled, 1.0))
    if status["rounds"]:
        st.subheader("Rounds")
        st.dataframe(rounds_frame(status["rounds"]), hide_index=True)
    st.caption(f"Decisions recorded: {status['decisions']} · runs: {status['runs']}")
    st.subheader("What to do next")
    for step in next_steps(ws, state):  # the same action as the box above: one source
        st.markdown(f"- {step}")
    links = st.columns(4)
    for column, (page, label, icon) in zip(links, PAGE_LINKS):
        with column:
            st.page_link(page, label=label, icon=icon)


def show_statistics(ws: Workspace) -> None:
    status = workspace_status(ws)
    show_split_metrics(status["splits"])
    if status["held_out"]:
        st.caption(status["held_out"])
    show_label_warnings(status["label_warnings"])
    labels = split_label_counts(ws)
    if labels.empty:
        st.info("No labeled or test items yet: import a file on the **Import a file** tab.")
    else:
        import plotly.express as px

        task = ws.task
        if task and task.labels:
            order = task.labels
        else:  # free-form answers or per-item options: the most frequent ones only
            order = list(labels.groupby("label")["items"].sum().nlargest(MAX_BARS).index)
            labels = labels[labels["label"].isin(order)]
        figure = px.bar(labels, x="label", y="items", color="split", barmode="group",
                        category_orders={"label": order, "split": ["labeled", "test"]},
                        title="Items per class")
        figure.update_layout(height=340, margin=dict(t=40, b=10))
        st.plotly_chart(figure)
    lengths = question_lengths(ws)
    if not lengths.empty:
        st.markdown("**Question length** (characters)")
        st.dataframe(lengths, hide_index=True)
        report = length_report(ws, cached_only=True)
        if report is None and st.button("Check lengths against the context budget",
                                        key="check_lengths",
                                        help="Tokenizes the items' prompts once (at most "
                                             "20,000, sampled; seconds)."):
            report = length_report(ws)
        if report is not None:
            (st.warning if report["over"] else st.caption)(length_line(report))


def show_preview(ws: Workspace) -> None:
    left, middle, right = st.columns([1, 2, 1])
    split = left.selectbox("Split", SPLITS, key="preview_split")
    search = middle.text_input("Search question or id", key="preview_search").strip()
    total = browse.count_split(ws, split, search)
    pages = max(1, math.ceil(total / browse.PREVIEW_PAGE_SIZE))
    page = right.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1,
                              step=1, key=f"preview_page_{split}_{pages}")
    rows = preview_items(ws, split, int(page), search=search)
    if rows.empty:
        st.info(f"No {split} items" + (f" matching {literal(repr(search))}." if search
                                         else " yet."))
        return
    first = (int(page) - 1) * browse.PREVIEW_PAGE_SIZE + 1
    st.caption(f"Items {first}–{first + len(rows) - 1} of {total}")
    st.dataframe(rows, hide_index=True)


UPLOADS_KEY = "imports_done"


def show_import(ws: Workspace) -> None:
    if not may_here(ws, "import"):
        st.info("A lead imports files.", icon=":material/lock:")
        return
    # A new key after each import empties the uploader (no file left with a live Import).
    upload = st.file_uploader("Upload a labeled, unlabeled or test file",
                              type=sorted(t.lstrip(".") for t in FILE_TYPES),
                              key=f"upload_{st.session_state.get(UPLOADS_KEY, 0)}")
    if upload is None:
        st.caption("CSV or TSV with a header, JSON Lines, or Parquet. Only the question column "
                   "is required; labeled and test files need an answer column.")
        return
    path = save_upload(upload.name, upload.getvalue(), upload.file_id)
    try:
        columns, sample, total = read_sample(path, 200)
    except SemiEvolError as exc:
        show_error(exc)
        return
    st.text(f"{upload.name}: {'many' if total is None else total} row(s); columns: "
            + ", ".join(columns))
    st.dataframe(pd.DataFrame(sample[:5], columns=columns).astype(str), hide_index=True)

    guess = guess_mapping(columns, sample)
    cols = st.columns(5)
    question = cols[0].selectbox("Question column", columns,
                                 index=columns.index(guess.question), key="map_question",
                                 help="The text the model reads; guessed by name, else the "
                                      "column with the longest texts.")
    optional = [NONE, *columns]
    picks = [cols[i + 1].selectbox(label, optional, index=optional.index(value or NONE),
                                   key=f"map_{field}")
             for i, (label, field, value) in enumerate((
                 ("Answer column", "answer", guess.answer),
                 ("Options column", "options", guess.options),
                 ("Id column", "id", guess.id)))]
    mapping = mapping_from_choices(question, *picks)
    guessed = guess_split(upload.name, mapping)
    split = cols[4].selectbox("Split", IMPORT_SPLITS, index=IMPORT_SPLITS.index(guessed),
                              key=f"import_split_{upload.file_id}_{mapping.answer}",
                              help="Guessed from the columns (no answer column: unlabeled) "
                                   "and the file's name (test, unlabeled); check it.")

    task = None
    if ws.task is None:
        st.markdown("**Task** (set once, by the first import)")
        t = st.columns(3)
        kind = t[0].selectbox("Task kind", TASK_KINDS, key="task_kind")
        answer_format = t[1].selectbox("Answer format", ANSWER_FORMATS,
                                       index=ANSWER_FORMATS.index("words"), key="task_format")
        checker = t[2].selectbox("Open-answer checker", CHECKERS,
                                 index=CHECKERS.index("normalized"), key="task_checker",
                                 disabled=kind != "open")
        labels = st.text_input("Label set (comma-separated; empty when each item has its own "
                               "options or the task is open)", key="task_labels",
                               disabled=kind == "open")
        instruction = st.text_input("Instruction shown to the model (optional)",
                                    key="task_instruction")
    if not st.button("Import", type="primary", key="import"):
        return
    if ws.task is None:
        try:
            task = task_from_form(kind, "" if kind == "open" else labels, answer_format,
                                  checker, instruction)
        except SemiEvolError as exc:
            show_error(exc)
            return
    report, error = run_import(ws, path, split, mapping, task)
    if error is not None:
        show_validation_report(error)
        return
    discard_upload(path)
    st.session_state[UPLOADS_KEY] = st.session_state.get(UPLOADS_KEY, 0) + 1
    flash(f"Imported {report.rows} {split} item(s) from {upload.name}."
          + "".join(f"\n\n{literal(note)}" for note in report.notes))
    st.rerun()


def show_validation_report(error: SemiEvolError) -> None:
    """The message, every problem as a table row, and that nothing was imported."""
    st.error(literal(error.args[0] if error.args else str(error)), icon=":material/error:")
    if error.problems:
        found = [re.match(r"(?:row|line) (\d+): (.*)", p) for p in error.problems]
        table = pd.DataFrame(
            [(int(m[1]), m[2]) if m else (None, p) for m, p in zip(found, error.problems)],
            columns=["row", "problem"])
        st.dataframe(table, hide_index=True)
    st.warning("Nothing was imported: the workspace is unchanged. Fix the file or the "
               "column mapping and import again.")


def show_index(ws: Workspace) -> None:
    if not may_here(ws, "import"):
        st.info("A lead indexes the workspace.", icon=":material/lock:")
        return
    status = workspace_status(ws)
    unlabeled = status["splits"]["unlabeled"]
    st.markdown(f"{status['unlabeled_with_neighbours'] or 0} of {unlabeled} unlabeled item(s) "
                "have neighbours. Embeds every question with the bundled all-MiniLM-L6-v2 and "
                "stores each non-labeled item's k nearest labeled examples; a re-run with "
                "nothing changed does no work.")
    k = st.number_input("k (demonstrations per item)", min_value=1, max_value=20,
                        value=int(status["retrieval_k"] or 3), key="index_k")
    if not st.button("Index / retrieve neighbours", key="index"):
        return
    bar = st.progress(0.0, text="Loading the embedder…")

    def progress(done: int, total: int, message: str) -> None:
        bar.progress(done / total if total else 1.0, text=f"{message}: {done}/{total}")

    with user_errors():
        result = run_index(ws, int(k), progress)
        bar.progress(1.0, text="Done")
        flash(index_summary(result, int(k)))
        st.rerun()
