"""`panaversity-fs serve --workers 2`: two processes on one port behave as one server.

Both workers answer (each log line names its process), writes through either keep the
contract and one audit chain, journal = storage afterwards, each agent is audited under the
name its client sends (workers imply stateless HTTP: no session ties a client to one process),
and SIGTERM stops both with 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
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
        # The kernel does not balance accepts on a shared socket: one worker may accept all twelve
        # connections at once. Fresh connections one at a time race both idle workers.
        for _ in range(60):
            if len(_serving_pids(log)) == 2:
                break
            async with Client(url) as probe:
                await call(probe, "list_books")
    finally:
        status = server.stop(signal.SIGTERM, timeout=60)
    assert status == 0, server.log_tail()
    assert len(_serving_pids(log)) == 2, "both workers must have served calls"
    await assert_invariants(settings)
    agents = {e["agent_id"] for e in await audit_rows(settings) if e["operation"] == "write_content"}
    assert agents == {f"worker-test-{n}" for n in range(12)}  # identity survives stateless HTTP


def _serving_pids(log: Path) -> set[int]:
    """The processes that have logged a tool call so far."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return {line["pid"] for line in lines if line.get("message") == "tool call"}
