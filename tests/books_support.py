"""Helpers for the whole-book tool tests: building books and paging through results."""

from __future__ import annotations

import hashlib
from typing import Any

from fastmcp import Client

from tests.support import all_pages, call


def sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def lesson(part: int, chapter: int, number: int, suffix: str = "") -> str:
    return (
        f"content/{part:02d}-Part{part}/{chapter:02d}-Chapter{chapter}/{number:02d}-lesson{number}{suffix}.md"
    )


async def write_all(
    c: Client[Any], book: str, files: dict[str, str], user_id: str | None = None
) -> dict[str, str]:
    """Create every file (base, or `user_id`'s overlay); return path -> hash."""
    hashes: dict[str, str] = {}
    for path, text in files.items():
        extra = {"user_id": user_id} if user_id else {}
        written = await call(c, "write_content", book_id=book, path=path, content=text, **extra)
        hashes[path] = written["file_hash"]
    return hashes


async def read_all_pages(c: Client[Any], **arguments: Any) -> tuple[list[dict[str, Any]], int]:
    """Follow `read_content` cursors to the end; return every file and the number of pages."""
    pages = await all_pages(c, "read_content", **arguments)
    return [file for page in pages for file in page["files"]], len(pages)
