"""The speed bench's Markdown report, built from its result dictionary."""

from __future__ import annotations

from common import md_table, pct, report_footer, stages_markdown


def markdown(result: dict) -> str:
    pl, tr, mfu, rep = (result["pseudo_labeling"], result["training"],
                        result["flop_utilisation"], result["repeat"])
    settings = result["settings"]
    ours, ref = pl["ours"], pl.get("reference")

    def pl_row(name, r):
        return [name, r["items"], f"{r['seconds']:.1f}", f"{r['items_per_second']:.3f}",
                pct(r["precision_all"]), f"{r['selected']}", pct(r["precision_selected"]),
                pct(r["agreed_share"]), r["unparsed"], f"{r['tokens_real']:,}"]
    pl_rows = [pl_row("ours: batched option scoring (run_collaborators + "
                      "build_pseudo_labels)", ours)]
    if ref:
        pl_rows.append(pl_row(f"reference-style: {ref['generations']} unbatched sampled "
                              "generations + reflection", ref))
    tr_rows = [["ours: train_lora (own-length batches, logits at answer positions)",
                tr["ours"]["steps"], f"{tr['ours']['seconds']:.1f}",
                f"{tr['ours']['tokens_per_second']:.0f}", "–",
                f"{tr['ours']['peak_rss_mb']:.0f}", f"{tr['ours']['final_loss']:.4f}"]]
    if "reference" in tr:
        r = tr["reference"]
        tr_rows.append(["reference: padded to max_length, full-vocabulary logits everywhere",
                        r["steps"], f"{r['seconds']:.1f}", f"{r['tokens_per_second']:.0f}",
                        f"{r['processed_tokens_per_second']:.0f}", f"{r['peak_rss_mb']:.0f}",
                        f"{r['losses'][-1]:.4f}"])
    peak = result["matmul_peak"]
    mfu_rows = [[name, u["peak_dtype"], f"{u['achieved_gflops']:.1f}", f"{u['peak_gflops']:.1f}",
                 pct(u["utilisation"])] for name, u in mfu.items() if isinstance(u, dict)]
    lines = [
        "# Speed" + (" (reduced mode)" if settings["reduced"] else ""),
        "",
        f"Produced by `{result['command']}` in {result['wall_seconds'] / 60:.1f} min.",
        "",
        f"Model `{settings['model']}` ({result['model_parameters'] / 1e6:.1f}M parameters, "
        f"{result['machine']['model_dtype']}); {settings['items']} unlabeled fpb items "
        f"(answers hidden), {settings['labeled']} labeled, answer format "
        f"{settings['answer_format']}, k={settings['k']}.",
        "",
        "## 1. Pseudo-labeling",
        "",
        "Same items, same 4 collaborator configurations (models and prompts), same warm-up "
        "adapter; models loaded before timing. Precision against the true answers; "
        f"selected = entropy at or below the {settings['theta']:g}th percentile.",
        "",
        md_table(["pipeline", "items", "seconds", "items/s", "precision all", "selected",
                  "precision selected", "agreed share", "unparsed", "tokens (non-pad)"],
                 pl_rows),
        "",
        (f"**Ours is {pl['speedup']:.1f}x faster than the reference-style loop.**" if ref
         else "Reference-style loop skipped."),
        "",
        "## 2. FLOP utilisation",
        "",
        "Matmul peak measured in this run: " + ", ".join(
            f"{d} {v['best_gflops']:.1f} GFLOP/s (best of {v['reps']}, {v['size']}x{v['size']};"
            f" median {v['median_gflops']:.1f})" for d, v in peak.items()) + ".",
        f"Model FLOPs: 2 x {result['model_parameters'] / 1e6:.1f}M params x tokens for a "
        "forward pass, 6 x params x tokens for a training step (the usual MFU convention; "
        "LoRA skips the frozen weights' gradients, so training does less real work than "
        "counted), over non-pad tokens unless noted.",
        "",
        md_table(["work", "dtype", "achieved GFLOP/s", "peak GFLOP/s", "utilisation"],
                 mfu_rows),
        "",
        "## 3. Training",
        "",
        f"{tr['examples']} examples (mean {tr['ours']['example_tokens_mean']:.0f} tokens), "
        f"same sampling order, LoRA and dtype ({tr['ours'].get('dtype')}); max_length "
        f"{tr['max_length']}; tokens/s counts non-pad tokens (padded tokens/s beside it).",
        "",
        md_table(["trainer", "steps", "train s", "tokens/s", "padded tokens/s", "peak RSS MB",
                  "final loss"], tr_rows),
        "",
        (f"**train_lora: {tr['speedup']:.1f}x the tokens/s at {1 / tr['peak_rss_ratio']:.2f}x "
         "the peak RSS of the reference loop.**" if "speedup" in tr else ""),
        "",
        "## 4. Repeated run, nothing changed",
        "",
        md_table(["step", "seconds", "model calls", "computed", "note"], [
            ["index_workspace", f"{_stage(result, 'repeat: index_workspace'):.1f}", "–",
             f"{rep['index']['embedded']} embedded, {rep['index']['queried']} queried",
             f"{rep['index']['texts_embedded']} texts embedded"],
            ["step_warmup", f"{rep['warmup']['seconds']:.1f}", "–",
             "skipped" if rep["warmup"].get("skipped") else "trained", ""],
            ["step_label (in-process, lazy backends)", f"{rep['label']['seconds']:.1f}",
             rep["label"]["model_calls"], rep["label"]["computed"],
             f"cached {rep['label']['cached']}"],
            ["`semievol label` (new process)", f"{rep['cli_label']['seconds']:.1f}",
             rep["cli_label"]["model_calls"], "–", f"exit {rep['cli_label']['returncode']}"]]),
        "",
        f"**Model calls on the repeat: {rep['model_calls_total']} "
        f"({'OK: zero' if rep['zero_model_calls'] else 'NOT ZERO'}).**",
        "",
        *_paper_section(result.get("paper_configuration"), pl_row),
        report_footer(stages_markdown(result["stages"]), result["machine"]),
    ]
    return "\n".join(lines)


def _paper_section(paper: dict | None, pl_row) -> list[str]:
    """5. The reference code's own setting: one model sampled four times, then reflection."""
    if not paper:
        return []
    rows = [pl_row("ours: each distinct prompt scored once, four samples drawn from its "
                   "option distribution", paper["ours"])]
    if "reference" in paper:
        rows.append(pl_row(f"reference-style: {paper['reference']['generations']} unbatched "
                           "sampled generations + reflection", paper["reference"]))
    return ["## 5. The paper's configuration", "",
            "The reference code's setting: the warm-up model with the same prompt sampled "
            f"four times at temperature 1 ({', '.join(paper['collaborators'])}), then "
            "reflection on disagreements. Fresh models and a copy of the workspace taken "
            "before any pseudo-labeling, so nothing from section 1 is reused.", "",
            md_table(["pipeline", "items", "seconds", "items/s", "precision all", "selected",
                      "precision selected", "agreed share", "unparsed", "tokens (non-pad)"],
                     rows), "",
            (f"**Paper configuration: ours is {paper['speedup']:.1f}x faster than the "
             "reference-style loop.**" if "speedup" in paper else
             "Reference-style loop skipped."), ""]


def _stage(result: dict, name: str) -> float:
    return next(r["seconds"] for r in result["stages"] if r["stage"] == name)
