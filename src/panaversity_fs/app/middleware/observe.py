"""`ObserveCalls`: the request id, one JSON log line and the latency and error metrics of a call.

The metrics are recorded before the answer leaves (a scrape right after an answer counts it);
the log line is written after it (`after_response`)."""

from __future__ import annotations

import logging
import time
import uuid
from functools import partial
from typing import Any

from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_access_token
from fastmcp.server.middleware import CallNext, MiddlewareContext
from mcp.shared.exceptions import MCPError

from panaversity_fs.after_response import after_response
from panaversity_fs.app.middleware.calls import CallMiddleware, call_of
from panaversity_fs.app.middleware.errors import code_of
from panaversity_fs.app.middleware.identity import client_name
from panaversity_fs.app.resources import ServerState
from panaversity_fs.auth.access import TOOL_RULES
from panaversity_fs.logs import request_context
from panaversity_fs.paths import describe_rejected_path

logger = logging.getLogger("panaversity_fs.calls")


class ObserveCalls(CallMiddleware):
    """Names each call (a fresh request id, the context of every log line it writes), then logs
    one line and records its latency and, on failure, its error code."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    async def around(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        """Run the call inside its log context; log and measure it however it ends."""
        started = time.perf_counter()
        call = call_of(context.message)
        arguments = call.arguments
        fields = {
            # JSON-RPC ids repeat across sessions; this one names the call in logs and audit alike.
            "request_id": uuid.uuid4().hex,
            "rpc_id": _rpc_id(context),
            "agent_id": client_name_for_logs(context),
            "tool": call.name,
            "book_id": describe_rejected_path(arguments["book_id"], 64) if "book_id" in arguments else None,
            "path": describe_rejected_path(arguments["path"], 300) if "path" in arguments else None,
        }
        logged = {k: v for k, v in fields.items() if v is not None}
        token = request_context.set(logged)
        status = "ok"
        try:
            return await call_next(context)
        except (ToolError, MCPError) as error:
            status = code_of(error)
            raise
        finally:
            elapsed = time.perf_counter() - started
            resources = self._state.resources
            if resources is not None:
                label = call.name if call.name in TOOL_RULES else "unknown"  # never a name a client made up
                resources.metrics.tool_duration.labels(label).observe(elapsed)
                if status != "ok":
                    resources.metrics.errors_total.labels(label, status).inc()
            request_context.reset(token)
            if logger.isEnabledFor(logging.INFO):
                await after_response(partial(_log_call, logged, status, elapsed))


async def _log_call(fields: dict[str, Any], status: str, elapsed: float) -> None:
    """Write a call's log line with its context (`fields`): after its answer has been sent, since
    formatting and writing the line cost about a tenth of a millisecond of the call's wall time."""
    token = request_context.set(fields)
    try:
        logger.info("tool call", extra={"status": status, "duration_ms": round(elapsed * 1000, 2)})
    finally:
        request_context.reset(token)


def _rpc_id(context: MiddlewareContext[Any]) -> str | None:
    ctx = context.fastmcp_context
    if ctx is not None and ctx.request_context is not None:
        return str(ctx.request_id)[:64]
    return None


def client_name_for_logs(context: MiddlewareContext[Any]) -> str | None:
    """The caller's name as the logs show it, unchecked (cut to 255 characters)."""
    token = get_access_token()
    name = token.client_id if token is not None else client_name(context.fastmcp_context)
    return name[:255] if name is not None else None
