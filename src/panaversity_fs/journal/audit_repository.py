"""SQL of the audit log: chain-head-locked appends, streaming reads, per-file history."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.audit.chain import compute_entry_hash, to_utc
from panaversity_fs.journal.schema import GLOBAL_CHAIN, audit_chain_head, audit_log


@dataclass(frozen=True, slots=True)
class NewAuditEntry:
    """An audit entry before it is placed in the chain."""

    created_at: datetime
    agent_id: str
    operation: str
    book_id: str
    path: str
    user_id: str
    prev_hash: str | None
    new_hash: str | None
    status: str
    error_code: str | None = None
    error_message: str | None = None
    execution_time_ms: int | None = None
    request_id: str | None = None


async def append_entries(conn: AsyncConnection, entries: Sequence[NewAuditEntry]) -> list[int]:
    """Append `entries` to the chain inside the caller's transaction; return their seqs.

    The chain head row is locked first (`FOR UPDATE`; SQLite holds the database write lock
    already), so concurrent appenders queue and the chain never forks. Callers lock journal rows
    before calling this, never after: lock order is journal row, then chain head.
    """
    if not entries:
        return []
    head = (
        await conn.execute(
            select(audit_chain_head.c.seq, audit_chain_head.c.head_hash)
            .where(audit_chain_head.c.chain_id == GLOBAL_CHAIN)
            .with_for_update()
        )
    ).one()
    seq, prev = int(head.seq), str(head.head_hash)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        seq += 1
        # Stored and hashed in UTC: SQLite would keep the wall time and drop any other offset.
        row = asdict(entry) | {"seq": seq, "chain_prev_hash": prev, "created_at": to_utc(entry.created_at)}
        row["entry_hash"] = prev = compute_entry_hash(row)
        rows.append(row)
    await conn.execute(insert(audit_log), rows)
    await conn.execute(
        update(audit_chain_head)
        .where(audit_chain_head.c.chain_id == GLOBAL_CHAIN)
        .values(seq=seq, head_hash=prev)
    )
    return [int(r["seq"]) for r in rows]


async def chain_head(conn: AsyncConnection) -> tuple[int, str]:
    """Return the recorded `(seq, head_hash)` of the chain."""
    row = (
        await conn.execute(
            select(audit_chain_head.c.seq, audit_chain_head.c.head_hash).where(
                audit_chain_head.c.chain_id == GLOBAL_CHAIN
            )
        )
    ).one()
    return int(row.seq), str(row.head_hash)


async def has_entry_after(conn: AsyncConnection, seq: int) -> bool:
    """Whether any entry has a seq greater than `seq`."""
    result = await conn.execute(select(audit_log.c.seq).where(audit_log.c.seq > seq).limit(1))
    return result.first() is not None


async def stream_entries(
    conn: AsyncConnection, after_seq: int = 0, batch: int = 2000, upto_seq: int | None = None
) -> AsyncIterator[Mapping[str, Any]]:
    """Yield entries with `after_seq < seq <= upto_seq` in seq order, `batch` rows per query."""
    last = after_seq
    while True:
        condition = audit_log.c.seq > last
        if upto_seq is not None:
            condition = condition & (audit_log.c.seq <= upto_seq)
        result = await conn.execute(select(audit_log).where(condition).order_by(audit_log.c.seq).limit(batch))
        rows = result.mappings().all()
        for row in rows:
            yield _normalized(row)
        if len(rows) < batch:
            return
        last = int(rows[-1]["seq"])


async def file_history(
    conn: AsyncConnection, book_id: str, path: str, user_id: str, limit: int = 1000
) -> list[dict[str, Any]]:
    """Return the entries of one file (book, path, user) in seq order."""
    result = await conn.execute(
        select(audit_log)
        .where(
            audit_log.c.book_id == book_id,
            audit_log.c.path == path,
            audit_log.c.user_id == user_id,
        )
        .order_by(audit_log.c.seq)
        .limit(limit)
    )
    return [_normalized(row) for row in result.mappings().all()]


def _normalized(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["created_at"] = to_utc(out["created_at"])
    return out
