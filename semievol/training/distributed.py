"""Training on several processes or GPUs: the same `train_lora`, run by `accelerate launch`.

The parent (the CLI, the app's background worker) writes the examples and configs to a job
file in the adapter folder, starts `accelerate launch --num_processes N -m
semievol.training.distributed_worker JOB` and waits. Each process builds an `Accelerator` (DDP over
gloo on CPU, NCCL on GPUs, or whatever `--config_file` says), trains its share of every
batch (finetune.Shard), and the first one saves the adapter and training.json. Progress
and losses come back from the first process as tagged lines on its stdout, so the parent
shows them as for a one-process training. Only the parent touches the workspace.

FSDP and DeepSpeed configs are not used: the LoRA step reaches into the model (it runs the
transformer body and the output layer separately, to compute only the answer's logits),
which DDP allows and sharded engines do not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from semievol.errors import SemiEvolError
from semievol.model.loading import pick_device
from semievol.saved_config import to_dict

TAG = "SEMIEVOL-DISTRIBUTED "
JOB = "distributed-job.json"


def accelerate_command(processes: int, job: Path, *, config_file: str = "") -> list[str]:
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--num_processes", str(processes), "--num_machines", "1"]
    if config_file:
        command += ["--config_file", config_file]
    else:
        command += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        # Several processes go through accelerate's torchrun launcher either way: on a machine
        # without CUDA, or with the model on the CPU (the job says so and the worker passes it to
        # Accelerator), the processes meet over gloo (accelerate's MULTI_CPU). `--cpu`
        # would pick its single-process launcher (multi-CPU there means mpirun).
        command.append("--multi_gpu")
    return command + ["-m", "semievol.training.distributed_worker", str(job)]


def launch_training(examples, output_dir, *, model, lora, train, init_adapter, progress,
                    metric) -> dict:
    """Run `train_lora` on `train.processes` processes; returns the first one's summary."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if train.accelerate_config and not Path(train.accelerate_config).is_file():
        raise SemiEvolError(f"The accelerate config {train.accelerate_config} does not exist.")
    job = output_dir / JOB
    job.write_text(json.dumps({
        "examples": [asdict(e) for e in examples], "model": to_dict(model),
        "lora": to_dict(lora), "train": to_dict(train),
        "init_adapter": str(init_adapter) if init_adapter else None,
        "output_dir": str(output_dir), "cpu": pick_device(model.device) == "cpu"}))
    cpu = pick_device(model.device) == "cpu"
    command = accelerate_command(train.processes, job, config_file=train.accelerate_config)
    env = dict(os.environ)
    if cpu:  # share the cores: N processes each with all of them would thrash
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // train.processes)))
    tail: list[str] = []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, start_new_session=False)
    try:
        for line in process.stdout:
            if line.startswith(TAG):
                _relay(json.loads(line[len(TAG):]), progress, metric)
            else:
                tail = (tail + [line.rstrip()])[-30:]
        returncode = process.wait()
    except BaseException:
        process.kill()  # a stopped parent takes its training processes with it
        raise
    if returncode:
        raise SemiEvolError(f"Training on {train.processes} processes failed (accelerate "
                            f"exited with {returncode}).", [x for x in tail if x][-8:])
    summary = json.loads((output_dir / "training.json").read_text())
    summary.pop("losses", None)
    job.unlink(missing_ok=True)
    return summary


def _relay(message: dict, progress, metric) -> None:
    if "progress" in message and progress:
        progress(*message["progress"])
    if "metric" in message and metric:
        metric(*message["metric"])
