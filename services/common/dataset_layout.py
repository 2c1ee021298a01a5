"""Where datasets live in the object store, for every service that reads them.

A dataset's manifest is at `datasets/{project}/{id}/` (attribute `content_sha256`); its canonical
JSONL rows are stored once per content at `datasets/content/<sha256>/{train,validation}.jsonl`.
"""

from __future__ import annotations


def dataset_prefix(project: str, dataset_id: str) -> str:
    return f"datasets/{project}/{dataset_id}/"


def content_prefix(content_sha256: str) -> str:
    return f"datasets/content/{content_sha256}/"


def content_files(content_sha256: str, *splits: str) -> list[str]:
    """Object-store keys of a content's canonical JSONL files, one per split."""
    return [f"{content_prefix(content_sha256)}{split}.jsonl" for split in splits]
