"""The shared service runtime: error mapping, request ids, health, reflection, graceful drain."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import scratch_bucket
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.server import PortInUse, Service, Servicer, ServiceServer
from services.common.settings import ServiceSettings, StoreSettings
from tuneforge import Client, TuneforgeError
from tuneforge.datasets.v1 import dataset_service_pb2 as ds
from tuneforge.datasets.v1 import dataset_service_pb2_grpc as ds_grpc
from tuneforge.testing import ServiceThread


class ScriptedDatasets(ds_grpc.DatasetServiceServicer):
    """A servicer whose behaviour the test picks through the dataset name."""

    async def GetDataset(self, request: ds.GetDatasetRequest, context) -> ds.Dataset:  # type: ignore[no-untyped-def]
        if request.name == "invalid":
            raise InvalidArgument("max_seq_len must be positive", field="dataset.max_seq_len")
        if request.name == "not-ready":
            raise FailedPrecondition(
                "dataset is PROCESSING",
                reason="DATASET_NOT_READY",
                metadata={"state": "PROCESSING"},
            )
        if request.name == "crash":
            raise RuntimeError("secret: /var/lib/tuneforge/keys.json is unreadable")
        if request.name == "slow":
            await asyncio.sleep(1.5)
        return ds.Dataset(name=request.name, state=ds.Dataset.READY)

    async def PreviewDataset(self, request, context):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom in a streaming-free handler")


def _service() -> Service:
    return Service(
        name="datasets",
        servicers=[
            Servicer(
                ds_grpc.add_DatasetServiceServicer_to_server,
                ScriptedDatasets(),
                "tuneforge.datasets.v1.DatasetService",
            )
        ],
    )


class ScriptedThread(ServiceThread):
    async def _start(self) -> str:
        self.server = ServiceServer(_service(), self.settings, port=0)
        await self.server.start()
        return self.server.address


@pytest.fixture
def scripted(tmp_path: Path):  # type: ignore[no-untyped-def]
    thread = ScriptedThread("datasets", ServiceSettings(home=tmp_path), StoreSettings())
    address = thread.start()
    channel = grpc.insecure_channel(address)
    yield thread, ds_grpc.DatasetServiceStub(channel), channel
    channel.close()
    thread.stop(grace_s=1)


def _error(stub_call, request) -> TuneforgeError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        stub_call(request, timeout=10)
    return TuneforgeError.from_rpc_error(info.value)


def test_domain_errors_map_to_codes_with_error_info(scripted) -> None:  # type: ignore[no-untyped-def]
    _thread, stub, _ = scripted
    err = _error(stub.GetDataset, ds.GetDatasetRequest(name="invalid"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "INVALID_ARGUMENT"
    assert err.metadata == {"field": "dataset.max_seq_len"}
    assert "max_seq_len must be positive" in err.message
    assert err.request_id

    err = _error(stub.GetDataset, ds.GetDatasetRequest(name="not-ready"))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "DATASET_NOT_READY"
    assert err.metadata["state"] == "PROCESSING"


def test_unexpected_errors_are_internal_without_leaking_details(scripted, capfd) -> None:  # type: ignore[no-untyped-def]
    _thread, stub, _ = scripted
    err = _error(stub.GetDataset, ds.GetDatasetRequest(name="crash"))
    assert err.code == grpc.StatusCode.INTERNAL
    assert err.reason == "INTERNAL_ERROR"
    assert "secret" not in err.message and "/var/lib" not in err.message
    assert err.metadata["request_id"] == err.request_id
    # The traceback is in the server's log, under the same request id.
    captured = capfd.readouterr()
    logged = captured.out + captured.err
    assert "keys.json is unreadable" in logged
    assert err.request_id in logged


def test_client_request_id_is_kept(scripted) -> None:  # type: ignore[no-untyped-def]
    _thread, stub, _ = scripted
    with pytest.raises(grpc.RpcError) as info:
        stub.GetDataset(
            ds.GetDatasetRequest(name="crash"), timeout=10, metadata=[("x-request-id", "req-42")]
        )
    assert TuneforgeError.from_rpc_error(info.value).request_id == "req-42"


def test_health_and_reflection_list_the_services(scripted) -> None:  # type: ignore[no-untyped-def]
    _thread, _stub, channel = scripted
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "tuneforge.datasets.v1.DatasetService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert "tuneforge.datasets.v1.DatasetService" in names
    assert "grpc.health.v1.Health" in names


def test_stop_drains_in_flight_calls_and_turns_not_serving(scripted) -> None:  # type: ignore[no-untyped-def]
    thread, stub, channel = scripted
    result: dict[str, object] = {}

    def slow_call() -> None:
        try:
            result["reply"] = stub.GetDataset(ds.GetDatasetRequest(name="slow"), timeout=10)
        except grpc.RpcError as exc:
            result["error"] = exc.code()

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.5)
    health = health_pb2_grpc.HealthStub(channel)
    stopper = threading.Thread(target=thread.stop, kwargs={"grace_s": 5})
    stopper.start()
    caller.join(timeout=15)
    stopper.join(timeout=15)
    assert "error" not in result, result
    assert result["reply"].state == ds.Dataset.READY  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError):
        health.Check(health_pb2.HealthCheckRequest(), timeout=2)


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]

        async def start() -> None:
            server = ServiceServer(_service(), ServiceSettings(home=tmp_path), port=port)
            await server.start()

        with pytest.raises(PortInUse, match=f"{port}.*already in use"):
            asyncio.run(start())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigterm_drains_an_in_flight_import(store_settings: StoreSettings, tmp_path: Path) -> None:
    """A real training service process: SIGTERM during an import lets the import finish."""
    with scratch_bucket(store_settings, "drain") as bucket:
        _drains(bucket, tmp_path)


def _drains(store_settings: StoreSettings, tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "TUNEFORGE_HOME": str(tmp_path),
        "TUNEFORGE_TRAINING_PORT": str(port),
        "TUNEFORGE_S3_ENDPOINT": store_settings.endpoint,
        "TUNEFORGE_S3_ACCESS_KEY": store_settings.access_key,
        "TUNEFORGE_S3_SECRET_KEY": store_settings.secret_key.get_secret_value(),
        "TUNEFORGE_S3_BUCKET": store_settings.bucket,
        "TUNEFORGE_GRACE_S": "60",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.training.main"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        client = Client(targets={"training": f"127.0.0.1:{port}"})
        deadline = time.monotonic() + 60
        while client.health(timeout_s=1)["training"] != "SERVING":
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "training service did not start"
            time.sleep(0.2)
        result: dict[str, object] = {}

        def run_import() -> None:
            try:
                result["model"] = client.models.import_model("drained", preset="tiny-llama")
            except TuneforgeError as exc:
                result["error"] = exc

        caller = threading.Thread(target=run_import)
        caller.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        caller.join(timeout=60)
        assert "error" not in result, result
        assert result["model"].name == "projects/default/models/drained"  # type: ignore[attr-defined]
        assert proc.wait(timeout=60) == 0
        logged = proc.stderr.read().decode()  # type: ignore[union-attr]
        assert '"event": "draining"' in logged and '"event": "stopped"' in logged
    finally:
        if proc.poll() is None:
            proc.kill()
        client.close()
