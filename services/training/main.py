"""The training service process: the model catalog now, fine-tuning jobs on top of it."""

from __future__ import annotations

import asyncio

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.errors import StoreUnavailable
from services.common.server import Service, Servicer, run_service
from services.common.settings import ServiceSettings, StoreSettings
from services.training.model_catalog import ModelCatalog
from services.training.model_servicer import ModelServicer
from tuneforge.training.v1 import model_service_pb2, training_service_pb2
from tuneforge.training.v1 import model_service_pb2_grpc as model_grpc
from tuneforge.training.v1 import training_service_pb2_grpc as training_grpc

NAME = "training"
log = structlog.get_logger(NAME)


def build_service(settings: ServiceSettings, store: StoreSettings | None = None) -> Service:
    artifacts = ArtifactStore(store or StoreSettings())
    catalog = ModelCatalog(artifacts, settings.data_dir(NAME) / "work")

    async def ensure_bucket() -> None:
        # The service starts even when the store is down; calls that need it answer UNAVAILABLE.
        try:
            await asyncio.to_thread(artifacts.ensure_bucket)
        except StoreUnavailable as exc:
            log.warning("store_unavailable_at_start", error=exc.message)

    return Service(
        name=NAME,
        servicers=[
            Servicer(
                model_grpc.add_ModelServiceServicer_to_server,
                ModelServicer(catalog),
                model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
            ),
            # Fine-tuning jobs (issue: training service) answer UNIMPLEMENTED until they land.
            Servicer(
                training_grpc.add_TrainingServiceServicer_to_server,
                training_grpc.TrainingServiceServicer(),  # type: ignore[abstract]
                training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
            ),
        ],
        on_start=[ensure_bucket],
    )


def main() -> None:
    run_service(NAME, build_service)


if __name__ == "__main__":
    main()
