"""T-5, T-6: faults on the wire between a real server process and PostgreSQL or S3.

The proxies of `tests.faultproxy` sit between a server subprocess and the machine's PostgreSQL,
or the moto S3 server. Four writers each own a file and chain `expected_hash`, so every answer
can be checked against what must be true:

- a failed call is a typed UNAVAILABLE (never INTERNAL, never a traceback), answered within the
  call's deadline;
- "nothing was changed" is true: the writer's next write with the same expected hash never
  meets CONFLICT; an answer with `outcome_unknown` is settled by re-reading;
- the journal version, the audit successes and the writers' tallies agree exactly (a commit
  whose outcome was unknown is never applied twice), no audit entry is written twice;
- once the fault ends the next calls succeed within seconds;
- afterwards `recover`, `fsck` and `audit verify` exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from mcp_types import Implementation
from sqlalchemy import func, select

from panaversity_fs.config import Settings
from panaversity_fs.db import audit_sql as audit_repository
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import audit_log, file_journal
from panaversity_fs.storage.blobs import STAGING_PREFIX
from testkit.processes import ServerProcess, run_cli, settings_env
from tests.books_support import sha
from tests.conftest import Backends, proxied
from tests.faultproxy import FaultRule, PostgresProxy, S3Proxy
from tests.support import ToolFailure, call, until_published

BOOK = "wire-book"
WRITERS = 4
DEADLINE = 4.0
"""`request_timeout` of the servers under fault."""
SLACK = 1.5
"""Allowed beyond the deadline: HTTP, the MCP client, a loaded two-core machine."""
RECOVERY = 5.0
"""Seconds after the fault ends by which every writer's next write must have succeeded."""
MAX_ATTEMPTS = int(Settings.model_fields["storage_retries"].default) + 1
"""Requests one storage call may make: the first and its bounded retries."""

FAST_FAILING = {
    "PANAVERSITY_REQUEST_TIMEOUT": DEADLINE,
    "PANAVERSITY_DATABASE_STATEMENT_TIMEOUT": 0.5,
    "DATABASE_POOL_TIMEOUT": 1.0,
    "PANAVERSITY_DATABASE_CONNECT_TIMEOUT": 1.0,
    "PANAVERSITY_RATE_LIMIT_READS_PER_MINUTE": 0,
    "PANAVERSITY_RATE_LIMIT_WRITES_PER_MINUTE": 0,
}


def lesson(writer: int) -> str:
    return f"content/01-Wire/01-Faults/{writer + 1:02d}-writer.md"


@dataclass
class Answer:
    """One tool call, timed."""

    tool: str
    started: float
    seconds: float
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def code(self) -> str | None:
        return None if self.error is None else str(self.error["error"])


async def timed(c: Client[Any], tool: str, **arguments: Any) -> Answer:
    started = time.monotonic()
    try:
        result = await call(c, tool, **arguments)
    except ToolFailure as failure:
        return Answer(tool, started, time.monotonic() - started, error=failure.payload)
    return Answer(tool, started, time.monotonic() - started, result=result)


@dataclass
class Writer:
    """Writes its own file, chaining `expected_hash`, and knows what the file must hold."""

    index: int
    client: Client[Any]
    expected: str = ""
    applied: int = 0
    """Writes known to have been applied (the seed included)."""
    unsettled: str | None = None
    """Hash of a write answered with `outcome_unknown`, until a re-read settles it."""
    answers: list[Answer] = field(default_factory=list[Answer])
    writes: int = 0

    @property
    def path(self) -> str:
        return lesson(self.index)

    async def seed(self) -> None:
        answer = await timed(self.client, "write_content", book_id=BOOK, path=self.path, content="seed")
        assert answer.result is not None, answer
        self.expected, self.applied = answer.result["file_hash"], 1

    async def write(self) -> Answer:
        """Write once (settling an unknown outcome first); return the answer."""
        if self.unsettled is not None:
            settled = await self.settle()
            if settled.error is not None:
                return settled
        self.writes += 1
        content = f"writer {self.index} write {self.writes}"
        answer = await timed(
            self.client,
            "write_content",
            book_id=BOOK,
            path=self.path,
            content=content,
            expected_hash=self.expected,
        )
        self.answers.append(answer)
        if answer.result is not None:
            assert answer.result["file_hash"] == sha(content)
            assert answer.result["previous_hash"] == self.expected
            self.expected = answer.result["file_hash"]
            self.applied += 1
        elif answer.error is not None and answer.error.get("outcome_unknown"):
            self.unsettled = sha(content)
        return answer

    async def settle(self) -> Answer:
        """Re-read the file to learn whether the write of unknown outcome was applied."""
        answer = await timed(self.client, "read_content", book_id=BOOK, path=self.path)
        self.answers.append(answer)
        if answer.result is not None:
            found = answer.result["file_hash"]
            assert sha(answer.result["content"]) == found, answer
            assert found in (self.expected, self.unsettled), (found, self.expected, self.unsettled)
            if found == self.unsettled:
                self.expected = found
                self.applied += 1
            self.unsettled = None
        return answer

    async def until_success(self, limit: float) -> float:
        """Write until a write succeeds; return the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if (await self.write()).result is not None:
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise AssertionError(f"writer {self.index}: no write succeeded in {limit} s: {self.answers[-3:]}")


@contextlib.asynccontextmanager
async def writers(url: str, count: int = WRITERS) -> AsyncIterator[list[Writer]]:
    """`count` writers, each with its own MCP session on the server at `url`, seeded."""
    async with contextlib.AsyncExitStack() as stack:
        team: list[Writer] = []
        for index in range(count):
            client: Client[Any] = Client(
                f"{url}/mcp", client_info=Implementation(name=f"wire-writer-{index}", version="1"), timeout=60
            )
            team.append(Writer(index, await stack.enter_async_context(client)))
        for writer in team:
            await writer.seed()
        yield team


@contextlib.asynccontextmanager
async def writing(team: list[Writer]) -> AsyncIterator[None]:
    """Every writer writes in a loop (and one also reads every file) until the block ends."""
    stop = asyncio.Event()

    async def loop(writer: Writer) -> None:
        while not stop.is_set():
            await writer.write()
            await asyncio.sleep(0.02)

    async def read_all(reader: Writer) -> None:
        while not stop.is_set():
            for other in team:
                answer = await timed(reader.client, "read_content", book_id=BOOK, path=other.path)
                reader.answers.append(answer)
                if answer.result is not None:
                    assert sha(answer.result["content"]) == answer.result["file_hash"], answer
            await asyncio.sleep(0.05)

    load = asyncio.gather(*(loop(w) for w in team), read_all(team[0]))
    try:
        yield
    except BaseException:
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await load
        raise
    stop.set()
    await load


async def settle_all(team: list[Writer]) -> None:
    """Re-read until every unknown outcome is known (the fault is over)."""
    for writer in team:
        for _ in range(20):
            if writer.unsettled is None:
                break
            await writer.settle()
            await asyncio.sleep(0.2)
        assert writer.unsettled is None, writer.answers[-3:]


def assert_typed_and_timely(team: list[Writer], deadline: float = DEADLINE) -> Counter[str]:
    """Every answer is a success or UNAVAILABLE, in time; return the count of each outcome."""
    outcomes: Counter[str] = Counter()
    for answer in itertools.chain.from_iterable(w.answers for w in team):
        outcomes[answer.code or "ok"] += 1
        if answer.error is not None and answer.error.get("outcome_unknown"):
            outcomes["outcome_unknown"] += 1
        assert answer.code in (None, "UNAVAILABLE"), answer
        assert answer.seconds <= deadline + SLACK, answer
        if answer.error is not None:
            assert set(answer.error) <= {"error", "message", "retry_after", "outcome_unknown"}, answer
            assert "Traceback" not in answer.error["message"], answer
    return outcomes


async def assert_tallies(settings: Settings, team: list[Writer]) -> None:
    """Journal, audit log and writers agree: each applied write counted exactly once."""
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            duplicated = (
                await conn.execute(
                    select(audit_log.c.request_id, audit_log.c.operation, func.count())
                    .where(audit_log.c.request_id.is_not(None))
                    .group_by(audit_log.c.request_id, audit_log.c.operation)
                    .having(func.count() > 1)
                )
            ).all()
            for writer in team:
                row = (
                    await conn.execute(
                        select(file_journal.c.version, file_journal.c.sha256).where(
                            file_journal.c.book_id == BOOK, file_journal.c.path == writer.path
                        )
                    )
                ).one()
                history = await audit_repository.file_history(conn, BOOK, writer.path, "__base__", 100_000)
                successes = [
                    e for e in history if e["operation"] == "write_content" and e["status"] == "success"
                ]
                assert (row.version, row.sha256) == (writer.applied, writer.expected), writer.index
                assert len(successes) == writer.applied, writer.index
                for before, after in itertools.pairwise(successes):
                    assert before["new_hash"] == after["prev_hash"]
    finally:
        await db.dispose()
    assert not duplicated, f"audit entries written twice: {duplicated}"


def assert_consistent_afterwards(settings: Settings, repair: bool = False) -> None:
    """`recover` (and `fsck --repair`), then `fsck` and `audit verify`, all exit 0."""
    env = settings_env(settings)
    recovered = run_cli(env, "recover", "--grace", "0")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    if repair:
        repaired = run_cli(env, "fsck", "--repair", "--grace", "0")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    checked = run_cli(env, "fsck")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    verified = run_cli(env, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


async def recovery_seconds(team: list[Writer]) -> float:
    """Seconds until every writer has written successfully again (run when the fault ends)."""
    waits = await asyncio.gather(*(w.until_success(RECOVERY * 3) for w in team))
    return max(waits)


def report(name: str, **measured: object) -> None:
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in measured.items()))


# -- T-5: PostgreSQL ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_pg_latency_makes_calls_slower_but_they_succeed(
    backends: Backends, pg_proxy: PostgresProxy, tmp_path: Path
) -> None:
    direct, settings = await proxied(backends, pg_proxy)
    with ServerProcess(settings, tmp_path / "server.log", PANAVERSITY_REQUEST_TIMEOUT=30) as server:
        async with writers(server.url) as team:
            for writer in team:
                await writer.write()
            fast = statistics.median(a.seconds for w in team for a in w.answers)
            trips = pg_proxy.stats.round_trips
            await team[0].write()
            trips = pg_proxy.stats.round_trips - trips
            pg_proxy.latency(50, 200)
            await asyncio.gather(*(w.write() for w in team))
            slow = [w.answers[-1].seconds for w in team]
            pg_proxy.pass_through()
    outcomes = assert_typed_and_timely(team, deadline=30)
    report(
        "latency",
        median_s=round(fast, 3),
        median_with_latency_s=round(statistics.median(slow), 3),
        round_trips_per_write=trips,
    )
    assert outcomes == {"ok": 2 * WRITERS + 1}, outcomes
    assert statistics.median(slow) > fast + 0.1
    await assert_tallies(direct, team)
    assert_consistent_afterwards(direct)


async def reset_chaos(proxy: PostgresProxy, seconds: float, rng: random.Random) -> None:
    """Reset every connection, or each one after a random number of bytes, on and off."""
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        if rng.random() < 0.4:
            proxy.reset()
            await asyncio.sleep(rng.uniform(0.05, 0.3))
        else:
            proxy.reset_after(40, 4000)
            await asyncio.sleep(rng.uniform(0.3, 1.0))
        proxy.pass_through()
        await asyncio.sleep(rng.uniform(0.1, 0.4))


@pytest.mark.slow
async def test_pg_resets_fail_calls_typed_and_in_time_and_the_pool_recovers(
    backends: Backends, pg_proxy: PostgresProxy, tmp_path: Path
) -> None:
    direct, settings = await proxied(backends, pg_proxy)
    with ServerProcess(settings, tmp_path / "server.log", **FAST_FAILING) as server:
        async with writers(server.url) as team:
            async with writing(team):
                await reset_chaos(pg_proxy, 6.0, random.Random(11))
                pg_proxy.pass_through()
            recovered = await recovery_seconds(team)
            await settle_all(team)
    outcomes = assert_typed_and_timely(team)
    report("resets", outcomes=dict(outcomes), resets=pg_proxy.stats.resets, recovery_s=round(recovered, 2))
    assert outcomes["UNAVAILABLE"] > 0 and pg_proxy.stats.resets > 10
    assert recovered <= RECOVERY
    await assert_tallies(direct, team)
    assert_consistent_afterwards(direct)


@pytest.mark.slow
async def test_pg_hang_fails_calls_within_their_deadline_and_the_pool_recovers(
    backends: Backends, pg_proxy: PostgresProxy, tmp_path: Path
) -> None:
    direct, settings = await proxied(backends, pg_proxy)
    with ServerProcess(settings, tmp_path / "server.log", **FAST_FAILING) as server:
        async with writers(server.url) as team:
            async with writing(team):
                await asyncio.sleep(0.5)
                pg_proxy.hang()
                hung = time.monotonic()
                await asyncio.sleep(DEADLINE + 2)
                pg_proxy.pass_through()
                released = time.monotonic()
            recovered = await recovery_seconds(team)
            await settle_all(team)
    outcomes = assert_typed_and_timely(team)
    during = [a for w in team for a in w.answers if hung < a.started and a.started + a.seconds < released]
    failed = [a.seconds for w in team for a in w.answers if a.error is not None]
    report(
        "hang",
        outcomes=dict(outcomes),
        calls_during=len(during),
        fastest_failure_s=round(min(failed, default=0), 2),
        slowest_failure_s=round(max(failed, default=0), 2),
        recovery_s=round(recovered, 2),
    )
    assert len(during) >= WRITERS and all(a.code == "UNAVAILABLE" for a in during), during
    assert recovered <= RECOVERY
    await assert_tallies(direct, team)
    assert_consistent_afterwards(direct)


async def journal_hash(settings: Settings, path: str) -> str | None:
    """The file's hash in the journal, read directly (not through the proxy)."""
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            return (
                await conn.execute(
                    select(file_journal.c.sha256).where(
                        file_journal.c.book_id == BOOK, file_journal.c.path == path
                    )
                )
            ).scalar_one()
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    ("cuts", "deliver", "delay"),
    [
        pytest.param(1, True, 0.0, id="commit-lands"),
        pytest.param(1, False, 0.0, id="commit-lost"),
        pytest.param(1000, True, 0.0, id="every-commit-cut"),
        # The COMMIT is still in flight when the server settles the outcome: the backend is
        # terminated (a write transaction: txid_status says in progress; an update's one
        # statement: its backend still waits for the Sync that commits it), and the write
        # either landed or never will.
        pytest.param(1, True, 1.5, id="commit-lands-late"),
    ],
)
async def test_pg_unknown_commit_outcome_is_resolved_and_never_applied_twice(
    backends: Backends,
    pg_proxy: PostgresProxy,
    tmp_path: Path,
    cuts: int,
    deliver: bool,
    delay: float,
) -> None:
    """COMMIT is sent and the connection cut before its answer (or instead of sending it). On
    PostgreSQL the update is one statement that commits at its `Sync`: that is what is cut.

    `every-commit-cut` also cuts the COMMIT of the server's settling query (whose answer still
    arrives first); `commit-lands-late` holds COMMIT back until after the server settled the
    outcome, which ends that transaction so it can never land.
    """
    direct, settings = await proxied(backends, pg_proxy)
    with ServerProcess(settings, tmp_path / "server.log", **FAST_FAILING) as server:
        async with writers(server.url, 1) as [writer]:
            before = writer.expected
            await until_published(direct, BOOK, writer.path)
            pg_proxy.cut_commits(cuts, deliver=deliver, delay=delay)
            answer = await writer.write()
            pg_proxy.pass_through()
            await asyncio.sleep(delay + 0.5)
            content = f"writer 0 write {writer.writes}"
            applied = await journal_hash(direct, writer.path) == sha(content)
            await settle_all([writer])
            replay = await timed(
                writer.client,
                "write_content",
                book_id=BOOK,
                path=writer.path,
                content=content,
                expected_hash=before,
            )
            if not applied:
                writer.expected, writer.applied = sha(content), writer.applied + 1
            after = await writer.write()
    unknown = bool(answer.error and answer.error.get("outcome_unknown"))
    report(
        "commit-cut",
        cuts=pg_proxy.stats.commits_cut,
        answer=answer.code or "ok",
        outcome_unknown=unknown,
        applied=applied,
        seconds=round(answer.seconds, 2),
    )
    assert pg_proxy.stats.commits_cut >= 1
    assert answer.code in (None, "UNAVAILABLE") and answer.seconds <= DEADLINE + SLACK, answer
    if answer.result is not None:
        assert applied
    elif not unknown:
        assert not applied, "the server said nothing was changed, but the write was applied"
    # A COMMIT still in flight when the server settles the outcome never lands: the server ends
    # that transaction (txid_status "in progress" -> pg_terminate_backend) and says so.
    assert applied == (deliver and delay == 0)
    # Even with every COMMIT cut (the settling query's own included), txid_status answers
    # before its transaction ends: the outcome is always known.
    assert not unknown, answer
    assert (answer.result is not None) == applied, answer
    # A blind replay after the fact is refused if the write was applied, else applied once.
    if applied:
        assert replay.error is not None and replay.error["current_hash"] == sha(content), replay
    else:
        assert replay.result is not None, replay
    assert after.result is not None, after
    await assert_tallies(direct, [writer])
    assert_consistent_afterwards(direct)


async def test_pg_read_audit_batch_cut_at_commit_is_not_appended_twice(
    backends: Backends, pg_proxy: PostgresProxy, tmp_path: Path
) -> None:
    """Read entries are appended in batches; a batch whose COMMIT landed unseen stays queued."""
    direct, settings = await proxied(backends, pg_proxy)
    with ServerProcess(settings, tmp_path / "server.log", **FAST_FAILING) as server:
        async with writers(server.url, 1) as [writer]:
            pg_proxy.cut_commits(1000)
            for _ in range(3):
                writer.answers.append(
                    await timed(writer.client, "read_content", book_id=BOOK, path=writer.path)
                )
                await asyncio.sleep(0.3)
            pg_proxy.pass_through()
            await asyncio.sleep(2.5)
    report("audit-batch", cuts=pg_proxy.stats.commits_cut, answers=[a.code or "ok" for a in writer.answers])
    # Reads run in autocommit (no COMMIT of their own): each read's batch is one COMMIT cut.
    assert pg_proxy.stats.commits_cut >= 3
    assert_typed_and_timely([writer])
    assert_consistent_afterwards(direct)
    await assert_tallies(direct, [writer])


# -- T-6: S3 -------------------------------------------------------------------------------------

S3_FAULTS = (
    FaultRule("PUT", "slowdown", 0.25),
    FaultRule("PUT", "reset_upload", 0.1),
    FaultRule("PUT", "drop_response", 0.05),
    FaultRule("GET", "internal", 0.1),
    FaultRule("GET", "truncate", 0.1),
    FaultRule("DELETE", "slowdown", 0.1),
)
"""The rates of specs/test-catalogue.md T-6 (503 on 20% of PUTs, 500 on 5% of GETs, 5% of uploads
reset, 1% of GET bodies cut short) raised so that each fault happens many times in seconds."""


async def counted_reads(reader: Writer, proxy: S3Proxy, count: int) -> list[tuple[int, int]]:
    """`count` reads one after the other: (GETs it made, how many of them were cut short)."""
    made: list[tuple[int, int]] = []
    for n in range(count):
        seen = len(proxy.seen)
        answer = await timed(reader.client, "read_content", book_id=BOOK, path=lesson(n % WRITERS))
        reader.answers.append(answer)
        if answer.result is not None:
            assert sha(answer.result["content"]) == answer.result["file_hash"], answer
        gets = [s for s in proxy.seen[seen:] if s.method == "GET"]
        made.append((len(gets), sum(1 for s in gets if s.fault == "truncate")))
    return made


@pytest.mark.slow
async def test_s3_faults_fail_calls_typed_with_bounded_retries_and_nothing_is_left_inconsistent(
    backends: Backends, s3_endpoint: str, tmp_path: Path
) -> None:
    direct = await backends.settings("postgres-s3")
    proxy = S3Proxy(s3_endpoint, seed=6).start()
    settings = direct.model_copy(update={"s3_endpoint": proxy.endpoint})
    try:
        with ServerProcess(settings, tmp_path / "server.log", **FAST_FAILING) as server:
            async with writers(server.url) as team:
                proxy.inject(*S3_FAULTS)
                async with writing(team):
                    await asyncio.sleep(8)
                    # Seeded faults land on whichever requests come: keep writing (bounded) until
                    # every kind has struck a few times, so the assertion below is not luck.
                    for _ in range(30):
                        struck = Counter(f"{s.method} {s.fault}" for s in proxy.seen if s.fault is not None)
                        if all(struck[f"{rule.method} {rule.fault}"] >= 3 for rule in S3_FAULTS):
                            break
                        await asyncio.sleep(1)
                reads = await counted_reads(team[0], proxy, 40)
                proxy.inject()
                recovered = await recovery_seconds(team)
    finally:
        proxy.close()
    outcomes = assert_typed_and_timely(team)
    faults = Counter(f"{s.method} {s.fault}" for s in proxy.seen if s.fault is not None)
    staged = Counter(s.path for s in proxy.requests("PUT", STAGING_PREFIX))
    report(
        "s3",
        outcomes=dict(outcomes),
        faults=dict(faults),
        requests=len(proxy.seen),
        most_puts_per_staged_object=max(staged.values()),
        most_gets_per_read=max(gets for gets, _ in reads),
        recovery_s=round(recovered, 2),
    )
    assert all(faults[f"{rule.method} {rule.fault}"] >= 3 for rule in S3_FAULTS), faults
    assert outcomes["ok"] > 10 * outcomes["UNAVAILABLE"], outcomes
    assert max(staged.values()) <= MAX_ATTEMPTS, staged.most_common(3)
    # A read may try the staging key, then the final one; a body cut short resumes where it ended.
    assert all(gets - cut <= 2 * MAX_ATTEMPTS for gets, cut in reads), reads
    await assert_tallies(direct, team)
    assert_consistent_afterwards(direct, repair=True)
