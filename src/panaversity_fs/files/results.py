"""What operations on journaled files return (also the tools' structured outputs).

A read's text travels apart from what describes it: the tools send the markdown as it is in a
text block, and the description (`FileInfo`) as the structured result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

Source = Literal["base", "overlay"]


class FileInfo(BaseModel):
    """What a read returned: the file's address, the sha256 of exactly its bytes, and its version."""

    book_id: str
    path: str
    file_hash: str = Field(
        description="sha256 of the exact bytes; pass it as expected_hash to change the file."
    )
    size: int
    version: int = Field(description="Committed changes so far (a delete counts too).")
    last_modified: str
    source: Source = "base"
    user_id: str | None = None
    base_hash: str | None = Field(default=None, description="Overlay reads: the base's current hash.")
    base_changed: bool | None = Field(
        None, description="Overlay reads: the base changed since the overlay was written."
    )


@dataclass(frozen=True, slots=True)
class FileRead:
    """A read file: its description and its text."""

    info: FileInfo
    text: str


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
