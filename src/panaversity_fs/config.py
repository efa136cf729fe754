"""Settings: one pydantic-settings object, built by the entry point and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./panaversity_fs.db"
"""The embedded default database: a SQLite file in the working directory."""

MIN_SECRET_BYTES = 32
"""Shortest secret accepted for HMAC keys (URL signing, audit checkpoints)."""

JSON_ESCAPE_FACTOR = 6
"""Most bytes JSON needs for one byte of text: a control character becomes `\\u00XX`."""

REQUEST_ENVELOPE_BYTES = 64 * 1024
"""Room for the JSON-RPC envelope and the other arguments of a write."""


def normalize_database_url(url: str) -> str:
    """Return `url` rewritten for the async drivers we ship.

    `postgres://` and `postgresql://` (as Fly, Heroku and Neon hand them out) become
    `postgresql+asyncpg://`; libpq's `sslmode=` becomes asyncpg's `ssl=`; a plain `sqlite://`
    URL gets the aiosqlite driver.
    """
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            url = "postgresql+asyncpg://" + url[len(prefix) :]
            break
    if url.startswith("sqlite://"):
        url = "sqlite+aiosqlite://" + url[len("sqlite://") :]
    if url.startswith("postgresql+asyncpg://") and "sslmode=" in url:
        url = url.replace("sslmode=", "ssl=")
    return url


class Settings(BaseSettings):
    """Every setting of a PanaversityFS process.

    Environment variables use the `PANAVERSITY_` prefix, except the database settings, which
    also answer to the names deployments already use (`DATABASE_URL`,
    `DATABASE_POOL_SIZE`, ...).
    """

    model_config = SettingsConfigDict(
        env_prefix="PANAVERSITY_", env_file=".env", extra="ignore", populate_by_name=True
    )

    server_host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    server_port: int = Field(8000, ge=0, le=65535, description="Port the HTTP server listens on.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes sharing the port. Each has its own database pool, rate limits, "
        "load-shedding slots and background checks, like a replica; more workers use more cores.",
    )
    stateless_http: bool = Field(
        False,
        description="Serve MCP without sessions, so any process can answer any request: needed "
        "behind a load balancer without session affinity, and implied by workers > 1. Agents are "
        "then identified by their bearer token, or by the client info current MCP clients send "
        "with every request.",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Comma-separated addresses of reverse proxies whose X-Forwarded-For / "
        "X-Forwarded-Proto are trusted (`*`: any; set it behind a load balancer, so per-address "
        "limits see clients rather than the proxy).",
    )
    public_without_auth: bool = Field(
        False,
        description="Allow binding a non-loopback address with authentication off (only on a "
        "network where every client is trusted); otherwise such a server refuses to start.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Extra Host header values accepted (DNS-rebinding protection). Loopback "
        "names are always accepted; a public bind address needs an explicit list.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list, description="Browser origins trusted besides same-origin ones."
    )
    max_request_bytes: int | None = Field(
        None,
        ge=1024,
        description="Largest HTTP request body accepted. Unset: the smallest body that still admits "
        "every valid write, a lesson of `max_content_bytes` characters that JSON must escape "
        "(6 bytes each) or an inline asset of `max_inline_asset_bytes` in base64, plus 64 KiB; "
        "a smaller explicit value is refused at start.",
    )

    rate_limit_reads_per_minute: int = Field(
        1200, ge=0, description="Read tool calls one agent may make per minute, per process (0: unlimited)."
    )
    rate_limit_writes_per_minute: int = Field(
        300,
        ge=0,
        description="Mutating tool calls one agent may make per minute, per process (0: unlimited).",
    )
    refusals_per_minute: int = Field(
        60,
        ge=0,
        description="Denied tool calls (FORBIDDEN) one agent may cause per minute, per process; "
        "each is audited, so beyond this budget further calls get RATE_LIMITED (0: unlimited).",
    )
    rate_limit_burst: float = Field(
        2.0, ge=0.1, description="Minutes of an agent's rate it may spend at once (token-bucket size)."
    )
    auth_failures_per_minute: int = Field(
        60,
        ge=0,
        description="Refused credentials (401 or 403 answers: bad bearer tokens, bad or expired "
        "signed URLs) per minute one client address may cause before its requests get 429 "
        "without their credentials being checked (0: unlimited).",
    )
    max_concurrent_calls: int = Field(32, ge=1, description="Tool calls run at once; more wait for a slot.")
    max_waiting_calls: int = Field(
        256, ge=0, description="Tool calls that may wait for a slot; beyond that they are shed at once."
    )
    max_call_wait: float = Field(
        1.0, gt=0, description="Seconds a tool call waits for a slot before it is shed (UNAVAILABLE)."
    )
    request_timeout: float = Field(
        30.0,
        gt=0,
        description="Deadline in seconds of one tool call: read tools are cut off at it "
        "(UNAVAILABLE); a mutation still before its commit gives up (a commit is never abandoned). "
        "Audit tools are exempt: they report progress and take `max_entries`.",
    )

    storage_backend: Literal["fs", "s3"] = Field("fs", description="`fs` or `s3` (R2 = s3).")
    storage_root: Path = Field(Path("./data"), description="Root folder of the fs backend.")
    s3_bucket: str | None = Field(None, description="Bucket of the s3 backend.")
    s3_endpoint: str | None = Field(None, description="S3 endpoint URL (R2: the account URL).")
    s3_region: str = Field("auto", description="S3 region (`auto` for R2).")
    s3_access_key_id: SecretStr | None = Field(None, description="S3 access key id.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key.")
    s3_root: str = Field("/", description="Key prefix inside the bucket.")
    storage_threads: int = Field(16, ge=1, le=256, description="Threads doing storage I/O.")
    storage_timeout: float = Field(30.0, gt=0, description="Seconds one storage call may take.")
    storage_retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Times an s3 request failing with a temporary error (503 SlowDown, 500, a reset "
        "connection, a body cut short) is retried, after 0.1 s doubling to at most 1 s, jittered "
        "(0: never). Within `storage_timeout`; the fs backend never retries.",
    )

    database_url: str = Field(
        DEFAULT_SQLITE_URL,
        validation_alias=AliasChoices("PANAVERSITY_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="SQLAlchemy URL; postgres:// URLs are converted for asyncpg.",
    )
    database_pool_size: int = Field(
        10,
        ge=1,
        validation_alias=AliasChoices("DATABASE_POOL_SIZE", "PANAVERSITY_DATABASE_POOL_SIZE"),
        description="Connections kept open to PostgreSQL.",
    )
    database_max_overflow: int = Field(
        10,
        ge=0,
        validation_alias=AliasChoices("DATABASE_MAX_OVERFLOW", "PANAVERSITY_DATABASE_MAX_OVERFLOW"),
        description="Extra connections allowed beyond the pool under load.",
    )
    database_pool_timeout: float = Field(
        30.0,
        gt=0,
        validation_alias=AliasChoices("DATABASE_POOL_TIMEOUT", "PANAVERSITY_DATABASE_POOL_TIMEOUT"),
        description="Seconds to wait for a pooled connection.",
    )
    database_statement_timeout: float = Field(
        15.0,
        gt=0,
        description="Seconds one database statement may run (PostgreSQL), or a SQLite write may wait for another process's lock.",
    )
    database_connect_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds to open a new PostgreSQL connection (TCP and authentication); a "
        "database that does not answer fails the calls that need one after this.",
    )
    auto_migrate: bool = Field(
        True, description="Upgrade an older schema to head at start-up (an empty database always is)."
    )

    max_content_bytes: int = Field(
        2 * 1024 * 1024, ge=1, description="Largest markdown file `write_content` accepts."
    )
    recovery_interval: float = Field(
        30.0, gt=0, description="Seconds between runs of the intent-recovery sweep."
    )
    recovery_grace: float = Field(
        60.0,
        ge=0,
        description="Age in seconds after which a staged object with no journal row is "
        "considered abandoned by its writer; a committed write whose publish is still pending "
        "is finished by recovery after this or 5 s, whichever is smaller.",
    )
    fsck_interval: float = Field(
        3600.0,
        ge=0,
        description="Seconds between the server's read-only journal/storage consistency checks, "
        "exported as `panaversityfs_fsck_problems` (0: never).",
    )
    history_days: float = Field(
        30.0,
        ge=0,
        description="Days every committed version of a file stays readable (list_versions, "
        "read_content version=, restore, revert, as_of); older ones are collected by fsck.",
    )
    history_min_versions: int = Field(
        20,
        ge=1,
        description="Versions of each file kept whatever their age (the newest ones).",
    )
    idempotency_ttl: float = Field(
        86400.0, gt=0, description="Seconds an idempotency key (and the result it replays) is kept."
    )
    audit_read_batch_interval: float = Field(
        0.2, gt=0, description="Seconds read audit entries wait to be appended as one batch."
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the JSON logs."
    )
    archive_timeout: float = Field(
        60.0, gt=0, description="Seconds an archive build may take before it ends partial."
    )
    archive_streams: int = Field(
        8,
        ge=1,
        description="Archive downloads streamed at once by one process; more are refused with 503 "
        "and Retry-After (each holds up to ~14 MiB of buffers and a thread).",
    )
    archive_streams_per_agent: int = Field(
        2, ge=1, description="Archive downloads one agent may stream at once; more get 429."
    )
    archive_stall_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds an archive download may wait for its client to take the next block "
        "before it is cut off (a client that stops reading cannot hold a stream forever).",
    )

    public_url: str | None = Field(
        None,
        description="Base URL clients reach this server at (e.g. https://fs.example.com), used in "
        "download and upload URLs (unset: the URL of the MCP request that asked for one) and as the "
        "resource URL of the OAuth discovery metadata (unset: the bind address).",
    )
    url_signing_secret: SecretStr | None = Field(
        None,
        description="Key of the HMAC that signs download and upload URLs. Replicas behind one "
        "address must share it; unset, each process draws a random key at start.",
    )
    archive_url_ttl: float = Field(900.0, gt=0, description="Seconds a signed archive URL stays valid.")
    asset_url_ttl: float = Field(
        900.0, gt=0, description="Seconds a signed asset download or upload URL stays valid."
    )
    max_inline_asset_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1,
        description="Largest asset `upload_asset` accepts inline (base64) and `get_asset` returns inline.",
    )
    max_asset_bytes: int = Field(512 * 1024 * 1024, ge=1, description="Largest asset an upload URL accepts.")
    page_bytes: int = Field(
        1024 * 1024, ge=1024, description="Content bytes one page of a bulk read carries at most."
    )
    search_time_budget: float = Field(
        10.0,
        gt=0,
        description="Seconds one glob or grep search may run before it ends with a cursor to continue.",
    )
    search_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="Threads running regex searches (grep) for all callers together; searches "
        "beyond that wait their turn, so expensive patterns cannot take every core.",
    )
    manifest_snapshots_kept: int = Field(
        200, ge=2, description="Build manifests kept per book for plan_build (oldest pruned)."
    )

    audit_checkpoint_secret: SecretStr | None = Field(
        None,
        description="HMAC key (at least 32 bytes) that signs audit chain checkpoints. Unset: a key "
        "derived from PANAVERSITY_URL_SIGNING_SECRET, or unsigned checkpoints when that is unset too.",
    )
    audit_checkpoint_interval: float = Field(
        300.0,
        ge=0,
        description="Seconds between audit checkpoints written by the server when the chain grew "
        "(0: none; `panaversity-fs audit checkpoint` writes one on demand).",
    )
    audit_checkpoints_kept: int = Field(
        1000, ge=1, description="Newest audit checkpoints kept in storage (older ones are pruned)."
    )

    jwt_secret: SecretStr | None = Field(None, description="HS256 secret; enables JWT auth.")
    jwks_url: str | None = Field(None, description="JWKS URL (RS256/ES256); enables JWT auth.")
    auth_issuer: str | None = Field(None, description="Required `iss` of bearer tokens.")
    auth_audience: str | None = Field(None, description="Required `aud` of bearer tokens.")
    jwt_algorithms: list[str] = Field(
        default_factory=list,
        description="Signature algorithms accepted (never taken from the token). Default: "
        "`HS256` with a JWT secret, `RS256` and `ES256` with a JWKS URL.",
    )
    jwt_max_lifetime: float = Field(
        86400.0,
        gt=0,
        description="Longest a bearer token may still be valid when it is presented: a token whose "
        "`exp` lies further ahead (beyond the leeway) is refused.",
    )
    jwt_leeway: float = Field(
        30.0, ge=0, le=300, description="Seconds of clock skew allowed on `exp`, `nbf` and `iat`."
    )
    jwks_refresh_interval: float = Field(
        30.0,
        ge=0,
        description="Least seconds between two JWKS fetches caused by an unknown key id (keys "
        "rotate in at most this delay; tokens with made-up key ids cannot flood the issuer).",
    )

    @field_validator("url_signing_secret", "audit_checkpoint_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"must be at least {MIN_SECRET_BYTES} bytes; generate one with `openssl rand -hex 32`"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _normalize_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_backend(self) -> Settings:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("PANAVERSITY_S3_BUCKET is required when the storage backend is s3")
        if self.max_request_bytes is not None and self.max_request_bytes < self.largest_valid_request:
            raise ValueError(
                f"PANAVERSITY_MAX_REQUEST_BYTES ({self.max_request_bytes}) is below "
                f"{self.largest_valid_request}, the body of the largest valid write; unset it to "
                "derive it from the content and inline asset limits"
            )
        return self

    @property
    def largest_valid_request(self) -> int:
        """Bytes of the largest request body a valid write can need: a lesson whose every
        character JSON escapes as `\\u00XX`, or an inline asset in base64, plus the envelope."""
        base64_bytes = 4 * -(-self.max_inline_asset_bytes // 3)
        return max(JSON_ESCAPE_FACTOR * self.max_content_bytes, base64_bytes) + REQUEST_ENVELOPE_BYTES

    @property
    def request_body_limit(self) -> int:
        """The largest HTTP request body accepted (configured, or derived from the write limits)."""
        return self.max_request_bytes or self.largest_valid_request

    @property
    def is_sqlite(self) -> bool:
        """Whether the configured database is SQLite."""
        return self.database_url.startswith("sqlite")


def settings_from_environment(**overrides: Any) -> Settings:
    """Settings from the environment (and `.env`), with `overrides` taking precedence.

    Raises:
        pydantic.ValidationError: a setting is malformed.
    """
    return Settings(**overrides)
