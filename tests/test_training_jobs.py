"""Fine-tuning jobs end to end through the services, with real workers (torchrun + DeepSpeed)
on tiny models: the loss falls, the adapter loads with plain peft, cancel, crash, restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from conftest import scratch_bucket

from services.common.artifact_store import ArtifactStore
from services.common.settings import StoreSettings
from services.common.worker_process import JOB_ENV
from tuneforge import Client
from tuneforge.testing import local_services
from tuneforge.training.v1 import model_service_pb2 as models_pb
from tuneforge.training.v1 import training_service_pb2 as pb

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Item {i}: say the word number {i % 4}."},
            {"role": "assistant", "content": ["apple", "river", "stone", "cloud"][i % 4]},
        ]
    }
    for i in range(48)
]
FAST = {
    "max_seq_len": 64,
    "batch_size": 4,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1e-2,
    "precision": "fp32",
}


def upload_rows(client: Client, tmp_path: Path, dataset_id: str = "words") -> None:
    path = tmp_path / f"{dataset_id}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    client.datasets.upload(path, dataset_id=dataset_id, model="tiny", validation_split=0.1, seed=1)


@pytest.fixture
def bucket(store_settings: StoreSettings) -> Iterator[StoreSettings]:
    with scratch_bucket(store_settings, "t") as settings:
        yield settings


@pytest.fixture
def client(bucket: StoreSettings, tmp_path: Path) -> Iterator[Client]:
    with local_services(bucket, tmp_path / "home", services=["datasets", "training"]) as c:
        c.models.import_model("tiny", preset="tiny-llama")
        upload_rows(c, tmp_path)
        yield c


def losses(client: Client, job: str) -> list[tuple[int, float]]:
    return [(e.metrics.step, e.metrics.loss) for e in client.jobs.events(job, "type=metrics")]


def download(store: ArtifactStore, prefix: str, files, dest: Path) -> Path:  # type: ignore[no-untyped-def]
    for f in files:
        store.get_file(prefix + f.path, dest / f.path, expected_sha256=f.sha256)
    return dest


def test_lora_job_succeeds_and_its_adapter_loads_with_plain_peft(
    client: Client, bucket: StoreSettings, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    seen: list[str] = []
    handle = client.jobs.create(
        "tiny",
        "words",
        job_id="lora1",
        suffix="words",
        hyperparameters={
            **FAST,
            "max_steps": 60,
            "eval_interval_steps": 20,
            "checkpoint_interval_steps": 30,
        },
    )
    job = handle.wait(on_event=lambda e: seen.append(e.WhichOneof("payload")), timeout_s=600)
    assert job.state == pb.TrainingJob.SUCCEEDED, job.error.message
    assert {"state_change", "metrics", "eval", "checkpoint"} <= set(seen)
    curve = losses(client, "lora1")
    assert [s for s, _ in curve] == list(range(1, 61))
    first, last = sum(v for _, v in curve[:3]) / 3, sum(v for _, v in curve[-3:]) / 3
    # LoRA on a random 2-layer model learns slowly (a plain PEFT loop plateaus the same way).
    assert last < 0.92 * first, curve
    assert job.latest_eval.token_accuracy > 0
    assert [c.step for c in client.jobs.checkpoints("lora1")] == [30, 60]

    model = client.models.get(job.output_model)
    assert model.kind == models_pb.Model.ADAPTER
    assert model.base_model == "projects/default/models/tiny"
    assert model.method == "lora" and model.lineage.training_job == job.name
    assert model.lineage.training_dataset == "projects/default/datasets/words"
    store = ArtifactStore(bucket)
    base_dir = download(
        store, "models/default/tiny/", client.models.get("tiny").artifact.files, tmp_path / "base"
    )
    adapter_dir = download(
        store,
        f"models/default/{job.output_model.rsplit('/', 1)[-1]}/",
        model.artifact.files,
        tmp_path / "adapter",
    )
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in adapter_dir.iterdir()
    }
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    ids = torch.tensor([[1, 5, 9, 12, 40, 41]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, adapter_dir)(ids).logits
    assert not torch.allclose(before, tuned)


def test_zero3_with_two_processes_produces_an_adapter(client: Client) -> None:
    handle = client.jobs.create(
        "tiny",
        "words",
        processes_per_node=2,
        zero_stage=3,
        hyperparameters={**FAST, "max_steps": 6, "checkpoint_interval_steps": 3},
    )
    job = handle.wait(timeout_s=600)
    assert job.state == pb.TrainingJob.SUCCEEDED, job.error.message
    assert client.models.get(job.output_model).kind == models_pb.Model.ADAPTER
    assert len(losses(client, job.name)) == 6


def test_cancel_stops_the_worker_within_seconds(client: Client) -> None:
    handle = client.jobs.create(
        "tiny", "words", hyperparameters={**FAST, "max_steps": 5000, "checkpoint_interval_steps": 5}
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not client.jobs.checkpoints(handle.name):
        time.sleep(0.5)
    assert client.jobs.checkpoints(handle.name), "no checkpoint was written"
    started = time.monotonic()
    handle.cancel()
    job = handle.wait(timeout_s=60)
    assert job.state == pb.TrainingJob.CANCELLED
    assert time.monotonic() - started < 15
    assert client.jobs.checkpoints(handle.name)  # kept


def test_a_worker_crash_fails_the_job_with_its_last_log_lines(
    client: Client, bucket: StoreSettings
) -> None:
    store = ArtifactStore(bucket)
    handle = client.jobs.create("tiny", "words", hyperparameters={**FAST, "max_steps": 4})
    # Damage the base model behind the catalog's back: the worker refuses the bytes.
    store.put_bytes("models/default/tiny/model.safetensors", b"not a safetensors file")
    job = handle.wait(timeout_s=300)
    assert job.state == pb.TrainingJob.FAILED
    assert "exited with code" in job.error.message
    assert "model.safetensors" in job.error.message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_training(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.training.main"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _freeze_job_processes(job: str) -> list[psutil.Process]:
    """SIGSTOP every process that runs for `job` (the training service restarted later stops
    them for good)."""
    frozen = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(JOB_ENV) == job:
                proc.suspend()
                frozen.append(proc)
        except psutil.Error:
            continue
    return frozen


def test_service_killed_mid_job_resumes_from_its_checkpoint(
    bucket: StoreSettings, tmp_path: Path
) -> None:
    with local_services(bucket, tmp_path / "ds-home", services=["datasets"]) as ds:
        port = _free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")},
            "TUNEFORGE_HOME": str(tmp_path / "training-home"),
            "TUNEFORGE_TRAINING_PORT": str(port),
            "TUNEFORGE_DATASETS_TARGET": ds.targets["datasets"],
            "TUNEFORGE_S3_ENDPOINT": bucket.endpoint,
            "TUNEFORGE_S3_ACCESS_KEY": bucket.access_key,
            "TUNEFORGE_S3_SECRET_KEY": bucket.secret_key.get_secret_value(),
            "TUNEFORGE_S3_BUCKET": bucket.bucket,
        }
        service = _start_training(env)
        client = Client(targets={**ds.targets, "training": f"127.0.0.1:{port}"})
        try:
            deadline = time.monotonic() + 60
            while client.health(1)["training"] != "SERVING":
                assert time.monotonic() < deadline and service.poll() is None
                time.sleep(0.2)
            client.models.import_model("tiny", preset="tiny-llama")
            upload_rows(client, tmp_path)
            handle = client.jobs.create(
                "tiny",
                "words",
                job_id="survivor",
                hyperparameters={**FAST, "max_steps": 40, "checkpoint_interval_steps": 4},
            )
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not client.jobs.checkpoints("survivor"):
                time.sleep(0.1)
            # Freeze the worker group first: on a slow machine it could otherwise finish all its
            # steps before the service dies, and there would be nothing left to resume.
            frozen = _freeze_job_processes(handle.name)
            assert frozen, "the worker group is gone before the service was killed"
            assert client.jobs.get("survivor").state == "RUNNING"
            checkpoint = client.jobs.checkpoints("survivor")[0].step
            service.send_signal(signal.SIGKILL)
            service.wait(timeout=10)

            service = _start_training(env)
            deadline = time.monotonic() + 60
            while client.health(1)["training"] != "SERVING":
                assert time.monotonic() < deadline and service.poll() is None
                time.sleep(0.2)
            job = handle.wait(timeout_s=600)
            assert job.state == pb.TrainingJob.SUCCEEDED, job.error.message
            assert job.resume_count == 1
            steps = [s for s, _ in losses(client, "survivor")]
            # After the restart, training went on from a checkpoint (the latest one the worker
            # had written before the old group was stopped), not from step 1: the curve either
            # repeats the steps after that checkpoint or skips the ones nobody recorded.
            assert steps[0] == 1 and steps.count(1) == 1 and steps[-1] == 40, steps
            breaks = [i for i in range(1, len(steps)) if steps[i] != steps[i - 1] + 1]
            assert len(breaks) <= 1, steps
            if breaks:
                resumed_from = steps[breaks[0]] - 1
                assert resumed_from >= checkpoint and resumed_from % 4 == 0, steps
                assert steps[breaks[0] :] == list(range(resumed_from + 1, 41)), steps
            logs = [e.log.message for e in client.jobs.events("survivor", "type=log")]
            assert any("resumed from step" in m for m in logs), logs[-20:]
            reasons = [
                e.state_change.reason for e in client.jobs.events("survivor", "type=state_change")
            ]
            assert any("restarted" in r for r in reasons)
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=60)
            client.close()
