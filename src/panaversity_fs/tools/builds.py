"""Build tools: `plan_build` (manifest diff) and `delta_build` (changes since a time)."""

from __future__ import annotations

from typing import Annotated

from fastmcp import FastMCP
from fastmcp.tools.base import ToolResult
from pydantic import Field

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.builds.results import BuildPlan, ChangeFeed
from panaversity_fs.builds.service import MAX_LIMIT, PLAN_PAGE
from panaversity_fs.tools import results
from panaversity_fs.tools.hints import READ_ONLY, RECORDS
from panaversity_fs.tools.params import SHA256, BookId, Count, Cursor, Flag, Moment, UserId, page_size, text


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the build tools on `mcp`."""

    async def plan_build(
        book_id: BookId,
        target_manifest_hash: Annotated[str | None, text(SHA256, "manifest_hash of your last build.")] = None,
        as_of: Moment = None,
        cursor: Cursor = None,
        limit: Annotated[Count, page_size(PLAN_PAGE)] = PLAN_PAGE,
    ) -> ToolResult:
        """Diff the book (as_of: as it was) with your last build's manifest."""
        plan = await state.require().builds.plan(
            current_operation(), book_id, target_manifest_hash, as_of, cursor, limit
        )
        return results.plain(plan)

    async def delta_build(
        book_id: BookId,
        since: Annotated[str, Field(json_schema_extra={"format": "date-time"})],
        user_id: UserId = None,
        include_content: Annotated[Flag, Field(description="Send lessons' text.")] = False,
        cursor: Cursor = None,
        limit: Annotated[Count, page_size(MAX_LIMIT)] = 500,
    ) -> ToolResult:
        """Changes after since, oldest first; next time pass until as since."""
        changes = await state.require().builds.delta(
            current_operation(), book_id, since, user_id, include_content, cursor, limit
        )
        return results.changes(changes)

    mcp.tool(
        plan_build,
        title="Plan an incremental build",
        output_schema=results.output_schema(BuildPlan),
        annotations=RECORDS,
    )
    mcp.tool(
        delta_build,
        title="Changes since a time",
        output_schema=results.output_schema(ChangeFeed),
        annotations=READ_ONLY,
    )
