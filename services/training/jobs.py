"""Training jobs: create (auto hyperparameters resolved), plan the worker, turn its reports
into events and state. Queueing, supervision and restarts are services.common.job_runner's."""

from __future__ import annotations

import builtins
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.dataset_layout import content_files
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.job_records import (
    FAILED,
    PENDING,
    SUCCEEDED,
    Job,
    JobRecords,
)
from services.common.job_runner import JobRunner, worker_failed
from services.common.model_files import read_model_manifest
from services.common.resource_names import (
    check_id,
    parse_name,
)
from services.common.settings import StoreSettings
from services.common.worker_process import WorkerProcess
from services.training import hyperparameters as hp
from services.training.kubernetes_launcher import (
    KubernetesApi,
    KubernetesSettings,
    KubernetesWorker,
    job_launcher,
    placement,
)
from services.training.launcher import worker_group
from services.training.worker_config import OutputSpec, WorkerConfig

log = structlog.get_logger("training")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    state: str
    content_sha256: str
    train_rows: int
    validation_rows: int
    max_tokens: int
    p95_tokens: int
    tokens_per_epoch: int


class DatasetLookup(Protocol):
    """How the training service learns about datasets (the datasets service's API)."""

    def get(self, name: str) -> DatasetInfo: ...


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    step: int
    epoch: float
    uri: str
    manifest_sha256: str
    files: list[dict[str, Any]]
    metrics: dict[str, float]
    created_at: Any


class TrainingJobs(JobRunner):
    collection = "trainingJobs"
    cancelled_reason = "cancelled; checkpoints are kept"
    requeue_reason = "the job resumes from its latest checkpoint"

    def __init__(
        self,
        records: JobRecords,
        store: ArtifactStore,
        store_settings: StoreSettings,
        datasets: DatasetLookup,
        work_root: Path,
        cache_dir: Path,
        max_concurrent: int = 1,
        hardware: hp.Hardware | None = None,
        cancel_grace_s: float = 5.0,
        kubernetes: KubernetesSettings | None = None,
        kubernetes_api: KubernetesApi | None = None,
    ) -> None:
        super().__init__(records, max_concurrent, cancel_grace_s)
        # The kubernetes launcher (multi-node jobs as Kubeflow Trainer TrainJobs); by default
        # only jobs that ask for it (distribution.launcher KUBERNETES) use it.
        self.kubernetes = kubernetes or KubernetesSettings(launcher="local")
        self._kubernetes_api = kubernetes_api
        self.store = store
        self.store_settings = store_settings
        self.datasets = datasets
        self.work_root = work_root
        self.cache_dir = cache_dir
        self.hardware = hardware or hp.detect_hardware()

    # --- create ------------------------------------------------------------------------------

    def create(self, project: str, job_id: str, spec: dict[str, Any], request_id: str) -> Job:
        existing = self.records.find_by_request_id(project, request_id)
        if existing is not None:
            return existing
        job_id = check_id(job_id, "training_job_id") if job_id else "ft-" + uuid.uuid4().hex[:12]
        name = f"projects/{project}/trainingJobs/{job_id}"
        config = self._plan(name, project, job_id, spec)
        job = Job(
            name=name,
            project=project,
            job_id=job_id,
            state=PENDING,
            spec=spec,
            priority=int(spec.get("priority") or 0),
            request_id=request_id,
            resolved=config.model_dump(mode="json"),
        )
        created = self.records.create(job)
        log.info(
            "job_created",
            job=name,
            method=config.method,
            steps_hint=config.hyperparameters.max_steps,
        )
        self.notify(name)
        return created

    def _plan(self, name: str, project: str, job_id: str, spec: dict[str, Any]) -> WorkerConfig:
        """Checks the request against the catalog and the datasets and resolves "auto"."""
        base = spec.get("base_model") or ""
        if not base:
            raise InvalidArgument("base_model is required", field="training_job.base_model")
        parse_name(base, "models", "training_job.base_model")
        manifest = read_model_manifest(self.store, base, "training_job.base_model")
        attrs = manifest.attributes
        if attrs.get("model_kind", "BASE") not in ("BASE", "MERGED"):
            raise InvalidArgument(
                f"{base} is a {attrs.get('model_kind')} model; fine-tune a base or merged model",
                field="training_job.base_model",
            )
        train = self._ready_dataset(
            spec.get("training_dataset") or "", "training_job.training_dataset"
        )
        validation_files = []
        validation_name = spec.get("validation_dataset") or ""
        if validation_name:
            val = self._ready_dataset(validation_name, "training_job.validation_dataset")
            validation_files = content_files(val.content_sha256, "train", "validation")
        elif train.validation_rows:
            validation_files = content_files(train.content_sha256, "validation")
        model = hp.ModelFacts(
            model_type=str(attrs.get("model_type", "")),
            parameter_count=int(attrs.get("parameter_count", 0)),
            context_length=int(attrs.get("context_length", 0) or 2048),
        )
        data = hp.DataFacts(
            train_rows=train.train_rows,
            validation_rows=train.validation_rows,
            max_tokens=train.max_tokens,
            p95_tokens=train.p95_tokens,
            total_tokens=train.tokens_per_epoch,
        )
        hyper, lora, distribution, method = hp.resolve(spec, model, data, self.hardware)
        output_id = _output_id(base.rsplit("/", 1)[-1], spec.get("suffix") or "", job_id)
        return WorkerConfig(
            job=name,
            base_model=base,
            train_files=content_files(train.content_sha256, "train"),
            validation_files=validation_files,
            method=method,  # type: ignore[arg-type]
            hyperparameters=hyper,
            lora=lora,
            distribution=distribution,
            seed=int(spec.get("seed") or 0),
            output=OutputSpec(
                model=f"projects/{project}/models/{output_id}",
                display_name=spec.get("display_name") or output_id,
                labels=dict(spec.get("labels") or {}),
            ),
            checkpoint_prefix=f"checkpoints/{project}/{job_id}/",
            lineage={
                "base_model": base,
                "base_model_sha256": manifest.sha256(),
                "training_dataset": train.name,
                "training_dataset_sha256": train.content_sha256,
                "validation_dataset": validation_name,
                "training_job": name,
                "tokenizer_sha256": attrs.get("tokenizer_sha256", ""),
                "chat_template_sha256": attrs.get("chat_template_sha256", ""),
                "seed": int(spec.get("seed") or 0),
            },
        )

    def _ready_dataset(self, name: str, field: str) -> DatasetInfo:
        if not name:
            raise InvalidArgument(f"{field.rsplit('.', 1)[-1]} is required", field=field)
        parse_name(name, "datasets", field)
        info = self.datasets.get(name)
        if info.state != "READY":
            raise FailedPrecondition(
                f"{name} is {info.state}, not READY",
                reason="DATASET_NOT_READY",
                metadata={"dataset": name, "state": info.state, "field": field},
            )
        if info.train_rows == 0:
            raise FailedPrecondition(
                f"{name} has no training rows",
                reason="DATASET_NOT_READY",
                metadata={"dataset": name, "field": field},
            )
        return info

    # --- read ---------------------------------------------------------------------------------

    def checkpoints(self, name: str) -> builtins.list[CheckpointInfo]:
        job = self.get(name)
        prefix = job.resolved.get("checkpoint_prefix", "")
        found = []
        for child in self.store.list_artifacts(prefix) if prefix else []:
            manifest = self.store.read_manifest(child)
            if manifest is None:
                continue
            step = int(manifest.attributes.get("step", 0))
            found.append(
                CheckpointInfo(
                    name=f"{name}/checkpoints/{step}",
                    step=step,
                    epoch=float(manifest.attributes.get("epoch", 0.0)),
                    uri=self.store.uri(child),
                    manifest_sha256=manifest.sha256(),
                    files=[f.model_dump() for f in manifest.files],
                    metrics=dict(manifest.metrics),
                    created_at=manifest.created_at,
                )
            )
        return sorted(found, key=lambda c: c.step)

    def delete_artifacts(self, job: Job) -> None:
        prefix = job.resolved.get("checkpoint_prefix", "")
        if prefix:
            self.store.delete_prefix(prefix)

    # --- workers ------------------------------------------------------------------------------

    def make_worker(self, job: Job) -> WorkerProcess:
        config = WorkerConfig.model_validate(job.resolved)
        if job_launcher(job.spec, self.kubernetes) == "kubernetes":
            if self._kubernetes_api is None:
                self._kubernetes_api = KubernetesApi.from_settings(self.kubernetes)
            return KubernetesWorker(
                config,
                placement(job.spec, self.kubernetes),
                self.kubernetes,
                self._kubernetes_api,
                on_event=lambda event: self.on_event(job.name, event),
                on_log=lambda line: self._on_log(job.name, line),
                # A stopping service leaves the TrainJob running; the next one adopts it.
                detach_on_stop=lambda: self._shutting_down,
            )
        return worker_group(
            config,
            self.work_root / job.project / job.job_id,
            self.store_settings,
            self.cache_dir,
            on_event=lambda event: self.on_event(job.name, event),
            on_log=lambda line: self._on_log(job.name, line),
        )

    def on_event(self, name: str, event: dict[str, Any]) -> None:
        kind = event.pop("type")
        if kind == "metrics":
            progress = {
                "step": event.get("step", 0),
                "total_steps": event.get("total_steps", 0),
                "epoch": event.get("epoch", 0.0),
                "trained_tokens": event.get("trained_tokens", 0),
                "eta_seconds": event.get("eta_seconds", 0.0),
            }
            self.records.add_event(
                name, "metrics", event, progress_json=progress, latest_metrics_json=event
            )
        elif kind == "eval":
            self.records.add_event(name, "eval", event, latest_eval_json=event)
        elif kind == "checkpoint":
            self.records.add_event(name, "checkpoint", event)
        elif kind == "output":
            self.records.update(name, output_model=event.get("model", ""))
            self._log_event(name, "info", f"registered {event.get('model')}")
        elif kind == "started":
            total = event.get("total_steps", 0)
            resumed = event.get("resumed_from_step", 0)
            self._log_event(
                name,
                "info",
                f"training {total} steps on {event.get('world_size', 1)} process(es)"
                + (f", resumed from step {resumed}" if resumed else ""),
            )
            job = self.records.get(name)
            self.records.update(
                name, progress_json={**job.progress, "total_steps": total, "step": resumed}
            )
        elif kind == "log":
            self._log_event(name, event.get("level", "info"), event.get("message", ""))
        self.notify(name)

    def completed(self, job: Job, code: int, worker: WorkerProcess) -> None:
        if code == 0 and job.output_model:
            self._finish(job.name, SUCCEEDED, f"training finished; output {job.output_model}", None)
            return
        why = (
            f"the worker exited with code {code}"
            if code
            else "the worker ended without registering its output"
        )
        tail = "\n".join(worker.tail)
        self._finish(
            job.name,
            FAILED,
            why,
            worker_failed(f"{why}; its last log lines:\n{tail}", exit_code=str(code)),
        )


def _output_id(base_id: str, suffix: str, job_id: str) -> str:
    """`{base}-{suffix}-{job}`, without repeating a suffix the job id already starts with, cut
    to 63 characters from the base's end so the job id (what makes it unique) stays whole."""
    parts = [base_id, suffix, job_id] if not job_id.startswith(suffix) else [base_id, job_id]
    parts = [p.strip("-").lower().replace("_", "-") for p in parts if p]
    tail = "-".join(parts[1:])
    head = parts[0][: max(1, 62 - len(tail))].rstrip("-")
    return check_id(f"{head}-{tail}"[:63].rstrip("-"), "training_job.suffix")
