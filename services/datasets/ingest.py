"""The ingest pipeline: a user's file -> canonical rows, diagnostics, token statistics, a split,
and content-addressed artifacts in the store. No grpc here; the servicer calls it in a thread.

Pass 1 streams the input once: parse, validate, measure tokens in batches, and write valid rows
to a local canonical file while keeping 8-byte row hashes and token counts in arrays (about
20 bytes a row: an 8-byte hash, 4-byte line and token counts). Duplicates are found by sorting
the hashes. Pass 2 reads the canonical file back and writes the train and validation files.
Memory grows by about 20 bytes a row (plus 8 while looking for duplicates).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import threading
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from services.common.artifact_store import ArtifactStore
from services.common.chat_template import ChatTemplateError, ChatTokenizer
from services.common.dataset_layout import content_prefix, dataset_prefix
from services.common.errors import InvalidArgument
from services.common.manifest import FileEntry, Manifest
from services.datasets import formats
from services.datasets.formats import CanonicalRow, DatasetFormat, Diagnostic
from services.datasets.records import MAX_DIAGNOSTICS, DatasetResult, DatasetSpec

BATCH_ROWS = 512
PROGRESS_EVERY_S = 0.5
TRAIN_FILE, VALIDATION_FILE = "train.jsonl", "validation.jsonl"
Progress = Callable[[int, int], None]  # (bytes processed, rows processed)


class DatasetInvalid(InvalidArgument):
    """The file has problems the policy does not allow; `result` holds every diagnostic."""

    def __init__(self, message: str, result: DatasetResult) -> None:
        first = result.diagnostics[0] if result.diagnostics else {}
        metadata: dict[str, object] = {
            "line": first.get("line", 0),
            "field": first.get("field", ""),
            "code": first.get("code", ""),
            "diagnostics": sum(result.diagnostic_counts.values()),
        }
        super().__init__(message, reason="DATASET_INVALID", metadata=metadata)
        self.result = result


@dataclass
class Processed:
    """The outcome of processing: results and the local canonical files to publish."""

    result: DatasetResult
    train_path: Path
    validation_path: Path


@dataclass
class _Pass1:
    rows_path: Path
    hashes: array = field(default_factory=lambda: array("Q"))
    lines: array = field(default_factory=lambda: array("I"))
    tokens: array = field(default_factory=lambda: array("I"))
    trainable: array = field(default_factory=lambda: array("I"))
    diagnostics: list[Diagnostic] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    invalid_lines: int = 0
    over_limit: int = 0
    seen_records: int = 0

    def add_diagnostic(self, diag: Diagnostic) -> None:
        self.counts[diag.code] += 1
        if len(self.diagnostics) < MAX_DIAGNOSTICS:
            self.diagnostics.append(diag)


def row_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def in_validation(text: str, fraction: float, seed: int) -> bool:
    """Deterministic by seed and content, independent of row order."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode(), digest_size=8, key=str(seed).encode()[:64]).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def process(
    source: BinaryIO | Path,
    spec: DatasetSpec,
    file_name: str,
    tokenizer: ChatTokenizer | None,
    work: Path,
    progress: Progress | None = None,
    head: bytes | None = None,
    tokenizer_sha256: str = "",
) -> Processed:
    """Validates and measures `source` (a path or a binary stream) into canonical files.

    Raises DatasetInvalid when the policy rejects the file; its `result` has the diagnostics.
    """
    work.mkdir(parents=True, exist_ok=True)
    fmt = _resolve_format(spec, file_name, source, head)
    state = _Pass1(rows_path=work / "rows.jsonl")
    _first_pass(source, fmt, spec, tokenizer, state, progress)

    if state.seen_records == 0:
        state.add_diagnostic(Diagnostic(0, "", "EMPTY_FILE", "the file holds no rows"))
    duplicates = _find_duplicates(state)

    result = DatasetResult(format=fmt.value)
    result.diagnostics = [
        asdict(d) for d in sorted(state.diagnostics, key=lambda d: (d.line, d.field))
    ][:MAX_DIAGNOSTICS]
    result.diagnostic_counts = dict(state.counts)
    result.invalid_row_count = state.invalid_lines + len(duplicates)
    total_problems = sum(state.counts.values())
    if total_problems and spec.validation_policy != "SKIP_INVALID":
        raise DatasetInvalid(
            f"{total_problems} problem(s) in {file_name or 'the file'}; the first: "
            + _describe(result.diagnostics[0]),
            result,
        )
    keep = np.ones(len(state.hashes), dtype=bool)
    if duplicates:
        keep[np.fromiter(duplicates, dtype=np.int64)] = False
    if not keep.any():
        if not result.diagnostics:
            result.diagnostics = [asdict(Diagnostic(0, "", "EMPTY_FILE", "no rows"))]
        raise DatasetInvalid("no valid rows remain after dropping the invalid ones", result)

    train_path, validation_path = work / TRAIN_FILE, work / VALIDATION_FILE
    in_val = _split(state.rows_path, keep, spec, train_path, validation_path)
    result.row_count = int(keep.sum())
    result.validation_row_count = int(in_val.sum())
    result.train_row_count = result.row_count - result.validation_row_count
    result.content_sha256 = _content_sha256(train_path, validation_path)
    if tokenizer is not None:
        result.statistics = _statistics(state, keep, in_val, tokenizer_sha256)
    state.rows_path.unlink(missing_ok=True)
    return Processed(result, train_path, validation_path)


def _describe(diag: dict[str, Any]) -> str:
    where = f"line {diag['line']}" + (f", {diag['field']}" if diag.get("field") else "")
    return f"{where}: {diag['code']}: {diag['message']}"


def _resolve_format(
    spec: DatasetSpec, file_name: str, source: BinaryIO | Path, head: bytes | None
) -> DatasetFormat:
    if spec.format:
        return DatasetFormat(spec.format)
    if head is None:
        if isinstance(source, Path):
            with source.open("rb") as fh:
                head = fh.read(1 << 16)
        elif isinstance(source, io.BufferedReader):
            head = source.peek(1 << 16)[: 1 << 16]
        else:
            head = b""
    return formats.detect_format(file_name, head)


def _first_pass(
    source: BinaryIO | Path,
    fmt: DatasetFormat,
    spec: DatasetSpec,
    tokenizer: ChatTokenizer | None,
    state: _Pass1,
    progress: Progress | None,
) -> None:
    batch: list[CanonicalRow] = []
    counter = _ByteCounter(source)
    # Progress is sampled by a ticker, so it shows even while the reader waits for more bytes.
    stop = threading.Event()
    ticker = threading.Thread(
        target=_tick, args=(stop, progress, counter, state), daemon=True, name="ingest-progress"
    )
    if progress:
        ticker.start()
    try:
        with state.rows_path.open("w", encoding="utf-8") as out:
            rows = formats.read_canonical(source, fmt, spec.column_mapping or None)
            for _line, row, diags in rows:
                state.seen_records += 1
                if diags:
                    state.invalid_lines += 1
                    for d in diags:
                        state.add_diagnostic(d)
                    continue
                if row is None:
                    continue
                batch.append(row)
                if len(batch) >= BATCH_ROWS:
                    _flush(batch, spec, tokenizer, state, out)
                    batch = []
            _flush(batch, spec, tokenizer, state, out)
    finally:
        stop.set()
        if progress:
            ticker.join()
            progress(counter.bytes(), state.seen_records)


def _tick(stop: threading.Event, progress: Progress, counter: _ByteCounter, state: _Pass1) -> None:
    while not stop.wait(PROGRESS_EVERY_S):
        progress(counter.bytes(), state.seen_records)


def _conversation(row: CanonicalRow) -> list[dict[str, Any]]:
    if row.chosen is None:
        return row.messages
    return [*row.messages, {"role": "assistant", "content": row.chosen}]


def _flush(
    batch: list[CanonicalRow],
    spec: DatasetSpec,
    tokenizer: ChatTokenizer | None,
    state: _Pass1,
    out: IO[str],
) -> None:
    if not batch:
        return
    measured: list[tuple[int, int] | None]
    if tokenizer is not None:
        try:
            measured = list(_measure(tokenizer, batch))
        except ChatTemplateError:
            measured = []
            for row in batch:  # find the rows the template cannot render
                try:
                    measured.extend(_measure(tokenizer, [row]))
                except ChatTemplateError as exc:
                    measured.append(None)
                    state.invalid_lines += 1
                    state.add_diagnostic(
                        Diagnostic(
                            row.line,
                            exc.metadata.get("field", "messages"),
                            "CHAT_TEMPLATE_ERROR",
                            exc.message,
                        )
                    )
    else:
        measured = [(0, 0)] * len(batch)
    limit = spec.max_seq_len
    for row, sizes in zip(batch, measured, strict=True):
        if sizes is None:
            continue
        total, trainable = sizes
        if limit and total > limit:
            state.over_limit += 1
            state.invalid_lines += 1
            state.add_diagnostic(
                Diagnostic(
                    row.line,
                    "",
                    "ROW_TOO_LONG",
                    f"the row has {total} tokens; max_seq_len is {limit}",
                )
            )
            continue
        text = row.to_json()
        out.write(text)
        out.write("\n")
        state.hashes.append(row_hash(text))
        state.lines.append(row.line)
        state.tokens.append(total)
        state.trainable.append(trainable)


def _measure(tokenizer: ChatTokenizer, batch: list[CanonicalRow]) -> list[tuple[int, int]]:
    """(tokens, trainable tokens) per row; a preference row counts its longer reply."""
    measured = tokenizer.measure([_conversation(r) for r in batch])
    if any(r.rejected is not None for r in batch):
        rejected = tokenizer.measure(
            [[*r.messages, {"role": "assistant", "content": r.rejected or ""}] for r in batch]
        )
        measured = [
            (max(m[0], rj[0]), m[1]) if r.rejected is not None else m
            for r, m, rj in zip(batch, measured, rejected, strict=True)
        ]
    return measured


def _find_duplicates(state: _Pass1) -> set[int]:
    """Indices (into the kept rows) that repeat an earlier row; each gets a diagnostic."""
    if len(state.hashes) < 2:
        return set()
    hashes = np.frombuffer(state.hashes, dtype=np.uint64)
    in_order = np.sort(hashes)
    if not (in_order[1:] == in_order[:-1]).any():
        return set()  # the common case: no row repeats, no index array needed
    del in_order
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    repeats = np.nonzero(sorted_hashes[1:] == sorted_hashes[:-1])[0] + 1
    if repeats.size == 0:
        return set()
    # Each repeat's first occurrence is the start of its run in the sorted order.
    starts = np.searchsorted(sorted_hashes, sorted_hashes[repeats], side="left")
    duplicates: set[int] = set()
    for pos, start in zip(repeats.tolist(), starts.tolist(), strict=True):
        index, original = int(order[pos]), int(order[start])
        duplicates.add(index)
        state.add_diagnostic(
            Diagnostic(
                state.lines[index],
                "",
                "DUPLICATE_ROW",
                f"the row repeats line {state.lines[original]} exactly",
            )
        )
    return duplicates


def _split(
    rows_path: Path, keep: np.ndarray, spec: DatasetSpec, train_path: Path, val_path: Path
) -> np.ndarray:
    fraction = 0.0 if spec.validation_dataset else spec.validation_fraction
    in_val = np.zeros(len(keep), dtype=bool)
    with (
        rows_path.open("r", encoding="utf-8") as rows,
        train_path.open("w", encoding="utf-8") as train,
        val_path.open("w", encoding="utf-8") as val,
    ):
        for i, text in enumerate(rows):
            if not keep[i]:
                continue
            if in_validation(text.rstrip("\n"), fraction, spec.seed):
                in_val[i] = True
                val.write(text)
            else:
                train.write(text)
    kept = int(keep.sum())
    if fraction > 0 and kept >= 2 and not in_val.any():
        # A small file still gets one validation row: the last kept one.
        _move_last_row(train_path, val_path)
        in_val[np.nonzero(keep)[0][-1]] = True
    return in_val[keep] if kept else in_val


def _move_last_row(train_path: Path, val_path: Path) -> None:
    """Moves the last line of the train file to the validation file, reading only its tail."""
    with train_path.open("r+b") as fh:
        end = fh.seek(0, io.SEEK_END)
        block, tail = 1 << 16, b""
        start = end
        while start > 0:
            start = max(0, start - block)
            fh.seek(start)
            tail = fh.read(end - start)
            cut = tail.rstrip(b"\n").rfind(b"\n")
            if cut >= 0:
                start += cut + 1
                tail = tail[cut + 1 :]
                break
        fh.truncate(start)
    val_path.write_bytes(tail)


def _content_sha256(train_path: Path, val_path: Path) -> str:
    digest = hashlib.sha256()
    for label, path in ((b"train\n", train_path), (b"validation\n", val_path)):
        digest.update(label)
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _statistics(
    state: _Pass1, keep: np.ndarray, in_val: np.ndarray, tokenizer_sha256: str
) -> dict[str, Any]:
    tokens = np.frombuffer(state.tokens, dtype=np.uint32)[keep].astype(np.int64)
    trainable = np.frombuffer(state.trainable, dtype=np.uint32)[keep]
    if tokens.size == 0:
        return {}
    edges = [0, *[2**k for k in range(4, 17)]]
    top = int(tokens.max())
    while edges[-1] <= top:
        edges.append(edges[-1] * 2)
    counts, _ = np.histogram(tokens, bins=edges)
    histogram = [
        {"lower": edges[i], "upper": edges[i + 1], "count": int(c)}
        for i, c in enumerate(counts)
        if c
    ]
    return {
        "rows": int(tokens.size),
        "total_tokens": int(tokens.sum()),
        "mean_tokens": float(tokens.mean()),
        "p50_tokens": int(np.percentile(tokens, 50, method="nearest")),
        "p95_tokens": int(np.percentile(tokens, 95, method="nearest")),
        "max_tokens": top,
        "trainable_tokens": int(trainable.sum(dtype=np.int64)),
        "rows_over_limit": state.over_limit,
        "length_histogram": histogram,
        "estimated_tokens_per_epoch": int(tokens[~in_val].sum()),
        "tokenizer_sha256": tokenizer_sha256,
    }


class _ByteCounter:
    """Bytes consumed so far from a path (unknown: 0) or a tail-reading spool stream."""

    def __init__(self, source: BinaryIO | Path) -> None:
        self.source = source

    def bytes(self) -> int:
        raw = getattr(self.source, "raw", None)
        return int(getattr(raw, "offset", 0))


# --- publishing -------------------------------------------------------------------------------


def publish(
    store: ArtifactStore,
    processed: Processed,
    name: str,
    project: str,
    dataset_id: str,
    spec: DatasetSpec,
) -> dict[str, Any]:
    """Stores the canonical files under their content hash (once) and the dataset's manifest.

    Returns the artifact description recorded with the dataset."""
    result = processed.result
    blob = content_prefix(result.content_sha256)
    blob_manifest = store.read_manifest(blob)
    if blob_manifest is None:
        files = [
            store.put_file(blob + TRAIN_FILE, processed.train_path),
            store.put_file(blob + VALIDATION_FILE, processed.validation_path),
        ]
        files = [
            FileEntry(path=Path(f.path).name, sha256=f.sha256, size_bytes=f.size_bytes)
            for f in files
        ]
        blob_manifest = Manifest(
            kind="dataset-content",
            name=f"sha256:{result.content_sha256}",
            format="canonical-jsonl",
            files=files,
            attributes={
                "train_row_count": result.train_row_count,
                "validation_row_count": result.validation_row_count,
            },
        )
        store.write_manifest(blob, blob_manifest)
    manifest = Manifest(
        kind="dataset",
        name=name,
        format="canonical-jsonl",
        files=[],
        lineage={"source": spec.source, "content_sha256": result.content_sha256},
        metrics={},
        attributes={
            "content_uri": store.uri(blob),
            "content_sha256": result.content_sha256,
            "input_format": result.format,
            "row_count": result.row_count,
            "train_row_count": result.train_row_count,
            "validation_row_count": result.validation_row_count,
            "invalid_row_count": result.invalid_row_count,
            "statistics": result.statistics,
            "spec": asdict(spec),
        },
        created_at=datetime.now(UTC),
    )
    manifest_sha = store.write_manifest(dataset_prefix(project, dataset_id), manifest)
    return {
        "uri": store.uri(blob),
        "manifest_sha256": manifest_sha,
        "files": [f.model_dump() for f in blob_manifest.files],
    }


def unpublish(
    store: ArtifactStore,
    project: str,
    dataset_id: str,
    content_sha256: str,
    content_still_used: bool,
) -> None:
    store.delete_artifact(dataset_prefix(project, dataset_id))
    if content_sha256 and not content_still_used:
        store.delete_artifact(content_prefix(content_sha256))


def cleanup(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


def load_rows(store: ArtifactStore, content_sha256: str, split: str, limit: int) -> list[dict]:
    """The first `limit` canonical rows of a split, read by streaming (for previews)."""
    key = content_prefix(content_sha256) + (
        VALIDATION_FILE if split == "validation" else TRAIN_FILE
    )
    rows: list[dict] = []
    pending = b""
    for chunk in store.iter_chunks(key, chunk_size=1 << 16):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                rows.append(json.loads(line))
                if len(rows) >= limit:
                    return rows
    if pending.strip() and len(rows) < limit:
        rows.append(json.loads(pending))
    return rows
