"""`AuditRecorder`: appends entries in the caller's transaction, or in batches for reads."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.db import audit_sql, transactions
from panaversity_fs.db.audit_sql import NewAuditEntry
from panaversity_fs.db.engine import DB_ERRORS, Database
from panaversity_fs.errors import Unavailable

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
        self._unsettled: tuple[int, str, tuple[int, int] | None] | None = None
        """A batch whose COMMIT failed: (entries, last entry hash, transaction), to settle first."""
        self.on_drop: Callable[[], None] | None = None
        """Told about every dropped entry (the server counts them as a metric)."""

    async def append(self, conn: AsyncConnection, entry: NewAuditEntry) -> int:
        """Append `entry` in the caller's write transaction; return its seq."""
        (seq,) = await audit_sql.append_entries(conn, [entry])
        return seq

    def enqueue(self, entry: NewAuditEntry) -> None:
        """Queue a read's entry for the next batch."""
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            if self._unsettled is not None:  # the oldest entries are the held-back batch's
                count, last_hash, transaction = self._unsettled
                self._unsettled = (count - 1, last_hash, transaction) if count > 1 else None
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
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
        # Shielded: a cancellation between COMMIT and dequeuing would leave the committed entries
        # queued, and the shutdown flush would append them a second time. The shielded flush
        # finishes under the lock; the next flush waits for it and finds them gone.
        return await asyncio.shield(self._flush())

    async def _flush(self) -> int:
        async with self._flush_lock:
            if self._unsettled is not None:
                await self._settle_previous()
            batch = list(self._queue)
            if not batch:
                return 0
            last: str | None = None
            transaction: tuple[int, int] | None = None
            try:
                async with self._db.write() as conn:
                    await audit_sql.append_entries(conn, batch)
                    last, transaction = audit_sql.last_appended(conn), transactions.remembered(conn)
            except DB_ERRORS:
                if last is None:
                    raise  # failed before COMMIT: nothing was appended
                # Failed at COMMIT: the batch may be in the log already, and appending it again
                # would record every read in it twice. It is settled before anything else.
                self._unsettled = (len(batch), last, transaction)
                await self._settle_previous()
            else:
                self._dequeue(len(batch))
            return len(batch)

    async def _settle_previous(self) -> None:
        """Settle the batch whose COMMIT failed: dequeue it if it landed, else keep it to retry.

        Raises:
            Unavailable: whether it landed cannot be told yet (the batch stays held back).
        """
        assert self._unsettled is not None
        count, last_hash, transaction = self._unsettled
        if transaction is not None:
            landed = await transactions.settle(self._db, transaction)
        else:
            try:
                async with self._db.read() as conn:
                    landed = await audit_sql.has_entry_hash(conn, last_hash)
            except DB_ERRORS:
                landed = None
        if landed is None:
            raise Unavailable("cannot tell yet whether the last audit batch was committed")
        self._unsettled = None
        if landed:
            self._dequeue(count)

    def _dequeue(self, count: int) -> None:
        for _ in range(count):
            self._queue.popleft()

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
