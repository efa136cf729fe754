"""Audit entries of content operations, and the error helpers every content module shares."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.auth.identity import Caller
from panaversity_fs.db.audit_sql import NewAuditEntry
from panaversity_fs.db.engine import DB_ERRORS, Database
from panaversity_fs.errors import PanaversityFSError, Unavailable
from panaversity_fs.files.target import Target
from panaversity_fs.paths import BASE_USER, describe_rejected_path

logger = logging.getLogger(__name__)
__all__ = [
    "DB_ERRORS",
    "ReadNote",
    "append_refusal",
    "audit_entry",
    "file_entry",
    "outcome_status",
    "storage_unavailable",
]


@dataclass(slots=True)
class ReadNote:
    """What the audit entry of a read-only operation names; set from inside
    `ContentService.audited_read` when the checked arguments name it better (a resolved prefix)."""

    book_id: object
    what: object
    user_id: object


def audit_entry(
    caller: Caller,
    operation: str,
    book_id: object,
    path: object,
    user_id: object,
    prev_hash: str | None,
    new_hash: str | None,
    started: float,
    error: PanaversityFSError | None = None,
) -> NewAuditEntry:
    """The audit entry of one operation; unvalidated arguments are stored escaped and bounded."""
    return NewAuditEntry(
        created_at=datetime.now(UTC),
        agent_id=caller.agent_id,
        operation=operation,
        book_id=describe_rejected_path(book_id, 64),
        path=describe_rejected_path(path, 600),
        user_id=describe_rejected_path(user_id, 100) if user_id is not None else BASE_USER,
        prev_hash=prev_hash,
        new_hash=new_hash,
        status="success" if error is None else outcome_status(error),
        error_code=error.code if error is not None else None,
        error_message=error.message[:500] if error is not None else None,
        execution_time_ms=int((time.perf_counter() - started) * 1000),
        request_id=caller.request_id[:64] if caller.request_id else None,
    )


def file_entry(
    caller: Caller,
    operation: str,
    target: Target,
    prev_hash: str | None,
    new_hash: str | None,
    started: float,
    error: PanaversityFSError | None = None,
) -> NewAuditEntry:
    """The audit entry of an operation on a validated file."""
    return audit_entry(
        caller, operation, target.book_id, target.path, target.user_id, prev_hash, new_hash, started, error
    )


async def append_refusal(
    db: Database,
    audit: AuditRecorder,
    caller: Caller,
    operation: str,
    book_id: object,
    path: object,
    user_id: object,
    started: float,
    error: PanaversityFSError,
) -> None:
    """Audit a refused mutation in a transaction of its own (a failure to do so is logged)."""
    entry = audit_entry(caller, operation, book_id, path, user_id, None, None, started, error)
    try:
        async with db.write() as conn:
            await audit.append(conn, entry)
    except DB_ERRORS:
        logger.exception("could not audit a refused %s", operation)


def outcome_status(error: PanaversityFSError) -> str:
    """The audit/metrics status of a failed operation: `error` (our fault) or `refused`."""
    return "error" if error.code in ("UNAVAILABLE", "INTERNAL") else "refused"


def storage_unavailable(exc: BaseException) -> Unavailable:
    """Log a storage failure and return the caller's UNAVAILABLE error (safe to retry); the
    database's twin is `journal.engine.database_unavailable`."""
    logger.warning("storage failure", exc_info=exc)
    return Unavailable("the storage is unavailable; nothing was changed, retry later")
