"""`semievol` command line: every command is a thin call into a library function.

Heavy libraries are imported inside the commands, so `semievol --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from semievol.cli.demo import create_demo_workspace
from semievol.cli.engine import add_engine_commands
from semievol.cli.flags import INDEX_FLAGS, TASK_FLAGS, add_config_flags, overrides
from semievol.cli.review import add_review_commands
from semievol.cli.team import add_team_commands
from semievol.cli.terminal import terminal_progress
from semievol.config import RetrievalConfig, TaskConfig
from semievol.curation.sufficiency import label_warnings
from semievol.errors import SemiEvolError
from semievol.method.retrieval import LazyEmbedder, index_workspace, set_chroma_server
from semievol.model.loading import bundled_embedder_dir, cache_dir
from semievol.model.prepare import model_summary, prepare_model
from semievol.runs.jobs import RunCancelled
from semievol.saved_config import overridden
from semievol.views.status import length_line, length_report, workspace_status
from semievol.workspace.imports import IMPORT_SPLITS, ColumnMapping, import_file
from semievol.workspace.store import Workspace


# -- foundation commands ----------------------------------------------------------------
def cmd_init(args) -> int:
    existed = (Path(args.workspace).expanduser() / "workspace.db").exists()
    ws = Workspace(args.workspace, create=True)
    print(f"Workspace already exists at {ws.path}; nothing changed." if existed
          else f"Workspace ready at {ws.path}")
    return 0


def _task_from_args(args) -> TaskConfig | None:
    """The task of a first import, from --kind, --labels and the other task flags; None
    when neither --kind nor --labels is given (the workspace keeps its task)."""
    changes = overrides(args, TASK_FLAGS)
    if not (changes.get("kind") or args.labels):
        return None
    if args.labels:
        changes["labels"] = [x.strip() for x in args.labels.split(",")]
    return overridden(TaskConfig(), changes)


def cmd_import(args) -> int:
    ws = Workspace(args.workspace)
    # An unlabeled file's answers are never read: the pool is labeled by the round.
    mapping = ColumnMapping(question=args.question_col,
                            answer=None if args.split == "unlabeled" else args.answer_col,
                            options=args.options_col, id=args.id_col)
    report = import_file(ws, args.file, args.split, mapping=mapping, task=_task_from_args(args))
    print(f"Imported {report.rows} {report.split} item(s) from {Path(args.file).name}.")
    for note in report.notes:
        print(f"note: {note}")
    for warning in label_warnings(ws):
        print(f"warning: {warning['message']}")
    print(f"lengths: {length_line(length_report(ws))}")
    return 0


def cmd_index(args) -> int:
    retrieval = overridden(RetrievalConfig(), overrides(args, INDEX_FLAGS))
    ws = Workspace(args.workspace)
    if args.chroma_server is not None:  # before any work: refused if nothing answers there
        where = set_chroma_server(ws, args.chroma_server or None)
        print(f"Vectors kept on the Chroma server at {where}." if where else
              "Vectors kept in the workspace folder (chroma/).")
    embedder = LazyEmbedder(retrieval.embedder)  # loads only if something needs embedding
    done = index_workspace(ws, embedder, k=retrieval.k, progress=terminal_progress("indexing"))
    if not done["embedded"] and not done["queried"]:
        print(f"Nothing to do: all items embedded, neighbours up to date (k={retrieval.k}).")
    else:
        print(f"Embedded {done['embedded']} item(s); labeled pool {done['pool']}; "
              f"neighbours stored for {done['queried']} item(s) (k={retrieval.k}).")
    return 0


def cmd_status(args) -> int:
    ws = Workspace(args.workspace)
    status = workspace_status(ws)
    check = ws.integrity()
    status["integrity"], status["read_only"] = check, ws.read_only
    damaged = check["ok"] is False
    if args.json:
        print(json.dumps(status, indent=2))
        return 2 if damaged else 0
    print(f"Workspace {status['path']} (schema v{status['schema_version']})")
    if damaged:
        print(f"DAMAGED: the database's integrity check found: {check['found']}. Nothing more "
              "is written into it: restore it from a backup, or export what you need and "
              "start a new workspace.")
    elif check["ok"] is None:
        print(f"Database: integrity check {check['found']}.")
    else:
        print("Database: integrity check ok")
    if ws.read_only:
        print("Read-only: this workspace can be read, and nothing can be saved in it (make "
              "the folder and workspace.db writable to work in it).")
    task = status["task"]
    if task:
        labels = ", ".join(task["labels"]) if task["labels"] else "per-item options"
        print(f"Task: {task['kind']} ({labels}); answer format {task['answer_format']}")
    print("Items: " + ", ".join(f"{k} {v}" for k, v in status["splits"].items()))
    if status["held_out"]:
        print(status["held_out"])
    for warning in status["label_warnings"]:
        print(f"warning: {warning['message']}")
    print(f"Neighbours: {status['unlabeled_with_neighbours']} of {status['splits']['unlabeled']} "
          f"unlabeled item(s) have retrieved demonstrations")
    for r in status["rounds"]:
        print(f"Round {r['number']}: {r['status_name']}; {r['pseudo_labels']} pseudo-label(s), "
              f"{r['selected']} selected")
    print(f"Decisions: {status['decisions']}; runs: {status['runs']}")
    team = status["team"]
    if team:
        print(f"Team: {team['leads']} lead(s), {team['reviewers']} reviewer(s); overlap "
              f"{team['overlap']:.0%}; decisions follow the {team['rule']} rule "
              f"({team['rule_text']}); {team['conflicts']} conflict(s) wait for a lead")
    if not damaged and status["task"]:
        print(f"Lengths: {length_line(length_report(ws))}")
    return 2 if damaged else 0


def cmd_backup(args) -> int:
    import datetime

    ws = Workspace(args.workspace)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = Path(args.out) if args.out else ws.path / "backups" / f"workspace-{stamp}.db"
    print(f"Backed up {ws.path / 'workspace.db'} to {ws.backup(target)}")
    return 0


def cmd_prepare_model(args) -> int:
    import time

    start = time.time()
    found = prepare_model(args.source, budget=args.context_budget)
    print(f"{found['architecture']} model ready at {found['path']} "
          f"({time.time() - start:.1f} s): {model_summary(found)}; answers close with "
          f"{found['end_of_turn']}.")
    if args.source == "bundled":
        print(f"Bundled embedder at {bundled_embedder_dir()}; cache {cache_dir()}")
    else:
        print(f"Use it with `--model {args.source}` (or Round setup's Base model field).")
    return 0


def cmd_demo(args) -> int:
    created = create_demo_workspace(args.workspace, Path(args.data), embedder=args.embedder,
                                    progress=terminal_progress("demo"))
    print(("Created" if created else "Demo workspace already exists at") + f" {args.workspace}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semievol",
        description="SemiEvol Studio: adapt a language model from a few labeled and many "
                    "unlabeled examples (Luo et al. 2024), with a human in the loop.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create an empty workspace folder")
    p.add_argument("workspace")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("import", help="import a CSV / JSONL / Parquet file into a split")
    p.add_argument("workspace")
    p.add_argument("file")
    p.add_argument("--split", required=True, choices=IMPORT_SPLITS)
    p.add_argument("--question-col", default="question", help="column with the question/text")
    p.add_argument("--answer-col", default="answer", help="column with the gold answer")
    p.add_argument("--options-col", default=None, help="column with a JSON list of options")
    p.add_argument("--id-col", default=None, help="column with a unique item id")
    task = p.add_argument_group("task (first import only)")
    add_config_flags(task, TaskConfig, TASK_FLAGS)
    task.add_argument("--labels", default=None, help="comma-separated label set")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("index", help="embed items and retrieve k labeled neighbours for each")
    p.add_argument("workspace")
    add_config_flags(p, RetrievalConfig, INDEX_FLAGS)
    p.add_argument("--chroma-server", metavar="URL",
                   help="keep the vectors on a Chroma server (`chroma run`), e.g. "
                        "http://127.0.0.1:8000; '' = back in the workspace folder")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("status", help="split counts, neighbours, rounds, runs")
    p.add_argument("workspace")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("backup", help="a consistent copy of the workspace database (safe while "
                                      "runs write)")
    p.add_argument("workspace")
    p.add_argument("--out", help="the backup file (default: WORKSPACE/backups/workspace-TIME.db)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("prepare-model", help="check a model (bundled, a Hugging Face folder or "
                                             "a GGUF file) and convert it once (cached)")
    p.add_argument("source", nargs="?", default="bundled",
                   help="`bundled` (default), a local Hugging Face folder or a .gguf file")
    p.add_argument("--context-budget", type=int, default=None, metavar="TOKENS",
                   help="refuse a model whose context window is smaller than this")
    p.set_defaults(func=cmd_prepare_model)

    p = sub.add_parser("demo", help="create the demo workspace from data/demo if missing")
    p.add_argument("workspace")
    p.add_argument("--data", default="data/demo")
    p.add_argument("--embedder", default="bundled")
    p.set_defaults(func=cmd_demo)

    add_engine_commands(sub)
    add_review_commands(sub)
    add_team_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command. Every expected failure is one clear line and exit code 2; an
    unexpected one is one line naming a log file that holds the traceback."""
    import sqlite3

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SemiEvolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunCancelled:
        print("cancelled", file=sys.stderr)
        return 143
    except BrokenPipeError:  # `semievol runs WS | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            print("error: the workspace database is locked by another process (a run or an "
                  "import); try again when it has finished.", file=sys.stderr)
        elif "disk" in text or "full" in text:
            print(f"error: the disk is full ({text}); nothing was half-written: free some "
                  "space and run the command again.", file=sys.stderr)
        else:
            print(f"error: the workspace database refused the command ({text}); "
                  "`semievol status WORKSPACE` checks it.", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:
        print(f"error: the workspace database is damaged ({exc}); restore it from a backup "
              "(`semievol status WORKSPACE` checks it).", file=sys.stderr)
        return 2
    except OSError as exc:
        import errno

        if exc.errno == errno.ENOSPC:
            print("error: the disk is full; free some space and run the command again.",
                  file=sys.stderr)
        else:
            print(f"error: {exc.strerror or exc}"
                  + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line here, the traceback in a log
        log = crash_log(exc)
        print(f"error: unexpected {type(exc).__name__}: {exc}. This is a bug; the traceback "
              f"is in {log}.", file=sys.stderr)
        return 1


def crash_log(exc: BaseException) -> Path:
    """Write the traceback of an unexpected error to a log file; returns its path."""
    import datetime
    import traceback

    folder = cache_dir() / "crash-logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text(f"semievol {' '.join(sys.argv[1:])}\n\n" + "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return path
