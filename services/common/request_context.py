"""The request id of the call being served, for the calls a service makes on its behalf.

The server interceptor (services.common.interceptors) binds each call's id (its x-request-id
metadata, or a new one) with structlog.contextvars, so every log line of the call carries it;
blocking work run through asyncio.to_thread sees it too (the context is copied). A client of
another service sends it on as that call's x-request-id, so one request can be followed through
every service's log.
"""

from __future__ import annotations

import structlog

from services.common.interceptors import REQUEST_ID_HEADER


def current_request_id() -> str:
    """The id of the request being served here, or "" outside a request."""
    return str(structlog.contextvars.get_contextvars().get("request_id") or "")


def outgoing_metadata() -> list[tuple[str, str]]:
    """gRPC metadata that passes the current request id on (none outside a request)."""
    request_id = current_request_id()
    return [(REQUEST_ID_HEADER, request_id)] if request_id else []
