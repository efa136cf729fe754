"""`create_server(settings)`: the FastMCP server, its lifespan, HTTP routes and ASGI app."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

from fastmcp import FastMCP
from starlette.applications import Starlette
from starlette.middleware import Middleware as ASGIMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from panaversity_fs import __version__
from panaversity_fs.config import Settings
from panaversity_fs.errors import ConfigurationError
from panaversity_fs.middleware import BodyLimitMiddleware, ToolCallMiddleware
from panaversity_fs.resources import ServerState, open_resources
from panaversity_fs.tools import register_tools

INSTRUCTIONS = """\
PanaversityFS stores AI-written books. Lessons live at
content/{NN-Part}/{NN-Chapter}/{NN-lesson}(.summary)?.md inside a book.
Read a file to get its file_hash; create files without expected_hash; replace them only with
expected_hash set to the file_hash you read. On CONFLICT re-read, merge and retry.
Pass user_id to work on that user's personal overlay instead of the shared book.
Errors are JSON objects {"error": CODE, "message": ...}; UNAVAILABLE is safe to retry.
"""


def create_server(settings: Settings, *, background: bool = True) -> FastMCP:
    """Build the MCP server for `settings`; nothing is opened until its lifespan starts.

    Args:
        settings: the process's configuration.
        background: run the audit batcher and periodic recovery (tests may turn them off).
    """
    state = ServerState()

    @asynccontextmanager
    async def lifespan(_server: FastMCP) -> AsyncGenerator[dict[str, Any], None]:
        async with open_resources(settings, background=background) as resources:
            state.resources = resources
            try:
                yield {"resources": resources}
            finally:
                state.resources = None

    mcp = FastMCP(
        "panaversity-fs",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        middleware=[ToolCallMiddleware(state)],
        mask_error_details=True,
        on_duplicate="error",
    )
    register_tools(mcp, state)
    _register_routes(mcp, state)
    return mcp


def _register_routes(mcp: FastMCP, state: ServerState) -> None:
    @mcp.custom_route("/health", methods=["GET"])
    async def health(_request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        return JSONResponse({"status": "ok", "version": __version__})

    @mcp.custom_route("/ready", methods=["GET"])
    async def ready(_request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        resources = state.resources
        if resources is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        checks: dict[str, str] = {}
        try:
            async with resources.db.read() as conn:
                await conn.exec_driver_sql("SELECT 1")
            checks["database"] = "ok"
        except Exception:
            checks["database"] = "unavailable"
        try:
            await resources.store.check()
            checks["storage"] = "ok"
        except Exception:
            checks["storage"] = "unavailable"
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if healthy else "unavailable", **checks}, status_code=200 if healthy else 503
        )

    @mcp.custom_route("/metrics", methods=["GET"])
    async def metrics(_request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        resources = state.resources
        if resources is None:
            return Response("", status_code=503)
        resources.metrics.audit_queue.set(resources.audit.queued)
        return Response(resources.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def allowed_hosts(settings: Settings) -> list[str]:
    """Host header values accepted by the DNS-rebinding guard.

    Raises:
        ConfigurationError: bound to a non-loopback address with no explicit allow-list.
    """
    hosts = list(settings.allowed_hosts)
    host = settings.server_host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not hosts:
        raise ConfigurationError(
            f"bound to {host}: set PANAVERSITY_ALLOWED_HOSTS to the host names clients use "
            "(DNS-rebinding protection needs an explicit allow-list)"
        )
    return hosts + [f"{name}:*" for name in hosts if ":" not in name]


def create_app(settings: Settings, mcp: FastMCP | None = None) -> Starlette:
    """Return the ASGI app: `/mcp` (streamable HTTP), `/health`, `/ready`, `/metrics`."""
    server = mcp or create_server(settings)
    return server.http_app(
        path="/mcp",
        host_origin_protection=True,
        allowed_hosts=allowed_hosts(settings),
        allowed_origins=list(settings.allowed_origins),
        middleware=[ASGIMiddleware(BodyLimitMiddleware, limit=settings.max_request_bytes)],
    )
