"""Container health check: exits 0 when the gRPC health service at ADDRESS answers SERVING.

    python /opt/tuneforge/grpc_health_check.py 127.0.0.1:50051 [SERVICE]

Used by compose (Kubernetes uses its native gRPC probe instead). SERVICE defaults to "", the
overall status every tuneforge server sets; it turns NOT_SERVING as soon as a drain starts.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    address, service = argv[1], argv[2] if len(argv) == 3 else ""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3
            )
    except grpc.RpcError as exc:
        print(f"{address}: {exc.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
