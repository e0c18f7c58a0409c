"""Where the workspace stands and what to do next: the round's state, a run that is writing
it, and the next action, as Home, every page and the CLI say it; and what each step of a
round has produced (`step_states`, Round setup's step table).

Pure reading. `round_state` is the one definition of "what the reviewer should do now";
pages render it (a message and a link to the page that does it), the CLI prints it.
"""

from __future__ import annotations

from semievol.curation.selection_state import applied_selection
from semievol.method.evaluate import evaluated_models
from semievol.method.pseudo_labels import path_counts
from semievol.rounds.record import STATUS_NAMES, Round, budget_of, latest_round
from semievol.rounds.scores import accuracy_on, regression
from semievol.runs import jobs
from semievol.workspace.items import with_neighbours
from semievol.workspace.store import Workspace

PAGES = {"workspace": "pages/1_Workspace.py", "setup": "pages/2_Round_setup.py",
         "runs": "pages/3_Runs.py", "review": "pages/4_Review.py",
         "selection": "pages/5_Selection.py", "train": "pages/6_Train_and_evaluate.py",
         "rounds": "pages/7_Rounds.py", "export": "pages/8_Export.py",
         "team": "pages/9_Team.py"}
"""The app's pages by role (the action's `page` names one of them)."""
PAGE_TITLES = {"workspace": "Workspace and data", "setup": "Round setup", "runs": "Runs",
               "review": "Review", "selection": "Selection", "train": "Train and evaluate",
               "rounds": "Rounds", "export": "Export", "team": "Team and agreement"}


def round_state(ws: Workspace) -> dict:
    """{round (number or None), status, status_name, running (the run writing the latest
    round, or None), regression (the guard's message, or ""), action (what to do next, in
    words), page (a key of PAGES), command (the CLI line that does it)}."""
    rnd = latest_round(ws)
    check = regression(ws, rnd) if rnd is not None and rnd.status == "done" else None
    return state_of(ws.path, rnd, jobs.running_runs(ws), check,
                    data=data_step(ws) if rnd is None else None)


def data_step(ws: Workspace) -> tuple[str, str] | None:
    """Before round 1, what the data still lacks, as (action, command), or None when it is
    ready: a labeled file (it sets the task), unlabeled items, their neighbours."""
    splits = ws.split_counts()
    path = ws.path
    if ws.task is None or not splits["labeled"]:
        return ("Import a **labeled** file (it also sets the task) on the Workspace page.",
                f"semievol import {path} FILE --split labeled")
    if not splits["unlabeled"]:
        return ("Import the **unlabeled** items you want pseudo-labeled on the Workspace page.",
                f"semievol import {path} FILE --split unlabeled")
    if with_neighbours(ws, "unlabeled") < splits["unlabeled"]:
        return ("Run **Index / retrieve neighbours** on the Workspace page.",
                f"semievol index {path}")
    return None


def state_of(path, rnd: Round | None, running: list[dict], check: dict | None,
             data: tuple[str, str] | None = None) -> dict:
    """`round_state` from what a page has read already: the workspace folder, the latest
    round, the running runs, the round's regression check (`rounds.scores.regression`;
    used when the round is done) and, before round 1, what the data lacks (`data_step`)."""
    writing = next((r for r in running if rnd is not None and r["round_id"] == rnd.id), None)
    if writing is None and running:
        writing = running[0]
    path = str(path)
    state = {"round": None if rnd is None else rnd.number,
             "status": None if rnd is None else rnd.status,
             "status_name": "no round yet" if rnd is None else STATUS_NAMES[rnd.status],
             "running": writing, "regression": ""}
    if rnd is not None and rnd.status == "done" and check:
        state["regression"] = check["message"]
    if writing is not None and writing["kind"] == "train" and rnd is not None and \
            writing["round_id"] == rnd.id and rnd.status == "awaiting_review":
        # Training from the moment its run starts (the step sets the round's own status
        # once the model is loaded and the set frozen, seconds to minutes later).
        state["status_name"] = STATUS_NAMES["training"]
    if writing is not None:
        return {**state, "action": f"Run {writing['id']} ({writing['kind']}) is working on "
                                   f"round {state['round']}: follow it on Runs.",
                "page": "runs", "command": f"semievol runs {path}"}
    if rnd is None and data is not None:
        return {**state, "action": data[0], "page": "workspace", "command": data[1]}
    if rnd is None:
        return {**state, "action": "Set up and launch round 1: it warms up, labels the pool "
                                   "and selects, then waits for your review.",
                "page": "setup", "command": f"semievol round {path}"}
    number = rnd.number
    actions = {
        "open": (f"Round {number} is open: launch it (warm-up, labeling, selection).", "setup",
                 f"semievol round {path}"),
        "awaiting_review": (f"Round {number} is awaiting review: check its pseudo-labels, "
                            "then train on the curated set.", "review",
                            f"semievol review {path}; then semievol train {path}"),
        "training": (f"Round {number}'s training started but did not finish: resume it.",
                     "runs", f"semievol train {path}"),
        "trained": (f"Round {number} is trained: evaluate it.", "train",
                    f"semievol evaluate {path}"),
        "done": (f"Round {number} is done: compare it, then start round {number + 1}.", "train",
                 f"semievol round {path}"),
    }
    best = (check or {}).get("best")
    if rnd.status == "done" and check and check["below"] and best and best["round"] != number:
        # The evidence says this round made things worse: the next action is the best round.
        actions["done"] = (
            f"Round {number} scored below an earlier round; the best is round {best['round']} "
            f"({accuracy_on(best['accuracy'], best['split'])}). Export round {best['round']}, or "
            f"change the settings on Round setup before starting round {number + 1}.",
            "export", f"semievol export {path} --round {best['round']}")
    action, page, command = actions[rnd.status]
    return {**state, "action": action, "page": page, "command": command,
            "best_round": best["round"] if best else None}


def next_steps(ws: Workspace, state: dict | None = None) -> list[str]:
    """What the reviewer should do next: `round_state`'s one action (the data first, then
    the round), plus the optional test file while there is none."""
    steps = [(state or round_state(ws))["action"]]
    if not ws.split_counts()["test"]:
        steps.append("Optionally import a **test** file, to measure each round.")
    return steps


def step_states(ws: Workspace, rnd: Round) -> list[dict]:
    """What each step of `rnd` has produced: [{step, done, detail}], in step order."""
    responses, cut, short = ws.query(
        "SELECT COUNT(*), COALESCE(SUM(r.cut_tokens > 0), 0), COALESCE(SUM(r.demos_shown < "
        "json_extract(x.config, '$.collaborators[' || r.collaborator || '].demonstrations')), 0) "
        "FROM responses r JOIN rounds x ON x.id = r.round_id WHERE r.round_id=?", (rnd.id,))[0]
    paths = path_counts(ws, rnd.id)
    pseudo = sum(paths.values())
    selected = ws.scalar("SELECT COUNT(*) FROM pseudo_labels WHERE round_id=? AND selected=1",
                         (rnd.id,))
    selection = applied_selection(ws, rnd.id)
    evaluated = evaluated_models(ws, rnd.id)
    if selection:
        select_detail = f"{selected} selected ({selection.describe()})"
    else:
        select_detail = "not applied yet"
    return [
        {"step": "warmup", "done": bool(rnd.warmup_adapter),
         "detail": rnd.warmup_adapter or "no warm-up adapter yet"},
        {"step": "label", "done": pseudo > 0,
         "detail": f"{responses} response(s); {pseudo} pseudo-label(s) "
                   f"({paths['agreed']} agreed, {paths['reflected']} reflected)"
                   + (f"; context budget {budget_of(rnd)} tokens: {cut} prompt(s) with the item "
                      f"cut, {short} with fewer demonstrations" if cut or short else "")},
        {"step": "select", "done": selection is not None, "detail": select_detail},
        {"step": "train", "done": bool(rnd.final_adapter),
         "detail": rnd.final_adapter or "no final adapter yet"},
        {"step": "evaluate", "done": "round" in evaluated,
         "detail": ("evaluated: " + ", ".join(evaluated)) if evaluated else "not evaluated yet"},
    ]
