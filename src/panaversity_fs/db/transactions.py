"""Settling a transaction whose COMMIT was sent but whose answer never came (PostgreSQL).

Every write transaction appends to the audit chain, and that append also reads the
transaction's id and its backend's pid into its `WriteTransaction`. If the connection then dies
around COMMIT, `settle` asks PostgreSQL on a fresh connection: `txid_status` says committed or
aborted; while it says in progress (the COMMIT is still in flight, or the backend has not
noticed the dead client yet), that backend is terminated, so the transaction cannot commit
later, and asked again. A plain look at the data instead could run before a late COMMIT lands
and wrongly conclude that nothing happened.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from panaversity_fs.db.engine import DB_ERRORS, Database

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
