"""The inference service process."""

from __future__ import annotations

from services.common.server import Service, Servicer, run_service
from services.common.settings import ServiceSettings, StoreSettings
from tuneforge.inference.v1 import evaluation_service_pb2, inference_service_pb2
from tuneforge.inference.v1 import evaluation_service_pb2_grpc as evaluation_grpc
from tuneforge.inference.v1 import inference_service_pb2_grpc as inference_grpc

NAME = "inference"


def build_service(settings: ServiceSettings, store: StoreSettings | None = None) -> Service:
    return Service(
        name=NAME,
        servicers=[
            # Generation and evaluation (issues: inference service, end to end) answer
            # UNIMPLEMENTED until they land.
            Servicer(
                inference_grpc.add_InferenceServiceServicer_to_server,
                inference_grpc.InferenceServiceServicer(),  # type: ignore[abstract]
                inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
            ),
            Servicer(
                evaluation_grpc.add_EvaluationServiceServicer_to_server,
                evaluation_grpc.EvaluationServiceServicer(),  # type: ignore[abstract]
                evaluation_service_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name,
            ),
        ],
    )


def main() -> None:
    run_service(NAME, build_service)


if __name__ == "__main__":
    main()
