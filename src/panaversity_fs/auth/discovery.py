"""OAuth discovery: how a standard MCP client learns where to get a token for this server.

With an issuer configured (`PANAVERSITY_AUTH_ISSUER`, an http(s) URL), the bearer verifier is
wrapped in FastMCP's `RemoteAuthProvider`, which serves OAuth 2.0 Protected Resource Metadata
(RFC 9728) at `/.well-known/oauth-protected-resource/mcp` naming that issuer as the
authorization server and the scopes this server knows; every 401 then points at it. Without
an issuer there is no authorization server to name (the metadata requires one), so the
verifier works alone and 401s explain the token they need.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastmcp.server.auth import RemoteAuthProvider, TokenVerifier
from pydantic import AnyHttpUrl

from panaversity_fs.auth.access import ADMIN, READ, WRITE
from panaversity_fs.auth.tokens import build_verifier
from panaversity_fs.config import Settings

RESOURCE_NAME = "PanaversityFS"


def build_auth(settings: Settings) -> TokenVerifier | RemoteAuthProvider | None:
    """FastMCP's `auth=` for `settings`: None when auth is off, the verifier, or the verifier
    with discovery metadata when an http(s) issuer is configured.

    Raises:
        ConfigurationError: the auth settings are unusable (see `build_verifier`).
    """
    verifier = build_verifier(settings)
    issuer = settings.auth_issuer
    if verifier is None or issuer is None or urlsplit(issuer).scheme not in ("http", "https"):
        return verifier
    return RemoteAuthProvider(
        token_verifier=verifier,
        authorization_servers=[AnyHttpUrl(issuer)],
        base_url=resource_base_url(settings),
        scopes_supported=[READ, WRITE, ADMIN],
        resource_name=RESOURCE_NAME,
    )


def resource_base_url(settings: Settings) -> str:
    """The base URL clients reach the server at: `public_url`, else its bind address."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.server_host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.server_port}"
