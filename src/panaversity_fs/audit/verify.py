"""Verify the whole audit chain of a database, streaming (constant memory), and its checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.audit.chain import GENESIS_HASH, ChainReport, verify_chain
from panaversity_fs.audit.checkpoints import (
    Checkpoint,
    CheckpointReport,
    CheckpointSigner,
    CheckpointStore,
    check_against,
)
from panaversity_fs.db import audit_sql
from panaversity_fs.db.engine import Database


async def verify_database(db: Database) -> ChainReport:
    """Verify every entry, in seq order, against its predecessor and the chain head.

    The server may keep appending while this runs. An append commits its entries and the new
    head together, so entries past the head read at the start are checked against a re-read
    head; an entry past the head that no head covers was not appended by the server and is
    reported (a forged row).
    """
    async with db.read() as conn:
        return await verify_connection(conn)


async def verify_connection(conn: AsyncConnection, start: tuple[int, str] = (0, GENESIS_HASH)) -> ChainReport:
    """`verify_database` on an open connection (inside the caller's transaction).

    Args:
        conn: the connection to read with.
        start: `(seq, entry_hash)` of the last entry already trusted; verification continues
            after it (default: from the first entry).
    """
    head = await audit_sql.chain_head(conn)
    if head[0] < start[0]:
        return ChainReport(False, 0, head[0], head[0] + 1, "entries missing at tail")
    entries = audit_sql.stream_entries(conn, after_seq=start[0], upto_seq=head[0])
    report = await verify_chain(entries, head, start=start)
    report, _ = await follow_appends(conn, report, head)
    return report


async def follow_appends(
    conn: AsyncConnection, report: ChainReport, head: tuple[int, str]
) -> tuple[ChainReport, tuple[int, str]]:
    """Verify the entries appended after `head` while `report` was being made, each batch
    against the head that covers it; return the combined report and the last head.

    An entry after the newest head was not written by the server: the report fails there.
    """
    checked = report.entries_checked
    while report.ok and await audit_sql.has_entry_after(conn, head[0]):
        newer = await audit_sql.chain_head(conn)
        if newer[0] <= head[0]:
            return ChainReport(False, checked, head[0], head[0] + 1, "entry beyond the chain head"), head
        report = await verify_chain(
            audit_sql.stream_entries(conn, after_seq=head[0], upto_seq=newer[0]), newer, start=head
        )
        checked += report.entries_checked
        head = newer
    return replace(report, entries_checked=checked), head


@dataclass(frozen=True, slots=True)
class FullVerification:
    """The chain, the checkpoints in storage, and the checkpoints an operator supplied."""

    chain: ChainReport
    stored: CheckpointReport | None
    supplied: list[CheckpointReport]

    @property
    def ok(self) -> bool:
        """Whether the chain and every checkpoint comparison verified."""
        return (
            self.chain.ok
            and (self.stored is None or self.stored.ok)
            and all(report.ok for report in self.supplied)
        )

    def as_dict(self) -> dict[str, Any]:
        """The outcome as a JSON-ready dict (the chain report's fields at the top level)."""
        return {
            **self.chain.as_dict(),
            "ok": self.ok,
            "chain_ok": self.chain.ok,
            "checkpoints": self.stored.as_dict() if self.stored is not None else None,
            "against": [report.as_dict() for report in self.supplied],
        }


async def verify_everything(
    db: Database,
    signer: CheckpointSigner,
    checkpoints: CheckpointStore | None,
    supplied: Sequence[Checkpoint] = (),
) -> FullVerification:
    """Verify the whole chain, then compare it with stored and operator-supplied checkpoints.

    Supplied checkpoints are trusted as the operator's own record: unsigned ones and ones
    signed with another key count; one that claims our key must carry a valid signature.

    Raises:
        StorageError: the stored checkpoints could not be read.
        sqlalchemy errors: the database failed.
    """
    async with db.read() as conn:
        chain = await verify_connection(conn)
        stored = await checkpoints.check(conn) if checkpoints is not None else None
        reports: list[CheckpointReport] = []
        for checkpoint in supplied:

            async def fetch(_seq: int, found: Checkpoint = checkpoint) -> Checkpoint:
                return found

            reports.append(await check_against(conn, [checkpoint.seq], fetch, signer, trusted=True))
    return FullVerification(chain, stored, reports)
