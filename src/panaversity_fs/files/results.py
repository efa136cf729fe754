"""What operations on journaled files return (also the tools' structured outputs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Source = Literal["base", "overlay"]


class FileContent(BaseModel):
    """A file read: its bytes as text plus the hash of exactly those bytes."""

    book_id: str
    path: str
    content: str
    file_hash: str = Field(description="Lowercase hex sha256 of the stored bytes.")
    size: int
    last_modified: str = Field(description="ISO-8601 time of the last committed change.")
    version: int = Field(description="Number of committed changes to this file.")
    user_id: str | None = None
    source: Source = "base"


class WriteOutcome(BaseModel):
    """A committed write."""

    book_id: str
    path: str
    mode: Literal["created", "updated"]
    file_hash: str
    size: int
    version: int
    previous_hash: str | None = None
    user_id: str | None = None
    source: Source = "base"


class DeleteOutcome(BaseModel):
    """A delete; `existed` is False when there was nothing to delete (still a success)."""

    book_id: str
    path: str
    existed: bool
    previous_hash: str | None = None
    user_id: str | None = None
    source: Source = "base"
