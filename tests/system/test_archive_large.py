"""A 500-file / 200 MB book archived over HTTP by a real server process: verified, flat memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from stream_unzip import stream_unzip

from panaversity_fs.archive.builder import MANIFEST_NAME
from testkit.books import book_files, journal_view, write_files
from testkit.measure import RssSampler
from testkit.processes import ServerProcess
from tests.archive_support import ticket
from tests.conftest import Backends

MiB = 1024 * 1024
RSS_GROWTH_LIMIT = 32 * MiB


async def download_and_verify(url: str, pid: int) -> tuple[dict[str, str], int]:
    """Stream the archive, hashing each member as it arrives, while sampling the server's RSS.

    Returns the member hashes and the server's peak RSS growth over idle during the download.
    """
    hashes: dict[str, str] = {}
    with RssSampler(pid) as sampler, httpx.stream("GET", url, timeout=300) as response:
        assert response.status_code == 200
        for name, _size, chunks in stream_unzip(response.iter_bytes(1024 * 1024)):
            digest = hashlib.sha256()
            for chunk in chunks:
                digest.update(chunk)
            hashes[name.decode()] = digest.hexdigest()
    assert sampler.samples >= 1
    return hashes, sampler.growth


@pytest.mark.timeout(300)
async def test_archive_of_a_200_mb_book_is_verified_and_memory_stays_flat(
    backends: Backends, tmp_path: Path
) -> None:
    settings = await backends.settings("sqlite-fs")
    big, small = "big-book", "small-book"
    await write_files(settings, big, book_files(500, 200 * MiB, seed=1))
    await write_files(settings, small, book_files(50, 5 * MiB, seed=2))
    expected_big = await journal_view(settings, big)
    expected_small = await journal_view(settings, small)
    assert len(expected_big) == 500

    with ServerProcess(settings, tmp_path / "server.log", PANAVERSITY_LOG_LEVEL="INFO") as server:
        assert server.process is not None
        pid = server.process.pid
        growth: dict[str, int] = {}
        for book, expected in ((small, expected_small), (big, expected_big), (small, expected_small)):
            link = await ticket(server.url, book_id=book, scope="all")
            assert link["file_count"] == len(expected)
            hashes, rss_growth = await download_and_verify(link["url"], pid)
            manifest = hashes.pop(MANIFEST_NAME)
            assert manifest
            assert hashes == expected
            growth[book] = max(growth.get(book, 0), rss_growth)
        print(
            f"\nserver RSS growth over idle: 5 MB book {growth[small] / MiB:.1f} MiB, "
            f"200 MB book {growth[big] / MiB:.1f} MiB"
        )
        assert growth[big] < RSS_GROWTH_LIMIT, growth
        assert growth[small] < RSS_GROWTH_LIMIT, growth
