"""The inference service process: generation with catalog models (PyTorch + PEFT adapters, ONNX
Runtime GenAI), loaded from the object store on first use."""

from __future__ import annotations

import asyncio

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.errors import StoreUnavailable
from services.common.server import Service, Servicer, run_service
from services.common.settings import ServiceSettings, StoreSettings
from services.inference.served_models import ServedModels
from services.inference.servicer import InferenceServicer
from services.inference.settings import InferenceSettings
from tuneforge.inference.v1 import evaluation_service_pb2, inference_service_pb2
from tuneforge.inference.v1 import evaluation_service_pb2_grpc as evaluation_grpc
from tuneforge.inference.v1 import inference_service_pb2_grpc as inference_grpc

NAME = "inference"
log = structlog.get_logger(NAME)


def build_service(
    settings: ServiceSettings,
    store: StoreSettings | None = None,
    inference: InferenceSettings | None = None,
) -> Service:
    artifacts = ArtifactStore(store or StoreSettings())
    models = ServedModels(
        artifacts,
        settings.data_dir(NAME) / "models",
        inference or InferenceSettings(),
        project=settings.project,
    )

    async def start() -> None:
        # The service starts even when the store is down; loads answer UNAVAILABLE until it is up.
        try:
            await asyncio.to_thread(artifacts.ensure_bucket)
        except StoreUnavailable as exc:
            log.warning("store_unavailable_at_start", error=exc.message)

    async def stop() -> None:
        await models.close()

    return Service(
        name=NAME,
        servicers=[
            Servicer(
                inference_grpc.add_InferenceServiceServicer_to_server,
                InferenceServicer(models),
                inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
            ),
            # Evaluation (issue: evaluation service) answers UNIMPLEMENTED until it lands.
            Servicer(
                evaluation_grpc.add_EvaluationServiceServicer_to_server,
                evaluation_grpc.EvaluationServiceServicer(),  # type: ignore[abstract]
                evaluation_service_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name,
            ),
        ],
        on_start=[start],
        on_stop=[stop],
    )


def main() -> None:
    run_service(NAME, build_service)


if __name__ == "__main__":
    main()
