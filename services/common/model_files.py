"""Reads catalog models from the object store: any service can resolve a model name to its
manifest and fetch (some of) its files into a local cache, verified against the manifest."""

from __future__ import annotations

import fnmatch
import os
import shutil
import threading
import uuid
from pathlib import Path

from services.common.artifact_store import ArtifactStore
from services.common.errors import NotFound
from services.common.manifest import Manifest
from services.common.resource_names import parse_name

# A tokenizer's files in a Hugging Face directory (whichever of them a model has).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
# A folder of verified model files that workers share across jobs (set by their service).
MODEL_CACHE_ENV = "TUNEFORGE_MODEL_CACHE"
# What a service needs to tokenize, render chat and read the architecture.
TOKENIZER_AND_CONFIG = (*TOKENIZER_FILES, "generation_config.json", "config.json")


def model_prefix(model: str, field: str = "model") -> str:
    name = parse_name(model, "models", field)
    return f"models/{name.project}/{name.id}/"


def read_model_manifest(store: ArtifactStore, model: str, field: str = "model") -> Manifest:
    manifest = store.read_manifest(model_prefix(model, field))
    if manifest is None:
        raise NotFound(model)
    return manifest


class ModelFileCache:
    """Local copies of models' files, one folder per manifest version (its sha256), so a model
    deleted and imported again under the same name is never served from a stale copy.

    Several processes may share one cache: each downloads into a staging folder of its own and
    renames it into place; a folder in place is complete and never replaced."""

    def __init__(self, store: ArtifactStore, root: Path) -> None:
        self.store = store
        self.root = root
        self._lock = threading.Lock()

    def fetch(
        self, model: str, patterns: tuple[str, ...] = ("*",), field: str = "model"
    ) -> tuple[Path, Manifest]:
        """Downloads the manifest's files matching `patterns` (once) and returns their folder."""
        manifest = read_model_manifest(self.store, model, field)
        prefix = model_prefix(model, field)
        wanted = [f for f in manifest.files if any(fnmatch.fnmatch(f.path, p) for p in patterns)]
        tag = "all" if patterns == ("*",) else "-".join(sorted(patterns)).replace("*", "x")
        folder = self.root / manifest.sha256()[:32] / tag.replace("/", "_")[:80]
        done = folder / ".complete"
        with self._lock:
            if done.exists():
                return folder, manifest
            staging = folder.with_name(folder.name + f".tmp-{uuid.uuid4().hex[:8]}")
            staging.mkdir(parents=True)
            try:
                for entry in wanted:
                    self.store.get_file(
                        prefix + entry.path,
                        staging / entry.path,
                        expected_sha256=entry.sha256,
                    )
                (staging / ".complete").write_text(manifest.sha256())
                folder.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(staging, folder)
                except OSError:
                    if not done.exists():  # not another process's finished copy
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return folder, manifest
