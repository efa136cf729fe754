"""The compare-and-swap at the heart of a write: which journal change the contract allows, and
how a commit whose answer was lost is settled without replaying it."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db import transactions
from panaversity_fs.db.engine import DB_ERRORS, Database, database_failure
from panaversity_fs.errors import (
    Conflict,
    HashRequired,
    NotFound,
    PanaversityFSError,
    outcome_unknown,
)
from panaversity_fs.files.idempotency import Replay
from panaversity_fs.files.results import WriteOutcome
from panaversity_fs.files.target import Target
from panaversity_fs.paths import BASE_USER

logger = logging.getLogger(__name__)

WriteDecision = tuple[Literal["created", "updated"], str | None, int]
"""A committed write: mode, previous hash, new version."""


def hash_required(current: str | None) -> HashRequired:
    """The refusal of a create whose file exists: the agent must read it first."""
    return HashRequired(
        "the file exists: read it, then write again with its file_hash as expected_hash "
        "(merge your change into what you read)",
        current_hash=current,
    )


def stale(current: str | None) -> Conflict:
    """The refusal of an `expected_hash` that is not the file's current hash."""
    return Conflict(
        "expected_hash is not the file's current hash: re-read, merge, retry", current_hash=current
    )


def stale_base(current: str | None) -> Conflict:
    """The refusal of an overlay write whose `expected_hash` is not the base file's current hash
    (`current_source` tells the audit that the hash is the base's, not the overlay's)."""
    return Conflict(
        "expected_hash is not the current hash of the file you read",
        current_hash=current,
        current_source="base",
    )


def missing(target: Target) -> NotFound:
    """The refusal of an `expected_hash` for a file that does not exist."""
    return NotFound("the file does not exist: create it without expected_hash", path=target.path)


def own_hash(refusal: PanaversityFSError) -> str | None:
    """The file's own current hash a refusal names, for its audit entry (a base file's hash is
    not the overlay's); drops the `current_source` detail, which is for the audit only."""
    current = refusal.details.get("current_hash") if isinstance(refusal, Conflict | HashRequired) else None
    base = refusal.details.pop("current_source", None) == "base"
    return current if isinstance(current, str) and not base else None


async def apply_write(
    conn: AsyncConnection,
    target: Target,
    expected: str | None,
    new_hash: str,
    size: int,
    staging_key: str,
    now: datetime,
    content_type: str | None,
    backend: str,
    author: journal.Author,
) -> WriteDecision | PanaversityFSError:
    """The journal change of a write in `conn`, per the `expected_hash` contract, or its refusal.

    A create inserts (or revives a tombstone); an update compares-and-swaps on the current hash;
    an overlay may be forked from the base version the caller read (its hash as `expected`).
    """
    key = target.key
    if expected is None:
        version = await journal.create(
            conn, key, new_hash, size, staging_key, now, backend, author, content_type
        )
        if version is not None:
            return ("created", None, version)
        row = await journal.lock(conn, key)
        current = row.sha256 if row is not None else None
        return hash_required(current)
    swap = journal.cas_parameters(key, expected, new_hash, size, staging_key, now, author, content_type)
    version = await journal.compare_and_swap(conn, key, swap)
    if version is not None:
        return ("updated", expected, version)
    row = await journal.lock(conn, key)
    if row is not None and row.exists:
        return stale(row.sha256)
    if target.user_id is not None:
        base = (await journal.fetch(conn, key.book_id, key.path, [BASE_USER])).get(BASE_USER)
        if base is not None and base.exists:
            if base.sha256 == expected:
                # Forking the overlay from the base version the agent read.
                version = await journal.create(conn, key, new_hash, size, staging_key, now, backend, author)
                if version is not None:
                    return ("created", None, version)
                row = await journal.lock(conn, key)
                return Conflict(
                    "the overlay was created concurrently: re-read, merge, retry",
                    current_hash=row.sha256 if row is not None else None,
                )
            return stale_base(base.sha256)
    return missing(target)


def foreseen_refusal(
    target: Target, expected: str | None, rows: dict[str, journal.JournalRow]
) -> PanaversityFSError | None:
    """The refusal `apply_write` would give, judged from `rows` (the target's own row and, for an
    overlay, the base row) read before anything was staged; None if the write may go ahead.

    Only a refusal is final: a write that looks allowed is decided again in its transaction.
    """
    own = rows.get(target.key.user_id)
    if own is not None and own.exists:
        if expected is None:
            return hash_required(own.sha256)
        return stale(own.sha256) if own.sha256 != expected else None
    if expected is None:
        return None
    base = rows.get(BASE_USER) if target.user_id is not None else None
    if base is not None and base.exists:
        return stale_base(base.sha256) if base.sha256 != expected else None
    return missing(target)


def write_outcome(target: Target, decision: WriteDecision, new_hash: str, size: int) -> WriteOutcome:
    """The result of a committed write."""
    mode, previous, version = decision
    return WriteOutcome(
        book_id=target.book_id,
        path=target.path,
        mode=mode,
        file_hash=new_hash,
        size=size,
        version=version,
        previous_hash=previous,
        user_id=target.user_id,
        source=target.source,
    )


_Decided = TypeVar("_Decided")


async def resolve_unknown_commit(
    db: Database,
    target: Target,
    staging_key: str | None,
    decided: _Decided,
    exc: BaseException,
    transaction: tuple[int, int] | None,
) -> _Decided | PanaversityFSError:
    """Decide whether a transaction whose COMMIT failed took effect, without replaying it;
    return `decided` (what the transaction did) if it did.

    On PostgreSQL the transaction's own status is asked (`db.transactions.settle`),
    which also stops a COMMIT still in flight from landing later. Otherwise (SQLite) a write's
    staging key, unique to this attempt, tells: if the journal row points at it, the commit
    happened. A delete has no such key, and on SQLite a COMMIT that failed did not commit. A
    replay changed nothing either way.
    """
    if isinstance(decided, Replay):
        return decided
    logger.warning("commit outcome unknown; settling it", exc_info=exc)
    if transaction is not None:
        committed = await transactions.settle(db, transaction)
        if committed is True:
            return decided
        if committed is False:
            return database_failure(exc)
        return outcome_unknown()
    if staging_key is None:
        return database_failure(exc)
    try:
        row = await _row_pointing_at(db, target, staging_key)
    except DB_ERRORS:
        return outcome_unknown()
    if row is not None and not isinstance(decided, PanaversityFSError):
        return decided
    return database_failure(exc)


async def settle_alone(
    db: Database,
    target: Target,
    staging_key: str,
    expected: str,
    new_hash: str,
    size: int,
    exc: BaseException,
) -> WriteOutcome | PanaversityFSError:
    """Whether an update committed by one statement (`db.commit_sql.swap_alone`) that failed took
    effect: the statement has ended, so the row pointing at its unique staging key tells.

    Raises nothing: an unreachable database gives an `outcome_unknown` Unavailable.
    """
    logger.warning("one-statement commit failed; settling it", exc_info=exc)
    try:
        row = await _row_pointing_at(db, target, staging_key)
    except DB_ERRORS:
        return outcome_unknown()
    if row is None:
        return database_failure(exc)
    return write_outcome(target, ("updated", expected, row.version), new_hash, size)


async def _row_pointing_at(db: Database, target: Target, staging_key: str) -> journal.JournalRow | None:
    """`target`'s journal row if it points at `staging_key` (the commit that staged there
    happened, and nothing replaced it since).

    Raises:
        sqlalchemy.exc.SQLAlchemyError, OSError: the database failed.
    """
    async with db.read() as conn:
        rows = await journal.fetch(conn, target.book_id, target.path, [target.key.user_id])
    row = rows.get(target.key.user_id)
    return row if row is not None and row.staging_key == staging_key else None
