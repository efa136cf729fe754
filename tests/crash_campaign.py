"""C-2 crash campaign: writers with an exact oracle, replicas SIGKILLed, PostgreSQL crashed.

8 writers each own a disjoint share of 50 files (3 books; base files and two users' overlays),
so each knows exactly what its files must hold: it chains `expected_hash` from its own last
known state, and after a call of unknown outcome it re-reads the file and accepts either that
state or the one the call would have made. Meanwhile a random replica is SIGKILLed every
U(0.5, 3) s and restarted, and (postgres-s3, postgres-fs) PostgreSQL is stopped with
`-m immediate` and started again. On postgres-fs the replicas share one folder, and an update's
bytes are kept as a staged copy in the database until its publish syncs them. Writers keep
writing past their quota until the minimum number of kills and
PostgreSQL restarts is reached.

Afterwards the replicas are stopped cleanly, `recover --grace 0` and `fsck --repair --grace 0`
run, and `verify` checks: both and `audit verify` exit 0, every file holds its writer's last
known state (or that of a later ambiguous call), every acknowledged change is a successful
audit entry, each file's successful entries form one chain, and no call that answered
"nothing was written" was committed. The seed fixes every random choice (not the timing):

    uv run python -m tests.crash_campaign --seed 7 --writes 250 --backend postgres-s3
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from sqlalchemy import select

from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.migrate import upgrade
from panaversity_fs.db.schema import audit_log, file_journal, file_version
from panaversity_fs.files.fsck import PROBLEM_KINDS
from panaversity_fs.files.versions import VersionStore
from panaversity_fs.storage.blobs import BlobStore
from tests.books_support import sha
from tests.cluster import Ambiguous, McpHttp, MotoProcess, PrivatePostgres, Refused, Replicas, ToolAnswer

Backend = Literal["postgres-s3", "postgres-fs", "sqlite-fs"]
BOOKS = ("crash-book-a", "crash-book-b", "crash-book-c")
USERS = ("user-ada", "user-bo")
MUTATIONS = ("write_content", "delete_content")
REFUSALS = frozenset({"CONFLICT", "NOT_FOUND", "HASH_REQUIRED"})
DELETE_RATE = 0.08
CHECK_READ_RATE = 0.15
"""Share of acknowledged changes read back at once through another replica (read-your-writes)."""
GRACE = 10.0
SERVER_ENV = {
    "PANAVERSITY_RECOVERY_INTERVAL": "2",
    "DATABASE_POOL_SIZE": "4",
    "DATABASE_MAX_OVERFLOW": "4",
    "DATABASE_POOL_TIMEOUT": "2",
    "PANAVERSITY_DATABASE_STATEMENT_TIMEOUT": "5",
    "PANAVERSITY_REQUEST_TIMEOUT": "10",
    "PANAVERSITY_STORAGE_TIMEOUT": "10",
    "PANAVERSITY_RATE_LIMIT_READS_PER_MINUTE": "0",
    "PANAVERSITY_RATE_LIMIT_WRITES_PER_MINUTE": "0",
    "PANAVERSITY_FSCK_INTERVAL": "0",
    "PANAVERSITY_AUDIT_CHECKPOINT_INTERVAL": "3",
}
"""Fail fast while PostgreSQL is down, sweep often, no rate limits, checkpoints under fire."""


@dataclass(frozen=True)
class CampaignConfig:
    """One campaign: what to run and how hard to shake it."""

    seed: int
    backend: Backend = "postgres-s3"
    replicas: int = 3
    writers: int = 8
    writes: int = 250
    min_kills: int = 20
    min_pg_restarts: int = 5
    kill_every: tuple[float, float] = (0.5, 3.0)
    pg_gap: tuple[float, float] = (3.0, 8.0)
    pg_outage: tuple[float, float] = (0.5, 2.0)
    max_seconds: float = 3600.0
    workdir: Path | None = None


@dataclass(frozen=True)
class Slot:
    """One file a writer owns: a base file (`user` None) or one user's overlay."""

    book: str
    path: str
    user: str | None

    @property
    def key(self) -> tuple[str, str, str]:
        """`(book, path, user)` as the journal and the audit log name it."""
        return (self.book, self.path, self.user or "__base__")

    def arguments(self) -> dict[str, Any]:
        """Tool arguments naming this file."""
        return {"book_id": self.book, "path": self.path} | ({"user_id": self.user} if self.user else {})


def layout() -> list[Slot]:
    """The 50 files: 30 base files (10 a book), 10 overlays shadowing base files, 10 overlay-only."""

    def lesson(i: int) -> str:
        kind = ".summary" if i % 7 == 3 else ""
        return f"content/{i // 20 + 1:02d}-Part/{(i // 5) % 4 + 1:02d}-Chapter/{i % 5 + 1:02d}-lesson-{i}{kind}.md"

    base = [Slot(BOOKS[i % 3], lesson(i), None) for i in range(30)]
    shadows = [Slot(base[j].book, base[j].path, USERS[j % 2]) for j in range(10)]
    return base + shadows + [Slot(BOOKS[j % 3], lesson(100 + j), USERS[j % 2]) for j in range(10)]


WORDS = ("lesson", "python", "agent", "book", "chapter", "hash", "write", "read", "journal")
FILLER = " ".join(random.Random(0).choice(WORDS) for _ in range(60_000))


def content(rng: random.Random, slot: Slot, attempt: str) -> str:
    """Markdown unique to one attempt (its hash names the attempt): mostly small, 10% > 64 KiB."""
    roll = rng.random()
    if roll < 0.1:
        size = rng.randint(65_537, 220_000)
    else:
        size = rng.randint(4_000, 60_000) if roll < 0.3 else rng.randint(50, 4_000)
    start = rng.randrange(len(FILLER) - size)
    return f"# {slot.path}\n\nattempt {attempt} for {slot.user or 'base'}\n\n{FILLER[start : start + size]}\n"


@dataclass
class SlotState:
    """A writer's knowledge of one file: its last confirmed state (a hash; None: absent) and the
    states of the calls of unknown outcome made since."""

    confirmed: str | None = None
    maybe: list[str | None] = field(default_factory=list)

    def possible(self) -> list[str | None]:
        """States the file may be in now."""
        return [self.confirmed, *self.maybe]


@dataclass
class Stats:
    """Counters of one campaign."""

    operations: int = 0
    acked: int = 0
    ambiguous: int = 0
    refused_answers: int = 0
    refused_connections: int = 0
    reads: int = 0
    kills: int = 0
    restarts: int = 0
    restart_attempts_failed: int = 0
    pg_restarts: int = 0


class AckLog:
    """Every attempt (acknowledged, refused, ambiguous), observation and chaos event, in memory
    and as JSON lines on disk."""

    def __init__(self, path: Path) -> None:
        self.entries: list[dict[str, Any]] = []
        self._file = path.open("a", encoding="utf-8")

    def record(self, **entry: Any) -> None:
        entry["at"] = round(time.time(), 3)
        self.entries.append(entry)
        self._file.write(json.dumps(entry) + "\n")

    def close(self) -> None:
        self._file.close()


@dataclass
class Run:
    """What the writers and the chaos share during one campaign."""

    config: CampaignConfig
    slots: list[Slot]
    states: dict[int, SlotState]
    log: AckLog
    deadline: float
    stats: Stats = field(default_factory=Stats)
    violations: list[str] = field(default_factory=list)


class CampaignTimeout(Exception):
    """The campaign ran past `max_seconds`."""


class Writer:
    """One agent changing the files it owns, round-robin over the replicas."""

    def __init__(self, index: int, run: Run, urls: list[str], http: httpx.AsyncClient) -> None:
        self.index = index
        self.agent = f"crash-writer-{index}"
        self._run = run
        self._owned = [s for s in range(len(run.slots)) if s % run.config.writers == index]
        self._sessions = [McpHttp(http, url, self.agent) for url in urls]
        self._cursor = index % len(urls)
        self._rng = random.Random(f"{run.config.seed}:writer:{index}")

    async def run(self, overtime: asyncio.Event) -> None:
        """Make the configured number of changes, then keep going until `overtime` is set."""
        number = 0
        while number < self._run.config.writes or not overtime.is_set():
            await self._step(number)
            number += 1

    async def _step(self, number: int) -> None:
        index = self._rng.choice(self._owned)
        slot, state = self._run.slots[index], self._run.states[index]
        attempt = f"w{self.index}-{number}"
        arguments = slot.arguments()
        if state.confirmed is not None and self._rng.random() < DELETE_RATE:
            tool, new = "delete_content", None
        else:
            text = content(self._rng, slot, attempt)
            tool, new = "write_content", sha(text)
            arguments["content"] = text
        if state.confirmed is not None:
            arguments["expected_hash"] = state.confirmed
        self._run.stats.operations += 1
        base = {"writer": self.index, "slot": index, "book": slot.book, "path": slot.path, "user": slot.user}
        base |= {"attempt": attempt, "tool": tool, "expected": state.confirmed, "new": new}
        answer: ToolAnswer | None = None
        replica: int | None = None
        try:
            answer, replica = await self._deliver(tool, arguments)
        except Ambiguous as exc:
            base["detail"] = str(exc)[:300]
        if answer is not None and answer.ok:
            self._acknowledged(index, base, answer.data, replica)
            if replica is not None and len(self._sessions) > 1 and self._rng.random() < CHECK_READ_RATE:
                await self._check_read(index, new, replica)
            return
        code = answer.code if answer is not None else None
        if code in REFUSALS:
            self._run.stats.refused_answers += 1
            self._run.log.record(**base, outcome="refused", code=code, replica=replica)
            if not state.maybe:
                self._violate(f"{attempt}: {tool} of my own file {slot.key} refused: {answer}")
        else:
            if code not in (None, "UNAVAILABLE"):
                self._violate(f"{attempt}: {tool} answered {answer}; only UNAVAILABLE may fail a change")
            self._run.stats.ambiguous += 1
            unknown = answer is not None and bool(answer.data.get("outcome_unknown"))
            self._run.log.record(
                **base, outcome="ambiguous", code=code, outcome_unknown=unknown, replica=replica
            )
            state.maybe.append(new)
        await self._resolve(index, f"{attempt} answered {code or base.get('detail')}")

    def _acknowledged(
        self, index: int, base: dict[str, Any], data: dict[str, Any], replica: int | None
    ) -> None:
        state = self._run.states[index]
        if base["tool"] == "write_content":
            if data.get("file_hash") != base["new"] or data.get("previous_hash") != state.confirmed:
                self._violate(f"{base['attempt']}: write answered {data}, expected hash {base['new']}")
        elif not data.get("existed") or data.get("previous_hash") != state.confirmed:
            self._violate(f"{base['attempt']}: delete answered {data}, expected {state.confirmed} to exist")
        self._run.stats.acked += 1
        self._run.log.record(**base, outcome="acked", replica=replica)
        state.confirmed, state.maybe = base["new"], []

    async def _deliver(self, tool: str, arguments: dict[str, Any]) -> tuple[ToolAnswer, int]:
        """Call `tool` on the next replica, moving on while replicas refuse connections.

        Raises:
            Ambiguous: the call may have run.
            CampaignTimeout: no replica answered before the deadline.
        """
        refusals = 0
        while True:
            replica = self._cursor
            self._cursor = (self._cursor + 1) % len(self._sessions)
            try:
                return await self._sessions[replica].call(tool, **arguments), replica
            except Refused:
                refusals += 1
                self._run.stats.refused_connections += 1
                if time.monotonic() > self._run.deadline:
                    raise CampaignTimeout(f"{self.agent} found no replica to call") from None
                await asyncio.sleep(min(0.5, 0.02 * refusals))

    async def read_state(self, slot: Slot) -> str | None:
        """The file's current state, read through the next replica that answers.

        Raises:
            CampaignTimeout: no replica answered before the deadline.
        """
        failures = 0
        while True:
            try:
                answer: ToolAnswer | None = (await self._deliver("read_content", slot.arguments()))[0]
            except Ambiguous:
                answer = None
            if answer is not None and (answer.ok or answer.code == "NOT_FOUND"):
                self._run.stats.reads += 1
                data = answer.data
                if answer.ok and sha(str(data.get("content"))) != data.get("file_hash"):
                    self._violate(
                        f"torn read of {slot.key}: content does not hash to {data.get('file_hash')}"
                    )
                if not answer.ok or (slot.user and data.get("source") != "overlay"):
                    return None
                return str(data["file_hash"])
            failures += 1
            if answer is not None and answer.code != "UNAVAILABLE" and failures == 1:
                self._violate(f"read of {slot.key} answered {answer.data}")
            if time.monotonic() > self._run.deadline:
                raise CampaignTimeout(f"{self.agent} could not read {slot.key}")
            await asyncio.sleep(min(1.0, 0.05 * failures))

    async def _resolve(self, index: int, why: str) -> None:
        state, slot = self._run.states[index], self._run.slots[index]
        observed = await self.read_state(slot)
        if observed not in state.possible():
            self._violate(f"{why}: {slot.key} is {observed}, expected one of {state.possible()}")
        self._run.log.record(writer=self.index, slot=index, outcome="observed", state=observed, why=why)
        state.confirmed, state.maybe = observed, []

    async def _check_read(self, index: int, expected: str | None, writer_replica: int) -> None:
        self._cursor = (writer_replica + 1) % len(self._sessions)
        observed = await self.read_state(self._run.slots[index])
        if observed != expected:
            self._violate(
                f"read-your-writes: {self._run.slots[index].key} is {observed} after ack of {expected}"
            )

    def _violate(self, message: str) -> None:
        self._run.violations.append(f"[{self.agent}] {message}")


class Chaos:
    """SIGKILLs replicas at random and restarts them; crashes PostgreSQL (`-m immediate`)."""

    def __init__(self, run: Run, replicas: Replicas, pg: PrivatePostgres | None) -> None:
        self._run = run
        self._config = run.config
        self._stats = run.stats
        self._replicas = replicas
        self._pg = pg
        self._rng = random.Random(f"{run.config.seed}:kill")
        self._pg_rng = random.Random(f"{run.config.seed}:pg")
        self._restarting: set[int] = set()
        self._restarts: set[asyncio.Task[None]] = set()
        self._pg_up = asyncio.Event()
        self._pg_up.set()

    def quota_met(self) -> bool:
        """Whether the minimum number of kills (and PostgreSQL restarts) was reached."""
        pg_done = self._pg is None or self._stats.pg_restarts >= self._config.min_pg_restarts
        return self._stats.kills >= self._config.min_kills and pg_done

    def _over(self, writers_done: asyncio.Event) -> bool:
        return (writers_done.is_set() and self.quota_met()) or time.monotonic() > self._run.deadline

    async def kill_replicas(self, writers_done: asyncio.Event) -> None:
        """SIGKILL a random running replica U(kill_every) s after the last kill, and restart it.

        With several replicas one is killed only while another runs (writers always have
        somewhere to go unless PostgreSQL is down); a single replica is killed U(kill_every) s
        after it came back.
        """
        keep = 1 if len(self._replicas) > 1 else 0
        while not self._over(writers_done):
            if len(self._running()) <= keep:
                await asyncio.sleep(0.1)
                continue
            await asyncio.sleep(self._rng.uniform(*self._config.kill_every))
            running = self._running()
            if len(running) <= keep:
                continue
            victim = self._rng.choice(running)
            await asyncio.to_thread(self._replicas.kill, victim)
            self._run.log.record(outcome="chaos", event="kill", replica=victim)
            self._stats.kills += 1
            self._restarting.add(victim)
            task = asyncio.create_task(self._restart(victim))
            self._restarts.add(task)
            task.add_done_callback(self._restarts.discard)

    def _running(self) -> list[int]:
        return [i for i in range(len(self._replicas)) if i not in self._restarting]

    async def _restart(self, index: int) -> None:
        last = ""
        try:
            for _ in range(60):
                await self._pg_up.wait()  # a start-up needs the database: do not burn CPU before
                try:
                    await asyncio.to_thread(self._replicas.restart, index, 60.0)
                except RuntimeError as exc:
                    self._stats.restart_attempts_failed += 1
                    last = str(exc)[-500:]
                    self._run.log.record(outcome="chaos", event="restart failed", replica=index, detail=last)
                    await asyncio.sleep(0.5)
                    continue
                self._stats.restarts += 1
                self._run.log.record(outcome="chaos", event="up", replica=index)
                return
            self._run.violations.append(f"replica {index} could not restart: {last}")
        finally:
            self._restarting.discard(index)

    async def crash_postgres(self, writers_done: asyncio.Event) -> None:
        """Every U(pg_gap) s, stop PostgreSQL with `-m immediate` for U(pg_outage) s."""
        if self._pg is None:
            return
        while not self._over(writers_done):
            await asyncio.sleep(self._pg_rng.uniform(*self._config.pg_gap))
            self._pg_up.clear()
            await asyncio.to_thread(self._pg.stop, "immediate")
            self._run.log.record(outcome="chaos", event="postgres stopped")
            await asyncio.sleep(self._pg_rng.uniform(*self._config.pg_outage))
            await self._start_postgres()
            self._stats.pg_restarts += 1

    async def _start_postgres(self) -> None:
        assert self._pg is not None
        for attempt in range(3):
            try:
                await asyncio.to_thread(self._pg.start)
                break
            except RuntimeError as exc:
                if attempt == 2:
                    self._run.violations.append(f"PostgreSQL did not come back after a crash: {exc}")
                    raise
        self._pg_up.set()
        self._run.log.record(outcome="chaos", event="postgres up")

    async def settle(self) -> None:
        """Wait for the restarts in flight, then make sure PostgreSQL and every replica run."""
        while self._restarts:
            await asyncio.gather(*self._restarts, return_exceptions=True)
        if self._pg is not None and not self._pg.running():
            await self._start_postgres()
        for index in range(len(self._replicas)):
            if not self._replicas.alive(index):
                await self._restart(index)


@dataclass
class CampaignReport:
    """What a campaign did and every violation it found (none: every guarantee held)."""

    seed: int
    backend: str
    replicas: int
    writers: int
    writes_per_writer: int
    seconds: dict[str, float] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    fsck_found: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    workdir: str = ""

    def summary(self) -> str:
        """One line for logs and failure messages."""
        s, t = self.stats, self.seconds
        return (
            f"seed={self.seed} backend={self.backend} replicas={self.replicas} "
            f"seconds={t.get('total', 0):.0f} (setup {t.get('setup', 0):.0f}, chaos {t.get('chaos', 0):.0f}, "
            f"verify {t.get('verify', 0):.0f}) ops={s.get('operations')} acked={s.get('acked')} "
            f"ambiguous={s.get('ambiguous')} refused_conn={s.get('refused_connections')} "
            f"kills={s.get('kills')} restarts={s.get('restarts')} pg_restarts={s.get('pg_restarts')} "
            f"fsck_found={self.fsck_found} violations={len(self.violations)}"
        )


@asynccontextmanager
async def campaign_backends(
    config: CampaignConfig, workdir: Path
) -> AsyncIterator[tuple[Settings, PrivatePostgres | None]]:
    """A fresh, migrated database and an empty store for `config.backend`, removed afterwards.

    Raises:
        ClusterUnavailable: no private PostgreSQL cluster or moto server can be made here.
    """
    base: dict[str, Any] = {
        "recovery_interval": 2,
        "recovery_grace": GRACE,
        "audit_read_batch_interval": 0.05,
    }
    if config.backend == "sqlite-fs":
        url = f"sqlite+aiosqlite:///{workdir / 'pfs.db'}"
        settings = Settings(database_url=url, storage_backend="fs", storage_root=workdir / "store", **base)
        await _migrate(settings)
        yield settings, None
        return
    pg = PrivatePostgres()
    moto = MotoProcess(workdir / "moto.log")
    try:
        await asyncio.to_thread(pg.start)
        url = await asyncio.to_thread(pg.create_database, "pfs")
        if config.backend == "postgres-fs":
            store: dict[str, Any] = {"storage_backend": "fs", "storage_root": workdir / "store"}
        else:
            await asyncio.to_thread(moto.start)
            store = moto.store_settings("crash")
        settings = Settings(database_url=url, **store, **base)
        await _migrate(settings)
        yield settings, pg
    finally:
        moto.stop()
        await asyncio.to_thread(pg.cleanup)


async def _migrate(settings: Settings) -> None:
    db = Database.from_settings(settings)
    try:
        await upgrade(db)
    finally:
        await db.dispose()


async def run_campaign(config: CampaignConfig) -> CampaignReport:
    """Run one campaign and check every guarantee; violations go into the report.

    Raises:
        ClusterUnavailable: the backends cannot be made here.
    """
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix=f"pfs-crash-{config.seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = CampaignReport(config.seed, config.backend, config.replicas, config.writers, config.writes)
    report.workdir = str(workdir)
    clock = [time.monotonic()]

    def phase(name: str) -> None:
        now = time.monotonic()
        report.seconds[name] = round(now - clock[-1], 1)
        clock.append(now)

    slots = layout()
    run = Run(
        config=config,
        slots=slots,
        states={i: SlotState() for i in range(len(slots))},
        log=AckLog(workdir / "acklog.jsonl"),
        deadline=clock[0] + config.max_seconds,
        violations=report.violations,
    )
    async with campaign_backends(config, workdir) as (settings, pg):
        replicas = Replicas(settings, config.replicas, workdir, fork=True, **SERVER_ENV)
        try:
            await asyncio.to_thread(replicas.start)
            phase("setup")
            chaos = Chaos(run, replicas, pg)
            async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0)) as http:
                writers = [Writer(i, run, replicas.urls, http) for i in range(config.writers)]
                writers_done, quota = asyncio.Event(), asyncio.Event()
                chaos_tasks = [
                    asyncio.create_task(chaos.kill_replicas(writers_done)),
                    asyncio.create_task(chaos.crash_postgres(writers_done)),
                    asyncio.create_task(_watch_quota(chaos, quota)),
                ]
                try:
                    async with asyncio.TaskGroup() as group:
                        for writer in writers:
                            group.create_task(writer.run(quota))
                except* CampaignTimeout as timeouts:
                    report.violations.append(
                        f"no end in {config.max_seconds:.0f} s: {timeouts.exceptions[0]}"
                    )
                finally:
                    writers_done.set()
                    await asyncio.gather(*chaos_tasks)
                    await chaos.settle()
                phase("chaos")
                finals = {i: await writers[i % config.writers].read_state(s) for i, s in enumerate(slots)}
            statuses = await asyncio.to_thread(replicas.stop)
            report.violations.extend(
                f"replica {i} exited with {status} on SIGTERM" for i, status in enumerate(statuses) if status
            )
            report.stats = asdict(run.stats)
            await verify(replicas, settings, run, finals, report)
            phase("verify")
        finally:
            await asyncio.to_thread(replicas.stop)
            run.log.close()
            if report.violations:
                (workdir / "replica-logs.txt").write_text(replicas.log_tails(60))
    report.seconds["total"] = round(time.monotonic() - clock[0], 1)
    return report


async def _watch_quota(chaos: Chaos, quota: asyncio.Event) -> None:
    while not chaos.quota_met():
        await asyncio.sleep(0.2)
    quota.set()


async def verify(
    replicas: Replicas, settings: Settings, run: Run, finals: dict[int, str | None], report: CampaignReport
) -> None:
    """After the campaign, with the servers stopped: recover, repair, then check every guarantee."""
    found = report.violations
    for index, slot in enumerate(run.slots):
        if finals[index] not in run.states[index].possible():
            found.append(f"{slot.key} reads {finals[index]}, expected one of {run.states[index].possible()}")
    recovered = await asyncio.to_thread(replicas.cli, "recover", "--grace", "0")
    if recovered.returncode != 0:
        found.append(f"recover exited {recovered.returncode}: {recovered.stdout}{recovered.stderr[-2000:]}")
    fsck = await asyncio.to_thread(replicas.cli, "fsck", "--repair", "--grace", "0")
    try:
        before = json.loads(fsck.stdout)["found"]
        report.fsck_found = {kind: len(before[kind]) for kind in PROBLEM_KINDS}
        if before["missing"] or before["corrupt"]:
            found.append(f"fsck found lost or corrupt files: {before['missing']} {before['corrupt']}")
        if before["missing_versions"]:
            found.append(f"fsck found versions whose bytes are lost: {before['missing_versions']}")
    except (json.JSONDecodeError, KeyError, TypeError):
        found.append(f"fsck printed no report: {fsck.stdout[-2000:]}{fsck.stderr[-2000:]}")
    if fsck.returncode != 0:
        found.append(f"fsck --repair exited {fsck.returncode}: {fsck.stdout[-3000:]}")
    audited = await asyncio.to_thread(replicas.cli, "audit", "verify")
    if audited.returncode != 0:
        found.append(
            f"audit verify exited {audited.returncode}: {audited.stdout[-2000:]}{audited.stderr[-2000:]}"
        )
    journal, history = await _read_database(settings)
    attempts: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for entry in run.log.entries:
        if entry["outcome"] in ("acked", "ambiguous", "refused"):
            attempts[entry["slot"]].append(entry)
    for index, slot in enumerate(run.slots):
        row = journal.get(slot.key)
        stored = row["sha256"] if row is not None else None
        if row is not None and row["publish_pending"]:
            found.append(f"{slot.key}: publish still pending after recovery")
        if stored != finals[index]:
            found.append(f"{slot.key}: the journal holds {stored}, the final read said {finals[index]}")
        owner = f"crash-writer-{index % run.config.writers}"
        check_history(slot, owner, history[slot.key], attempts[index], stored, found)
    await check_versions(settings, run, history, attempts, found)


async def check_versions(
    settings: Settings,
    run: Run,
    audited: dict[tuple[str, str, str], list[dict[str, Any]]],
    attempts: dict[int, list[dict[str, Any]]],
    found: list[str],
) -> None:
    """Every committed change is one version, and every acknowledged write's version is
    readable byte-exact from the version store after recovery."""
    db = Database.from_settings(settings)
    store = BlobStore.from_settings(settings)
    versions = VersionStore(db, store)
    try:
        async with db.read() as conn:
            rows = await conn.execute(select(file_version).where(file_version.c.book_id.in_(BOOKS)))
            kept: dict[tuple[str, str, str], list[str | None]] = defaultdict(list)
            for row in rows.mappings():
                kept[(row["book_id"], row["path"], row["user_id"])].append(row["sha256"])
        for index, slot in enumerate(run.slots):
            successes = [
                e
                for e in audited[slot.key]
                if e["status"] == "success" and (e["prev_hash"], e["new_hash"]) != (None, None)
            ]  # a delete of a missing file changes nothing and makes no version
            if len(kept[slot.key]) != len(successes):
                found.append(
                    f"{slot.key}: {len(successes)} committed changes but {len(kept[slot.key])} versions"
                )
            for attempt in (
                a for a in attempts[index] if a["outcome"] == "acked" and a["tool"] == "write_content"
            ):
                if attempt["new"] not in kept[slot.key]:
                    found.append(f"{slot.key}: acknowledged write {attempt['attempt']} has no version")
                elif await versions.read(attempt["new"]) is None:
                    found.append(f"{slot.key}: the bytes of acknowledged write {attempt['attempt']} are lost")
    finally:
        store.close()
        await db.dispose()


async def _read_database(
    settings: Settings,
) -> tuple[dict[tuple[str, str, str], dict[str, Any]], dict[tuple[str, str, str], list[dict[str, Any]]]]:
    """The campaign's journal rows, and its files' mutation audit entries in seq order."""
    db = Database.from_settings(settings)
    history: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    try:
        async with db.read() as conn:
            rows = await conn.execute(select(file_journal).where(file_journal.c.book_id.in_(BOOKS)))
            journal = {(r["book_id"], r["path"], r["user_id"]): dict(r) for r in rows.mappings()}
            entries = await conn.execute(
                select(audit_log)
                .where(audit_log.c.book_id.in_(BOOKS), audit_log.c.operation.in_(MUTATIONS))
                .order_by(audit_log.c.seq)
            )
            for entry in entries.mappings():
                history[(entry["book_id"], entry["path"], entry["user_id"])].append(dict(entry))
    finally:
        await db.dispose()
    return journal, history


def _claims_nothing_written(attempt: dict[str, Any]) -> bool:
    if attempt["outcome"] == "refused":
        return True
    return attempt.get("code") == "UNAVAILABLE" and not attempt.get("outcome_unknown")


def check_history(
    slot: Slot,
    agent: str,
    entries: list[dict[str, Any]],
    attempts: list[dict[str, Any]],
    stored: str | None,
    found: list[str],
) -> None:
    """Check one file's audit entries against its writer's attempts and its journal row."""
    successes = [e for e in entries if e["status"] == "success"]
    strangers = {e["agent_id"] for e in entries} - {agent}
    if strangers:
        found.append(f"{slot.key}: audit entries by {strangers}; only {agent} writes it")
    for before, after in itertools.pairwise(successes):
        if before["new_hash"] != after["prev_hash"]:
            found.append(f"{slot.key}: per-file chain broken between seq {before['seq']} and {after['seq']}")
    parents = [e["prev_hash"] for e in successes if e["prev_hash"] is not None]
    if len(parents) != len(set(parents)):
        found.append(f"{slot.key}: two successful changes share a prev_hash (lost update)")
    last = successes[-1]["new_hash"] if successes else None
    if last != stored:
        found.append(f"{slot.key}: the last audited state is {last}, the journal holds {stored}")
    written = [e["new_hash"] for e in successes if e["operation"] == "write_content"]
    deleted = {e["prev_hash"] for e in successes if e["operation"] == "delete_content"}
    if len(written) != len(set(written)):
        found.append(f"{slot.key}: one write applied twice")
    for attempt in (a for a in attempts if a["outcome"] == "acked"):
        if attempt["tool"] == "write_content" and attempt["new"] not in written:
            found.append(f"{slot.key}: acknowledged write {attempt['attempt']} has no successful audit entry")
        if attempt["tool"] == "delete_content" and attempt["expected"] not in deleted:
            found.append(
                f"{slot.key}: acknowledged delete {attempt['attempt']} has no successful audit entry"
            )
    for entry in successes:
        if entry["operation"] == "write_content":
            matching = [
                a for a in attempts if a["tool"] == entry["operation"] and a["new"] == entry["new_hash"]
            ]
        else:
            matching = [
                a for a in attempts if a["tool"] == entry["operation"] and a["expected"] == entry["prev_hash"]
            ]
        if not matching:
            found.append(f"{slot.key}: seq {entry['seq']} is a change no writer attempted")
        elif all(_claims_nothing_written(a) for a in matching):
            calls = [(a["attempt"], a.get("code")) for a in matching]
            found.append(f"{slot.key}: seq {entry['seq']} was committed, but its call answered {calls}")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.crash_campaign`: one campaign; exit status 1 if any guarantee broke."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.crash_campaign",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument(
        "--backend", choices=["postgres-s3", "postgres-fs", "sqlite-fs"], default="postgres-s3"
    )
    parser.add_argument("--writes", type=int, default=250, help="changes per writer, at least")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument(
        "--replicas", type=int, help="default: 3 on postgres-s3, 2 on postgres-fs, 1 on sqlite-fs"
    )
    parser.add_argument("--min-kills", type=int, default=20)
    parser.add_argument("--min-pg-restarts", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=3600)
    parser.add_argument("--workdir", type=Path, help="keep the logs and the ack log here")
    args = parser.parse_args(argv)
    config = CampaignConfig(
        seed=args.seed,
        backend=args.backend,
        replicas=args.replicas or {"postgres-s3": 3, "postgres-fs": 2}.get(args.backend, 1),
        writers=args.writers,
        writes=args.writes,
        min_kills=args.min_kills,
        min_pg_restarts=args.min_pg_restarts,
        max_seconds=args.max_seconds,
        workdir=args.workdir,
    )
    print(f"crash campaign seed={config.seed} backend={config.backend}", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # so that the clusters and servers are cleaned up
    report = asyncio.run(run_campaign(config))
    print(json.dumps(asdict(report), indent=1))
    print(report.summary())
    if report.violations:
        print(f"FAILED: replay with --seed {config.seed}; logs in {report.workdir}", file=sys.stderr)
    elif args.workdir is None:
        shutil.rmtree(report.workdir, ignore_errors=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
