"""History tools: `list_versions`, `diff_content`, `restore_version`, `revert_changes`."""

from __future__ import annotations

from typing import Annotated

from fastmcp import Context, FastMCP
from fastmcp.tools.base import ToolResult
from pydantic import Field

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.files.results import WriteOutcome
from panaversity_fs.history.results import DiffInfo, RevertReport, VersionList
from panaversity_fs.tools import results
from panaversity_fs.tools.hints import READ_ONLY, WRITES
from panaversity_fs.tools.params import (
    BookId,
    Count,
    Cursor,
    Flag,
    Hash,
    IdempotencyKey,
    Moment,
    OptionalBookId,
    UserId,
    page_size,
)


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the history tools on `mcp`."""

    async def list_versions(
        book_id: BookId,
        path: str,
        user_id: UserId = None,
        cursor: Cursor = None,
        limit: Annotated[Count, page_size(200)] = 20,
    ) -> ToolResult:
        """A file's versions, newest first."""
        listed = await state.require().history.list(
            current_operation(), book_id, path, user_id, cursor, limit
        )
        return results.plain(listed)

    async def diff_content(
        book_id: BookId,
        path: str,
        from_version: int | None = None,
        to_version: int | None = None,
        user_id: UserId = None,
        against_base: Flag = False,
    ) -> ToolResult:
        """Unified diff of two versions (default: the last two), or of user_id's overlay vs
        base."""
        info, text = await state.require().history.diff(
            current_operation(), book_id, path, from_version, to_version, user_id, against_base
        )
        return results.markdown(text, info)

    async def restore_version(
        book_id: BookId,
        path: str,
        version: int,
        expected_hash: Hash = None,
        user_id: UserId = None,
        idempotency_key: IdempotencyKey = None,
    ) -> ToolResult:
        """Write an old version back (hash rules of write_content)."""
        restored = await state.require().history.restore(
            current_operation(), book_id, path, version, expected_hash, user_id
        )
        return results.plain(restored)

    async def revert_changes(
        ctx: Context,
        agent_id: str,
        since: Annotated[str, Field(json_schema_extra={"format": "date-time"})],
        until: Moment = None,
        book_id: OptionalBookId = None,
        apply: Flag = False,
        cursor: Cursor = None,
        idempotency_key: IdempotencyKey = None,
    ) -> ToolResult:
        """Revert agent_id's changes in [since, until) (dry run unless apply)."""

        async def progress(done: int, total: int) -> None:
            await ctx.report_progress(done, total)

        report = await state.require().reverter.revert(
            current_operation(), agent_id, since, until, book_id, apply, cursor, progress
        )
        return results.plain(report)

    mcp.tool(
        list_versions,
        title="List a file's versions",
        output_schema=results.output_schema(VersionList),
        annotations=READ_ONLY,
    )
    mcp.tool(
        diff_content,
        title="Compare versions",
        output_schema=results.output_schema(DiffInfo),
        annotations=READ_ONLY,
    )
    mcp.tool(
        restore_version,
        title="Restore an old version",
        output_schema=results.output_schema(WriteOutcome),
        annotations=WRITES,
    )
    mcp.tool(
        revert_changes,
        title="Revert an agent's changes",
        output_schema=results.output_schema(RevertReport),
        annotations=WRITES,
    )
