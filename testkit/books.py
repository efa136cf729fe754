"""Generated books: seeded markdown and image files of a given size, written through the files
engine, and the journal's view of them."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from dataclasses import dataclass

from panaversity_fs.app.resources import open_resources
from panaversity_fs.config import Settings
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import Database
from panaversity_fs.files.mime import sniff_content_type
from panaversity_fs.files.target import Target
from panaversity_fs.identity import Caller
from panaversity_fs.operation import Operation

WRITER = "archive-test-writer"

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"

WORDS = [
    "the",
    "a",
    "variable",
    "function",
    "returns",
    "list",
    "dictionary",
    "loop",
    "python",
    "value",
    "string",
    "import",
    "class",
    "object",
    "method",
    "test",
    "error",
    "lesson",
    "example",
    "code",
    "output",
    "print",
    "call",
    "argument",
    "result",
    "type",
    "tuple",
    "set",
    "iterator",
    "generator",
    "async",
    "await",
    "context",
    "manager",
    "exception",
    "raise",
    "file",
    "path",
]


def paragraphs(rng: random.Random, count: int = 3000) -> list[str]:
    """A pool of markdown blocks to draw lessons from: sentences (now and then ending a
    paragraph), a fenced code block every 9th, a section heading every 13th."""
    pool: list[str] = []
    for i in range(count):
        if i % 9 == 0:
            pool.append(f"\n\n```python\ndef f{i}(x):\n    return x * {rng.randrange(1000)}\n```\n\n")
        elif i % 13 == 0:
            pool.append(f"\n\n## Section {i}\n\n")
        else:
            sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(8, 30))).capitalize()
            pool.append(sentence + (".\n\n" if rng.random() < 0.25 else ". "))
    return pool


def markdown(rng: random.Random, size: int, pool: list[str] | None = None) -> bytes:
    """Realistic-looking markdown of `size` bytes: a title, then blocks drawn from `pool`.

    Without a `pool`, a fresh one sized for `size` is made from `rng`; pass a shared pool
    (`paragraphs`) when generating many or large lessons.
    """
    if pool is None:
        pool = paragraphs(rng, 20 + size // 100)
    text = f"# Lesson {rng.randrange(1000)}\n\n" + "".join(rng.choices(pool, k=size // 100 + 10))
    while len(text) < size:
        text += "".join(rng.choices(pool, k=100))
    return text.encode()[:size]


def png(size: int, rng: random.Random | None = None) -> bytes:
    """Incompressible bytes that sniff as image/png (from `rng` when given, else `os.urandom`)."""
    rest = max(0, size - len(PNG_HEADER))
    return PNG_HEADER + (rng.randbytes(rest) if rng is not None else os.urandom(rest))


@dataclass(frozen=True)
class BookFile:
    """One file to write: path, bytes, overlay owner."""

    path: str
    data: bytes
    user_id: str | None = None


async def journal_view(settings: Settings, book: str, user: str | None = None) -> dict[str, str]:
    """`path -> sha256` of `book` as the journal shows it to `user` (the base view by default)."""
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            rows = await journal.view(conn, book, user)
    finally:
        await db.dispose()
    return {row.path: row.sha256 or "" for row in rows}


async def write_files(settings: Settings, book: str, files: list[BookFile], parallel: int = 8) -> None:
    """Write `files` through the files engine (the write protocol, audited)."""
    async with open_resources(settings, background=False) as resources:
        gate = asyncio.Semaphore(parallel)

        async def one(file: BookFile) -> None:
            async with gate:
                if file.path.startswith("static/"):
                    target = Target.asset(book, file.path)
                    kind = sniff_content_type(file.data, file.path)
                    operation = "upload_asset"
                else:
                    target = Target.content(book, file.path, file.user_id)
                    kind, operation = None, "write_content"
                digest = hashlib.sha256(file.data).hexdigest()
                await resources.files.write(
                    Operation(Caller(WRITER), operation), target, file.data, digest, None, kind
                )

        await asyncio.gather(*(one(f) for f in files))
        await resources.trail.recorder.flush()


def book_files(files: int, total_bytes: int, seed: int) -> list[BookFile]:
    """A seeded book of `files` files, `total_bytes` in all (each 0.5-1.5x the mean):
    half markdown lessons in parts and chapters, half incompressible PNG-typed images."""
    rng = random.Random(seed)
    pool = paragraphs(rng)
    each = total_bytes // files
    made: list[BookFile] = []
    for i in range(files // 2):
        part, chapter, number = i // 100 + 1, (i // 10) % 10 + 1, i % 10 + 1
        path = f"content/{part:02d}-Part/{chapter:02d}-Chapter/{number:02d}-lesson-{i}.md"
        made.append(BookFile(path, markdown(rng, int(each * rng.uniform(0.5, 1.5)), pool)))
        made.append(
            BookFile(f"static/images/figure-{i:04d}.png", png(int(each * rng.uniform(0.5, 1.5)), rng))
        )
    return made
