"""Reading the bytes of many journal rows: parallel, in order, hash-verified.

A listing is one query; the bytes are then read concurrently (bounded). A row whose bytes no
longer match its hash was changed after the listing: only that row is looked up again (and
read again), a few times, before the read gives up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from panaversity_fs.content.service import ContentService
from panaversity_fs.errors import Internal, Unavailable
from panaversity_fs.journal import repository as journal
from panaversity_fs.journal.engine import DB_ERRORS, Database, database_unavailable
from panaversity_fs.journal.repository import JournalRow
from panaversity_fs.paths import BASE_USER

logger = logging.getLogger(__name__)

READ_CONCURRENCY = 16
"""Storage reads in flight at once for one bulk operation."""

REFETCH_ATTEMPTS = 3
"""Times a file that changed under a read is looked up and read again."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """Verified bytes and the journal row they belong to."""

    row: JournalRow
    data: bytes

    @property
    def source(self) -> str:
        """`overlay` for a user's file, `base` for shared content."""
        return "base" if self.row.user_id == BASE_USER else "overlay"


async def fetch_row(
    db: Database, content: ContentService, row: JournalRow, user_id: str | None
) -> Fetched | None:
    """Return the verified bytes of `row`, or of the row that replaced it since it was listed.

    Returns None if the file was deleted since it was listed.

    Raises:
        Unavailable: storage or the database failed, or the file kept changing.
        Internal: the stored bytes do not match an unchanging journal row (run fsck).
    """
    users = [BASE_USER] if user_id is None else [user_id, BASE_USER]
    versions = {(row.user_id, row.version)}
    for _ in range(REFETCH_ATTEMPTS + 1):
        data = await content.fetch_bytes(row)
        if data is not None:
            return Fetched(row, data)
        try:
            async with db.read() as conn:
                rows = await journal.fetch(conn, row.book_id, row.path, users)
        except DB_ERRORS as exc:
            raise database_unavailable(exc) from None
        fresh = journal.visible(rows, user_id)
        if fresh is None:
            return None
        row = fresh
        versions.add((row.user_id, row.version))
    if len(versions) == 1:
        logger.error(
            "stored bytes do not match the journal", extra={"book_id": row.book_id, "path": row.path}
        )
        raise Internal("stored bytes do not match the journal; an operator should run fsck")
    raise Unavailable("the file kept changing during the read; retry", path=row.path)


async def fetch_in_order(
    db: Database,
    content: ContentService,
    rows: Sequence[JournalRow],
    user_id: str | None,
    concurrency: int = READ_CONCURRENCY,
) -> AsyncIterator[tuple[JournalRow, Fetched | None]]:
    """Yield `(listed row, fetched or None if deleted)` in the order of `rows`.

    At most `concurrency` reads run ahead of the consumer; reads still in flight are cancelled
    when the consumer stops early.

    Raises:
        Unavailable, Internal: as `fetch_row`.
    """
    pending: deque[tuple[JournalRow, asyncio.Task[Fetched | None]]] = deque()
    upcoming = iter(rows)

    def top_up() -> None:
        while len(pending) < concurrency:
            row = next(upcoming, None)
            if row is None:
                return
            pending.append((row, asyncio.ensure_future(fetch_row(db, content, row, user_id))))

    try:
        top_up()
        while pending:
            row, task = pending.popleft()
            fetched = await task
            top_up()
            yield row, fetched
    finally:
        for _, task in pending:
            task.cancel()
        await asyncio.gather(*(task for _, task in pending), return_exceptions=True)
