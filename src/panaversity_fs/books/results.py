"""What the whole-book tools return (these are also the tools' structured outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from panaversity_fs.files.results import Source

BulkScope = Literal["chapter", "part", "book"]
Severity = Literal["error", "warning"]


class PageFile(BaseModel):
    """One file of a page (its text travels apart, in the same order)."""

    path: str
    file_hash: str
    size: int
    version: int
    last_modified: str
    source: Source = "base"


class BulkPage(BaseModel):
    """One page of a chapter, part or book, in byte-wise path order."""

    book_id: str
    scope: BulkScope
    path: str = Field(description="The folder read (`content` for the whole book).")
    user_id: str | None = None
    files: list[PageFile]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last.")


@dataclass(frozen=True, slots=True)
class PageRead:
    """A page and the texts of its files, in the order of `page.files`."""

    page: BulkPage
    texts: list[str]


class GlobMatch(BaseModel):
    """A file whose path matches a glob pattern."""

    book_id: str
    path: str
    file_hash: str
    size: int
    source: Source = "base"


class GlobResult(BaseModel):
    """Glob matches in (book, path) order."""

    matches: list[GlobMatch]
    next_cursor: str | None = None


class GrepFile(BaseModel):
    """A file with matching lines (their text travels apart, in the same order)."""

    book_id: str
    path: str
    file_hash: str
    source: Source = "base"
    lines: list[int] = Field(description="1-based numbers of the matching lines.")


class GrepResult(BaseModel):
    """Matching lines by file, in (book, path, line) order."""

    files: list[GrepFile]
    matches: int = Field(description="Matching lines on this page.")
    files_searched: int
    next_cursor: str | None = None
    reason: Literal["max_results", "time_budget"] | None = Field(
        None, description="Why the page ended early."
    )


@dataclass(frozen=True, slots=True)
class GrepFound:
    """A grep page and the text of each matching line, by file, in the order of `result.files`."""

    result: GrepResult
    texts: list[list[str]]


class Lesson(BaseModel):
    """A lesson of the structure tree."""

    path: str
    name: str = Field(description="The lesson's file name without `.md`.")
    has_summary: bool


class Chapter(BaseModel):
    """A chapter folder and its lessons."""

    id: str
    lessons: list[Lesson]


class Part(BaseModel):
    """A part folder and its chapters."""

    id: str
    chapters: list[Chapter]


class ContentTree(BaseModel):
    """The part / chapter / lesson tree of a book's base content."""

    parts: list[Part]


class BookInfo(BaseModel):
    """A book with at least one live file."""

    book_id: str
    files: int = Field(description="Live base files (content and assets).")
    content_files: int
    asset_files: int
    bytes: int = Field(description="Total size of the live base files.")
    overlay_files: int = Field(description="Live files of the caller's overlay (`user_id`); 0 without one.")
    last_modified: str = Field(
        description="ISO-8601 time of the last committed change to the base or the caller's overlay."
    )
    content: ContentTree | None = None
    assets: dict[str, list[str]] | None = Field(
        None, description="Asset paths by type folder (`images`, `slides`, ...)."
    )


class BookList(BaseModel):
    """Every book (or one), with the structure when asked."""

    books: list[BookInfo]
    include_structure: Literal["none", "content", "assets", "all"]


class Issue(BaseModel):
    """One schema violation found by `validate_book`."""

    path: str = Field(
        description="Book path, `users/{user}/...` for overlays, or the storage key's book part."
    )
    severity: Severity
    rule: str
    message: str
    suggestion: str | None = None


class ValidationSummary(BaseModel):
    """Counts of what `validate_book` looked at and found."""

    files: int = Field(description="Distinct journal rows and storage objects examined.")
    content_files: int
    asset_files: int
    overlay_files: int
    stray_objects: int
    errors: int
    warnings: int


class ValidationReport(BaseModel):
    """The result of `validate_book`."""

    book_id: str
    valid: bool
    strict: bool
    summary: ValidationSummary
    issues: list[Issue]
    truncated: bool = Field(description="True when more issues exist than are listed.")
