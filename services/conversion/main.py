"""The conversion service process: merge adapters, export ONNX, quantize, check parity."""

from __future__ import annotations

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.database import Database
from services.common.job_runner import JobScheduling
from services.common.job_watch import JobNotifier
from services.common.server import Service, Servicer, run_service
from services.common.settings import ServiceSettings, StoreSettings
from services.conversion.jobs import ConversionJobs
from services.conversion.records import conversion_job_records
from services.conversion.servicer import ConversionServicer
from tuneforge.conversion.v1 import conversion_service_pb2
from tuneforge.conversion.v1 import conversion_service_pb2_grpc as conversion_grpc

NAME = "conversion"
SCHEDULE_EVERY_S = 1.0
log = structlog.get_logger(NAME)


def build_service(settings: ServiceSettings, store: StoreSettings | None = None) -> Service:
    store_settings = store or StoreSettings()
    artifacts = ArtifactStore(store_settings)
    db = Database(settings.database_url_for(NAME))
    jobs = ConversionJobs(
        conversion_job_records(db),
        artifacts,
        store_settings,
        work_root=settings.data_dir(NAME) / "jobs",
        cache_dir=settings.home / "cache",
        max_concurrent=settings.max_concurrent_jobs,
    )
    notifier = JobNotifier()
    scheduling = JobScheduling(jobs, artifacts, notifier)

    async def stop() -> None:
        await scheduling.stop()
        db.close()

    return Service(
        name=NAME,
        servicers=[
            Servicer(
                conversion_grpc.add_ConversionServiceServicer_to_server,
                ConversionServicer(jobs, notifier),
                conversion_service_pb2.DESCRIPTOR.services_by_name["ConversionService"].full_name,
            ),
        ],
        on_start=[scheduling.start],
        on_stop=[stop],
    )


def main() -> None:
    run_service(NAME, build_service)


if __name__ == "__main__":
    main()
