"""Server interceptors: request ids, access logs and the one place where errors become statuses.

Domain errors (services.common.errors) map to their canonical code with an ErrorInfo; any other
exception becomes INTERNAL with a message that names only the request id, and its traceback is
logged under that id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from services.common.errors import TuneforgeError
from services.common.status import status_for, status_for_error

REQUEST_ID_HEADER = "x-request-id"
log = structlog.get_logger("rpc")


def _request_id(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == REQUEST_ID_HEADER and value:
            return str(value)[:128]
    return uuid.uuid4().hex


class ErrorAndLoggingInterceptor(grpc.aio.ServerInterceptor):
    """Binds a request id to every log line of a call, logs the call, maps its errors."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        request_id = _request_id(handler_call_details)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, request_id),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method, request_id),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@contextlib.asynccontextmanager
async def _handled(
    context: grpc.aio.ServicerContext, method: str, request_id: str
) -> AsyncIterator[None]:
    """One call's scope: its request id on every log line, the access log, and its errors
    turned into statuses."""
    structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
    await _send_request_id(context, request_id)
    started = time.monotonic()
    code = grpc.StatusCode.OK
    try:
        yield
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    except grpc.aio.AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except Exception as exc:
        status = _status_for_exception(exc, method, request_id)
        code = status.code
        await context.abort(status.code, status.details, status.trailing_metadata)
    finally:
        _log_call(code, started)
        structlog.contextvars.unbind_contextvars("request_id", "method")


def _wrap_unary(behavior: Any, method: str, request_id: str) -> Any:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _handled(context, method, request_id):
            return await behavior(request, context)

    return wrapper


def _wrap_stream(behavior: Any, method: str, request_id: str) -> Any:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _handled(context, method, request_id):
            async for item in behavior(request, context):
                yield item

    return wrapper


async def _send_request_id(context: grpc.aio.ServicerContext, request_id: str) -> None:
    # Fails only when the handler already sent its initial metadata.
    with contextlib.suppress(Exception):
        await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))


def _status_for_exception(exc: Exception, method: str, request_id: str) -> grpc.Status:
    if isinstance(exc, NotImplementedError):
        # The generated base servicers raise this for methods a service does not offer yet.
        return status_for(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{method} is not implemented by this server version",
            "UNIMPLEMENTED",
            {"method": method},
        )
    if isinstance(exc, TuneforgeError):
        log.info(
            "rpc_error", code=exc.code, reason=exc.reason, error=exc.message, metadata=exc.metadata
        )
        return status_for_error(exc)
    log.error("rpc_internal_error", exc_info=exc)
    return status_for(
        grpc.StatusCode.INTERNAL,
        f"internal error; the server log has the details under request id {request_id}",
        "INTERNAL_ERROR",
        {"request_id": request_id},
    )


def _log_call(code: grpc.StatusCode, started: float) -> None:
    log.info("rpc", code=code.name, duration_ms=round((time.monotonic() - started) * 1000, 1))
