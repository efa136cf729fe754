"""`AuditRecorder`: appends entries in the caller's transaction, or in batches for reads."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.journal import audit_repository as audit_sql
from panaversity_fs.journal.audit_repository import NewAuditEntry
from panaversity_fs.journal.engine import Database

logger = logging.getLogger(__name__)

MAX_QUEUED = 50_000
"""Read entries kept while the database is unreachable; older ones are dropped (and logged)."""


class AuditRecorder:
    """Writes audit entries into the hash chain.

    Mutations (and refused mutations) are appended by `append` inside the transaction that
    changes the journal, so both commit or neither does. Reads are queued by `enqueue` and
    appended in batches by a background task: a read changes nothing, and appending each one
    under the chain lock would serialise every reader. A `kill -9` can lose at most one batch
    interval of read entries, never a mutation's entry.
    """

    def __init__(self, db: Database, batch_interval: float) -> None:
        self._db = db
        self._interval = batch_interval
        self._queue: deque[NewAuditEntry] = deque()
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self.dropped = 0

    async def append(self, conn: AsyncConnection, entry: NewAuditEntry) -> int:
        """Append `entry` in the caller's write transaction; return its seq."""
        (seq,) = await audit_sql.append_entries(conn, [entry])
        return seq

    def enqueue(self, entry: NewAuditEntry) -> None:
        """Queue a read's entry for the next batch."""
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            self.dropped += 1
            logger.error("audit queue full: dropped the oldest read entry", extra={"dropped": self.dropped})
        self._queue.append(entry)
        self._wake.set()

    @property
    def queued(self) -> int:
        """Entries waiting for the next batch."""
        return len(self._queue)

    async def flush(self) -> int:
        """Append every queued entry now; return how many were written.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed (entries stay queued).
        """
        async with self._flush_lock:
            batch = list(self._queue)
            if not batch:
                return 0
            async with self._db.write() as conn:
                await audit_sql.append_entries(conn, batch)
            for _ in batch:
                self._queue.popleft()
            return len(batch)

    async def run(self) -> None:
        """Flush batches until cancelled (started by the server lifespan)."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                logger.exception("could not append queued read audit entries; will retry")
                self._wake.set()
                await asyncio.sleep(1.0)
