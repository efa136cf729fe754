"""ASGI guards in front of every route: refused credentials per address, the request body
limit, the exact-origin check, and the MCP SDK's own body bound raised to ours."""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from fastmcp.server.http import StreamableHTTPASGIApp
from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.applications import Starlette
from starlette.authentication import BaseUser
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from panaversity_fs.after_response import deferring
from panaversity_fs.limits import MAX_TRACKED, token_buckets


class AuthFailureLimiter:
    """ASGI guard: an address with too many refused credentials gets 429 before verification."""

    OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
    """Probes that never authenticate and must answer even an address that is locked out."""

    def __init__(self, app: ASGIApp, per_minute: int, burst: float) -> None:
        self.app = app
        self._failures = token_buckets(per_minute, burst, time.monotonic)
        self._accepted: OrderedDict[str, None] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse or pass the request; count it as a failure if it is answered 401 or 403."""
        if scope["type"] != "http" or self._failures is None or scope.get("path") in self.OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        credential = _credential(scope)
        known = credential is not None and credential in self._accepted
        wait = None if known else self._failures.empty(address)
        if wait is not None:
            retry = str(max(1, math.ceil(wait)))
            response = PlainTextResponse(
                "too many failed authentications from this address",
                status_code=429,
                headers={"Retry-After": retry},
            )
            await response(scope, receive, send)
            return
        answered: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.append(int(message["status"]))
            await send(message)

        await self.app(scope, receive, watch)
        status = answered[0] if answered else 0
        if credential is not None and _verified(scope):
            # Only a token the server verified counts as accepted: any other answer (a 404 on a
            # route that checks no token, say) says nothing about the credential.
            self._accepted[credential] = None
            self._accepted.move_to_end(credential)
            if len(self._accepted) > MAX_TRACKED:
                self._accepted.popitem(last=False)
        elif status in (401, 403):
            self._failures.take(address)
            if credential is not None:
                self._accepted.pop(credential, None)


def _verified(scope: Scope) -> bool:
    """Whether the authentication middleware verified the request's bearer token."""
    user: object = scope.get("user")
    return isinstance(user, BaseUser) and user.is_authenticated


def _credential(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return hashlib.sha256(value).hexdigest()
    return None


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


def lift_transport_body_limit(app: Starlette, limit: int) -> None:
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


class AfterResponseMiddleware:
    """Runs the work a request's call deferred (`after_response`) once its response is sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, then run what it deferred."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        async with deferring():
            await self.app(scope, receive, send)
