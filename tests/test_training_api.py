"""The training jobs API without running workers (the queue is held with max_concurrent_jobs=0):
validation, auto hyperparameters, idempotency, queue order, cancel and delete."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import scratch_bucket

from services.common.settings import StoreSettings
from tuneforge import Client, TuneforgeError
from tuneforge.testing import local_services
from tuneforge.training.v1 import training_service_pb2 as pb


@pytest.fixture
def client(store_settings: StoreSettings, tmp_path: Path) -> Iterator[Client]:
    with (
        scratch_bucket(store_settings, "j") as settings,
        local_services(
            settings, tmp_path / "home", services=["datasets", "training"], max_concurrent_jobs=0
        ) as c,
    ):
        c.models.import_model("tiny", preset="tiny-llama")
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"Add {i} and {i}"},
                    {"role": "assistant", "content": str(2 * i)},
                ]
            }
            for i in range(60)
        ]
        path = tmp_path / "train.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        c.datasets.upload(path, dataset_id="sums", model="tiny", validation_split=0.1)
        yield c


def _error(fn, *args, **kwargs) -> TuneforgeError:  # type: ignore[no-untyped-def]
    with pytest.raises(TuneforgeError) as info:
        fn(*args, **kwargs)
    return info.value


def test_auto_hyperparameters_are_resolved_and_shown(client: Client) -> None:
    job = client.jobs.create("tiny", "sums", job_id="auto").job
    assert job.state == pb.TrainingJob.PENDING
    assert job.name == "projects/default/trainingJobs/auto"
    hp = job.resolved_hyperparameters
    assert hp.learning_rate == pytest.approx(2e-4)
    assert hp.epochs >= 1 and hp.batch_size >= 1 and hp.gradient_accumulation_steps >= 1
    assert hp.max_seq_len >= 16 and hp.packing
    assert list(job.resolved_lora.target_modules) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert job.resolved_lora.rank == 16
    # What the user did not set stays unset in the request's own fields.
    assert not job.hyperparameters.HasField("learning_rate")

    full = client.jobs.create(
        "tiny", "sums", method="full", hyperparameters={"epochs": 1, "learning_rate": 1e-5}
    ).job
    assert full.resolved_hyperparameters.learning_rate == pytest.approx(1e-5)
    assert full.resolved_hyperparameters.epochs == 1
    assert not full.HasField("resolved_lora")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hyperparameters": {"learning_rate": 5.0}}, "training_job.hyperparameters.learning_rate"),
        ({"hyperparameters": {"max_seq_len": 8}}, "training_job.hyperparameters.max_seq_len"),
        (
            {"hyperparameters": {"lr_scheduler": "zigzag"}},
            "training_job.hyperparameters.lr_scheduler",
        ),
        ({"zero_stage": 7}, "training_job.distribution.zero_stage"),
        (
            {"offload_parameters": True, "zero_stage": 2},
            "training_job.distribution.offload_parameters",
        ),
        ({"lora": {"target_modules": ["qkv_proj"]}}, "training_job.lora.target_modules"),
        ({"lora": {"dropout": 1.5}}, "training_job.lora.dropout"),
    ],
)
def test_invalid_hyperparameters_name_the_field(client: Client, kwargs, field) -> None:  # type: ignore[no-untyped-def]
    err = _error(client.jobs.create, "tiny", "sums", **kwargs)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "INVALID_CONFIGURATION"
    assert err.metadata["field"] == field
    assert list(client.jobs.list()) == []


def test_missing_or_unready_inputs(client: Client, tmp_path: Path) -> None:
    err = _error(client.jobs.create, "tiny", "nope")
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.metadata["resource"] == "projects/default/datasets/nope"
    err = _error(client.jobs.create, "nope", "sums")
    assert err.code == grpc.StatusCode.NOT_FOUND
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{broken\n")
    with pytest.raises(TuneforgeError):
        client.datasets.upload(bad, dataset_id="broken", format="chat")
    err = _error(client.jobs.create, "tiny", "broken")
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "DATASET_NOT_READY"
    assert err.metadata["state"] == "FAILED"
    assert err.metadata["field"] == "training_job.training_dataset"


def test_request_id_makes_create_idempotent(client: Client) -> None:
    first = client.jobs.create("tiny", "sums", request_id="same").name
    assert client.jobs.create("tiny", "sums", request_id="same").name == first
    assert len(list(client.jobs.list())) == 1


def test_cancel_and_delete(client: Client) -> None:
    low = client.jobs.create("tiny", "sums", job_id="low", priority=0)
    high = client.jobs.create("tiny", "sums", job_id="high", priority=5)
    assert [j.name.rsplit("/", 1)[-1] for j in client.jobs.list(filter="state=PENDING")] == [
        "high",
        "low",
    ]
    err = _error(client.jobs.delete, "low")
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "JOB_STATE_CONFLICT"
    assert low.cancel().state == pb.TrainingJob.CANCELLED
    err = _error(client.jobs.cancel, "low")
    assert err.reason == "JOB_STATE_CONFLICT"
    states = [e.state_change.state for e in client.jobs.events("low", filter="type=state_change")]
    assert states == [pb.TrainingJob.PENDING, pb.TrainingJob.CANCELLED]
    events = list(low.events())  # ends, since the job ended
    assert events[-1].state_change.state == pb.TrainingJob.CANCELLED
    client.jobs.delete("low")
    assert [j.name for j in client.jobs.list()] == [high.name]


def test_a_streaming_call_maps_errors_too(client: Client) -> None:
    err = _error(lambda: list(client.jobs.watch("missing")))
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.reason == "RESOURCE_NOT_FOUND"
    assert err.metadata["resource"] == "projects/default/trainingJobs/missing"


def test_a_multi_node_job_asks_for_the_kubernetes_launcher(client: Client) -> None:
    with pytest.raises(TuneforgeError) as refused:
        client.jobs.create("tiny", "sums", nodes=2)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field.startswith("training_job.distribution")

    job = client.jobs.create(
        "tiny",
        "sums",
        nodes=2,
        processes_per_node=4,
        zero_stage=3,
        launcher="kubernetes",
        kubernetes={"gpus_per_node": 4, "runtime": "torch-distributed"},
    ).job
    assert job.distribution.nodes == 2 and job.distribution.launcher == pb.KUBERNETES
    assert job.distribution.kubernetes.gpus_per_node == 4
    assert job.distribution.kubernetes.runtime == "torch-distributed"
