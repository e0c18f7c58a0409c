"""One SemiEvol round, step by step; this module only coordinates the parts.

warmup   -> adapter W (round 1: LoRA on the labeled set; round N: round N-1's adapter)
label    -> collaborators' responses, pseudo-labels (agreed / reflected) and entropies
select   -> leakage flags, then the selection policy and human decisions
train    -> adapter R on labeled + human labels + selected pseudo-labels (paper eq. 9)
evaluate -> test metrics of base, base + demonstrations, warm-up and R

Every step checks what the workspace already holds and does only what is missing, so a
killed step resumes where it stopped and a repeated one does nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from semievol.config import RoundConfig, SelectionConfig, round_config_from_dict, to_json
from semievol.errors import SemiEvolError
from semievol.store import Workspace, now

Progress = Callable[[int, int, str], None]
Metric = Callable[[str, int, float], None]
STEPS = ("warmup", "label", "select", "train", "evaluate")


@dataclass
class Round:
    id: int
    number: int
    status: str
    config: RoundConfig
    warmup_adapter: str | None
    final_adapter: str | None


def _round_from_row(ws: Workspace, row) -> Round:
    # Adapter paths are stored relative to the workspace, so a moved or copied workspace
    # keeps using its own adapters (an absolute path from older rows still resolves as is).
    def resolve(path):
        return None if path is None else str(ws.path / path)

    return Round(row["id"], row["number"], row["status"],
                 round_config_from_dict(json.loads(row["config"])),
                 resolve(row["warmup_adapter"]), resolve(row["final_adapter"]))


def _relative(ws: Workspace, path: str) -> str:
    return str(Path(path).resolve().relative_to(ws.path))


def get_round(ws: Workspace, number: int | None = None) -> Round:
    """Round `number`, or the latest one."""
    sql = "SELECT * FROM rounds " + ("WHERE number=?" if number else "ORDER BY number DESC LIMIT 1")
    rows = ws.query(sql, (number,) if number else ())
    if not rows:
        raise SemiEvolError("No round yet: start one with `semievol warmup WORKSPACE` or "
                            "`semievol round WORKSPACE`." if number is None else
                            f"There is no round {number}.")
    return _round_from_row(ws, rows[0])


def base_config(ws: Workspace) -> RoundConfig:
    """The config a new round (or a command-line override) starts from: the latest round's,
    else the workspace's recommended one (see data/demo/task.json), else the defaults."""
    latest = ws.query("SELECT config FROM rounds ORDER BY number DESC LIMIT 1")
    if latest:
        return round_config_from_dict(json.loads(latest[0]["config"]))
    stored = ws.get_setting("default_round_config")
    return round_config_from_dict(stored) if stored else RoundConfig()


def open_round(ws: Workspace, config: RoundConfig | None = None) -> Round:
    """The latest unfinished round, or a new one (numbered after the last finished round).

    A config given for an unfinished round replaces its stored one. Responses are cached by
    content, so changed collaborators recompute what they must; pseudo-labels are derived
    from all collaborators together, so they are dropped when the collaborators or the model
    change (and the responses of removed collaborators with them)."""
    ws.require_task()
    latest = ws.query("SELECT * FROM rounds ORDER BY number DESC LIMIT 1")
    if latest and latest[0]["status"] != "done":
        current = _round_from_row(ws, latest[0])
        if config is not None and config != current.config:
            stale = (config.collaborators != current.config.collaborators
                     or config.model != current.config.model)
            with ws.transaction() as conn:
                conn.execute("UPDATE rounds SET config=? WHERE id=?",
                             (to_json(config), current.id))
                if stale:
                    conn.execute("DELETE FROM pseudo_labels WHERE round_id=?", (current.id,))
                    conn.execute("DELETE FROM responses WHERE round_id=? AND collaborator >= ?",
                                 (current.id, len(config.collaborators)))
            return get_round(ws, current.number)
        return current
    config = config or base_config(ws)
    number = latest[0]["number"] + 1 if latest else 1
    with ws.transaction() as conn:
        conn.execute("INSERT INTO rounds(number, status, config, created_at) VALUES(?,?,?,?)",
                     (number, "open", to_json(config), now()))
    return get_round(ws, number)


def _embedder(config: RoundConfig, embedder):
    if embedder is not None:
        return embedder
    from semievol.retrieval import LazyEmbedder
    return LazyEmbedder(config.retrieval.embedder)


def _training_examples(ws: Workspace, items: list[dict], tokenizer):
    from semievol.finetune import TrainExample
    from semievol.tasks import Example, answer_text, build_messages, end_of_turn, render_prompt

    task = ws.require_task()
    eot = end_of_turn(tokenizer)
    return [TrainExample(render_prompt(tokenizer, build_messages(task, Example(
        it["question"], it["options"]))), answer_text(task, it["answer"], it["options"]) + eot,
        it["answer"]) for it in items]


def step_warmup(ws: Workspace, rnd: Round, *, embedder=None, progress: Progress | None = None,
                metric: Metric | None = None) -> dict:
    """In-weight propagation. Round 1 holds out the calibration slice, refreshes retrieval
    (the demonstrations pool lost those items) and trains W on the labeled set."""
    from semievol.calibration import hold_out
    from semievol.retrieval import index_workspace

    if rnd.warmup_adapter and Path(rnd.warmup_adapter, "adapter_config.json").exists():
        return {"skipped": True, "adapter": rnd.warmup_adapter}
    config = rnd.config
    if rnd.number > 1:
        previous = get_round(ws, rnd.number - 1)
        if not previous.final_adapter:
            raise SemiEvolError(f"Round {rnd.number - 1} has no trained adapter; finish it first.")
        adapter = previous.final_adapter
        summary = {"adapter": adapter, "from_round": rnd.number - 1}
    else:
        held_out = hold_out(ws, config.calibration)
        index_workspace(ws, _embedder(config, embedder), k=config.retrieval.k, progress=progress)
        from semievol.curation import training_items
        from semievol.finetune import train_lora
        from semievol.models import load_tokenizer, resolve_model_path

        tokenizer = load_tokenizer(resolve_model_path(config.model.name_or_path))
        gold = [it for it in training_items(ws, 0) if it["source"] == "gold"]
        adapter = str(ws.path / "adapters" / f"round{rnd.number}" / "warmup")
        summary = train_lora(_training_examples(ws, gold, tokenizer), adapter,
                             model=config.model, lora=config.lora, train=config.train,
                             progress=progress, metric=metric)
        summary.update(adapter=adapter, calibration_items=held_out, examples=len(gold))
    with ws.transaction() as conn:
        conn.execute("UPDATE rounds SET warmup_adapter=? WHERE id=?",
                     (_relative(ws, adapter), rnd.id))
    return summary


def pool_item_ids(ws: Workspace, rnd: Round) -> list[int]:
    """Unlabeled items still to pseudo-label this round (not selected in an earlier round,
    not already labeled by a reviewer), capped by `unlabeled_limit`; then calibration items."""
    ids = [r[0] for r in ws.query(
        "SELECT i.id FROM items i WHERE i.split='unlabeled' AND NOT EXISTS ("
        " SELECT 1 FROM pseudo_labels p JOIN rounds r ON r.id = p.round_id"
        " WHERE p.item_id = i.id AND p.selected = 1 AND r.number < ?) ORDER BY i.id",
        (rnd.number,))]
    from semievol.curation import decision_map
    decided = {i for i, d in decision_map(ws).items() if d["action"] in ("accept", "relabel")
               and rnd.number > 1}
    ids = [i for i in ids if i not in decided]
    if rnd.config.unlabeled_limit:
        ids = ids[:rnd.config.unlabeled_limit]
    return ids + [r[0] for r in ws.query("SELECT id FROM items WHERE split='calibration' "
                                         "ORDER BY id")]


def step_label(ws: Workspace, rnd: Round, *, backends: dict | None = None,
               progress: Progress | None = None) -> dict:
    """Collaborators answer every pool item; agreement / reflection give pseudo-labels."""
    from semievol.collaborators import load_items, run_collaborators
    from semievol.pseudo_labels import build_pseudo_labels

    if not rnd.warmup_adapter:
        raise SemiEvolError(f"Round {rnd.number} has no warm-up adapter yet; run "
                            "`semievol warmup WORKSPACE` first.")
    config = rnd.config
    task = ws.require_task()
    items = load_items(ws, pool_item_ids(ws, rnd))
    missing = [it.id for it in items if len(it.demonstrations) < max(
        c.demonstrations for c in config.collaborators)]
    if missing:
        raise SemiEvolError(f"{len(missing)} item(s) lack retrieved demonstrations; run "
                            "`semievol index WORKSPACE` (or the warm-up step) first.")
    backends = backends if backends is not None else load_backends(ws, rnd)
    stats = run_collaborators(ws, rnd.id, items, config.collaborators, backends, task,
                              progress=progress)
    paths = build_pseudo_labels(ws, rnd.id, items, len(config.collaborators),
                                backends["warmup"], task, progress=progress)
    calls = sum(b.forward_calls for b in {id(b): b for b in backends.values()}.values())
    return {"items": len(items), **stats, **paths, "model_calls": calls}


def load_backends(ws: Workspace, rnd: Round) -> dict:
    """Base and warm-up backends, each loaded once; the warm-up adapter is merged for speed."""
    from semievol.backend import LazyBackend

    config = rnd.config
    return {"base": LazyBackend(config.model, None),
            "warmup": LazyBackend(config.model, rnd.warmup_adapter)}


def step_select(ws: Workspace, rnd: Round, *, selection: SelectionConfig | None = None,
                embedder=None) -> dict:
    """Flag test near-duplicates, then apply the policy and the human decisions."""
    from semievol.calibration import calibration_report
    from semievol.curation import apply_selection
    from semievol.guards import flag_leakage

    if not ws.scalar("SELECT COUNT(*) FROM pseudo_labels WHERE round_id=?", (rnd.id,)):
        raise SemiEvolError(f"Round {rnd.number} has no pseudo-labels yet; run "
                            "`semievol label WORKSPACE` first.")
    if selection is not None and selection != rnd.config.selection:
        rnd.config.selection = selection
        with ws.transaction() as conn:
            conn.execute("UPDATE rounds SET config=? WHERE id=?", (to_json(rnd.config), rnd.id))
    flagged = flag_leakage(ws, rnd.id, _embedder(rnd.config, embedder),
                           similarity=rnd.config.leakage_similarity)
    summary = apply_selection(ws, rnd.id, rnd.config.selection)
    summary["flagged_leakage"] = flagged
    summary["calibration"] = calibration_report(ws, rnd.id, score=rnd.config.selection.score)
    summary["calibration"].pop("curve", None)
    return summary


def step_train(ws: Workspace, rnd: Round, *, progress: Progress | None = None,
               metric: Metric | None = None) -> dict:
    """Final training on the curated set (paper eq. 9)."""
    from semievol.curation import training_items
    from semievol.finetune import train_lora
    from semievol.guards import validate_training_set
    from semievol.models import load_tokenizer, resolve_model_path

    if rnd.final_adapter and Path(rnd.final_adapter, "adapter_config.json").exists():
        return {"skipped": True, "adapter": rnd.final_adapter}
    if not ws.scalar("SELECT COUNT(*) FROM pseudo_labels WHERE round_id=? AND selected=1",
                     (rnd.id,)) and not ws.get_setting(f"selection_round_{rnd.id}"):
        raise SemiEvolError(f"Round {rnd.number} has no selection yet; run "
                            "`semievol select WORKSPACE` first.")
    config = rnd.config
    items = training_items(ws, rnd.number)
    validate_training_set(ws.require_task(), items)
    tokenizer = load_tokenizer(resolve_model_path(config.model.name_or_path))
    adapter = str(ws.path / "adapters" / f"round{rnd.number}" / "final")
    summary = train_lora(_training_examples(ws, items, tokenizer), adapter, model=config.model,
                         lora=config.lora, train=config.train,
                         init_adapter=rnd.warmup_adapter if config.continue_from_warmup else None,
                         progress=progress, metric=metric)
    sources = {}
    for it in items:
        sources[it["source"]] = sources.get(it["source"], 0) + 1
    with ws.transaction() as conn:
        conn.execute("UPDATE rounds SET final_adapter=? WHERE id=?",
                     (_relative(ws, adapter), rnd.id))
    return {**summary, "adapter": adapter, "examples": sources}


def step_evaluate(ws: Workspace, rnd: Round, *, backends: dict | None = None,
                  progress: Progress | None = None, force: bool = False) -> dict:
    """Base (zero-shot and with k demonstrations), warm-up and the round's adapter on test."""
    from semievol.backend import LazyBackend
    from semievol.evaluate import evaluate, store_evaluation, stored_evaluation

    config = rnd.config
    backends = backends if backends is not None else load_backends(ws, rnd)
    results = {
        "base": evaluate(ws, backends["base"], model="base", round_id=None, force=force,
                         progress=progress),
        "base+demos": evaluate(ws, backends["base"], model="base+demos", round_id=None,
                               demonstrations=config.retrieval.k, force=force, progress=progress)}
    # Round N's warm-up is round N-1's final adapter: its test report is already stored.
    previous = get_round(ws, rnd.number - 1) if rnd.number > 1 else None
    inherited = stored_evaluation(ws, previous.id, "round") if previous and not force else None
    if inherited is not None and stored_evaluation(ws, rnd.id, "warmup") is None:
        store_evaluation(ws, {**inherited, "model": "warmup"}, round_id=rnd.id)
    results["warmup"] = evaluate(ws, backends["warmup"], model="warmup", round_id=rnd.id,
                                 force=force, progress=progress)
    if rnd.final_adapter:
        final = backends.get("final") or LazyBackend(config.model, rnd.final_adapter)
        results["round"] = evaluate(ws, final, model="round", round_id=rnd.id, force=force,
                                    progress=progress)
        with ws.transaction() as conn:
            conn.execute("UPDATE rounds SET status='done', finished_at=? WHERE id=?",
                         (now(), rnd.id))
    return {name: {"accuracy": r["accuracy"], "macro_f1": r.get("macro_f1"),
                   "majority_baseline": r.get("majority_baseline")}
            for name, r in results.items()}
