"""The caller's identity, resolved in exactly one place.

With auth off, the agent id is the client name the MCP client sent (`clientInfo` at
`initialize`, or the client-info metadata newer protocol versions carry on each request).
With auth on, it comes from the verified bearer token (`agent_id` claim, else `sub`), together
with the token's grants: its scopes, its `user_id` claim and its `books` claim.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Generator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

from fastmcp import Context
from fastmcp.server.dependencies import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.requests import Request

from panaversity_fs.errors import InvalidArgument, Unauthenticated
from panaversity_fs.logs import current_request_id
from panaversity_fs.paths import check_book_id, check_user_id, invisible_character, skeleton

MAX_AGENT_ID = 255
RESERVED_AGENT_IDS = frozenset({"system", "unknown", "anonymous"})
_RESERVED_SKELETONS = {skeleton(name): name for name in RESERVED_AGENT_IDS}


@dataclass(frozen=True, slots=True)
class Caller:
    """The agent behind one request."""

    agent_id: str
    request_id: str | None = None
    scopes: frozenset[str] | None = None
    """The token's scopes; None when auth is off (every tool allowed)."""
    user_id: str | None = None
    """The token's `user_id` claim: the one overlay this caller may use (None: any)."""
    books: frozenset[str] | None = None
    """The token's `books` claim: the books this caller may use (None: every book)."""


def check_agent_id(agent_id: object) -> str:
    """Return `agent_id` (NFC) if it can stand in the audit log as what a reader sees.

    The rules of visible text that paths follow apply: no control, bidi, zero-width, format or
    variation-selector characters; and no look-alike of a reserved id (`system`, `unknown`,
    `anonymous`), whatever its case, script or compatibility form.

    Raises:
        Unauthenticated: it is missing, empty, over-long, holds an invisible character, or
            is (or looks like) a reserved id.
    """
    if not isinstance(agent_id, str) or not agent_id.strip():
        raise Unauthenticated("no agent identity: send a client name (clientInfo.name)")
    if len(agent_id) > MAX_AGENT_ID:
        raise Unauthenticated(f"agent id must be at most {MAX_AGENT_ID} characters")
    hidden = invisible_character(agent_id)
    if hidden is not None:
        raise Unauthenticated(
            f"agent id holds an invisible or control character (U+{ord(hidden):04X}); use visible text"
        )
    reserved = _RESERVED_SKELETONS.get(skeleton(agent_id.strip()))
    if reserved is not None:
        raise Unauthenticated(f"agent id looks like the reserved id {reserved!r}; identify your agent")
    return unicodedata.normalize("NFC", agent_id)


def caller_from_claims(claims: Mapping[str, Any], request_id: str | None = None) -> Caller:
    """Return the caller a verified token's claims describe.

    Raises:
        Unauthenticated: no usable agent id (`agent_id`, else `sub`), or a malformed `scope`,
            `scp`, `user_id` or `books` claim.
    """
    agent = claims.get("agent_id")
    agent_id = check_agent_id(claims.get("sub") if agent is None else agent)
    user_id: str | None = None
    books: frozenset[str] | None = None
    try:
        if claims.get("user_id") is not None:
            user_id = check_user_id(claims["user_id"])
        raw_books = claims.get("books")
        if raw_books is not None:
            if not isinstance(raw_books, list):
                raise Unauthenticated("the token's books claim must be a list of book ids")
            books = frozenset(check_book_id(book) for book in cast(list[object], raw_books))
    except InvalidArgument:
        raise Unauthenticated("the token's user_id or books claim is malformed") from None
    return Caller(agent_id, request_id, token_scopes(claims), user_id, books)


def token_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes of a token: `scope` (space-separated) or `scp` (a list or a string).

    Raises:
        Unauthenticated: the claim is neither a string nor a list of strings.
    """
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list) and all(isinstance(s, str) for s in cast(list[object], value)):
            return frozenset(cast(list[str], value))
        raise Unauthenticated(f"the token's {name} claim is malformed")
    return frozenset()


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


_current_caller: ContextVar[Caller | None] = ContextVar("pfs_caller", default=None)


@contextmanager
def caller_scope(caller: Caller) -> Generator[None, None, None]:
    """Make `caller` the current tool call's caller (the call middleware identifies it once)."""
    token = _current_caller.set(caller)
    try:
        yield
    finally:
        _current_caller.reset(token)


def caller_from_context(ctx: Context) -> Caller:
    """Return the caller of the current MCP request: the one the call middleware identified,
    else the one its bearer token or client name gives.

    Raises:
        Unauthenticated: the request carries no usable identity (with auth on: no verified
            bearer token, or one naming no usable agent).
    """
    known = _current_caller.get()
    if known is not None:
        return known
    request_id = current_request_id()
    token = get_access_token()
    if token is not None:
        return caller_from_claims(token.claims, request_id)
    if auth_required(ctx):
        raise Unauthenticated("this server requires a bearer token (Authorization: Bearer <JWT>)")
    name: str | None = None
    try:
        params = ctx.session.client_params
    except RuntimeError:
        params = None
    if params is not None:
        name = params.client_info.name
    return Caller(agent_id=check_agent_id(name), request_id=request_id)
