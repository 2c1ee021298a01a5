"""The training service process: the model catalog and fine-tuning jobs."""

from __future__ import annotations

import structlog

from services.common.artifact_store import ArtifactStore
from services.common.database import Database
from services.common.job_runner import JobScheduling
from services.common.job_watch import JobNotifier
from services.common.server import Service, Servicer, run_service
from services.common.settings import ServiceSettings, StoreSettings
from services.training.datasets_client import GrpcDatasetLookup
from services.training.job_records import training_job_records
from services.training.jobs import TrainingJobs
from services.training.kubernetes_launcher import KubernetesSettings
from services.training.model_catalog import ModelCatalog
from services.training.model_servicer import ModelServicer
from services.training.training_servicer import TrainingServicer
from tuneforge.training.v1 import model_service_pb2, training_service_pb2
from tuneforge.training.v1 import model_service_pb2_grpc as model_grpc
from tuneforge.training.v1 import training_service_pb2_grpc as training_grpc

NAME = "training"
SCHEDULE_EVERY_S = 1.0
log = structlog.get_logger(NAME)


def build_service(settings: ServiceSettings, store: StoreSettings | None = None) -> Service:
    store_settings = store or StoreSettings()
    artifacts = ArtifactStore(store_settings)
    data_dir = settings.data_dir(NAME)
    catalog = ModelCatalog(artifacts, data_dir / "work")
    db = Database(settings.database_url_for(NAME))
    datasets = GrpcDatasetLookup(settings.datasets_target)
    jobs = TrainingJobs(
        training_job_records(db),
        artifacts,
        store_settings,
        datasets,
        work_root=data_dir / "jobs",
        cache_dir=settings.home / "cache",
        max_concurrent=settings.max_concurrent_jobs,
        kubernetes=KubernetesSettings(),
    )
    notifier = JobNotifier()
    scheduling = JobScheduling(jobs, artifacts, notifier)

    async def stop() -> None:
        await scheduling.stop()
        datasets.close()
        db.close()

    return Service(
        name=NAME,
        servicers=[
            Servicer(
                model_grpc.add_ModelServiceServicer_to_server,
                ModelServicer(catalog),
                model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
            ),
            Servicer(
                training_grpc.add_TrainingServiceServicer_to_server,
                TrainingServicer(jobs, notifier),
                training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
            ),
        ],
        on_start=[scheduling.start],
        on_stop=[stop],
    )


def main() -> None:
    run_service(NAME, build_service)


if __name__ == "__main__":
    main()
