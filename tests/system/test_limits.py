"""S-9 rate limits, load shedding and per-call deadlines.

- Per-agent budgets for reads and writes: over budget is a typed `RATE_LIMITED` with a retry
  hint, other agents are unaffected, the budget refills, and the refusal is audited.
- Failed authentications per client address: over budget, requests get 429 with `Retry-After`
  before their token is verified; a client whose token was accepted keeps working.
- Overload: beyond the calls allowed to run and wait, calls are shed at once with a typed
  `UNAVAILABLE` (`overloaded`, `retry_after`), never left to time out; the server recovers.
- Deadlines: a read is cut off at its deadline; a mutation past it gives up before its commit
  and writes nothing; audit tools are exempt.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from panaversity_fs.app.middleware import CallPipeline, LimitCalls
from panaversity_fs.app.server import create_server
from panaversity_fs.errors import RateLimited
from panaversity_fs.limits import RateLimiter, TokenBuckets
from panaversity_fs.storage.blobs import INLINE_READ_BYTES
from testkit.processes import ServerProcess
from tests.auth_support import HS_ENV, hs_token
from tests.conftest import Backends
from tests.support import BOOK, HEADERS, INIT, LESSON, ToolFailure, audit_of, call, client, error_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_buckets_spend_the_burst_then_refill_at_the_rate() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate=1.0, capacity=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [None, None, None]
    wait = buckets.take("a")
    assert wait is not None and abs(wait - 1.0) < 1e-9
    assert buckets.take("b") is None  # buckets are per key
    clock.now += 0.5
    wait = buckets.take("a")
    assert wait is not None and abs(wait - 0.5) < 1e-9
    clock.now += 10
    assert [buckets.take("a") for _ in range(3)] == [None, None, None]  # refilled, never beyond capacity
    assert buckets.take("a") is not None


def test_rate_limiter_reports_a_retry_hint_and_zero_means_unlimited() -> None:
    limiter = RateLimiter(reads_per_minute=0, writes_per_minute=60, burst=0.05)  # 3 writes in a burst
    for _ in range(3):
        limiter.check("agent", "write")
    try:
        limiter.check("agent", "write")
    except RateLimited as error:
        assert error.to_dict()["retry_after"] == 1.0 and error.to_dict()["limit"] == "write"
    else:
        raise AssertionError("the fourth write was allowed")
    for _ in range(1000):
        limiter.check("agent", "read")


async def test_s9_an_agent_over_its_write_budget_is_rate_limited_and_audited(backends: Backends) -> None:
    settings = await backends.settings(
        "postgres-fs", rate_limit_writes_per_minute=60, rate_limit_reads_per_minute=600, rate_limit_burst=0.1
    )
    server = create_server(settings)
    # The server's own limiter, on a clock the test moves: a slow machine cannot refill a budget.
    clock = FakeClock()
    pipeline = next(m for m in server.middleware if isinstance(m, CallPipeline))
    calls = next(m for m in pipeline.stages if isinstance(m, LimitCalls))
    calls.rates = RateLimiter(
        settings.rate_limit_reads_per_minute,
        settings.rate_limit_writes_per_minute,
        settings.rate_limit_burst,
        clock=clock,
    )
    async with client(server, agent="busy-writer") as busy, client(server, agent="calm-writer") as calm:
        outcomes: list[str] = []
        for n in range(9):
            try:
                await call(
                    busy, "write_content", book_id=BOOK, path=f"content/01-a/01-b/{n:02d}-x.md", content="x"
                )
                outcomes.append("ok")
            except ToolFailure as failure:
                outcomes.append(failure.code)
                assert (failure.payload["retry_after"], failure.payload["limit"]) == (1.0, "write")
        assert outcomes == ["ok"] * 6 + ["RATE_LIMITED"] * 3  # 60/min x 0.1 min of burst
        # Another agent has its own budget; reads have theirs.
        await call(calm, "write_content", book_id=BOOK, path=LESSON, content="# calm\n")
        assert (await call(busy, "read_content", book_id=BOOK, path=LESSON))["file_hash"]
        clock.now += 0.5
        half = await error_of(
            busy, "write_content", book_id=BOOK, path="content/01-a/01-b/19-x.md", content="x"
        )
        assert (half["error"], half["retry_after"]) == ("RATE_LIMITED", 0.5)
        clock.now += 0.5  # one write's worth has refilled
        await call(busy, "write_content", book_id=BOOK, path="content/01-a/01-b/20-x.md", content="x")
        limited = await error_of(
            busy, "write_content", book_id=BOOK, path="content/01-a/01-b/21-x.md", content="x"
        )
        assert limited["error"] == "RATE_LIMITED"
        await asyncio.sleep(0.3)  # the refusals are audited in the next read batch
    refused = await audit_of(settings, limit=100, agent_id="busy-writer", status="refused")
    assert [(e["operation"], e["error_code"]) for e in refused] == [("write_content", "RATE_LIMITED")] * 5
    assert {e["path"] for e in refused} == {
        "content/01-a/01-b/06-x.md",
        "content/01-a/01-b/07-x.md",
        "content/01-a/01-b/08-x.md",
        "content/01-a/01-b/19-x.md",
        "content/01-a/01-b/21-x.md",
    }


async def test_s9_failed_authentications_are_limited_per_address_before_verification(
    backends: Backends, tmp_path: Path
) -> None:
    settings = await backends.settings("sqlite-fs")
    env = HS_ENV | {"PANAVERSITY_AUTH_FAILURES_PER_MINUTE": "60", "PANAVERSITY_RATE_LIMIT_BURST": "0.1"}
    good = {"Authorization": f"Bearer {hs_token()}"}
    bad = {"Authorization": "Bearer not.a.jwt"}
    with ServerProcess(settings, tmp_path / "server.log", **env) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.post("/mcp", json=INIT, headers=HEADERS | good)).status_code == 200
            statuses = [
                (await http.post("/mcp", json=INIT, headers=HEADERS | bad)).status_code for _ in range(9)
            ]
            assert statuses == [401] * 6 + [429] * 3
            refused = await http.post("/mcp", json=INIT, headers=HEADERS)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            # A client whose token was accepted before is not locked out by its neighbours.
            assert (await http.post("/mcp", json=INIT, headers=HEADERS | good)).status_code == 200
            assert (await http.get("/health")).status_code == 200


async def test_overload_is_shed_with_a_typed_error_and_the_server_recovers(backends: Backends) -> None:
    settings = await backends.settings(
        "postgres-fs", max_concurrent_calls=2, max_waiting_calls=0, rate_limit_reads_per_minute=0
    )
    server = create_server(settings)

    async def reader(n: int) -> str | dict[str, Any]:
        async with client(server, agent=f"reader-{n}") as c:
            try:
                await call(c, "grep_search", book_id=BOOK, pattern="x line")
                return "ok"
            except ToolFailure as failure:
                return failure.payload

    # The seeder stays connected throughout: FastMCP's in-memory transport tears the lifespan
    # down when the client that started it leaves, even while other clients are connected.
    async with client(server, agent="seeder") as seeder:
        # Enough to grep that a call holds its slot across many awaits (16 files of ~1 MB).
        for n in range(16):
            path = f"content/01-Intro/01-Basics/{n + 1:02d}-big.md"
            await call(seeder, "write_content", book_id=BOOK, path=path, content="# x line\n" * 100_000)
        results = await asyncio.gather(*(reader(n) for n in range(16)))
        shed = [r for r in results if r != "ok"]
        assert results.count("ok") >= 2 and shed, results
        for payload in shed:
            assert isinstance(payload, dict)
            assert (payload["error"], payload.get("overloaded")) == ("UNAVAILABLE", True), payload
            assert payload["retry_after"] >= 0.5
        assert (await call(seeder, "grep_search", book_id=BOOK, pattern="x"))["matches"]


async def test_a_read_is_cut_at_its_deadline_and_a_late_write_writes_nothing(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    # A deadline reaches a call only when it waits: a small lesson's read on SQLite may finish
    # without waiting once (statement and file read on the event loop), so this one is larger
    # than what is read on the loop and its read waits for an I/O thread.
    lesson = "# x\n" + "words " * (INLINE_READ_BYTES // 6 + 1)
    async with client(create_server(settings), agent="seeder") as c:
        await call(c, "write_content", book_id=BOOK, path=LESSON, content=lesson)
    hurried = settings.model_copy(update={"request_timeout": 0.0001})
    async with client(create_server(hurried), agent="hurried") as c:
        read = await error_of(c, "read_content", book_id=BOOK, path=LESSON)
        assert read["error"] == "UNAVAILABLE" and "deadline" in read["message"]
        write = await error_of(
            c, "write_content", book_id=BOOK, path="content/01-a/01-b/02-late.md", content="x"
        )
        assert write["error"] == "UNAVAILABLE" and "before its commit" in write["message"]
        verified = await call(c, "verify_audit")  # audit tools have no deadline
        assert verified["ok"] is True
    started = time.monotonic()
    async with client(create_server(settings), agent="checker") as c:
        missing = await error_of(c, "read_content", book_id=BOOK, path="content/01-a/01-b/02-late.md")
        assert missing["error"] == "NOT_FOUND"
        history = await call(c, "query_audit", agent_id="hurried", operation="write_content")
    assert [(e["status"], e["error_code"]) for e in history["entries"]] == [("error", "UNAVAILABLE")]
    assert time.monotonic() - started < 30
