"""Search tools: `glob_search`, `grep_search`."""

from __future__ import annotations

from typing import Annotated

from fastmcp import FastMCP
from pydantic import Field, Strict

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.books.results import GlobResult, GrepResult
from panaversity_fs.tools.hints import READ_ONLY

BookId = Annotated[
    str | None, Field(description="Book to search (required unless `all_books` is true, then ignored).")
]
UserId = Annotated[
    str | None,
    Field(description="Search this user's view: their overlays replace base files. Never another user's."),
]
AllBooks = Annotated[bool, Strict(), Field(description="Search every book instead of `book_id`.")]
Cursor = Annotated[
    str | None, Field(description="`next_cursor` of the previous call, with the same other arguments.")
]


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the search tools on `mcp`."""

    async def glob_search(
        pattern: Annotated[
            str,
            Field(
                description="Glob over book paths: `**` spans folders, `*` and `?` stay in one, `[a-z]` classes. E.g. `content/01-*/**/*.md`, `static/images/*.png`."
            ),
        ],
        book_id: BookId = None,
        user_id: UserId = None,
        all_books: AllBooks = False,
        cursor: Cursor = None,
        limit: Annotated[
            int | None, Strict(), Field(description="Matches per call, 1-1000 (default 100).")
        ] = None,
    ) -> GlobResult:
        """Find files by path pattern (lessons, summaries and assets), with hash and size.

        Matches come in (book, path) order; `truncated` with `next_cursor` means more exist.
        """
        return await state.require().searcher.glob(
            current_operation(), book_id, pattern, user_id, all_books, cursor, limit
        )

    async def grep_search(
        pattern: Annotated[
            str,
            Field(
                description="Regular expression (RE2 syntax: no backreferences or lookaround), matched per line; `^`/`$` are line ends."
            ),
        ],
        book_id: BookId = None,
        user_id: UserId = None,
        all_books: AllBooks = False,
        path_glob: Annotated[
            str | None, Field(description="Only files whose path matches this glob, e.g. `content/02-*/**`.")
        ] = None,
        max_results: Annotated[int, Strict(), Field(description="Matching lines per call, 1-1000.")] = 100,
        case_sensitive: Annotated[bool, Strict(), Field(description="False: ignore case.")] = True,
        cursor: Cursor = None,
    ) -> GrepResult:
        """Search the text of the markdown files; one result per matching line, with its number.

        Results come in (book, path, line) order. The search stops at `max_results` or at the
        server's time budget, then returns `truncated: true` and a `next_cursor` to continue.
        """
        return await state.require().searcher.grep(
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

    mcp.tool(glob_search, annotations=READ_ONLY)
    mcp.tool(grep_search, annotations=READ_ONLY)
