"""Artifact manifests: the `manifest.json` written LAST under every artifact prefix in the store.

A manifest lists the artifact's files with their sha256 and size, its lineage (dataset hash, base
model hash, tokenizer hash, job config, seed...) and its metrics. Readers trust only artifacts that
have one, and verify every file they download against it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


class FileEntry(BaseModel):
    """One file of an artifact; `path` is relative to the artifact prefix, with "/" separators."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        parts = value.split("/")
        if not value or value.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"file path must be relative and normalized, got {value!r}")
        return value


class Manifest(BaseModel):
    """What an artifact is, what it is made of, where it comes from and how good it is."""

    # Unknown fields from newer writers are ignored so older readers keep working.
    model_config = ConfigDict(extra="ignore")

    schema_version: int = MANIFEST_SCHEMA_VERSION
    # "model", "adapter", "dataset", "checkpoint", "export", ...
    kind: str
    # The resource name, e.g. "projects/default/models/m1".
    name: str
    # e.g. "peft-lora", "safetensors", "onnx-genai", "jsonl".
    format: str
    files: list[FileEntry] = Field(default_factory=list)
    lineage: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    # Free-form description: architecture, parameter_count, dtype, ...
    attributes: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utc_now)

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, files: list[FileEntry]) -> list[FileEntry]:
        seen: set[str] = set()
        for entry in files:
            if entry.path in seen:
                raise ValueError(f"duplicate file path {entry.path!r} in manifest")
            seen.add(entry.path)
        return files

    @property
    def total_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    def to_json_bytes(self) -> bytes:
        """Stable serialization: sorted keys, indent 2, trailing newline (hash-friendly)."""
        data = self.model_dump(mode="json")
        return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()

    def sha256(self) -> str:
        """sha256 of the stored manifest.json (its serialization is stable)."""
        return hashlib.sha256(self.to_json_bytes()).hexdigest()

    @classmethod
    def from_json_bytes(cls, data: bytes | str) -> Manifest:
        return cls.model_validate_json(data)
