"""SQL of the file journal: lookups, compare-and-swap changes, listings (publishing: `publish_sql`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Insert, Table, and_, bindparam, case, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.db.driver_writes import built_once
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import file_journal
from panaversity_fs.paths import BASE_USER, storage_key, version_key
from panaversity_fs.times import to_utc

J = file_journal.c


@dataclass(frozen=True, slots=True)
class FileKey:
    """Identity of one journaled file: a book path in the base or in one user's overlay."""

    book_id: str
    path: str
    user_id: str

    def where(self) -> Any:
        """The SQL predicate selecting this file's row."""
        return and_(J.book_id == self.book_id, J.path == self.path, J.user_id == self.user_id)

    def bound(self) -> dict[str, str]:
        """This key as the parameters of `BY_KEY` (the predicate of statements built once)."""
        return {"k_book": self.book_id, "k_path": self.path, "k_user": self.user_id}


@dataclass(frozen=True, slots=True)
class Author:
    """Who makes a change, and what file history calls it when it is not a plain create,
    update or delete (restore, revert, import). Triggers copy both into `file_version`."""

    agent_id: str
    operation: str | None = None

    def values(self, change: str) -> dict[str, str]:
        """The journal columns that name a `change` (create, update, delete) by this author."""
        return {"operation": self.operation or change, "agent_id": self.agent_id[:255]}


@dataclass(frozen=True, slots=True)
class JournalRow:
    """One row of `file_journal`; `sha256` None marks a tombstone (deleted file)."""

    book_id: str
    path: str
    user_id: str
    sha256: str | None
    size: int
    version: int
    last_written_at: datetime
    publish_pending: bool
    staging_key: str | None
    pending_since: datetime | None
    content_type: str | None = None
    base_sha256: str | None = None
    """An overlay's: the base's hash when the overlay was last written."""
    kept: bool = False
    """A retained version rather than the current row (`history_sql.view_as_of`): its bytes are
    in the version store."""

    @property
    def key(self) -> FileKey:
        """This row's file identity."""
        return FileKey(self.book_id, self.path, self.user_id)

    @property
    def exists(self) -> bool:
        """Whether the row describes a live file (not a tombstone)."""
        return self.sha256 is not None

    @property
    def source(self) -> Literal["base", "overlay"]:
        """`overlay` for a user's file, `base` for shared content."""
        return "base" if self.user_id == BASE_USER else "overlay"

    @property
    def object_keys(self) -> list[str]:
        """The storage keys that may hold this row's bytes, in the order to try them: a committed
        but unpublished write's staging object first, then the file's own key."""
        final = storage_key(self.book_id, self.path, self.user_id)
        if self.kept and self.sha256 is not None:
            return [version_key(self.sha256), final]
        return [self.staging_key, final] if self.publish_pending and self.staging_key else [final]


_COLUMNS = (
    J.book_id,
    J.path,
    J.user_id,
    J.sha256,
    J.size,
    J.version,
    J.last_written_at,
    J.publish_pending,
    J.staging_key,
    J.pending_since,
    J.content_type,
    J.base_sha256,
)


def _row(row: Any) -> JournalRow:
    return _row_of(row._mapping)


def _row_of(values: Mapping[str, Any]) -> JournalRow:
    """A `JournalRow` from the values of `_COLUMNS` by name."""
    pending_since = values["pending_since"]
    return JournalRow(
        book_id=values["book_id"],
        path=values["path"],
        user_id=values["user_id"],
        sha256=values["sha256"],
        size=int(values["size"]),
        version=int(values["version"]),
        last_written_at=to_utc(values["last_written_at"]),
        publish_pending=bool(values["publish_pending"]),
        staging_key=values["staging_key"],
        pending_since=to_utc(pending_since) if pending_since is not None else None,
        content_type=values["content_type"],
        base_sha256=values["base_sha256"],
    )


async def fetch(
    conn: AsyncConnection, book_id: str, path: str, user_ids: Sequence[str]
) -> dict[str, JournalRow]:
    """Return the rows of `path` for each of `user_ids` that has one, keyed by user id."""
    result = await conn.execute(_BY_USERS, _by_users(book_id, path, user_ids))
    return {row.user_id: _row(row) for row in result}


async def look_up(db: Database, book_id: str, path: str, user_ids: Sequence[str]) -> dict[str, JournalRow]:
    """`fetch` as one statement outside a transaction: a read's hot path (on SQLite
    `Database.select_once`, on PostgreSQL a statement the driver prepares, `fetch_prepared`)."""
    if db.is_sqlite:
        if 0 < len(user_ids) <= len(_BY_N_USERS):
            statement = _BY_N_USERS[len(user_ids) - 1]
            parameters = {"book_id": book_id, "path": path} | {f"user_{n}": u for n, u in enumerate(user_ids)}
        else:
            statement, parameters = _BY_USERS, _by_users(book_id, path, user_ids)
        rows = await db.select_once(statement, parameters)
        return {row.user_id: _row(row) for row in rows}
    records = await db.fetch_prepared(_BY_USERS_PG, book_id, path, list(user_ids))
    return {record["user_id"]: _row_of(record) for record in records}


_BY_USERS_PG = (
    f"SELECT {', '.join(column.name for column in _COLUMNS)} FROM {file_journal.name} "
    "WHERE book_id = $1 AND path = $2 AND user_id = ANY($3::varchar[])"
)
"""`_BY_USERS` in PostgreSQL's own syntax, for `Database.fetch_prepared`."""


def _by_users(book_id: str, path: str, user_ids: Sequence[str]) -> dict[str, Any]:
    return {"book_id": book_id, "path": path, "user_ids": list(user_ids)}


# Built once: constructing the statement and its cache key cost a third of a point read.
_BY_USERS = select(*_COLUMNS).where(
    J.book_id == bindparam("book_id"),
    J.path == bindparam("path"),
    J.user_id.in_(bindparam("user_ids", expanding=True)),
)
# A read's own look-ups (the base; an overlay and the base), which SQLite's point reads send
# through the driver (`driver_writes`): no expanding parameter, so each is built once.
_BY_N_USERS = tuple(
    built_once(
        select(*_COLUMNS).where(
            J.book_id == bindparam("book_id"),
            J.path == bindparam("path"),
            J.user_id.in_([bindparam(f"user_{n}") for n in range(count)]),
        )
    )
    for count in (1, 2)
)


async def lock(conn: AsyncConnection, key: FileKey) -> JournalRow | None:
    """Return the row of `key` locked for the rest of the transaction (None if absent)."""
    result = await conn.execute(select(*_COLUMNS).where(key.where()).with_for_update())
    row = result.first()
    return _row(row) if row is not None else None


def visible(rows: dict[str, JournalRow], user_id: str | None) -> JournalRow | None:
    """Of one path's rows keyed by user, the one `user_id` reads: a live overlay, else live base."""
    if user_id is not None:
        overlay = rows.get(user_id)
        if overlay is not None and overlay.exists:
            return overlay
    base = rows.get(BASE_USER)
    return base if base is not None and base.exists else None


def insert_if_absent(conn: AsyncConnection, table: Table) -> Insert:
    """`INSERT ... ON CONFLICT DO NOTHING` into `table` on the connection's dialect (PostgreSQL
    or SQLite): a row whose key exists already is left as it is."""
    dialect_insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    return dialect_insert(table).on_conflict_do_nothing()


def _base_hash(key: FileKey) -> Any:
    """The current hash of the base file under an overlay key (NULL for a base key)."""
    return None if key.user_id == BASE_USER else _base_hash_of(key.book_id, key.path)


def _base_hash_of(book_id: Any, path: Any) -> Any:
    """The current hash of the base file at `book_id`/`path` (values or bound parameters)."""
    base = file_journal.alias("base")
    return (
        select(base.c.sha256)
        .where(base.c.book_id == book_id, base.c.path == path, base.c.user_id == BASE_USER)
        .scalar_subquery()
    )


def _next_version(
    base_sha256: Any,
    sha256: Any,
    size: Any,
    staging_key: Any,
    now: Any,
    author: dict[str, Any],
    content_type: Any = None,
) -> dict[str, Any]:
    """Column values of a committed change that still waits for its publish (values, or bound
    parameters for a statement built once)."""
    return {
        **author,
        "base_sha256": base_sha256,
        "content_type": content_type,
        "sha256": sha256,
        "size": size,
        "version": J.version + 1,
        "last_written_at": now,
        "publish_pending": True,
        "staging_key": staging_key,
        "pending_since": now,
    }


async def compare_and_swap(conn: AsyncConnection, key: FileKey, swap: dict[str, Any]) -> int | None:
    """Point `key`'s live row whose hash is the expected one at new staged bytes (`swap`:
    `cas_parameters`).

    Returns the row's new version, or None if its hash is not the expected one (or it is absent).
    """
    statement = _CAS_BASE if key.user_id == BASE_USER else _CAS_OVERLAY
    return (await conn.execute(statement, swap)).scalar_one_or_none()


def cas_parameters(
    key: FileKey,
    expected: str,
    new_hash: str,
    size: int,
    staging_key: str,
    now: datetime,
    author: Author,
    content_type: str | None,
) -> dict[str, Any]:
    """The parameters of `cas_statement`: point `key`'s live row whose hash is `expected` at
    `new_hash`'s bytes staged at `staging_key`."""
    return {
        **key.bound(),
        "k_expected": expected,
        "v_sha256": new_hash,
        "v_size": size,
        "v_staging_key": staging_key,
        "v_now": now,
        "v_content_type": content_type,
        **{f"v_{name}": value for name, value in author.values("update").items()},
    }


def _bound(column: str) -> Any:
    """A parameter `v_<column>` typed as `column` (so dates are stored as the column stores them)."""
    return bindparam(f"v_{column}", type_=J[column].type)


BY_KEY = and_(
    J.book_id == bindparam("k_book"), J.path == bindparam("k_path"), J.user_id == bindparam("k_user")
)
"""`FileKey.where` with the key as parameters `k_book`, `k_path`, `k_user`."""


def cas_statement(overlay: bool) -> Any:
    """The compare-and-swap UPDATE of a live row (`cas_parameters`), returning its new version;
    an overlay's row also records the base version it now differs from."""
    base_hash = _base_hash_of(bindparam("k_book"), bindparam("k_path")) if overlay else None
    values = _next_version(
        base_hash,
        _bound("sha256"),
        _bound("size"),
        _bound("staging_key"),
        bindparam("v_now", type_=J.last_written_at.type),
        {"operation": _bound("operation"), "agent_id": _bound("agent_id")},
        _bound("content_type"),
    )
    return (
        update(file_journal)
        .where(BY_KEY, J.sha256 == bindparam("k_expected"))
        .values(values)
        .returning(J.version)
    )


# Built once: building an UPDATE and its cache key per call cost more CPU than running it on
# SQLite.
_CAS_BASE = built_once(cas_statement(overlay=False))
_CAS_OVERLAY = built_once(cas_statement(overlay=True))


async def create(
    conn: AsyncConnection,
    key: FileKey,
    new_hash: str,
    size: int,
    staging_key: str,
    now: datetime,
    backend: str,
    author: Author,
    content_type: str | None = None,
) -> int | None:
    """Record a new file (a fresh row, or a revived tombstone).

    Returns the row's version, or None if the file is live already.
    """
    values: dict[str, Any] = {
        "book_id": key.book_id,
        "path": key.path,
        "user_id": key.user_id,
        "sha256": new_hash,
        "size": size,
        "version": 1,
        "last_written_at": now,
        "storage_backend": backend,
        "publish_pending": True,
        "staging_key": staging_key,
        "pending_since": now,
        "content_type": content_type,
        "base_sha256": _base_hash(key),
        **author.values("create"),
    }
    inserted = await conn.execute(insert_if_absent(conn, file_journal).values(values).returning(J.version))
    version = inserted.scalar_one_or_none()
    if version is not None:
        return version
    revived = await conn.execute(
        update(file_journal)
        .where(key.where(), J.sha256.is_(None))
        .values(
            _next_version(
                _base_hash(key), new_hash, size, staging_key, now, author.values("create"), content_type
            )
            | {"storage_backend": backend}
        )
        .returning(J.version)
    )
    return revived.scalar_one_or_none()


async def tombstone(conn: AsyncConnection, key: FileKey, now: datetime, author: Author) -> int | None:
    """Mark a live file deleted (its object is removed at publish).

    Returns the row's new version, or None if the file is not live.
    """
    result = await conn.execute(
        update(file_journal)
        .where(key.where(), J.sha256.is_not(None))
        .values(_next_version(_base_hash(key), None, 0, None, now, author.values("delete")))
        .returning(J.version)
    )
    return result.scalar_one_or_none()


async def all_rows(conn: AsyncConnection, book_id: str | None = None) -> list[JournalRow]:
    """Return every row (of one book, if given), tombstones included, in key order."""
    query = select(*_COLUMNS).order_by(J.book_id, J.user_id, J.path)
    if book_id is not None:
        query = query.where(J.book_id == book_id)
    return [_row(row) for row in await conn.execute(query)]


async def rows_page(
    conn: AsyncConnection, book_id: str | None, after: tuple[str, str, str] | None, limit: int
) -> list[JournalRow]:
    """Return up to `limit` rows (of one book, if given) after the key `(book_id, user_id, path)`
    `after`, tombstones included, in key order: a keyset page of `all_rows`."""
    query = select(*_COLUMNS)
    if book_id is not None:
        query = query.where(J.book_id == book_id)
    if after is not None:
        query = query.where(tuple_(J.book_id, J.user_id, J.path) > tuple_(*after))
    return [
        _row(row) for row in await conn.execute(query.order_by(J.book_id, J.user_id, J.path).limit(limit))
    ]


async def live_files_by_book(conn: AsyncConnection) -> list[tuple[str, int, bool]]:
    """Return, per book, its number of live files (0 when all were deleted) and whether it has
    shared (base) rows, live or deleted; a book without them exists only in overlays."""
    has_base = func.max(case((J.user_id == BASE_USER, 1), else_=0))
    result = await conn.execute(select(J.book_id, func.count(J.sha256), has_base).group_by(J.book_id))
    return [(str(book), int(count), bool(base)) for book, count, base in result.tuples()]


async def base_books(conn: AsyncConnection) -> list[str]:
    """Return the books with at least one shared (base) row, live or deleted."""
    result = await conn.execute(select(J.book_id).where(J.user_id == BASE_USER).group_by(J.book_id))
    return [str(book) for book in result.scalars()]


async def book_exists(conn: AsyncConnection, book_id: str, user_id: str | None = None) -> bool:
    """Whether `book_id` has a shared row, or (with `user_id`) a row of that user's overlay,
    live or deleted. One indexed lookup."""
    users = [BASE_USER] if user_id is None else [BASE_USER, user_id]
    found = await conn.execute(select(J.book_id).where(J.book_id == book_id, J.user_id.in_(users)).limit(1))
    return found.first() is not None


async def count_live(conn: AsyncConnection) -> int:
    """Return the number of live (non-tombstone) rows."""
    return int((await conn.execute(select(func.count()).where(J.sha256.is_not(None)))).scalar_one())


def binary_order(column: Any, conn: AsyncConnection) -> Any:
    """`column` compared and sorted byte-wise (PostgreSQL's locale collations sort differently)."""
    return column.collate("C") if conn.dialect.name == "postgresql" else column


def _under(conn: AsyncConnection, prefix: str) -> Any:
    """Predicate: the path starts with `prefix` (a literal, not a LIKE pattern)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return binary_order(J.path, conn).like(escaped + "%", escape="\\")


async def view(
    conn: AsyncConnection,
    book_id: str,
    user_id: str | None,
    prefix: str = "",
    after: str | None = None,
    limit: int | None = None,
) -> list[JournalRow]:
    """Return the live files of a book as `user_id` sees them, in byte-wise path order.

    Overlay rows replace the base row of the same path; no other user's rows are read.
    Only paths starting with `prefix` and sorting after `after` are returned, at most `limit`.
    One query.
    """
    users = [BASE_USER] if user_id is None else [BASE_USER, user_id]
    path = binary_order(J.path, conn)
    query = (
        select(*_COLUMNS)
        .where(J.book_id == book_id, J.user_id.in_(users), J.sha256.is_not(None))
        .order_by(path, J.user_id)
    )
    if prefix:
        query = query.where(_under(conn, prefix))
    if after is not None:
        query = query.where(path > after)
    if limit is not None:
        # A path has at most two rows (base, overlay); one more row tells whether the last
        # path's pair was cut by the limit.
        query = query.limit(2 * limit + 1)
    rows = [_row(row) for row in await conn.execute(query)]
    resolved: dict[str, JournalRow] = {}
    for row in rows:
        if row.path not in resolved or row.user_id != BASE_USER:
            resolved[row.path] = row
    files = list(resolved.values())
    if limit is not None and len(rows) == 2 * limit + 1 and len(files) > 1:
        files.pop()
    return files if limit is None else files[:limit]


ROW_COLUMNS = _COLUMNS
"""The columns a `JournalRow` is built from, for queries in the other journal repositories."""


def to_journal_row(row: Any) -> JournalRow:
    """Build a `JournalRow` from a result row selected with `ROW_COLUMNS`."""
    return _row(row)


# -- whole-book queries (catalogue, search) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class BookSummary:
    """Counts of one book's live files as one caller sees them: the shared (base) files and,
    with a user, that user's overlay; other users' overlays are never counted."""

    book_id: str
    base_files: int
    content_files: int
    asset_files: int
    base_bytes: int
    overlay_files: int
    last_written_at: datetime


async def book_ids(conn: AsyncConnection, user_id: str | None = None) -> list[str]:
    """Return the books with a live base file (or a live overlay of `user_id`), byte-wise sorted."""
    users = [BASE_USER] if user_id is None else [BASE_USER, user_id]
    query = (
        select(J.book_id)
        .where(J.sha256.is_not(None), J.user_id.in_(users))
        .group_by(J.book_id)
        .order_by(binary_order(J.book_id, conn))
    )
    return [str(book) for book in (await conn.execute(query)).scalars()]


async def book_summaries(
    conn: AsyncConnection, book_id: str | None = None, user_id: str | None = None
) -> list[BookSummary]:
    """Return, per book with a live base file (or a live overlay file of `user_id`), its file
    counts, bytes and last change, reading only base rows and `user_id`'s rows.

    One query; `last_written_at` covers those rows (deletions too).
    """
    live = J.sha256.is_not(None)
    base = and_(live, J.user_id == BASE_USER)

    def count(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    users = [BASE_USER] if user_id is None else [BASE_USER, user_id]
    query = (
        select(
            J.book_id,
            count(base).label("base_files"),
            count(and_(base, J.path.like("content/%"))).label("content_files"),
            count(and_(base, J.path.like("static/%"))).label("asset_files"),
            func.coalesce(func.sum(case((base, J.size), else_=0)), 0).label("base_bytes"),
            count(and_(live, J.user_id != BASE_USER)).label("overlay_files"),
            func.max(J.last_written_at).label("last_written_at"),
        )
        .where(J.user_id.in_(users))
        .group_by(J.book_id)
        .having(count(live) > 0)
        .order_by(binary_order(J.book_id, conn))
    )
    if book_id is not None:
        query = query.where(J.book_id == book_id)
    return [
        BookSummary(
            book_id=row.book_id,
            base_files=int(row.base_files),
            content_files=int(row.content_files),
            asset_files=int(row.asset_files),
            base_bytes=int(row.base_bytes),
            overlay_files=int(row.overlay_files),
            last_written_at=to_utc(row.last_written_at),
        )
        for row in await conn.execute(query)
    ]
