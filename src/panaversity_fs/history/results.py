"""What the history operations return (also the tools' structured outputs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from panaversity_fs.files.results import Source


class VersionInfo(BaseModel):
    """One committed version of a file."""

    version: int
    file_hash: str | None = Field(default=None, description="null: the change deleted the file.")
    size: int
    operation: str = Field(description="create, update, delete, restore, revert or import.")
    agent_id: str
    at: str
    available: bool = Field(description="false: expired, its bytes may be gone.")


class VersionList(BaseModel):
    """A page of a file's versions, newest first."""

    book_id: str
    path: str
    user_id: str | None = None
    versions: list[VersionInfo]
    next_cursor: str | None = None


class VersionRead(BaseModel):
    """What a read of one old version returned (its bytes travel apart)."""

    book_id: str
    path: str
    version: int
    file_hash: str
    size: int
    at: str
    source: Source = "base"
    user_id: str | None = None


class DiffInfo(BaseModel):
    """What a comparison compared; the unified diff travels apart, as text."""

    book_id: str
    path: str
    user_id: str | None = None
    from_version: int | None = Field(default=None, description="null: the base (against_base).")
    to_version: int | None = None
    from_hash: str | None = None
    to_hash: str | None = None
    truncated: bool = False
    identical: bool = False


RevertAction = Literal["restore", "delete", "unchanged", "conflict", "failed"]


class RevertedFile(BaseModel):
    """What a revert does (dry run) or did to one file."""

    book_id: str
    path: str
    user_id: str | None = None
    action: RevertAction
    to_version: int | None = Field(default=None, description="The version restored (null: deleted).")
    agent_hash: str | None = Field(default=None, description="The file's hash after the agent's last change.")
    current_hash: str | None = None
    reason: str | None = None


class RevertReport(BaseModel):
    """A page of a revert: each file the agent changed in the window, and what happens to it."""

    agent_id: str
    since: str
    until: str
    applied: bool
    files: list[RevertedFile]
    counts: dict[str, int]
    next_cursor: str | None = None
