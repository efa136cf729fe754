"""Content tools: `read_content`, `write_content`, `delete_content`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastmcp import FastMCP
from fastmcp.tools.base import ToolResult
from pydantic import Field

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.books.results import BulkPage
from panaversity_fs.errors import InvalidArgument
from panaversity_fs.files.mime import sniff_content_type
from panaversity_fs.files.results import DeleteOutcome, FileInfo, WriteOutcome
from panaversity_fs.history.results import VersionRead
from panaversity_fs.paths import CONTENT_EXAMPLE
from panaversity_fs.tools import results
from panaversity_fs.tools.hints import DELETES, READ_ONLY, WRITES
from panaversity_fs.tools.params import (
    BookId,
    Count,
    Cursor,
    Hash,
    IdempotencyKey,
    LessonPath,
    UserId,
    page_size,
)

READ_OUTPUT = results.merged_output_schema(
    "scope file: one file (with version: that old version, at instead of last_modified); "
    "other scopes: one page (scope, files, next_cursor).",
    FileInfo,
    BulkPage,
    VersionRead,
)
"""One file's description (scope file) or a page's (the other scopes), as one object."""


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the content tools on `mcp`."""

    async def read_content(
        book_id: BookId,
        path: Annotated[str | None, Field(description="File or folder.")] = None,
        user_id: UserId = None,
        scope: Literal["file", "chapter", "part", "book"] = "file",
        cursor: Cursor = None,
        limit: Annotated[Count, page_size(500)] = 100,
        version: int | None = None,
    ) -> ToolResult:
        """Read a lesson (markdown, then file_hash), an old version, or a page of a chapter,
        part or book."""
        resources = state.require()
        op = current_operation()
        if version is not None:
            if scope != "file":
                with resources.trail.read(op, book_id, path, user_id):
                    raise InvalidArgument("version reads one file: use scope file", field="scope")
            old, data = await resources.history.read(op, book_id, path, version, user_id)
            if old.path.startswith("static/"):
                mime = sniff_content_type(data, old.path)
                return results.plain(old, results.binary(data, mime, old.book_id, old.path))
            return results.markdown(data.decode("utf-8", errors="surrogateescape"), old)
        if scope == "file":
            if path is None:
                with resources.trail.read(op, book_id, None, user_id):
                    raise InvalidArgument(
                        "path is required for scope file", field="path", example=CONTENT_EXAMPLE
                    )
            read = await resources.lessons.read(op, book_id, path, user_id)
            return results.markdown(read.text, read.info)
        page = await resources.bulk.read_page(op, book_id, scope, path, user_id, cursor, limit)
        paths = [file.path for file in page.page.files]
        return results.files(page.page.book_id, page.page.user_id, paths, page.texts, page.page)

    async def write_content(
        book_id: BookId,
        path: LessonPath,
        content: str,
        expected_hash: Hash = None,
        user_id: UserId = None,
        idempotency_key: IdempotencyKey = None,  # read by the pipeline into the call's operation
    ) -> ToolResult:
        """Create a lesson (omit expected_hash) or replace it (pass the file_hash you read)."""
        written = await state.require().lessons.write(
            current_operation(), book_id, path, content, expected_hash, user_id
        )
        return results.plain(written)

    async def delete_content(
        book_id: BookId,
        path: LessonPath,
        user_id: UserId = None,
        expected_hash: Hash = None,
        idempotency_key: IdempotencyKey = None,
    ) -> ToolResult:
        """Delete a lesson; with user_id, only that overlay."""
        deleted = await state.require().lessons.delete(
            current_operation(), book_id, path, user_id, expected_hash
        )
        return results.plain(deleted)

    mcp.tool(
        read_content,
        title="Read a lesson or a page of a book",
        output_schema=READ_OUTPUT,
        annotations=READ_ONLY,
    )
    mcp.tool(
        write_content,
        title="Create or replace a lesson",
        output_schema=results.output_schema(WriteOutcome),
        annotations=WRITES,
    )
    mcp.tool(
        delete_content,
        title="Delete a lesson",
        output_schema=results.output_schema(DeleteOutcome),
        annotations=DELETES,
    )
