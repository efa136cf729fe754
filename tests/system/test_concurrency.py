"""C-3: concurrent writers holding the same expected_hash — exactly one wins each round.

On PostgreSQL the writers are spread over two server processes sharing the database and the
store, talking MCP over real HTTP. On SQLite they share one in-process server.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

from fastmcp import Client
from mcp_types import Implementation

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from panaversity_fs.db import audit_sql as audit_repository
from panaversity_fs.db.engine import Database
from testkit.processes import ServerProcess
from tests.conftest import Backends
from tests.support import BOOK, LESSON, ToolFailure, assert_invariants, call, client

WRITERS = 8
ROUNDS = int(os.environ.get("PFS_CAS_ROUNDS", "200"))


async def _race(clients: list[Client[Any]], rounds: int) -> tuple[str, int]:
    seeded = await call(clients[0], "write_content", book_id=BOOK, path=LESSON, content="seed")
    current = seeded["file_hash"]
    conflicts = 0
    for round_no in range(rounds):

        async def attempt(
            writer: int, c: Client[Any], expected: str = current, round_no: int = round_no
        ) -> dict[str, Any] | ToolFailure:
            try:
                return await call(
                    c,
                    "write_content",
                    book_id=BOOK,
                    path=LESSON,
                    content=f"round {round_no} writer {writer}",
                    expected_hash=expected,
                )
            except ToolFailure as failure:
                return failure

        outcomes = await asyncio.gather(*(attempt(i, c) for i, c in enumerate(clients)))
        winners = [o for o in outcomes if isinstance(o, dict)]
        losers = [o for o in outcomes if isinstance(o, ToolFailure)]
        assert len(winners) == 1, f"round {round_no}: {len(winners)} winners"
        assert all(loser.code == "CONFLICT" for loser in losers), [loser.payload for loser in losers]
        winner = winners[0]
        assert all(loser.payload["current_hash"] in (current, winner["file_hash"]) for loser in losers)
        assert (
            winner["file_hash"]
            == hashlib.sha256(
                next(f"round {round_no} writer {i}" for i, o in enumerate(outcomes) if o is winner).encode()
            ).hexdigest()
        )
        conflicts += len(losers)
        current = winner["file_hash"]
    final = await call(clients[0], "read_content", book_id=BOOK, path=LESSON)
    assert final["file_hash"] == current
    return current, conflicts


async def _assert_audit(settings: Settings, rounds: int) -> None:
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            history = await audit_repository.file_history(conn, BOOK, LESSON, "__base__", limit=100_000)
    finally:
        await db.dispose()
    writes = [e for e in history if e["operation"] == "write_content"]
    successes = [e for e in writes if e["status"] == "success"]
    assert len(successes) == rounds + 1
    assert sum(1 for e in writes if e["error_code"] == "CONFLICT") == rounds * (WRITERS - 1)
    for before, after in itertools.pairwise(successes):
        assert before["new_hash"] == after["prev_hash"]


async def test_cas_race_across_two_server_processes_on_postgres(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("postgres-fs")
    with ServerProcess(settings, tmp_path / "a.log") as a, ServerProcess(settings, tmp_path / "b.log") as b:
        clients = [
            Client(f"{(a, b)[i % 2].url}/mcp", client_info=Implementation(name=f"writer-{i}", version="1"))
            for i in range(WRITERS)
        ]
        for c in clients:
            await c.__aenter__()
        try:
            await _race(clients, ROUNDS)
        finally:
            for c in clients:
                await c.__aexit__(None, None, None)
    await _assert_audit(settings, ROUNDS)
    await assert_invariants(settings)


async def test_cas_race_in_one_process_on_sqlite(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    server = create_server(settings)
    rounds = max(ROUNDS // 4, 10)
    clients = [client(server, agent=f"writer-{i}") for i in range(WRITERS)]
    for c in clients:
        await c.__aenter__()
    try:
        await _race(clients, rounds)
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)
    await _assert_audit(settings, rounds)
    await assert_invariants(settings)
