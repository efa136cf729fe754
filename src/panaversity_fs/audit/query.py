"""Operator queries over the audit log: filtered, paged reads and chain verification.

`query_audit` pages with a keyset on `seq` (an opaque cursor bound to the filters). Every filter
but `path_pattern` is an SQL equality or range. A `path_pattern` glob becomes an SQL prefix (its
leading folders with no glob syntax) plus an exact match in Python; so that a rare pattern
cannot make one page read the whole log, a page reads at most `SCAN_BUDGET` rows and then
stops with whatever matched (possibly nothing) and a `next_cursor` after the last row read.
A page may therefore hold fewer than `limit` entries while `next_cursor` is not null; only a
null `next_cursor` means the end.

`verify_audit` streams the chain in seq order (constant memory) with the same checks as
`panaversity-fs audit verify`, optionally from a position (trusting the entries before it)
and for a bounded number of entries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs import paging as cursors
from panaversity_fs.arguments import check_limit, check_time
from panaversity_fs.audit.chain import GENESIS_HASH, ChainReport, verify_chain
from panaversity_fs.audit.checkpoints import CheckpointReport, CheckpointStore
from panaversity_fs.audit.trail import AuditTrail
from panaversity_fs.audit.verify import follow_appends
from panaversity_fs.db import audit_sql
from panaversity_fs.db.audit_sql import AuditFilter
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.errors import InvalidArgument, Unavailable
from panaversity_fs.globs import compile_glob, literal_prefix
from panaversity_fs.operation import Operation
from panaversity_fs.paths import BASE_USER
from panaversity_fs.storage.blobs import StorageError
from panaversity_fs.times import iso

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SCAN_BUDGET = 10_000
"""Most rows one `query_audit` page reads when a `path_pattern` filters in Python."""
PROGRESS_EVERY = 1000
STATUSES = ("success", "refused", "error")
Status = Literal["success", "refused", "error"]

_TEXT_FILTERS = {"book_id": 64, "path": 600, "user_id": 100, "agent_id": 255, "operation": 32}
"""Filter argument → longest value its column can hold."""

Progress = Callable[[int, int], Awaitable[None]]


class AuditEntry(BaseModel):
    """One audit log entry."""

    seq: int = Field(description="Position in the chain (1, 2, ...).")
    created_at: str = Field(description="ISO-8601 UTC time the operation ran.")
    agent_id: str
    operation: str
    book_id: str
    path: str
    user_id: str | None = Field(description="Overlay owner; null for the shared base.")
    prev_hash: str | None = Field(description="The file's hash before the operation (null: absent).")
    new_hash: str | None = Field(description="The file's hash after it (null: absent or deleted).")
    status: str = Field(description="`success`, `refused` (the caller's error) or `error` (ours).")
    error_code: str | None = None
    error_message: str | None = None
    execution_time_ms: int | None = None
    request_id: str | None = None
    entry_hash: str = Field(description="sha256 over this entry and its predecessor's entry_hash.")


class AuditPage(BaseModel):
    """A page of audit entries in seq order."""

    entries: list[AuditEntry]
    next_cursor: str | None = Field(
        description="Pass as `cursor` with the same filters for the next page; null at the end."
    )


class ChainVerification(BaseModel):
    """The outcome of verifying (part of) the audit chain."""

    ok: bool
    entries_checked: int
    from_seq: int = Field(description="First seq verified; entries before it were trusted.")
    verified_through_seq: int = Field(description="Last seq that verified.")
    complete: bool = Field(description="Whether the range reached the chain head.")
    head_seq: int = Field(description="The recorded chain head the check ended against.")
    head_hash: str
    first_broken_seq: int | None = Field(description="First entry that does not verify; null if intact.")
    reason: str | None = None
    checkpoint_seq: int | None = Field(
        default=None,
        description="Newest signed checkpoint (kept outside the database) the chain still matches; "
        "null when none is stored yet. A truncated or re-hashed tail fails against it.",
    )


class AuditQueries:
    """`query_audit` and `verify_audit`; every call is audited with the caller's agent id."""

    def __init__(self, db: Database, trail: AuditTrail, checkpoints: CheckpointStore) -> None:
        self._db = db
        self._trail = trail
        self._checkpoints = checkpoints

    async def query(
        self,
        op: Operation,
        *,
        book_id: object = None,
        path: object = None,
        path_pattern: object = None,
        user_id: object = None,
        agent_id: object = None,
        operation: object = None,
        status: object = None,
        since: object = None,
        until: object = None,
        cursor: object = None,
        limit: object = None,
    ) -> AuditPage:
        """Return one page of the entries matching every given filter, in seq order.

        Raises:
            InvalidArgument: a malformed filter, a time without a timezone, `since` after
                `until`, a limit outside 1-1000, or a cursor not issued for these filters.
            Unavailable: the database failed.
        """
        # The filters, not a file path: the query must not join the history of the file it reads.
        shown = {
            "path": path,
            "path_pattern": path_pattern,
            "user_id": user_id,
            "agent_id": agent_id,
            "operation": operation,
            "status": status,
            "since": since,
            "until": until,
        }
        what = "; ".join(f"{name}={value}" for name, value in shown.items() if value is not None) or "*"
        book = book_id if book_id is not None else "*"
        with self._trail.read(op, book, what):
            given = {
                "book_id": book_id,
                "path": path,
                "user_id": user_id,
                "agent_id": agent_id,
                "operation": operation,
            }
            texts = {name: _text(name, given[name], size) for name, size in _TEXT_FILTERS.items()}
            pattern = None if path_pattern is None else compile_glob(path_pattern, "path_pattern")
            where = AuditFilter(
                **texts,
                path_prefix=literal_prefix(path_pattern) if isinstance(path_pattern, str) else None,
                status=_status(status),
                since=_moment("since", since),
                until=_moment("until", until),
            )
            if where.since and where.until and where.since > where.until:
                raise InvalidArgument("since must not be after until", field="since")
            size = check_limit(limit, DEFAULT_LIMIT, MAX_LIMIT)
            query = cursors.query_digest("query_audit", _digestible(where), path_pattern)
            after = 0 if cursor is None else cursors.int_field(cursors.decode(cursor, query), "s")
            return await self._page(where, pattern, after, size, query)

    async def _page(self, where: AuditFilter, pattern: Any, after: int, size: int, query: str) -> AuditPage:
        try:
            async with self._db.read() as conn:
                if pattern is None:
                    rows = await audit_sql.query_entries(conn, where, after, size + 1)
                    more, resume = len(rows) > size, 0
                else:
                    rows, more, resume = await _scan(conn, where, pattern, after, size)
        except DB_ERRORS as exc:
            raise database_failure(exc) from exc
        entries = [_entry(row) for row in rows[:size]]
        if len(rows) > size:
            resume = entries[-1].seq
        return AuditPage(entries=entries, next_cursor=cursors.encode(query, {"s": resume}) if more else None)

    async def verify(
        self,
        op: Operation,
        from_seq: object = None,
        max_entries: object = None,
        progress: Progress | None = None,
    ) -> ChainVerification:
        """Verify the chain from `from_seq` (default 1) for at most `max_entries` entries.

        Each entry must follow its predecessor without a gap, link to its `entry_hash`, and
        hash to its own; a range reaching the head must end exactly at the recorded head; and
        the chain must still match the checkpoints in storage.

        Raises:
            InvalidArgument: `from_seq` is not a positive integer at most one past the head,
                or `max_entries` is not a positive integer.
            Unavailable: the database or storage failed.
        """
        with self._trail.read(op, "*", f"seq {from_seq or 1}+"):
            first = _positive("from_seq", from_seq, 1)
            budget = None if max_entries is None else _positive("max_entries", max_entries, 1)
            try:
                async with self._db.read() as conn:
                    result = await _verify(conn, first, budget, progress)
                    against = await self._checkpoints.check(conn)
            except DB_ERRORS as exc:
                raise database_failure(exc) from exc
            except StorageError as exc:
                raise Unavailable("storage failed while reading the audit checkpoints; retry") from exc
            return _with_checkpoints(result, against)


async def _verify(
    conn: AsyncConnection, first: int, budget: int | None, progress: Progress | None
) -> ChainVerification:
    head = await audit_sql.chain_head(conn)
    if first > head[0] + 1:
        raise InvalidArgument(
            f"from_seq is past the chain head ({head[0]})", field="from_seq", head_seq=head[0]
        )
    last = head[0] if budget is None else min(head[0], first - 1 + budget)
    complete = last == head[0]
    previous = GENESIS_HASH if first == 1 else await audit_sql.entry_hash_at(conn, first - 1)
    if previous is None:
        report = ChainReport(False, 0, first - 2, first - 1, "sequence gap")
        return _verification(report, first, complete, head)
    total = last - first + 1
    counted = _Counter(progress, total)
    entries = audit_sql.stream_entries(conn, after_seq=first - 1, upto_seq=last)
    report = await verify_chain(
        counted.wrap(entries), head if complete else None, start=(first - 1, previous)
    )
    if report.ok and report.head_seq < last:  # the range ended early: its tail is missing
        report = ChainReport(
            False, report.entries_checked, report.head_seq, report.head_seq + 1, "sequence gap"
        )
    if complete:  # entries appended while this ran are checked too
        report, head = await follow_appends(conn, report, head)
    await counted.finish(report.entries_checked)
    return _verification(report, first, complete, head)


async def _scan(
    conn: AsyncConnection, where: AuditFilter, pattern: Any, after: int, size: int
) -> tuple[list[dict[str, Any]], bool, int]:
    """Read rows after `after` until `size + 1` match `pattern` or `SCAN_BUDGET` rows were read.

    Returns the matches, whether more may follow, and the last seq read.
    """
    matched: list[dict[str, Any]] = []
    scanned, last_read = 0, after
    while len(matched) <= size and scanned < SCAN_BUDGET:
        want = min(max(size + 1, 500), SCAN_BUDGET - scanned)
        rows = await audit_sql.query_entries(conn, where, last_read, want)
        for row in rows:
            scanned += 1
            last_read = int(row["seq"])
            if pattern.match(row["path"]):
                matched.append(row)
                if len(matched) > size:
                    break
        if len(rows) < want:
            return matched, len(matched) > size, last_read
    return matched, True, last_read


class _Counter:
    """Counts streamed entries and reports progress every `PROGRESS_EVERY` of them."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self._progress = progress
        self._total = total
        self._done = 0

    async def wrap(self, rows: AsyncIterator[Mapping[str, Any]]) -> AsyncIterator[Mapping[str, Any]]:
        async for row in rows:
            yield row
            self._done += 1
            if self._progress is not None and self._done % PROGRESS_EVERY == 0:
                await self._progress(self._done, self._total)

    async def finish(self, checked: int) -> None:
        """Report the final count (entries appended during the check included)."""
        if self._progress is not None:
            await self._progress(checked, max(self._total, checked))


def _verification(
    report: ChainReport, first: int, complete: bool, head: tuple[int, str]
) -> ChainVerification:
    return ChainVerification(
        ok=report.ok,
        entries_checked=report.entries_checked,
        from_seq=first,
        verified_through_seq=max(report.head_seq, first - 1),
        complete=complete,
        head_seq=head[0],
        head_hash=head[1],
        first_broken_seq=report.first_bad_seq,
        reason=report.reason,
    )


def _with_checkpoints(result: ChainVerification, against: CheckpointReport) -> ChainVerification:
    if against.ok:
        return result.model_copy(update={"checkpoint_seq": against.verified_seq})
    broken = [seq for seq in (result.first_broken_seq, against.first_bad_seq) if seq is not None]
    return result.model_copy(
        update={
            "ok": False,
            "checkpoint_seq": against.verified_seq,
            "first_broken_seq": min(broken) if broken else None,
            "reason": result.reason if not result.ok else against.reason,
        }
    )


def _text(name: str, value: object, size: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= size or "\x00" in value:
        raise InvalidArgument(f"{name} must be 1 to {size} characters without NUL", field=name)
    return value


def _status(value: object) -> str | None:
    if value is None or value in STATUSES:
        return value
    raise InvalidArgument(f"status must be one of {', '.join(STATUSES)}", field="status")


def _moment(name: str, value: object) -> datetime | None:
    return None if value is None else check_time(name, value)


def _positive(name: str, value: object, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument(f"{name} must be a positive integer", field=name)
    return value


def _digestible(where: AuditFilter) -> list[object]:
    """The filters as JSON-ready values (the cursor is bound to them)."""
    return [
        where.book_id,
        where.path,
        where.user_id,
        where.agent_id,
        where.operation,
        where.status,
        None if where.since is None else where.since.isoformat(),
        None if where.until is None else where.until.isoformat(),
    ]


def _entry(row: Mapping[str, Any]) -> AuditEntry:
    user = str(row["user_id"])
    return AuditEntry(
        seq=int(row["seq"]),
        created_at=iso(row["created_at"]),
        agent_id=row["agent_id"],
        operation=row["operation"],
        book_id=row["book_id"],
        path=row["path"],
        user_id=None if user == BASE_USER else user,
        prev_hash=row["prev_hash"],
        new_hash=row["new_hash"],
        status=row["status"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        execution_time_ms=row["execution_time_ms"],
        request_id=row["request_id"],
        entry_hash=row["entry_hash"],
    )
