"""C-5: readers racing a writer of a large file only ever see whole, committed versions."""

from __future__ import annotations

import asyncio
import hashlib

from panaversity_fs.app.resources import open_resources
from panaversity_fs.errors import Unavailable
from tests.conftest import Backends
from tests.support import BOOK, LESSON, assert_invariants, op

SIZE = 3 * 1024 * 1024
REWRITES = 12
READERS = 4


async def _race(backends: Backends, combo: str) -> None:
    settings = await backends.settings(combo, max_content_bytes=SIZE + 1)
    committed: set[str] = set()
    observed: set[str] = set()
    reads = retried = 0
    async with open_resources(settings, background=False) as resources:
        content = resources.lessons
        first = await content.write(op("write_content", "torn-read-test"), BOOK, LESSON, "0" * SIZE)
        committed.add(first.file_hash)
        current = first.file_hash
        done = asyncio.Event()

        async def reader() -> None:
            nonlocal reads, retried
            while not done.is_set():
                try:
                    got = await content.read(op("read_content", "torn-read-test"), BOOK, LESSON)
                except Unavailable:
                    retried += 1
                    continue
                reads += 1
                observed.add(got.info.file_hash)
                assert hashlib.sha256(got.text.encode()).hexdigest() == got.info.file_hash
                assert len(got.text) == SIZE

        tasks = [asyncio.create_task(reader()) for _ in range(READERS)]
        try:
            for n in range(1, REWRITES + 1):
                outcome = await content.write(
                    op("write_content", "torn-read-test"),
                    BOOK,
                    LESSON,
                    str(n % 10) * SIZE,
                    expected_hash=current,
                )
                committed.add(outcome.file_hash)
                current = outcome.file_hash
                await asyncio.sleep(0.01)
        finally:
            done.set()
            await asyncio.gather(*tasks)
        final = await content.read(op("read_content", "torn-read-test"), BOOK, LESSON)
    assert final.info.file_hash == current
    assert observed <= committed, "a read returned a version that was never committed"
    assert reads >= REWRITES, f"readers only completed {reads} reads"
    assert retried <= reads, f"{retried} retries for {reads} reads"
    await assert_invariants(settings)


async def test_no_torn_reads_on_fs(backends: Backends) -> None:
    await _race(backends, "sqlite-fs")


async def test_no_torn_reads_on_s3(backends: Backends) -> None:
    await _race(backends, "postgres-s3")
