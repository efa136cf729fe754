"""Settling a transaction whose COMMIT was sent but whose answer never came (PostgreSQL).

Every write transaction appends to the audit chain, and that append also reads the
transaction's id and its backend's pid into its `WriteTransaction`. If the connection then dies
around COMMIT, `settle` asks PostgreSQL on a fresh connection: `txid_status` says committed or
aborted; while it says in progress (the COMMIT is still in flight, or the backend has not
noticed the dead client yet), that backend is terminated, so the transaction cannot commit
later, and asked again. A plain look at the data instead could run before a late COMMIT lands
and wrongly conclude that nothing happened.

A statement run as a transaction of its own (`run_alone`) has no id to ask about before it
ends; if its connection is lost, its backend is waited for (and terminated while it still runs
a statement) instead, after which a look at the data is final.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Executable, Row, text

from panaversity_fs.db.engine import DB_ERRORS, Database
from panaversity_fs.errors import outcome_unknown

SETTLE_ATTEMPTS = 6


async def settle(db: Database, transaction: tuple[int, int]) -> bool | None:
    """Whether the transaction `(txid, backend pid)` committed (True) or never will (False);
    None if it cannot be told.

    Raises nothing: an unreachable database gives None.
    """
    txid, pid = transaction
    for attempt in range(SETTLE_ATTEMPTS):
        status: object = None
        try:
            async with db.read() as conn:
                status = (await conn.execute(text("SELECT txid_status(:txid)"), {"txid": txid})).scalar()
                if status == "in progress":
                    await conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE pid = :pid AND backend_xid::text::bigint = :xid"
                        ),
                        {"pid": pid, "xid": txid % 2**32},
                    )
        except DB_ERRORS:
            if status is None:
                return None  # the answer was lost too (closing a read-only transaction may fail)
        if status == "committed":
            return True
        if status != "in progress":
            return False  # aborted (or unknown to the server: it never committed)
        await asyncio.sleep(0.05 * (attempt + 1))
    return None


async def run_alone(
    db: Database, statement: Executable, parameters: dict[str, Any], cancel_after: float | None = None
) -> Sequence[Row[Any]]:
    """Run one built-once statement as a transaction of its own (PostgreSQL: autocommit, sent by
    the driver as a write transaction's statements are); return its rows. `cancel_after`:
    seconds before the driver cancels it.

    When it fails it has ended before this raises, committed or not: if its connection was
    lost, its backend is waited for, so it cannot commit later and the data tells what it did.

    Raises:
        sqlalchemy.exc.SQLAlchemyError, OSError: the statement failed (it may have committed
            only if its connection was lost after it was sent).
        Unavailable: its connection was lost and whether its backend still runs it cannot be
            told (`outcome_unknown`).
    """
    async with db.driver_autocommit() as conn:
        # The connection is checked out already: no greenlet hop (`get_raw_connection`) for it.
        sync: Any = conn.sync_connection
        driver: Any = sync.connection.driver_connection
        pid = int(driver.get_server_pid())
        try:
            return (await conn.execute(statement, parameters, cancel_after=cancel_after)).all()
        except DB_ERRORS:
            # Settled while the connection is held (back in the pool it could run another
            # statement), then discarded: a timed-out statement's cancel may still be in flight.
            finished = await _backend_finished(db, pid)
            if not conn.invalidated:
                await conn.invalidate()
            if not finished:
                raise outcome_unknown() from None
            raise


async def _backend_finished(db: Database, pid: int) -> bool:
    """Wait until backend `pid` runs no statement (terminating it while it does); False if that
    cannot be told."""
    for attempt in range(SETTLE_ATTEMPTS):
        try:
            async with db.read() as conn:
                running = (await conn.execute(_TERMINATE_IF_RUNNING, {"pid": pid})).first()
        except DB_ERRORS:
            return False
        if running is None:
            return True
        await asyncio.sleep(0.05 * (attempt + 1))
    return False


_TERMINATE_IF_RUNNING = text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = :pid AND state <> 'idle'"
)
