"""The model card (README.md) written beside an exported model.

Everything in the card comes from the workspace: the Hub's YAML header (base model, license,
library, metrics in model-index form, built with huggingface_hub's card data), the task and
the exact prompt to send, the data counts, every round (pseudo-labels, the selection applied,
the human decisions made for it, calibration precision), the test metrics of the exported
round against its baselines, how to run it, and the round's config. Nothing is typed by hand,
so the card cannot claim what the workspace does not show.
"""

from __future__ import annotations

import json

from semievol.curation.selection_state import applied_selection
from semievol.curation.training_set import source_counts, training_items
from semievol.export.modelfile import system_prompt, user_text
from semievol.export.paths import human_size
from semievol.method.evaluate import evaluations_table
from semievol.model.loading import base_model_identity
from semievol.rounds.record import get_round
from semievol.saved_config import to_dict
from semievol.task.formats import Example, build_messages, render_prompt
from semievol.views.lineage import round_summaries
from semievol.views.sampled import sampled_percent
from semievol.workspace.items import options_of
from semievol.workspace.store import Workspace

MODELS = (("base", "base model, zero-shot"), ("base+demos", "base model + retrieved examples"),
          ("warmup", "warm-up adapter (labeled data only)"), ("round", "this round's model"))


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def card_data(ws: Workspace, round_number: int, *, library: str):
    """The Hub's YAML header (huggingface_hub.ModelCardData): the base model, its license,
    the library that loads the file, and the round's test metrics in model-index form."""
    from huggingface_hub import EvalResult, ModelCardData

    rnd = get_round(ws, round_number)
    base = base_model_identity(rnd.config.model.name_or_path)
    found = {e["model"]: e for e in evaluations_table(ws)
             if e["round"] == round_number and e["model"] == "round"}.get("round")
    results = []
    if found:
        dataset = {"dataset_type": ws.path.name, "dataset_name": f"{ws.path.name} (test split)",
                   "dataset_split": "test", "task_type": "text-classification"
                   if ws.require_task().kind == "choice" else "text-generation"}
        results.append(EvalResult(metric_type="accuracy", metric_value=found["accuracy"],
                                  **dataset))
        if found.get("macro_f1") is not None:
            results.append(EvalResult(metric_type="f1", metric_value=found["macro_f1"],
                                      metric_name="macro-F1", **dataset))
    return ModelCardData(
        base_model=base["name"], library_name=library, license=base["license"],
        datasets=[ws.path.name], tags=["semievol", "lora", "semi-supervised"],
        model_name=f"{ws.path.name}-round{round_number}", eval_results=results or None)


def model_card(ws: Workspace, round_number: int, *, model_file: str, gguf: dict | None = None,
               tokenizer=None) -> str:
    """The card of an exported model (a GGUF folder, or an adapter when `gguf` is None):
    the Hub header, then the task, the exact prompt, the data, every round, the metrics
    and how to run it."""
    from huggingface_hub import ModelCard

    task = ws.require_task()
    rnd = get_round(ws, round_number)
    base = base_model_identity(rnd.config.model.name_or_path)
    splits = ws.split_counts()
    sources = source_counts(training_items(ws, round_number))  # frozen once trained
    summaries = [s for s in round_summaries(ws) if s["number"] <= round_number]
    evaluations = {(e["round"], e["model"]): e for e in evaluations_table(ws)}
    applied = applied_selection(ws, rnd.id)
    header = card_data(ws, round_number, library="gguf" if gguf else "peft")
    lines = [f"# {ws.path.name}: round {round_number} (SemiEvol)", "",
             f"A LoRA adaptation of [{base['name']}](https://huggingface.co/{base['name']}) "
             f"(here: {base['source']}) for the task below, trained with SemiEvol (labeled "
             "data, then selected pseudo-labels reviewed by a person)"
             + (" and merged into the base weights" if gguf else "")
             + f". File: `{model_file}`.", "",
             "## Task", "",
             f"- kind: {task.kind}, answers as {task.answer_format}"
             + (f", labels: {', '.join(task.labels)}" if task.labels else ""),
             f"- instruction: {task.instruction or '(none)'}", ""]
    lines += _prompt_section(ws, task, tokenizer)
    lines += ["## Data", "",
              "| split | items |", "|---|---|",
              *[f"| {name} | {count:,} |" for name, count in splits.items()], "",
              f"Round {round_number} trained on {sum(sources.values()):,} examples: "
              + ", ".join(f"{n:,} {source}" for source, n in sources.items()) + ".", "",
              "## Rounds", "",
              "| round | status | pseudo-labels | selected | human decisions made for it "
              "(accept / reject / relabel) | calibration precision, all / selected | "
              "selection applied |", "|---|---|---|---|---|---|---|"]
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
    lines += ["", *(_gguf_section(gguf, model_file, task) if gguf else
                    _adapter_section(base["name"], model_file))]
    config = to_dict(rnd.config)
    if applied is not None:  # what the round trained on was selected by this, not the config's
        config["selection"] = to_dict(applied)
    lines += ["", "## Round config", "",
              "The round's settings, with the selection that was applied to it.", "", "```json",
              json.dumps(config, indent=2, sort_keys=True), "```", ""]
    return str(ModelCard(f"---\n{header.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _prompt_section(ws: Workspace, task, tokenizer) -> list[str]:
    """The exact prompt of a test item (or the first item), as the model was trained and
    measured on it: what to send it."""
    row = ws.query("SELECT question, options FROM items ORDER BY split != 'test', id LIMIT 1")
    if not row or tokenizer is None:
        return []
    options = options_of(row[0], task)
    user = user_text(task, row[0]["question"], None if task.labels else options)
    prompt = render_prompt(tokenizer, build_messages(task, Example(row[0]["question"],
                                                                   options)))
    return ["## Prompt", "",
            "Ask it exactly as it was trained: this system message, then the item's text "
            "alone as the user's message (the Modelfile carries both).", "",
            "System message:", "", "```text", system_prompt(task), "```", "",
            "The whole prompt of one item, the model's chat template applied:", "",
            "```text", prompt + "", "```", ""] + ([] if user == row[0]["question"] else [
                "(The user message holds the item's options, as above.)", ""])


def _gguf_section(gguf: dict, model_file: str, task) -> list[str]:
    lines = ["## File", "",
             f"GGUF, {gguf['type']} weights, {human_size(gguf['bytes'])}, llama.cpp "
             f"pre-tokenizer `{gguf['pre_tokenizer']}`."]
    if gguf.get("note"):
        lines += ["", gguf["note"]]
    system = json.dumps(system_prompt(task)).replace("'", "'\\''")  # inside '...' in sh
    return lines + ["", "## Use it", "",
                    "With Ollama (the Modelfile sets the system message and the template):",
                    "", "```sh", "ollama create my-model -f Modelfile",
                    "ollama run my-model \"<the item's text>\"", "```", "",
                    "With llama.cpp's server (the GGUF carries the chat template):", "",
                    "```sh", f"llama-server -m {model_file} --jinja --port 8080",
                    "curl http://127.0.0.1:8080/v1/chat/completions -d '{\"messages\": ["
                    f"{{\"role\": \"system\", \"content\": {system}}}, "
                    "{\"role\": \"user\", \"content\": \"<the item's text>\"}], "
                    "\"temperature\": 0}'", "```"]


def _adapter_section(base: str, folder: str) -> list[str]:
    return ["## Use it", "", "```python",
            "from peft import AutoPeftModelForCausalLM",
            f"model = AutoPeftModelForCausalLM.from_pretrained({folder!r})  # on {base}",
            "```", "", "Ask it with the system message and the item's text alone, as above."]


def _precision(estimate) -> str:
    if not estimate:
        return "n/a"
    return sampled_percent(estimate.get("precision"), estimate["n"], estimate.get("interval"),
                           need="needs at least")
