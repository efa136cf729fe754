"""Cross-cutting behaviour of every tool call and HTTP request.

`ToolCallMiddleware` is the one place where exceptions become MCP tool errors: typed errors
render as their JSON wire form, argument validation failures as `INVALID_ARGUMENT`, anything
else as `INTERNAL` (logged with its traceback, shown without it). It also writes the one JSON
log line per call and the per-tool metrics.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastmcp.exceptions import NotFoundError, ToolError, ValidationError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools.base import ToolResult
from mcp_types import CallToolRequestParams
from pydantic import ValidationError as PydanticValidationError
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from panaversity_fs.errors import Internal, InvalidArgument, PanaversityFSError
from panaversity_fs.logs import request_context
from panaversity_fs.paths import describe_rejected_path
from panaversity_fs.resources import ServerState

logger = logging.getLogger("panaversity_fs.calls")


class ToolCallMiddleware(Middleware):
    """Maps errors, logs one line per call, and records tool metrics."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    async def on_call_tool(
        self,
        context: MiddlewareContext[CallToolRequestParams],
        call_next: CallNext[CallToolRequestParams, ToolResult],
    ) -> ToolResult:
        """Run the tool; translate whatever it raises."""
        tool = context.message.name
        arguments: dict[str, Any] = dict(context.message.arguments or {})
        fields = {
            "request_id": _request_id(context),
            "agent_id": _agent_name(context),
            "tool": tool,
            "book_id": describe_rejected_path(arguments.get("book_id"), 64)
            if "book_id" in arguments
            else None,
            "path": describe_rejected_path(arguments.get("path"), 300) if "path" in arguments else None,
        }
        token = request_context.set({k: v for k, v in fields.items() if v is not None})
        started = time.perf_counter()
        status = "ok"
        try:
            return await call_next(context)
        except PanaversityFSError as error:
            status = error.code
            raise ToolError(error.to_json()) from None
        except (PydanticValidationError, ValidationError) as error:
            status = InvalidArgument.code
            raise ToolError(InvalidArgument(_validation_message(error)).to_json()) from None
        except NotFoundError:
            status = InvalidArgument.code
            raise ToolError(InvalidArgument(f"unknown tool {tool!r}").to_json()) from None
        except ToolError as error:
            status = _code_of(error)
            raise
        except Exception:
            status = Internal.code
            logger.exception("tool call failed unexpectedly")
            raise ToolError(Internal(f"internal error (request {fields['request_id']})").to_json()) from None
        finally:
            elapsed = time.perf_counter() - started
            resources = self._state.resources
            if resources is not None:
                resources.metrics.tool_duration.labels(tool).observe(elapsed)
                if status != "ok":
                    resources.metrics.errors_total.labels(tool, status).inc()
            logger.info("tool call", extra={"status": status, "duration_ms": round(elapsed * 1000, 2)})
            request_context.reset(token)


def _request_id(context: MiddlewareContext[Any]) -> str:
    ctx = context.fastmcp_context
    if ctx is not None and ctx.request_context is not None:
        return str(ctx.request_id)
    return uuid.uuid4().hex


def _agent_name(context: MiddlewareContext[Any]) -> str | None:
    ctx = context.fastmcp_context
    if ctx is None:
        return None
    try:
        params = ctx.session.client_params
    except RuntimeError:
        return None
    return params.client_info.name[:255] if params is not None else None


def _validation_message(error: Exception) -> str:
    if not isinstance(error, PydanticValidationError) and isinstance(
        error.__cause__, PydanticValidationError
    ):
        error = error.__cause__
    if isinstance(error, PydanticValidationError):
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in error.errors()[:5]
        ]
        return "invalid arguments: " + "; ".join(problems)
    return "invalid arguments"


def _code_of(error: ToolError) -> str:
    text = str(error)
    if text.startswith('{"error":"'):
        return text[10:].split('"', 1)[0]
    return "TOOL_ERROR"


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes with 413, before anything parses them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, cutting it off at the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await PlainTextResponse("request body too large", status_code=413)(scope, receive, send)
                return
        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await PlainTextResponse("request body too large", status_code=413)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass
