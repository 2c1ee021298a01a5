"""`tuneforge.Client`: a typed client over the services' gRPC stubs.

Each service has its own address. By default they come from the local stack's state file
(`$TUNEFORGE_HOME/stack.json`, written by `tuneforge up`), then from `TUNEFORGE_<SERVICE>_TARGET`,
then the default ports on 127.0.0.1. `Client("gpu-box")` uses the default ports on that host.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuneforge.datasets.v1 import dataset_service_pb2 as datasets_pb
from tuneforge.datasets.v1 import dataset_service_pb2_grpc as datasets_grpc
from tuneforge.errors import TuneforgeError
from tuneforge.training.v1 import model_service_pb2 as models_pb
from tuneforge.training.v1 import model_service_pb2_grpc as models_grpc
from tuneforge.training.v1 import training_service_pb2 as training_pb
from tuneforge.training.v1 import training_service_pb2_grpc as training_grpc

SERVICES = ("datasets", "training", "conversion", "inference")
DEFAULT_PORTS = {"datasets": 50051, "training": 50052, "conversion": 50053, "inference": 50054}
T = TypeVar("T")
J = TypeVar("J", covariant=True)
E = TypeVar("E")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of calls that failed with a transient code, done by gRPC itself."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    retryable_codes: tuple[str, ...] = ("UNAVAILABLE",)

    def service_config(self) -> str:
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{}],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff_s}s",
                            "maxBackoff": f"{self.max_backoff_s}s",
                            "backoffMultiplier": self.backoff_multiplier,
                            "retryableStatusCodes": list(self.retryable_codes),
                        },
                    }
                ]
            }
        )


@dataclass(frozen=True)
class ClientConfig:
    """Deadlines (seconds) per kind of call, and the retry policy."""

    timeout_s: float = 30.0
    long_timeout_s: float = 1800.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_message_mb: int = 64


def tuneforge_home() -> Path:
    return Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".tuneforge")


def resolve_targets(
    target: str | None = None, targets: Mapping[str, str] | None = None
) -> dict[str, str]:
    resolved: dict[str, str] = {}
    if target:
        host = target.split("://", 1)[-1]
        resolved = {s: f"{host}:{DEFAULT_PORTS[s]}" for s in SERVICES}
    else:
        state_file = tuneforge_home() / "stack.json"
        stack: dict[str, Any] = {}
        if state_file.exists():
            try:
                stack = json.loads(state_file.read_text()).get("components", {})
            except (OSError, ValueError):
                stack = {}
        for s in SERVICES:
            env = os.environ.get(f"TUNEFORGE_{s.upper()}_TARGET")
            from_stack = stack.get(s, {}).get("address")
            resolved[s] = env or from_stack or f"127.0.0.1:{DEFAULT_PORTS[s]}"
    resolved.update(targets or {})
    return resolved


def call(fn: Callable[..., T], request: Any, timeout: float, **kwargs: Any) -> T:
    """Calls a stub method, turning grpc.RpcError into TuneforgeError."""
    try:
        return fn(request, timeout=timeout, **kwargs)
    except grpc.RpcError as exc:
        raise TuneforgeError.from_rpc_error(exc) from None


def server_stream(method: Callable[..., Any], request: Any, timeout: float) -> Iterator[Any]:
    """The messages of a server-streaming call, turning grpc.RpcError into TuneforgeError; the
    call is cancelled when the caller stops iterating."""
    stream = method(request, timeout=timeout)
    try:
        yield from stream
    except grpc.RpcError as exc:
        raise TuneforgeError.from_rpc_error(exc) from None
    finally:
        stream.cancel()


def pages(
    method: Callable[..., Any],
    make_request: Callable[[str], Any],
    items: str,
    timeout: float,
) -> Iterator[Any]:
    """Every item of a paginated List method: `make_request(page_token)` builds each request and
    `items` names the response's repeated field."""
    token = ""
    while True:
        page = call(method, make_request(token), timeout)
        yield from getattr(page, items)
        token = page.next_page_token
        if not token:
            return


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, target: Path, sha256: str, timeout: float) -> None:
    """GET `url` into `target` through a temporary file, kept only if its sha256 matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply, open(partial, "wb") as out:
            for block in iter(lambda: reply.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise TuneforgeError(
            grpc.StatusCode.UNAVAILABLE, f"downloading {target.name} failed: {exc}"
        ) from None
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise TuneforgeError(
            grpc.StatusCode.DATA_LOSS,
            f"{target.name} does not match its manifest's sha256",
            reason="ARTIFACT_CORRUPT",
        )
    partial.replace(target)


class Models:
    """`client.models`: the model catalog (hosted by the training service)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub = models_grpc.ModelServiceStub(client.channel("training"))

    def import_model(
        self,
        model_id: str,
        *,
        hf_dir: str | None = None,
        gguf_file: str | None = None,
        preset: str | None = None,
        uri: str | None = None,
        display_name: str = "",
        labels: Mapping[str, str] | None = None,
        request_id: str = "",
        seed: int = 0,
    ) -> models_pb.Model:
        """Imports a base model; exactly one source. Local paths must be readable by the server."""
        sources = {"hf_dir": hf_dir, "gguf_file": gguf_file, "preset": preset, "uri": uri}
        given = {k: v for k, v in sources.items() if v}
        if len(given) != 1:
            raise ValueError("give exactly one of hf_dir, gguf_file, preset, uri")
        ((kind, value),) = given.items()
        if kind in ("hf_dir", "gguf_file"):
            value = str(Path(value).expanduser().resolve())
        request = models_pb.ImportModelRequest(
            parent=self._client.parent,
            model_id=model_id,
            display_name=display_name,
            labels=dict(labels or {}),
            request_id=request_id,
            seed=seed,
            **{kind: value},
        )
        return call(self._stub.ImportModel, request, self._client.config.long_timeout_s)

    def get(self, model: str) -> models_pb.Model:
        request = models_pb.GetModelRequest(name=self._client.model_name(model))
        return call(self._stub.GetModel, request, self._client.config.timeout_s)

    def list(self, filter: str = "", page_size: int = 0) -> Iterator[models_pb.Model]:
        """Every model of the project, fetched page by page."""
        return pages(
            self._stub.ListModels,
            lambda token: models_pb.ListModelsRequest(
                parent=self._client.parent, page_size=page_size, page_token=token, filter=filter
            ),
            "models",
            self._client.config.timeout_s,
        )

    def delete(self, model: str) -> None:
        request = models_pb.DeleteModelRequest(name=self._client.model_name(model))
        call(self._stub.DeleteModel, request, self._client.config.timeout_s)

    def download(
        self,
        model: str,
        dest: str | Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Downloads the model's files into `dest` (created), each checked against its sha256,
        through short-lived URLs the catalog signs; needs no object-store credentials. Files
        already there with the right sha256 are kept. Returns `dest`."""
        request = models_pb.GetModelDownloadRequest(name=self._client.model_name(model))
        plan = call(self._stub.GetModelDownload, request, self._client.config.timeout_s)
        root = Path(dest)
        total = sum(f.size_bytes for f in plan.files)
        done = 0
        for entry in plan.files:
            target = root / entry.path
            if not (target.is_file() and _sha256_of(target) == entry.sha256):
                _fetch(entry.url, target, entry.sha256, self._client.config.long_timeout_s)
            done += entry.size_bytes
            if progress is not None:
                progress(done, total)
        return root


FORMATS = {
    "chat": "CHAT_JSONL",
    "prompt-completion": "PROMPT_COMPLETION_JSONL",
    "alpaca": "ALPACA_JSONL",
    "preference": "PREFERENCE_JSONL",
    "csv": "CSV",
    "parquet": "PARQUET",
}
UploadProgress = Callable[[int, int], None]  # (bytes sent, bytes in all)


class Datasets:
    """`client.datasets`: upload, inspect, preview and delete datasets."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub = datasets_grpc.DatasetServiceStub(client.channel("datasets"))

    def _spec(
        self,
        *,
        format: str | None,
        model: str | None,
        max_seq_len: int,
        validation_split: float,
        seed: int,
        validation_dataset: str | None,
        skip_invalid: bool,
        column_mapping: Mapping[str, str] | None,
        display_name: str,
        labels: Mapping[str, str] | None,
    ) -> datasets_pb.Dataset:
        fmt = 0
        if format:
            name = FORMATS.get(format, format.upper())
            if name not in datasets_pb.Dataset.Format.keys():  # noqa: SIM118 (enum wrapper)
                raise ValueError(f"unknown format {format!r}; use one of {sorted(FORMATS)}")
            fmt = datasets_pb.Dataset.Format.Value(name)
        return datasets_pb.Dataset(
            display_name=display_name,
            format=fmt,  # type: ignore[arg-type]
            validation_policy=datasets_pb.Dataset.SKIP_INVALID
            if skip_invalid
            else datasets_pb.Dataset.STRICT,
            column_mapping=dict(column_mapping or {}),
            model=self._client.model_name(model) if model else "",
            max_seq_len=max_seq_len,
            split=datasets_pb.SplitConfig(
                validation_fraction=validation_split,
                seed=seed,
                validation_dataset=self._client.dataset_name(validation_dataset)
                if validation_dataset
                else "",
            ),
            labels=dict(labels or {}),
        )

    def upload(
        self,
        path: str | Path,
        *,
        dataset_id: str = "",
        format: str | None = None,
        model: str | None = None,
        max_seq_len: int = 0,
        validation_split: float = 0.0,
        seed: int = 0,
        validation_dataset: str | None = None,
        skip_invalid: bool = False,
        column_mapping: Mapping[str, str] | None = None,
        display_name: str = "",
        labels: Mapping[str, str] | None = None,
        request_id: str = "",
        progress: UploadProgress | None = None,
        chunk_size: int = 1 << 20,
    ) -> datasets_pb.Dataset:
        """Streams a local file to the datasets service; returns the READY dataset, or raises
        TuneforgeError (reason DATASET_INVALID, metadata naming the first bad line)."""
        file = Path(path).expanduser()
        size = file.stat().st_size
        header = datasets_pb.UploadDatasetHeader(
            parent=self._client.parent,
            dataset_id=dataset_id,
            dataset=self._spec(
                format=format,
                model=model,
                max_seq_len=max_seq_len,
                validation_split=validation_split,
                seed=seed,
                validation_dataset=validation_dataset,
                skip_invalid=skip_invalid,
                column_mapping=column_mapping,
                display_name=display_name,
                labels=labels,
            ),
            file_name=file.name,
            size_bytes=size,
            request_id=request_id,
        )

        def messages() -> Iterator[datasets_pb.UploadDatasetRequest]:
            yield datasets_pb.UploadDatasetRequest(header=header)
            sent = 0
            digest = hashlib.sha256()
            with file.open("rb") as fh:
                while chunk := fh.read(chunk_size):
                    sent += len(chunk)
                    digest.update(chunk)
                    yield datasets_pb.UploadDatasetRequest(chunk=chunk)
                    if progress:
                        progress(sent, size)
            # The server publishes only what provably arrived whole.
            yield datasets_pb.UploadDatasetRequest(
                trailer=datasets_pb.UploadDatasetTrailer(size_bytes=sent, sha256=digest.hexdigest())
            )

        return call(self._stub.UploadDataset, messages(), self._client.config.long_timeout_s)

    def create_from_uri(
        self, source_uri: str, *, dataset_id: str = "", request_id: str = "", **spec: Any
    ) -> datasets_pb.Dataset:
        """Registers a file already in the object store (s3://bucket/key)."""
        defaults: dict[str, Any] = dict(
            format=None,
            model=None,
            max_seq_len=0,
            validation_split=0.0,
            seed=0,
            validation_dataset=None,
            skip_invalid=False,
            column_mapping=None,
            display_name="",
            labels=None,
        )
        defaults.update(spec)
        request = datasets_pb.CreateDatasetRequest(
            parent=self._client.parent,
            dataset_id=dataset_id,
            dataset=self._spec(**defaults),
            source_uri=source_uri,
            request_id=request_id,
        )
        return call(self._stub.CreateDataset, request, self._client.config.long_timeout_s)

    def get(self, dataset: str) -> datasets_pb.Dataset:
        request = datasets_pb.GetDatasetRequest(name=self._client.dataset_name(dataset))
        return call(self._stub.GetDataset, request, self._client.config.timeout_s)

    def list(self, filter: str = "", page_size: int = 0) -> Iterator[datasets_pb.Dataset]:
        return pages(
            self._stub.ListDatasets,
            lambda token: datasets_pb.ListDatasetsRequest(
                parent=self._client.parent, page_size=page_size, page_token=token, filter=filter
            ),
            "datasets",
            self._client.config.timeout_s,
        )

    def delete(self, dataset: str) -> None:
        request = datasets_pb.DeleteDatasetRequest(name=self._client.dataset_name(dataset))
        call(self._stub.DeleteDataset, request, self._client.config.timeout_s)

    def preview(
        self, dataset: str, rows: int = 5, split: str = "train", model: str | None = None
    ) -> builtins.list[datasets_pb.PreviewRow]:
        request = datasets_pb.PreviewDatasetRequest(
            name=self._client.dataset_name(dataset),
            row_count=rows,
            split=split,
            model=self._client.model_name(model) if model else "",
        )
        return list(call(self._stub.PreviewDataset, request, self._client.config.timeout_s).rows)


ENDED_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


class JobHandle(Protocol[J]):
    @property
    def name(self) -> str: ...

    @property
    def state(self) -> str: ...

    def refresh(self) -> J: ...


def follow(
    handle: JobHandle[J],
    watch: Callable[[int], Iterator[E]],
    on_event: Callable[[E], None] | None,
    timeout_s: float | None,
) -> J:
    """Follows a job's events to its end, reconnecting when the stream breaks; returns the job.
    `watch(after_sequence)` streams the events after a sequence number."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    after = 0
    while True:
        try:
            for event in watch(after):
                after = event.sequence  # type: ignore[attr-defined]
                if on_event:
                    on_event(event)
        except TuneforgeError as exc:
            if exc.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        job = handle.refresh()
        if handle.state in ENDED_STATES:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise TuneforgeError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{handle.name} is still {handle.state}"
            )
        time.sleep(1.0)


class TrainingJobHandle:
    """A training job: its latest state, its events, waiting for the end."""

    def __init__(self, jobs: Jobs, job: training_pb.TrainingJob) -> None:
        self._jobs = jobs
        self.job = job

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def state(self) -> str:
        return training_pb.TrainingJob.State.Name(self.job.state)

    def refresh(self) -> training_pb.TrainingJob:
        self.job = self._jobs.get(self.name).job
        return self.job

    def events(self, after_sequence: int = 0) -> Iterator[training_pb.TrainingJobEvent]:
        """Streams the job's events (history, then live) until it ends."""
        return self._jobs.watch(self.name, after_sequence)

    def wait(
        self,
        on_event: Callable[[training_pb.TrainingJobEvent], None] | None = None,
        timeout_s: float | None = None,
    ) -> training_pb.TrainingJob:
        """Follows the job to its end (reconnecting if the stream breaks) and returns it."""
        return follow(
            self,
            lambda after: self._jobs.watch(self.name, after, timeout_s=timeout_s),
            on_event,
            timeout_s,
        )

    def cancel(self) -> training_pb.TrainingJob:
        self.job = self._jobs.cancel(self.name).job
        return self.job


class Jobs:
    """`client.jobs`: fine-tuning jobs."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub = training_grpc.TrainingServiceStub(client.channel("training"))

    def job_name(self, job: str) -> str:
        return job if job.startswith("projects/") else f"{self._client.parent}/trainingJobs/{job}"

    def create(
        self,
        model: str,
        dataset: str,
        *,
        validation_dataset: str | None = None,
        method: str = "lora",
        hyperparameters: Mapping[str, Any] | None = None,
        lora: Mapping[str, Any] | None = None,
        processes_per_node: int = 0,
        zero_stage: int = 0,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        nodes: int = 0,
        launcher: str = "",
        kubernetes: Mapping[str, Any] | None = None,
        seed: int = 0,
        suffix: str = "",
        priority: int = 0,
        job_id: str = "",
        display_name: str = "",
        labels: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> TrainingJobHandle:
        """Queues a fine-tuning job. Unset hyperparameters are chosen from the model and data;
        `hyperparameters` takes the fields of tuneforge.training.v1.Hyperparameters. `nodes` > 1
        needs launcher="kubernetes" (a Kubeflow Trainer TrainJob; `kubernetes` takes the fields
        of KubernetesConfig: namespace, runtime, gpus_per_node, image)."""
        job = training_pb.TrainingJob(
            display_name=display_name,
            base_model=self._client.model_name(model),
            training_dataset=self._client.dataset_name(dataset),
            validation_dataset=self._client.dataset_name(validation_dataset)
            if validation_dataset
            else "",
            method=method.upper(),
            hyperparameters=training_pb.Hyperparameters(**dict(hyperparameters or {})),
            lora=training_pb.LoraConfig(**dict(lora or {})),
            distribution=training_pb.DistributionConfig(
                processes_per_node=processes_per_node,
                nodes=nodes,
                zero_stage=zero_stage,
                offload_optimizer=offload_optimizer,
                offload_parameters=offload_parameters,
                launcher=launcher.upper() if launcher else "LAUNCHER_UNSPECIFIED",
                kubernetes=training_pb.KubernetesConfig(**dict(kubernetes or {})),
            ),
            suffix=suffix,
            seed=seed,
            priority=priority,
            labels=dict(labels or {}),
        )
        request = training_pb.CreateTrainingJobRequest(
            parent=self._client.parent,
            training_job_id=job_id,
            training_job=job,
            request_id=request_id,
        )
        created = call(self._stub.CreateTrainingJob, request, self._client.config.timeout_s)
        return TrainingJobHandle(self, created)

    def get(self, job: str) -> TrainingJobHandle:
        request = training_pb.GetTrainingJobRequest(name=self.job_name(job))
        return TrainingJobHandle(
            self, call(self._stub.GetTrainingJob, request, self._client.config.timeout_s)
        )

    def list(self, filter: str = "", page_size: int = 0) -> Iterator[training_pb.TrainingJob]:
        return pages(
            self._stub.ListTrainingJobs,
            lambda token: training_pb.ListTrainingJobsRequest(
                parent=self._client.parent, page_size=page_size, page_token=token, filter=filter
            ),
            "training_jobs",
            self._client.config.timeout_s,
        )

    def cancel(self, job: str) -> TrainingJobHandle:
        request = training_pb.CancelTrainingJobRequest(name=self.job_name(job))
        return TrainingJobHandle(
            self, call(self._stub.CancelTrainingJob, request, self._client.config.timeout_s)
        )

    def delete(self, job: str) -> None:
        request = training_pb.DeleteTrainingJobRequest(name=self.job_name(job))
        call(self._stub.DeleteTrainingJob, request, self._client.config.timeout_s)

    def watch(
        self, job: str, after_sequence: int = 0, timeout_s: float | None = None
    ) -> Iterator[training_pb.TrainingJobEvent]:
        request = training_pb.WatchTrainingJobRequest(
            name=self.job_name(job), after_sequence=after_sequence
        )
        return server_stream(
            self._stub.WatchTrainingJob, request, timeout_s or self._client.config.long_timeout_s
        )

    def events(self, job: str, filter: str = "") -> Iterator[training_pb.TrainingJobEvent]:
        return pages(
            self._stub.ListTrainingJobEvents,
            lambda token: training_pb.ListTrainingJobEventsRequest(
                parent=self.job_name(job), page_token=token, filter=filter, page_size=500
            ),
            "events",
            self._client.config.timeout_s,
        )

    def checkpoints(self, job: str) -> builtins.list[training_pb.Checkpoint]:
        request = training_pb.ListTrainingJobCheckpointsRequest(parent=self.job_name(job))
        reply = call(self._stub.ListTrainingJobCheckpoints, request, self._client.config.timeout_s)
        return builtins.list(reply.checkpoints)


class Client:
    """A connection to the tuneforge services.

    >>> client = tuneforge.Client()
    >>> client.models.import_model("smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        targets: Mapping[str, str] | None = None,
        project: str = "default",
        config: ClientConfig | None = None,
    ) -> None:
        self.targets = resolve_targets(target, targets)
        self.project = project
        self.config = config or ClientConfig()
        self._channels: dict[str, grpc.Channel] = {}
        self.models = Models(self)
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        from tuneforge.conversions import Conversions  # imports this module's helpers

        self.conversions = Conversions(self)
        from tuneforge.inference_client import Inference  # imports this module's helpers

        self.inference = Inference(self)
        from tuneforge.evaluations import Evaluations  # imports this module's helpers

        self.evaluations = Evaluations(self)

    @property
    def parent(self) -> str:
        return f"projects/{self.project}"

    def model_name(self, model: str) -> str:
        """Accepts a full resource name or a short id in the client's project."""
        return model if model.startswith("projects/") else f"{self.parent}/models/{model}"

    def dataset_name(self, dataset: str) -> str:
        return dataset if dataset.startswith("projects/") else f"{self.parent}/datasets/{dataset}"

    def channel(self, service: str) -> grpc.Channel:
        if service not in self._channels:
            size = self.config.max_message_mb * 1024 * 1024
            self._channels[service] = grpc.insecure_channel(
                self.targets[service],
                options=[
                    ("grpc.service_config", self.config.retry.service_config()),
                    ("grpc.enable_retries", 1),
                    ("grpc.max_receive_message_length", size),
                    ("grpc.max_send_message_length", size),
                ],
            )
        return self._channels[service]

    def health(self, timeout_s: float = 3.0) -> dict[str, str]:
        """Each service's gRPC health status name (SERVING, NOT_SERVING, UNREACHABLE)."""
        result = {}
        for service in SERVICES:
            stub = health_pb2_grpc.HealthStub(self.channel(service))
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
                result[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError:
                result[service] = "UNREACHABLE"
        return result

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
