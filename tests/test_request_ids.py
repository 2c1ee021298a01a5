"""Service-to-service calls: the training service's calls to the datasets service carry the
caller's request id (one request is followed through both services' logs), have a deadline,
and are retried while the datasets service is briefly unavailable."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from conftest import scratch_bucket

from services.common.errors import Unavailable
from services.common.request_context import current_request_id, outgoing_metadata
from services.common.settings import StoreSettings
from services.training.datasets_client import GrpcDatasetLookup
from tuneforge import Client
from tuneforge.datasets.v1 import dataset_service_pb2 as ds_pb
from tuneforge.testing import local_services
from tuneforge.training.v1 import training_service_pb2 as pb
from tuneforge.training.v1 import training_service_pb2_grpc as pb_grpc

GET_DATASET = "/tuneforge.datasets.v1.DatasetService/GetDataset"
CREATE_JOB = "/tuneforge.training.v1.TrainingService/CreateTrainingJob"


@pytest.fixture
def client(store_settings: StoreSettings, tmp_path: Path) -> Iterator[Client]:
    with (
        scratch_bucket(store_settings, "rid") as settings,
        local_services(
            settings, tmp_path / "home", services=["datasets", "training"], max_concurrent_jobs=0
        ) as c,
    ):
        c.models.import_model("tiny", preset="tiny-llama")
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"Say {i}"},
                    {"role": "assistant", "content": str(i)},
                ]
            }
            for i in range(20)
        ]
        path = tmp_path / "train.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        c.datasets.upload(path, dataset_id="numbers", model="tiny")
        yield c


def test_create_training_job_passes_its_request_id_to_the_datasets_service(
    client: Client,
) -> None:
    channel = grpc.insecure_channel(client.targets["training"])
    stub = pb_grpc.TrainingServiceStub(channel)
    request = pb.CreateTrainingJobRequest(
        parent="projects/default",
        training_job_id="traced",
        training_job=pb.TrainingJob(
            base_model="projects/default/models/tiny",
            training_dataset="projects/default/datasets/numbers",
        ),
    )
    # Every line the in-process services log, with the context bound to it (request_id).
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        job, call = stub.CreateTrainingJob.with_call(
            request, metadata=[("x-request-id", "abc")], timeout=60
        )
    channel.close()
    assert job.name == "projects/default/trainingJobs/traced"
    assert ("x-request-id", "abc") in call.initial_metadata()

    def calls(method: str) -> list[MutableMapping[str, Any]]:
        return [e for e in logs if e.get("event") == "rpc" and e.get("method") == method]

    # The training service's access log and the datasets service's, under the same id.
    assert [e["request_id"] for e in calls(CREATE_JOB)] == ["abc"]
    gets = calls(GET_DATASET)
    assert gets and {e["request_id"] for e in gets} == {"abc"}
    assert all(e["code"] == "OK" for e in gets)
    # Without an id the caller gets a fresh one, which the datasets service sees too.
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        client.jobs.create("tiny", "numbers", job_id="untraced")
    created = calls(CREATE_JOB)[0]["request_id"]
    assert len(created) == 32 and created != "abc"
    assert {e["request_id"] for e in calls(GET_DATASET)} == {created}


def test_outside_a_request_nothing_is_passed_on() -> None:
    assert current_request_id() == ""
    assert outgoing_metadata() == []
    with structlog.contextvars.bound_contextvars(request_id="r-1"):
        assert outgoing_metadata() == [("x-request-id", "r-1")]


# --- retries and deadlines -------------------------------------------------------------------


class FlakyDatasets:
    """A datasets service that answers UNAVAILABLE `failures` times (as one that is draining
    would), then the dataset; it records each attempt's request id."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[str] = []
        self.lock = threading.Lock()

    def GetDataset(self, request: Any, context: grpc.ServicerContext) -> ds_pb.Dataset:
        with self.lock:
            metadata = dict(context.invocation_metadata())
            self.attempts.append(str(metadata.get("x-request-id", "")))
            if len(self.attempts) <= self.failures:
                context.abort(grpc.StatusCode.UNAVAILABLE, "draining")
        return ds_pb.Dataset(
            name=request.name,
            state=ds_pb.Dataset.READY,
            content_sha256="c" * 64,
            train_row_count=12,
        )


def _serve(servicer: FlakyDatasets, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.GetDataset,
        request_deserializer=ds_pb.GetDatasetRequest.FromString,
        response_serializer=ds_pb.Dataset.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tuneforge.datasets.v1.DatasetService", {"GetDataset": handler}
            ),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unavailable_answers_are_retried_with_the_same_request_id() -> None:
    servicer = FlakyDatasets(failures=2)
    server, port = _serve(servicer)
    lookup = GrpcDatasetLookup(f"127.0.0.1:{port}", timeout_s=10)
    try:
        with structlog.contextvars.bound_contextvars(request_id="abc"):
            info = lookup.get("projects/default/datasets/numbers")
    finally:
        lookup.close()
        server.stop(None)
    assert info.state == "READY" and info.train_rows == 12
    assert servicer.attempts == ["abc", "abc", "abc"]


def test_a_datasets_service_that_starts_late_is_waited_for() -> None:
    port = _free_port()
    servicer = FlakyDatasets(failures=0)
    servers: list[grpc.Server] = []
    # Nothing listens for the first 1.5 s (the service restarting), then it is back.
    starter = threading.Timer(1.5, lambda: servers.append(_serve(servicer, port)[0]))
    starter.start()
    lookup = GrpcDatasetLookup(f"127.0.0.1:{port}", timeout_s=10)
    began = time.monotonic()
    try:
        info = lookup.get("projects/default/datasets/numbers")
    finally:
        starter.join()
        lookup.close()
        for server in servers:
            server.stop(None)
    assert info.state == "READY"
    assert 1.0 <= time.monotonic() - began < 10
    assert servicer.attempts == [""]


def test_a_datasets_service_that_stays_away_fails_within_the_deadline() -> None:
    lookup = GrpcDatasetLookup(f"127.0.0.1:{_free_port()}", timeout_s=1.0)
    began = time.monotonic()
    try:
        with pytest.raises(Unavailable) as info:
            lookup.get("projects/default/datasets/numbers")
    finally:
        lookup.close()
    assert time.monotonic() - began < 5
    assert "datasets service" in info.value.message
    assert info.value.metadata == {"service": "datasets"}
