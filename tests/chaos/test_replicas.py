"""specs/contract.md across replicas: several `panaversity-fs serve` processes sharing one database
and one store, agents spread over them (tests/cluster.py draws the topology).

postgres-s3: 3 replicas on a fresh PostgreSQL database and moto's S3 server in its own process.
sqlite-fs: the same checks through 1 replica (SQLite is one process's database).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from fastmcp import Client
from mcp_types import Implementation

from panaversity_fs.archive.builder import MANIFEST_NAME
from panaversity_fs.config import Settings
from tests.archive_support import manifest_of, members
from tests.asset_support import history
from tests.cluster import MotoProcess, Replicas
from tests.conftest import PG_URL, Backends, backend_unavailable
from tests.support import ToolFailure, call

ROUNDS = int(os.environ.get("PFS_REPLICA_ROUNDS", "25"))
WRITERS = 8
LESSON = "content/01-Intro/01-Basics/01-hello.md"
OTHER = "content/01-Intro/01-Basics/02-names.md"
UNLIMITED = {"PANAVERSITY_RATE_LIMIT_WRITES_PER_MINUTE": 0, "PANAVERSITY_RATE_LIMIT_READS_PER_MINUTE": 0}


@dataclass
class Cluster:
    """The replicas under test and the settings they share."""

    combo: str
    replicas: Replicas
    settings: Settings

    @property
    def urls(self) -> list[str]:
        return self.replicas.urls

    def url(self, index: int) -> str:
        """Replica `index` modulo the replica count (A, B, C collapse onto one with one replica)."""
        return self.urls[index % len(self.urls)]


@pytest.fixture(
    scope="module", params=[("postgres-s3", 3), ("sqlite-fs", 1)], ids=["postgres-s3", "sqlite-fs"]
)
async def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
    pg_template: str | None,
) -> AsyncIterator[Cluster]:
    combo, count = request.param
    tmp = tmp_path_factory.mktemp(f"replicas-{combo}")
    moto: MotoProcess | None = None
    if combo == "postgres-s3":
        if pg_template is None:
            backend_unavailable("PostgreSQL", PG_URL)
        moto = await asyncio.to_thread(MotoProcess(tmp / "moto.log").start)
    endpoint = moto.endpoint if moto is not None else ""
    backends = Backends(tmp, sqlite_template, pg_template, lambda: endpoint)
    try:
        settings = await backends.settings(combo)
        replicas = Replicas(settings, count, tmp, **UNLIMITED)
        await asyncio.to_thread(replicas.start)
        try:
            yield Cluster(combo, replicas, settings)
        finally:
            statuses = await asyncio.to_thread(replicas.stop)
            assert all(status == 0 for status in statuses), statuses
    finally:
        await backends.close()
        if moto is not None:
            moto.stop()


@asynccontextmanager
async def agents(cluster: Cluster, names: list[str], first: int = 0) -> AsyncIterator[list[Client[Any]]]:
    """One MCP client per name, spread round-robin over the replicas starting at `first`."""
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                Client(f"{cluster.url(first + i)}/mcp", client_info=Implementation(name=name, version="1"))
            )
            for i, name in enumerate(names)
        ]
        yield clients


def assert_one_chain(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The successful mutations of one file link up and never share a parent; returns them."""
    successes = [
        e
        for e in entries
        if e["status"] == "success" and e["operation"] in ("write_content", "delete_content")
    ]
    for before, after in itertools.pairwise(successes):
        assert before["new_hash"] == after["prev_hash"], (before["seq"], after["seq"])
    parents = [e["prev_hash"] for e in successes if e["prev_hash"] is not None]
    assert len(parents) == len(set(parents)), "two successful writes share a prev_hash (lost update)"
    return successes


async def test_no_lost_update_across_replicas(cluster: Cluster) -> None:
    book = "replica-cas"
    async with agents(cluster, [f"cas-writer-{i}" for i in range(WRITERS)]) as clients:
        seeded = await call(clients[0], "write_content", book_id=book, path=LESSON, content="seed")
        current = seeded["file_hash"]
        for round_no in range(ROUNDS):

            async def attempt(i: int, c: Client[Any], expected: str = current, r: int = round_no) -> Any:
                text = f"round {r} writer {i}"
                try:
                    return await call(
                        c, "write_content", book_id=book, path=LESSON, content=text, expected_hash=expected
                    )
                except ToolFailure as failure:
                    return failure

            outcomes = await asyncio.gather(*(attempt(i, c) for i, c in enumerate(clients)))
            winners = [o for o in outcomes if isinstance(o, dict)]
            losers = [o for o in outcomes if isinstance(o, ToolFailure)]
            assert len(winners) == 1, f"round {round_no}: {len(winners)} winners"
            assert [loser.code for loser in losers] == ["CONFLICT"] * (WRITERS - 1)
            winner = winners[0]
            assert all(loser.payload["current_hash"] in (current, winner["file_hash"]) for loser in losers)
            current = winner["file_hash"]
        for c in clients[: len(cluster.urls)]:  # one client on each replica
            assert (await call(c, "read_content", book_id=book, path=LESSON))["file_hash"] == current
    entries = await history(cluster.settings, book, LESSON, limit=100_000)
    successes = assert_one_chain(entries)
    assert len(successes) == ROUNDS + 1
    assert sum(1 for e in entries if e["error_code"] == "CONFLICT") == ROUNDS * (WRITERS - 1)
    assert successes[-1]["new_hash"] == current


async def test_one_audit_chain_across_replicas(cluster: Cluster) -> None:
    book = "replica-chain"
    files = [f"content/0{p}-Part/01-Chapter/0{n}-lesson.md" for p in (1, 2) for n in (1, 2)]
    acked: dict[str, list[tuple[str | None, str]]] = {path: [] for path in files}

    async def agent(c: Client[Any], index: int) -> None:
        rng = random.Random(index)
        for step in range(12):
            path = rng.choice(files)
            while True:  # read, modify, write; a lost race re-reads
                try:
                    current: str | None = (await call(c, "read_content", book_id=book, path=path))[
                        "file_hash"
                    ]
                except ToolFailure as failure:
                    assert failure.code == "NOT_FOUND"
                    current = None
                arguments: dict[str, Any] = {"book_id": book, "path": path, "content": f"{index}:{step}\n"}
                if current is not None:
                    arguments["expected_hash"] = current
                try:
                    written = await call(c, "write_content", **arguments)
                except ToolFailure as failure:
                    assert failure.code in ("CONFLICT", "HASH_REQUIRED"), failure.payload
                    continue
                acked[path].append((written["previous_hash"], written["file_hash"]))
                break

    async with agents(cluster, [f"chain-agent-{i}" for i in range(6)]) as clients:
        await asyncio.gather(*(agent(c, i) for i, c in enumerate(clients)))
    verified = await asyncio.to_thread(cluster.replicas.cli, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for path in files:
        successes = assert_one_chain(await history(cluster.settings, book, path, limit=100_000))
        # The chain fixes the order; acknowledgements may arrive out of it (a write's answer can
        # reach its agent after a later write that read its hash), so compare them as sets.
        chain = {(e["prev_hash"], e["new_hash"]) for e in successes}
        assert len(successes) == len(acked[path]) and chain == set(acked[path]), path
        assert {e["agent_id"] for e in successes} <= {f"chain-agent-{i}" for i in range(6)}


async def test_overlay_isolation_across_replicas(cluster: Cluster) -> None:
    book = "replica-overlay"
    secret = "alice-only-7f3a"
    async with (
        agents(cluster, ["overlay-writer"] * 3) as writers,  # on A, B, C
        agents(cluster, ["overlay-reader"] * 3) as readers,
    ):
        a, b, c = writers
        base = await call(c, "write_content", book_id=book, path=LESSON, content="# Base\n\nshared text\n")
        mine = await call(
            a,
            "write_content",
            book_id=book,
            path=LESSON,
            content=f"# Alice\n\n{secret} in her copy\n",
            user_id="alice",
            expected_hash=base["file_hash"],
        )
        only = await call(
            a, "write_content", book_id=book, path=OTHER, content=f"{secret}\n", user_id="alice"
        )
        assert mine["source"] == only["source"] == "overlay"

        async def views(base_hash: str, alice_hash: str | None) -> None:
            for reader in readers:
                alice = await call(reader, "read_content", book_id=book, path=LESSON, user_id="alice")
                assert (alice["file_hash"], alice["source"]) == (
                    (alice_hash, "overlay") if alice_hash else (base_hash, "base")
                )
                for user in ("bob", None):
                    seen = await call(reader, "read_content", book_id=book, path=LESSON, user_id=user)
                    assert (seen["file_hash"], seen["source"]) == (base_hash, "base")
                    glob = await call(reader, "glob_search", book_id=book, pattern="content/**", user_id=user)
                    assert [(m["path"], m["file_hash"]) for m in glob["matches"]] == [(LESSON, base_hash)]
                    grep = await call(reader, "grep_search", book_id=book, pattern=secret, user_id=user)
                    assert grep["hits"] == []
                    with pytest.raises(ToolFailure) as missing:
                        await call(reader, "read_content", book_id=book, path=OTHER, user_id=user)
                    assert missing.value.code == "NOT_FOUND"
                glob = await call(reader, "glob_search", book_id=book, pattern="content/**", user_id="alice")
                expected = {LESSON: alice_hash or base_hash, OTHER: only["file_hash"]}
                assert {m["path"]: m["file_hash"] for m in glob["matches"]} == expected
                grep = await call(reader, "grep_search", book_id=book, pattern=secret, user_id="alice")
                assert {m["path"] for m in grep["hits"]} == ({LESSON, OTHER} if alice_hash else {OTHER})

        await views(base["file_hash"], mine["file_hash"])
        changed = await call(
            b,
            "write_content",
            book_id=book,
            path=LESSON,
            content="# Base v2\n",
            expected_hash=base["file_hash"],
        )
        await views(changed["file_hash"], mine["file_hash"])  # a base update never touches overlays
        gone = await call(b, "delete_content", book_id=book, path=LESSON, user_id="alice")
        assert gone["existed"] is True
        await views(changed["file_hash"], None)  # the deleted overlay falls back to base


async def test_archive_url_signed_by_one_replica_downloads_from_another(cluster: Cluster) -> None:
    book = "replica-archive"
    texts = {LESSON: "# One\n\nfirst lesson\n", OTHER: "# Two\n\n" + "words " * 20_000}
    async with agents(cluster, ["archive-agent"]) as (a,):
        for path, text in texts.items():
            await call(a, "write_content", book_id=book, path=path, content=text)
        ticket = await call(a, "get_book_archive", book_id=book)
    issued = urlsplit(ticket["url"])
    assert issued.netloc == urlsplit(cluster.url(0)).netloc
    async with httpx.AsyncClient(timeout=60) as http:
        for other in cluster.urls[1:] or cluster.urls:
            moved = urlunsplit(issued._replace(netloc=urlsplit(other).netloc))
            response = await http.get(moved)
            assert response.status_code == 200, response.text
            got = members(response.content)
            assert {name: got[name].decode() for name in got if name != MANIFEST_NAME} == texts
            assert manifest_of(got)["complete"] is True
            forged = moved[:-3] + ("AAA" if not moved.endswith("AAA") else "BBB")
            assert (await http.get(forged)).status_code == 403


async def test_read_your_writes_across_replicas(cluster: Cluster) -> None:
    book = "replica-ryw"
    count = len(cluster.urls)

    async def agent(index: int) -> None:
        path = f"content/01-Part/01-Chapter/{index + 1:02d}-lesson.md"
        name = f"ryw-agent-{index}"
        async with agents(cluster, [name] * count, first=index) as sessions:
            current: str | None = None
            for step in range(15):
                writer = sessions[step % count]
                arguments: dict[str, Any] = {
                    "book_id": book,
                    "path": path,
                    "content": f"{index} step {step}\n",
                }
                if current is not None:
                    arguments["expected_hash"] = current
                current = (await call(writer, "write_content", **arguments))["file_hash"]
                reader = sessions[(step + 1) % count]  # another replica, right after the ack
                seen = await call(reader, "read_content", book_id=book, path=path)
                assert seen["file_hash"] == current
                assert hashlib.sha256(seen["content"].encode()).hexdigest() == current

    await asyncio.gather(*(agent(i) for i in range(4)))
