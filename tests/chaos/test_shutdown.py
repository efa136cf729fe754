"""A stopping server ends in bounded time, even when its database stops answering.

Orchestrators (Fly.io, Kubernetes, our own replica harness) send SIGTERM and then SIGKILL after
a timeout; a server that hangs in its shutdown is killed mid-flush and looks like a crash. Here
PostgreSQL hangs (the fault proxy swallows every byte) while calls are in flight and read audit
entries are queued; SIGTERM must still end the process with status 0 within the drain of calls
in flight (`serving.DRAIN_SECONDS`) plus the bounded close (`resources.CLOSE_SECONDS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from pathlib import Path
from typing import Any

from fastmcp import Client
from mcp_types import Implementation

from panaversity_fs.app.resources import CLOSE_SECONDS
from panaversity_fs.ops.serving import DRAIN_SECONDS
from testkit.processes import ServerProcess
from tests.conftest import Backends, proxied
from tests.faultproxy import PostgresProxy
from tests.support import BOOK, LESSON, ToolFailure, call

STOP_WITHIN = DRAIN_SECONDS + CLOSE_SECONDS + 3.0
"""Seconds from SIGTERM to exit: the drain, the bounded close, and slack for a loaded machine
(under Fly's `kill_timeout` of 15 s plus that slack, and under the replica harness's 20 s)."""


async def test_sigterm_while_postgres_hangs_ends_the_process_cleanly_in_bounded_time(
    backends: Backends, pg_proxy: PostgresProxy, tmp_path: Path
) -> None:
    _, settings = await proxied(backends, pg_proxy)
    log = tmp_path / "server.log"
    server = ServerProcess(
        settings, log, PANAVERSITY_REQUEST_TIMEOUT=4, PANAVERSITY_AUDIT_READ_BATCH_INTERVAL=30
    ).start()
    try:
        agent = Implementation(name="shutdown-writer", version="1")
        async with contextlib.AsyncExitStack() as stack:
            c: Client[Any] = Client(f"{server.url}/mcp", client_info=agent, timeout=60)
            await stack.enter_async_context(c)
            await call(c, "write_content", book_id=BOOK, path=LESSON, content="# before\n")
            for _ in range(3):  # queued for the next read audit batch, 30 s away
                await call(c, "read_content", book_id=BOOK, path=LESSON)
            pg_proxy.hang()
            in_flight = [
                asyncio.ensure_future(
                    call(
                        c,
                        "write_content",
                        book_id=BOOK,
                        path=f"content/01-a/01-b/{n + 2:02d}-x.md",
                        content="x",
                    )
                )
                for n in range(3)
            ]
            await asyncio.sleep(0.5)
            started = time.monotonic()
            status = await asyncio.to_thread(server.stop, signal.SIGTERM, 60.0)
            stopped_in = time.monotonic() - started
            outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
            stack.pop_all()  # the session's server is gone: nothing to close politely
    finally:
        server.stop(signal.SIGKILL)  # no-op if it has ended
    assert status == 0, server.log_tail()
    assert stopped_in < STOP_WITHIN, f"stopped in {stopped_in:.1f} s\n{server.log_tail()}"
    # No call claimed a success it could not have had; each failed, typed or by losing the server.
    assert all(isinstance(o, BaseException) for o in outcomes), outcomes
    assert all(o.code == "UNAVAILABLE" for o in outcomes if isinstance(o, ToolFailure)), outcomes
    assert re.search(r"shutdown: appending \d+ queued read audit entries cut short", log.read_text())
    print(f"\n[shutdown under a PostgreSQL hang] stopped in {stopped_in:.1f} s")
