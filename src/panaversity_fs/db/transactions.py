"""Settling a transaction whose COMMIT was sent but whose answer never came (PostgreSQL).

Every write transaction appends to the audit chain, and that append also reads the
transaction's id and its backend's pid (`remember`). If the connection then dies around COMMIT,
`settle` asks PostgreSQL on a fresh connection: `txid_status` says committed or aborted; while
it says in progress (the COMMIT is still in flight, or the backend has not noticed the dead
client yet), that backend is terminated, so the transaction cannot commit later, and asked
again. A plain look at the data instead could run before a late COMMIT lands and wrongly
conclude that nothing happened.
"""

from __future__ import annotations

import asyncio
from typing import cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.db.engine import DB_ERRORS, Database

TXN_INFO_KEY = "pfs_txn"
"""`conn.info` key: `(txid, backend pid)` of the write transaction in progress (PostgreSQL)."""

SETTLE_ATTEMPTS = 6


def remember(conn: AsyncConnection, txid: int, pid: int) -> None:
    """Note the transaction's id and backend on its connection (read back by the writer)."""
    conn.info[TXN_INFO_KEY] = (txid, pid)


def remembered(conn: AsyncConnection) -> tuple[int, int] | None:
    """The `(txid, pid)` noted for the current transaction, if any (PostgreSQL write transactions)."""
    value: object = conn.info.get(TXN_INFO_KEY)
    return cast(tuple[int, int], value) if isinstance(value, tuple) else None


async def settle(db: Database, transaction: tuple[int, int]) -> bool | None:
    """Whether the transaction committed (True) or never will (False); None if it cannot be told.

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
