"""gRPC ModelService: proto <-> ModelCatalog. Blocking catalog calls run in worker threads."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from services.common.errors import InvalidArgument
from services.common.resource_names import ResourceName, check_id, parse_name, parse_parent
from services.training.model_catalog import ModelCatalog, ModelSource, StoredModel
from tuneforge.common.v1 import common_pb2
from tuneforge.training.v1 import model_service_pb2 as pb
from tuneforge.training.v1 import model_service_pb2_grpc as pb_grpc


def model_to_proto(stored: StoredModel) -> pb.Model:
    m = stored.manifest
    a = m.attributes
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(m.created_at)
    lineage = m.lineage
    return pb.Model(
        name=m.name,
        display_name=str(a.get("display_name", "")),
        kind=str(a.get("model_kind", "BASE")),
        architecture=str(a.get("architecture", "")),
        model_type=str(a.get("model_type", "")),
        parameter_count=int(a.get("parameter_count", 0)),
        dtype=str(a.get("dtype", "")),
        format=m.format,
        base_model=str(a.get("base_model", "")),
        tokenizer_sha256=str(a.get("tokenizer_sha256", "")),
        chat_template_sha256=str(a.get("chat_template_sha256", "")),
        vocab_size=int(a.get("vocab_size", 0)),
        context_length=int(a.get("context_length", 0)),
        source=str(a.get("source", "")),
        artifact=common_pb2.ArtifactRef(
            uri=stored.uri,
            manifest_sha256=stored.manifest_sha256,
            files=[
                common_pb2.ArtifactFile(path=f.path, sha256=f.sha256, size_bytes=f.size_bytes)
                for f in m.files
            ],
            total_size_bytes=sum(f.size_bytes for f in m.files),
        ),
        lineage=common_pb2.Lineage(
            base_model=str(lineage.get("base_model", "")),
            base_model_sha256=str(lineage.get("base_model_sha256", "")),
            training_dataset=str(lineage.get("training_dataset", "")),
            training_dataset_sha256=str(lineage.get("training_dataset_sha256", "")),
            training_job=str(lineage.get("training_job", "")),
            conversion_job=str(lineage.get("conversion_job", "")),
            tokenizer_sha256=str(lineage.get("tokenizer_sha256", "")),
            chat_template_sha256=str(lineage.get("chat_template_sha256", "")),
            config_json=str(lineage.get("config_json", "")),
            seed=int(str(lineage.get("seed", 0) or 0)),
        ),
        metrics=m.metrics,
        precision=str(a.get("precision", "")),
        method=str(a.get("method", "")),
        create_time=created,
        labels={str(k): str(v) for k, v in dict(a.get("labels") or {}).items()},
    )


# Presigned download URLs: valid an hour by default, a week at most (S3's own limit).
DEFAULT_DOWNLOAD_S = 3600
MAX_DOWNLOAD_S = 7 * 24 * 3600


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(self, catalog: ModelCatalog) -> None:
        self.catalog = catalog

    async def ImportModel(
        self, request: pb.ImportModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.Model:
        project = parse_parent(request.parent)
        model_id = check_id(request.model_id, "model_id")
        kind = request.WhichOneof("source")
        if kind is None:
            raise InvalidArgument(
                "a source is required: hf_dir, gguf_file, preset or uri",
                field="source",
                reason="MODEL_SOURCE_INVALID",
            )
        value = getattr(request, kind)
        if not value:
            raise InvalidArgument(
                f"{kind} must not be empty", field=kind, reason="MODEL_SOURCE_INVALID"
            )
        stored = await asyncio.to_thread(
            self.catalog.import_model,
            ResourceName(project, "models", model_id),
            ModelSource(kind, value),
            display_name=request.display_name,
            labels=dict(request.labels),
            request_id=request.request_id,
            seed=request.seed,
        )
        return model_to_proto(stored)

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.Model:
        name = parse_name(request.name, "models")
        return model_to_proto(await asyncio.to_thread(self.catalog.get, name))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        project = parse_parent(request.parent)
        models, token = await asyncio.to_thread(
            self.catalog.list, project, request.page_size, request.page_token, request.filter
        )
        return pb.ListModelsResponse(
            models=[model_to_proto(m) for m in models], next_page_token=token
        )

    async def DeleteModel(
        self, request: pb.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        name = parse_name(request.name, "models")
        await asyncio.to_thread(self.catalog.delete, name)
        return empty_pb2.Empty()

    async def GetModelDownload(
        self, request: pb.GetModelDownloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelDownload:
        name = parse_name(request.name, "models")
        seconds = request.expires_in_seconds or DEFAULT_DOWNLOAD_S
        if not 0 < seconds <= MAX_DOWNLOAD_S:
            raise InvalidArgument(
                f"expires_in_seconds must be in 1..{MAX_DOWNLOAD_S}", field="expires_in_seconds"
            )
        expires = timedelta(seconds=seconds)
        issued = datetime.now(UTC)
        manifest, urls = await asyncio.to_thread(self.catalog.download_urls, name, expires)
        expire_time = timestamp_pb2.Timestamp()
        expire_time.FromDatetime(issued + expires)
        return pb.ModelDownload(
            model=str(name),
            manifest_sha256=manifest.sha256(),
            files=[
                pb.DownloadFile(
                    path=entry.path, sha256=entry.sha256, size_bytes=entry.size_bytes, url=url
                )
                for entry, url in urls
            ],
            expire_time=expire_time,
        )
