"""Settings: one pydantic-settings object, built by the entry point and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./panaversity_fs.db"
"""The embedded default database: a SQLite file in the working directory (FR-029)."""


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
    also answer to the names the seed operations guide promised (`DATABASE_URL`,
    `DATABASE_POOL_SIZE`, ...).
    """

    model_config = SettingsConfigDict(
        env_prefix="PANAVERSITY_", env_file=".env", extra="ignore", populate_by_name=True
    )

    server_host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    server_port: int = Field(8000, ge=0, le=65535, description="Port the HTTP server listens on.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Extra Host header values accepted (DNS-rebinding protection). Loopback "
        "names are always accepted; a public bind address needs an explicit list.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list, description="Browser origins trusted besides same-origin ones."
    )
    max_request_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest HTTP request body accepted."
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
        15.0, gt=0, description="Seconds one database statement may run (PostgreSQL)."
    )
    auto_migrate: bool = Field(True, description="Upgrade the schema to head at start-up (FR-031).")

    max_content_bytes: int = Field(
        2 * 1024 * 1024, ge=1, description="Largest markdown file `write_content` accepts."
    )
    recovery_interval: float = Field(
        30.0, gt=0, description="Seconds between runs of the intent-recovery sweep."
    )
    recovery_grace: float = Field(
        60.0,
        ge=0,
        description="Age in seconds after which an unpublished write or a staged object "
        "with no journal row is considered abandoned by its writer.",
    )
    audit_read_batch_interval: float = Field(
        0.05, gt=0, description="Seconds read audit entries wait to be appended as one batch."
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the JSON logs."
    )
    archive_timeout: float = Field(
        60.0, gt=0, description="Seconds an archive build may take before it ends partial."
    )

    jwt_secret: SecretStr | None = Field(None, description="HS256 secret; enables JWT auth.")
    jwks_url: str | None = Field(None, description="JWKS URL (RS256/ES256); enables JWT auth.")
    auth_issuer: str | None = Field(None, description="Required `iss` of bearer tokens.")
    auth_audience: str | None = Field(None, description="Required `aud` of bearer tokens.")

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
        return self

    @property
    def is_sqlite(self) -> bool:
        """Whether the configured database is SQLite."""
        return self.database_url.startswith("sqlite")
