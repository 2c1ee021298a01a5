"""The kubernetes launcher: a training job's worker as a Kubeflow Trainer v2 TrainJob.

Multi-node jobs run on an existing engine rather than on a scheduler of our own (ARCHITECTURE.md,
"Training workers"). For a job whose `distribution.launcher` is KUBERNETES (or every job, with
TUNEFORGE_TRAINING_LAUNCHER=kubernetes) the training service

1. renders a ConfigMap holding the job's job.json and a `TrainJob`
   (trainer.kubeflow.org/v1alpha1) that refers to a ClusterTrainingRuntime (`torch-distributed`
   by default), with `trainer.numNodes`, `trainer.numProcPerNode`, `trainer.resourcesPerNode`
   (nvidia.com/gpu), the worker command and the object store's settings taken from the same
   ConfigMap and Secret as the services' (deploy/k8s/base);
2. creates both through the Kubernetes API (the pod's service account, plain HTTPS);
3. polls the TrainJob's status conditions and mirrors them into the job's events, and follows
   the log of the pod that runs rank 0, whose `@@tuneforge` lines are the same progress events a
   local worker prints.

`KubernetesWorker` has the interface of a local `WorkerProcess` (start, wait, terminate, pid,
started_at, tail), so the job runner supervises either the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

import structlog
import urllib3
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.model_files import MODEL_CACHE_ENV
from services.common.worker_process import JOB_ENV, WorkerProcess, parse_event
from services.training.worker_config import EVENT_TYPES, WorkerConfig

log = structlog.get_logger("training.kubernetes")

TRAINER_API = "trainer.kubeflow.org/v1alpha1"
JOB_JSON_DIR = "/etc/tuneforge"
JOB_JSON = f"{JOB_JSON_DIR}/job.json"
WORK_MOUNT = "/var/lib/tuneforge-work"
# The container of a Kubeflow Trainer runtime that runs the trainer (both torch and MPI runtimes).
TRAINER_CONTAINER = "node"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Our job states, as the job runner names them.
PENDING, RUNNING, SUCCEEDED, FAILED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED"
# wait()'s result when the worker was cancelled or detached (as a SIGTERM'd process: -15).
TERMINATED = -15


class KubernetesSettings(BaseSettings):
    """The kubernetes launcher (env prefix TUNEFORGE_K8S_; the launcher switch also answers to
    TUNEFORGE_TRAINING_LAUNCHER)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_K8S_", extra="ignore")

    # Where jobs that name no launcher run: "local" (torchrun in the training service's pod or
    # machine) or "kubernetes". A job that names one (LOCAL / KUBERNETES) gets that one.
    launcher: Literal["local", "kubernetes"] = Field(
        default="local", validation_alias=AliasChoices("TUNEFORGE_TRAINING_LAUNCHER", "launcher")
    )
    # Empty: the service account's own namespace (or "default" outside a cluster).
    namespace: str = ""
    # A ClusterTrainingRuntime: "torch-distributed" (torchrun on every node; DeepSpeed ZeRO runs
    # inside it) or an MPI one such as "deepspeed-distributed" (needs an image with OpenMPI).
    runtime: str = "torch-distributed"
    # "ClusterTrainingRuntime" or a namespaced "TrainingRuntime".
    runtime_kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"
    # The worker image: the tuneforge image (CUDA variant), as the training Deployment runs it.
    image: str = ""
    # GPUs per node; 0: one per process (distribution.processes_per_node).
    gpus_per_node: int = 0
    # Optional CPU and memory requests per node ("16", "64Gi").
    cpu_per_node: str = ""
    memory_per_node: str = ""
    # A ReadWriteMany PersistentVolumeClaim mounted on every node (each job in a subdirectory):
    # ranks on other nodes read the data and checkpoints rank 0 fetched and wrote there. Required
    # for more than one node; a single-node TrainJob gets a scratch volume without it.
    work_volume_claim: str = ""
    # What the pods take the object store's settings from (deploy/k8s/base names).
    s3_secret: str = "tuneforge-s3"
    config_map: str = "tuneforge-config"
    # The Kubernetes API, as a pod's service account reaches it.
    api_server: str = "https://kubernetes.default.svc"
    token_file: Path = SERVICE_ACCOUNT_DIR / "token"
    ca_file: Path = SERVICE_ACCOUNT_DIR / "ca.crt"
    request_timeout_s: float = 30.0
    # How often the TrainJob's status is read.
    poll_interval_s: float = 10.0

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        try:
            return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or "default"
        except OSError:
            return "default"


@dataclass(frozen=True)
class JobPlacement:
    """Where and how one job runs: the settings, overridden by the job's own
    `distribution.kubernetes` (namespace, runtime, gpus_per_node, image)."""

    namespace: str
    runtime: str
    runtime_kind: str
    image: str
    gpus_per_node: int

    @property
    def mpi(self) -> bool:
        """MPI runtimes (Kubeflow's deepspeed-distributed, mpi-distributed) start the trainer
        through mpirun on a launcher instead of torchrun on each node."""
        return self.runtime.startswith(("deepspeed", "mpi"))


def job_launcher(spec: dict[str, Any], settings: KubernetesSettings) -> str:
    """ "local" or "kubernetes" for a job with this spec."""
    chosen = str((spec.get("distribution") or {}).get("launcher") or "")
    if chosen == "KUBERNETES":
        return "kubernetes"
    if chosen == "LOCAL":
        return "local"
    return settings.launcher


def placement(spec: dict[str, Any], settings: KubernetesSettings) -> JobPlacement:
    own = dict((spec.get("distribution") or {}).get("kubernetes") or {})
    return JobPlacement(
        namespace=str(own.get("namespace") or settings.resolved_namespace()),
        runtime=str(own.get("runtime") or settings.runtime),
        runtime_kind=settings.runtime_kind,
        image=str(own.get("image") or settings.image),
        gpus_per_node=int(own.get("gpus_per_node") or settings.gpus_per_node),
    )


def resource_name(job: str) -> str:
    """A TrainJob name for a job "projects/{p}/trainingJobs/{id}": an RFC 1035 label, short
    enough for the JobSet's pod names, unique across projects (a hash of the whole name)."""
    job_id = job.rsplit("/", 1)[-1]
    digest = hashlib.sha256(job.encode()).hexdigest()[:8]
    return f"tf-{job_id[:28].rstrip('-')}-{digest}"


def _labels(config: WorkerConfig) -> dict[str, str]:
    _, project, _, job_id = config.job.split("/")
    return {
        "app.kubernetes.io/part-of": "tuneforge",
        "app.kubernetes.io/component": "training-worker",
        "tuneforge.ai/project": project,
        "tuneforge.ai/training-job": job_id,
    }


def render_config_map(config: WorkerConfig, name: str, namespace: str) -> dict[str, Any]:
    """The ConfigMap that carries the job's job.json (mounted at /etc/tuneforge/job.json)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{name}-job",
            "namespace": namespace,
            "labels": _labels(config),
            "annotations": {"tuneforge.ai/job": config.job},
        },
        "data": {"job.json": config.model_dump_json(indent=2)},
    }


def _env(config: WorkerConfig, settings: KubernetesSettings, work_dir: str) -> list[dict[str, Any]]:
    def from_config(key: str, optional: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": settings.config_map, "key": key}
        if optional:
            ref["optional"] = True
        return {"name": key, "valueFrom": {"configMapKeyRef": ref}}

    def from_secret(key: str) -> dict[str, Any]:
        return {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": settings.s3_secret, "key": key}},
        }

    return [
        from_config("TUNEFORGE_S3_ENDPOINT"),
        from_config("TUNEFORGE_S3_BUCKET", optional=True),
        from_config("TUNEFORGE_S3_SECURE", optional=True),
        from_config("TUNEFORGE_S3_REGION", optional=True),
        from_secret("TUNEFORGE_S3_ACCESS_KEY"),
        from_secret("TUNEFORGE_S3_SECRET_KEY"),
        {"name": JOB_ENV, "value": config.job},
        {"name": MODEL_CACHE_ENV, "value": f"{work_dir}/cache/models"},
        {"name": "TORCH_EXTENSIONS_DIR", "value": f"{work_dir}/cache/torch_extensions"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]


def _command(config: WorkerConfig, where: JobPlacement, work_dir: str) -> list[str]:
    """The trainer container's command. Torch runtimes: torchrun, whose --nnodes,
    --nproc_per_node, --node_rank, --master_addr and --master_port come from the PET_*
    variables the runtime sets on every node. MPI runtimes: mpirun on the launcher, each rank
    mapping Open MPI's variables to the ones torch.distributed reads."""
    module = f"-m services.training.worker {JOB_JSON}"
    if not where.mpi:
        script = f"cd {work_dir} && exec python -m torch.distributed.run {module}"
        return ["/bin/sh", "-c", script]
    dist = config.distribution
    name = resource_name(config.job)
    rank_env = (
        "export RANK=$OMPI_COMM_WORLD_RANK LOCAL_RANK=$OMPI_COMM_WORLD_LOCAL_RANK "
        "WORLD_SIZE=$OMPI_COMM_WORLD_SIZE LOCAL_WORLD_SIZE=$OMPI_COMM_WORLD_LOCAL_SIZE"
    )
    forwarded = " ".join(
        f"-x {key}"
        for key in (
            "TUNEFORGE_S3_ENDPOINT",
            "TUNEFORGE_S3_BUCKET",
            "TUNEFORGE_S3_SECURE",
            "TUNEFORGE_S3_REGION",
            "TUNEFORGE_S3_ACCESS_KEY",
            "TUNEFORGE_S3_SECRET_KEY",
            JOB_ENV,
            MODEL_CACHE_ENV,
            "TORCH_EXTENSIONS_DIR",
            "PYTHONUNBUFFERED",
            "TOKENIZERS_PARALLELISM",
            "HF_HUB_OFFLINE",
            "MASTER_ADDR",
            "MASTER_PORT",
        )
    )
    # With runLauncherAsNode the launcher is the first host of the hostfile: rank 0.
    script = (
        f"export MASTER_ADDR={name}-launcher-0-0.{name} MASTER_PORT=29500 && "
        f"mpirun --hostfile /etc/mpi/hostfile -np {dist.nodes * dist.processes_per_node} "
        f"--npernode {dist.processes_per_node} {forwarded} "
        f"/bin/sh -c '{rank_env}; cd {work_dir} && exec python {module}'"
    )
    return ["/bin/sh", "-c", script]


def render_train_job(
    config: WorkerConfig, where: JobPlacement, settings: KubernetesSettings
) -> dict[str, Any]:
    """The TrainJob that runs `config` on `config.distribution.nodes` nodes.

    The job.json and the work volume are mounted through `podTemplateOverrides` (Trainer
    v2.0/v2.1; Trainer's main branch calls the same thing `runtimePatches`)."""
    dist = config.distribution
    name = resource_name(config.job)
    gpus = where.gpus_per_node or dist.processes_per_node
    requests: dict[str, str] = {}
    if settings.cpu_per_node:
        requests["cpu"] = settings.cpu_per_node
    if settings.memory_per_node:
        requests["memory"] = settings.memory_per_node
    resources: dict[str, Any] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if requests:
        resources["requests"] = requests
    _, project, _, job_id = config.job.split("/")
    work_dir = WORK_MOUNT
    if settings.work_volume_claim:
        work_volume: dict[str, Any] = {
            "name": "work",
            "persistentVolumeClaim": {"claimName": settings.work_volume_claim},
        }
        work_mount: dict[str, Any] = {
            "name": "work",
            "mountPath": WORK_MOUNT,
            "subPath": f"jobs/{project}/{job_id}",
        }
    else:
        work_volume = {"name": "work", "emptyDir": {}}
        work_mount = {"name": "work", "mountPath": WORK_MOUNT}
    trainer: dict[str, Any] = {
        "numNodes": dist.nodes,
        "numProcPerNode": dist.processes_per_node,
        "resourcesPerNode": resources,
        "command": _command(config, where, work_dir),
        "env": _env(config, settings, work_dir),
    }
    if where.image:
        trainer["image"] = where.image
    targets = [{"name": "node"}] + ([{"name": "launcher"}] if where.mpi else [])
    return {
        "apiVersion": TRAINER_API,
        "kind": "TrainJob",
        "metadata": {
            "name": name,
            "namespace": where.namespace,
            "labels": _labels(config),
            "annotations": {"tuneforge.ai/job": config.job},
        },
        "spec": {
            "runtimeRef": {
                "name": where.runtime,
                "apiGroup": "trainer.kubeflow.org",
                "kind": where.runtime_kind,
            },
            "trainer": trainer,
            "podTemplateOverrides": [
                {
                    "targetJobs": targets,
                    "spec": {
                        "volumes": [
                            {"name": "job-config", "configMap": {"name": f"{name}-job"}},
                            work_volume,
                            # DeepSpeed's shm_comm and NCCL exchange tensors through /dev/shm.
                            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                        ],
                        "containers": [
                            {
                                "name": TRAINER_CONTAINER,
                                "volumeMounts": [
                                    {
                                        "name": "job-config",
                                        "mountPath": JOB_JSON_DIR,
                                        "readOnly": True,
                                    },
                                    work_mount,
                                    {"name": "dshm", "mountPath": "/dev/shm"},
                                ],
                            }
                        ],
                    },
                }
            ],
        },
    }


# --- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainJobState:
    state: str  # PENDING, RUNNING, SUCCEEDED or FAILED
    reason: str = ""
    message: str = ""

    def describe(self) -> str:
        what = {
            PENDING: "waiting",
            RUNNING: "running",
            SUCCEEDED: "complete",
            FAILED: "failed",
        }[self.state]
        detail = ": ".join(part for part in (self.reason, self.message) if part)
        return f"{what} ({detail})" if detail else what


def trainjob_state(train_job: dict[str, Any]) -> TrainJobState:
    """Our state for a TrainJob, from its status conditions (Failed, Complete, Suspended; older
    Trainers also set Created, other engines Running) and, while none has ended it, from
    whether any of its child Jobs has active or ready pods."""
    status = train_job.get("status") or {}
    conditions = {
        str(c.get("type")): c for c in status.get("conditions") or [] if isinstance(c, dict)
    }

    def true(kind: str) -> dict[str, Any] | None:
        found = conditions.get(kind)
        return found if found is not None and found.get("status") == "True" else None

    def of(state: str, condition: dict[str, Any]) -> TrainJobState:
        return TrainJobState(
            state, str(condition.get("reason") or ""), str(condition.get("message") or "")
        )

    if (failed := true("Failed")) is not None:
        return of(FAILED, failed)
    if (complete := true("Complete")) is not None:
        return of(SUCCEEDED, complete)
    created = conditions.get("Created")
    if (
        created is not None
        and created.get("status") == "False"
        and str(created.get("reason")) == "JobsCreationFailed"
    ):
        return of(FAILED, created)
    if (suspended := true("Suspended")) is not None:
        return of(PENDING, suspended)
    if (running := true("Running")) is not None:
        return of(RUNNING, running)
    jobs = status.get("jobsStatus") or []
    if any(int(j.get("active") or 0) or int(j.get("ready") or 0) for j in jobs):
        return TrainJobState(RUNNING, "JobsActive", "its pods are running")
    if (created_true := true("Created")) is not None:
        return of(PENDING, created_true)
    return TrainJobState(PENDING)


# --- the Kubernetes API -----------------------------------------------------------------------


class KubernetesError(OSError):
    """A Kubernetes API call failed (an OSError, so that a worker that cannot start fails its
    job with this message)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubernetesApi:
    """The few Kubernetes API calls the launcher makes, over HTTPS with a bearer token (the
    pod's service account), through urllib3."""

    def __init__(
        self,
        server: str,
        token: Callable[[], str] | None = None,
        ca_file: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.server = server.rstrip("/")
        self._token = token or (lambda: "")
        self.timeout_s = timeout_s
        kwargs: dict[str, Any] = {"retries": False}
        if self.server.startswith("https://"):
            kwargs.update(cert_reqs="CERT_REQUIRED", ca_certs=ca_file)
        self._http = urllib3.PoolManager(**kwargs)

    @classmethod
    def from_settings(cls, settings: KubernetesSettings) -> KubernetesApi:
        """The in-cluster API; the token is read on every call (kubelet rotates it)."""
        token_file = settings.token_file

        def token() -> str:
            try:
                return token_file.read_text().strip()
            except OSError:
                return ""

        ca = str(settings.ca_file) if settings.ca_file.is_file() else None
        return cls(settings.api_server, token, ca, settings.request_timeout_s)

    def _headers(self, content_type: str = "application/json") -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        try:
            response = self._http.request(
                method,
                self.server + path,
                body=json.dumps(body).encode() if body is not None else None,
                headers=self._headers(content_type),
                timeout=self.timeout_s,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise KubernetesError(
                f"the Kubernetes API at {self.server} did not answer: {exc}"
            ) from None
        data = response.data.decode(errors="replace")
        if response.status >= 400:
            message = data
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(data).get("message") or data
            raise KubernetesError(
                f"{method} {path}: {response.status} {message}".strip(), response.status
            )
        return json.loads(data) if data else {}

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str) -> None:
        try:
            self.request("DELETE", path, {"propagationPolicy": "Background"})
        except KubernetesError as exc:
            if exc.status != 404:
                raise

    def stream_lines(self, path: str, stop: threading.Event) -> Iterator[str]:
        """The lines of a streamed response (a followed pod log) until it ends or `stop`."""
        try:
            response = self._http.request(
                "GET",
                self.server + path,
                headers=self._headers(),
                preload_content=False,
                timeout=urllib3.Timeout(connect=self.timeout_s, read=None),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise KubernetesError(
                f"the Kubernetes API at {self.server} did not answer: {exc}"
            ) from None
        try:
            if response.status >= 400:
                raise KubernetesError(f"GET {path}: {response.status}", response.status)
            pending = b""
            for chunk in response.stream(8192, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    yield raw.decode(errors="replace")
                if stop.is_set():
                    return
            if pending:
                yield pending.decode(errors="replace")
        except urllib3.exceptions.HTTPError as exc:
            raise KubernetesError(f"the log stream ended: {exc}") from None
        finally:
            response.release_conn()


def train_job_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{TRAINER_API}/namespaces/{quote(namespace)}/trainjobs"
    return f"{base}/{quote(name)}" if name else base


def config_map_path(namespace: str, name: str = "") -> str:
    base = f"/api/v1/namespaces/{quote(namespace)}/configmaps"
    return f"{base}/{quote(name)}" if name else base


# --- the worker -------------------------------------------------------------------------------


class KubernetesWorker(WorkerProcess):
    """A job's worker as a TrainJob, behind the WorkerProcess interface the job runner
    supervises: start() creates the ConfigMap and the TrainJob (or adopts the TrainJob an
    earlier service created for the same job), wait() mirrors its conditions into log events,
    follows rank 0's log for progress events and returns 0 when it completes, 1 when it fails;
    terminate() deletes it, unless the service is only stopping (`detach_on_stop()` true): the
    TrainJob then keeps running and the next service adopts it."""

    def __init__(
        self,
        config: WorkerConfig,
        where: JobPlacement,
        settings: KubernetesSettings,
        api: KubernetesApi,
        on_event: Callable[[dict[str, Any]], None],
        on_log: Callable[[str], None],
        detach_on_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.where = where
        self.settings = settings
        self.api = api
        self.name = resource_name(config.job)
        self.train_job = render_train_job(config, where, settings)
        self.config_map = render_config_map(config, self.name, where.namespace)
        super().__init__(
            cmd=self.train_job["spec"]["trainer"]["command"],
            work_dir=Path("."),
            env={},
            event_types=EVENT_TYPES,
            on_event=on_event,
            on_log=on_log,
        )
        self.detach_on_stop = detach_on_stop
        self.state: TrainJobState | None = None
        # _stop: cancelled or detached, stop at once; _done: the TrainJob ended, read the rest of
        # rank 0's log (its last events: the output model) and stop.
        self._stop = threading.Event()
        self._done = threading.Event()
        self._terminated = False
        self._logs: threading.Thread | None = None
        self._last_log_time = ""

    @property
    def pid(self) -> int:
        # No local process: the job record keeps 0, so a restarted service stops nothing here.
        return 0

    def _event_log(self, level: str, message: str) -> None:
        self.on_event({"type": "log", "level": level, "message": message})

    def start(self) -> None:
        if self.config.distribution.nodes > 1 and not self.settings.work_volume_claim:
            raise KubernetesError(
                "a job on more than one node needs a shared volume: set "
                "TUNEFORGE_K8S_WORK_VOLUME_CLAIM to a ReadWriteMany PersistentVolumeClaim"
            )
        if not self.where.image:
            raise KubernetesError(
                "the kubernetes launcher needs the worker image: set TUNEFORGE_K8S_IMAGE"
            )
        ns = self.where.namespace
        self.started_at = time.time()
        try:
            self.api.create(config_map_path(ns), self.config_map)
        except KubernetesError as exc:
            if exc.status != 409:
                raise
            # Left by an earlier start of the same job: same content, or replaced.
            self.api.request(
                "PUT", config_map_path(ns, self.config_map["metadata"]["name"]), self.config_map
            )
        try:
            created = self.api.create(train_job_path(ns), self.train_job)
            self._event_log(
                "info",
                f"created TrainJob {ns}/{self.name} ({self.config.distribution.nodes} node(s) x "
                f"{self.config.distribution.processes_per_node} process(es), runtime "
                f"{self.where.runtime})",
            )
        except KubernetesError as exc:
            if exc.status != 409:
                with contextlib.suppress(KubernetesError):
                    self.api.delete(config_map_path(ns, self.config_map["metadata"]["name"]))
                raise
            created = self.api.get(train_job_path(ns, self.name))
            owner = (created.get("metadata") or {}).get("annotations", {}).get("tuneforge.ai/job")
            if owner != self.config.job:
                raise KubernetesError(
                    f"TrainJob {ns}/{self.name} exists and belongs to {owner!r}", 409
                ) from None
            self._event_log("info", f"following TrainJob {ns}/{self.name} again")
        uid = (created.get("metadata") or {}).get("uid")
        if uid:
            # The ConfigMap goes when its TrainJob goes (garbage collection).
            with contextlib.suppress(KubernetesError):
                self.api.patch(
                    config_map_path(ns, self.config_map["metadata"]["name"]),
                    {
                        "metadata": {
                            "ownerReferences": [
                                {
                                    "apiVersion": TRAINER_API,
                                    "kind": "TrainJob",
                                    "name": self.name,
                                    "uid": uid,
                                }
                            ]
                        }
                    },
                )
        log.info("trainjob_started", job=self.config.job, trainjob=f"{ns}/{self.name}")

    def wait(self) -> int:
        ns = self.where.namespace
        failures = 0
        while True:
            if self._stop.is_set():
                return self._end(TERMINATED)
            try:
                current = self.api.get(train_job_path(ns, self.name))
                failures = 0
            except KubernetesError as exc:
                if exc.status == 404:
                    self._note(TrainJobState(FAILED, "NotFound", "the TrainJob was deleted"))
                    return self._end(1)
                failures += 1
                if failures in (1, 10) or failures % 60 == 0:
                    self._event_log("warning", f"cannot read the TrainJob: {exc}")
                self._stop.wait(self.settings.poll_interval_s)
                continue
            state = trainjob_state(current)
            self._note(state)
            if state.state == RUNNING:
                self._follow_logs()
            if state.state == SUCCEEDED:
                return self._end(0)
            if state.state == FAILED:
                return self._end(1)
            self._stop.wait(self.settings.poll_interval_s)

    def _note(self, state: TrainJobState) -> None:
        """A changed state becomes an event (and, when it ends the job, a tail line)."""
        if state == self.state:
            return
        self.state = state
        message = f"TrainJob {self.where.namespace}/{self.name} {state.describe()}"
        level = "error" if state.state == FAILED else "info"
        if state.state == FAILED:
            self.tail.append(message)
        self._event_log(level, message)
        log.info(
            "trainjob_state",
            job=self.config.job,
            state=state.state,
            reason=state.reason,
            message=state.message,
        )

    def _end(self, code: int) -> int:
        if code == TERMINATED:
            if self._logs is not None:
                self._logs.join(timeout=2)
            return code
        # A job can end between two polls without ever being seen running: its log still
        # holds the events (the output model) that decide how the job ends.
        self._follow_logs()
        self._done.set()
        if self._logs is not None:
            self._logs.join(timeout=60)
        return code

    def terminate(self, grace_s: float = 5.0) -> None:
        self._stop.set()
        if self._terminated:
            return
        self._terminated = True
        if self.detach_on_stop():
            log.info("trainjob_detached", job=self.config.job, trainjob=self.name)
            return
        ns = self.where.namespace
        try:
            self.api.delete(train_job_path(ns, self.name))
            self.api.delete(config_map_path(ns, self.config_map["metadata"]["name"]))
        except KubernetesError as exc:
            log.warning("trainjob_delete_failed", job=self.config.job, error=str(exc))

    # --- rank 0's log -----------------------------------------------------------------------

    def _follow_logs(self) -> None:
        if self._logs is None:
            self._logs = threading.Thread(
                target=self._read_logs, daemon=True, name=f"trainjob-log-{self.name}"
            )
            self._logs.start()

    def rank0_pod_selector(self) -> str:
        """The pod that runs rank 0: the first pod of the first `node` Job (torch runtimes) or
        the launcher (MPI runtimes)."""
        replicated = "launcher" if self.where.mpi else "node"
        return ",".join(
            [
                f"jobset.sigs.k8s.io/jobset-name={self.name}",
                f"jobset.sigs.k8s.io/replicatedjob-name={replicated}",
                "jobset.sigs.k8s.io/job-index=0",
                "batch.kubernetes.io/job-completion-index=0",
            ]
        )

    def _rank0_pod(self) -> str:
        ns = self.where.namespace
        query = urlencode({"labelSelector": self.rank0_pod_selector()})
        pods = self.api.get(f"/api/v1/namespaces/{quote(ns)}/pods?{query}").get("items") or []
        started = [
            p
            for p in pods
            if (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")
        ]
        if not started:
            return ""
        # A restarted pod replaces the old one: the newest.
        newest = max(started, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp", ""))
        return str(newest["metadata"]["name"])

    def _read_logs(self) -> None:
        """Follows rank 0's log (again after a disconnect or a pod restart, from the last
        timestamp seen) until the job ends."""
        ns = self.where.namespace
        while True:
            # Read before checking: a stream opened after the job ended holds all of the rest.
            ended = self._done.is_set()
            try:
                pod = self._rank0_pod()
                if pod:
                    params = {
                        "container": TRAINER_CONTAINER,
                        "follow": "true",
                        "timestamps": "true",
                    }
                    if self._last_log_time:
                        params["sinceTime"] = self._last_log_time
                    path = (
                        f"/api/v1/namespaces/{quote(ns)}/pods/{quote(pod)}/log?{urlencode(params)}"
                    )
                    for line in self.api.stream_lines(path, self._stop):
                        self._log_line(line)
            except KubernetesError as exc:
                log.info("trainjob_log_unavailable", job=self.config.job, error=str(exc))
            except Exception:
                log.exception("trainjob_log_failed", job=self.config.job)
            if ended or self._stop.is_set():
                return
            # Disconnected, or no pod yet: again shortly (at once when the job ends).
            self._done.wait(min(self.settings.poll_interval_s, 5.0))

    def _log_line(self, line: str) -> None:
        stamp, _, text = line.partition(" ")
        if self._last_log_time and _sortable(stamp) <= _sortable(self._last_log_time):
            return  # already seen (sinceTime is inclusive)
        self._last_log_time = stamp
        self._line(text)

    def _line(self, line: str) -> None:
        event = parse_event(line, self.event_types)
        if event is not None:
            self.on_event(event)
        elif line.strip():
            self.tail.append(line)
            self.on_log(line)


def _sortable(stamp: str) -> str:
    """An RFC 3339 timestamp of the kubelet (RFC3339Nano drops trailing zeros) that compares
    as text in time order: the fraction padded to nine digits."""
    head, dot, rest = stamp.rstrip("Z").partition(".")
    return f"{head}.{rest.ljust(9, '0') if dot else '0' * 9}Z"
