"""The speed bench's measuring side: the machine's matmul peak, a forward-pass token
counter, the benchmark workspace (unlabeled answers hidden), our pseudo-labeling timed with
its precision, FLOP utilisation, and the repeated run that must compute nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, Stages, load_split, log, progress_printer, true_option


# -- 2. matmul peak ----------------------------------------------------------------------
def matmul_peak(size: int, reps: int) -> dict:
    """Best and median GFLOP/s of torch.matmul on (size x size) matrices, per dtype
    (semievol.model.throughput.matmul_speed, the measurement the estimate uses)."""
    from semievol.model.throughput import matmul_speed

    out = {}
    for name in ("float32", "bfloat16"):
        found = matmul_speed((size, size, size), name, runs=reps)
        out[name] = {"size": size, "reps": reps, "best_gflops": found["best"],
                     "median_gflops": found["median"]}
        log(f"  matmul {name} {size}x{size}: best {found['best']:.1f} GFLOP/s, "
            f"median {found['median']:.1f}")
    return out


class TokenCounter:
    """Counts the tokens a model's forward passes process: `real` (attention mask on, the
    useful work) and `processed` (every input position, padding included)."""

    def __init__(self, model):
        self.real = self.processed = self.calls = 0
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        n = ids.shape[-1]
        self.calls += 1
        self.processed += int(ids.numel())
        self.real += int(mask[:, -n:].sum()) if mask is not None else int(ids.numel())

    def snapshot(self) -> tuple[int, int, int]:
        return self.real, self.processed, self.calls


# -- workspace ---------------------------------------------------------------------------
def build_workspace(path: Path, task_dir: Path, labeled: int, items: int, embedder, k: int,
                    instruction: str, answer_format: str):
    """Labeled and unlabeled subsamples (seed 0) imported through the library; the unlabeled
    answers are returned, never imported."""
    import pandas as pd

    from semievol.config import TaskConfig
    from semievol.method.retrieval import index_workspace
    from semievol.workspace.imports import ColumnMapping, import_file
    from semievol.workspace.store import Workspace

    frames = {s: load_split(task_dir, s) for s in ("labeled", "unlabeled")}
    options = sorted({o for f in frames.values() for o in f["options"]})
    fixed = None
    if len(options) == 1:
        fixed = json.loads(options[0])
    task = TaskConfig(kind="choice", labels=fixed, answer_format=answer_format,
                      instruction=instruction)
    ws = Workspace(path, create=True)
    hidden = {}
    for split, n in (("labeled", labeled), ("unlabeled", items)):
        frame = frames[split]
        frame = frame.sample(n=min(n, len(frame)), random_state=0).sort_index()
        rows = []
        for index, row in frame.iterrows():
            out = {"id": f"{split}:{index}", "question": row["question"]}
            if fixed is None:
                out["options"] = row["options"]
            if split == "unlabeled":
                hidden[out["id"]] = true_option(row, json.loads(row["options"]))
            else:  # the option's text: the dataset's letters name options in its own order
                out["answer"] = true_option(row, json.loads(row["options"]))
            rows.append(out)
        file = path.parent / f"{split}.csv"
        pd.DataFrame(rows).to_csv(file, index=False)
        import_file(ws, file, split, task=task, mapping=ColumnMapping(
            question="question", id="id", answer="answer" if split == "labeled" else None,
            options=None if fixed else "options"))
    index_workspace(ws, embedder, k=k)
    return ws, hidden


def truth_by_item(ws, hidden: dict) -> dict[int, str]:
    return {r["id"]: hidden[r["external_id"]] for r in ws.query(
        "SELECT id, external_id FROM items WHERE split='unlabeled'")}


def precision(labels: list, truth: list, entropy: np.ndarray, agreed: np.ndarray,
              theta: float) -> dict:
    """Precision of all pseudo-labels and of the theta-percentile selection by entropy."""
    from semievol.method.selection import select

    correct = np.array([lab is not None and lab == t for lab, t in zip(labels, truth)])
    keep = select(entropy, [str(x) for x in labels], agreed, policy="percentile", theta=theta)
    return {"n": len(labels), "precision_all": float(correct.mean()) if len(labels) else None,
            "selected": int(keep.sum()),
            "precision_selected": float(correct[keep].mean()) if keep.any() else None,
            "agreed_share": float(agreed.mean()) if len(labels) else None,
            "unparsed": sum(1 for lab in labels if lab is None)}


# -- 1. pseudo-labeling ------------------------------------------------------------------
def ours_pseudo_labels(ws, rnd, backends: dict, counters: list, stages: Stages, truth: dict,
                       theta: float) -> dict:
    from semievol.curation.pool import pool_item_ids
    from semievol.method.collaborators import run_collaborators
    from semievol.method.pseudo_labels import build_pseudo_labels
    from semievol.rounds.record import budget_of
    from semievol.workspace.items import load_items

    task = ws.require_task()
    items = load_items(ws, pool_item_ids(ws, rnd.number, rnd.config.unlabeled_limit))
    before = [c.snapshot() for c in counters]
    calls0 = sum(b.calls for b in backends.values())
    t0 = time.perf_counter()
    with stages.measure("pseudo-label ours: collaborators (run_collaborators)") as rec:
        stats = run_collaborators(ws, rnd.id, items, rnd.config.collaborators, backends, task,
                                  budget=budget_of(rnd),
                                  progress=progress_printer("collaborators"))
        rec.update(stats)
    with stages.measure("pseudo-label ours: agreement, reflection, entropy "
                        "(build_pseudo_labels)") as rec:
        paths = build_pseudo_labels(ws, rnd.id, items, len(rnd.config.collaborators),
                                    backends["warmup"], task, budget=budget_of(rnd),
                                    progress=progress_printer("pseudo-labels"))
        rec.update(paths)
    seconds = time.perf_counter() - t0
    after = [c.snapshot() for c in counters]
    rows = ws.query("SELECT item_id, label, path, entropy FROM pseudo_labels WHERE round_id=? "
                    "ORDER BY item_id", (rnd.id,))
    labels = [r["label"] for r in rows]
    result = precision(labels, [truth[r["item_id"]] for r in rows],
                       np.array([r["entropy"] for r in rows], dtype=float),
                       np.array([r["path"] == "agreed" for r in rows]), theta)
    result.update({
        "items": len(items), "seconds": round(seconds, 2), "items_per_second": len(items) / seconds,
        "collaborator_stats": stats, "paths": paths,
        "model_calls": sum(b.calls for b in backends.values()) - calls0,
        "tokens_real": sum(a[0] - b[0] for a, b in zip(after, before)),
        "tokens_processed": sum(a[1] - b[1] for a, b in zip(after, before))})
    return result


# -- 3. training -------------------------------------------------------------------------
def training_examples(ws, rnd):
    """The warm-up's own examples (the labeled set, as step_warmup builds them)."""
    from semievol.curation.training_set import training_examples as examples_of
    from semievol.curation.training_set import warmup_items
    from semievol.model.loading import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(rnd.config.model.name_or_path))
    from semievol.rounds.record import budget_of

    examples, _ = examples_of(ws.require_task(), warmup_items(ws), tokenizer, budget_of(rnd))
    return examples, tokenizer


def utilisation(flops: float, seconds: float, peak: dict, dtype: str) -> dict:
    achieved = flops / seconds / 1e9 if seconds else None
    return {"achieved_gflops": achieved, "peak_gflops": peak["best_gflops"], "peak_dtype": dtype,
            "utilisation": achieved / peak["best_gflops"] if achieved else None}


class CountingEmbedder:
    """The bundled embedder, loaded only if asked to embed; counts the texts it embeds."""

    def __init__(self):
        from semievol.method.retrieval import LazyEmbedder
        self.inner = LazyEmbedder("bundled")
        self.name = "bundled"
        self.texts = 0

    def embed(self, texts):
        self.texts += len(texts)
        return self.inner.embed(texts)


def repeat_run(ws, rnd, embedder, stages: Stages) -> dict:
    """Every step again with nothing changed: the library must compute nothing."""
    from semievol.method.retrieval import index_workspace
    from semievol.rounds.steps import run_steps

    out = {}
    counting = CountingEmbedder()
    with stages.measure("repeat: index_workspace") as rec:
        out["index"] = {**index_workspace(ws, counting, k=rnd.config.retrieval.k),
                        "texts_embedded": counting.texts}
        rec.update(out["index"])
    with stages.measure("repeat: step_warmup") as rec:
        out["warmup"] = run_steps(ws, rnd.number, ["warmup"], embedder=counting)["warmup"]
        out["warmup"]["seconds"] = None
    out["warmup"]["seconds"] = stages.records[-1]["seconds"]
    with stages.measure("repeat: step_label (lazy backends, in-process)") as rec:
        label = run_steps(ws, rnd.number, ["label"])["label"]
        rec.update(label)
    out["label"] = {**label, "seconds": stages.records[-1]["seconds"]}
    # The same through the CLI, as a user would re-run it: process start and imports included.
    with stages.measure("repeat: `semievol label` CLI (new process)"):
        proc = subprocess.run([sys.executable, "-m", "semievol", "label", str(ws.path)],
                              capture_output=True, text=True, cwd=REPO)
    match = re.search(r"model calls (\d+)", proc.stdout)
    out["cli_label"] = {"returncode": proc.returncode, "seconds": stages.records[-1]["seconds"],
                        "model_calls": int(match.group(1)) if match else None,
                        "stdout": proc.stdout.strip()[-400:],
                        "stderr_tail": proc.stderr.strip()[-400:] if proc.returncode else ""}
    out["model_calls_total"] = (out["label"]["model_calls"] or 0) + \
        (out["cli_label"]["model_calls"] or 0)
    out["zero_model_calls"] = (out["label"]["model_calls"] == 0 and
                               out["cli_label"]["model_calls"] == 0 and
                               out["index"]["texts_embedded"] == 0 and
                               bool(out["warmup"].get("skipped")))
    log(f"  repeat: label {out['label']['seconds']:.1f} s in-process / "
        f"{out['cli_label']['seconds']:.1f} s CLI; model calls {out['label']['model_calls']} / "
        f"{out['cli_label']['model_calls']}; texts embedded {counting.texts}")
    return out
