"""`GET /.well-known/oauth-protected-resource`: the discovery metadata at the host's root too.

RFC 9728 places a resource's metadata at the well-known path followed by the resource's own
path (`/.well-known/oauth-protected-resource/mcp`, served by FastMCP's `RemoteAuthProvider`);
some clients look at the bare well-known path first. Both answer the same document.
"""

from __future__ import annotations

from fastmcp import FastMCP
from fastmcp.server.auth import RemoteAuthProvider
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import AnyHttpUrl
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

MCP_PATH = "/mcp"


def register_routes(mcp: FastMCP) -> None:
    """Serve the metadata at the bare well-known path when `mcp` publishes it."""
    auth = mcp.auth
    if not isinstance(auth, RemoteAuthProvider):
        return
    base = str(auth.resource_base_url or auth.base_url).rstrip("/")
    metadata = ProtectedResourceMetadata(
        resource=AnyHttpUrl(f"{base}{MCP_PATH}"),
        authorization_servers=auth.authorization_servers,
        scopes_supported=auth.scopes_supported,
        resource_name=auth.resource_name,
    ).model_dump(mode="json", exclude_none=True)

    @mcp.custom_route("/.well-known/oauth-protected-resource", methods=["GET"])
    async def protected_resource(request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        return JSONResponse(metadata, headers={"Cache-Control": "public, max-age=3600"})
