"""What the training service hands a worker (as job.json) and what the worker reports back.

The worker is launched by torchrun in the job's work directory:
    python -m torch.distributed.run --nproc_per_node N --master_port P \\
        -m services.training.worker job.json
with the object store's settings in TUNEFORGE_S3_* variables. Rank 0 reports progress as lines
on stdout: `@@tuneforge ` followed by one JSON object (see EVENT_TYPES and
services.common.worker_process). Everything else the
worker prints is kept as log lines.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from services.common import worker_process

# started:    {total_steps, resumed_from_step, world_size, trainable_parameters}
# metrics:    {step, epoch, loss, learning_rate, grad_norm, tokens_per_second, eta_seconds,
#              total_steps, trained_tokens}
# eval:       {step, epoch, loss, token_accuracy, perplexity}
# checkpoint: {step, epoch, prefix, manifest_sha256, files: [{path, sha256, size_bytes}],
#              metrics: {...}}
# output:     {model, manifest_sha256, parameter_count}
# log:        {level, message}
EVENT_TYPES = ("started", "metrics", "eval", "checkpoint", "output", "log")

Method = Literal["lora", "qlora", "dora", "full"]


class ResolvedHyperparameters(BaseModel):
    """Every value concrete ("auto" already chosen by the service)."""

    epochs: float
    max_steps: int = 0  # > 0 overrides epochs
    learning_rate: float
    batch_size: int
    gradient_accumulation_steps: int
    max_seq_len: int
    warmup_ratio: float
    weight_decay: float
    lr_scheduler: Literal["linear", "cosine", "constant"]
    packing: bool
    eval_interval_steps: int  # 0: at the end of each epoch
    checkpoint_interval_steps: int  # 0: at the end of each epoch
    precision: Literal["fp32", "bf16", "fp16"]
    max_grad_norm: float


class ResolvedLora(BaseModel):
    rank: int
    alpha: float
    dropout: float
    target_modules: list[str]


class Distribution(BaseModel):
    processes_per_node: int = 1
    nodes: int = 1
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_parameters: bool = False


class OutputSpec(BaseModel):
    # Catalog name of the model the job registers: "projects/{p}/models/{m}".
    model: str
    display_name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class WorkerConfig(BaseModel):
    job: str  # "projects/{p}/trainingJobs/{j}"
    base_model: str  # catalog name
    # Object-store keys of canonical JSONL files (datasets/content/<sha>/train.jsonl ...).
    train_files: list[str]
    validation_files: list[str] = Field(default_factory=list)
    method: Method
    hyperparameters: ResolvedHyperparameters
    lora: ResolvedLora | None = None
    distribution: Distribution = Field(default_factory=Distribution)
    seed: int = 0
    output: OutputSpec
    # Checkpoints go under this prefix as step-00000040/ (manifest written last).
    checkpoint_prefix: str
    # Resume from the latest checkpoint under checkpoint_prefix when there is one.
    resume: bool = True
    # Recorded in the output model's manifest.
    lineage: dict[str, Any] = Field(default_factory=dict)

    def to_file(self, path: Any) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.model_dump_json(indent=2))

    @classmethod
    def from_file(cls, path: Any) -> WorkerConfig:
        with open(path, encoding="utf-8") as fh:
            return cls.model_validate(json.load(fh))


def parse_event(line: str) -> dict[str, Any] | None:
    """A training worker's event on `line` (None for a log line)."""
    return worker_process.parse_event(line, EVENT_TYPES)
