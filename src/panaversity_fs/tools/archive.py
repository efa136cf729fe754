"""Archive tool: `get_book_archive`."""

from __future__ import annotations

from typing import Annotated

from fastmcp import FastMCP
from pydantic import Field

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.archive.service import ArchiveTicket, Scope
from panaversity_fs.tools.hints import READ_ONLY

BookId = Annotated[str, Field(description="Book id, e.g. `python-book` (^[a-z0-9][a-z0-9-]{1,62}$).")]


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the archive tools on `mcp`."""

    async def get_book_archive(
        book_id: BookId,
        scope: Annotated[
            Scope,
            Field(description="`content` (lessons), `assets` (static/), or `all`."),
        ] = "content",
        user_id: Annotated[
            str | None,
            Field(description="Archive this user's view: their overlays replace base files."),
        ] = None,
    ) -> ArchiveTicket:
        """Get a short-lived signed URL to download a whole book as a ZIP.

        The server streams the ZIP while it reads storage; the last member,
        `.panaversity/manifest.json`, lists every member's path, size and sha256, and any file
        that could not be read. The result also gives the file count, total bytes and manifest
        hash as of this call. Resume a broken or partial download with `&after=<last path>`.
        An unknown or empty book gives an archive holding only the manifest.
        """
        return await state.require().archives.ticket(current_operation(), book_id, scope, user_id)

    mcp.tool(
        get_book_archive,
        annotations=READ_ONLY,
    )
