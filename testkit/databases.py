"""Scratch PostgreSQL databases for benchmarks and load runs (dropped afterwards)."""

from __future__ import annotations

import os

import asyncpg

PG_ADMIN_URL = os.environ.get("PFS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def create_pg_database(name: str) -> str:
    """Create the scratch database `name`; return its URL."""
    admin = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


async def drop_pg_database(name: str) -> None:
    """Drop the scratch database `name` (even with connections left)."""
    admin = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
