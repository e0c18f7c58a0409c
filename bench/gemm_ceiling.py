"""What the model's own matrix products can reach on this machine: the ceiling of model-FLOP
utilisation, measured rather than assumed.

A model-shaped peak (one 3,584 x 576 by 576 x 1,536 product) is the best case. The
transformer runs seven products per layer at its own shapes: q and o (d x d), k and v
(d x 192 for SmolLM2's 3 key-value heads), gate, up and down (d x 1,536); LoRA training
adds the backward product through each frozen weight (the same FLOPs, transposed) and the
rank-16 adapters. This times each at the token counts our scoring and training batches
have, and reports the FLOP-weighted rate: the utilisation our code could reach if the
products were all it did.

    .venv/bin/python bench/gemm_ceiling.py

Writes bench/results/gemm_ceiling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info  # noqa: E402

from semievol.model.throughput import MODEL_SHAPED, matmul_speed  # noqa: E402


def layer_products(d: int, f: int, kv_width: int, r: int, *, training: bool):
    """(name, k, n, count) of one layer's products per token row."""
    linears = [("q", d, d), ("k", d, kv_width), ("v", d, kv_width), ("o", d, d),
               ("gate", d, f), ("up", d, f), ("down", f, d)]
    out = [(name, k, n, 1) for name, k, n in linears]
    if training:
        out += [(f"{name} backward", n, k, 1) for name, k, n in linears]  # grad of input
        out += [(f"{name} lora", k, r, 1) for name, k, n in linears]
        out += [(f"{name} lora-B", r, n, 1) for name, k, n in linears]
    return out


def ceiling(m: int, dims: dict, *, training: bool, dtype: str) -> dict:
    rows, flops, seconds = [], 0.0, 0.0
    for name, k, n, count in layer_products(dims["d"], dims["f"], dims["kv"], dims["r"],
                                            training=training):
        rate = matmul_speed((m, k, n), dtype, seconds=0.4)["best"]
        work = 2 * m * k * n * count
        rows.append({"product": name, "m": m, "k": k, "n": n, "gflops": rate})
        flops += work
        seconds += work / (rate * 1e9)
    return {"tokens_per_batch": m, "products": rows, "weighted_gflops": flops / seconds / 1e9}


def main(argv=None) -> int:
    from semievol.model.loading import pick_dtype

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scoring-tokens", type=int, default=16 * 220,
                   help="token rows per scoring forward (batch 16 x a demo prompt)")
    p.add_argument("--training-tokens", type=int, default=8 * 120,
                   help="token rows per training micro-batch (batch 8 x a demo example)")
    args = p.parse_args(argv)
    dims = {"d": 576, "f": 1536, "kv": 3 * 64, "r": 16}
    dtype = pick_dtype("auto", "cpu")  # the dtype the stack runs in on this CPU
    name = str(dtype).removeprefix("torch.")
    peak = matmul_speed(MODEL_SHAPED, name, seconds=1.0)["best"]
    report = {"command": " ".join(["bench/gemm_ceiling.py", *(argv or sys.argv[1:])]),
              "machine": machine_info(name), "dtype": name,
              "model_shaped_peak_gflops": peak,
              "scoring": ceiling(args.scoring_tokens, dims, training=False, dtype=name),
              "training": ceiling(args.training_tokens, dims, training=True, dtype=name)}
    for part in ("scoring", "training"):
        report[part]["share_of_peak"] = report[part]["weighted_gflops"] / peak
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gemm_ceiling.json").write_text(json.dumps(report, indent=2, default=str))
    (RESULTS / "gemm_ceiling.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    lines = ["# The model's own matrix products on this machine", "", f"`{r['command']}`", "",
             f"CPU {r['machine']['cpu']}, {r['machine']['torch_threads']} torch threads, "
             f"{r['dtype']}. Model-shaped peak (3,584 x 576 by 576 x 1,536): "
             f"**{r['model_shaped_peak_gflops']:.0f} GFLOP/s**.", ""]
    for part in ("scoring", "training"):
        c = r[part]
        lines += [f"## {part.capitalize()}: {c['tokens_per_batch']:,} token rows per product",
                  "", f"FLOP-weighted rate of the layer's products: "
                  f"**{c['weighted_gflops']:.0f} GFLOP/s = {c['share_of_peak']:.0%} of the "
                  "model-shaped peak**, the ceiling of utilisation before attention, norms, "
                  "activations and Python are counted.", "",
                  "| product | m x k x n | GFLOP/s |", "|---|---|---|"]
        lines += [f"| {x['product']} | {x['m']} x {x['k']} x {x['n']} | {x['gflops']:.0f} |"
                  for x in c["products"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
