"""The 401 a client meets without a usable token: what is wrong, and where to get a token.

FastMCP's `RequireAuthMiddleware` guards `/mcp`; a request without a bearer token gets a bare
`WWW-Authenticate: Bearer` and an empty body, which leaves a client (or the agent reading its
error) nothing to go on. This subclass keeps its checks and its challenge parameters (`scope`,
`resource_metadata` when discovery metadata is served) and adds an `error_description` and a
JSON body saying the same. `install()` makes FastMCP build it (it names the class in its module;
there is no other hook).
"""

from __future__ import annotations

import json

import fastmcp.server.http as fastmcp_http
from fastmcp.server.auth.middleware import RequireAuthMiddleware
from starlette.types import Send

MISSING = (
    "this server needs a bearer token: send Authorization: Bearer <JWT> with the scope fs:read, "
    "fs:write or fs:admin"
)
REFUSED = (
    "the bearer token was refused (bad signature, expired, wrong issuer or audience, or claims "
    "this server does not accept): get a new token"
)


def install() -> None:
    """Make FastMCP guard `/mcp` with `ExplainedChallenge`."""
    fastmcp_http.RequireAuthMiddleware = ExplainedChallenge  # type: ignore[misc]


class ExplainedChallenge(RequireAuthMiddleware):
    """FastMCP's bearer guard, whose 401s and 403s say what is wrong in the header and the body."""

    async def _send_missing_auth(self, send: Send) -> None:
        await self._challenge(send, 401, None, MISSING)

    async def _send_auth_error(self, send: Send, status_code: int, error: str, description: str) -> None:
        await self._challenge(send, status_code, error, REFUSED if error == "invalid_token" else description)

    async def _challenge(self, send: Send, status: int, error: str | None, description: str) -> None:
        # RFC 6750 3.1: no error code when the request carried no token at all.
        parts = [f'error="{error}"'] if error else []
        parts += [f'error_description="{description}"', *self._challenge_context()]
        body: dict[str, str] = {"error": error or "invalid_request", "error_description": description}
        if self.resource_metadata_url:
            body["resource_metadata"] = str(self.resource_metadata_url)
        data = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"www-authenticate", f"Bearer {', '.join(parts)}".encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})
