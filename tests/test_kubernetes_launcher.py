"""The kubernetes launcher: the TrainJob and ConfigMap it renders for a multi-node ZeRO-3 job, and
how a training job follows a TrainJob through the Kubernetes API (a fake API server on a free
port: no cluster here)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from services.common.artifact_store import ArtifactStore
from services.common.database import Database
from services.common.job_records import FAILED, PENDING, SUCCEEDED, Job
from services.common.settings import StoreSettings
from services.common.worker_process import format_event
from services.training import hyperparameters as hp
from services.training.job_records import training_job_records
from services.training.jobs import DatasetInfo, TrainingJobs
from services.training.kubernetes_launcher import (
    JOB_JSON,
    KubernetesApi,
    KubernetesSettings,
    TrainJobState,
    job_launcher,
    placement,
    render_config_map,
    render_train_job,
    resource_name,
    trainjob_state,
)
from services.training.worker_config import (
    Distribution,
    OutputSpec,
    ResolvedHyperparameters,
    WorkerConfig,
)

BASE = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "base"
JOB = "projects/default/trainingJobs/ft-multinode"
K8S_VERSIONS = ("1.29", "1.37")


def worker_config(nodes: int = 2, procs: int = 4, zero: int = 3) -> WorkerConfig:
    return WorkerConfig(
        job=JOB,
        base_model="projects/default/models/llama",
        train_files=["datasets/content/abc/train.jsonl"],
        method="full",
        hyperparameters=ResolvedHyperparameters(
            epochs=1,
            learning_rate=1e-5,
            batch_size=2,
            gradient_accumulation_steps=4,
            max_seq_len=512,
            warmup_ratio=0.0,
            weight_decay=0.0,
            lr_scheduler="linear",
            packing=True,
            eval_interval_steps=0,
            checkpoint_interval_steps=0,
            precision="bf16",
            max_grad_norm=1.0,
        ),
        distribution=Distribution(processes_per_node=procs, nodes=nodes, zero_stage=zero),
        output=OutputSpec(model="projects/default/models/llama-ft-multinode"),
        checkpoint_prefix="checkpoints/default/ft-multinode/",
    )


SPEC = {
    "distribution": {
        "nodes": 2,
        "processes_per_node": 4,
        "zero_stage": 3,
        "launcher": "KUBERNETES",
        "kubernetes": {"namespace": "ml", "runtime": "torch-distributed", "gpus_per_node": 4},
    }
}


def k8s_settings(**overrides: Any) -> KubernetesSettings:
    values: dict[str, Any] = {
        "image": "registry.example.com/tuneforge:0.1.0-cuda",
        "work_volume_claim": "training-work",
        "namespace": "tuneforge",
        "poll_interval_s": 0.05,
        **overrides,
    }
    return KubernetesSettings(**values)


def _base_docs(file: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((BASE / file).read_text()) if d]


# --- rendering --------------------------------------------------------------------------------


def test_rendered_trainjob_carries_nodes_gpus_and_zero3() -> None:
    config = worker_config()
    settings = k8s_settings()
    where = placement(SPEC, settings)
    tj = render_train_job(config, where, settings)
    name = resource_name(JOB)

    assert tj["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and tj["kind"] == "TrainJob"
    assert tj["metadata"] == {
        "name": name,
        "namespace": "ml",  # the job's own namespace wins over the setting
        "labels": {
            "app.kubernetes.io/part-of": "tuneforge",
            "app.kubernetes.io/component": "training-worker",
            "tuneforge.ai/project": "default",
            "tuneforge.ai/training-job": "ft-multinode",
        },
        "annotations": {"tuneforge.ai/job": JOB},
    }
    spec = tj["spec"]
    assert spec["runtimeRef"] == {
        "name": "torch-distributed",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 2
    assert trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": "4"}}
    assert trainer["image"] == "registry.example.com/tuneforge:0.1.0-cuda"
    # torchrun takes nodes, ranks and the master from the runtime's PET_* variables.
    script = trainer["command"][-1]
    assert trainer["command"][:2] == ["/bin/sh", "-c"]
    assert (
        "python -m torch.distributed.run -m services.training.worker /etc/tuneforge/job.json"
        in (script)
    )
    assert "--nnodes" not in script

    # The job.json the pods mount is the job's config, ZeRO-3 on 2 x 4 ranks.
    cm = render_config_map(config, name, "ml")
    assert cm["metadata"]["name"] == f"{name}-job"
    carried = WorkerConfig.model_validate_json(cm["data"]["job.json"])
    assert carried == config
    assert carried.distribution.zero_stage == 3
    assert carried.distribution.nodes == 2 and carried.distribution.processes_per_node == 4

    override = spec["podTemplateOverrides"][0]
    assert override["targetJobs"] == [{"name": "node"}]
    volumes = {v["name"]: v for v in override["spec"]["volumes"]}
    assert volumes["job-config"] == {"name": "job-config", "configMap": {"name": f"{name}-job"}}
    assert volumes["work"]["persistentVolumeClaim"] == {"claimName": "training-work"}
    mounts = {m["mountPath"]: m for m in override["spec"]["containers"][0]["volumeMounts"]}
    assert JOB_JSON.rsplit("/", 1)[0] in mounts
    assert mounts["/var/lib/tuneforge-work"]["subPath"] == "jobs/default/ft-multinode"


def test_env_comes_from_the_deployments_secret_and_config_map() -> None:
    config = worker_config()
    settings = k8s_settings()
    tj = render_train_job(config, placement(SPEC, settings), settings)
    env = {e["name"]: e for e in tj["spec"]["trainer"]["env"]}
    secrets = {d["metadata"]["name"]: d for d in _base_docs("secrets.yaml")}
    config_maps = {d["metadata"]["name"]: d for d in _base_docs("config.yaml")}
    for key in ("TUNEFORGE_S3_ACCESS_KEY", "TUNEFORGE_S3_SECRET_KEY"):
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert key in secrets[ref["name"]]["stringData"]
    for key in ("TUNEFORGE_S3_ENDPOINT", "TUNEFORGE_S3_BUCKET"):
        ref = env[key]["valueFrom"]["configMapKeyRef"]
        assert key in config_maps[ref["name"]]["data"]
    # Keys the base ConfigMap lacks are optional, so the pods still start.
    for name, var in env.items():
        ref = var.get("valueFrom", {}).get("configMapKeyRef")
        if ref and name not in config_maps[ref["name"]]["data"]:
            assert ref.get("optional") is True, name
    assert env["TUNEFORGE_JOB"]["value"] == JOB
    # No credential is ever written into the manifests themselves.
    rendered = json.dumps([tj, render_config_map(config, resource_name(JOB), "ml")])
    assert "change-me" not in rendered


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    config = worker_config()
    settings = k8s_settings(cpu_per_node="16", memory_per_node="128Gi")
    tj = render_train_job(config, placement(SPEC, settings), settings)
    cm = render_config_map(config, resource_name(JOB), "ml")
    # The core types inside the TrainJob (env, resources, volumes, mounts), as the Pod the
    # runtime's `node` container becomes.
    override = tj["spec"]["podTemplateOverrides"][0]["spec"]
    trainer = tj["spec"]["trainer"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": tj["metadata"]["name"] + "-node-0-0"},
        "spec": {
            "containers": [
                {
                    "name": "node",
                    "image": trainer["image"],
                    "command": trainer["command"],
                    "env": trainer["env"],
                    "resources": trainer["resourcesPerNode"],
                    "volumeMounts": override["containers"][0]["volumeMounts"],
                }
            ],
            "volumes": override["volumes"],
        },
    }
    for version in K8S_VERSIONS:
        for obj in (cm, pod):
            kubernetes_validate.validate(obj, version, strict=True)


# The TrainJob CRD (trainer.kubeflow.org/v1alpha1, Trainer v2.0/v2.1) is not in
# kubernetes-validate: the fields it accepts, level by level.
TRAINJOB_FIELDS = {
    "": {"apiVersion", "kind", "metadata", "spec"},
    "spec": {
        "runtimeRef",
        "initializer",
        "trainer",
        "labels",
        "annotations",
        "podTemplateOverrides",
        "suspend",
        "managedBy",
    },
    "spec.runtimeRef": {"name", "apiGroup", "kind"},
    "spec.trainer": {
        "image",
        "command",
        "args",
        "env",
        "numNodes",
        "resourcesPerNode",
        "numProcPerNode",
    },
    "override": {"targetJobs", "metadata", "spec"},
    "override.spec": {
        "serviceAccountName",
        "nodeSelector",
        "affinity",
        "tolerations",
        "volumes",
        "initContainers",
        "containers",
        "schedulingGates",
        "imagePullSecrets",
    },
    "override.spec.containers": {"name", "env", "volumeMounts"},
}


@pytest.mark.parametrize("runtime", ["torch-distributed", "deepspeed-distributed"])
def test_trainjob_has_the_crd_structure(runtime: str) -> None:
    settings = k8s_settings(runtime=runtime)
    spec = {"distribution": {**SPEC["distribution"], "kubernetes": {}}}
    tj = render_train_job(worker_config(), placement(spec, settings), settings)
    assert set(tj) <= TRAINJOB_FIELDS[""]
    assert set(tj["spec"]) <= TRAINJOB_FIELDS["spec"]
    assert set(tj["spec"]["runtimeRef"]) <= TRAINJOB_FIELDS["spec.runtimeRef"]
    assert tj["spec"]["runtimeRef"]["kind"] in ("ClusterTrainingRuntime", "TrainingRuntime")
    trainer = tj["spec"]["trainer"]
    assert set(trainer) <= TRAINJOB_FIELDS["spec.trainer"]
    assert isinstance(trainer["numNodes"], int) and trainer["numNodes"] >= 1
    assert isinstance(trainer["numProcPerNode"], int)
    assert all(isinstance(part, str) for part in trainer["command"])
    assert len(trainer["env"]) <= 128 and len(trainer["command"]) <= 128
    for override in tj["spec"]["podTemplateOverrides"]:
        assert set(override) <= TRAINJOB_FIELDS["override"]
        assert override["targetJobs"] and all(set(t) == {"name"} for t in override["targetJobs"])
        assert set(override["spec"]) <= TRAINJOB_FIELDS["override.spec"]
        for container in override["spec"]["containers"]:
            assert set(container) <= TRAINJOB_FIELDS["override.spec.containers"]
    # The CRD's own rules on the name: an RFC 1035 label of at most 63 characters.
    name = tj["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    if runtime.startswith("deepspeed"):
        # MPI: mpirun on the launcher starts nodes x procs ranks, which read Open MPI's ids.
        script = trainer["command"][-1]
        assert "mpirun --hostfile /etc/mpi/hostfile -np 8 --npernode 4" in script
        assert "RANK=$OMPI_COMM_WORLD_RANK" in script
        assert {"name": "launcher"} in tj["spec"]["podTemplateOverrides"][0]["targetJobs"]


def test_names_are_unique_per_project_and_short() -> None:
    long_id = "a" * 63
    a = resource_name(f"projects/p1/trainingJobs/{long_id}")
    b = resource_name(f"projects/p2/trainingJobs/{long_id}")
    assert a != b and len(a) <= 40 and re.fullmatch(r"[a-z][-a-z0-9]*[a-z0-9]", a)


def test_launcher_choice_follows_the_job_then_the_setting() -> None:
    local, kube = KubernetesSettings(launcher="local"), KubernetesSettings(launcher="kubernetes")
    assert job_launcher({}, local) == "local"
    assert job_launcher({}, kube) == "kubernetes"
    assert job_launcher({"distribution": {"launcher": "KUBERNETES"}}, local) == "kubernetes"
    assert job_launcher({"distribution": {"launcher": "LOCAL"}}, kube) == "local"


def test_the_setting_switch_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFORGE_TRAINING_LAUNCHER", "kubernetes")
    monkeypatch.setenv("TUNEFORGE_K8S_RUNTIME", "deepspeed-distributed")
    monkeypatch.setenv("TUNEFORGE_K8S_GPUS_PER_NODE", "8")
    settings = KubernetesSettings()
    assert settings.launcher == "kubernetes"
    assert placement({}, settings).runtime == "deepspeed-distributed"
    assert placement({}, settings).gpus_per_node == 8


# --- status conditions ------------------------------------------------------------------------


def _tj(*conditions: tuple[str, str, str, str], jobs: list[dict[str, Any]] | None = None) -> Any:
    return {
        "status": {
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions
            ],
            "jobsStatus": jobs or [],
        }
    }


@pytest.mark.parametrize(
    ("train_job", "expected"),
    [
        ({}, TrainJobState("PENDING")),
        (
            _tj(("Created", "True", "JobsCreationSucceeded", "jobs created")),
            TrainJobState("PENDING", "JobsCreationSucceeded", "jobs created"),
        ),
        (
            _tj(("Created", "False", "JobsCreationFailed", "runtime not found")),
            TrainJobState("FAILED", "JobsCreationFailed", "runtime not found"),
        ),
        (
            _tj(
                ("Created", "True", "JobsCreationSucceeded", ""),
                jobs=[{"name": "node", "active": 2}],
            ),
            TrainJobState("RUNNING", "JobsActive", "its pods are running"),
        ),
        (_tj(("Running", "True", "Started", "")), TrainJobState("RUNNING", "Started")),
        (
            _tj(("Suspended", "True", "Suspended", "waiting in queue ml")),
            TrainJobState("PENDING", "Suspended", "waiting in queue ml"),
        ),
        (
            _tj(("Suspended", "False", "Resumed", ""), jobs=[{"name": "node", "ready": 2}]),
            TrainJobState("RUNNING", "JobsActive", "its pods are running"),
        ),
        (
            _tj(("Complete", "True", "JobsCompleted", "jobset completed")),
            TrainJobState("SUCCEEDED", "JobsCompleted", "jobset completed"),
        ),
        (
            _tj(
                ("Created", "True", "JobsCreationSucceeded", ""),
                ("Failed", "True", "FailedJobs", "jobset failed: node-1 OOMKilled"),
            ),
            TrainJobState("FAILED", "FailedJobs", "jobset failed: node-1 OOMKilled"),
        ),
        (_tj(("Failed", "False", "", ""), ("Complete", "False", "", "")), TrainJobState("PENDING")),
    ],
)
def test_conditions_map_to_our_states(train_job: Any, expected: TrainJobState) -> None:
    assert trainjob_state(train_job) == expected


# --- a training job on a fake Kubernetes API ---------------------------------------------------


class FakeKubernetes:
    """The Kubernetes API calls the launcher makes, against in-memory objects. `statuses` are
    what successive GETs of the TrainJob show ({"status": ...}; the last one repeats)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = [{}]
        self.log_lines: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> dict[str, Any]:
                size = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(size) or b"{}")

            def _send(self, code: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                url = urlparse(self.path)
                with fake.lock:
                    fake.requests.append((self.command, url.path))
                    fake.auth.add(self.headers.get("Authorization", ""))
                code, payload = fake.answer(self.command, url.path, parse_qs(url.query), self)
                if isinstance(payload, str):
                    data = payload.encode()
                    self.send_response(code)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    self._send(code, payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(
        self, method: str, path: str, query: dict[str, list[str]], handler: Any
    ) -> tuple[int, Any]:
        body = handler._body() if method in ("POST", "PUT", "PATCH", "DELETE") else {}
        if path.endswith("/log"):
            return 200, "".join(f"{line}\n" for line in self.log_lines)
        if path.endswith("/pods"):
            selector = query.get("labelSelector", [""])[0]
            assert "jobset.sigs.k8s.io/replicatedjob-name=node" in selector
            pod = {
                "metadata": {"name": "rank0", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "status": {"phase": "Running"},
            }
            return 200, {"items": [pod]}
        if method == "POST":
            key = f"{path}/{body['metadata']['name']}"
            if key in self.objects:
                return 409, {"kind": "Status", "message": "already exists", "code": 409}
            body["metadata"]["uid"] = f"uid-{len(self.objects)}"
            self.objects[key] = body
            return 201, body
        if path not in self.objects:
            return 404, {"kind": "Status", "message": "not found", "code": 404}
        if method == "DELETE":
            return 200, self.objects.pop(path)
        if method in ("PUT", "PATCH"):
            self.objects[path]["metadata"].update(body.get("metadata", {}))
            return 200, self.objects[path]
        obj = dict(self.objects[path])
        if "/trainjobs/" in path:
            with self.lock:
                status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            obj.update(status)
        return 200, obj

    def trainjob_keys(self) -> list[str]:
        return [k for k in self.objects if "/trainjobs/" in k]


@pytest.fixture
def fake_k8s() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


class NoDatasets:
    def get(self, name: str) -> DatasetInfo:
        raise AssertionError("not used: the job is planned already")


def _jobs(tmp_path: Path, fake: FakeKubernetes, **settings: Any) -> TrainingJobs:
    api = KubernetesApi(fake.url, token=lambda: "sa-token", timeout_s=5)
    return TrainingJobs(
        training_job_records(Database(f"sqlite:///{tmp_path / 'jobs.db'}")),
        # Not touched: the job is planned already and the worker runs on the cluster.
        cast(ArtifactStore, None),
        StoreSettings(),
        NoDatasets(),
        work_root=tmp_path / "jobs",
        cache_dir=tmp_path / "cache",
        hardware=hp.Hardware(cuda_devices=0, bf16=False),
        kubernetes=k8s_settings(**settings),
        kubernetes_api=api,
    )


def _queue(jobs: TrainingJobs) -> None:
    jobs.records.create(
        Job(
            name=JOB,
            project="default",
            job_id="ft-multinode",
            state=PENDING,
            spec=SPEC,
            request_id="r1",
            resolved=worker_config().model_dump(mode="json"),
        )
    )


def _wait_ended(jobs: TrainingJobs, timeout_s: float = 20) -> Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = jobs.get(JOB)
        if job.state in (SUCCEEDED, FAILED, "CANCELLED"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"the job is still {jobs.get(JOB).state}")


def _log_messages(jobs: TrainingJobs) -> list[str]:
    return [e.payload.get("message", "") for e in jobs.events(JOB, kind="log")]


def test_a_failed_trainjob_fails_the_job_with_its_message(
    tmp_path: Path, fake_k8s: FakeKubernetes
) -> None:
    running = _tj(
        ("Created", "True", "JobsCreationSucceeded", ""), jobs=[{"name": "node", "active": 2}]
    )
    fake_k8s.statuses = [
        _tj(("Created", "True", "JobsCreationSucceeded", "")),
        # Long enough for rank 0's log to be read more than once (reconnects).
        *[running] * 8,
        _tj(("Failed", "True", "FailedJobs", "jobset failed: node-1 exited with 137")),
    ]
    fake_k8s.log_lines = [
        "2026-01-01T00:00:01.000000000Z " + format_event("started", total_steps=10, world_size=8),
        "2026-01-01T00:00:02.000000000Z torch.OutOfMemoryError: CUDA out of memory",
    ]
    jobs = _jobs(tmp_path, fake_k8s)
    _queue(jobs)
    assert jobs.schedule() == [JOB]
    job = _wait_ended(jobs)

    assert job.state == FAILED
    assert job.error is not None and job.error["reason"] == "WORKER_FAILED"
    assert "jobset failed: node-1 exited with 137" in job.error["message"]
    logs = _log_messages(jobs)
    name = resource_name(JOB)
    assert any(f"created TrainJob ml/{name} (2 node(s) x 4 process(es)" in m for m in logs)
    assert any("waiting (JobsCreationSucceeded)" in m for m in logs)
    assert any(m.endswith("running (JobsActive: its pods are running)") for m in logs)
    assert any("failed (FailedJobs: jobset failed" in m for m in logs)
    # Rank 0's log is mirrored too: its events and its lines.
    # Read again after each disconnect, from the last timestamp on: no line twice.
    assert logs.count("training 10 steps on 8 process(es)") == 1
    assert logs.count("torch.OutOfMemoryError: CUDA out of memory") == 1
    assert sum(1 for _method, path in fake_k8s.requests if path.endswith("/log")) > 1
    # What was sent: the ConfigMap (owned by the TrainJob), then the TrainJob, as the pod's
    # service account.
    cm_path = f"/api/v1/namespaces/ml/configmaps/{name}-job"
    assert fake_k8s.objects[cm_path]["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    tj = fake_k8s.objects[f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs/{name}"]
    assert tj["spec"]["trainer"]["numNodes"] == 2
    assert fake_k8s.auth == {"Bearer sa-token"}
    assert job.worker_pid == 0


def test_a_complete_trainjob_succeeds_with_the_output_rank0_reported(
    tmp_path: Path, fake_k8s: FakeKubernetes
) -> None:
    model = "projects/default/models/llama-ft-multinode"
    fake_k8s.statuses = [
        _tj(("Suspended", "True", "Suspended", "waiting for quota")),
        # Ends between two polls without having been seen running: the log is read anyway.
        _tj(("Complete", "True", "JobsCompleted", "")),
    ]
    fake_k8s.log_lines = [
        "2026-01-01T00:00:01Z " + format_event("metrics", step=1, total_steps=2, loss=2.5),
        "2026-01-01T00:00:02Z "
        + format_event("output", model=model, manifest_sha256="x", parameter_count=1),
    ]
    jobs = _jobs(tmp_path, fake_k8s)
    _queue(jobs)
    jobs.schedule()
    job = _wait_ended(jobs)
    assert job.state == SUCCEEDED, job.error
    assert job.output_model == model
    assert job.latest_metrics["loss"] == 2.5
    assert any("waiting (Suspended: waiting for quota)" in m for m in _log_messages(jobs))


def test_cancel_deletes_the_trainjob_and_a_stopping_service_leaves_it(
    tmp_path: Path, fake_k8s: FakeKubernetes
) -> None:
    fake_k8s.statuses = [_tj(("Running", "True", "", ""))]
    jobs = _jobs(tmp_path, fake_k8s)
    _queue(jobs)
    jobs.schedule()
    assert fake_k8s.trainjob_keys()
    jobs.cancel(JOB)
    assert _wait_ended(jobs).state == "CANCELLED"
    assert fake_k8s.objects == {}

    # A service that stops leaves the TrainJob running; the next one follows it again.
    other = "projects/default/trainingJobs/ft-other"
    (tmp_path / "2").mkdir()
    jobs2 = _jobs(tmp_path / "2", fake_k8s)
    config = worker_config().model_copy(update={"job": other})
    jobs2.records.create(
        Job(
            name=other,
            project="default",
            job_id="ft-other",
            state=PENDING,
            spec=SPEC,
            request_id="r2",
            resolved=config.model_dump(mode="json"),
        )
    )
    jobs2.schedule()
    jobs2.shutdown(grace_s=1)
    assert jobs2.get(other).state == PENDING
    assert len(fake_k8s.trainjob_keys()) == 1
    jobs3 = _jobs(tmp_path / "2", fake_k8s)
    jobs3.schedule()
    assert any(
        "following TrainJob" in e.payload["message"] for e in jobs3.events(other, kind="log")
    )
    fake_k8s.statuses = [_tj(("Failed", "True", "DeadlineExceeded", "too slow"))]
    deadline = time.monotonic() + 20
    while jobs3.get(other).state != FAILED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "too slow" in (jobs3.get(other).error or {}).get("message", "")


def test_a_multinode_job_without_a_shared_volume_fails_at_once(
    tmp_path: Path, fake_k8s: FakeKubernetes
) -> None:
    jobs = _jobs(tmp_path, fake_k8s, work_volume_claim="")
    _queue(jobs)
    jobs.schedule()
    job = jobs.get(JOB)
    assert job.state == FAILED
    assert "TUNEFORGE_K8S_WORK_VOLUME_CLAIM" in (job.error or {}).get("message", "")
    assert fake_k8s.objects == {}
