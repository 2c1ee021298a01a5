"""The model catalog through gRPC: import, get, list, delete, idempotency, store outages."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import scratch_bucket

from services.common.artifact_store import ArtifactStore
from services.common.settings import StoreSettings
from tuneforge import Client, TuneforgeError
from tuneforge.testing import local_services
from tuneforge.training.v1 import model_service_pb2 as pb


@pytest.fixture
def bucket_settings(store_settings: StoreSettings) -> Iterator[StoreSettings]:
    with scratch_bucket(store_settings, "m") as settings:
        yield settings


@pytest.fixture
def client(bucket_settings: StoreSettings, tmp_path: Path) -> Iterator[Client]:
    with local_services(bucket_settings, tmp_path, services=["training"]) as c:
        yield c


def test_import_preset_stores_files_whose_sha256_match_the_manifest(
    client: Client, bucket_settings: StoreSettings, tmp_path: Path
) -> None:
    model = client.models.import_model("tiny", preset="tiny-llama")
    assert model.name == "projects/default/models/tiny"
    assert model.kind == pb.Model.BASE
    assert model.model_type == "llama"
    assert model.architecture == "LlamaForCausalLM"
    assert model.parameter_count > 0
    assert model.chat_template_sha256 and model.tokenizer_sha256
    assert model.source == "preset:tiny-llama"
    paths = {f.path for f in model.artifact.files}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= paths

    store = ArtifactStore(bucket_settings)
    for f in model.artifact.files:
        data = store.get_bytes(f"models/default/tiny/{f.path}")
        assert hashlib.sha256(data).hexdigest() == f.sha256
        assert len(data) == f.size_bytes
    manifest_bytes = store.get_bytes("models/default/tiny/manifest.json")
    assert hashlib.sha256(manifest_bytes).hexdigest() == model.artifact.manifest_sha256

    again = client.models.get("tiny")
    assert again == model


def test_import_is_idempotent_with_a_request_id(client: Client) -> None:
    first = client.models.import_model("same", preset="tiny-phi3", request_id="r-1")
    second = client.models.import_model("same", preset="tiny-phi3", request_id="r-1")
    assert first == second
    assert first.model_type == "phi3"
    with pytest.raises(TuneforgeError) as info:
        client.models.import_model("same", preset="tiny-phi3", request_id="r-2")
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert info.value.reason == "RESOURCE_ALREADY_EXISTS"
    assert info.value.metadata["resource"] == "projects/default/models/same"


def test_bad_requests_name_the_field(client: Client, tmp_path: Path) -> None:
    cases = [
        (dict(model_id="Bad_Id", preset="tiny-llama"), "model_id", "INVALID_ARGUMENT"),
        (dict(model_id="x", preset="huge-llama"), "preset", "MODEL_SOURCE_INVALID"),
        (dict(model_id="x", hf_dir=str(tmp_path / "nope")), "hf_dir", "MODEL_SOURCE_INVALID"),
        (
            dict(model_id="x", gguf_file=str(tmp_path / "nope.gguf")),
            "gguf_file",
            "MODEL_SOURCE_INVALID",
        ),
    ]
    for kwargs, field, reason in cases:
        model_id = kwargs.pop("model_id")
        with pytest.raises(TuneforgeError) as info:
            client.models.import_model(model_id, **kwargs)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, kwargs
        assert info.value.reason == reason, kwargs
        assert info.value.metadata["field"] == field, kwargs
    # Nothing partial was stored by the failed imports.
    assert list(client.models.list()) == []


def test_get_and_delete_unknown_models_are_not_found(client: Client) -> None:
    for call in (client.models.get, client.models.delete):
        with pytest.raises(TuneforgeError) as info:
            call("missing")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert info.value.reason == "RESOURCE_NOT_FOUND"
        assert info.value.metadata["resource"] == "projects/default/models/missing"
    with pytest.raises(TuneforgeError) as info:
        client.models.get("projects/default/datasets/x")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.metadata["field"] == "name"


def test_list_paginates_and_filters_and_delete_removes_everything(
    client: Client, bucket_settings: StoreSettings
) -> None:
    for i in range(5):
        client.models.import_model(f"m{i}", preset="tiny-llama", seed=i)
    stub = client.models._stub
    seen, token, pages = [], "", 0
    while True:
        page = stub.ListModels(
            pb.ListModelsRequest(parent="projects/default", page_size=2, page_token=token)
        )
        pages += 1
        assert len(page.models) <= 2
        seen += [m.name.rsplit("/", 1)[-1] for m in page.models]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["m0", "m1", "m2", "m3", "m4"] and pages == 3
    assert [m.name for m in client.models.list(filter="model_type=llama")] == [
        f"projects/default/models/m{i}" for i in range(5)
    ]
    assert list(client.models.list(filter="model_type=phi3")) == []
    with pytest.raises(TuneforgeError) as info:
        list(client.models.list(filter="colour=blue"))
    assert info.value.metadata["field"] == "filter"

    client.models.delete("m3")
    assert [m.name[-2:] for m in client.models.list()] == ["m0", "m1", "m2", "m4"]
    assert ArtifactStore(bucket_settings).list_keys("models/default/m3/") == []


def test_store_down_gives_unavailable_then_recovers(object_store_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = object_store_process.settings(deadline_s=3.0, bucket="outage")
    with local_services(settings, tmp_path, services=["training"]) as client:
        client.models.import_model("kept", preset="tiny-llama")
        object_store_process.stop()
        try:
            started = time.monotonic()
            with pytest.raises(TuneforgeError) as info:
                client.models.get("kept")
            elapsed = time.monotonic() - started
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert info.value.reason == "STORE_UNAVAILABLE"
            # Within the store's deadline (plus the client's retries of UNAVAILABLE), no hang.
            assert elapsed < 3.0 * 4 + 10
        finally:
            object_store_process.start()
        assert client.models.get("kept").name == "projects/default/models/kept"


def test_a_model_downloads_through_signed_urls_and_is_checked(
    client: Client, tmp_path: Path
) -> None:
    client.models.import_model("tiny", preset="tiny-llama")
    seen: list[tuple[int, int]] = []
    folder = client.models.download(
        "tiny", tmp_path / "tiny", progress=lambda d, t: seen.append((d, t))
    )
    stored = {f.path: f for f in client.models.get("tiny").artifact.files}
    assert sorted(p.name for p in folder.iterdir()) == sorted(stored)
    for path, entry in stored.items():
        assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == entry.sha256
    assert seen[-1][0] == seen[-1][1] == sum(f.size_bytes for f in stored.values())

    # A file changed on disk is fetched again; one that is intact is kept.
    (folder / "config.json").write_text("{}")
    untouched = (folder / "model.safetensors").stat().st_mtime_ns
    client.models.download("tiny", folder)
    assert (
        hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
        == stored["config.json"].sha256
    )
    assert (folder / "model.safetensors").stat().st_mtime_ns == untouched

    with pytest.raises(TuneforgeError) as missing:
        client.models.download("missing", tmp_path / "none")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
