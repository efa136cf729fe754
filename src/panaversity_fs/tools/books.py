"""Book tools: `list_books`, `validate_book`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastmcp import Context, FastMCP
from pydantic import Field, Strict

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.books.results import BookList, ValidationReport
from panaversity_fs.tools.hints import READ_ONLY


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the books tools on `mcp`."""

    async def list_books(
        include_structure: Annotated[
            Literal["none", "content", "assets", "all"],
            Field(
                description="Add each book's part/chapter/lesson tree (`content`), its assets by type (`assets`), or both (`all`)."
            ),
        ] = "none",
        book_id: Annotated[
            str | None, Field(description="Only this book (needed for the structure of large libraries).")
        ] = None,
        user_id: Annotated[
            str | None,
            Field(description="Also list this user's overlay-only books and count their overlay files."),
        ] = None,
    ) -> BookList:
        """List the books with their file counts, size and last change; optionally their structure.

        A book exists while it has at least one file. The structure shows the shared (base)
        book; the `user_id` overlay is counted, never listed, and no other user's is visible. Without `book_id`, the
        structure is given only while all books together hold at most
        5000 files; otherwise pass `book_id`.
        """
        return await state.require().catalog.list_books(
            current_operation(), include_structure, book_id, user_id
        )

    async def validate_book(
        book_id: Annotated[str, Field(description="Book id, e.g. `python-book`.")],
        ctx: Context,
        strict: Annotated[
            bool, Strict(), Field(description="Count warnings as failures for `valid`.")
        ] = False,
    ) -> ValidationReport:
        """Check a whole book against the book schema and report every violation with a fix.

        Looks at the journal (every user's rows) and at the stored objects, so it also finds
        stray files no other tool can see: objects outside content/ or static/, names that
        break the schema, objects with no journal entry, and bad overlays. Each issue has a
        `rule`, a `severity` (`error` or `warning`) and a concrete `suggestion`. At most 1000
        issues are listed (`truncated` says when more exist; the summary counts them all).
        Reports progress while it scans.
        """
        validator = state.require().validator

        async def progress(done: int, total: int) -> None:
            await ctx.report_progress(done, total)

        return await validator.validate(current_operation(), book_id, strict, progress)

    mcp.tool(list_books, annotations=READ_ONLY)
    mcp.tool(validate_book, annotations=READ_ONLY)
