"""Audit tools for operators: `query_audit` and `verify_audit`."""

from __future__ import annotations

from typing import Annotated

from fastmcp import Context, FastMCP
from pydantic import Field, Strict

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.audit.query import AuditPage, ChainVerification, Status
from panaversity_fs.tools.hints import READ_ONLY

Text = str | None
Moment = Annotated[
    str | None,
    Field(
        description="ISO-8601 time with a timezone, e.g. `2026-03-01T12:00:00Z` (no zone: INVALID_ARGUMENT)."
    ),
]


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the audit tools on `mcp`."""

    async def query_audit(
        book_id: Annotated[Text, Field(description="Only entries of this book.")] = None,
        path: Annotated[
            Text, Field(description="Only entries of this exact path, relative to the book.")
        ] = None,
        path_pattern: Annotated[
            Text,
            Field(description="Only paths matching this glob: `**` crosses folders, `*` and `?` do not."),
        ] = None,
        user_id: Annotated[
            Text, Field(description="Only entries of this user's overlay (`__base__`: only the shared base).")
        ] = None,
        agent_id: Annotated[Text, Field(description="Only entries of this agent.")] = None,
        operation: Annotated[Text, Field(description="Only this tool, e.g. `write_content`.")] = None,
        status: Annotated[
            Status | None, Field(description="`success`, `refused` (caller's error) or `error` (server's).")
        ] = None,
        since: Annotated[
            Moment, Field(description="Entries at or after this time (ISO-8601 with timezone).")
        ] = None,
        until: Annotated[
            Moment, Field(description="Entries before this time (ISO-8601 with timezone).")
        ] = None,
        cursor: Annotated[
            Text, Field(description="`next_cursor` of the previous page (same filters).")
        ] = None,
        limit: Annotated[
            int | None, Strict(), Field(description="Entries per page, 1-1000 (default 100).")
        ] = None,
    ) -> AuditPage:
        """Read the audit log: who did what to which file, when, with which outcome.

        Entries come in chain order (`seq`), filtered by every argument given. For a
        successful mutation of a file, `prev_hash` is the hash it replaced and `new_hash`
        the one it wrote, so one file's entries link up: `entry[n].new_hash ==
        entry[n+1].prev_hash`. `user_id` is null for the shared base.

        Call again with `cursor: next_cursor` until `next_cursor` is null. With a
        `path_pattern` a page reads a bounded number of entries, so it can hold fewer than
        `limit` entries (even none) before the end: only a null `next_cursor` means the end.
        """
        return await state.require().audit.query(
            current_operation(),
            book_id=book_id,
            path=path,
            path_pattern=path_pattern,
            user_id=user_id,
            agent_id=agent_id,
            operation=operation,
            status=status,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )

    async def verify_audit(
        ctx: Context,
        from_seq: Annotated[
            int | None,
            Strict(),
            Field(description="First seq to check (default 1); the entries before it are trusted."),
        ] = None,
        max_entries: Annotated[
            int | None,
            Strict(),
            Field(description="Check at most this many entries (default: up to the head)."),
        ] = None,
    ) -> ChainVerification:
        """Verify the tamper-evident audit chain and name the first entry that fails.

        Every entry must follow its predecessor with no gap, carry its predecessor's
        `entry_hash`, and hash to its own `entry_hash`; a check that reaches the head must
        end exactly at the recorded chain head. `ok: false` comes with `first_broken_seq`
        and a `reason`. Edits, deletions, insertions and reordering are detected by the chain
        itself; truncating or re-hashing the tail together with the head row is detected
        against the signed checkpoints the server keeps in storage (`checkpoint_seq`).
        """
        queries = state.require().audit

        async def progress(done: int, total: int) -> None:
            await ctx.report_progress(done, total)

        return await queries.verify(current_operation(), from_seq, max_entries, progress)

    mcp.tool(
        query_audit,
        annotations=READ_ONLY,
    )
    mcp.tool(
        verify_audit,
        annotations=READ_ONLY,
    )
