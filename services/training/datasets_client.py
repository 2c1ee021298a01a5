"""The datasets service as the training service sees it: a gRPC client with a deadline, retries
of UNAVAILABLE, and the caller's request id passed on.

A datasets service that is briefly away (restarting, rolled out) is waited for: calls wait for
the channel to connect (waitForReady) and are retried by gRPC when the service answers
UNAVAILABLE (e.g. while it drains), all within the call's deadline; past it the call fails with
UNAVAILABLE, naming the datasets service."""

from __future__ import annotations

import json

import grpc

from services.common.errors import NotFound, TuneforgeError, Unavailable
from services.common.request_context import outgoing_metadata
from services.training.jobs import DatasetInfo
from tuneforge.datasets.v1 import dataset_service_pb2 as pb
from tuneforge.datasets.v1 import dataset_service_pb2_grpc as pb_grpc

RETRY_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "tuneforge.datasets.v1.DatasetService"}],
                "waitForReady": True,
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


CHANNEL_OPTIONS = [
    ("grpc.service_config", RETRY_CONFIG),
    ("grpc.enable_retries", 1),
    # Reconnect soon after the service comes back (gRPC's default starts at 1 s, up to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class GrpcDatasetLookup:
    def __init__(self, target: str, timeout_s: float = 10.0) -> None:
        self.target = target
        # The deadline of one lookup, retries and waiting for a connection included.
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.DatasetServiceStub(self._channel)

    def get(self, name: str) -> DatasetInfo:
        try:
            ds = self._stub.GetDataset(
                pb.GetDatasetRequest(name=name),
                timeout=self.timeout_s,
                metadata=outgoing_metadata(),
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(name) from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(
                    f"the datasets service at {self.target} did not answer within "
                    f"{self.timeout_s:g}s ({code.name})",
                    metadata={"service": "datasets"},
                ) from None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise TuneforgeError(f"the datasets service answered {code.name}: {details}") from None
        stats = ds.statistics
        return DatasetInfo(
            name=ds.name,
            state=pb.Dataset.State.Name(ds.state),
            content_sha256=ds.content_sha256,
            train_rows=ds.train_row_count,
            validation_rows=ds.validation_row_count,
            max_tokens=stats.max_tokens,
            p95_tokens=stats.p95_tokens,
            tokens_per_epoch=stats.estimated_tokens_per_epoch,
        )

    def close(self) -> None:
        self._channel.close()
