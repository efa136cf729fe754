"""SQL of publishing: the journal rows whose committed change still waits for its bytes to
move into place, the staging keys they hold, and the staged copies (`staged_copy`) kept of
bytes not yet synced to disk."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import ReturningUpdate

from panaversity_fs.db.driver_writes import built_once
from panaversity_fs.db.journal_sql import BY_KEY, ROW_COLUMNS, FileKey, J, JournalRow, to_journal_row
from panaversity_fs.db.schema import file_journal, staged_copy


async def finish_publish(conn: AsyncConnection, key: FileKey, staging_key: str | None) -> PublishClaim | None:
    """Clear the pending flag if the pending change is still the one staged at `staging_key`,
    locking the row for the rest of the transaction (the caller moves the bytes before it
    commits); None if a newer change superseded it or it was published already. On PostgreSQL
    the staged copy of those bytes goes in the same statement, claimed or not: the caller
    synced the staged file first."""
    statement = _FINISH_PG if conn.dialect.name == "postgresql" else _FINISH
    row = (await conn.execute(statement, key.bound() | {"pending_key": staging_key})).first()
    return PublishClaim(row[0]) if row is not None else None


def _finish(postgresql: bool) -> ReturningUpdate[Any]:
    statement = update(file_journal)
    also: list[ColumnElement[Any]] = []
    if postgresql:
        # The staged copy goes with the claim (SQLite keeps none, and has no DELETE in a CTE).
        gone = delete(staged_copy).where(staged_copy.c.staging_key == bindparam("pending_key")).cte("gone")
        statement = statement.add_cte(gone)
        # The publish also commits without waiting for its WAL to reach the disk
        # (`synchronous_commit` off for this transaction only, set in the same round trip): a
        # publish a database crash loses leaves its row pending with the bytes already at the
        # final key, which readers (they verify the hash) and recovery (`Publisher._move`)
        # accept. The write itself was committed durably before; only this second flush wait
        # per write is saved.
        also.append(func.set_config("synchronous_commit", "off", True))
    return (
        statement.where(
            BY_KEY,
            J.publish_pending.is_(True),
            J.staging_key.is_not_distinct_from(bindparam("pending_key", type_=J.staging_key.type)),
        )
        .values(publish_pending=False, staging_key=None, pending_since=None)
        .returning(J.sha256, *also)
    )


# Built once: building it per call cost more CPU than running it on SQLite.
_FINISH = built_once(_finish(postgresql=False))
_FINISH_PG = built_once(_finish(postgresql=True))


@dataclass(frozen=True, slots=True)
class PublishClaim:
    """A pending change whose publish this transaction took over."""

    sha256: str | None
    """The committed content's hash (None: a delete)."""


async def pending(conn: AsyncConnection, older_than: datetime, limit: int = 500) -> list[JournalRow]:
    """Return rows whose committed change has waited for its publish since before `older_than`."""
    result = await conn.execute(
        select(*ROW_COLUMNS)
        .where(J.publish_pending.is_(True), J.pending_since < older_than)
        .order_by(J.pending_since)
        .limit(limit)
    )
    return [to_journal_row(row) for row in result]


async def staging_keys_in_use(conn: AsyncConnection) -> set[str]:
    """Return every staging key a journal row still points at."""
    result = await conn.execute(select(J.staging_key).where(J.staging_key.is_not(None)))
    return {str(key) for key in result.scalars()}


_COPY = built_once(select(staged_copy.c.data).where(staged_copy.c.staging_key == bindparam("staging_key")))


async def staged_copy_of(conn: AsyncConnection, staging_key: str) -> bytes | None:
    """Return the staged copy of the bytes at `staging_key`, or None if there is none."""
    return (await conn.execute(_COPY, {"staging_key": staging_key})).scalar()


async def orphan_copies(
    conn: AsyncConnection, older_than: datetime, limit: int = 50
) -> list[tuple[str, bytes]]:
    """Return `(staging_key, data)` of copies made before `older_than` that no journal row
    points at any more (a newer change replaced theirs before its publish); at most `limit`
    (each holds up to 256 KiB: a later sweep takes the rest)."""
    in_use = select(J.staging_key).where(J.staging_key.is_not(None))
    result = await conn.execute(
        select(staged_copy.c.staging_key, staged_copy.c.data)
        .where(staged_copy.c.created_at < older_than, staged_copy.c.staging_key.not_in(in_use))
        .limit(limit)
    )
    return [(str(key), bytes(data)) for key, data in result]


async def drop_copy(conn: AsyncConnection, staging_key: str) -> None:
    """Remove the staged copy kept for `staging_key` (if any)."""
    await conn.execute(delete(staged_copy).where(staged_copy.c.staging_key == staging_key))
