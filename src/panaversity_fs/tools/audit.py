"""Audit tools for operators: `query_audit` and `verify_audit`."""

from __future__ import annotations

from typing import Annotated

from fastmcp import Context, FastMCP
from fastmcp.tools.base import ToolResult
from pydantic import Field

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.audit.query import MAX_LIMIT, AuditPage, ChainVerification, Status
from panaversity_fs.tools import results
from panaversity_fs.tools.hints import READ_ONLY
from panaversity_fs.tools.params import Count, Cursor, Limit, Moment, OptionalBookId, page_size

Text = str | None


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the audit tools on `mcp`."""

    async def query_audit(
        book_id: OptionalBookId = None,
        path: Text = None,
        path_pattern: Annotated[Text, Field(description="Glob.")] = None,
        user_id: Annotated[Text, Field(description="__base__: shared only.")] = None,
        agent_id: Text = None,
        operation: Annotated[Text, Field(description="Tool name.")] = None,
        status: Status | None = None,
        since: Moment = None,
        until: Moment = None,
        cursor: Cursor = None,
        limit: Annotated[Count, page_size(MAX_LIMIT)] = 100,
    ) -> ToolResult:
        """Audit entries in chain order."""
        page = await state.require().audit.query(
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
        return results.plain(page)

    async def verify_audit(
        ctx: Context,
        from_seq: Limit = None,
        max_entries: Limit = None,
    ) -> ToolResult:
        """Verify the audit chain; names the first broken entry."""
        queries = state.require().audit

        async def progress(done: int, total: int) -> None:
            await ctx.report_progress(done, total)

        verified = await queries.verify(current_operation(), from_seq, max_entries, progress)
        return results.plain(verified)

    mcp.tool(
        query_audit,
        title="Query the audit log",
        output_schema=results.output_schema(AuditPage),
        annotations=READ_ONLY,
    )
    mcp.tool(
        verify_audit,
        title="Verify the audit chain",
        output_schema=results.output_schema(ChainVerification),
        annotations=READ_ONLY,
    )
