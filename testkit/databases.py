"""Scratch PostgreSQL databases for tests, benchmarks and load runs (dropped afterwards)."""

from __future__ import annotations

import os

import asyncpg

PG_ADMIN_URL = os.environ.get("PFS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def database_url(name: str, admin_url: str = PG_ADMIN_URL) -> str:
    """The URL of database `name` on the server `admin_url` names."""
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


async def create_pg_database(name: str, template: str | None = None, admin_url: str = PG_ADMIN_URL) -> str:
    """Create the scratch database `name` (empty, or a copy of `template`), replacing one of that
    name; return its URL."""
    admin = await asyncpg.connect(admin_url, timeout=10)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        copy = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await admin.close()
    return database_url(name, admin_url)


async def drop_pg_database(name: str, admin_url: str = PG_ADMIN_URL) -> None:
    """Drop the scratch database `name` (even with connections left)."""
    admin = await asyncpg.connect(admin_url, timeout=10)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
