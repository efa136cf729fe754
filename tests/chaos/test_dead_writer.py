"""A write whose server dies while its statement waits on a lock never lands afterwards.

An agent whose call lost its answer settles it by re-reading the file (specs/contract.md). That
only works if nothing of the call can still commit once its server is gone. On PostgreSQL an
update commits as one statement that is its own transaction (`db/commit_sql.py`); the database
runs a statement it received to its end even when the client is gone, so one that waits on the
file's row lock (a publish holds it while it moves bytes) would commit after the re-read.
`client_connection_check_interval` (`db/engine.py`) ends such a statement instead. The
transaction path never sends COMMIT from a dead server; here it must also stop holding locks.

PostgreSQL only: a SQLite statement runs inside the server's own process and dies with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest

from tests.cluster import Ambiguous, McpHttp, Replica
from tests.conftest import Backends
from tests.support import libpq_url, until_published

BOOK = "dead-writer-book"
LESSON = "content/01-Intro/01-Basics/01-hello.md"
ROW = "FROM file_journal WHERE book_id = $1 AND path = $2 AND user_id = '__base__'"
WAITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name = 'panaversity-fs' AND wait_event_type = 'Lock'"
)


async def _until(probe: Callable[[], Awaitable[int]], want: int, seconds: float) -> bool:
    """Poll `probe()` until it returns `want` (True) or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await probe() == want:
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.mark.parametrize("idempotent", [False, True], ids=["one-statement", "transaction"])
async def test_a_write_whose_server_dies_while_it_waits_never_lands(
    backends: Backends, tmp_path: Path, idempotent: bool
) -> None:
    settings = await backends.settings("postgres-fs")
    url = libpq_url(settings.database_url)
    replica = await asyncio.to_thread(Replica(settings, tmp_path / "replica.log").start)
    holder, watcher = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            agent = McpHttp(http, replica.url, "dead-writer-1")
            created = await agent.call("write_content", book_id=BOOK, path=LESSON, content="# One\n")
            assert created.ok, created
            old = created.data["file_hash"]
            # The create's publish runs after its answer and takes the row lock too: were it to
            # queue behind the holder, two statements would wait.
            await until_published(settings, BOOK, LESSON, seconds=30)
            await holder.execute("BEGIN")
            await holder.fetch(f"SELECT 1 {ROW} FOR UPDATE", BOOK, LESSON)
            arguments = {"book_id": BOOK, "path": LESSON, "content": "# Two\n", "expected_hash": old}
            if idempotent:
                arguments["idempotency_key"] = "dead-writer-key-1"
            update = asyncio.create_task(agent.call("write_content", **arguments))

            async def waiting() -> int:
                return int(await watcher.fetchval(WAITING))

            assert await _until(waiting, 1, 10), "the update never waited on the row lock"
            await asyncio.to_thread(replica.kill)
            with pytest.raises(Ambiguous):
                await update
            assert await _until(waiting, 0, 5), "the dead server's statement still waits on the lock"
            await holder.execute("ROLLBACK")
        await asyncio.sleep(0.2)  # time a surviving statement would need to commit
        assert await watcher.fetchval(f"SELECT sha256 {ROW}", BOOK, LESSON) == old
        landed = await watcher.fetchval(
            "SELECT count(*) FROM audit_log WHERE new_hash = $1", hashlib.sha256(b"# Two\n").hexdigest()
        )
        assert landed == 0
    finally:
        await holder.close()
        await watcher.close()
        if replica.alive:
            await asyncio.to_thread(replica.kill)
