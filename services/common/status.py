"""Conversion of domain errors to gRPC statuses carrying google.rpc.ErrorInfo."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import ERROR_DOMAIN, TuneforgeError


def status_for(
    code: grpc.StatusCode, message: str, reason: str, metadata: dict[str, str]
) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    proto = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return rpc_status.to_status(proto)


def status_for_error(error: TuneforgeError) -> grpc.Status:
    return status_for(grpc.StatusCode[error.code], error.message, error.reason, error.metadata)


def error_status_proto(error: TuneforgeError) -> status_pb2.Status:
    """A google.rpc.Status for a resource's `error` field (e.g. a FAILED job)."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    code = getattr(code_pb2, error.code, code_pb2.INTERNAL)
    return status_pb2.Status(code=code, message=error.message, details=[detail])


def status_from_dict(error: dict[str, Any]) -> status_pb2.Status | None:
    """A google.rpc.Status from a stored error ({code, reason, message, metadata})."""
    if not error:
        return None
    info = error_details_pb2.ErrorInfo(
        reason=error.get("reason", ""),
        domain=ERROR_DOMAIN,
        metadata={k: str(v) for k, v in error.get("metadata", {}).items()},
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    code = getattr(code_pb2, error.get("code", "INTERNAL"), code_pb2.INTERNAL)
    return status_pb2.Status(code=code, message=error.get("message", ""), details=[detail])
