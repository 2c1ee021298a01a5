"""Shared fixtures: a real S3 object store (SeaweedFS) for the whole session.

CI may start one `weed` itself and export TUNEFORGE_TEST_S3_ENDPOINT, TUNEFORGE_TEST_S3_ACCESS_KEY
and TUNEFORGE_TEST_S3_SECRET_KEY; otherwise the session starts its own on free ports in a temp dir.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.common.artifact_store import ArtifactStore
from services.common.object_store_server import (
    ObjectStoreProcess,
    free_port_set,
    start_object_store,
    stop_object_store,
)
from services.common.settings import StoreSettings

TEST_ACCESS_KEY = "tuneforge-test"
TEST_SECRET_KEY = "tuneforge-test-secret-key"
# Short, so an unreachable store fails a test in seconds instead of hanging it.
TEST_DEADLINE_S = 5.0
TEST_PART_SIZE_MB = 5


def _settings(
    endpoint: str, access_key: str, secret_key: str, **overrides: object
) -> StoreSettings:
    values: dict[str, object] = {
        "endpoint": endpoint,
        "access_key": access_key,
        "secret_key": SecretStr(secret_key),
        "bucket": "tuneforge-test",
        "deadline_s": TEST_DEADLINE_S,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 30.0,
        "part_size_mb": TEST_PART_SIZE_MB,
    }
    values.update(overrides)
    return StoreSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def store_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSettings]:
    """Settings of the session's object store (CI's, or one started here)."""
    endpoint = os.environ.get("TUNEFORGE_TEST_S3_ENDPOINT")
    if endpoint:
        yield _settings(
            endpoint,
            os.environ.get("TUNEFORGE_TEST_S3_ACCESS_KEY", ""),
            os.environ.get("TUNEFORGE_TEST_S3_SECRET_KEY", ""),
        )
        return
    process = start_object_store(
        tmp_path_factory.mktemp("object-store"),
        TEST_ACCESS_KEY,
        TEST_SECRET_KEY,
        ports=free_port_set(),
        bucket="tuneforge-test",
        die_with_parent=True,
    )
    try:
        yield _settings(process.endpoint, TEST_ACCESS_KEY, TEST_SECRET_KEY)
    finally:
        stop_object_store(process.pid)


@contextlib.contextmanager
def scratch_bucket(store_settings: StoreSettings, prefix: str = "t") -> Iterator[StoreSettings]:
    """Settings for a fresh bucket of the session's store, removed with its objects afterwards:
    SeaweedFS gives every bucket volumes of its own, and leftover buckets run it out of them."""
    settings = store_settings.model_copy(update={"bucket": f"{prefix}-{uuid.uuid4().hex[:12]}"})
    try:
        yield settings
    finally:
        store = ArtifactStore(settings)
        with contextlib.suppress(Exception):
            store.remove_bucket()
        store.close()


@pytest.fixture
def artifact_store(store_settings: StoreSettings) -> Iterator[ArtifactStore]:
    """An ArtifactStore on a fresh bucket of its own, removed afterwards (best effort)."""
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    store = ArtifactStore(store_settings.model_copy(update={"bucket": bucket}))
    store.ensure_bucket()
    try:
        yield store
    finally:
        with contextlib.suppress(Exception):
            store.remove_bucket()
        store.close()


class DedicatedObjectStore:
    """A weed of its own (own ports, own data dir) that a test may stop and start again."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = free_port_set()
        self.process: ObjectStoreProcess | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['s3']}"

    def start(self) -> ObjectStoreProcess:
        if self.process is None or not self.process.alive():
            self.process = start_object_store(
                self.data_dir,
                TEST_ACCESS_KEY,
                TEST_SECRET_KEY,
                ports=self.ports,
                die_with_parent=True,
            )
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            stop_object_store(self.process.pid)
            self.process = None

    def settings(self, **overrides: object) -> StoreSettings:
        return _settings(self.endpoint, TEST_ACCESS_KEY, TEST_SECRET_KEY, **overrides)


@pytest.fixture(scope="session")
def object_store_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DedicatedObjectStore]:
    """A dedicated object store for outage tests: stopping it does not disturb other tests."""
    dedicated = DedicatedObjectStore(tmp_path_factory.mktemp("dedicated-object-store"))
    dedicated.start()
    try:
        yield dedicated
    finally:
        dedicated.stop()
