"""How many prompts a task's items lose to the context, under the old fixed truncation and
under the context budget (semievol.model.prompts), for training and for scoring with k
demonstrations.

    .venv/bin/python bench/prompt_cuts.py --task ../shared/datasets/pubmedqa

Before the budget, training cut every sequence to 256 tokens from the left and scoring every
prompt to 512 (the chat template's system turn and the instruction went first); a prompt
longer than that was cut. With the budget, the frame is never cut: demonstrations are
dropped whole (nearest kept), and only an item longer than what remains is cut in its
middle. Demonstrations here are the item's nearest labeled items by the bundled embedder,
as the round retrieves them. Writes bench/results/prompt_cuts_<task>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    load_split,
    md_table,
    pct,
    true_option,
    write_json,
    write_text,
)
from quality_data import task_description  # noqa: E402

OLD_TRAINING, OLD_SCORING = 256, 512


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", type=Path, required=True)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    import numpy as np

    from semievol.config import ModelConfig, TaskConfig
    from semievol.method.retrieval import SentenceTransformerEmbedder
    from semievol.model.loading import load_tokenizer, resolve_model_path, set_offline
    from semievol.model.prompts import PromptBuilder, resolve_budget
    from semievol.task.formats import (Example, answer_target, build_messages, option_targets,
                                       render_prompt)

    set_offline()
    name = args.task.resolve().name
    frames = {s: load_split(args.task, s) for s in ("labeled", "unlabeled", "test")}
    labels = json.loads(frames["labeled"]["options"].iloc[0])
    task = TaskConfig(kind="choice", labels=labels, answer_format="words",
                      instruction=task_description(args.task)["instruction"])
    model = ModelConfig()
    tokenizer = load_tokenizer(resolve_model_path(model.name_or_path))
    budget = resolve_budget(model)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    labeled = [Example(r["question"], labels, true_option(r, labels))
               for _, r in frames["labeled"].iterrows()]
    embedder = SentenceTransformerEmbedder("bundled")
    pool = np.asarray(embedder.embed([e.question for e in labeled]))
    longest_option = max(count(t) for t in option_targets(task, labels, tokenizer))

    rows, result = [], {"task": name, "budget": budget, "k": args.k, "splits": {}}
    for split, frame in frames.items():
        examples = [Example(r["question"], labels, true_option(r, labels))
                    for _, r in frame.iterrows()]
        vectors = np.asarray(embedder.embed([e.question for e in examples]))
        builder = PromptBuilder(task, tokenizer, budget)
        old_train = old_score = 0
        for n, (example, vector) in enumerate(zip(examples, vectors)):
            order = np.argsort(-(pool @ vector))
            demos = [labeled[j] for j in order if labeled[j].question != example.question][:args.k]
            target = answer_target(task, example.answer, labels, tokenizer)
            plain = render_prompt(tokenizer, build_messages(task, example))
            old_train += count(plain) + count(target) > OLD_TRAINING
            with_demos = render_prompt(tokenizer, build_messages(task, example, demos))
            old_score += count(with_demos) + longest_option > OLD_SCORING
            builder.training(example, example.answer)
            builder.item(example, demos)
        stats = builder.stats  # training prompts and scoring prompts, two per item
        entry = {"items": len(examples), "old_training_cut": old_train,
                 "old_scoring_cut": old_score, "budget": stats.summary()}
        result["splits"][split] = entry
        rows.append([split, len(examples), f"{old_train} ({pct(old_train / len(examples))})",
                     f"{old_score} ({pct(old_score / len(examples))})",
                     f"{stats.cut} of {stats.prompts} ({pct(stats.cut / stats.prompts)})",
                     f"{stats.short_of_demos} of {len(examples)} "
                     f"({stats.demos_dropped} dropped)", stats.longest])
        print(f"{split}: {entry}", file=sys.stderr)
    text = "\n".join([
        f"# Prompts cut: {name}", "",
        f"`{' '.join(['bench/prompt_cuts.py', *(argv or sys.argv[1:])])}`", "",
        f"Before: training truncated every sequence to {OLD_TRAINING} tokens from the left and "
        f"scoring to {OLD_SCORING} (the system turn and instruction went first). After: one "
        f"context budget of {budget} tokens for both (the bundled model's window, capped), "
        f"frame never cut, demonstrations dropped whole before the item is cut in its middle. "
        f"Scoring prompts ask for k={args.k} demonstrations.", "",
        md_table(["split", "items", "before: training prompts cut",
                  f"before: scoring prompts (k={args.k}) cut",
                  "after: prompts with the item cut (training + scoring)",
                  "after: scoring prompts that lost demonstrations", "after: longest prompt"],
                 rows), ""])
    write_json(args.out / f"prompt_cuts_{name}.json", result)
    write_text(args.out / f"prompt_cuts_{name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
