"""The datasets service process."""

from __future__ import annotations

import asyncio

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.database import Database
from services.common.errors import StoreUnavailable, TuneforgeError
from services.common.model_files import ModelFileCache
from services.common.server import Service, Servicer, run_service
from services.common.settings import ServiceSettings, StoreSettings
from services.datasets.manager import DatasetManager
from services.datasets.records import DatasetRecord, DatasetRecords
from services.datasets.servicer import DatasetServicer
from tuneforge.datasets.v1 import dataset_service_pb2
from tuneforge.datasets.v1 import dataset_service_pb2_grpc as datasets_grpc

NAME = "datasets"
log = structlog.get_logger(NAME)


def build_service(settings: ServiceSettings, store: StoreSettings | None = None) -> Service:
    data_dir = settings.data_dir(NAME)
    artifacts = ArtifactStore(store or StoreSettings())
    db = Database(settings.database_url_for(NAME))
    manager = DatasetManager(
        artifacts,
        DatasetRecords(db),
        ModelFileCache(artifacts, data_dir / "model-cache"),
        data_dir / "work",
    )
    background: set[asyncio.Task[object]] = set()

    async def start() -> None:
        try:
            await asyncio.to_thread(artifacts.ensure_bucket)
        except StoreUnavailable as exc:
            log.warning("store_unavailable_at_start", error=exc.message)
        for record in await asyncio.to_thread(manager.recover):
            log.info("dataset_resumed", dataset=record.name)
            task = asyncio.create_task(_resume(manager, record))
            background.add(task)
            task.add_done_callback(background.discard)

    async def stop() -> None:
        db.close()

    return Service(
        name=NAME,
        servicers=[
            Servicer(
                datasets_grpc.add_DatasetServiceServicer_to_server,
                DatasetServicer(manager, data_dir / "uploads"),
                dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
            ),
        ],
        on_start=[start],
        on_stop=[stop],
    )


async def _resume(manager: DatasetManager, record: DatasetRecord) -> None:
    try:
        await asyncio.to_thread(manager.run_from_store, record)
    except TuneforgeError as exc:
        log.info("dataset_resume_failed", error=exc.message)


def main() -> None:
    run_service(NAME, build_service)


if __name__ == "__main__":
    main()
