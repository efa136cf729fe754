"""Cross-cutting behaviour of every tool call and HTTP request.

`ToolCallMiddleware` is the one place where exceptions become MCP tool errors: typed errors
render as their JSON wire form, argument validation failures as `INVALID_ARGUMENT`, anything
else as `INTERNAL` (logged with its traceback, shown without it). It is also the one place
where a call is authorised (`auth.access.authorize`: scope, user and book limits of the bearer
token, checked before the tool runs; denials are audited), rate-limited per agent, given a
slot among the calls running at once (or shed), and given its deadline (`limits`); and it
writes the one JSON log line per call and the per-tool metrics. Calls refused by a limit are
audited in the read batches: appending each under the chain lock would let a flood of refused
calls load the database it is being kept away from.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from fastmcp.exceptions import NotFoundError, ToolError, ValidationError
from fastmcp.server.dependencies import get_access_token
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools.base import Tool, ToolResult
from fastmcp.utilities.json_schema import dereference_refs
from mcp_types import CallToolRequestParams, ListToolsRequest
from pydantic import ValidationError as PydanticValidationError
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from panaversity_fs.app.limits import LoadShedder, RateLimiter, deadline_scope
from panaversity_fs.app.resources import ServerState
from panaversity_fs.auth.access import ADMIN, READ, TOOL_RULES, WRITE, Rule, authorize
from panaversity_fs.auth.identity import (
    Caller,
    auth_required,
    caller_from_claims,
    caller_scope,
    check_agent_id,
)
from panaversity_fs.config import Settings
from panaversity_fs.errors import (
    Forbidden,
    Internal,
    InvalidArgument,
    PanaversityFSError,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from panaversity_fs.logs import request_context
from panaversity_fs.paths import describe_rejected_path

logger = logging.getLogger("panaversity_fs.calls")


class ToolCallMiddleware(Middleware):
    """Authorises, limits and times every call; maps errors, logs one line, records metrics."""

    def __init__(self, state: ServerState, settings: Settings) -> None:
        self._state = state
        self.rates = RateLimiter(
            settings.rate_limit_reads_per_minute,
            settings.rate_limit_writes_per_minute,
            settings.rate_limit_burst,
            refusals_per_minute=settings.refusals_per_minute,
        )
        self._shedder = LoadShedder(
            settings.max_concurrent_calls, settings.max_waiting_calls, settings.max_call_wait
        )
        self._timeout = settings.request_timeout

    @property
    def load(self) -> tuple[int, int]:
        """Tool calls running and waiting for a slot right now."""
        return self._shedder.running, self._shedder.waiting

    async def on_call_tool(
        self,
        context: MiddlewareContext[CallToolRequestParams],
        call_next: CallNext[CallToolRequestParams, ToolResult],
    ) -> ToolResult:
        """Run the tool; translate whatever it raises."""
        started = time.perf_counter()
        status = "ok"
        token = None
        tool = "unknown"
        request_id = uuid.uuid4().hex
        try:
            tool = str(context.message.name)
            arguments: dict[str, Any] = dict(context.message.arguments or {})
            fields = {
                # JSON-RPC ids repeat across sessions; this one names the call in logs and audit alike.
                "request_id": request_id,
                "rpc_id": _rpc_id(context),
                "agent_id": _agent_name(context),
                "tool": tool,
                "book_id": describe_rejected_path(arguments.get("book_id"), 64)
                if "book_id" in arguments
                else None,
                "path": describe_rejected_path(arguments.get("path"), 300) if "path" in arguments else None,
            }
            token = request_context.set({k: v for k, v in fields.items() if v is not None})
            caller = self._identify(context, request_id)
            rule = TOOL_RULES.get(tool)
            try:
                # Before authorisation: refused calls spend the caller's budget like any other.
                self.rates.check(
                    caller.agent_id, "write" if rule is not None and rule.scope == WRITE else "read"
                )
                await self._authorize(caller, tool, rule, arguments, started)
                async with self._shedder.slot():
                    with caller_scope(caller):
                        return await self._run(context, call_next, rule)
            except (RateLimited, Unavailable) as error:
                if isinstance(error, RateLimited) or error.details.get("overloaded"):
                    self._note_refusal(caller, tool, arguments, started, error)
                raise
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
            translated = _translated(error, request_id)
            status = _code_of(translated)
            raise translated from None
        except Exception:
            status = Internal.code
            logger.exception("tool call failed unexpectedly")
            raise ToolError(Internal(f"internal error (request {request_id})").to_json()) from None
        finally:
            elapsed = time.perf_counter() - started
            resources = self._state.resources
            if resources is not None:
                label = tool if tool in TOOL_RULES else "unknown"  # never a name a client made up
                resources.metrics.tool_duration.labels(label).observe(elapsed)
                if status != "ok":
                    resources.metrics.errors_total.labels(label, status).inc()
            logger.info("tool call", extra={"status": status, "duration_ms": round(elapsed * 1000, 2)})
            if token is not None:
                request_context.reset(token)

    async def _run(
        self,
        context: MiddlewareContext[CallToolRequestParams],
        call_next: CallNext[CallToolRequestParams, ToolResult],
        rule: Rule | None,
    ) -> ToolResult:
        """Run the tool within its deadline (audit tools have none; see `limits`).

        Raises:
            Unavailable: a read tool ran past the deadline.
        """
        if rule is not None and rule.scope == ADMIN:
            return await call_next(context)
        with deadline_scope(self._timeout):
            if rule is not None and rule.scope == WRITE:
                return await call_next(context)
            timer = asyncio.timeout(self._timeout)
            try:
                async with timer:
                    return await call_next(context)
            except TimeoutError:
                if not timer.expired():
                    raise
                raise Unavailable(
                    f"the call did not finish within its {self._timeout:g} s deadline; retry",
                    retry_after=1.0,
                ) from None

    def _note_refusal(
        self, caller: Caller, tool: str, arguments: dict[str, Any], started: float, error: PanaversityFSError
    ) -> None:
        resources = self._state.resources
        if resources is None:
            return
        book, what, user = arguments.get("book_id"), arguments.get("path"), arguments.get("user_id")
        resources.content.note_read(
            caller, tool, book if book is not None else "*", what, user, started, error
        )
        resources.metrics.limited_total.labels("rate" if isinstance(error, RateLimited) else "overload").inc()

    def _identify(self, context: MiddlewareContext[CallToolRequestParams], request_id: str) -> Caller:
        """The caller: from the verified bearer token (auth on) or the client name (auth off).

        Raises:
            Unauthenticated: the call carries no usable identity (auth on: no verified token
                with an agent id; auth off: no usable client name).
        """
        token = get_access_token()
        if token is None:
            if auth_required(context.fastmcp_context):
                raise Unauthenticated("this server requires a bearer token (Authorization: Bearer <JWT>)")
            return Caller(agent_id=check_agent_id(_client_name(context)), request_id=request_id)
        return caller_from_claims(token.claims, request_id)

    async def _authorize(
        self, caller: Caller, tool: str, rule: Rule | None, arguments: dict[str, Any], started: float
    ) -> None:
        """Refuse the call unless the caller's token allows it; denials are audited, as long as
        the caller is within its refusal budget (beyond it: RATE_LIMITED, batched).

        Raises:
            Forbidden: the token lacks the tool's scope or its user/book limits exclude the call.
            RateLimited: the caller was refused too often lately.
        """
        try:
            authorize(caller, tool, arguments)
        except Forbidden as error:
            self.rates.check(caller.agent_id, "refusal")
            resources = self._state.resources
            if resources is not None:
                book, path, user = arguments.get("book_id"), arguments.get("path"), arguments.get("user_id")
                if rule is None or rule.scope == READ:
                    resources.content.note_read(caller, tool, book, path, user, started, error)
                else:
                    await resources.content.audit_refusal(caller, tool, book, path, user, started, error)
            raise


def _rpc_id(context: MiddlewareContext[Any]) -> str | None:
    ctx = context.fastmcp_context
    if ctx is not None and ctx.request_context is not None:
        return str(ctx.request_id)[:64]
    return None


def _agent_name(context: MiddlewareContext[Any]) -> str | None:
    """The caller's name for logs (cut to 255 characters; not checked)."""
    token = get_access_token()
    name = token.client_id if token is not None else _client_name(context)
    return name[:255] if name is not None else None


def _client_name(context: MiddlewareContext[Any]) -> str | None:
    """The name the MCP client gave in its `initialize` (None without a session)."""
    ctx = context.fastmcp_context
    if ctx is None:
        return None
    try:
        params = ctx.session.client_params
    except RuntimeError:
        return None
    return params.client_info.name if params is not None else None


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
    return Internal.code


def _translated(error: ToolError, request_id: str) -> ToolError:
    """A tool error in the JSON wire form: FastMCP wraps anything a tool raises that is not one
    of its own errors in a ToolError ("Error calling tool ..."), with the original as cause."""
    if str(error).startswith('{"error":"'):
        return error
    cause = error.__cause__
    if isinstance(cause, PanaversityFSError):
        return ToolError(cause.to_json())
    logger.error("tool call failed unexpectedly", exc_info=cause or error)
    return ToolError(Internal(f"internal error (request {request_id})").to_json())


class DereferencedTools(Middleware):
    """Tool schemas with every `$ref` inlined (some clients cannot follow them), made once.

    FastMCP's own `DereferenceRefsMiddleware` re-walks every schema on every `tools/list`, and
    clients such as fastmcp's list the tools before calls: that walk was over a third of the
    server's CPU under load. Tools never change after start-up, so each is dereferenced once.
    """

    def __init__(self) -> None:
        self._done: dict[tuple[str, int, int], Tool] = {}

    async def on_list_tools(
        self,
        context: MiddlewareContext[ListToolsRequest],
        call_next: CallNext[ListToolsRequest, Sequence[Tool]],
    ) -> Sequence[Tool]:
        """The tools, with dereferenced schemas."""
        return [self._dereferenced(tool) for tool in await call_next(context)]

    def _dereferenced(self, tool: Tool) -> Tool:
        key = (tool.name, id(tool.parameters), id(tool.output_schema))
        done = self._done.get(key)
        if done is None:
            updates: dict[str, object] = {"parameters": dereference_refs(tool.parameters)}
            if tool.output_schema is not None:
                updates["output_schema"] = dereference_refs(tool.output_schema)
            done = self._done[key] = tool.model_copy(update=updates)
        return done


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes with 413, before anything parses them."""

    EXEMPT_PREFIXES = ("/uploads/",)
    """Routes that stream their body to storage and enforce their own, larger limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, cutting it off at the limit."""
        if scope["type"] != "http" or str(scope.get("path", "")).startswith(self.EXEMPT_PREFIXES):
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


class OriginGuard:
    """Refuse (403) a request whose `Origin` is neither the server's own origin nor one of the
    configured `allowed_origins`, exactly: scheme, host and port.

    FastMCP's own guard (which checks `Host`) lets any loopback origin reach a loopback server,
    whatever its port, so a page served by any local process could call the tools. Requests
    without `Origin` (every non-browser client) pass.
    """

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self._allowed = frozenset(_origin_of(origin) for origin in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 403 to a foreign origin."""
        if scope["type"] == "http":
            headers = dict(scope.get("headers", []))
            origin = headers.get(b"origin")
            if origin is not None:
                claimed = _origin_of(origin.decode("latin-1"))
                own = _origin_of(
                    f"{scope.get('scheme', 'http')}://{headers.get(b'host', b'').decode('latin-1')}"
                )
                if claimed != own and claimed not in self._allowed:
                    await PlainTextResponse("Forbidden Origin", status_code=403)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _origin_of(url: str) -> str:
    """`scheme://host:port` of an origin or URL, lower case, default ports filled in; "" when
    it is not one (an opaque origin such as `null` matches nothing)."""
    try:
        parsed = urlsplit(url.strip())
        port = parsed.port
    except ValueError:
        return ""
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return ""
    return f"{parsed.scheme}://{parsed.hostname.lower()}:{port or (443 if parsed.scheme == 'https' else 80)}"
