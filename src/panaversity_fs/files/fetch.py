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
from typing import Literal

from panaversity_fs.db.journal_sql import JournalRow
from panaversity_fs.files.reader import FileReader

logger = logging.getLogger(__name__)

READ_CONCURRENCY = 16
"""Storage reads in flight at once for one bulk operation."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """Verified bytes and the journal row they belong to."""

    row: JournalRow
    data: bytes

    @property
    def source(self) -> Literal["base", "overlay"]:
        """`overlay` for a user's file, `base` for shared content."""
        return self.row.source


async def fetch_row(reader: FileReader, row: JournalRow, user_id: str | None) -> Fetched | None:
    """Return the verified bytes of `row`, or of the row that replaced it since it was listed.

    Returns None if the file was deleted since it was listed.

    Raises:
        Unavailable: storage or the database failed, or the file kept changing.
        Internal: the stored bytes do not match an unchanging journal row (run fsck).
    """
    found = await reader.follow(row.book_id, row.path, user_id, row)
    return None if found is None else Fetched(*found)


async def fetch_in_order(
    reader: FileReader,
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
            pending.append((row, asyncio.ensure_future(fetch_row(reader, row, user_id))))

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
