"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from panaversity_fs.db.engine import Database
from tests.conftest import Backends
from tests.unit.test_driver_writes import seeded_database


@pytest.fixture
async def pg_db(backends: Backends) -> AsyncIterator[Database]:
    """A PostgreSQL database holding one pending base row (`test_driver_writes.ROW`)."""
    db = await seeded_database(backends, "postgres-fs")
    yield db
    await db.dispose()
