"""SQL of the audit log: the chain head lock, inserts, streaming reads, queries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.db.driver_writes import built_once
from panaversity_fs.db.engine import WriteTransaction
from panaversity_fs.db.schema import GLOBAL_CHAIN, audit_chain_head, audit_log
from panaversity_fs.times import to_utc


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

    def values(self) -> dict[str, Any]:
        """The entry's columns by name (a shallow copy: every value is immutable, and
        `dataclasses.asdict` deep-copied each one, ~0.1 ms per entry)."""
        return {name: getattr(self, name) for name in _ENTRY_FIELDS}


_ENTRY_FIELDS = tuple(field.name for field in fields(NewAuditEntry))


async def lock_chain_head(tx: WriteTransaction) -> tuple[int, str]:
    """Lock the chain head row (`FOR UPDATE`; SQLite holds the database write lock already) and
    return its `(seq, head_hash)`; on PostgreSQL also note the transaction's id in `tx`, read in
    the same round trip, for settling a lost COMMIT (`db.transactions`).

    Concurrent appenders queue here, so the chain never forks. Callers lock journal rows before
    this, never after: lock order is journal row, then chain head.
    """
    postgres = tx.conn.dialect.name == "postgresql"
    head: tuple[Any, ...] = tuple((await tx.conn.execute(_LOCK_HEAD_PG if postgres else _LOCK_HEAD)).one())
    if postgres:
        tx.transaction_id = (int(head[2]), int(head[3]))
    return int(head[0]), str(head[1])


_HEAD = [audit_chain_head.c.seq, audit_chain_head.c.head_hash]
_LOCK_HEAD = built_once(select(*_HEAD).where(audit_chain_head.c.chain_id == GLOBAL_CHAIN).with_for_update())
_LOCK_HEAD_PG = built_once(
    select(*_HEAD, func.txid_current(), func.pg_backend_pid())
    .where(audit_chain_head.c.chain_id == GLOBAL_CHAIN)
    .with_for_update()
)


async def insert_entries(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert hashed entries (every column of `audit_log`)."""
    await conn.execute(insert(audit_log), list(rows))


async def move_chain_head(conn: AsyncConnection, seq: int, head_hash: str) -> None:
    """Record the new chain head (under the lock `lock_chain_head` took)."""
    await conn.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": head_hash})


async def insert_and_move_head(
    conn: AsyncConnection, rows: Sequence[Mapping[str, Any]], seq: int, head_hash: str
) -> None:
    """`insert_entries` then `move_chain_head`; on PostgreSQL one entry and the head move are a
    single statement (the insert as a data-modifying CTE): one round trip less per mutation."""
    if len(rows) == 1:
        parameters = {f"e_{name}": value for name, value in rows[0].items()}
        if conn.dialect.name == "postgresql":
            await conn.execute(_APPEND_ONE_PG, parameters | {"new_seq": seq, "new_hash": head_hash})
            return
        await conn.execute(_INSERT_ONE, parameters)
    else:
        await insert_entries(conn, rows)
    await move_chain_head(conn, seq, head_hash)


_MOVE_HEAD = built_once(
    update(audit_chain_head)
    .where(audit_chain_head.c.chain_id == GLOBAL_CHAIN)
    .values(
        seq=bindparam("new_seq", type_=audit_chain_head.c.seq.type),
        head_hash=bindparam("new_hash", type_=audit_chain_head.c.head_hash.type),
    )
)
# One entry inserted; every entry column is a parameter `e_<column>`. Built once, like the rest
# of a write's statements.
_INSERT_ONE = built_once(
    insert(audit_log).values(
        {column.name: bindparam(f"e_{column.name}", type_=column.type) for column in audit_log.columns}
    )
)
# PostgreSQL: the entry inserted (a data-modifying CTE) and the head moved in one statement.
_APPEND_ONE_PG = built_once(_MOVE_HEAD.add_cte(_INSERT_ONE.cte("appended")))


async def has_entry_hash(conn: AsyncConnection, entry_hash: str) -> bool:
    """Whether an entry with this hash is in the log (entry hashes are unique)."""
    found = await conn.execute(select(audit_log.c.seq).where(audit_log.c.entry_hash == entry_hash))
    return found.first() is not None


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


async def last_writer(
    conn: AsyncConnection, book_id: str, path: str, user_id: str, sha256: str
) -> str | None:
    """Return the agent id of the latest successful entry of one file that produced `sha256`."""
    log = audit_log.c
    result = await conn.execute(
        select(log.agent_id)
        .where(
            log.book_id == book_id,
            log.path == path,
            log.user_id == user_id,
            log.status == "success",
            log.new_hash == sha256,
        )
        .order_by(log.seq.desc())
        .limit(1)
    )
    agent = result.scalar_one_or_none()
    return str(agent) if agent is not None else None


def _normalized(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["created_at"] = to_utc(out["created_at"])
    return out


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Exact-match filters of an audit query; None leaves a column unconstrained.

    `path_prefix` keeps paths that start with it (a superset: SQLite's LIKE ignores ASCII case,
    so callers filter the exact pattern in Python). `since` is inclusive, `until` exclusive;
    both are aware datetimes.
    """

    book_id: str | None = None
    path: str | None = None
    path_prefix: str | None = None
    user_id: str | None = None
    agent_id: str | None = None
    operation: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def query_entries(
    conn: AsyncConnection, where: AuditFilter, after_seq: int, limit: int
) -> list[dict[str, Any]]:
    """Return up to `limit` entries with `seq > after_seq` matching `where`, in seq order.

    Keyset paging on the primary key; each filter is a plain equality or range the indexes
    `(book_id, path, user_id, seq)`, `(agent_id, seq)` and `created_at` can serve.
    """
    log = audit_log.c
    conditions: list[ColumnElement[bool]] = [log.seq > after_seq]
    for column, value in (
        (log.book_id, where.book_id),
        (log.path, where.path),
        (log.user_id, where.user_id),
        (log.agent_id, where.agent_id),
        (log.operation, where.operation),
        (log.status, where.status),
    ):
        if value is not None:
            conditions.append(column == value)
    if where.path_prefix:
        conditions.append(log.path.startswith(where.path_prefix, autoescape=True))
    if where.since is not None:
        conditions.append(log.created_at >= to_utc(where.since))
    if where.until is not None:
        conditions.append(log.created_at < to_utc(where.until))
    result = await conn.execute(select(audit_log).where(*conditions).order_by(log.seq).limit(limit))
    return [_normalized(row) for row in result.mappings().all()]


async def entry_hash_at(conn: AsyncConnection, seq: int) -> str | None:
    """Return the `entry_hash` of the entry at `seq`, or None if there is none."""
    result = await conn.execute(select(audit_log.c.entry_hash).where(audit_log.c.seq == seq))
    value = result.scalar_one_or_none()
    return str(value) if value is not None else None
