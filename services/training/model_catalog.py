"""The model catalog: models stored as artifacts under `models/{project}/{model}/`.

The manifest in the object store is the catalog's only record, so every service reads the same
truth and nothing here needs a database. A model exists once its manifest is written (last).
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.manifest import FileEntry, Manifest
from services.common.resource_names import (
    ResourceName,
    check_id,
    decode_page_token,
    encode_page_token,
    page_size,
    parse_filter,
)
from services.training import model_import

log = structlog.get_logger("model_catalog")

FILTER_KEYS = {"kind", "base_model", "architecture", "model_type", "format", "source_kind"}


@dataclass(frozen=True)
class ModelSource:
    """Where an import reads from: kind is "hf_dir", "gguf_file", "preset" or "uri"."""

    kind: str
    value: str


@dataclass(frozen=True)
class StoredModel:
    manifest: Manifest
    manifest_sha256: str
    uri: str


def model_prefix(name: ResourceName) -> str:
    return f"models/{name.project}/{name.id}/"


class ModelCatalog:
    """Imports, reads, lists and deletes catalog models. Blocking: call from a worker thread."""

    def __init__(self, store: ArtifactStore, work_root: Path) -> None:
        self.store = store
        self.work_root = work_root
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, name: ResourceName) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(str(name), threading.Lock())

    def get(self, name: ResourceName) -> StoredModel:
        prefix = model_prefix(name)
        manifest = self.store.read_manifest(prefix)
        if manifest is None:
            raise NotFound(str(name))
        return self._stored(prefix, manifest)

    def download_urls(
        self, name: ResourceName, expires: timedelta
    ) -> tuple[Manifest, list[tuple[FileEntry, str]]]:
        """The model's manifest and a presigned GET URL for each of its files."""
        stored = self.get(name)
        prefix = model_prefix(name)
        urls = [
            (entry, self.store.presigned_get_url(prefix + entry.path, expires))
            for entry in stored.manifest.files
        ]
        return stored.manifest, urls

    def _stored(self, prefix: str, manifest: Manifest) -> StoredModel:
        return StoredModel(
            manifest=manifest,
            manifest_sha256=manifest.sha256(),
            uri=self.store.uri(prefix),
        )

    def list(
        self, project: str, requested_page_size: int, page_token: str, filter_text: str
    ) -> tuple[list[StoredModel], str]:
        size = page_size(requested_page_size)
        terms = parse_filter(filter_text, FILTER_KEYS)
        after = str(decode_page_token(page_token).get("after", ""))
        root = f"models/{project}/"
        found: list[StoredModel] = []
        next_token = ""
        for child in self.store.list_prefixes(
            root, start_after=root + after + "/" if after else ""
        ):
            manifest = self.store.read_manifest(child)
            if manifest is None or not _matches(manifest, terms):
                continue
            if len(found) == size:
                last = found[-1].manifest.name.rsplit("/", 1)[-1]
                next_token = encode_page_token({"after": last})
                break
            found.append(self._stored(child, manifest))
        return found, next_token

    def delete(self, name: ResourceName) -> None:
        prefix = model_prefix(name)
        with self._lock(name):
            if self.store.read_manifest(prefix) is None:
                raise NotFound(str(name))
            self.store.delete_artifact(prefix)
        log.info("model_deleted", model=str(name))

    def import_model(
        self,
        name: ResourceName,
        source: ModelSource,
        *,
        display_name: str = "",
        labels: dict[str, str] | None = None,
        request_id: str = "",
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
    ) -> StoredModel:
        check_id(name.id, "model_id")
        prefix = model_prefix(name)
        with self._lock(name):
            existing = self.store.read_manifest(prefix)
            if existing is not None:
                if request_id and existing.attributes.get("request_id") == request_id:
                    return self._stored(prefix, existing)
                raise AlreadyExists(str(name))
            work = self.work_root / f"import-{uuid.uuid4().hex}"
            work.mkdir(parents=True)
            try:
                imported = self._materialize(source, work, seed)
                if progress:
                    progress("uploading")
                files = self.store.upload_dir(imported.directory, prefix)
                manifest = Manifest(
                    kind="model",
                    name=str(name),
                    format="safetensors",
                    files=files,
                    lineage={
                        "tokenizer_sha256": imported.tokenizer_sha256,
                        "chat_template_sha256": imported.chat_template_sha256,
                        "seed": seed if source.kind == "preset" else 0,
                    },
                    metrics={},
                    attributes={
                        "model_kind": "BASE",
                        "display_name": display_name or name.id,
                        "architecture": imported.architecture,
                        "model_type": imported.model_type,
                        "parameter_count": imported.parameter_count,
                        "dtype": imported.dtype,
                        "vocab_size": imported.vocab_size,
                        "context_length": imported.context_length,
                        "tokenizer_sha256": imported.tokenizer_sha256,
                        "chat_template_sha256": imported.chat_template_sha256,
                        "source": imported.source,
                        "source_kind": source.kind,
                        "labels": dict(labels or {}),
                        "request_id": request_id,
                    },
                    created_at=datetime.now(UTC),
                )
                self.store.write_manifest(prefix, manifest)
            except BaseException:
                # Files without a manifest are invisible; remove them so a retry starts clean.
                self.store.delete_prefix(prefix)
                raise
            finally:
                shutil.rmtree(work, ignore_errors=True)
        log.info(
            "model_imported",
            model=str(name),
            source=imported.source,
            parameters=imported.parameter_count,
        )
        return self._stored(prefix, manifest)

    def _materialize(
        self, source: ModelSource, work: Path, seed: int
    ) -> model_import.ImportedModel:
        if source.kind == "hf_dir":
            return model_import.import_hf_dir(Path(source.value), work)
        if source.kind == "gguf_file":
            return model_import.import_gguf(Path(source.value), work)
        if source.kind == "preset":
            return model_import.import_preset(source.value, work, seed=seed)
        if source.kind == "uri":
            return self._materialize_uri(source.value, work)
        raise InvalidArgument(
            "one of hf_dir, gguf_file, preset or uri is required",
            field="source",
            reason="MODEL_SOURCE_INVALID",
        )

    def _materialize_uri(self, uri: str, work: Path) -> model_import.ImportedModel:
        try:
            bucket, key = self.store.parse_uri(uri)
        except ValueError as exc:
            raise InvalidArgument(str(exc), field="uri", reason="MODEL_SOURCE_INVALID") from exc
        if bucket != self.store.bucket:
            raise InvalidArgument(
                f"uri must point into the bucket {self.store.bucket!r}, got {bucket!r}",
                field="uri",
                reason="MODEL_SOURCE_INVALID",
            )
        download = work / "download"
        if key.endswith(".gguf"):
            target = download / Path(key).name
            self.store.get_file(key, target)
            imported = model_import.import_gguf(target, work)
        else:
            prefix = key if key.endswith("/") else key + "/"
            keys = list(self.store.list_keys(prefix))
            if not keys:
                raise InvalidArgument(
                    f"nothing is stored under {uri}", field="uri", reason="MODEL_SOURCE_INVALID"
                )
            for k in keys:
                self.store.get_file(k, download / k[len(prefix) :])
            imported = model_import.import_hf_dir(download, work)
        return dataclasses.replace(imported, source=f"uri:{uri}")


def _matches(manifest: Manifest, terms: dict[str, str]) -> bool:
    attrs = manifest.attributes
    for key, value in terms.items():
        actual = attrs.get("model_kind" if key == "kind" else key, "")
        if str(actual) != value:
            return False
    return True
