"""Conversion jobs: check the request against the catalog, plan the worker, turn its reports
into events and state. Queueing, supervision and restarts are services.common.job_runner's.

A job restarted after a crash or a service restart runs again from the start; the worker skips
the outputs it had already published (their manifests name the job).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.dataset_layout import content_prefix, dataset_prefix
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.job_records import FAILED, PENDING, SUCCEEDED, Job, JobRecords
from services.common.job_runner import JobRunner, worker_failed
from services.common.manifest import Manifest
from services.common.model_files import MODEL_CACHE_ENV, model_prefix, read_model_manifest
from services.common.resource_names import check_id, parse_name
from services.common.settings import StoreSettings
from services.common.worker_process import JOB_ENV, WorkerProcess
from services.conversion.parity import parity_thresholds
from services.conversion.worker_config import (
    EVENT_TYPES,
    ConversionConfig,
    ParitySpec,
    Thresholds,
)

log = structlog.get_logger("conversion")
FORMATS = ("merged", "onnx")
PRECISIONS = ("fp32", "int8", "int4")
DEFAULT_MAX_ROWS = 16
DEFAULT_MAX_NEW_TOKENS = 32
MAX_PARITY_ROWS = 256
MAX_NEW_TOKENS = 512


class ConversionJobs(JobRunner):
    collection = "conversionJobs"
    cancelled_reason = "cancelled; nothing was published"
    requeue_reason = "the job runs again and keeps what it had published"

    def __init__(
        self,
        records: JobRecords,
        store: ArtifactStore,
        store_settings: StoreSettings,
        work_root: Path,
        cache_dir: Path,
        max_concurrent: int = 1,
        cancel_grace_s: float = 5.0,
    ) -> None:
        super().__init__(records, max_concurrent, cancel_grace_s)
        self.store = store
        self.store_settings = store_settings
        self.work_root = work_root
        # The service's: catalog models fetched once serve every later job.
        self.cache_dir = cache_dir

    # --- create ------------------------------------------------------------------------------

    def create(self, project: str, job_id: str, spec: dict[str, Any], request_id: str) -> Job:
        existing = self.records.find_by_request_id(project, request_id)
        if existing is not None:
            return existing
        job_id = check_id(job_id, "conversion_job_id") if job_id else "cv-" + uuid.uuid4().hex[:12]
        name = f"projects/{project}/conversionJobs/{job_id}"
        config = self._plan(name, project, spec)
        job = Job(
            name=name,
            project=project,
            job_id=job_id,
            state=PENDING,
            spec=spec,
            request_id=request_id,
            resolved=config.model_dump(),
        )
        created = self.records.create(job)
        log.info("job_created", job=name, source=config.base_model, adapter=config.adapter_model)
        self.notify(name)
        return created

    def _plan(self, name: str, project: str, spec: dict[str, Any]) -> ConversionConfig:
        source_name = spec.get("source_model") or ""
        if not source_name:
            raise InvalidArgument("source_model is required", field="conversion_job.source_model")
        source_name = self._model_name(project, source_name, "conversion_job.source_model")
        source = self._manifest(source_name, "conversion_job.source_model")
        kind = source.attributes.get("model_kind", "BASE")
        adapter_name = spec.get("adapter_model") or ""
        if adapter_name:
            adapter_name = self._model_name(project, adapter_name, "conversion_job.adapter_model")

        if kind == "ONNX":
            raise InvalidArgument(
                f"{source_name} is already an ONNX model; convert the model it was made from",
                field="conversion_job.source_model",
            )
        if kind == "ADAPTER":
            if adapter_name:
                raise InvalidArgument(
                    f"{source_name} is an adapter: give it as source_model or adapter_model, "
                    "not both",
                    field="conversion_job.adapter_model",
                )
            base_name, adapter_name = str(source.attributes.get("base_model", "")), source_name
            adapter = source
            self._manifest(base_name, "conversion_job.source_model")
        else:
            base_name, adapter = source_name, None
            if adapter_name:
                adapter = self._manifest(adapter_name, "conversion_job.adapter_model")
                if adapter.attributes.get("model_kind") != "ADAPTER":
                    raise InvalidArgument(
                        f"{adapter_name} is not an adapter",
                        field="conversion_job.adapter_model",
                    )
                if adapter.attributes.get("base_model") != base_name:
                    raise FailedPrecondition(
                        f"{adapter_name} was trained on "
                        f"{adapter.attributes.get('base_model') or 'another model'}, "
                        f"not on {base_name}",
                        reason="ADAPTER_BASE_MISMATCH",
                        metadata={"field": "conversion_job.adapter_model"},
                    )

        formats = [f.lower() for f in spec.get("output_formats") or ["ONNX"]]
        if any(f not in FORMATS for f in formats):
            raise InvalidArgument(
                f"output_formats must be among {', '.join(f.upper() for f in FORMATS)}",
                field="conversion_job.output_formats",
            )
        formats = sorted(set(formats), key=FORMATS.index)
        precision = (spec.get("precision") or "INT4").lower()
        if precision not in PRECISIONS:
            raise InvalidArgument(
                f"precision must be one of {', '.join(p.upper() for p in PRECISIONS)}",
                field="conversion_job.precision",
            )
        outputs = self._output_names(project, spec, source_name, adapter_name, formats, precision)
        parity = self._parity(project, spec.get("parity") or {}, precision, adapter or source)
        if "onnx" in formats and not parity.prompts and not parity.row_files:
            raise FailedPrecondition(
                f"{source_name} has no training job to take parity prompts from: give "
                "parity.golden_prompts or parity.dataset",
                reason="INVALID_CONFIGURATION",
                metadata={"field": "conversion_job.parity.golden_prompts"},
            )
        return ConversionConfig(
            job=name,
            base_model=base_name,
            adapter_model=adapter_name,
            formats=formats,
            precision=precision,  # type: ignore[arg-type]
            parity=parity,
            force_publish=bool(spec.get("force_publish")),
            outputs=outputs,
            display_name=spec.get("display_name") or "",
            labels=dict(spec.get("labels") or {}),
            lineage={"source_model": source_name},
        )

    @staticmethod
    def _model_name(project: str, value: str, field: str) -> str:
        """A catalog name, given in full or as a model id in the job's project."""
        if "/" not in value:
            value = f"projects/{project}/models/{check_id(value, field)}"
        parse_name(value, "models", field)
        return value

    def _manifest(self, model: str, field: str) -> Manifest:
        try:
            return read_model_manifest(self.store, model, field)
        except NotFound:
            raise NotFound(model, f"{model} is not in the catalog ({field})") from None

    def _output_names(
        self,
        project: str,
        spec: dict[str, Any],
        source: str,
        adapter: str,
        formats: list[str],
        precision: str,
    ) -> dict[str, str]:
        named = spec.get("output_model_id") or ""
        stem = (adapter or source).rsplit("/", 1)[-1]
        ids = {
            "onnx": named or f"{stem}-{precision}",
            "merged": (f"{named}-merged" if "onnx" in formats else named)
            if named
            else f"{stem}-merged",
        }
        outputs = {}
        for fmt in formats:
            model_id = check_id(ids[fmt][:63].rstrip("-"), "conversion_job.output_model_id")
            model = f"projects/{project}/models/{model_id}"
            if self.store.read_manifest(model_prefix(model)) is not None:
                raise AlreadyExists(
                    model, f"{model} already exists; choose another output_model_id"
                )
            outputs[fmt] = model
        return outputs

    def _parity(
        self, project: str, spec: dict[str, Any], precision: str, trained: Manifest
    ) -> ParitySpec:
        field = "conversion_job.parity"
        max_rows = int(spec.get("max_rows") or DEFAULT_MAX_ROWS)
        max_new = int(spec.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        if not 0 < max_rows <= MAX_PARITY_ROWS:
            raise InvalidArgument(
                f"max_rows must be in 1..{MAX_PARITY_ROWS}", field=f"{field}.max_rows"
            )
        if not 0 < max_new <= MAX_NEW_TOKENS:
            raise InvalidArgument(
                f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}", field=f"{field}.max_new_tokens"
            )
        thresholds = parity_thresholds(precision, spec.get("thresholds") or {})
        prompts = []
        for i, text in enumerate(spec.get("golden_prompts") or []):
            if not str(text).strip():
                raise InvalidArgument(
                    "a golden prompt is empty", field=f"{field}.golden_prompts[{i}]"
                )
            prompts.append([{"role": "user", "content": str(text)}])
        dataset = spec.get("dataset") or ""
        row_files = (
            self._dataset_rows(project, dataset, f"{field}.dataset")
            if dataset
            else _training_rows(trained)
        )
        return ParitySpec(
            prompts=prompts,
            row_files=row_files,
            max_rows=max_rows,
            max_new_tokens=max_new,
            thresholds=Thresholds(**thresholds),
        )

    def _dataset_rows(self, project: str, dataset: str, field: str) -> list[str]:
        """The canonical files of a READY dataset: its validation split, else its training rows."""
        if "/" not in dataset:
            dataset = f"projects/{project}/datasets/{check_id(dataset, field)}"
        ref = parse_name(dataset, "datasets", field)
        manifest = self.store.read_manifest(dataset_prefix(ref.project, ref.id))
        if manifest is None:
            raise NotFound(dataset, f"{dataset} does not exist or is not READY ({field})")
        content = content_prefix(manifest.attributes["content_sha256"])
        blob = self.store.read_manifest(content)
        files = {f.path for f in blob.files} if blob is not None else set()
        split = "validation.jsonl" if "validation.jsonl" in files else "train.jsonl"
        return [content + split]

    # --- workers ------------------------------------------------------------------------------

    def make_worker(self, job: Job) -> WorkerProcess:
        config = ConversionConfig.model_validate(job.resolved)
        work_dir = self.work_root / job.project / job.job_id
        work_dir.mkdir(parents=True, exist_ok=True)
        config.to_file(work_dir / "job.json")
        env = {
            **os.environ,
            **self.store_settings.env(),
            JOB_ENV: job.name,
            MODEL_CACHE_ENV: str(self.cache_dir / "models"),
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
        }
        return WorkerProcess(
            [sys.executable, "-m", "services.conversion.worker", "job.json"],
            work_dir,
            env,
            EVENT_TYPES,
            on_event=lambda event: self.on_event(job.name, event),
            on_log=lambda line: self._on_log(job.name, line),
        )

    def on_event(self, name: str, event: dict[str, Any]) -> None:
        kind = event.pop("type")
        if kind == "stage":
            progress = {"stage": event.get("stage", ""), "progress": event.get("progress", 0.0)}
            self.records.add_event(name, "progress", progress, progress_json=progress)
        elif kind == "parity":
            report = event.get("report") or {}
            self.records.add_event(name, "parity", report, latest_eval_json=report)
        elif kind == "output":
            job = self.records.get(name)
            outputs = [*job.outputs, str(event.get("model", ""))]
            main = job.output_model or str(event.get("model", ""))
            if event.get("format") == "onnx":
                main = str(event.get("model", ""))
            self.records.update(name, outputs_json=outputs, output_model=main)
        elif kind == "error":
            error = {
                "code": event.get("code", "INTERNAL"),
                "reason": event.get("reason", "WORKER_FAILED"),
                "message": event.get("message", ""),
                "metadata": {},
            }
            self.records.update(name, error_json=error)
            self._log_event(name, "error", error["message"])
        elif kind == "log" and event.get("level") != "debug":
            # Debug lines (the ONNX builder's output) stay in the job's worker.log only.
            self._log_event(name, event.get("level", "info"), event.get("message", ""))
        self.notify(name)

    def completed(self, job: Job, code: int, worker: WorkerProcess) -> None:
        wanted = len(ConversionConfig.model_validate(job.resolved).formats)
        if code == 0 and len(job.outputs) >= wanted:
            done = {**job.progress, "stage": "PUBLISHING", "progress": 1.0}
            self.records.update(job.name, progress_json=done)
            self._finish(job.name, SUCCEEDED, "published " + ", ".join(job.outputs), None)
            return
        if job.error:
            self._finish(job.name, FAILED, job.error.get("message", "failed"), job.error)
            return
        why = f"the worker exited with code {code}" if code else "the worker published nothing"
        tail = "\n".join(worker.tail)
        self._finish(
            job.name,
            FAILED,
            why,
            worker_failed(f"{why}; its last log lines:\n{tail}", exit_code=str(code)),
        )


def _training_rows(trained: Manifest) -> list[str]:
    """The rows the model's training job validated on (else trained on), from its lineage."""
    try:
        config = json.loads(trained.lineage.get("config_json") or "{}")
    except ValueError:
        return []
    files = config.get("validation_files") or config.get("train_files") or []
    return [str(f) for f in files]
