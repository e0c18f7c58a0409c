"""One process of a multi-process training, started by `accelerate launch` (see
semievol.training.distributed, which starts it and reads what the first process reports)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from semievol.config import LoraConfig, ModelConfig, TrainConfig
from semievol.saved_config import config_from_dict
from semievol.training.distributed import TAG
from semievol.training.finetune import Shard, TrainExample, train_lora


def _say(message: dict) -> None:
    print(TAG + json.dumps(message), flush=True)


def main(argv=None) -> int:
    """One process of a multi-process training (started by accelerate)."""
    from accelerate import Accelerator

    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    accelerator = Accelerator(cpu=job.get("cpu", False))
    shard = Shard(accelerator.process_index, accelerator.num_processes, accelerator)
    main_process = shard.main
    train_lora([TrainExample(**e) for e in job["examples"]], job["output_dir"],
               model=config_from_dict(ModelConfig, job["model"]),
               lora=config_from_dict(LoraConfig, job["lora"]),
               train=config_from_dict(TrainConfig, job["train"]),
               init_adapter=job["init_adapter"],
               progress=(lambda *a: _say({"progress": list(a)})) if main_process else None,
               metric=(lambda *a: _say({"metric": list(a)})) if main_process else None,
               shard=shard)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
