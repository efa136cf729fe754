"""`AuditTrail`: the one way every service records what it did, for whom, with which outcome.

Three kinds of entry, three ways in:

- a **mutation** appends its entry inside the transaction that changes the journal
  (`append`), so both commit or neither does;
- a **refused mutation** (bad arguments, a lost race seen before anything was staged, a storage
  failure before the commit) appends its entry in a transaction of its own: `mutation()` wraps
  the code that may refuse and does it for any `PanaversityFSError` raised inside;
- a **read** (and a call refused by a limit) is queued and appended in batches: `read()` wraps
  the code of a read-only operation and records it answered or refused, `note()` records one
  directly.

Every entry carries the operation's agent id, name, request id and duration. Arguments that
were refused unchecked are stored escaped and bounded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Generator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from panaversity_fs.audit.chain import chain_template
from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.db.audit_sql import NewAuditEntry
from panaversity_fs.db.engine import DB_ERRORS, Database, WriteTransaction
from panaversity_fs.errors import PanaversityFSError
from panaversity_fs.operation import Operation
from panaversity_fs.paths import BASE_USER, describe_rejected_path
from panaversity_fs.times import to_utc

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ReadNote:
    """What the entry of a read-only operation names; set from inside `AuditTrail.read` when the
    checked arguments name it better (a resolved prefix, a canonical path)."""

    book_id: object
    what: object
    user_id: object


@dataclass(frozen=True, slots=True)
class Subject:
    """What an entry is about: a book, a path (or a description of a scope), an overlay owner."""

    book_id: object
    path: object
    user_id: object = None


def outcome_status(error: PanaversityFSError | None) -> str:
    """The audit/metrics status of an outcome: `success`, `error` (ours) or `refused` (the caller's)."""
    if error is None:
        return "success"
    return "error" if error.code in ("UNAVAILABLE", "INTERNAL") else "refused"


def entry(
    op: Operation,
    subject: Subject,
    prev_hash: str | None = None,
    new_hash: str | None = None,
    error: PanaversityFSError | None = None,
) -> NewAuditEntry:
    """The audit entry of `op` on `subject`; unvalidated arguments are stored escaped and bounded."""
    user = BASE_USER
    if subject.user_id is not None:
        user = describe_rejected_path(subject.user_id, 100)
    return NewAuditEntry(
        created_at=datetime.now(UTC),
        agent_id=op.agent_id,
        operation=op.name,
        book_id=describe_rejected_path(subject.book_id, 64),
        path=describe_rejected_path(subject.path, 600),
        user_id=user,
        prev_hash=prev_hash,
        new_hash=new_hash,
        status=outcome_status(error),
        error_code=error.code if error is not None else None,
        error_message=error.message[:500] if error is not None else None,
        execution_time_ms=int((time.perf_counter() - op.started) * 1000),
        request_id=op.request_id[:64],
    )


class AuditTrail:
    """Records reads, mutations and refusals of every operation in the audit chain."""

    def __init__(self, db: Database, recorder: AuditRecorder) -> None:
        self._db = db
        self.recorder = recorder

    async def append(
        self,
        tx: WriteTransaction,
        op: Operation,
        subject: Subject,
        prev_hash: str | None,
        new_hash: str | None,
        error: PanaversityFSError | None = None,
    ) -> int:
        """Append the entry of a mutation (or of its refusal, decided in `tx`) inside `tx`;
        return its seq."""
        return await self.recorder.append(tx, entry(op, subject, prev_hash, new_hash, error))

    def entry_alone(
        self, op: Operation, subject: Subject, prev_hash: str, new_hash: str
    ) -> tuple[dict[str, Any], tuple[bytes, bytes, bytes]] | None:
        """The columns of a mutation's entry (but its place in the chain) and its
        `chain_template`, for a statement that places it in the chain itself
        (`db.commit_sql`); None if it cannot be cut so (then `append` it)."""
        values = entry(op, subject, prev_hash, new_hash).values()
        values["created_at"] = to_utc(values["created_at"])
        template = chain_template(values)
        return None if template is None else (values, template)

    def appended_alone(self, status: str) -> None:
        """Count an entry such a statement committed (as `append`'s are counted at commit)."""
        self.recorder.count_committed([status])

    async def refused(
        self, op: Operation, subject: Subject, error: PanaversityFSError, current: str | None = None
    ) -> None:
        """Audit a refused mutation in a transaction of its own (a failure to do so is logged);
        `current` is the file's hash the refusal was judged against, when it was."""
        try:
            async with self._db.write() as tx:
                await self.recorder.append(tx, entry(op, subject, current, current, error))
        except DB_ERRORS:
            logger.exception("could not audit a refused %s", op.name)

    @asynccontextmanager
    async def mutation(self, op: Operation, subject: Subject) -> AsyncGenerator[None]:
        """Audit a `PanaversityFSError` raised inside as a refusal of `op` on `subject` (in a
        transaction of its own), then re-raise it. Outcomes decided inside a journal
        transaction are audited there (`append`), never here."""
        try:
            yield
        except PanaversityFSError as error:
            await self.refused(op, subject, error)
            raise

    def note(self, op: Operation, subject: Subject, error: PanaversityFSError | None = None) -> None:
        """Queue the entry of a read-only operation (or of a call a limit refused)."""
        self.recorder.enqueue(entry(op, subject, error=error))

    def note_read(
        self, op: Operation, subject: Subject, hash_read: str, error: PanaversityFSError | None = None
    ) -> None:
        """Queue the entry of a read of one file that had the hash `hash_read`."""
        self.recorder.enqueue(entry(op, subject, hash_read, hash_read, error))

    @contextmanager
    def read(
        self, op: Operation, book_id: object, what: object, user_id: object = None
    ) -> Generator[ReadNote]:
        """Audit the read-only operation run inside, refused (a `PanaversityFSError`, re-raised)
        or answered, naming what the yielded note names at the end."""
        note = ReadNote(book_id, what, user_id)
        try:
            yield note
        except PanaversityFSError as error:
            self.note(op, Subject(note.book_id, note.what, note.user_id), error)
            raise
        self.note(op, Subject(note.book_id, note.what, note.user_id))
