"""Helpers of the archive tests and `bench.bench_archive`: an in-process HTTP server, generated
books and their writing, a server RSS sampler, ZIP parsing."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import threading
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import quote

import httpx
import psutil
import uvicorn
from fastmcp import Client
from mcp_types import Implementation
from stream_unzip import stream_unzip

from panaversity_fs.app.resources import open_resources
from panaversity_fs.app.server import create_app
from panaversity_fs.archive.builder import MANIFEST_NAME
from panaversity_fs.config import Settings
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.engine import Database
from panaversity_fs.files.mime import sniff_content_type
from panaversity_fs.files.target import Target
from tests.processes import free_port
from tests.support import call, op

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
                await resources.files.write(op(operation, WRITER), target, file.data, digest, None, kind)

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


class RssSampler:
    """Samples a process's RSS every 20 ms on a thread while the `with` block runs.

    On entry, `idle` is the largest of 10 samples taken 20 ms apart (before the work starts);
    `peak` is the largest sample seen (at least `idle`), `growth` is `peak - idle`, and
    `samples` counts the samples the thread took (at least one).
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.idle = 0
        self.peak = 0
        self.samples = 0

    def _rss(self) -> int:
        return self._process.memory_info().rss

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self._rss())
            self.samples += 1
            if self._stop.wait(self._interval):
                return

    @property
    def growth(self) -> int:
        return self.peak - self.idle

    def __enter__(self) -> Self:
        for _ in range(10):
            self.idle = max(self.idle, self._rss())
            time.sleep(self._interval)
        self.peak = self.idle
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


@asynccontextmanager
async def http_server(settings: Settings, port: int | None = None) -> AsyncIterator[str]:
    """`create_app(settings)` served by uvicorn in this process on `port` (default: a free one);
    yields its URL."""
    port = port or free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def ticket(base_url: str, agent: str = "archive-agent-1", **arguments: Any) -> dict[str, Any]:
    """Call `get_book_archive` over streamable HTTP."""
    info = Implementation(name=agent, version="1")
    async with Client(f"{base_url}/mcp", client_info=info) as c:
        return await call(c, "get_book_archive", **arguments)


async def fetch(url: str, after: str | None = None) -> httpx.Response:
    """GET an archive URL (optionally resumed `after` a path); the body is read whole."""
    if after is not None:
        url = f"{url}&after={quote(after, safe='')}"
    async with httpx.AsyncClient(timeout=120) as http:
        return await http.get(url)


def members(data: bytes) -> dict[str, bytes]:
    """Every member of a complete ZIP, checked by Python's `zipfile` (CRC included)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


def complete_members(data: bytes) -> list[tuple[str, bytes]]:
    """The members of a possibly truncated ZIP that arrived whole, in order (stream_unzip)."""
    found: list[tuple[str, bytes]] = []
    try:
        for name, _size, chunks in stream_unzip([data]):
            body = b"".join(chunks)
            found.append((name.decode(), body))
    except Exception:
        pass
    return found


def manifest_of(files: dict[str, bytes]) -> dict[str, Any]:
    """The parsed manifest member."""
    return json.loads(files[MANIFEST_NAME])
