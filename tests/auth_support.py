"""Helpers for the auth tests: tokens with any claims, a local JWKS server, audit rows."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import audit_log

SECRET = "4f9c2a7e1b8d3f6a0c5e9b2d7a4f1c8e3b6d9a2f5c8e1b4d7a0f3c6e9b2d5a8f"
ISSUER = "https://issuer.test"
AUDIENCE = "panaversity-fs"
HS_ENV = {
    "PANAVERSITY_JWT_SECRET": SECRET,
    "PANAVERSITY_AUTH_ISSUER": ISSUER,
    "PANAVERSITY_AUTH_AUDIENCE": AUDIENCE,
    "PANAVERSITY_JWT_LEEWAY": "60",
}
ALL_SCOPES = "fs:read fs:write fs:admin"


def claims(sub: str | None = "agent-1", scope: str | None = ALL_SCOPES, **extra: Any) -> dict[str, Any]:
    """Valid claims for the HS test server; `extra` overrides or adds (None removes)."""
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": sub,
        "scope": scope,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
    }
    values.update(extra)
    return {k: v for k, v in values.items() if v is not None}


def hs_token(sub: str | None = "agent-1", scope: str | None = ALL_SCOPES, **extra: Any) -> str:
    """An HS256 token signed with the test secret."""
    return jwt.encode(claims(sub, scope, **extra), SECRET, algorithm="HS256")


def unsigned_token(**extra: Any) -> str:
    """An `alg: none` token with otherwise valid claims."""
    return jwt.encode(claims(**extra), None, algorithm="none")


class KeyRing:
    """Signing keys published as a JWKS; `rotate()` replaces the published RSA key."""

    def __init__(self) -> None:
        self.rsa: dict[str, rsa.RSAPrivateKey] = {}
        self.ec: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.published: list[str] = []
        self.fetches = 0
        self.rotate("rsa-1")
        self.ec["ec-1"] = ec.generate_private_key(ec.SECP256R1())
        self.published.append("ec-1")

    def rotate(self, kid: str) -> None:
        """Publish a new RSA key `kid` instead of the previous RSA keys."""
        self.rsa[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.published = [k for k in self.published if k in self.ec] + [kid]

    def jwks(self) -> dict[str, Any]:
        """The published key set."""
        keys: list[dict[str, Any]] = []
        for kid in self.published:
            if kid in self.rsa:
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa[kid].public_key()))
                keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
            else:
                jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec[kid].public_key()))
                keys.append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
        return {"keys": keys}

    def token(
        self,
        kid: str,
        sub: str = "agent-rs",
        scope: str = ALL_SCOPES,
        headers_extra: dict[str, str] | None = None,
        **extra: Any,
    ) -> str:
        """A token signed by key `kid` (RS256 or ES256 by the key's kind), with extra header fields."""
        key: Any = self.rsa.get(kid) or self.ec[kid]
        algorithm = "RS256" if kid in self.rsa else "ES256"
        headers = {"kid": kid, **(headers_extra or {})}
        return jwt.encode(claims(sub, scope, **extra), key, algorithm=algorithm, headers=headers)

    def public_pem(self, kid: str) -> bytes:
        """The PEM of RSA key `kid`'s public half (what an HS-confusion attacker would sign with)."""
        return (
            self.rsa[kid]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )


@contextmanager
def jwks_server(ring: KeyRing) -> Iterator[str]:
    """Serve `ring`'s JWKS over HTTP on a free loopback port; yield its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ring.fetches += 1
            body = json.dumps(ring.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


async def audit_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every audit entry, oldest first, as dicts."""
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            result = await conn.execute(sa.select(audit_log).order_by(audit_log.c.seq))
            return [dict(row._mapping) for row in result]
    finally:
        await db.dispose()
