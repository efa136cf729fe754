"""What `plan_build` and `delta_build` return (also the tools' structured outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

ChangeType = Literal["added", "modified", "deleted"]


class PlannedFile(BaseModel):
    """One file a build must add, replace or remove."""

    path: str
    current_hash: str | None = Field(description="sha256 now (None: the file was deleted).")
    target_hash: str | None = Field(description="sha256 in the target manifest (None: not there).")
    change_type: ChangeType


class BuildPlan(BaseModel):
    """The book's manifest now and the files that differ from a target manifest."""

    book_id: str
    status: Literal["unchanged", "changed"]
    manifest_hash: str = Field(
        description="sha256 of the manifest: one `{path}:{sha256}` line per shared file, sorted "
        "byte-wise by path, joined by \\n (no trailing newline). Keep it for the next build."
    )
    target_manifest_hash: str | None = None
    target_found: bool | None = Field(
        default=None, description="Whether the target manifest is known (None when no target was given)."
    )
    files: list[PlannedFile] = Field(description="This page of the plan's files, by path.")
    changed_count: int = Field(description="Files in the whole plan (every page).")
    total_files: int = Field(description="Files in the current manifest.")
    warning: str | None = Field(
        None, description="Target unknown (never stored, or pruned): do a full build."
    )
    next_cursor: str | None = Field(default=None, description="Pass back as `cursor` for the next page.")


class ChangedFile(BaseModel):
    """One journal change after `since` (a deletion has no hash)."""

    path: str
    change_type: ChangeType
    file_hash: str | None = Field(description="sha256 after the change; null for a deletion.")
    size: int
    version: int
    last_modified: str = Field(description="ISO-8601 time of the change.")
    source: Literal["base", "overlay"]
    user_id: str | None = None
    content_error: str | None = Field(
        default=None, description="Why the content asked for is missing (the file changed again)."
    )


@dataclass(frozen=True, slots=True)
class ChangesRead:
    """A page of changes and, with include_content, each live lesson's text (else None), in the
    order of `feed.changed_files`."""

    feed: ChangeFeed
    texts: list[str | None]


class ChangeFeed(BaseModel):
    """A page of the changes after `since`, oldest first."""

    book_id: str
    since: str
    user_id: str | None = None
    changed_files: list[ChangedFile]
    changed_count: int = Field(description="Changes on this page.")
    next_cursor: str | None = Field(default=None, description="Pass back as `cursor` for the next page.")
    until: str = Field(
        description="Pass as the next `since` once every page is read (changes may repeat, never miss)."
    )
