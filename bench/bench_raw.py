"""The least database work a write can be: one compare-and-swap UPDATE ... RETURNING plus one
audit INSERT on plain asyncpg, the floor `bench_core` compares the server's write with."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from testkit.measure import machine_busy_seconds, summary_ms

BOOK = "bench-book"
LOAD_LESSON = "content/02-Load/01-Writers/{:02d}-writer.md"
LOAD_CLIENTS = 8
"""Connections in the throughput phase: the core benchmark's writers."""
WARMUP = 30


RAW_TXN_TABLES = """
CREATE TABLE bench_raw_journal (
    book_id text, path text, user_id text, sha256 text NOT NULL, version bigint NOT NULL,
    PRIMARY KEY (book_id, path, user_id)
);
CREATE TABLE bench_raw_audit (
    seq bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), agent_id text NOT NULL,
    book_id text NOT NULL, path text NOT NULL, new_hash text NOT NULL, version bigint NOT NULL
);
"""


RAW_TXN_UPDATE = (
    "UPDATE bench_raw_journal SET sha256 = $4, version = version + 1"
    " WHERE book_id = $1 AND path = $2 AND user_id = $3 AND sha256 = $5 RETURNING version"
)


RAW_TXN_INSERT = (
    "INSERT INTO bench_raw_audit (agent_id, book_id, path, new_hash, version) VALUES ($1, $2, $3, $4, $5)"
)


async def raw_txn(conn: asyncpg.Connection, path: str, old: str, new: str) -> None:
    """The least database work of a write: a compare-and-swap UPDATE ... RETURNING plus an audit INSERT."""
    async with conn.transaction():
        version = await conn.fetchval(RAW_TXN_UPDATE, BOOK, path, "__base__", new, old)
        assert version is not None, "compare-and-swap missed"
        await conn.execute(RAW_TXN_INSERT, "bench-agent", BOOK, path, new, version)


async def bench_raw_txn(pg_url: str, n: int, seconds: float) -> dict[str, Any]:
    """Plain asyncpg, no server: one connection's sequential transactions, then 8 connections for `seconds`."""
    conns = [await asyncpg.connect(pg_url, timeout=10) for _ in range(LOAD_CLIENTS)]
    try:
        await conns[0].execute(RAW_TXN_TABLES)
        paths = [LOAD_LESSON.format(k + 1) for k in range(LOAD_CLIENTS)]
        await conns[0].executemany(
            "INSERT INTO bench_raw_journal VALUES ($1, $2, '__base__', 'h0', 1)", [(BOOK, p) for p in paths]
        )
        hashes = ["h0"] * LOAD_CLIENTS
        counter = [0]

        async def one(k: int) -> None:
            counter[0] += 1
            new = f"h{counter[0]}"
            await raw_txn(conns[k], paths[k], hashes[k], new)
            hashes[k] = new

        async def timed(k: int) -> float:
            started = time.perf_counter()
            await one(k)
            return time.perf_counter() - started

        def totals() -> tuple[float, float, float]:
            return time.perf_counter(), time.process_time(), machine_busy_seconds()

        def accounting(before: tuple[float, float, float], calls: int) -> dict[str, float]:
            wall, client, machine = (now - then for now, then in zip(totals(), before, strict=True))
            return {
                "wall_s": round(wall, 3),
                "client_cpu_pct": round(100 * client / wall, 1),
                "client_cpu_ms_per_call": round(1000 * client / calls, 3),
                "other_processes_cpu_pct": round(100 * max(0.0, machine - client) / wall, 1),
            }

        for _ in range(WARMUP):
            await one(0)
        before = totals()
        samples = [await timed(0) for _ in range(n)]
        sequential = summary_ms(samples) | accounting(before, n)

        latencies: list[float] = []

        async def worker(k: int, deadline: float) -> None:
            while time.perf_counter() < deadline:
                latencies.append(await timed(k))

        before = totals()
        await asyncio.gather(*(worker(k, before[0] + seconds) for k in range(LOAD_CLIENTS)))
        throughput = summary_ms(latencies) | accounting(before, len(latencies))
        throughput |= {
            "connections": LOAD_CLIENTS,
            "txns": len(latencies),
            "txns_per_s": round(len(latencies) / throughput["wall_s"], 1),
        }
        return {"sequential": sequential, "throughput": throughput}
    finally:
        for conn in conns:
            await conn.close()
