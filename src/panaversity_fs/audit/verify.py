"""Verify the whole audit chain of a database, streaming (constant memory)."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncConnection

from panaversity_fs.audit.chain import ChainReport, verify_chain
from panaversity_fs.journal import audit_repository as audit_sql
from panaversity_fs.journal.engine import Database


async def verify_database(db: Database) -> ChainReport:
    """Verify every entry, in seq order, against its predecessor and the chain head.

    The server may keep appending while this runs. An append commits its entries and the new
    head together, so entries past the head read at the start are checked against a re-read
    head; an entry past the head that no head covers was not appended by the server and is
    reported (a forged row).
    """
    async with db.read() as conn:
        return await verify_connection(conn)


async def verify_connection(conn: AsyncConnection) -> ChainReport:
    """`verify_database` on an open connection (inside the caller's transaction)."""
    head = await audit_sql.chain_head(conn)
    report = await verify_chain(audit_sql.stream_entries(conn, upto_seq=head[0]), head)
    checked = report.entries_checked
    while report.ok and await audit_sql.has_entry_after(conn, head[0]):
        newer = await audit_sql.chain_head(conn)
        if newer[0] <= head[0]:
            return ChainReport(False, checked, head[0], head[0] + 1, "entry beyond the chain head")
        report = await verify_chain(
            audit_sql.stream_entries(conn, after_seq=head[0], upto_seq=newer[0]), newer, start=head
        )
        checked += report.entries_checked
        head = newer
    return replace(report, entries_checked=checked)
