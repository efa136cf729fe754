"""The pipeline of the plain HTTP routes (downloads, uploads): the same pieces tool calls use.

`route()` wraps a handler with what every call gets: a request id and log context, one JSON log
line, latency and status metrics, and every error rendered as its JSON wire form with the HTTP
status its class names (`errors.py`). Identity comes from `caller_from_request` (the verified
bearer token) and access from `auth.access.authorize`, as for tools.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from panaversity_fs.app.middleware.errors import wire_error
from panaversity_fs.app.resources import Resources, ServerState
from panaversity_fs.errors import PanaversityFSError, Unauthenticated
from panaversity_fs.identity import Caller
from panaversity_fs.logs import current_request_id, request_context
from panaversity_fs.operation import Operation

logger = logging.getLogger("panaversity_fs.routes")

Handler = Callable[[Request, Resources], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def error_response(error: PanaversityFSError) -> JSONResponse:
    """`error`'s JSON wire form with its HTTP status (and `Retry-After`, `WWW-Authenticate`)."""
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(error.to_dict(), status_code=error.http_status, headers=headers)


def route(state: ServerState, name: str, handler: Handler) -> Endpoint:
    """`handler` as an endpoint of the route called `name` (in logs and metrics)."""

    async def endpoint(request: Request) -> Response:
        token = request_context.set({"request_id": uuid.uuid4().hex, "route": name})
        started = time.perf_counter()
        response: Response | None = None
        try:
            try:
                response = await handler(request, state.require())
            except Exception as error:
                response = error_response(wire_error(error))
            return response
        finally:
            elapsed = time.perf_counter() - started
            status = response.status_code if response is not None else 499
            resources = state.resources
            if resources is not None:
                resources.metrics.route_duration.labels(name).observe(elapsed)
                resources.metrics.route_total.labels(name, str(status)).inc()
            logger.info("route call", extra={"status": status, "duration_ms": round(elapsed * 1000, 2)})
            request_context.reset(token)

    return endpoint


def route_operation(caller: Caller, name: str) -> Operation:
    """The operation of a route request made by `caller` (its request id names it in the logs)."""
    return Operation.begin(caller, name, request_id=current_request_id())
