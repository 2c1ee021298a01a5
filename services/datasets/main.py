"""The datasets service process."""

from __future__ import annotations

from services.common.server import Service, Servicer, run_service
from services.common.settings import ServiceSettings, StoreSettings
from tuneforge.datasets.v1 import dataset_service_pb2
from tuneforge.datasets.v1 import dataset_service_pb2_grpc as datasets_grpc

NAME = "datasets"


def build_service(settings: ServiceSettings, store: StoreSettings | None = None) -> Service:
    return Service(
        name=NAME,
        servicers=[
            # Ingestion (issue: dataset ingestion service) answers UNIMPLEMENTED until it lands.
            Servicer(
                datasets_grpc.add_DatasetServiceServicer_to_server,
                datasets_grpc.DatasetServiceServicer(),  # type: ignore[abstract]
                dataset_service_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
            ),
        ],
    )


def main() -> None:
    run_service(NAME, build_service)


if __name__ == "__main__":
    main()
