"""Chooses "auto" hyperparameters from the model and the data, and rejects impossible ones.

Every rejection is an InvalidArgument naming the request field, e.g.
`training_job.hyperparameters.learning_rate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.training.worker_config import Distribution, ResolvedHyperparameters, ResolvedLora

FIELD = "training_job"
METHODS = ("lora", "qlora", "dora", "full")
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
# Modules LoRA adapts by default, per model_type (attention and MLP projections).
TARGET_MODULES: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
EFFECTIVE_BATCH = 8


@dataclass(frozen=True)
class ModelFacts:
    model_type: str
    parameter_count: int
    context_length: int


@dataclass(frozen=True)
class DataFacts:
    train_rows: int
    validation_rows: int
    max_tokens: int
    p95_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class Hardware:
    cuda_devices: int
    bf16: bool


@cache
def detect_hardware() -> Hardware:
    """GPUs, and whether bf16 matmuls are fast here (CUDA bf16, or a CPU with AMX/AVX512-BF16)."""
    try:
        import torch

        devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if devices:
            return Hardware(devices, bool(torch.cuda.is_bf16_supported()))
    except ImportError:
        devices = 0
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = cpuinfo.read_text(errors="ignore")
    return Hardware(0, "avx512_bf16" in flags or "amx_bf16" in flags)


def _given(values: dict[str, Any], key: str, default: float) -> float:
    """The user's value (0 included) when given, else the default."""
    value = values.get(key)
    return default if value is None else float(value)


def _invalid(message: str, field: str) -> InvalidArgument:
    return InvalidArgument(message, field=f"{FIELD}.{field}", reason="INVALID_CONFIGURATION")


def _check(ok: bool, message: str, field: str) -> None:
    if not ok:
        raise _invalid(message, field)


def resolve(
    spec: dict[str, Any], model: ModelFacts, data: DataFacts, hardware: Hardware
) -> tuple[ResolvedHyperparameters, ResolvedLora | None, Distribution, str]:
    """Returns (hyperparameters, lora, distribution, method) with every auto value chosen."""
    method = spec.get("method") or "lora"
    _check(method in METHODS, f"method must be one of {', '.join(METHODS)}", "method")
    hp = dict(spec.get("hyperparameters") or {})
    dist = dict(spec.get("distribution") or {})

    nodes = int(dist.get("nodes") or 1)
    _check(nodes >= 1, "nodes must be at least 1", "distribution.nodes")
    _check(
        nodes == 1 or dist.get("launcher") == "KUBERNETES",
        "more than one node needs the kubernetes launcher",
        "distribution.nodes",
    )
    procs = int(dist.get("processes_per_node") or 0)
    _check(
        0 <= procs <= 256,
        "processes_per_node must lie in [0, 256]",
        "distribution.processes_per_node",
    )
    if procs == 0:
        procs = hardware.cuda_devices or 1
    zero = int(dist.get("zero_stage") or 0)
    _check(0 <= zero <= 3, "zero_stage must be 0, 1, 2 or 3", "distribution.zero_stage")
    offload_opt = bool(dist.get("offload_optimizer"))
    offload_params = bool(dist.get("offload_parameters"))
    _check(
        not offload_opt or zero >= 1,
        "offloading the optimizer needs zero_stage 1 or more",
        "distribution.offload_optimizer",
    )
    _check(
        not offload_params or zero == 3,
        "offloading parameters needs zero_stage 3",
        "distribution.offload_parameters",
    )
    _check(
        not (method == "qlora" and zero == 3),
        "qlora's 4-bit base weights cannot be partitioned by ZeRO-3; use stage 0-2",
        "distribution.zero_stage",
    )

    # Sequence length: fits the longest rows, rounded up to a power of two, within the context.
    longest = max(data.max_tokens, 16)
    max_seq_len = int(
        hp.get("max_seq_len")
        or min(model.context_length or 2048, max(64, 2 ** math.ceil(math.log2(longest))), 4096)
    )
    _check(
        16 <= max_seq_len <= (model.context_length or 1 << 20),
        f"max_seq_len must lie in [16, {model.context_length}] for this model",
        "hyperparameters.max_seq_len",
    )

    batch = int(
        hp.get("batch_size")
        or (
            8
            if max_seq_len <= 256
            else 4
            if max_seq_len <= 1024
            else 2
            if max_seq_len <= 2048
            else 1
        )
    )
    _check(1 <= batch <= 1024, "batch_size must lie in [1, 1024]", "hyperparameters.batch_size")
    accum = int(
        hp.get("gradient_accumulation_steps") or max(1, EFFECTIVE_BATCH // (batch * procs * nodes))
    )
    _check(
        1 <= accum <= 1024,
        "gradient_accumulation_steps must lie in [1, 1024]",
        "hyperparameters.gradient_accumulation_steps",
    )

    rows = max(1, data.train_rows)
    epochs = float(hp.get("epochs") or (3 if rows >= 300 else min(10, math.ceil(900 / rows))))
    _check(0 < epochs <= 100, "epochs must lie in (0, 100]", "hyperparameters.epochs")
    max_steps = int(hp.get("max_steps") or 0)
    _check(max_steps >= 0, "max_steps must not be negative", "hyperparameters.max_steps")

    full = method == "full"
    lr = float(hp.get("learning_rate") or (2e-5 if full else 2e-4))
    _check(0 < lr < 1, "learning_rate must lie in (0, 1)", "hyperparameters.learning_rate")
    warmup = float(_given(hp, "warmup_ratio", 0.03))
    _check(0 <= warmup <= 0.5, "warmup_ratio must lie in [0, 0.5]", "hyperparameters.warmup_ratio")
    decay = float(_given(hp, "weight_decay", 0.01 if full else 0.0))
    _check(0 <= decay <= 1, "weight_decay must lie in [0, 1]", "hyperparameters.weight_decay")
    scheduler = str(hp.get("lr_scheduler") or "linear")
    _check(
        scheduler in SCHEDULERS,
        f"lr_scheduler must be one of {', '.join(SCHEDULERS)}",
        "hyperparameters.lr_scheduler",
    )
    precision = str(hp.get("precision") or ("bf16" if hardware.bf16 else "fp32"))
    _check(
        precision in PRECISIONS,
        f"precision must be one of {', '.join(PRECISIONS)}",
        "hyperparameters.precision",
    )
    _check(
        precision != "fp16" or hardware.cuda_devices > 0,
        "fp16 needs a GPU",
        "hyperparameters.precision",
    )
    grad_norm = float(hp.get("max_grad_norm") or 1.0)
    _check(grad_norm > 0, "max_grad_norm must be positive", "hyperparameters.max_grad_norm")
    packing = bool(hp["packing"]) if hp.get("packing") is not None else True

    steps = estimate_steps(
        data, max_seq_len, batch, accum, procs * nodes, epochs, packing, max_steps
    )
    eval_every = int(_given(hp, "eval_interval_steps", max(1, steps // 10)))
    _check(
        eval_every >= 0,
        "eval_interval_steps must not be negative",
        "hyperparameters.eval_interval_steps",
    )
    ckpt_every = int(_given(hp, "checkpoint_interval_steps", max(1, steps // 4)))
    _check(
        ckpt_every >= 0,
        "checkpoint_interval_steps must not be negative",
        "hyperparameters.checkpoint_interval_steps",
    )

    resolved = ResolvedHyperparameters(
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=lr,
        batch_size=batch,
        gradient_accumulation_steps=accum,
        max_seq_len=max_seq_len,
        warmup_ratio=warmup,
        weight_decay=decay,
        lr_scheduler=scheduler,  # type: ignore[arg-type]
        packing=packing,
        eval_interval_steps=eval_every,
        checkpoint_interval_steps=ckpt_every,
        precision=precision,  # type: ignore[arg-type]
        max_grad_norm=grad_norm,
    )
    lora = None if full else _resolve_lora(dict(spec.get("lora") or {}), model)
    distribution = Distribution(
        processes_per_node=procs,
        nodes=nodes,
        zero_stage=zero,
        offload_optimizer=offload_opt,
        offload_parameters=offload_params,
    )
    return resolved, lora, distribution, method


def _resolve_lora(lora: dict[str, Any], model: ModelFacts) -> ResolvedLora:
    rank = int(lora.get("rank") or 16)
    _check(1 <= rank <= 1024, "rank must lie in [1, 1024]", "lora.rank")
    alpha = float(lora.get("alpha") or 2 * rank)
    _check(alpha > 0, "alpha must be positive", "lora.alpha")
    dropout = float(_given(lora, "dropout", 0.05))
    _check(0 <= dropout < 1, "dropout must lie in [0, 1)", "lora.dropout")
    targets = list(lora.get("target_modules") or [])
    known = TARGET_MODULES.get(model.model_type)
    if not targets:
        targets = known or ["all-linear"]
    elif known is not None:
        unknown = [t for t in targets if t not in known and t != "all-linear"]
        _check(
            not unknown,
            f"{', '.join(unknown)} not in {model.model_type}'s modules ({', '.join(known)})",
            "lora.target_modules",
        )
    return ResolvedLora(rank=rank, alpha=alpha, dropout=dropout, target_modules=targets)


def estimate_steps(
    data: DataFacts,
    seq_len: int,
    batch: int,
    accum: int,
    world: int,
    epochs: float,
    packing: bool,
    max_steps: int,
) -> int:
    """Optimizer steps the job will take (the worker computes the exact number)."""
    if max_steps:
        return max_steps
    if packing and data.total_tokens:
        sequences = math.ceil(data.total_tokens / seq_len)
    else:
        sequences = data.train_rows
    per_epoch = max(1, math.ceil(sequences / (batch * world * accum)))
    return max(1, math.ceil(per_epoch * epochs))
