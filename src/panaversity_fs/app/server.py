"""`create_server(settings)`: the FastMCP server, its lifespan, HTTP routes and ASGI app."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

from fastmcp import FastMCP
from fastmcp.server.http import StreamableHTTPASGIApp
from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware as ASGIMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from panaversity_fs import __version__
from panaversity_fs.app.limits import AuthFailureLimiter
from panaversity_fs.app.middleware import (
    BodyLimitMiddleware,
    DereferencedTools,
    OriginGuard,
    ToolCallMiddleware,
)
from panaversity_fs.app.resources import Resources, ServerState, open_resources
from panaversity_fs.auth.tokens import auth_enabled, build_verifier
from panaversity_fs.config import Settings
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import DB_ERRORS
from panaversity_fs.errors import ConfigurationError
from panaversity_fs.routes import archive as archive_routes
from panaversity_fs.routes import assets as asset_routes
from panaversity_fs.tools import register_tools

logger = logging.getLogger(__name__)

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

    Raises:
        ConfigurationError: the auth settings are unusable (e.g. a short or placeholder secret).
    """
    state = ServerState()
    verifier = build_verifier(settings)
    calls = ToolCallMiddleware(state, settings)

    @asynccontextmanager
    async def lifespan(server: FastMCP) -> AsyncGenerator[dict[str, Any], None]:
        await _index_input_schemas(server)
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
        auth=verifier,
        middleware=[calls, DereferencedTools()],
        dereference_schemas=False,  # done once per tool by DereferencedTools
        mask_error_details=True,
        on_duplicate="error",
    )
    register_tools(mcp, state)
    _register_routes(mcp, state, calls)
    archive_routes.register_routes(mcp, state)
    asset_routes.register_routes(mcp, state)
    return mcp


async def _index_input_schemas(mcp: FastMCP) -> None:
    """Give the MCP SDK each tool's input schema by name.

    Without this lookup the SDK validates a call's `Mcp-Param-*` headers by running a whole
    `tools/list` (middleware included) before every `tools/call` of the current protocol:
    about a quarter of the server's CPU per read. The tools never change after start-up.
    """
    schemas = {tool.name: tool.parameters for tool in await mcp.list_tools(run_middleware=False)}
    low_level: Any = getattr(mcp, "_mcp_server")  # noqa: B009 - FastMCP exposes no setter for this hook
    low_level.get_tool_input_schema = schemas.get


def _register_routes(mcp: FastMCP, state: ServerState, calls: ToolCallMiddleware) -> None:
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

    journal_counted = [0.0]  # when the per-book file counts were last read

    @mcp.custom_route("/metrics", methods=["GET"])
    async def metrics(_request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        resources = state.resources
        if resources is None:
            return Response("", status_code=503)
        if time.monotonic() - journal_counted[0] > JOURNAL_COUNT_EVERY:
            journal_counted[0] = time.monotonic()
            await _count_journal(resources)
        resources.metrics.audit_queue.set(resources.audit.queued)
        running, waiting = calls.load
        resources.metrics.calls_running.set(running)
        resources.metrics.calls_waiting.set(waiting)
        return Response(resources.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


JOURNAL_COUNT_EVERY = 15.0
"""Seconds between two reads of the per-book file counts (scrapes in between reuse them)."""


async def _count_journal(resources: Resources) -> None:
    """Refresh `panaversityfs_journal_entries_total` and the known books; a slow or failing
    database keeps the last values."""
    try:
        async with asyncio.timeout(2.0), resources.db.read() as conn:
            counts = await journal.live_files_by_book(conn)
    except (TimeoutError, *DB_ERRORS):
        logger.warning("could not count journal entries for /metrics", exc_info=True)
        return
    metrics = resources.metrics
    metrics.know_books(book for book, _count, has_base in counts if has_base)
    per_label: dict[str, int] = {}
    for book_id, count, _has_base in counts:
        label = metrics.book(book_id)
        per_label[label] = per_label.get(label, 0) + count
    for label, count in per_label.items():
        metrics.journal_entries.labels(label).set(count)


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
    if not loopback and not auth_enabled(settings) and not settings.public_without_auth:
        raise ConfigurationError(
            f"bound to {host} with authentication off: set PANAVERSITY_JWT_SECRET or "
            "PANAVERSITY_JWKS_URL (or PANAVERSITY_PUBLIC_WITHOUT_AUTH=true on a trusted network)"
        )
    return hosts + [f"{name}:*" for name in hosts if ":" not in name]


def create_app(settings: Settings, mcp: FastMCP | None = None) -> Starlette:
    """Return the ASGI app: `/mcp` (streamable HTTP), `/health`, `/ready`, `/metrics`."""
    server = mcp or create_server(settings)
    app = server.http_app(
        path="/mcp",
        # Sessions live in one process's memory: several processes behind one address must not
        # depend on them.
        stateless_http=settings.stateless_http or settings.workers > 1,
        host_origin_protection=True,
        allowed_hosts=allowed_hosts(settings),
        allowed_origins=list(settings.allowed_origins),
        middleware=[
            ASGIMiddleware(
                AuthFailureLimiter,
                per_minute=settings.auth_failures_per_minute,
                burst=settings.rate_limit_burst,
            ),
            ASGIMiddleware(OriginGuard, allowed=settings.allowed_origins),
            ASGIMiddleware(BodyLimitMiddleware, limit=settings.request_body_limit),
        ],
    )
    _lift_transport_body_limit(app, settings.request_body_limit)
    return app


def _lift_transport_body_limit(app: Starlette, limit: int) -> None:
    """Make the MCP SDK's own request-body bound (4 MiB, not configurable through FastMCP) the
    configured one, which `BodyLimitMiddleware` enforces for every route: a valid 2 MiB lesson
    can need 12 MiB of JSON."""
    for route in app.routes:
        endpoint: object = getattr(route, "app", None)
        if isinstance(endpoint, StreamableHTTPASGIApp):
            setattr(route, "app", _BodyLimitLifted(endpoint, limit))  # noqa: B010 - Starlette routes have no setter


class _BodyLimitLifted:
    """The MCP endpoint, its session manager's body bound replaced once the lifespan made it."""

    def __init__(self, endpoint: StreamableHTTPASGIApp, limit: int) -> None:
        self._endpoint = endpoint
        self._limit = limit
        self._lifted: object = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager = self._endpoint.session_manager
        if manager is not None and manager is not self._lifted:
            handle: Any = getattr(manager, "_handle_request")  # noqa: B009 - the SDK's unwrapped handler
            manager.asgi_app = RequestBodyLimitMiddleware(handle, self._limit)
            self._lifted = manager
        await self._endpoint(scope, receive, send)
