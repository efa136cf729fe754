"""SQL of idempotency keys: claim a key inside a mutation's transaction, record its outcome."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.db.journal_sql import insert_if_absent
from panaversity_fs.db.schema import idempotency_key

K = idempotency_key.c


@dataclass(frozen=True, slots=True)
class StoredCall:
    """A committed call made under an idempotency key."""

    tool: str
    fingerprint: str
    result: str | None


async def find(conn: AsyncConnection, agent_id: str, key: str) -> StoredCall | None:
    """The committed call `agent_id` made under `key`, if any."""
    row = (
        await conn.execute(
            select(K.tool, K.fingerprint, K.result).where(K.agent_id == agent_id, K.idempotency_key == key)
        )
    ).first()
    return StoredCall(row.tool, row.fingerprint, row.result) if row is not None else None


async def claim(
    conn: AsyncConnection, agent_id: str, key: str, tool: str, fingerprint: str, now: datetime
) -> StoredCall | None:
    """Claim `key` for this transaction; return the call that already holds it, if one does.

    On PostgreSQL a concurrent transaction holding the same key makes this wait until it ends:
    then the key is either taken (its outcome is returned) or free again (it is claimed here).
    """
    values = {
        "agent_id": agent_id,
        "idempotency_key": key,
        "tool": tool,
        "fingerprint": fingerprint,
        "created_at": now,
    }
    statement = insert_if_absent(conn, idempotency_key).values(values).returning(K.agent_id)
    inserted = (await conn.execute(statement)).first()
    return None if inserted is not None else await find(conn, agent_id, key)


async def record(conn: AsyncConnection, agent_id: str, key: str, result: str) -> None:
    """Store the outcome of the call that claimed `key` (same transaction as its change)."""
    await conn.execute(
        update(idempotency_key).where(K.agent_id == agent_id, K.idempotency_key == key).values(result=result)
    )


async def release(conn: AsyncConnection, agent_id: str, key: str) -> None:
    """Give `key` back: the call was refused and changed nothing, so a retry may run afresh."""
    await conn.execute(delete(idempotency_key).where(K.agent_id == agent_id, K.idempotency_key == key))


async def prune(conn: AsyncConnection, older_than: datetime) -> int:
    """Forget keys claimed before `older_than`; return how many."""
    result = await conn.execute(delete(idempotency_key).where(K.created_at < older_than))
    return int(result.rowcount or 0)
