"""PostgreSQL point reads, one-statement commits and publishes keep their connection for the next
call of their kind (`db.held`): no pool checkout per call, never more held than the pool can
spare, a failed one discarded or checked in (and every other held one with it), an idle one
handed back to the pool as idle (so its next checkout pings it), all handed back on dispose."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, OperationalError

from panaversity_fs.db import journal_sql, publish_sql
from panaversity_fs.db.engine import Database
from panaversity_fs.db.held import IDLE_SINCE, HeldConnections, held_per_use
from panaversity_fs.paths import BASE_USER
from tests.unit.test_driver_connection import CAS, HEAD
from tests.unit.test_driver_writes import ROW, cas_values


async def _read(pg_db: Database) -> None:
    rows = await journal_sql.look_up(pg_db, ROW["k_book"], ROW["k_path"], [BASE_USER])
    assert rows[BASE_USER].version >= 1


def _checkouts(pg_db: Database) -> list[object]:
    seen: list[object] = []
    event.listen(pg_db.engine.sync_engine.pool, "checkout", lambda conn, *_rest: seen.append(conn))
    return seen


async def test_consecutive_reads_use_one_connection_checked_out_once(pg_db: Database) -> None:
    checkouts = _checkouts(pg_db)
    for _ in range(5):
        await _read(pg_db)
    assert len(checkouts) == 1
    assert len(pg_db.held_connections) == 1
    assert pg_db.engine.pool.checkedout() == 1  # pyright: ignore[reportAttributeAccessIssue]
    await pg_db.dispose()
    assert pg_db.held_connections == []
    assert pg_db.engine.pool.checkedout() == 0  # pyright: ignore[reportAttributeAccessIssue]


async def test_a_read_whose_held_connection_died_fails_typed_and_the_next_read_works(pg_db: Database) -> None:
    await _read(pg_db)
    (held,) = pg_db.held_connections
    pid = int(held.driver_connection.get_server_pid())  # pyright: ignore[reportOptionalMemberAccess]
    async with pg_db.read() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(OperationalError):
        await _read(pg_db)
    assert pg_db.held_connections == []  # discarded, not kept for the next read
    await _read(pg_db)
    (again,) = pg_db.held_connections
    assert int(again.driver_connection.get_server_pid()) != pid  # pyright: ignore[reportOptionalMemberAccess]


async def test_concurrent_reads_hold_no_more_than_the_limit(pg_db: Database) -> None:
    await asyncio.gather(*(_read(pg_db) for _ in range(8)))
    assert len(pg_db.held_connections) == held_per_use(10, 10) == 2
    assert pg_db.engine.pool.checkedout() == 2  # pyright: ignore[reportAttributeAccessIssue]


async def test_a_connection_held_too_long_goes_back_to_the_pool_as_idle_since_its_last_use(
    pg_db: Database,
) -> None:
    held = HeldConnections[Any](limit=1, max_idle=0.05, group=[])
    pooled = await pg_db.engine.raw_connection()
    info: dict[str, Any] = pooled.info
    handed_back = time.monotonic()
    held.give_back(pooled)
    time.sleep(0.1)
    assert held.take() is None
    assert pg_db.engine.pool.checkedout() == 0  # pyright: ignore[reportAttributeAccessIssue]
    # The pool's check-in would have noted "now"; the pool pings a connection idle since long ago.
    assert handed_back <= info[IDLE_SINCE] < handed_back + 0.05


def test_the_pool_keeps_connections_for_other_transactions() -> None:
    assert held_per_use(1, 0) == held_per_use(7, 0) == 0
    assert held_per_use(8, 0) == held_per_use(5, 10) == 1
    assert held_per_use(10, 10) == held_per_use(100, 100) == 2


async def test_one_statement_commits_and_publishes_reuse_their_connection(pg_db: Database) -> None:
    checkouts = _checkouts(pg_db)
    hashes = ["a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64]
    for old, new in itertools.pairwise(hashes):
        async with pg_db.driver_autocommit() as conn:
            assert (await conn.execute(CAS, cas_values(new) | {"k_expected": old})).all()
    async with pg_db.driver_write() as tx:
        assert await publish_sql.finish_publish(tx.conn, journal_sql.FileKey(*ROW.values()), "staged") is None
    async with pg_db.driver_write() as tx:
        await tx.conn.execute(HEAD)
    assert len(checkouts) == 2  # one for the commits, one for the publishes
    assert len(pg_db.held_connections) == 2
    assert pg_db.engine.pool.checkedout() == 2  # pyright: ignore[reportAttributeAccessIssue]


async def test_a_failed_driver_transaction_goes_back_to_the_pool_not_to_the_next_call(
    pg_db: Database,
) -> None:
    async with pg_db.driver_write() as tx:
        first = (await tx.conn.execute(HEAD)).one()
    (held,) = pg_db.held_connections
    with pytest.raises(RuntimeError, match="storage failed"):
        async with pg_db.driver_write() as tx:
            assert (await tx.conn.execute(HEAD)).one()[3] == first[3]  # the held connection
            raise RuntimeError("storage failed")
    assert pg_db.held_connections == []
    assert pg_db.engine.pool.checkedout() == 0  # pyright: ignore[reportAttributeAccessIssue]
    assert held.dbapi_connection is None  # checked in


async def test_a_failed_call_hands_every_held_connection_back_to_the_pool(pg_db: Database) -> None:
    """One failure (a database restart, say) empties every use's held connections: the pool's
    own handling of lost connections applies to them again."""
    async with pg_db.driver_autocommit() as conn:
        assert (await conn.execute(CAS, cas_values("b" * 64))).all()
    async with pg_db.driver_write() as tx:
        await tx.conn.execute(HEAD)
    await _read(pg_db)
    assert len(pg_db.held_connections) == 3
    read_pid = int(pg_db.held_connections[0].driver_connection.get_server_pid())  # pyright: ignore[reportOptionalMemberAccess]
    async with pg_db.read() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": read_pid})
    with pytest.raises(OperationalError):
        await _read(pg_db)
    assert pg_db.held_connections == []
    assert pg_db.engine.pool.checkedout() == 0  # pyright: ignore[reportAttributeAccessIssue]
    async with pg_db.driver_autocommit() as conn:  # the others were sound: back from the pool
        assert (await conn.execute(CAS, cas_values("c" * 64) | {"k_expected": "b" * 64})).all()
    await _read(pg_db)


async def test_a_lost_connection_elsewhere_hands_the_held_ones_back_to_the_pool(pg_db: Database) -> None:
    """SQLAlchemy invalidates the whole pool when any of its connections is lost: the held
    connections are not kept past that either."""
    await _read(pg_db)
    assert len(pg_db.held_connections) == 1
    with pytest.raises(DBAPIError):
        async with pg_db.read() as conn:  # a pooled connection, lost in the middle of a statement
            await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
    assert pg_db.held_connections == []
    await _read(pg_db)
