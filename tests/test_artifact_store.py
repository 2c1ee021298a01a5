"""ArtifactStore against a real SeaweedFS S3 server: transfers, manifests, errors and outages."""

from __future__ import annotations

import gc
import hashlib
import os
import signal
import time
import tracemalloc
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from services.common.artifact_store import ArtifactStore, StoreAccessDenied
from services.common.errors import DataCorrupt, NotFound, StoreUnavailable
from services.common.manifest import Manifest
from services.common.settings import StoreSettings

MiB = 1024 * 1024


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        remaining = size
        while remaining:
            block = os.urandom(min(4 * MiB, remaining))
            digest.update(block)
            fh.write(block)
            remaining -= len(block)
    return digest.hexdigest()


def _make_artifact_dir(root: Path) -> dict[str, bytes]:
    files = {
        "adapter_config.json": b'{"r": 8}',
        "adapter_model.safetensors": os.urandom(300_000),
        "tokenizer/tokenizer.json": b'{"vocab": {}}',
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _publish(store: ArtifactStore, src: Path, prefix: str, name: str = "m") -> Manifest:
    entries = store.upload_dir(src, prefix)
    manifest = Manifest(kind="adapter", name=f"projects/p/models/{name}", format="peft-lora")
    manifest.files = entries
    store.write_manifest(prefix, manifest)
    return manifest


def test_bytes_round_trip_sha256_matches_hashlib(artifact_store: ArtifactStore) -> None:
    data = os.urandom(123_457)
    entry = artifact_store.put_bytes("a/b.bin", data)
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert entry.size_bytes == len(data)
    assert artifact_store.get_bytes("a/b.bin") == data
    assert artifact_store.stat("a/b.bin").size == len(data)
    assert artifact_store.exists("a/b.bin")


def test_file_round_trip(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    sha = _write_random(src, 1_000_003)
    up = artifact_store.put_file("files/src.bin", src)
    assert (up.sha256, up.size_bytes) == (sha, 1_000_003)
    down = artifact_store.get_file(
        "files/src.bin", tmp_path / "out" / "dst.bin", expected_sha256=sha
    )
    assert down.sha256 == sha
    assert (tmp_path / "out" / "dst.bin").read_bytes() == src.read_bytes()


def _peak_python_bytes(fn: Any) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_file_streams_with_bounded_memory(
    artifact_store: ArtifactStore, tmp_path: Path
) -> None:
    size = 40 * MiB
    part = artifact_store.settings.part_size_mb * MiB
    src = tmp_path / "big.bin"
    sha = _write_random(src, size)

    result: dict[str, Any] = {}
    up_peak = _peak_python_bytes(
        lambda: result.update(up=artifact_store.put_file("big/big.bin", src))
    )
    assert result["up"].sha256 == sha
    # Multipart: several parts, not one 40 MB body; memory near one part, not the file.
    assert "-" in artifact_store.stat("big/big.bin").etag
    assert up_peak < 2 * part + 4 * MiB, f"upload peak {up_peak / MiB:.1f} MiB"

    dst = tmp_path / "big.out"
    down_peak = _peak_python_bytes(
        lambda: artifact_store.get_file("big/big.bin", dst, expected_sha256=sha)
    )
    assert dst.stat().st_size == size
    assert down_peak < 2 * part + 4 * MiB, f"download peak {down_peak / MiB:.1f} MiB"


def test_iter_chunks_ranged(artifact_store: ArtifactStore) -> None:
    data = os.urandom(3 * MiB + 17)
    artifact_store.put_bytes("r.bin", data)
    chunks = list(artifact_store.iter_chunks("r.bin", chunk_size=MiB))
    assert b"".join(chunks) == data
    assert all(len(c) <= MiB for c in chunks)
    part = b"".join(artifact_store.iter_chunks("r.bin", chunk_size=1000, offset=5, length=4321))
    assert part == data[5 : 5 + 4321]
    tail = b"".join(artifact_store.iter_chunks("r.bin", offset=len(data) - 10))
    assert tail == data[-10:]


def test_missing_key_is_not_found(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        artifact_store.get_bytes("no/such/key")
    assert info.value.resource == "no/such/key"
    with pytest.raises(NotFound):
        artifact_store.stat("no/such/key")
    with pytest.raises(NotFound):
        artifact_store.get_file("no/such/key", tmp_path / "x")
    with pytest.raises(NotFound):
        list(artifact_store.iter_chunks("no/such/key"))
    assert not artifact_store.exists("no/such/key")
    assert not (tmp_path / "x").exists()


def test_manifest_is_written_last_and_gates_visibility(
    artifact_store: ArtifactStore, tmp_path: Path
) -> None:
    files = _make_artifact_dir(tmp_path / "a")
    entries = artifact_store.upload_dir(tmp_path / "a", "models/m1")
    assert [e.path for e in entries] == sorted(files)
    assert entries[1].sha256 == hashlib.sha256(files[entries[1].path]).hexdigest()

    # Files without a manifest: the artifact does not exist for readers.
    assert artifact_store.read_manifest("models/m1") is None
    assert artifact_store.list_artifacts("models/") == []
    assert artifact_store.list_prefixes("models/") == ["models/m1/"]
    with pytest.raises(NotFound):
        artifact_store.download_artifact("models/m1", tmp_path / "dl")

    manifest = Manifest(
        kind="adapter",
        name="projects/p/models/m1",
        format="peft-lora",
        files=entries,
        lineage={"base_model_sha256": "0" * 64, "seed": 7},
        metrics={"eval_loss": 1.25},
        attributes={"architecture": "LlamaForCausalLM"},
    )
    manifest_sha = artifact_store.write_manifest("models/m1", manifest)
    stored = artifact_store.get_bytes("models/m1/manifest.json")
    assert manifest_sha == hashlib.sha256(stored).hexdigest()
    assert stored == manifest.to_json_bytes()
    assert artifact_store.read_manifest("models/m1") == manifest
    assert artifact_store.list_artifacts("models/") == ["models/m1/"]

    got = artifact_store.download_artifact("models/m1", tmp_path / "dl")
    assert got == manifest
    for rel, data in files.items():
        assert (tmp_path / "dl" / rel).read_bytes() == data


def test_list_prefixes_paginates(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    _make_artifact_dir(tmp_path / "a")
    for name in ("c", "a", "b"):
        _publish(artifact_store, tmp_path / "a", f"models/{name}", name)
    # "models/a0" must not be confused with "models/a".
    artifact_store.put_bytes("models/a0/x", b"x")
    assert artifact_store.list_prefixes("models", limit=2) == ["models/a/", "models/a0/"]
    assert artifact_store.list_prefixes("models/", start_after="models/a0/") == [
        "models/b/",
        "models/c/",
    ]
    assert artifact_store.list_artifacts("models/") == ["models/a/", "models/b/", "models/c/"]
    assert artifact_store.list_keys("models/a/") == [
        "models/a/adapter_config.json",
        "models/a/adapter_model.safetensors",
        "models/a/manifest.json",
        "models/a/tokenizer/tokenizer.json",
    ]


def test_download_detects_corruption(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    _make_artifact_dir(tmp_path / "a")
    _publish(artifact_store, tmp_path / "a", "models/m2")
    # Someone overwrites a file behind the manifest's back (same size, other bytes).
    artifact_store.put_bytes("models/m2/adapter_model.safetensors", os.urandom(300_000))
    with pytest.raises(DataCorrupt) as info:
        artifact_store.download_artifact("models/m2", tmp_path / "dl")
    assert "adapter_model.safetensors" in info.value.message
    assert not (tmp_path / "dl" / "adapter_model.safetensors").exists()

    artifact_store.delete("models/m2/adapter_config.json")
    with pytest.raises(DataCorrupt):
        artifact_store.download_artifact("models/m2", tmp_path / "dl2")


def test_write_manifest_refuses_missing_files(
    artifact_store: ArtifactStore, tmp_path: Path
) -> None:
    _make_artifact_dir(tmp_path / "a")
    entries = artifact_store.upload_dir(tmp_path / "a", "models/m3")
    artifact_store.delete("models/m3/adapter_config.json")
    manifest = Manifest(kind="adapter", name="projects/p/models/m3", format="peft", files=entries)
    with pytest.raises(DataCorrupt):
        artifact_store.write_manifest("models/m3", manifest)
    assert artifact_store.read_manifest("models/m3") is None


def test_delete_artifact_removes_everything(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    _make_artifact_dir(tmp_path / "a")
    _publish(artifact_store, tmp_path / "a", "models/m4")
    _publish(artifact_store, tmp_path / "a", "models/m40", "m40")
    deleted = artifact_store.delete_artifact("models/m4")
    assert deleted == 3
    assert artifact_store.list_keys("models/m4/") == []
    assert artifact_store.read_manifest("models/m4") is None
    # The neighbour sharing a string prefix is untouched.
    assert artifact_store.list_artifacts("models") == ["models/m40/"]


def test_presigned_get_url_downloads_with_plain_http(artifact_store: ArtifactStore) -> None:
    data = os.urandom(10_000)
    artifact_store.put_bytes("shared/file.bin", data)
    url = artifact_store.presigned_get_url("shared/file.bin", timedelta(minutes=5))
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == data


def test_presigned_put_url_uploads_with_plain_http(artifact_store: ArtifactStore) -> None:
    url = artifact_store.presigned_put_url("incoming/file.bin", timedelta(minutes=5))
    request = urllib.request.Request(url, data=b"hello", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert artifact_store.get_bytes("incoming/file.bin") == b"hello"


def test_wrong_credentials_fail_fast_and_clearly(
    artifact_store: ArtifactStore, store_settings: StoreSettings
) -> None:
    artifact_store.put_bytes("k", b"v")
    bad = ArtifactStore(
        artifact_store.settings.model_copy(update={"secret_key": SecretStr("wrong-secret")})
    )
    start = time.monotonic()
    with pytest.raises(StoreAccessDenied) as info:
        bad.get_bytes("k")
    assert time.monotonic() - start < 2
    assert store_settings.host_port in info.value.message
    assert "access" in info.value.message.lower()
    with pytest.raises(StoreUnavailable):
        bad.ping()
    bad.close()


def test_uri_round_trip(artifact_store: ArtifactStore) -> None:
    uri = artifact_store.uri("models/m1/manifest.json")
    assert uri == f"s3://{artifact_store.bucket}/models/m1/manifest.json"
    assert ArtifactStore.parse_uri(uri) == (artifact_store.bucket, "models/m1/manifest.json")


def test_outage_raises_unavailable_then_recovers(object_store_process: Any) -> None:
    dedicated = object_store_process
    deadline_s = 2.0
    store = ArtifactStore(dedicated.settings(bucket="outage", deadline_s=deadline_s))
    store.ensure_bucket()
    store.ping()
    store.put_bytes("before/outage.txt", b"still here")

    dedicated.stop()
    try:
        for call in (store.ping, lambda: store.get_bytes("before/outage.txt")):
            start = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                call()
            elapsed = time.monotonic() - start
            assert elapsed < deadline_s + 1.5, f"took {elapsed:.1f} s"
            assert not isinstance(info.value, StoreAccessDenied)
            assert dedicated.endpoint in info.value.message
    finally:
        dedicated.start()

    store.ping()
    assert store.get_bytes("before/outage.txt") == b"still here"
    store.close()


def test_hung_store_fails_within_deadline(object_store_process: Any) -> None:
    """A server that accepts connections but never answers must not hang the caller."""
    dedicated = object_store_process
    deadline_s = 2.0
    process = dedicated.start()
    store = ArtifactStore(dedicated.settings(bucket="hung", deadline_s=deadline_s))
    store.ensure_bucket()
    store.put_bytes("k", b"v")

    os.killpg(process.pid, signal.SIGSTOP)
    try:
        for call in (store.ping, lambda: store.get_bytes("k"), lambda: store.list_keys("")):
            start = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            elapsed = time.monotonic() - start
            assert elapsed < deadline_s + 1.5, f"took {elapsed:.1f} s"
    finally:
        os.killpg(process.pid, signal.SIGCONT)
    store.ping()
    assert store.get_bytes("k") == b"v"
    store.close()
