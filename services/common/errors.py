"""Domain errors. Core code raises these; one interceptor maps them to gRPC status codes.

Each error has a stable UPPER_SNAKE reason (see tuneforge.common.v1.ErrorReason) and metadata
with the dynamic values (the field, the line, the resource), so clients can act on them.
"""

from __future__ import annotations

from collections.abc import Mapping

ERROR_DOMAIN = "tuneforge.ai"


class TuneforgeError(Exception):
    """Base of every error a user may see. `code` is a grpc.StatusCode name."""

    code = "INTERNAL"
    default_reason = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}


class InvalidArgument(TuneforgeError):
    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        meta = dict(metadata or {})
        if field is not None:
            meta["field"] = field
        super().__init__(message, reason=reason, metadata=meta)
        self.field = field


class NotFound(TuneforgeError):
    code = "NOT_FOUND"
    default_reason = "RESOURCE_NOT_FOUND"

    def __init__(self, resource: str, message: str | None = None) -> None:
        super().__init__(message or f"{resource} not found", metadata={"resource": resource})
        self.resource = resource


class AlreadyExists(TuneforgeError):
    code = "ALREADY_EXISTS"
    default_reason = "RESOURCE_ALREADY_EXISTS"

    def __init__(self, resource: str, message: str | None = None) -> None:
        super().__init__(message or f"{resource} already exists", metadata={"resource": resource})
        self.resource = resource


class FailedPrecondition(TuneforgeError):
    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class Unavailable(TuneforgeError):
    code = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


class StoreUnavailable(Unavailable):
    """The object store did not answer within the operation's deadline."""

    default_reason = "STORE_UNAVAILABLE"


class ResourceExhausted(TuneforgeError):
    code = "RESOURCE_EXHAUSTED"
    default_reason = "QUEUE_FULL"


class Aborted(TuneforgeError):
    code = "ABORTED"
    default_reason = "ABORTED"


class DataCorrupt(TuneforgeError):
    """Stored bytes do not match their manifest."""

    code = "DATA_LOSS"
    default_reason = "ARTIFACT_CORRUPT"
