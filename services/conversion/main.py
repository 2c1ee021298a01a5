"""The conversion service process."""

from __future__ import annotations

from services.common.server import Service, Servicer, run_service
from services.common.settings import ServiceSettings, StoreSettings
from tuneforge.conversion.v1 import conversion_service_pb2
from tuneforge.conversion.v1 import conversion_service_pb2_grpc as conversion_grpc

NAME = "conversion"


def build_service(settings: ServiceSettings, store: StoreSettings | None = None) -> Service:
    return Service(
        name=NAME,
        servicers=[
            # Conversion jobs (issue: conversion service) answer UNIMPLEMENTED until they land.
            Servicer(
                conversion_grpc.add_ConversionServiceServicer_to_server,
                conversion_grpc.ConversionServiceServicer(),  # type: ignore[abstract]
                conversion_service_pb2.DESCRIPTOR.services_by_name["ConversionService"].full_name,
            ),
        ],
    )


def main() -> None:
    run_service(NAME, build_service)


if __name__ == "__main__":
    main()
