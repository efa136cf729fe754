"""Signed, expiring tokens for URLs handed to clients (archive downloads, asset downloads, uploads).

A token is `base64url(json claims) "." base64url(hmac_sha256(key, purpose "." claims))`. The
purpose is part of the MAC, so a token made for one route is refused by every other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any, cast

from fastmcp.server.dependencies import get_http_request

from panaversity_fs.config import Settings
from panaversity_fs.errors import Forbidden


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UrlSigner:
    """Signs and verifies claims with an expiry, for one server (or replicas sharing the key)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the URL signing key must be at least 16 bytes")
        self._key = key

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlSigner:
        """The configured key (its length is checked by `Settings`), or a random one for this
        process when none is configured."""
        secret = settings.url_signing_secret
        if secret is None:
            return cls(secrets.token_bytes(32))
        return cls(
            hashlib.sha256(b"panaversity-fs url signing\0" + secret.get_secret_value().encode()).digest()
        )

    def sign(self, purpose: str, claims: dict[str, Any], ttl: float) -> tuple[str, int]:
        """Return a token carrying `claims` for `purpose`, and its expiry (unix seconds)."""
        expires = int(time.time() + ttl)
        body = _b64(json.dumps({**claims, "exp": expires}, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac(purpose, body)}", expires

    def verify(self, purpose: str, token: str) -> dict[str, Any]:
        """Return the claims of a valid, unexpired token made for `purpose`.

        Raises:
            Forbidden: the token is malformed, forged, made for another purpose, or expired.
        """
        body, dot, mac = token.partition(".")
        # Compared as bytes: compare_digest refuses str with non-ASCII characters (a TypeError).
        if not dot or not hmac.compare_digest(mac.encode(), self._mac(purpose, body).encode()):
            raise Forbidden("the signed URL is invalid")
        try:
            decoded: object = json.loads(_unb64(body))
        except (ValueError, UnicodeDecodeError):
            raise Forbidden("the signed URL is invalid") from None
        if not isinstance(decoded, dict):
            raise Forbidden("the signed URL is invalid")
        claims = cast(dict[str, Any], decoded)
        expires = claims.get("exp")
        if not isinstance(expires, int):
            raise Forbidden("the signed URL is invalid")
        if expires < time.time():
            raise Forbidden("the signed URL has expired; ask for a new one")
        return claims

    def _mac(self, purpose: str, body: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}.{body}".encode(), hashlib.sha256).digest())


def public_base_url(settings: Settings) -> str:
    """The base URL clients reach this server at, without a trailing slash.

    `settings.public_url` when set; otherwise the scheme and host of the HTTP request being
    served (the MCP call asking for a URL); otherwise the bound address.
    """
    if settings.public_url:
        return settings.public_url.rstrip("/")
    try:
        request = get_http_request()
    except RuntimeError:
        return f"http://{settings.server_host}:{settings.server_port}"
    return str(request.base_url).rstrip("/")
