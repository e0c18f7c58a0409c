"""The model card (README.md) and Ollama Modelfile written beside an exported model.

Everything in the card comes from the workspace: the task, the data counts, every round
(pseudo-labels, selection, human decisions, calibration precision), the test metrics of the
exported round against its baselines, and the round's full config. Nothing is typed by hand,
so the card cannot claim what the workspace does not show.
"""

from __future__ import annotations

import json

from semievol.curation.training_set import source_counts, training_items
from semievol.method.evaluate import evaluations_table
from semievol.rounds.record import get_round
from semievol.saved_config import to_dict
from semievol.views.lineage import round_summaries
from semievol.workspace.store import Workspace

MODELS = (("base", "base model, zero-shot"), ("base+demos", "base model + retrieved examples"),
          ("warmup", "warm-up adapter (labeled data only)"), ("round", "this round's model"))


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def model_card(ws: Workspace, round_number: int, *, model_file: str, gguf: dict | None = None
               ) -> str:
    task = ws.require_task()
    rnd = get_round(ws, round_number)
    splits = ws.split_counts()
    sources = source_counts(training_items(ws, round_number))
    summaries = [s for s in round_summaries(ws) if s["number"] <= round_number]
    evaluations = {(e["round"], e["model"]): e for e in evaluations_table(ws)}
    lines = [f"# {ws.path.name}: round {round_number} (SemiEvol)", "",
             f"A LoRA adaptation of `{rnd.config.model.name_or_path}` for the task below, "
             "trained with SemiEvol (labeled data, then selected pseudo-labels reviewed by a "
             f"person) and merged into the base weights. File: `{model_file}`.", "",
             "## Task", "",
             f"- kind: {task.kind}, answers as {task.answer_format}"
             + (f", labels: {', '.join(task.labels)}" if task.labels else ""),
             f"- instruction: {task.instruction or '(none)'}", "",
             "## Data", "",
             "| split | items |", "|---|---|",
             *[f"| {name} | {count:,} |" for name, count in splits.items()], "",
             f"Round {round_number} trained on {sum(sources.values()):,} examples: "
             + ", ".join(f"{n:,} {source}" for source, n in sources.items()) + ".", "",
             "## Rounds", "",
             "| round | status | pseudo-labels | selected | human decisions (accept / reject "
             "/ relabel) | calibration precision, all / selected | selection |",
             "|---|---|---|---|---|---|---|"]
    for s in summaries:
        rule = s["selection"]["rule"] if s["selection"] else "not applied"
        lines.append(
            f"| {s['number']} | {s['status']} | {s['pseudo_labels']:,} | {s['selected']:,} | "
            f"{s['accepted']} / {s['rejected']} / {s['relabeled']} | "
            f"{_precision(s['calibration_all'])} / {_precision(s['calibration_selected'])} | "
            f"{rule} |")
    lines += ["", "## Metrics", ""]
    rows = []
    for model, words in MODELS:
        found = evaluations.get((None if model.startswith("base") else round_number, model))
        if found:
            f1 = "" if found["macro_f1"] is None else f"{found['macro_f1']:.3f}"
            rows.append(f"| {words} | {_pct(found['accuracy'])} | {f1} |")
    if rows:
        majority = next((e["majority_baseline"] for e in evaluations.values()
                         if e.get("majority_baseline") is not None), None)
        lines += [f"Test accuracy ({splits.get('test', 0):,} items"
                  + (f"; always answering the majority class scores {_pct(majority)}"
                     if majority is not None else "") + "):", "",
                  "| model | accuracy | macro-F1 |", "|---|---|---|", *rows]
    else:
        lines.append("No evaluation is stored for this round: run `semievol evaluate "
                     "WORKSPACE` before relying on this model.")
    if gguf:
        lines += ["", "## File", "",
                  f"GGUF, {gguf['type']} weights, {gguf['bytes'] / 1e6:.1f} MB, llama.cpp "
                  f"pre-tokenizer `{gguf['pre_tokenizer']}`."]
        if gguf.get("note"):
            lines += ["", gguf["note"]]
        lines += ["", "Serve it: `python -m llama_cpp.server --model "
                  f"{model_file}` or `llama-server -m {model_file}`; with Ollama: "
                  "`ollama create NAME -f Modelfile`."]
    lines += ["", "## Round config", "", "```json",
              json.dumps(to_dict(rnd.config), indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _precision(estimate) -> str:
    if not estimate or estimate.get("precision") is None:
        return "n/a"
    return f"{estimate['precision']:.0%} (n={estimate['n']})"


def modelfile(model_file: str, tokenizer) -> str:
    """An Ollama Modelfile: the GGUF, the ChatML template and its stop token."""
    stop = tokenizer.eos_token or "<|im_end|>"
    return "\n".join([
        f"FROM ./{model_file}",
        'TEMPLATE """{{- if .System }}<|im_start|>system',
        "{{ .System }}<|im_end|>",
        "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}",
        "{{ .Content }}<|im_end|>",
        '{{ end }}<|im_start|>assistant', '"""',
        f'PARAMETER stop "{stop}"',
        "PARAMETER temperature 0", ""])
