"""Build tools: `plan_build` (manifest diff) and `delta_build` (changes since a time)."""

from __future__ import annotations

from typing import Annotated

from fastmcp import FastMCP
from pydantic import Field, Strict

from panaversity_fs.app.context import current_operation
from panaversity_fs.app.resources import ServerState
from panaversity_fs.builds.results import BuildPlan, ChangeFeed
from panaversity_fs.tools.hints import READ_ONLY, RECORDS

BookId = Annotated[str, Field(description="Book id, e.g. `python-book` (^[a-z0-9][a-z0-9-]{1,62}$).")]


def register(mcp: FastMCP, state: ServerState) -> None:
    """Register the build tools on `mcp`."""

    async def plan_build(
        book_id: BookId,
        target_manifest_hash: Annotated[
            str | None,
            Field(description="The `manifest_hash` of your last build (sha256, lowercase hex)."),
        ] = None,
    ) -> BuildPlan:
        """Plan an incremental build: the book's manifest hash and the files changed since yours.

        The manifest lists the book's shared (base) files, lessons, summaries and assets,
        never a user's overlay: one line `{path}:{sha256}` per file, sorted byte-wise by
        path, joined by "\\n" with no trailing newline; `manifest_hash` is the sha256 of that
        UTF-8 text (an empty book: sha256 of ""). Each call stores the manifest so that a
        later call can diff against it.

        - No `target_manifest_hash`: `status: "changed"`, every file `added`.
        - Target equals the current manifest: `status: "unchanged"`, `files: []`.
        - Target known: exactly the files `added`, `modified` or `deleted` since it, by path.
        - Target unknown (never stored, or pruned): every file `added`, `target_found: false`
          and a `warning`: do a full build.

        Fetch the changed files, then keep `manifest_hash` for the next build.
        """
        return await state.require().builds.plan(current_operation(), book_id, target_manifest_hash)

    async def delta_build(
        book_id: BookId,
        since: Annotated[
            str,
            Field(description="ISO-8601 time with a timezone, e.g. `2026-01-31T12:00:00Z`."),
        ],
        user_id: Annotated[
            str | None,
            Field(description="Also report this user's overlay changes (never another user's)."),
        ] = None,
        include_content: Annotated[
            bool, Strict(), Field(description="Include the markdown content of changed live lessons.")
        ] = False,
        cursor: Annotated[str | None, Field(description="`next_cursor` of the previous page.")] = None,
        limit: Annotated[
            int | None, Strict(), Field(description="Changes per page (default 500, at most 1000).")
        ] = None,
    ) -> ChangeFeed:
        """List the files written after `since`, deletions included, oldest first, in pages.

        Each change has `change_type` `added` (first version), `modified` or `deleted`
        (`sha256: null`), `namespace` `base` or `overlay` (a deleted overlay means the user
        sees the base file again). Follow `next_cursor` until it is null, then pass `until`
        as the next `since`: a write committing late can carry an earlier time, so `until`
        lags a little and a change may be reported twice, never missed. For an exact diff
        against your last build use `plan_build`.
        """
        return await state.require().builds.delta(
            current_operation(), book_id, since, user_id, include_content, cursor, limit
        )

    mcp.tool(
        plan_build,
        annotations=RECORDS,
    )
    mcp.tool(
        delta_build,
        annotations=READ_ONLY,
    )
