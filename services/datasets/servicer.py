"""gRPC DatasetService: proto <-> DatasetManager. Blocking work runs in worker threads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from services.common.errors import (
    DataCorrupt,
    FailedPrecondition,
    InvalidArgument,
)
from services.common.resource_names import parse_parent
from services.common.status import status_from_dict
from services.datasets.formats import DETECT_HEAD_BYTES
from services.datasets.manager import DatasetManager
from services.datasets.records import READY, DatasetRecord, DatasetSpec
from services.datasets.spool import Spool, SpoolAborted
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import dataset_service_pb2 as pb
from tuneforge.datasets.v1 import dataset_service_pb2_grpc as pb_grpc


def spec_from_proto(dataset: pb.Dataset, source: str) -> DatasetSpec:
    return DatasetSpec(
        display_name=dataset.display_name,
        format=""
        if dataset.format == pb.Dataset.FORMAT_UNSPECIFIED
        else pb.Dataset.Format.Name(dataset.format),
        validation_policy="SKIP_INVALID"
        if dataset.validation_policy == pb.Dataset.SKIP_INVALID
        else "STRICT",
        column_mapping=dict(dataset.column_mapping),
        model=dataset.model,
        max_seq_len=dataset.max_seq_len,
        validation_fraction=dataset.split.validation_fraction,
        seed=dataset.split.seed,
        validation_dataset=dataset.split.validation_dataset,
        source=source,
        labels=dict(dataset.labels),
    )


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def to_proto(record: DatasetRecord) -> pb.Dataset:
    spec, result = record.spec, record.result
    stats = result.statistics or {}
    artifact = result.artifact or {}
    fmt = result.format or spec.format
    return pb.Dataset(
        name=record.name,
        display_name=spec.display_name,
        state=record.state,
        format=fmt or "FORMAT_UNSPECIFIED",
        validation_policy=spec.validation_policy,
        column_mapping=spec.column_mapping,
        model=spec.model,
        max_seq_len=spec.max_seq_len,
        split=pb.SplitConfig(
            validation_fraction=spec.validation_fraction,
            seed=spec.seed,
            validation_dataset=spec.validation_dataset,
        ),
        source=spec.source,
        content_sha256=result.content_sha256,
        row_count=result.row_count,
        train_row_count=result.train_row_count,
        validation_row_count=result.validation_row_count,
        invalid_row_count=result.invalid_row_count,
        statistics=pb.DatasetStatistics(
            rows=stats.get("rows", 0),
            total_tokens=stats.get("total_tokens", 0),
            mean_tokens=stats.get("mean_tokens", 0.0),
            p50_tokens=stats.get("p50_tokens", 0),
            p95_tokens=stats.get("p95_tokens", 0),
            max_tokens=stats.get("max_tokens", 0),
            trainable_tokens=stats.get("trainable_tokens", 0),
            rows_over_limit=stats.get("rows_over_limit", 0),
            length_histogram=[pb.HistogramBucket(**b) for b in stats.get("length_histogram", [])],
            estimated_tokens_per_epoch=stats.get("estimated_tokens_per_epoch", 0),
            tokenizer_sha256=stats.get("tokenizer_sha256", ""),
        )
        if stats
        else None,
        diagnostics=[pb.Diagnostic(**d) for d in result.diagnostics],
        diagnostic_counts=result.diagnostic_counts,
        progress=pb.Progress(
            bytes_processed=record.bytes_processed,
            bytes_total=record.bytes_total,
            rows_processed=record.rows_processed,
        ),
        error=status_from_dict(result.error),
        artifact=common_pb2.ArtifactRef(
            uri=artifact.get("uri", ""),
            manifest_sha256=artifact.get("manifest_sha256", ""),
            files=[common_pb2.ArtifactFile(**f) for f in artifact.get("files", [])],
            total_size_bytes=sum(f["size_bytes"] for f in artifact.get("files", [])),
        )
        if artifact
        else None,
        create_time=_timestamp(record.create_time),
        update_time=_timestamp(record.update_time),
        labels=spec.labels,
    )


def _check_trailer(trailer: pb.UploadDatasetTrailer, spool: Spool) -> None:
    if trailer.size_bytes != spool.bytes_written:
        raise FailedPrecondition(
            f"the trailer says {trailer.size_bytes} bytes were sent; {spool.bytes_written} arrived",
            reason="UPLOAD_INTERRUPTED",
            metadata={"received": spool.bytes_written, "expected": trailer.size_bytes},
        )
    if trailer.sha256 and trailer.sha256.lower() != spool.sha256():
        raise DataCorrupt(
            "the uploaded bytes do not match the trailer's sha256",
            metadata={"expected": trailer.sha256, "received": spool.sha256()},
        )


class DatasetServicer(pb_grpc.DatasetServiceServicer):
    def __init__(self, manager: DatasetManager, spool_root: Path) -> None:
        self.manager = manager
        self.spool_root = spool_root

    async def UploadDataset(
        self,
        request_iterator: AsyncIterator[pb.UploadDatasetRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.Dataset:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument("the first message must carry the header", field="header")
        header = first.header
        project = parse_parent(header.parent, "header.parent")
        spec = spec_from_proto(header.dataset, f"upload:{header.file_name}")
        record, retried = await asyncio.to_thread(
            self.manager.begin,
            project,
            header.dataset_id,
            spec,
            header.request_id,
            header.size_bytes,
        )
        if retried:
            async for _ in request_iterator:
                pass
            return to_proto(record)

        spool = Spool(self.spool_root / f"{record.dataset_id}-{uuid.uuid4().hex[:8]}.upload")
        reader = spool.reader()

        def run() -> DatasetRecord:
            try:
                head = spool.head(DETECT_HEAD_BYTES)  # for format detection
                if (
                    spec.format == "PARQUET"
                    or header.file_name.endswith((".parquet", ".pq"))
                    or (head.startswith(b"PAR1"))
                ):
                    # Parquet keeps its schema at the end of the file: read it once complete.
                    spool.wait_closed()
                    return self.manager.run(record, spool.path, header.file_name)
                return self.manager.run(record, reader, header.file_name, head=head)
            except SpoolAborted:
                # The client went away or sent a bad message: nothing is kept.
                self.manager.discard(record.name)
                raise

        runner = asyncio.ensure_future(asyncio.to_thread(run))
        finished = False
        trailer: pb.UploadDatasetTrailer | None = None
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("payload")
                if kind not in ("chunk", "trailer") or trailer is not None:
                    raise InvalidArgument(
                        "after the header only chunks may follow, then at most one trailer",
                        field=kind or "payload",
                    )
                if kind == "trailer":
                    trailer = message.trailer
                    _check_trailer(trailer, spool)
                    continue
                await asyncio.to_thread(spool.write, message.chunk)
                if runner.done():
                    break
            if context.cancelled():
                raise asyncio.CancelledError()
            expected = header.size_bytes or (trailer.size_bytes if trailer else 0)
            if expected and not runner.done() and spool.bytes_written != expected:
                raise FailedPrecondition(
                    f"the upload ended after {spool.bytes_written} of {expected} bytes",
                    reason="UPLOAD_INTERRUPTED",
                    metadata={"received": spool.bytes_written, "expected": expected},
                )
            spool.close()
            done = await runner
            finished = True
            return to_proto(done)
        finally:
            if not finished:
                spool.abort()
                await asyncio.shield(self._forget(runner, record.name))
            reader.close()
            spool.path.unlink(missing_ok=True)

    async def _forget(self, runner: asyncio.Future[DatasetRecord], name: str) -> None:
        """After a cancelled or broken upload, removes whatever processing made of it: a client
        that cancels may have sent the whole file just before (gRPC ends the request stream
        normally on cancel), so even a READY result is taken back."""
        (outcome,) = await asyncio.gather(runner, return_exceptions=True)
        if isinstance(outcome, DatasetRecord) and outcome.state == READY:
            await asyncio.to_thread(self.manager.delete, name)

    async def CreateDataset(
        self, request: pb.CreateDatasetRequest, context: grpc.aio.ServicerContext
    ) -> pb.Dataset:
        project = parse_parent(request.parent)
        if not request.source_uri.startswith("s3://"):
            raise InvalidArgument("source_uri must be an s3:// URI", field="source_uri")
        spec = spec_from_proto(request.dataset, request.source_uri)
        record, retried = await asyncio.to_thread(
            self.manager.begin, project, request.dataset_id, spec, request.request_id
        )
        if retried:
            return to_proto(record)
        return to_proto(await asyncio.to_thread(self.manager.run_from_store, record))

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> pb.Dataset:
        return to_proto(await asyncio.to_thread(self.manager.get, request.name))

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDatasetsResponse:
        project = parse_parent(request.parent)
        records, token = await asyncio.to_thread(
            self.manager.list, project, request.page_size, request.page_token, request.filter
        )
        return pb.ListDatasetsResponse(
            datasets=[to_proto(r) for r in records], next_page_token=token
        )

    async def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await asyncio.to_thread(self.manager.delete, request.name)
        return empty_pb2.Empty()

    async def PreviewDataset(
        self, request: pb.PreviewDatasetRequest, context: grpc.aio.ServicerContext
    ) -> pb.PreviewDatasetResponse:
        if request.row_count < 0 or request.row_count > 100:
            raise InvalidArgument("row_count must lie in [0, 100]", field="row_count")
        rows = await asyncio.to_thread(
            self.manager.preview, request.name, request.row_count, request.split, request.model
        )
        return pb.PreviewDatasetResponse(
            rows=[
                pb.PreviewRow(
                    line=r.line,
                    rendered_text=r.text,
                    trained_spans=[pb.TextSpan(start=s, end=e) for s, e in r.spans],
                    token_count=r.tokens,
                    trainable_token_count=r.trainable_tokens,
                )
                for r in rows
            ]
        )
