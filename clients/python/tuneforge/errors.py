"""The one error type of the SDK: the gRPC status code, the ErrorInfo reason and its metadata."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class TuneforgeError(Exception):
    """A failed call. `code` is a grpc.StatusCode, `reason` the ErrorInfo reason (UPPER_SNAKE),
    `metadata` its dynamic values (e.g. {"field": "model_id"}), `request_id` the server's id."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        request_id: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.request_id = request_id

    @property
    def field(self) -> str:
        """The request field the error is about ("" when it is about none)."""
        return self.metadata.get("field", "")

    def __str__(self) -> str:
        head = self.code.name + (f" ({self.reason})" if self.reason else "")
        # Metadata the message already names is not repeated.
        extra = ", ".join(
            f"{k}={v}" for k, v in sorted(self.metadata.items()) if v not in self.message
        )
        return f"{head}: {self.message}" + (f" [{extra}]" if extra else "")

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code.name,
            "reason": self.reason,
            "message": self.message,
            "metadata": self.metadata,
            "request_id": self.request_id,
        }

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> TuneforgeError:
        call = error if isinstance(error, grpc.Call) else None
        code = call.code() if call else grpc.StatusCode.UNKNOWN
        message = (call.details() if call else str(error)) or code.name
        reason, metadata = "", {}
        status = rpc_status.from_call(call) if call else None
        if status is not None:
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason, metadata = info.reason, dict(info.metadata)
                    break
        request_id = ""
        if call is not None:
            for key, value in call.initial_metadata() or ():
                if key == "x-request-id":
                    request_id = str(value)
        return cls(code, message, reason, metadata, request_id)
