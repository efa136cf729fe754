"""SQL of build planning: manifest snapshots per book and the journal's change feed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.db.journal_sql import (
    ROW_COLUMNS,
    JournalRow,
    binary_order,
    insert_if_absent,
    to_journal_row,
)
from panaversity_fs.db.schema import file_journal, manifest_snapshot
from panaversity_fs.paths import BASE_USER
from panaversity_fs.times import to_utc

J = file_journal.c
M = manifest_snapshot.c


@dataclass(frozen=True, slots=True)
class ChangeKey:
    """Position in the change feed: the sort key of the last row a page returned."""

    last_written_at: datetime
    path: str
    user_id: str


async def base_manifest(conn: AsyncConnection, book_id: str) -> list[tuple[str, str]]:
    """Return `(path, sha256)` of a book's live base files, byte-wise by path. One query.

    The same rows as `journal.view(conn, book_id, None)`, without building full rows: this is
    the whole cost of planning a large book.
    """
    result = await conn.execute(
        select(J.path, J.sha256)
        .where(J.book_id == book_id, J.user_id == BASE_USER, J.sha256.is_not(None))
        .order_by(binary_order(J.path, conn))
    )
    return [(str(path), str(sha)) for path, sha in result.tuples()]


async def save_snapshot(
    conn: AsyncConnection, book_id: str, manifest_hash: str, entries: bytes, file_count: int, now: datetime
) -> bool:
    """Store a book's manifest (if absent) and mark it used at `now`; True if it was new."""
    inserted = await conn.execute(
        insert_if_absent(conn, manifest_snapshot).values(
            book_id=book_id,
            manifest_hash=manifest_hash,
            created_at=now,
            last_used_at=now,
            file_count=file_count,
            entries=entries,
        )
    )
    if inserted.rowcount == 1:
        return True
    await touch_snapshot(conn, book_id, manifest_hash, now)
    return False


async def touch_snapshot(conn: AsyncConnection, book_id: str, manifest_hash: str, now: datetime) -> None:
    """Mark a stored manifest used at `now` (pruning drops the least recently used)."""
    await conn.execute(
        update(manifest_snapshot)
        .where(M.book_id == book_id, M.manifest_hash == manifest_hash)
        .values(last_used_at=now)
    )


async def load_snapshot(conn: AsyncConnection, book_id: str, manifest_hash: str) -> bytes | None:
    """Return the stored (compressed) entries of one of `book_id`'s manifests, or None."""
    result = await conn.execute(
        select(M.entries).where(M.book_id == book_id, M.manifest_hash == manifest_hash)
    )
    value = result.scalar_one_or_none()
    return bytes(value) if value is not None else None


async def snapshot_hashes(conn: AsyncConnection, book_id: str) -> list[str]:
    """Return the hashes of a book's stored manifests, most recently used first."""
    result = await conn.execute(
        select(M.manifest_hash).where(M.book_id == book_id).order_by(M.last_used_at.desc(), M.manifest_hash)
    )
    return [str(value) for value in result.scalars()]


async def prune_snapshots(conn: AsyncConnection, book_id: str, keep: int, protected: set[str]) -> int:
    """Delete a book's least recently used manifests beyond `keep`, never one in `protected`.

    Returns how many were deleted.
    """
    hashes = await snapshot_hashes(conn, book_id)
    if len(hashes) <= keep:
        return 0
    kept = [h for h in hashes if h in protected]
    for value in hashes:
        if len(kept) >= keep:
            break
        if value not in protected:
            kept.append(value)
    doomed = [h for h in hashes if h not in kept]
    if not doomed:
        return 0
    result = await conn.execute(
        delete(manifest_snapshot).where(M.book_id == book_id, M.manifest_hash.in_(doomed))
    )
    return int(result.rowcount)


async def changes(
    conn: AsyncConnection,
    book_id: str,
    user_id: str | None,
    since: datetime,
    after: ChangeKey | None,
    limit: int,
) -> list[JournalRow]:
    """Return rows written after `since`, tombstones included, in (time, path, user) order.

    Base rows, plus `user_id`'s overlay rows when given; never another user's. Only rows after
    the feed position `after` are returned, at most `limit`. One query.
    """
    users = [BASE_USER] if user_id is None else [BASE_USER, user_id]
    path = binary_order(J.path, conn)
    query = (
        select(*ROW_COLUMNS)
        .where(J.book_id == book_id, J.user_id.in_(users), J.last_written_at > to_utc(since))
        .order_by(J.last_written_at, path, J.user_id)
        .limit(limit)
    )
    if after is not None:
        at = to_utc(after.last_written_at)
        query = query.where(
            or_(
                J.last_written_at > at,
                and_(J.last_written_at == at, path > after.path),
                and_(J.last_written_at == at, J.path == after.path, J.user_id > after.user_id),
            )
        )
    return [to_journal_row(row) for row in await conn.execute(query)]


async def oldest_pending(conn: AsyncConnection, book_id: str) -> datetime | None:
    """Return when the oldest change of a book still waiting for its publish was committed."""
    result = await conn.execute(
        select(func.min(J.pending_since)).where(J.book_id == book_id, J.publish_pending.is_(True))
    )
    value = result.scalar_one_or_none()
    return to_utc(value) if value is not None else None
