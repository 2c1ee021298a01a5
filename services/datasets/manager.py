"""Dataset lifecycle: create a record, process an input into a published dataset, get, list,
delete, preview, and recover after a restart. Blocking; the servicer calls it in threads."""

from __future__ import annotations

import builtins
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.chat_template import ChatTokenizer
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    TuneforgeError,
)
from services.common.model_files import TOKENIZER_AND_CONFIG, ModelFileCache
from services.common.resource_names import (
    check_id,
    cut_page,
    decode_page_token,
    page_size,
    parse_filter,
    parse_name,
)
from services.datasets import ingest
from services.datasets.formats import DatasetFormat
from services.datasets.records import (
    FAILED,
    PROCESSING,
    READY,
    DatasetRecord,
    DatasetRecords,
    DatasetResult,
    DatasetSpec,
)
from services.datasets.spool import SpoolAborted

log = structlog.get_logger("datasets")
POLICIES = {"STRICT", "SKIP_INVALID"}


@dataclass(frozen=True)
class PreviewRow:
    line: int
    text: str
    spans: list[tuple[int, int]]
    tokens: int
    trainable_tokens: int


class DatasetManager:
    def __init__(
        self,
        store: ArtifactStore,
        records: DatasetRecords,
        models: ModelFileCache,
        work_root: Path,
    ) -> None:
        self.store = store
        self.records = records
        self.models = models
        self.work_root = work_root
        self._tokenizers: dict[str, ChatTokenizer] = {}
        self._lock = threading.Lock()

    # --- create ------------------------------------------------------------------------------

    def begin(
        self,
        project: str,
        dataset_id: str,
        spec: DatasetSpec,
        request_id: str = "",
        bytes_total: int = 0,
    ) -> tuple[DatasetRecord, bool]:
        """Creates the PROCESSING record. Returns (record, True) for a retried request_id."""
        existing = self.records.find_by_request_id(project, request_id)
        if existing is not None:
            return existing, True
        dataset_id = check_id(dataset_id, "dataset_id") if dataset_id else _new_id()
        self.check_spec(spec)
        name = f"projects/{project}/datasets/{dataset_id}"
        record = DatasetRecord(
            name=name,
            project=project,
            dataset_id=dataset_id,
            state=PROCESSING,
            spec=spec,
            result=DatasetResult(),
            request_id=request_id,
            bytes_total=bytes_total,
        )
        try:
            return self.records.create(record), False
        except AlreadyExists:
            raise AlreadyExists(name) from None

    def check_spec(self, spec: DatasetSpec) -> None:
        if spec.format and spec.format not in DatasetFormat.__members__:
            raise InvalidArgument(f"unknown format {spec.format!r}", field="dataset.format")
        if spec.validation_policy not in POLICIES:
            raise InvalidArgument(
                f"validation_policy must be one of {sorted(POLICIES)}",
                field="dataset.validation_policy",
            )
        if not 0.0 <= spec.validation_fraction <= 0.5:
            raise InvalidArgument(
                f"validation_fraction must lie in [0, 0.5], got {spec.validation_fraction}",
                field="dataset.split.validation_fraction",
            )
        if spec.validation_fraction and spec.validation_dataset:
            raise InvalidArgument(
                "give either a validation_fraction or a validation_dataset, not both",
                field="dataset.split.validation_dataset",
            )
        if spec.max_seq_len < 0:
            raise InvalidArgument("max_seq_len must not be negative", field="dataset.max_seq_len")
        if spec.max_seq_len and not spec.model:
            raise InvalidArgument(
                "max_seq_len needs a model whose tokenizer counts the tokens",
                field="dataset.model",
            )
        if spec.model:
            parse_name(spec.model, "models", "dataset.model")
            self.tokenizer(spec.model)  # the model exists and has a usable tokenizer
        if spec.validation_dataset:
            parse_name(spec.validation_dataset, "datasets", "dataset.split.validation_dataset")
            other = self.records.get(spec.validation_dataset)
            if other.state != READY:
                raise FailedPrecondition(
                    f"validation dataset {other.name} is {other.state}, not READY",
                    reason="DATASET_NOT_READY",
                    metadata={"dataset": other.name, "state": other.state},
                )

    def tokenizer(self, model: str, field: str = "dataset.model") -> tuple[ChatTokenizer, str]:
        """The model's tokenizer (cached per manifest version) and its catalog sha256."""
        folder, manifest = self.models.fetch(model, TOKENIZER_AND_CONFIG, field=field)
        key = manifest.sha256()
        with self._lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = ChatTokenizer.from_dir(folder)
            return self._tokenizers[key], str(manifest.attributes.get("tokenizer_sha256", ""))

    def run(
        self,
        record: DatasetRecord,
        source: BinaryIO | Path,
        file_name: str,
        head: bytes | None = None,
    ) -> DatasetRecord:
        """Processes and publishes; the record ends READY, or FAILED (and the error is raised)."""
        work = self.work_root / f"{record.dataset_id}-{uuid.uuid4().hex[:8]}"
        log.info("dataset_processing", dataset=record.name, source=record.spec.source)
        try:
            tokenizer, tokenizer_sha = (
                self.tokenizer(record.spec.model) if record.spec.model else (None, "")
            )

            def progress(bytes_done: int, rows: int) -> None:
                self.records.update_progress(record.name, bytes_done, rows, record.bytes_total)

            processed = ingest.process(
                source,
                record.spec,
                file_name,
                tokenizer,
                work,
                progress,
                head=head,
                tokenizer_sha256=tokenizer_sha,
            )
            artifact = ingest.publish(
                self.store,
                processed,
                record.name,
                record.project,
                record.dataset_id,
                record.spec,
            )
            processed.result.artifact = artifact
            done = self.records.finish(record.name, READY, processed.result)
            log.info("dataset_ready", dataset=record.name, rows=processed.result.row_count)
            return done
        except ingest.DatasetInvalid as exc:
            exc.metadata["dataset"] = record.name
            exc.result.error = _error_dict(exc)
            self.records.finish(record.name, FAILED, exc.result)
            log.info("dataset_rejected", dataset=record.name, problems=exc.metadata)
            raise
        except TuneforgeError as exc:
            self.records.finish(record.name, FAILED, DatasetResult(error=_error_dict(exc)))
            raise
        except SpoolAborted:
            self.fail(
                record.name,
                FailedPrecondition(
                    "the upload ended before the end of the file", reason="UPLOAD_INTERRUPTED"
                ),
            )
            raise
        except BaseException as exc:
            self.records.finish(
                record.name,
                FAILED,
                DatasetResult(
                    error={
                        "code": "INTERNAL",
                        "reason": "INTERNAL_ERROR",
                        "message": "processing failed unexpectedly",
                        "metadata": {},
                    }
                ),
            )
            if isinstance(exc, Exception):
                log.exception("dataset_failed", dataset=record.name)
            raise
        finally:
            ingest.cleanup(work)

    def run_from_store(self, record: DatasetRecord) -> DatasetRecord:
        """Processes an input that is already in the object store (CreateDataset)."""
        bucket, key = self.store.parse_uri(record.spec.source)
        if bucket != self.store.bucket:
            raise InvalidArgument(
                f"source_uri must point into the bucket {self.store.bucket!r}",
                field="source_uri",
            )
        local = self.work_root / f"{record.dataset_id}-{uuid.uuid4().hex[:8]}.input"
        try:
            self.store.get_file(key, local)
            self.records.update_progress(record.name, 0, 0, local.stat().st_size)
            record.bytes_total = local.stat().st_size
            return self.run(record, local, Path(key).name)
        finally:
            local.unlink(missing_ok=True)

    def fail(self, name: str, error: TuneforgeError) -> None:
        self.records.finish(name, FAILED, DatasetResult(error=_error_dict(error)))

    def discard(self, name: str) -> None:
        """Removes the record of an upload the client abandoned (nothing was published)."""
        self.records.delete(name)

    # --- read --------------------------------------------------------------------------------

    def get(self, name: str) -> DatasetRecord:
        parse_name(name, "datasets")
        return self.records.get(name)

    def list(
        self, project: str, requested_size: int, token: str, filter_text: str
    ) -> tuple[builtins.list[DatasetRecord], str]:
        size = page_size(requested_size)
        terms = parse_filter(filter_text, {"state"})
        state = terms.get("state")
        if state and state not in (PROCESSING, READY, FAILED):
            raise InvalidArgument(f"unknown state {state!r}", field="filter")
        after = str(decode_page_token(token).get("after", ""))
        found = self.records.list(project, after, size + 1, state)
        return cut_page(found, size, lambda item: item.dataset_id)

    def delete(self, name: str) -> None:
        record = self.get(name)
        if record.state == PROCESSING:
            raise FailedPrecondition(
                f"{name} is still PROCESSING",
                reason="JOB_STATE_CONFLICT",
                metadata={"state": PROCESSING},
            )
        sha = record.result.content_sha256 if record.state == READY else ""
        self.records.delete(name)
        still_used = bool(sha) and self.records.count_using_content(sha) > 0
        ingest.unpublish(self.store, record.project, record.dataset_id, sha, still_used)
        log.info("dataset_deleted", dataset=name)

    def preview(self, name: str, count: int, split: str, model: str) -> builtins.list[PreviewRow]:
        record = self.get(name)
        if record.state != READY:
            raise FailedPrecondition(
                f"{name} is {record.state}, not READY",
                reason="DATASET_NOT_READY",
                metadata={"dataset": name, "state": record.state},
            )
        if split not in ("", "train", "validation"):
            raise InvalidArgument("split must be 'train' or 'validation'", field="split")
        model = model or record.spec.model
        if not model:
            raise InvalidArgument(
                "a model is needed to render the rows through its chat template", field="model"
            )
        tokenizer, _ = self.tokenizer(model, field="model")
        rows = ingest.load_rows(
            self.store, record.result.content_sha256, split or "train", count or 5
        )
        conversations = [_conversation(r) for r in rows]
        measured = tokenizer.measure(conversations)
        preview = []
        for conv, (tokens, trainable) in zip(conversations, measured, strict=True):
            text, spans = tokenizer.render_with_spans(conv)
            preview.append(PreviewRow(0, text, spans, tokens, trainable))
        return preview

    # --- restart -----------------------------------------------------------------------------

    def recover(self) -> builtins.list[DatasetRecord]:
        """Datasets left PROCESSING by a previous process: imports from the store are returned
        to be run again; uploads (whose stream is gone) end FAILED with a clear reason."""
        again = []
        for record in self.records.list_by_state(PROCESSING):
            if record.spec.source.startswith("s3://"):
                again.append(record)
            else:
                self.fail(
                    record.name,
                    FailedPrecondition(
                        "the datasets service restarted while this upload was processing; "
                        "upload the file again",
                        reason="UPLOAD_INTERRUPTED",
                    ),
                )
        return again


def _conversation(row: dict[str, Any]) -> list[dict[str, Any]]:
    messages = list(row.get("messages", []))
    if row.get("chosen") is not None:
        messages.append({"role": "assistant", "content": row["chosen"]})
    return messages


def _error_dict(exc: TuneforgeError) -> dict[str, Any]:
    return {
        "code": exc.code,
        "reason": exc.reason,
        "message": exc.message,
        "metadata": exc.metadata,
    }


def _new_id() -> str:
    return "ds-" + uuid.uuid4().hex[:12]
