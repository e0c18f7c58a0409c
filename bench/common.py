"""Shared helpers of the benchmarks: machine description, stage timers with peak memory,
progress lines, JSON / Markdown writing, matplotlib plots.

Peak memory per stage: Linux keeps the process's resident high-water mark (VmHWM) and lets
a process reset it (`echo 5 > /proc/self/clear_refs`), so each stage resets it on entry and
reads it on exit: the stage's own peak RSS, torch tensors included. tracemalloc would see
only Python objects (not torch's buffers), and getrusage's ru_maxrss only the lifetime peak;
where the reset is refused, the stage reports ru_maxrss and says so (`peak_kind`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

# Before torch loads its OpenMP runtime: on a busy machine, threads that spin-wait between
# parallel regions made 2-thread forward passes 10-35x slower than 1 thread (measured on the
# shared 2-core machine); sleeping threads remove that and cost nothing measurable. An
# explicit setting in the environment wins; the value used is recorded with every result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
_START = time.time()


# -- progress ----------------------------------------------------------------------------
def log(message: str) -> None:
    elapsed = time.time() - _START
    print(f"[{int(elapsed // 3600):02d}:{int(elapsed % 3600 // 60):02d}:{int(elapsed % 60):02d}] "
          f"{message}", file=sys.stderr, flush=True)


def progress_printer(prefix: str, every: float = 10.0):
    """A library Progress callback (done, total, message) printing at most every `every` s."""
    state = {"last": 0.0}

    def update(done: int, total: int, message: str = "") -> None:
        now = time.time()
        if done >= total or now - state["last"] >= every:
            log(f"  {prefix}: {message} {done}/{total}")
            state["last"] = now
    return update


# -- memory and time ---------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def reset_peak() -> bool:
    """Reset the resident high-water mark; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mb() -> tuple[float, str]:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024, "VmHWM"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss"


def _release_free_memory() -> None:
    """Hand freed heap back to the OS, so a stage's RSS does not carry an earlier stage's
    garbage (glibc keeps freed arenas mapped otherwise)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Stages:
    """Wall time, CPU time and peak RSS of named stages, in order."""

    def __init__(self):
        self.records: list[dict] = []

    @contextlib.contextmanager
    def measure(self, name: str, **info):
        gc.collect()
        _release_free_memory()
        reset_ok = reset_peak()
        before = rss_mb()
        cpu0, t0 = time.process_time(), time.perf_counter()
        record = {"stage": name, **info}
        log(f"{name} ...")
        try:
            yield record
        finally:
            record["seconds"] = round(time.perf_counter() - t0, 2)
            record["cpu_seconds"] = round(time.process_time() - cpu0, 2)
            peak, kind = peak_mb()
            record["rss_before_mb"] = None if before is None else round(before, 1)
            record["peak_rss_mb"] = round(peak, 1)
            record["peak_kind"] = kind if reset_ok else "ru_maxrss (lifetime; reset refused)"
            self.records.append(record)
            log(f"{name}: {record['seconds']:.1f} s, peak RSS {record['peak_rss_mb']:.0f} MB")


# -- machine -----------------------------------------------------------------------------
def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")
"""The CPU features that decide the stack's kernels (bf16 and AMX matrix units)."""


def cpu_identity() -> dict:
    """{model, family, model_number, flags (of CPU_FLAGS), key}: `key` names the CPU family a
    result belongs to (results are kept per CPU, bench/results/<key>/), e.g. amd-epyc-25-1 or
    intel-xeon-6-143-amx."""
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("model name", "cpu family", "model", "flags") and name not in fields:
                fields[name] = value.strip()
            if len(fields) == 4:
                break
    flags = [f for f in CPU_FLAGS if f in fields.get("flags", "").split()]
    model = fields.get("model name", "unknown cpu")
    words = [w for w in model.lower().replace("(r)", "").replace("(tm)", "").split()
             if w.isalnum()][:2]
    key = "-".join(words + [fields.get("cpu family", "x"), fields.get("model", "x")]
                   + (["amx"] if "amx_bf16" in flags else []))
    return {"model": model, "family": fields.get("cpu family"),
            "model_number": fields.get("model"), "flags": flags, "key": key}


def cpu_results(*parts: str) -> Path:
    """bench/results/<this CPU's key>/<parts>: where a speed result of this machine goes."""
    folder = RESULTS / cpu_identity()["key"]
    folder.mkdir(parents=True, exist_ok=True)
    return folder.joinpath(*parts) if parts else folder


def machine_info(model_dtype: str | None = None) -> dict:
    """Cores, threads, CPU, memory, load, dtype and library versions of this run."""
    import torch

    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # older builds
        bf16 = None
    info = {
        "cpu": cpu,
        "cpu_identity": cpu_identity(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": bf16,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "memory_gb": None if mem_kb is None else round(mem_kb / 2**20, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "model_dtype": model_dtype,
        "environment": {k: os.environ.get(k) for k in (
            "OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "SEMIEVOL_CACHE")
            if os.environ.get(k)},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in (
            "torch", "transformers", "peft", "accelerate", "sentence-transformers", "chromadb",
            "numpy", "matplotlib", "semievol")},
    }
    return info


def model_dtype_name(model_config) -> str:
    from semievol.model.loading import pick_device, pick_dtype

    return str(pick_dtype(model_config.dtype, pick_device(model_config.device))).replace(
        "torch.", "")


def repo_path(path: Path) -> str:
    """A path as reports and logs show it: relative to the repository root when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def command_line() -> str:
    """The command that produced a result, relative to the repository root."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(REPO)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


# -- output ------------------------------------------------------------------------------
def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    partial.replace(path)
    return path


def _jsonable(value):
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)  # e.g. a step's PromptStats
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def machine_markdown(info: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    return "\n".join([
        f"- CPU: {info['cpu']} ({info['cores']} cores, {info['cores_usable']} usable; torch "
        f"threads {info['torch_threads']}; native bf16: {info['cpu_bf16']}; CUDA: "
        f"{info['cuda'] or 'none'})",
        f"- memory: {info['memory_gb']} GB; load average at start: "
        f"{info['load_average_at_start']}" + (f", at end: {info['load_average_at_end']}"
                                              if info.get("load_average_at_end") else ""),
        f"- model dtype: {info['model_dtype']}; environment: "
        + (", ".join(f"{k}={v}" for k, v in info.get("environment", {}).items()) or "–"),
        f"- Python {info['python']} on {info['platform']}",
        f"- versions: {versions}",
    ])


def report_footer(stages: str, machine: dict) -> str:
    """The closing sections of every bench report: the stage table(s) and the machine."""
    return "\n".join(["## Stages (wall time, CPU time, peak RSS of the stage)", "", stages, "",
                      "## Machine", "", machine_markdown(machine), ""])


def stages_markdown(records: list[dict]) -> str:
    rows = [[r.get("label", r["stage"]), f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}",
             f"{r['peak_rss_mb']:.0f}"] for r in records]
    return md_table(["stage", "wall s", "CPU s", "peak RSS MB"], rows)


def plot_lines(path: Path, series: list[dict], *, title: str, xlabel: str, ylabel: str,
               hline: tuple[float, str] | None = None) -> Path:
    """series: [{label, x, y, err?, marker_x?, marker_y?}] -> PNG; err draws error bars
    (one spread per point, e.g. the std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for s in series:
        line, = ax.plot(s["x"], s["y"], label=s["label"], linewidth=1.6,
                        marker="o" if s.get("err") else None, markersize=4)
        if s.get("err"):
            ax.errorbar(s["x"], s["y"], yerr=s["err"], fmt="none", ecolor=line.get_color(),
                        capsize=3, alpha=0.6)
        if s.get("marker_x") is not None:
            ax.plot([s["marker_x"]], [s["marker_y"]], "o", color=line.get_color(), markersize=7)
    if hline:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_bars(path: Path, labels: list[str], values: list[float], *, title: str, ylabel: str,
              errors: list[float] | None = None, hline: tuple[float, str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(labels) + 2), 4.5), dpi=110)
    ax.bar(range(len(labels)), values, yerr=errors, capsize=3, color="#4c78a8")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    if hline:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
        ax.legend(fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def load_split(task_dir: Path, split: str):
    """A task split as a DataFrame of strings (the CSV layout of ../shared/datasets)."""
    import pandas as pd

    path = task_dir / f"{split}.csv"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: give --task a folder with labeled.csv, "
                         "unlabeled.csv and test.csv.")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def true_option(row, options: list[str]) -> str:
    """The option text a row's answer names (letter, digit or text), via the importer's rule."""
    from semievol.workspace.imports import resolve_answer

    answer = resolve_answer(str(row["answer"]), options, letters=True)
    if answer is None:
        raise SystemExit(f"answer {row['answer']!r} is not among the options {options}")
    return answer
