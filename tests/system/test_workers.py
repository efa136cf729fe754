"""`panaversity-fs serve --workers 2`: two processes on one port behave as one server.

Both workers answer (each log line names its process), writes through either keep the
contract and one audit chain, journal = storage afterwards, each agent is audited under the
name its client sends (workers imply stateless HTTP: no session ties a client to one process),
SIGTERM stops both with 0, and fresh connections are spread over both workers (each listens
on its own `SO_REUSEPORT` socket).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

from fastmcp import Client
from mcp_types import Implementation

from testkit.processes import ServerProcess
from tests.auth_support import audit_rows
from tests.conftest import Backends
from tests.support import BOOK, ToolFailure, assert_invariants, call


async def test_two_workers_share_the_port_one_chain_and_stop_cleanly(
    backends: Backends, tmp_path: Path
) -> None:
    settings = await backends.settings("postgres-fs")
    log = tmp_path / "server.log"
    server = ServerProcess(settings, log, PANAVERSITY_WORKERS="2", PANAVERSITY_LOG_LEVEL="INFO")
    server.start(timeout=120)
    try:
        url = f"{server.url}/mcp"

        async def agent(n: int) -> list[str]:
            outcomes = []
            async with Client(url, client_info=Implementation(name=f"worker-test-{n}", version="1")) as c:
                path = f"content/01-Workers/01-Shared/{n:02d}-lesson.md"
                current = (await call(c, "write_content", book_id=BOOK, path=path, content="# 0\n"))[
                    "file_hash"
                ]
                for round_ in range(1, 6):
                    try:
                        current = (
                            await call(
                                c,
                                "write_content",
                                book_id=BOOK,
                                path=path,
                                content=f"# {round_}\n",
                                expected_hash=current,
                            )
                        )["file_hash"]
                        outcomes.append("ok")
                    except ToolFailure as failure:
                        outcomes.append(failure.code)
            return outcomes

        results = await asyncio.gather(*(agent(n) for n in range(12)))
        assert all(outcome == ["ok"] * 5 for outcome in results), results
        # Each worker listens on its own SO_REUSEPORT socket: the kernel spreads connections by
        # address, so twenty fresh clients (one call each) all landing on one worker would be a
        # 1-in-500,000 chance (with one shared socket, one worker used to take them all).
        # A call's log line is written after its answer: wait for the agents' 72 lines.
        before = await _calls_logged(log, 12 * 6)

        async def probe() -> None:
            async with Client(url) as client:
                await call(client, "list_books")

        await asyncio.gather(*(probe() for _ in range(20)))
        probes = await _calls_logged(log, 12 * 6 + 20) - before
        assert len(probes) == 2 and sum(probes.values()) == 20, probes
    finally:
        status = server.stop(signal.SIGTERM, timeout=60)
    assert status == 0, server.log_tail()
    assert len(_serving_pids(log)) == 2, "both workers must have served calls"
    await assert_invariants(settings)
    agents = {e["agent_id"] for e in await audit_rows(settings) if e["operation"] == "write_content"}
    assert agents == {f"worker-test-{n}" for n in range(12)}  # identity survives stateless HTTP


def _serving_pids(log: Path) -> set[int]:
    """The processes that have logged a tool call so far."""
    return set(_calls_by_pid(log))


async def _calls_logged(log: Path, total: int, timeout: float = 10.0) -> Counter[int]:
    """The calls per process once `total` have been logged; fails if that takes over `timeout` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while sum((counts := _calls_by_pid(log)).values()) < total:
        assert asyncio.get_running_loop().time() < deadline, f"{sum(counts.values())} of {total} logged"
        await asyncio.sleep(0.02)
    return counts


def _calls_by_pid(log: Path) -> Counter[int]:
    """How many tool calls each process has logged so far."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return Counter(line["pid"] for line in lines if line.get("message") == "tool call")
