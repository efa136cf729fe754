"""`create_server(settings)`: the FastMCP server, its lifespan, HTTP routes and ASGI app."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastmcp import FastMCP
from fastmcp.tools.base import Tool
from mcp.shared.inbound import X_MCP_HEADER_KEY
from starlette.applications import Starlette
from starlette.middleware import Middleware as ASGIMiddleware

from panaversity_fs import __version__
from panaversity_fs.app import challenge, json_replies
from panaversity_fs.app.fixed_tools import FixedToolServer
from panaversity_fs.app.middleware import PublishedTools, pipeline
from panaversity_fs.app.resources import ServerState, open_resources
from panaversity_fs.app.transport import (
    AfterResponseMiddleware,
    AuthFailureLimiter,
    BodyLimitMiddleware,
    OriginGuard,
    lift_transport_body_limit,
)
from panaversity_fs.auth.discovery import build_auth
from panaversity_fs.auth.tokens import auth_enabled
from panaversity_fs.config import Settings
from panaversity_fs.errors import ConfigurationError
from panaversity_fs.routes import archive, assets, discovery, probes
from panaversity_fs.tools.registry import register_tools

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
PanaversityFS stores books. A lesson is content/{NN-Part}/{NN-Chapter}/{NN-name}.md (a summary:
{NN-name}.summary.md); NN is two digits, names use letters, digits and '-'. Assets live under
static/{img,images,slides,videos,audio}/. A book starts with its first write.
Write contract: read a file to get its file_hash; create without expected_hash; replace or
delete with expected_hash = the file_hash you read. CONFLICT: someone changed it; re-read,
merge, retry. HASH_REQUIRED: it exists; read it first. Never send a hash you have not read.
user_id works on that user's overlay: reads show their copy over the shared book, writes touch
only their copy.
An enum argument left out takes its first value. Paged results end with next_cursor: pass it as cursor, with the same arguments, until null.
idempotency_key (1-128 of A-Za-z0-9._:-): repeating a committed call with the same key returns
its first result.
History: list_versions, read_content version=, diff_content, restore_version undo mistakes.
Errors are JSON {"error": CODE, "message": ...}; the message names the next step. UNAVAILABLE
and RATE_LIMITED are safe to retry (after retry_after seconds). Unknown arguments are refused.
Lessons are also resources: book://{book_id}/{path}, with ?user_id= for an overlay.
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
    middleware, limits = pipeline(state, settings)

    published = next(m for m in middleware if isinstance(m, PublishedTools))

    @asynccontextmanager
    async def lifespan(_server: FastMCP) -> AsyncGenerator[None, None]:
        await _prepare_tools(mcp, published)
        async with open_resources(settings, background=background) as resources:
            state.resources = resources
            try:
                yield
            finally:
                state.resources = None

    mcp = FixedToolServer(
        "panaversity-fs",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        auth=build_auth(settings),
        middleware=middleware,
        dereference_schemas=False,  # done once per tool by PublishedTools
        mask_error_details=True,
        on_duplicate="error",
    )
    register_tools(mcp, state)
    _serve_no_logging(mcp)
    discovery.register_routes(mcp)
    probes.register_routes(mcp, state, lambda: limits.load)
    archive.register_routes(mcp, state)
    assets.register_routes(mcp, state)
    return mcp


def _serve_no_logging(mcp: FastMCP) -> None:
    """Stop advertising `logging`: the server sends no log messages to clients (its logs go to
    the operators' stream), so `logging/setLevel` would set a level nothing uses."""
    low_level: Any = getattr(mcp, "_mcp_server")  # noqa: B009 - FastMCP offers no switch for this
    low_level._request_handlers.pop("logging/setLevel", None)


async def _prepare_tools(mcp: FixedToolServer, published: PublishedTools) -> None:
    """Give the MCP SDK each tool's input schema by name, make each tool's published form, and
    fix the tools for look-up by name (`FixedToolServer`).

    Without this lookup the SDK validates a call's `Mcp-Param-*` headers by running a whole
    `tools/list` (middleware included) before every `tools/call` of the current protocol:
    about a quarter of the server's CPU per read. The tools never change after start-up. Made
    here, the published schemas cost the first `tools/list` nothing (made then, 150 ms).
    """
    tools = await mcp.list_tools(run_middleware=False)
    for tool in tools:
        published.published(tool)
    low_level: Any = getattr(mcp, "_mcp_server")  # noqa: B009 - FastMCP exposes no setter for this hook
    low_level.get_tool_input_schema = header_schemas(tools).get
    await mcp.fix_tools([tool.name for tool in tools])


def header_schemas(tools: Sequence[Tool]) -> dict[str, dict[str, Any]]:
    """The input schemas the SDK must check a call's `Mcp-Param-*` headers against, by tool name:
    only those that declare a header (`x-mcp-header`). A tool without one is left out: against
    its schema the check can only pass, yet it walked the whole schema on every call (about
    40 us of a read's CPU here)."""
    return {tool.name: tool.parameters for tool in tools if X_MCP_HEADER_KEY in json.dumps(tool.parameters)}


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
    json_replies.install()
    challenge.install()
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
            ASGIMiddleware(AfterResponseMiddleware),
        ],
    )
    lift_transport_body_limit(app, settings.request_body_limit)
    return app
