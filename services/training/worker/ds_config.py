"""The DeepSpeed configuration and the learning-rate schedule of a job."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from services.training.worker_config import WorkerConfig


def deepspeed_config(
    config: WorkerConfig, world_size: int, *, bf16: bool, fp16: bool
) -> dict[str, Any]:
    hp = config.hyperparameters
    dist = config.distribution
    zero: dict[str, Any] = {"stage": dist.zero_stage}
    if dist.offload_optimizer and dist.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if dist.offload_parameters and dist.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": hp.batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "train_batch_size": hp.batch_size * hp.gradient_accumulation_steps * world_size,
        "gradient_clipping": hp.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": fp16},
        # The client optimizer is torch's AdamW (no JIT build); with offload it is DeepSpeedCPUAdam.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def lr_lambda(schedule: str, warmup_ratio: float, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based): linear warmup
    over warmup_ratio * total_steps, then linear or cosine decay to 0, or constant."""
    warmup = math.ceil(warmup_ratio * total_steps) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        progress = min(1.0, progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor
