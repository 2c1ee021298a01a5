"""What the conversion service hands a worker (job.json) and what the worker reports back.

The worker runs as `python -m services.conversion.worker job.json` in the job's work directory,
with the object store's settings in TUNEFORGE_S3_* variables, and reports on stdout in the
protocol of services.common.worker_process:
    stage:  {stage, progress}            a step of the job began (progress: the whole job, 0-1)
    parity: {report}                     the parity report (ParityReport's fields)
    output: {model, format}              a catalog model was published
    error:  {code, reason, message}      why the job failed (then the worker exits non-zero)
    log:    {level, message}
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from services.common import worker_process

EVENT_TYPES = ("stage", "parity", "output", "error", "log")

Precision = Literal["fp32", "int8", "int4"]
Format = Literal["merged", "onnx"]


class Thresholds(BaseModel):
    """Limits a conversion must stay within; None: no limit on that measure."""

    min_greedy_agreement: float | None = None
    max_perplexity_increase: float | None = None
    max_mean_logit_delta: float | None = None


class ParitySpec(BaseModel):
    # Chat prompts (each a list of messages) compared by greedy generation.
    prompts: list[list[dict[str, Any]]] = Field(default_factory=list)
    # Object-store keys of canonical JSONL files: their rows give perplexity and logit deltas
    # (and prompts, when `prompts` is empty).
    row_files: list[str] = Field(default_factory=list)
    max_rows: int = 16
    max_new_tokens: int = 32
    thresholds: Thresholds = Field(default_factory=Thresholds)


class ConversionConfig(BaseModel):
    job: str  # "projects/{p}/conversionJobs/{j}"
    # The catalog model that holds the weights (a base, merged or full model).
    base_model: str
    # The adapter merged onto base_model ("" for none).
    adapter_model: str = ""
    formats: list[Format]
    precision: Precision
    parity: ParitySpec
    force_publish: bool = False
    # Catalog names of the models to publish, per format.
    outputs: dict[str, str]
    display_name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    # Recorded in the output models' manifests.
    lineage: dict[str, Any] = Field(default_factory=dict)

    def to_file(self, path: Any) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.model_dump_json(indent=2))

    @classmethod
    def from_file(cls, path: Any) -> ConversionConfig:
        with open(path, encoding="utf-8") as fh:
            return cls.model_validate(json.load(fh))


def parse_event(line: str) -> dict[str, Any] | None:
    """A conversion worker's event on `line` (None for a log line)."""
    return worker_process.parse_event(line, EVENT_TYPES)
