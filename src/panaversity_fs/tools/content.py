"""Content tools: `read_content`, `write_content`, `delete_content`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastmcp import FastMCP
from fastmcp.tools.base import ToolResult
from pydantic import BaseModel, Field, Strict, TypeAdapter

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.books.results import BulkPage
from panaversity_fs.errors import InvalidArgument
from panaversity_fs.files.results import DeleteOutcome, FileContent, WriteOutcome
from panaversity_fs.paths import CONTENT_EXAMPLE
from panaversity_fs.tools.hints import DELETES, READ_ONLY, WRITES
from panaversity_fs.tools.params import BookId, ContentPath, Hash, IdempotencyKey, UserId

ReadPath = Annotated[
    str | None,
    Field(
        description="scope file: the lesson or summary path. chapter: `content/{NN-Part}/{NN-Chapter}`. "
        "part: `content/{NN-Part}`. book: omit."
    ),
]

# One file (scope file) or one page of files (bulk scopes), both unwrapped objects.
READ_OUTPUT_SCHEMA: dict[str, Any] = {"type": "object", **TypeAdapter(FileContent | BulkPage).json_schema()}


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the content tools on `mcp`."""

    async def read_content(
        book_id: BookId,
        path: ReadPath = None,
        user_id: UserId = None,
        scope: Annotated[
            Literal["file", "chapter", "part", "book"],
            Field(description="`file` (default): one file. `chapter` / `part` / `book`: pages of files."),
        ] = "file",
        cursor: Annotated[
            str | None, Field(description="Bulk scopes: `next_cursor` of the previous page (same arguments).")
        ] = None,
        limit: Annotated[
            int | None, Strict(), Field(description="Bulk scopes: files per page, 1-500 (default 100).")
        ] = None,
    ) -> ToolResult:
        """Read a lesson or summary, or a whole chapter, part or book page by page.

        `scope: "file"`: the file's exact content and `file_hash`. With `user_id`, that user's
        overlay is returned if it exists (`source: "overlay"`), otherwise the shared base file
        (`source: "base"`). Keep `file_hash`: you need it as `expected_hash` to change the file.

        `scope: "chapter"` (path `content/01-Part/02-Chapter`), `"part"` (path
        `content/01-Part`) or `"book"` (no path): a page of `files` (path, content,
        file_hash, source, ...) in path order, overlay-resolved for `user_id`, markdown only.
        Call again with `cursor: next_cursor` until `next_cursor` is null.
        """
        resources = state.require()
        op = current_operation()
        result: BaseModel
        if scope == "file":
            if path is None:
                with resources.trail.read(op, book_id, None, user_id):
                    raise InvalidArgument(
                        "path is required for scope file", field="path", example=CONTENT_EXAMPLE
                    )
            result = await resources.lessons.read(op, book_id, path, user_id)
        else:
            result = await resources.bulk.read_page(op, book_id, scope, path, user_id, cursor, limit)
        return ToolResult(structured_content=result.model_dump(mode="json"))

    async def write_content(
        book_id: BookId,
        path: ContentPath,
        content: Annotated[str, Field(description="Full new content, UTF-8 markdown, stored byte-exact.")],
        expected_hash: Hash = None,
        user_id: UserId = None,
        idempotency_key: IdempotencyKey = None,
    ) -> WriteOutcome:
        """Create or replace a lesson or summary.

        The agent contract: to create a file, omit `expected_hash` (`mode: "created"`); to
        replace one, pass the `file_hash` you last read (`mode: "updated"`). A stale hash
        gets `CONFLICT` with `current_hash` (re-read, merge, retry); a missing hash on an
        existing file gets `HASH_REQUIRED`; a hash for a missing file gets `NOT_FOUND`.
        With `user_id` the write goes to that user's overlay and never touches the base; an
        overlay can be started from the base by passing the base's `file_hash`.
        """
        return await state.require().lessons.write(
            current_operation(), book_id, path, content, expected_hash, user_id
        )

    async def delete_content(
        book_id: BookId,
        path: ContentPath,
        user_id: UserId = None,
        expected_hash: Hash = None,
        idempotency_key: IdempotencyKey = None,
    ) -> DeleteOutcome:
        """Delete a lesson or summary (idempotent: a missing file gives `existed: false`).

        With `user_id`, only that user's overlay is deleted and reads fall back to the base.
        Pass `expected_hash` to delete only the version you read (`CONFLICT` otherwise).
        """
        return await state.require().lessons.delete(
            current_operation(), book_id, path, user_id, expected_hash
        )

    mcp.tool(read_content, output_schema=READ_OUTPUT_SCHEMA, annotations=READ_ONLY)
    mcp.tool(write_content, annotations=WRITES)
    mcp.tool(delete_content, annotations=DELETES)
