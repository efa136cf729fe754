"""SQL of file history: one `file_version` row per committed change of a file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.db.journal_sql import FileKey, JournalRow
from panaversity_fs.db.schema import file_version
from panaversity_fs.paths import BASE_USER
from panaversity_fs.times import to_utc

V = file_version.c


@dataclass(frozen=True, slots=True)
class Retention:
    """Which versions keep their bytes: those younger than `cutoff`, and the `keep` newest of
    every file whatever their age."""

    cutoff: datetime
    keep: int

    def keeps(self, row: VersionRow, floor: int | None) -> bool:
        """Whether `row` is retained, `floor` being the oldest of its file's `keep` newest
        versions (`kept_floor`)."""
        return row.created_at >= self.cutoff or floor is None or row.version >= floor


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One committed version; `sha256` None marks a delete."""

    book_id: str
    user_id: str
    path: str
    version: int
    sha256: str | None
    size: int
    operation: str
    agent_id: str
    created_at: datetime
    content_type: str | None
    captured: bool

    @property
    def key(self) -> FileKey:
        """The file this is a version of."""
        return FileKey(self.book_id, self.path, self.user_id)


_COLUMNS = (
    V.book_id,
    V.user_id,
    V.path,
    V.version,
    V.sha256,
    V.size,
    V.operation,
    V.agent_id,
    V.created_at,
    V.content_type,
    V.captured,
)


def _row(row: Any) -> VersionRow:
    return VersionRow(
        book_id=row.book_id,
        user_id=row.user_id,
        path=row.path,
        version=int(row.version),
        sha256=row.sha256,
        size=int(row.size),
        operation=row.operation,
        agent_id=row.agent_id,
        created_at=to_utc(row.created_at),
        content_type=row.content_type,
        captured=bool(row.captured),
    )


def _of(key: FileKey) -> Any:
    return and_(V.book_id == key.book_id, V.user_id == key.user_id, V.path == key.path)


async def versions(conn: AsyncConnection, key: FileKey, before: int | None, limit: int) -> list[VersionRow]:
    """Return up to `limit` versions of `key` older than version `before` (all when None), newest first."""
    query = select(*_COLUMNS).where(_of(key))
    if before is not None:
        query = query.where(V.version < before)
    return [_row(row) for row in await conn.execute(query.order_by(V.version.desc()).limit(limit))]


async def version(conn: AsyncConnection, key: FileKey, number: int) -> VersionRow | None:
    """Return version `number` of `key`, or None."""
    found = (await conn.execute(select(*_COLUMNS).where(_of(key), V.version == number))).first()
    return _row(found) if found is not None else None


async def newest(conn: AsyncConnection, key: FileKey) -> int | None:
    """Return the newest version number of `key` (None: no history)."""
    return (await conn.execute(select(func.max(V.version)).where(_of(key)))).scalar_one_or_none()


async def kept_floor(conn: AsyncConnection, key: FileKey, keep: int) -> int | None:
    """Return the number of the `keep`-th newest version of `key` (None: it has fewer)."""
    query = select(V.version).where(_of(key)).order_by(V.version.desc()).offset(keep - 1).limit(1)
    return (await conn.execute(query)).scalar_one_or_none()


async def as_of(conn: AsyncConnection, book_id: str, users: Sequence[str], at: datetime) -> list[VersionRow]:
    """Return, for every file of `book_id` owned by one of `users`, its version current at `at`
    (deletes included), in key order."""
    latest = (
        select(V.user_id, V.path, func.max(V.version).label("version"))
        .where(V.book_id == book_id, V.user_id.in_(users), V.created_at <= at)
        .group_by(V.user_id, V.path)
        .subquery()
    )
    query = (
        select(*_COLUMNS)
        .join(
            latest,
            and_(V.user_id == latest.c.user_id, V.path == latest.c.path, V.version == latest.c.version),
        )
        .where(V.book_id == book_id)
        .order_by(V.user_id, V.path)
    )
    return [_row(row) for row in await conn.execute(query)]


async def view_as_of(
    conn: AsyncConnection,
    book_id: str,
    user_id: str | None,
    at: datetime,
    prefix: str = "",
    after: str | None = None,
) -> list[JournalRow]:
    """Return the live files of a book as `user_id` saw them at `at` (an overlay version over the
    base's), in byte-wise path order, as rows whose bytes are in the version store."""
    users = [BASE_USER] if user_id is None else [BASE_USER, user_id]
    resolved: dict[str, VersionRow] = {}
    for row in await as_of(conn, book_id, users, at):
        if row.sha256 is None or not row.path.startswith(prefix) or (after is not None and row.path <= after):
            continue
        if row.path not in resolved or row.user_id != BASE_USER:
            resolved[row.path] = row
    ordered = sorted(resolved.values(), key=lambda row: row.path.encode("utf-8", errors="surrogatepass"))
    return [
        JournalRow(
            book_id=row.book_id,
            path=row.path,
            user_id=row.user_id,
            sha256=row.sha256,
            size=row.size,
            version=row.version,
            last_written_at=row.created_at,
            publish_pending=False,
            staging_key=None,
            pending_since=None,
            content_type=row.content_type,
            kept=True,
        )
        for row in ordered
    ]


async def changed_by(
    conn: AsyncConnection,
    agent_id: str,
    since: datetime,
    until: datetime,
    book_id: str | None,
    after: tuple[str, str, str] | None,
    limit: int,
) -> list[tuple[FileKey, int]]:
    """Return the files `agent_id` changed in `[since, until)` (of one book, if given) after the
    key `(book_id, user_id, path)` `after`, with the agent's first version in the window, in key
    order, at most `limit`."""
    query = select(V.book_id, V.user_id, V.path, func.min(V.version)).where(
        V.agent_id == agent_id, V.created_at >= since, V.created_at < until
    )
    if book_id is not None:
        query = query.where(V.book_id == book_id)
    if after is not None:
        query = query.where(tuple_(V.book_id, V.user_id, V.path) > tuple_(*after))
    query = query.group_by(V.book_id, V.user_id, V.path).order_by(V.book_id, V.user_id, V.path).limit(limit)
    return [(FileKey(book, path, user), int(first)) for book, user, path, first in await conn.execute(query)]


async def since_version(conn: AsyncConnection, key: FileKey, first: int) -> list[VersionRow]:
    """Return the version of `key` just before `first` (if any) and every version from `first` on,
    oldest first."""
    before = select(func.max(V.version)).where(_of(key), V.version < first).scalar_subquery()
    query = (
        select(*_COLUMNS).where(_of(key), (V.version >= first) | (V.version == before)).order_by(V.version)
    )
    return [_row(row) for row in await conn.execute(query)]


def _newest_first() -> Any:
    """Each version's place among its file's versions, 1 for the newest."""
    return func.row_number().over(partition_by=(V.book_id, V.user_id, V.path), order_by=V.version.desc())


def _ranked(retention: Retention) -> Any:
    """Per version with bytes: its hash and whether `retention` keeps it."""
    rank = _newest_first()
    inner = select(V.sha256, V.created_at, rank.label("rank")).where(V.sha256.is_not(None)).subquery()
    kept = case(((inner.c.created_at >= retention.cutoff) | (inner.c.rank <= retention.keep), 1), else_=0)
    return select(inner.c.sha256, func.max(kept).label("kept")).group_by(inner.c.sha256)


async def retained_among(conn: AsyncConnection, retention: Retention, hashes: Sequence[str]) -> set[str]:
    """Return those of `hashes` that a retained version refers to now."""
    if not hashes:
        return set()
    ranked = _ranked(retention).subquery()
    query = select(ranked.c.sha256).where(ranked.c.kept == 1, ranked.c.sha256.in_(list(hashes)))
    return {str(sha) for sha in (await conn.execute(query)).scalars()}


async def retained(conn: AsyncConnection, retention: Retention) -> list[VersionRow]:
    """Return every retained version with bytes (for fsck), in key order."""
    rank = _newest_first()
    inner = select(*_COLUMNS, rank.label("rank")).where(V.sha256.is_not(None)).subquery()
    query = (
        select(*(inner.c[column.name] for column in _COLUMNS))
        .where((inner.c.created_at >= retention.cutoff) | (inner.c.rank <= retention.keep))
        .order_by(inner.c.book_id, inner.c.user_id, inner.c.path, inner.c.version)
    )
    return [_row(row) for row in await conn.execute(query)]


async def uncaptured(conn: AsyncConnection, limit: int, key: FileKey | None = None) -> list[VersionRow]:
    """Return versions recorded by the upgrade whose bytes are not yet in the version store."""
    query = select(*_COLUMNS).where(V.captured.is_(False))
    if key is not None:
        query = query.where(_of(key))
    return [_row(row) for row in await conn.execute(query.limit(limit))]


async def mark_captured(conn: AsyncConnection, key: FileKey, number: int) -> None:
    """Note that version `number` of `key` has its bytes in the version store."""
    await conn.execute(update(file_version).where(_of(key), V.version == number).values(captured=True))
