"""Content tools: `read_content`, `write_content`, `delete_content`."""

from __future__ import annotations

from typing import Annotated

from fastmcp import Context, FastMCP
from mcp_types import ToolAnnotations
from pydantic import Field

from panaversity_fs.auth.identity import caller_from_context
from panaversity_fs.content.results import DeleteOutcome, FileContent, WriteOutcome
from panaversity_fs.resources import ServerState

BookId = Annotated[str, Field(description="Book id, e.g. `python-book` (^[a-z0-9][a-z0-9-]{1,62}$).")]
ContentPath = Annotated[
    str,
    Field(description="`content/{NN-Part}/{NN-Chapter}/{NN-lesson}(.summary)?.md`, relative to the book."),
]
UserId = Annotated[
    str | None,
    Field(description="Overlay owner: read/write/delete that user's personal copy instead of the base."),
]
Hash = Annotated[
    str | None,
    Field(description="The file's current `file_hash` (sha256, lowercase hex), from your last read."),
]


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the content tools on `mcp`."""

    async def read_content(
        book_id: BookId, path: ContentPath, ctx: Context, user_id: UserId = None
    ) -> FileContent:
        """Read a lesson or summary: its exact content and `file_hash`.

        With `user_id`, that user's overlay is returned if it exists (`source: "overlay"`),
        otherwise the shared base file (`source: "base"`). Keep `file_hash`: you need it as
        `expected_hash` to change the file.
        """
        resources = state.require()
        return await resources.content.read(caller_from_context(ctx), book_id, path, user_id)

    async def write_content(
        book_id: BookId,
        path: ContentPath,
        content: Annotated[str, Field(description="Full new content, UTF-8 markdown, stored byte-exact.")],
        ctx: Context,
        expected_hash: Hash = None,
        user_id: UserId = None,
    ) -> WriteOutcome:
        """Create or replace a lesson or summary.

        The agent contract: to create a file, omit `expected_hash` (`mode: "created"`); to
        replace one, pass the `file_hash` you last read (`mode: "updated"`). A stale hash
        gets `CONFLICT` with `current_hash` (re-read, merge, retry); a missing hash on an
        existing file gets `HASH_REQUIRED`; a hash for a missing file gets `NOT_FOUND`.
        With `user_id` the write goes to that user's overlay and never touches the base; an
        overlay can be started from the base by passing the base's `file_hash`.
        """
        resources = state.require()
        return await resources.content.write(
            caller_from_context(ctx), book_id, path, content, expected_hash, user_id
        )

    async def delete_content(
        book_id: BookId,
        path: ContentPath,
        ctx: Context,
        user_id: UserId = None,
        expected_hash: Hash = None,
    ) -> DeleteOutcome:
        """Delete a lesson or summary (idempotent: a missing file gives `existed: false`).

        With `user_id`, only that user's overlay is deleted and reads fall back to the base.
        Pass `expected_hash` to delete only the version you read (`CONFLICT` otherwise).
        """
        resources = state.require()
        return await resources.content.delete(caller_from_context(ctx), book_id, path, user_id, expected_hash)

    mcp.tool(
        read_content,
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    mcp.tool(
        write_content,
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
        ),
    )
    mcp.tool(
        delete_content,
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        ),
    )
