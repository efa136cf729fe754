"""Bearer-token (JWT) verification: which tokens the server accepts, decided by configuration.

Auth is on when `PANAVERSITY_JWT_SECRET` (HS256/384/512 with a shared secret) or
`PANAVERSITY_JWKS_URL` (RS*/ES*/PS* keys published as a JWKS) is set. The accepted algorithms
come from `PANAVERSITY_JWT_ALGORITHMS` only: a token's `alg` header merely picks one of them,
so `alg: none` and HS-vs-RS confusion tokens are refused. `exp` is required; `nbf`, `iat`,
`iss` and `aud` are checked (the last two when configured) with a small leeway. JWKS fetching,
caching and key rotation are FastMCP's `JWTVerifier`'s.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import jwt
from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.auth.providers.jwt import JWTVerifier

from panaversity_fs.config import Settings
from panaversity_fs.errors import ConfigurationError, PanaversityFSError
from panaversity_fs.identity import caller_from_claims

logger = logging.getLogger(__name__)

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
KEY_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"})
MIN_SECRET_BYTES = 32
PLACEHOLDERS = (
    "changeme",
    "replaceme",
    "placeholder",
    "example",
    "yoursecret",
    "secretkey",
    "mysecret",
    "supersecret",
    "password",
    "default",
    "insecure",
)
"""Fragments of copied-from-the-docs secrets; a secret containing one is refused."""


def auth_enabled(settings: Settings) -> bool:
    """Whether `settings` turn bearer authentication on."""
    return settings.jwt_secret is not None or settings.jwks_url is not None


def check_secret(secret: str) -> None:
    """Refuse an HMAC secret that is short, a placeholder, or visibly not random.

    Raises:
        ConfigurationError: the secret is under 32 bytes, contains a placeholder word
            (`changeme`, `secret-key`, ...), or uses fewer than 8 distinct characters.
    """
    hint = "generate one with `openssl rand -hex 32`"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigurationError(f"PANAVERSITY_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes; {hint}")
    letters = "".join(c for c in secret.lower() if c.isalnum())
    if any(word in letters for word in PLACEHOLDERS) or len(set(secret)) < 8:
        raise ConfigurationError(f"PANAVERSITY_JWT_SECRET looks like a placeholder; {hint}")


def build_verifier(settings: Settings) -> BearerVerifier | None:
    """The token verifier `settings` describe, or None when auth is off.

    Raises:
        ConfigurationError: both or an unusable secret/JWKS URL, or algorithms that do not fit
            the key source (HS* needs the secret, RS*/ES*/PS* the JWKS URL).
    """
    if not auth_enabled(settings):
        return None
    if settings.jwt_secret is not None and settings.jwks_url is not None:
        raise ConfigurationError("set PANAVERSITY_JWT_SECRET or PANAVERSITY_JWKS_URL, not both")
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret.get_secret_value()
        check_secret(secret)
        algorithms = list(settings.jwt_algorithms) or ["HS256"]
        allowed, source = HMAC_ALGORITHMS, "a JWT secret"
    else:
        secret = None
        url = settings.jwks_url or ""
        if not url.startswith(("https://", "http://")):
            raise ConfigurationError("PANAVERSITY_JWKS_URL must be an http(s) URL")
        algorithms = list(settings.jwt_algorithms) or ["RS256", "ES256"]
        allowed, source = KEY_ALGORITHMS, "a JWKS URL"
    wrong = sorted(set(algorithms) - allowed)
    if wrong:
        raise ConfigurationError(
            f"PANAVERSITY_JWT_ALGORITHMS {wrong} cannot be used with {source} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    verifiers = {
        algorithm: _AlgorithmVerifier(settings, algorithm, secret, settings.jwks_url)
        for algorithm in algorithms
    }
    return BearerVerifier(verifiers)


class BearerVerifier(TokenVerifier):
    """Verifies bearer JWTs with the configured algorithms; FastMCP's `auth=` provider."""

    def __init__(self, verifiers: dict[str, _AlgorithmVerifier]) -> None:
        super().__init__()
        self._verifiers = verifiers

    @property
    def algorithms(self) -> list[str]:
        """The algorithms accepted, as configured."""
        return sorted(self._verifiers)

    async def verify_token(self, token: str) -> AccessToken | None:
        """Return the verified token, or None (the request then gets 401)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        algorithm = header.get("alg")
        verifier = self._verifiers.get(algorithm) if isinstance(algorithm, str) else None
        if verifier is None:
            logger.info("bearer token refused: algorithm not accepted", extra={"alg": str(algorithm)[:16]})
            return None
        return await verifier.load_access_token(token)


class _AlgorithmVerifier(JWTVerifier):
    """FastMCP's verifier, locked to one algorithm, with PyJWT's complete claim checks.

    The parent supplies the key (the secret, or the JWKS key named by `kid`, cached and
    refreshed on rotation); PyJWT checks the signature with exactly this algorithm, requires
    `exp`, and checks `nbf`, `iat`, `iss` and `aud` with the configured leeway.
    """

    def __init__(self, settings: Settings, algorithm: str, secret: str | None, jwks_url: str | None) -> None:
        super().__init__(
            public_key=secret,
            jwks_uri=None if secret is not None else jwks_url,
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            algorithm=algorithm,
            jwks_refresh_interval=settings.jwks_refresh_interval,
        )
        self._leeway = settings.jwt_leeway
        self._max_lifetime = settings.jwt_max_lifetime

    async def load_access_token(self, token: str) -> AccessToken | None:
        """Return the verified token, or None when anything about it is wrong."""
        try:
            key = await self._get_verification_key(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self._leeway,
                options={
                    "require": ["exp"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
            _check_times(claims, time.time() + self._max_lifetime + self._leeway)
            caller = caller_from_claims(claims)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            logger.info("bearer token refused", extra={"reason": type(exc).__name__})
            return None
        except PanaversityFSError as exc:
            logger.info("bearer token refused", extra={"reason": exc.message})
            return None
        expires = claims.get("exp")
        return AccessToken(
            token=token,
            client_id=caller.agent_id,
            scopes=sorted(caller.scopes or ()),
            # The transport re-checks `expires_at` without leeway; give it the leeway-adjusted end.
            expires_at=int(expires + self._leeway) if isinstance(expires, int | float) else None,
            subject=claims.get("sub") if isinstance(claims.get("sub"), str) else None,
            claims=claims,
        )


def _check_times(claims: dict[str, Any], latest_expiry: float) -> None:
    """Require the time claims to be finite JSON numbers (PyJWT also reads numeric strings) and
    `exp` to lie no further ahead than the longest lifetime allowed.

    Raises:
        jwt.InvalidTokenError: a time claim is not a number, or `exp` is too far ahead.
    """
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if name in claims and (
            not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
        ):
            raise jwt.InvalidTokenError(f"the {name} claim must be a number")
    if claims["exp"] > latest_expiry:
        raise jwt.InvalidTokenError("the token expires further ahead than the longest lifetime allowed")


def mint_token(
    settings: Settings,
    subject: str,
    scopes: str = "fs:read fs:write",
    user_id: str | None = None,
    books: list[str] | None = None,
    ttl: int = 3600,
) -> str:
    """Return an HS token signed with the configured secret (development and tests).

    Raises:
        ConfigurationError: no usable `PANAVERSITY_JWT_SECRET` is configured, or `ttl` exceeds
            `jwt_max_lifetime` (the server would refuse the token).
        Unauthenticated: the subject, user id or a book id could not stand in a token.
    """
    if settings.jwt_secret is None:
        raise ConfigurationError("PANAVERSITY_JWT_SECRET is not set; tokens are signed with it")
    secret = settings.jwt_secret.get_secret_value()
    check_secret(secret)
    if ttl > settings.jwt_max_lifetime:
        raise ConfigurationError(
            f"--ttl {ttl} exceeds PANAVERSITY_JWT_MAX_LIFETIME ({settings.jwt_max_lifetime:g} s)"
        )
    algorithm = (list(settings.jwt_algorithms) or ["HS256"])[0]
    if algorithm not in HMAC_ALGORITHMS:
        raise ConfigurationError(f"cannot mint {algorithm} tokens with a shared secret")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + ttl, "scope": scopes}
    if settings.auth_issuer:
        claims["iss"] = settings.auth_issuer
    if settings.auth_audience:
        claims["aud"] = settings.auth_audience
    if user_id is not None:
        claims["user_id"] = user_id
    if books is not None:
        claims["books"] = books
    caller_from_claims(claims)
    return jwt.encode(claims, secret, algorithm=algorithm)
