"""Archive tool: `get_book_archive`."""

from __future__ import annotations

from fastmcp import FastMCP
from fastmcp.tools.base import ToolResult

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.archive.service import ArchiveTicket, Scope
from panaversity_fs.tools import results
from panaversity_fs.tools.hints import READ_ONLY
from panaversity_fs.tools.params import BookId, Moment, UserId


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the archive tools on `mcp`."""

    async def get_book_archive(
        book_id: BookId,
        scope: Scope = "content",
        user_id: UserId = None,
        as_of: Moment = None,
    ) -> ToolResult:
        """The book as a ZIP URL (as_of: as it was); resume with &after=<last path>."""
        ticket = await state.require().archives.ticket(current_operation(), book_id, scope, user_id, as_of)
        link = results.link(ticket.url, f"{ticket.book_id}.zip", "application/zip")
        return results.plain(ticket, link)

    mcp.tool(
        get_book_archive,
        title="Download a book as ZIP",
        output_schema=results.output_schema(ArchiveTicket),
        annotations=READ_ONLY,
    )
