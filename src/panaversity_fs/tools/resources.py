"""MCP's own features: lessons as resources, completions for their addresses, the edit prompt.

- `book://{book_id}/{path}` (`?user_id=` for an overlay) reads a lesson as `text/markdown`,
  its `file_hash` and version in the content's `_meta`. The read goes through the same
  pipeline as a tool call (identity, limits, access, audit) as the operation `read_resource`.
- Completions offer book ids and lesson paths the caller may read, for the template and the
  prompt; they are audited reads too, and come back empty rather than as errors.
- The `edit_lesson` prompt spells out the safe way to change a lesson.
"""

from __future__ import annotations

from typing import Any, get_type_hints

from fastmcp import FastMCP
from fastmcp.resources.base import ResourceContent, ResourceResult
from fastmcp.server.dependencies import get_context
from mcp_types import CompletionArgument, CompletionContext, PromptReference, ResourceTemplateReference

from panaversity_fs.app.context import current_operation, operation_scope
from panaversity_fs.app.middleware.identity import identify
from panaversity_fs.app.resources import ServerState
from panaversity_fs.auth.access import authorize, offered
from panaversity_fs.books.search import GLOB_MAX_LIMIT
from panaversity_fs.errors import PanaversityFSError
from panaversity_fs.operation import Operation
from panaversity_fs.tools.results import MARKDOWN

LESSON_TEMPLATE = "book://{book_id}/{path*}{?user_id}"
COMPLETE = "complete"
"""The operation name of a completion (in logs, access rules and the audit)."""
MAX_COMPLETIONS = 100
_GLOB_SPECIAL = frozenset("*?[]{}\\")


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the lesson resource template, the completions and the prompt on `mcp`."""

    async def lesson(book_id: str, path: str, user_id: str | None = None) -> ResourceResult:
        read = await state.require().lessons.read(current_operation(), book_id, path, user_id)
        meta = read.info.model_dump(mode="json", exclude_none=True, exclude={"book_id", "path"})
        return ResourceResult([ResourceContent(read.text, mime_type=MARKDOWN, meta=meta)])

    mcp.resource(
        LESSON_TEMPLATE,
        name="lesson",
        title="A lesson of a book",
        description="A lesson's markdown; ?user_id= reads that user's overlay.",
        mime_type=MARKDOWN,
    )(lesson)

    def edit_lesson(book_id: str, path: str, change: str) -> str:
        """Change a lesson safely: read it, edit, write with its hash, merge on conflict."""
        return (
            f"Change the lesson {path} of the book {book_id}: {change}\n\n"
            f"1. read_content(book_id={book_id!r}, path={path!r}) gives the markdown and its file_hash.\n"
            "2. Edit that text; keep everything the change does not touch.\n"
            "3. write_content with the whole new text and expected_hash = that file_hash.\n"
            "4. On CONFLICT someone changed it meanwhile: read it again, apply the change to the "
            "new text, and write with the new file_hash. Never send a hash you have not read."
        )

    # Real classes, not the strings postponed annotations leave: FastMCP explains every argument
    # whose annotation is not `str` with a JSON schema note.
    edit_lesson.__annotations__ = get_type_hints(edit_lesson)
    mcp.prompt(edit_lesson, title="Edit a lesson safely")

    @mcp.completion
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> list[str]:
        known: dict[str, str] = dict((context.arguments if context else None) or {})
        try:
            op = Operation.begin(identify(get_context()), COMPLETE, None, None)
        except PanaversityFSError:
            return []
        with operation_scope(op):
            try:
                if argument.name == "book_id":
                    return await _book_ids(state, op, argument.value, known.get("user_id"))
                if argument.name == "path" and "book_id" in known:
                    return await _paths(state, op, known["book_id"], argument.value, known.get("user_id"))
            except PanaversityFSError:
                return []
        return []


async def _book_ids(state: ServerState, op: Operation, prefix: str, user_id: str | None) -> list[str]:
    """The caller's books starting with `prefix`."""
    caller = op.caller
    if not offered(caller, COMPLETE):
        return []
    user = user_id if user_id is not None else caller.user_id
    if caller.books is not None:
        return sorted(book for book in caller.books if book.startswith(prefix))[:MAX_COMPLETIONS]
    listed = await state.require().catalog.list_books(op, "none", None, user)
    return [book.book_id for book in listed.books if book.book_id.startswith(prefix)][:MAX_COMPLETIONS]


async def _paths(
    state: ServerState, op: Operation, book_id: str, prefix: str, user_id: str | None
) -> list[str]:
    """The lessons of `book_id` (in `user_id`'s view) whose path starts with `prefix`."""
    if any(char in _GLOB_SPECIAL for char in prefix):
        return []
    arguments: dict[str, Any] = {"book_id": book_id, "user_id": user_id}
    authorize(op.caller, COMPLETE, arguments)
    folder = prefix.rsplit("/", 1)[0] if "/" in prefix else "content"
    found = await state.require().searcher.glob(
        op, book_id, f"{folder}/**", user_id, False, None, GLOB_MAX_LIMIT
    )
    paths = [
        match.path for match in found.matches if match.path.endswith(".md") and match.path.startswith(prefix)
    ]
    return paths[:MAX_COMPLETIONS]
