"""Search tools: `glob_search`, `grep_search`."""

from __future__ import annotations

from typing import Annotated

from fastmcp import FastMCP
from fastmcp.tools.base import ToolResult
from pydantic import Field

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.books.results import GlobResult, GrepResult
from panaversity_fs.books.search import GLOB_MAX_LIMIT, GREP_MAX_RESULTS
from panaversity_fs.tools import results
from panaversity_fs.tools.hints import READ_ONLY
from panaversity_fs.tools.params import Count, Cursor, Flag, OptionalBookId, UserId, page_size

AllBooks = Flag


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the search tools on `mcp`."""

    async def glob_search(
        pattern: Annotated[str, Field(description="e.g. content/01-*/**/*.md")],
        book_id: OptionalBookId = None,
        user_id: UserId = None,
        all_books: AllBooks = False,
        cursor: Cursor = None,
        limit: Annotated[Count, page_size(GLOB_MAX_LIMIT)] = 100,
    ) -> ToolResult:
        """Find files by path glob."""
        found = await state.require().searcher.glob(
            current_operation(), book_id, pattern, user_id, all_books, cursor, limit
        )
        return results.plain(found)

    async def grep_search(
        pattern: str,
        book_id: OptionalBookId = None,
        user_id: UserId = None,
        all_books: AllBooks = False,
        path_glob: Annotated[str | None, Field(description="Only matching paths.")] = None,
        max_results: Annotated[Count, page_size(GREP_MAX_RESULTS)] = 100,
        case_sensitive: Flag = True,
        cursor: Cursor = None,
    ) -> ToolResult:
        """Search lesson lines by RE2 regex."""
        found = await state.require().searcher.grep(
            current_operation(),
            book_id,
            pattern,
            user_id,
            all_books,
            path_glob,
            max_results,
            case_sensitive,
            cursor,
        )
        return results.grep(found, user_id if isinstance(user_id, str) else None)

    mcp.tool(
        glob_search,
        title="Find files by path",
        output_schema=GlobResult.model_json_schema(),
        annotations=READ_ONLY,
    )
    mcp.tool(
        grep_search,
        title="Search lesson text",
        output_schema=GrepResult.model_json_schema(),
        annotations=READ_ONLY,
    )
