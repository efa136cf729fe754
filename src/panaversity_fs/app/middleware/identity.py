"""`IdentifyCallers`: who is calling, resolved once per call, into the call's `Operation`.

With auth on, the caller is the verified bearer token's (FastMCP's authentication has checked
it); with auth off, the client name the MCP client sent (`clientInfo` at `initialize`, or the
client-info metadata newer protocol versions carry per request). HTTP routes resolve theirs
with `caller_from_request`.
"""

from __future__ import annotations

from typing import Any, cast

from fastmcp import Context
from fastmcp.server.dependencies import get_access_token
from fastmcp.server.middleware import CallNext, MiddlewareContext
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.requests import Request

from panaversity_fs.app.context import operation_scope
from panaversity_fs.app.middleware.calls import CallMiddleware, call_of
from panaversity_fs.errors import Unauthenticated
from panaversity_fs.identity import Caller, caller_from_claims, check_agent_id
from panaversity_fs.logs import current_request_id
from panaversity_fs.operation import Operation

_NO_TOKEN = "this server requires a bearer token (Authorization: Bearer <JWT>)"  # noqa: S105 - a message


class IdentifyCallers(CallMiddleware):
    """Builds the call's `Operation` (caller, tool, idempotency key, request id) and makes it
    current for the rest of the pipeline and the tool."""

    async def around(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        """Identify the caller, then run the call as its operation.

        Raises:
            Unauthenticated: the call carries no usable identity.
        """
        call = call_of(context.message)
        op = Operation.begin(
            identify(context.fastmcp_context),
            call.name,
            call.arguments.get("idempotency_key"),
            current_request_id(),
        )
        with operation_scope(op):
            return await call_next(context)


def identify(ctx: Context | None) -> Caller:
    """The caller of the current MCP request.

    Raises:
        Unauthenticated: with auth on, no verified token naming a usable agent; with auth off,
            no usable client name.
    """
    token = get_access_token()
    if token is not None:
        return caller_from_claims(token.claims)
    if auth_required(ctx):
        raise Unauthenticated(_NO_TOKEN)
    return Caller(agent_id=check_agent_id(client_name(ctx)))


def client_name(ctx: Context | None) -> str | None:
    """The name the MCP client gave (None: none, or no session)."""
    if ctx is None:
        return None
    try:
        params = ctx.session.client_params
    except RuntimeError:
        return None
    return params.client_info.name if params is not None else None


def auth_required(ctx: Context | None) -> bool:
    """Whether the server behind `ctx` authenticates its callers with bearer tokens."""
    if ctx is None:
        return False
    try:
        return ctx.fastmcp.auth is not None
    except RuntimeError:
        return False


def caller_from_request(request: Request) -> Caller | None:
    """The caller a plain HTTP request's verified bearer token names, or None without one.

    Raises:
        Unauthenticated: the token names no usable agent or has malformed claims.
    """
    user = request.scope.get("user")
    if not isinstance(user, AuthenticatedUser):
        return None
    claims: object = getattr(user.access_token, "claims", None)
    if not isinstance(claims, dict):
        raise Unauthenticated("the bearer token carries no claims")
    return caller_from_claims(cast(dict[str, Any], claims))
