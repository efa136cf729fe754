"""Fixtures: real PostgreSQL and SQLite databases (schema from Alembic), real fs and S3 stores.

PostgreSQL: `PFS_TEST_PG_URL` (default: the local server, database `test`); each test gets a
fresh database cloned from a migrated template. S3: a moto server on loopback, one key prefix
per test. When `CI` is set, an unreachable backend fails the run instead of skipping.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import boto3
import pytest
from moto.server import ThreadedMotoServer

from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.migrate import upgrade
from testkit.databases import create_pg_database, drop_pg_database
from testkit.processes import IN_CI, free_port
from tests.faultproxy import PostgresProxy

logging.getLogger("werkzeug").setLevel(logging.WARNING)

PG_URL = os.environ.get("PFS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BUCKET = "pfs-test"
S3_KEYS = {"s3_access_key_id": "testing", "s3_secret_access_key": "testing"}

DB_KINDS = ("sqlite", "postgres")
STORE_KINDS = ("fs", "s3")
PAIRS = ("sqlite-fs", "postgres-s3")
MATRIX = tuple(f"{d}-{s}" for d in DB_KINDS for s in STORE_KINDS)


def backend_unavailable(what: str, why: object, ci_note: str = "a skipped backend is a failure") -> NoReturn:
    """Skip the test because `what` is unreachable (fail it instead, with `ci_note`, when CI is set)."""
    message = f"{what} is not available: {why}"
    if IN_CI:
        pytest.fail(f"{message} (CI is set: {ci_note})")
    pytest.skip(message)


@pytest.fixture(scope="session")
async def pg_template() -> AsyncIterator[str | None]:
    """A PostgreSQL database migrated to head, used as the template of per-test databases."""
    try:
        admin = await asyncpg.connect(PG_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {PG_URL} is unreachable ({exc}); CI needs it")
        yield None
        return
    await admin.close()
    name = f"pfs_tmpl_{os.getpid()}"
    db = Database.from_settings(Settings(database_url=await create_pg_database(name, admin_url=PG_URL)))
    await upgrade(db)
    await db.dispose()
    try:
        yield name
    finally:
        await drop_pg_database(name, admin_url=PG_URL)


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head, copied for each test."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    db = Database.from_settings(Settings(database_url=f"sqlite+aiosqlite:///{path}"))
    await upgrade(db)
    await db.dispose()
    return path


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback with the test bucket."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


class Backends:
    """Builds settings for one database kind and one store kind, cleaning up afterwards."""

    def __init__(
        self, tmp_path: Path, sqlite_template: Path, pg_template: str | None, s3_endpoint: Callable[[], str]
    ) -> None:
        self._tmp = tmp_path
        self._sqlite_template = sqlite_template
        self._pg_template = pg_template
        self._s3_endpoint = s3_endpoint
        self._pg_databases: list[str] = []

    async def database_url(self, kind: str) -> str:
        """A fresh, migrated database of `kind` (`sqlite` or `postgres`)."""
        if kind == "sqlite":
            path = self._tmp / f"pfs-{uuid.uuid4().hex[:8]}.db"
            shutil.copy(self._sqlite_template, path)
            return f"sqlite+aiosqlite:///{path}"
        if self._pg_template is None:
            backend_unavailable("PostgreSQL", PG_URL)
        name = f"pfs_t_{uuid.uuid4().hex[:12]}"
        self._pg_databases.append(name)
        return await create_pg_database(name, template=self._pg_template, admin_url=PG_URL)

    def store_settings(self, kind: str) -> dict[str, Any]:
        """Settings for a fresh, empty store of `kind` (`fs` or `s3`)."""
        if kind == "fs":
            root = self._tmp / f"store-{uuid.uuid4().hex[:8]}"
            return {"storage_backend": "fs", "storage_root": root}
        return {
            "storage_backend": "s3",
            "s3_bucket": BUCKET,
            "s3_endpoint": self._s3_endpoint(),
            "s3_region": "us-east-1",
            "s3_root": f"/t-{uuid.uuid4().hex}/",
            **S3_KEYS,
        }

    async def settings(self, combo: str, **overrides: Any) -> Settings:
        """Settings for `combo` (`sqlite-fs`, `postgres-s3`, ...) plus `overrides`."""
        db_kind, store_kind = combo.split("-")
        values: dict[str, Any] = {
            "database_url": await self.database_url(db_kind),
            **self.store_settings(store_kind),
            "recovery_interval": 3600,
            "audit_read_batch_interval": 0.01,
        }
        values.update(overrides)
        return Settings(**values)

    async def close(self) -> None:
        """Drop the PostgreSQL databases made for this test."""
        for name in self._pg_databases:
            await drop_pg_database(name, admin_url=PG_URL)


@pytest.fixture
async def backends(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path, pg_template: str | None
) -> AsyncIterator[Backends]:
    """Factory of per-test settings on real backends."""

    def endpoint() -> str:
        return str(request.getfixturevalue("s3_endpoint"))

    made = Backends(tmp_path, sqlite_template, pg_template, endpoint)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture(params=PAIRS)
async def settings(request: pytest.FixtureRequest, backends: Backends) -> Settings:
    """Settings on each pairing of database and store (both databases, both stores)."""
    return await backends.settings(str(request.param))


@pytest.fixture(params=MATRIX)
async def matrix_settings(request: pytest.FixtureRequest, backends: Backends) -> Settings:
    """Settings on every combination of database and store."""
    return await backends.settings(str(request.param))


@pytest.fixture(params=DB_KINDS)
async def db_settings(request: pytest.FixtureRequest, backends: Backends) -> Settings:
    """Settings on each database (with the fs store)."""
    return await backends.settings(f"{request.param}-fs")


@pytest.fixture
async def db(db_settings: Settings) -> AsyncIterator[Database]:
    """The `Database` of a fresh migrated database (SQLite, then PostgreSQL)."""
    database = Database.from_settings(db_settings)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def pg_proxy() -> Iterator[PostgresProxy]:
    """A fault proxy in front of the test PostgreSQL server."""
    upstream = urlsplit(PG_URL)
    proxy = PostgresProxy(upstream.hostname or "127.0.0.1", upstream.port or 5432, seed=5).start()
    try:
        yield proxy
    finally:
        proxy.close()


async def proxied(backends: Backends, proxy: PostgresProxy) -> tuple[Settings, Settings]:
    """Direct settings on a fresh PostgreSQL database, and the same through `proxy`."""
    direct = await backends.settings("postgres-fs")
    return direct, direct.model_copy(update={"database_url": proxy.url(direct.database_url)})


KINDS = ("unit", "service", "system", "chaos")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its kind, the folder it lives in (`-m unit`, `-m "not chaos"`, ...)."""
    for item in items:
        for kind in KINDS:
            if f"/tests/{kind}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, kind))
