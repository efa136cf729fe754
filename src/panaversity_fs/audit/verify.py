"""Verify the whole audit chain of a database, streaming (constant memory)."""

from __future__ import annotations

from panaversity_fs.audit.chain import ChainReport, verify_chain
from panaversity_fs.journal import audit_repository as audit_sql
from panaversity_fs.journal.engine import Database


async def verify_database(db: Database) -> ChainReport:
    """Verify every entry, in seq order, against its predecessor and the chain head."""
    async with db.read() as conn:
        head = await audit_sql.chain_head(conn)
        return await verify_chain(audit_sql.stream_entries(conn), head)
