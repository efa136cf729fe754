"""Book tools: `list_books`, `validate_book`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastmcp import Context, FastMCP
from fastmcp.tools.base import ToolResult
from pydantic import Field

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.books.results import BookList, ValidationReport
from panaversity_fs.tools import results
from panaversity_fs.tools.hints import READ_ONLY
from panaversity_fs.tools.params import BookId, Flag, OptionalBookId, UserId


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the books tools on `mcp`."""

    async def list_books(
        include_structure: Literal["none", "content", "assets", "all"] = "none",
        book_id: OptionalBookId = None,
        user_id: UserId = None,
    ) -> ToolResult:
        """List books."""
        found = await state.require().catalog.list_books(
            current_operation(), include_structure, book_id, user_id
        )
        return results.plain(found)

    async def validate_book(
        book_id: BookId,
        ctx: Context,
        strict: Annotated[Flag, Field(description="Warnings fail too.")] = False,
    ) -> ToolResult:
        """Check a book against the path schema."""
        validator = state.require().validator

        async def progress(done: int, total: int) -> None:
            await ctx.report_progress(done, total)

        report = await validator.validate(current_operation(), book_id, strict, progress)
        return results.plain(report)

    mcp.tool(
        list_books, title="List books", output_schema=results.output_schema(BookList), annotations=READ_ONLY
    )
    mcp.tool(
        validate_book,
        title="Validate a book",
        output_schema=results.output_schema(ValidationReport),
        annotations=READ_ONLY,
    )
