"""Training jobs: create (auto hyperparameters resolved), queue, run, watch, cancel, recover.

Blocking; the servicer calls the API in threads, and an asyncio loop calls `schedule()`.
Each running job has a supervisor thread that owns its worker group and turns the worker's
reports into events and state.
"""

from __future__ import annotations

import builtins
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.job_records import (
    ACTIVE,
    CANCELLED,
    CANCELLING,
    ENDED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Event,
    Job,
    JobRecords,
)
from services.common.model_files import read_model_manifest
from services.common.resource_names import (
    check_id,
    cut_page,
    decode_page_token,
    page_size,
    parse_filter,
    parse_name,
)
from services.common.settings import StoreSettings
from services.common.worker_process import WorkerProcess, stop_group, stop_job_processes
from services.training import hyperparameters as hp
from services.training.launcher import worker_group
from services.training.worker_config import OutputSpec, WorkerConfig

log = structlog.get_logger("training")
STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLING", "CANCELLED")


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


def content_files(content_sha256: str, *splits: str) -> list[str]:
    return [f"datasets/content/{content_sha256}/{split}.jsonl" for split in splits]


class TrainingJobs:
    def __init__(
        self,
        records: JobRecords,
        store: ArtifactStore,
        store_settings: StoreSettings,
        datasets: DatasetLookup,
        work_root: Path,
        extensions_dir: Path,
        max_concurrent: int = 1,
        hardware: hp.Hardware | None = None,
        cancel_grace_s: float = 5.0,
    ) -> None:
        self.records = records
        self.store = store
        self.store_settings = store_settings
        self.datasets = datasets
        self.work_root = work_root
        self.extensions_dir = extensions_dir
        self.max_concurrent = max_concurrent
        self.hardware = hardware or hp.detect_hardware()
        self.cancel_grace_s = cancel_grace_s
        self.notify: Callable[[str], None] = lambda _job: None
        self._running: dict[str, WorkerProcess] = {}
        self._supervisors: dict[str, threading.Thread] = {}
        self._shutting_down = False
        self._lock = threading.Lock()

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

    def get(self, name: str) -> Job:
        parse_name(name, "trainingJobs")
        return self.records.get(name)

    def list(
        self, project: str, requested: int, token: str, filter_text: str
    ) -> tuple[builtins.list[Job], str]:
        size = page_size(requested)
        state = parse_filter(filter_text, {"state"}).get("state")
        if state and state not in STATES:
            raise InvalidArgument(f"unknown state {state!r}", field="filter")
        after = str(decode_page_token(token).get("after", ""))
        found = self.records.list(project, after, size + 1, state)
        return cut_page(found, size, lambda item: item.job_id)

    def events(
        self, name: str, after: int = 0, limit: int = 1000, kind: str | None = None
    ) -> builtins.list[Event]:
        self.get(name)
        return self.records.events(name, after, limit, kind)

    def list_events(
        self, name: str, requested: int, token: str, filter_text: str
    ) -> tuple[builtins.list[Event], str]:
        size = page_size(requested)
        kind = parse_filter(filter_text, {"type"}).get("type")
        after = int(str(decode_page_token(token).get("after", 0)))
        found = self.events(name, after, size + 1, kind)
        return cut_page(found, size, lambda item: item.sequence)

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

    # --- cancel / delete ----------------------------------------------------------------------

    def cancel(self, name: str) -> Job:
        job = self.get(name)
        if job.state in ENDED:
            raise FailedPrecondition(
                f"{name} already ended {job.state}",
                reason="JOB_STATE_CONFLICT",
                metadata={"state": job.state},
            )
        if job.state == PENDING:
            done = self.records.transition(
                name, CANCELLED, "cancelled before it started", expect=(PENDING,)
            )
            if done is not None:
                self.notify(name)
                return done
        moved = self.records.transition(name, CANCELLING, "cancel requested", expect=(RUNNING,))
        self.notify(name)
        with self._lock:
            group = self._running.get(name)
        if group is not None:
            threading.Thread(
                target=group.terminate, args=(self.cancel_grace_s,), daemon=True
            ).start()
        return moved or self.get(name)

    def delete(self, name: str) -> None:
        job = self.get(name)
        if job.state in ACTIVE:
            raise FailedPrecondition(
                f"{name} is {job.state}; cancel it first",
                reason="JOB_STATE_CONFLICT",
                metadata={"state": job.state},
            )
        prefix = job.resolved.get("checkpoint_prefix", "")
        if prefix:
            self.store.delete_prefix(prefix)
        self.records.delete(name)
        log.info("job_deleted", job=name)

    # --- scheduling ---------------------------------------------------------------------------

    def schedule(self) -> builtins.list[str]:
        """Starts queued jobs while fewer than max_concurrent run. Returns the started ones."""
        started: builtins.list[str] = []
        if self._shutting_down:
            return started
        with self._lock:
            free = self.max_concurrent - len(self._running)
        if free <= 0:
            return started
        for job in self.records.in_states(PENDING)[:free]:
            if self._start(job):
                started.append(job.name)
        return started

    def _start(self, job: Job) -> bool:
        config = WorkerConfig.model_validate(job.resolved)
        reason = (
            f"resuming from the latest checkpoint (resume {job.resume_count})"
            if job.resume_count
            else "a worker slot is free"
        )
        moved = self.records.transition(job.name, RUNNING, reason, expect=(PENDING,))
        if moved is None:
            return False
        group = worker_group(
            config,
            self.work_root / job.project / job.job_id,
            self.store_settings,
            self.extensions_dir,
            on_event=lambda event: self._on_event(job.name, event),
            on_log=lambda line: self._on_log(job.name, line),
        )
        try:
            group.start()
        except OSError as exc:
            self._finish(
                job.name,
                FAILED,
                f"the worker could not start: {exc}",
                {
                    "code": "INTERNAL",
                    "reason": "WORKER_FAILED",
                    "message": f"the worker could not start: {exc}",
                    "metadata": {},
                },
            )
            return False
        self.records.update(job.name, worker_pid=group.pid, worker_started_at=group.started_at)
        with self._lock:
            self._running[job.name] = group
        supervisor = threading.Thread(
            target=self._supervise,
            args=(job.name, group),
            daemon=True,
            name=f"supervise-{job.job_id}",
        )
        with self._lock:
            self._supervisors[job.name] = supervisor
        supervisor.start()
        log.info(
            "job_started",
            job=job.name,
            pid=group.pid,
            processes=config.distribution.processes_per_node,
        )
        self.notify(job.name)
        return True

    def _on_event(self, name: str, event: dict[str, Any]) -> None:
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

    def _on_log(self, name: str, line: str) -> None:
        level = "error" if ("Error" in line or "Traceback" in line) else "info"
        self.records.add_event(
            name, "log", {"level": level, "source": "worker", "message": line[:4000]}
        )
        self.notify(name)

    def _log_event(self, name: str, level: str, message: str) -> None:
        self.records.add_event(
            name, "log", {"level": level, "source": "service", "message": message}
        )

    def _supervise(self, name: str, group: WorkerProcess) -> None:
        code = group.wait()
        with self._lock:
            self._running.pop(name, None)
            self._supervisors.pop(name, None)
        job = self.records.get(name)
        if job.state == CANCELLING:
            self._finish(
                name,
                CANCELLED,
                "cancelled; checkpoints are kept",
                {
                    "code": "CANCELLED",
                    "reason": "ABORTED",
                    "message": "the job was cancelled",
                    "metadata": {},
                },
            )
        elif self._shutting_down:
            self.records.transition(
                name,
                PENDING,
                "the training service is stopping; the job will resume from its latest checkpoint",
                expect=(RUNNING,),
                resume_count=job.resume_count + 1,
            )
        elif code == 0 and job.output_model:
            self._finish(name, SUCCEEDED, f"training finished; output {job.output_model}", None)
        else:
            tail = "\n".join(group.tail)
            why = (
                f"the worker exited with code {code}"
                if code
                else "the worker ended without registering its output"
            )
            self._finish(
                name,
                FAILED,
                why,
                {
                    "code": "INTERNAL",
                    "reason": "WORKER_FAILED",
                    "message": f"{why}; its last log lines:\n{tail}",
                    "metadata": {"exit_code": str(code)},
                },
            )
        self.notify(name)

    def _finish(self, name: str, state: str, reason: str, error: dict[str, Any] | None) -> None:
        self.records.transition(name, state, reason, error=error)
        log.info("job_ended", job=name, state=state, reason=reason)

    # --- restart ------------------------------------------------------------------------------

    def recover(self) -> builtins.list[str]:
        """After a restart: stop worker groups an earlier service left behind, requeue their
        jobs to resume from the latest checkpoint, finish pending cancellations."""
        resumed = []
        for job in self.records.in_states(RUNNING, CANCELLING):
            if job.worker_pid:
                stop_group(job.worker_pid, job.worker_started_at, grace_s=5)
            stop_job_processes(job.name, grace_s=5)
            if job.state == CANCELLING:
                self._finish(job.name, CANCELLED, "cancelled; checkpoints are kept", None)
                continue
            self.records.transition(
                job.name,
                PENDING,
                "the training service restarted; the job resumes from its latest checkpoint",
                expect=(RUNNING,),
                resume_count=job.resume_count + 1,
                worker_pid=0,
            )
            resumed.append(job.name)
        return resumed

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Stops running workers; their jobs go back to the queue and resume later."""
        self._shutting_down = True
        with self._lock:
            groups = dict(self._running)
        for group in groups.values():
            group.terminate(grace_s)
        with self._lock:
            threads = [self._supervisors[n] for n in groups if n in self._supervisors]
        for thread in threads:
            thread.join(timeout=grace_s + 10)


def _output_id(base_id: str, suffix: str, job_id: str) -> str:
    """`{base}-{suffix}-{job}`, without repeating a suffix the job id already starts with, cut
    to 63 characters from the base's end so the job id (what makes it unique) stays whole."""
    parts = [base_id, suffix, job_id] if not job_id.startswith(suffix) else [base_id, job_id]
    parts = [p.strip("-").lower().replace("_", "-") for p in parts if p]
    tail = "-".join(parts[1:])
    head = parts[0][: max(1, 62 - len(tail))].rstrip("-")
    return check_id(f"{head}-{tail}"[:63].rstrip("-"), "training_job.suffix")
