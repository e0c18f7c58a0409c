"""Training: LoRA fine-tuning with the loss on the answer tokens (finetune), its resumable
checkpoints in formats that cannot run code (checkpoints), cheap shared dropout masks
(lora_dropout), the fused LoRA forward (lora_forward) and several processes under
accelerate (distributed, distributed_worker).

Trains on `TrainExample`s it is given: may import the foundation, semievol.task and
semievol.model, and nothing of the workspace.
"""
