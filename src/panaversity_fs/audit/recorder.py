"""Appending entries to the audit chain: inside a mutation's transaction, or in batches for reads."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from panaversity_fs.audit.chain import compute_entry_hash
from panaversity_fs.db import audit_sql, transactions
from panaversity_fs.db.audit_sql import NewAuditEntry
from panaversity_fs.db.engine import DB_ERRORS, Database, WriteTransaction
from panaversity_fs.errors import Unavailable
from panaversity_fs.times import to_utc

logger = logging.getLogger(__name__)

MAX_QUEUED = 50_000
"""Read entries kept while the database is unreachable; older ones are dropped (and logged)."""


@dataclass(frozen=True, slots=True)
class Appended:
    """Entries placed in the chain by one transaction: their seqs and the last entry's hash."""

    seqs: list[int]
    last_hash: str


async def append_entries(tx: WriteTransaction, entries: Sequence[NewAuditEntry]) -> Appended:
    """Append `entries` to the chain inside `tx`: lock the head, hash each entry over its
    predecessor, insert them, move the head."""
    seq, prev = await audit_sql.lock_chain_head(tx)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        seq += 1
        # Stored and hashed in UTC: SQLite would keep the wall time and drop any other offset.
        row = entry.values() | {"seq": seq, "chain_prev_hash": prev, "created_at": to_utc(entry.created_at)}
        row["entry_hash"] = prev = compute_entry_hash(row)
        rows.append(row)
    await audit_sql.insert_and_move_head(tx.conn, rows, seq, prev)
    return Appended([int(row["seq"]) for row in rows], prev)


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
        self.on_committed: Callable[[list[str]], None] | None = None
        """Told the statuses of the entries of every committed transaction (a metric)."""

    async def append(self, tx: WriteTransaction, entry: NewAuditEntry) -> int:
        """Append `entry` in the caller's write transaction; return its seq."""
        appended = await append_entries(tx, [entry])
        self._count_at_commit(tx, [entry])
        return appended.seqs[0]

    def _count_at_commit(self, tx: WriteTransaction, entries: Sequence[NewAuditEntry]) -> None:
        statuses = [entry.status for entry in entries]
        tx.after_commit(lambda: self.count_committed(statuses))

    def count_committed(self, statuses: list[str]) -> None:
        """Report the statuses of entries a transaction committed (`on_committed`)."""
        if self.on_committed is not None:
            self.on_committed(statuses)

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
            appended: Appended | None = None
            transaction: tuple[int, int] | None = None
            try:
                async with self._db.write() as tx:
                    appended = await append_entries(tx, batch)
                    self._count_at_commit(tx, batch)
                    transaction = tx.transaction_id
            except DB_ERRORS:
                if appended is None:
                    raise  # failed before COMMIT: nothing was appended
                # Failed at COMMIT: the batch may be in the log already, and appending it again
                # would record every read in it twice. It is settled before anything else.
                self._unsettled = (len(batch), appended.last_hash, transaction)
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
