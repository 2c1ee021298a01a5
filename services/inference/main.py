"""The inference service process: generation with catalog models (PyTorch + PEFT adapters, ONNX
Runtime GenAI), loaded from the object store on first use; evaluations of models on datasets."""

from __future__ import annotations

import asyncio
import sys

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.database import Database
from services.common.errors import StoreUnavailable
from services.common.server import Service, Servicer, run_service
from services.common.settings import ServiceSettings, StoreSettings
from services.inference.evaluation import Evaluations
from services.inference.evaluation_records import EvaluationRecords
from services.inference.evaluation_servicer import EvaluationServicer
from services.inference.open_inference import OpenInferenceServicer
from services.inference.served_models import ServedModels
from services.inference.servicer import InferenceServicer
from services.inference.settings import InferenceSettings
from tuneforge.inference.v1 import evaluation_service_pb2, inference_service_pb2
from tuneforge.inference.v1 import evaluation_service_pb2_grpc as evaluation_grpc
from tuneforge.inference.v1 import inference_service_pb2_grpc as inference_grpc
from tuneforge.oip.v2 import open_inference_pb2
from tuneforge.oip.v2 import open_inference_pb2_grpc as oip_grpc

NAME = "inference"
log = structlog.get_logger(NAME)


def build_service(
    settings: ServiceSettings,
    store: StoreSettings | None = None,
    inference: InferenceSettings | None = None,
) -> Service:
    artifacts = ArtifactStore(store or StoreSettings())
    inference_settings = inference or InferenceSettings()
    sys.setswitchinterval(inference_settings.switch_interval_ms / 1000)  # process-wide
    models = ServedModels(
        artifacts,
        settings.data_dir(NAME) / "models",
        inference_settings,
        project=settings.project,
    )
    db = Database(settings.database_url_for(NAME))
    evaluations = Evaluations(
        EvaluationRecords(db),
        artifacts,
        models,
        concurrency=inference_settings.max_active_requests,
    )

    async def start() -> None:
        # The service starts even when the store is down; loads answer UNAVAILABLE until it is up.
        try:
            await asyncio.to_thread(artifacts.ensure_bucket)
        except StoreUnavailable as exc:
            log.warning("store_unavailable_at_start", error=exc.message)
        await evaluations.recover()

    async def stop() -> None:
        # Interrupted evaluations stay RUNNING in the database and run again on the next start.
        await evaluations.close()
        await models.close()
        db.close()

    return Service(
        name=NAME,
        servicers=[
            Servicer(
                inference_grpc.add_InferenceServiceServicer_to_server,
                InferenceServicer(models),
                inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
            ),
            # KServe V2 / Open Inference Protocol clients, on the same port.
            Servicer(
                oip_grpc.add_GRPCInferenceServiceServicer_to_server,
                OpenInferenceServicer(models),
                open_inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
            ),
            Servicer(
                evaluation_grpc.add_EvaluationServiceServicer_to_server,
                EvaluationServicer(evaluations),
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
