"""PostgreSQL point reads sent by the driver (`Database.fetch_prepared`): failures are typed."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy.exc import OperationalError

from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_point_read_on_an_unreachable_server_fails_as_a_database_error() -> None:
    db = Database.from_settings(
        Settings(database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/test")
    )
    try:
        with pytest.raises(OperationalError):
            await db.fetch_prepared("SELECT 1")
    finally:
        await db.dispose()
