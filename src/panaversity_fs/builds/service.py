"""`BuildService`: `plan_build` (manifest diff) and `delta_build` (the journal's change feed)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from datetime import UTC, datetime, timedelta

from panaversity_fs import paging as cursors
from panaversity_fs.arguments import check_limit, check_time
from panaversity_fs.audit.trail import AuditTrail
from panaversity_fs.builds.results import BuildPlan, ChangedFile, ChangeFeed, ChangesRead, PlannedFile
from panaversity_fs.config import Settings
from panaversity_fs.db import history_sql as history
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db import manifest_sql as manifests
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.db.manifest_sql import ChangeKey
from panaversity_fs.errors import InvalidArgument, unknown_book
from panaversity_fs.files import manifest
from panaversity_fs.files.reader import FileReader
from panaversity_fs.files.versions import check_as_of
from panaversity_fs.metrics import Metrics
from panaversity_fs.operation import Operation
from panaversity_fs.paths import BASE_USER, check_book_id, check_hash, check_user_id

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
PLAN_PAGE = 1000
"""Files one `plan_build` page lists (its default and largest `limit`)."""
FETCH_CONCURRENCY = 16
"""Storage reads one `delta_build` page with content runs at once."""

UNKNOWN_TARGET_WARNING = (
    "target_manifest_hash is not a stored manifest of this book (never seen, or pruned): "
    "every current file is listed as added; do a full build and store manifest_hash"
)
EXPIRED_CURSOR = (
    "cursor's manifests were pruned since the first page (many builds of this book in between): "
    "call plan_build again without cursor"
)


class BuildService:
    """Build planning over the journal; every call is audited as a read."""

    def __init__(
        self, settings: Settings, db: Database, reader: FileReader, trail: AuditTrail, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._db = db
        self._reader = reader
        self._trail = trail
        self._metrics = metrics

    # -- plan_build ----------------------------------------------------------------------

    async def plan(
        self,
        op: Operation,
        book_id: object,
        target_manifest_hash: object = None,
        as_of: object = None,
        cursor: object = None,
        limit: object = None,
    ) -> BuildPlan:
        """Compute the book's manifest (now, or at `as_of`), store it, diff it against
        `target_manifest_hash`, and return the first `limit` files of the plan; with `cursor`,
        the next page of the plan the first page made (read from its stored manifests, so the
        pages of one plan agree whatever is written in between).

        Raises:
            InvalidArgument: a malformed book id, target hash, as_of (or one older than
                retention), limit or cursor, or a cursor whose manifests were pruned since.
            NotFound: the book has no files (nothing is stored).
            Unavailable: the database failed.
        """
        with self._trail.read(op, book_id, "*"):
            plan = await self._plan(book_id, target_manifest_hash, as_of, cursor, limit)
        if cursor is None:
            self._metrics.delta_files.labels(self._metrics.book(plan.book_id)).observe(plan.changed_count)
        return plan

    async def _plan(
        self, book_id: object, target_manifest_hash: object, as_of: object, cursor: object, limit: object
    ) -> BuildPlan:
        book = check_book_id(book_id)
        target = check_hash(target_manifest_hash, "target_manifest_hash")
        moment = check_as_of(as_of, self._settings)
        page_size = check_limit(limit, PLAN_PAGE, PLAN_PAGE)
        query = cursors.query_digest("plan_build", book, target, moment.isoformat() if moment else None)
        try:
            if cursor is None:
                digest, current, previous = await self._snapshot(book, target, moment)
                start = 0
            else:
                position = cursors.decode(cursor, query)
                digest = check_hash(cursors.text_field(position, "m"), "cursor") or ""
                start = cursors.int_field(position, "o")
                current, previous = await self._stored(book, digest, target, position.get("f") is True)
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        found = None if target is None else target == digest or previous is not None
        page: list[manifest.ManifestChange] = []
        if target == digest:
            changed = 0
        elif previous is None:  # every file is added; `current` is in manifest order already
            changed = len(current)
            listed = itertools.islice(current.items(), start, start + page_size)
            page = [manifest.ManifestChange(path, sha, None, "added") for path, sha in listed]
        else:
            changes = manifest.diff(current, previous)
            changed, page = len(changes), changes[start : start + page_size]
        next_cursor = None
        if start + len(page) < changed:
            next_cursor = cursors.encode(query, {"m": digest, "o": start + len(page), "f": bool(found)})
        return BuildPlan(
            book_id=book,
            status="unchanged" if found and not changed else "changed",
            manifest_hash=digest,
            target_manifest_hash=target,
            target_found=found,
            files=[
                PlannedFile(
                    path=change.path,
                    current_hash=change.current_hash,
                    target_hash=change.target_hash,
                    change_type=change.change_type,
                )
                for change in page
            ],
            changed_count=changed,
            total_files=len(current),
            warning=UNKNOWN_TARGET_WARNING if found is False else None,
            next_cursor=next_cursor,
        )

    async def _snapshot(
        self, book: str, target: str | None, moment: datetime | None
    ) -> tuple[str, dict[str, str], dict[str, str] | None]:
        """The book's manifest now (or at `moment`), stored: its hash, its files, and the
        target's files (None: no target, or not stored).

        Raises:
            NotFound: the book has no files.
        """
        async with self._db.read() as conn:
            if not await journal.book_exists(conn, book):
                raise unknown_book(book)
            if moment is None:
                entries = await manifests.base_manifest(conn, book)
            else:
                rows = await history.view_as_of(conn, book, None, moment)
                entries = [(row.path, row.sha256 or "") for row in rows]
        current = manifest.in_order(entries)
        text = manifest.manifest_text(current.items())
        digest = manifest.manifest_hash(text)
        async with self._db.write() as tx:
            now = datetime.now(UTC)
            await manifests.save_snapshot(tx.conn, book, digest, manifest.pack(text), len(current), now)
            stored: bytes | None = None
            protected = {digest}
            if target is not None and target != digest:
                stored = await manifests.load_snapshot(tx.conn, book, target)
                if stored is not None:
                    await manifests.touch_snapshot(tx.conn, book, target, now)
                    protected.add(target)
            await manifests.prune_snapshots(tx.conn, book, self._settings.manifest_snapshots_kept, protected)
        return digest, current, _unpacked(stored) if stored is not None else None

    async def _stored(
        self, book: str, digest: str, target: str | None, target_found: bool
    ) -> tuple[dict[str, str], dict[str, str] | None]:
        """The files of the stored manifest `digest` and of the target (None: not found when
        the plan began), both marked used.

        Raises:
            InvalidArgument: either manifest was pruned (or is corrupt) since the first page.
        """
        wanted = [digest] + ([target] if target_found and target is not None and target != digest else [])
        unpacked: list[dict[str, str] | None] = []
        async with self._db.write() as tx:
            now = datetime.now(UTC)
            for manifest_hash in wanted:
                blob = await manifests.load_snapshot(tx.conn, book, manifest_hash)
                unpacked.append(_unpacked(blob) if blob is not None else None)
                await manifests.touch_snapshot(tx.conn, book, manifest_hash, now)
        current = unpacked[0]
        previous = unpacked[1] if len(unpacked) > 1 else None
        if current is None or (len(unpacked) > 1 and previous is None):
            raise InvalidArgument(EXPIRED_CURSOR, field="cursor")
        return current, previous

    # -- delta_build ---------------------------------------------------------------------

    async def delta(
        self,
        op: Operation,
        book_id: object,
        since: object,
        user_id: object = None,
        include_content: bool = False,
        cursor: object = None,
        limit: object = None,
    ) -> ChangesRead:
        """Return one page of the changes (deletions included) written after `since`; with
        `include_content`, the texts of the live lessons among them.

        Raises:
            InvalidArgument: a malformed argument (naive `since`, bad cursor or limit, ...).
            NotFound: the book has no files (for `user_id`: neither shared ones nor that user's).
            Unavailable: the database or storage failed.
        """
        with self._trail.read(op, book_id, "*", user_id):
            changes = await self._delta(book_id, since, user_id, include_content, cursor, limit)
        book = self._metrics.book(changes.feed.book_id)
        self._metrics.delta_files.labels(book).observe(changes.feed.changed_count)
        return changes

    async def _delta(
        self,
        book_id: object,
        since: object,
        user_id: object,
        include_content: bool,
        cursor: object,
        limit: object,
    ) -> ChangesRead:
        book = check_book_id(book_id)
        user = check_user_id(user_id)
        moment = check_time("since", since)
        size = check_limit(limit, DEFAULT_LIMIT, MAX_LIMIT)
        query = cursors.query_digest("delta_build", book, moment.isoformat(), user)
        position, carried_until = _decode_cursor(cursor, query)
        asked_at = datetime.now(UTC)
        try:
            async with self._db.read() as conn:
                if not await journal.book_exists(conn, book, user):
                    raise unknown_book(book)
                rows = await manifests.changes(conn, book, user, moment, position, size + 1)
                pending = await manifests.oldest_pending(conn, book)
        except DB_ERRORS as exc:
            raise database_failure(exc) from None
        more = len(rows) > size
        rows = rows[:size]
        items = [_changed_file(row) for row in rows]
        texts: list[str | None] = [None] * len(rows)
        if include_content:
            texts = await self._texts(rows, items)
            kept = self._within_budget(texts)
            more = more or kept < len(rows)
            rows, items, texts = rows[:kept], items[:kept], texts[:kept]
        until = self._until(moment, asked_at, pending, carried_until)
        next_cursor = _encode_cursor(query, rows[-1], until) if more and rows else None
        feed = ChangeFeed(
            book_id=book,
            since=moment.isoformat(),
            user_id=user,
            changed_files=items,
            changed_count=len(items),
            next_cursor=next_cursor,
            until=until.isoformat(),
        )
        return ChangesRead(feed, texts)

    def _until(
        self, since: datetime, asked_at: datetime, pending: datetime | None, carried: datetime | None
    ) -> datetime:
        # `last_written_at` is taken inside a write transaction, before its commit: a write
        # still in flight now may commit later with an earlier time. Every statement of a write
        # is bounded by the statement timeout, so the margin covers it; a change not yet
        # published is reported again next time too. Changes may repeat; none is skipped.
        margin = timedelta(seconds=2 * self._settings.database_statement_timeout)
        until = min(asked_at, pending or asked_at) - margin
        if carried is not None:
            until = min(until, carried)
        return max(until, since)

    def _within_budget(self, texts: list[str | None]) -> int:
        """How many of the changes fit one page: their texts as JSON plus each file's description
        within `page_bytes`, and always the first."""
        used = 0
        for index, text in enumerate(texts):
            used += cursors.FILE_OVERHEAD + (cursors.wire_bytes(text) if text is not None else 0)
            if used > self._settings.page_bytes and index > 0:
                return index
        return len(texts)

    async def _texts(self, rows: list[JournalRow], items: list[ChangedFile]) -> list[str | None]:
        """The text of each live lesson among `rows` (None for the others); a lesson that changed
        again or is unreadable gets its `content_error` set instead."""
        gate = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one(row: JournalRow, item: ChangedFile) -> str | None:
            if not _wants_content(row):
                return None
            async with gate:
                data = await self._reader.verified_bytes(row)
            try:
                text = data.decode("utf-8") if data is not None else None
            except UnicodeDecodeError:
                text = None
            if text is None:
                item.content_error = "the file changed or is unreadable; read it with read_content"
            return text

        return list(await asyncio.gather(*(one(row, item) for row, item in zip(rows, items, strict=True))))


def _wants_content(row: JournalRow) -> bool:
    return row.exists and row.path.startswith("content/") and row.path.endswith(".md")


def _changed_file(row: JournalRow) -> ChangedFile:
    overlay = row.user_id != BASE_USER
    change = "deleted" if not row.exists else "added" if row.version == 1 else "modified"
    return ChangedFile(
        path=row.path,
        change_type=change,
        file_hash=row.sha256,
        size=row.size,
        version=row.version,
        last_modified=row.last_written_at.isoformat(),
        source="overlay" if overlay else "base",
        user_id=row.user_id if overlay else None,
    )


def _unpacked(blob: bytes) -> dict[str, str] | None:
    try:
        return manifest.unpack(blob)
    except ValueError:
        logger.error("a stored build manifest is corrupt; treating it as unknown")
        return None


def _encode_cursor(query: str, row: JournalRow, until: datetime) -> str:
    """The cursor continuing `query` after `row`, carrying the first page's `until`."""
    position = {"t": row.last_written_at.isoformat(), "p": row.path, "u": row.user_id, "n": until.isoformat()}
    return cursors.encode(query, position)


def _decode_cursor(cursor: object, query: str) -> tuple[ChangeKey | None, datetime | None]:
    """The last change of the previous page and the `until` it carries (None, None: first page).

    Raises:
        InvalidArgument: not a cursor delta_build issued for this book, `since` and user.
    """
    if cursor is None:
        return None, None
    position = cursors.decode(cursor, query)
    bad = InvalidArgument("cursor is not a cursor this server issued", field="cursor")
    try:
        key = ChangeKey(
            last_written_at=datetime.fromisoformat(cursors.text_field(position, "t")),
            path=cursors.text_field(position, "p"),
            user_id=cursors.text_field(position, "u"),
        )
        until = datetime.fromisoformat(cursors.text_field(position, "n"))
    except ValueError:
        raise bad from None
    if key.last_written_at.tzinfo is None or until.tzinfo is None:
        raise bad
    return key, until
