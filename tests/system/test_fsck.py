"""C-7: `panaversity-fs fsck [--repair]`, and the server's periodic check exported as metrics.

The seed of specs/test-catalogue.md C-7 on both pairings (SQLite + fs, PostgreSQL + S3): 3 objects
deleted, 1 byte flipped in 2, 5 stray objects added, 2 journal rows deleted. fsck must report
exactly 3 missing, 2 corrupt and 7 orphans and exit 1; `--repair` must quarantine only orphans
older than the grace period, never delete a journal row, and leave missing/corrupt reported.
Then: a leftover intent and stale staging are repaired; repairs running in a loop beside live
writers lose nothing (C-6); a server with a short `fsck_interval` exports the problem counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from mcp_types import Implementation
from sqlalchemy import delete, func, select, update

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import file_journal
from panaversity_fs.files.fsck import QUARANTINE_PREFIX, check, repair
from panaversity_fs.files.publisher import Publisher
from panaversity_fs.metrics import Metrics
from panaversity_fs.storage.blobs import STAGING_PREFIX, BlobStore
from testkit.processes import ServerProcess, run_cli, settings_env
from tests.conftest import PAIRS, Backends
from tests.support import call, client

BOOK = "fsck-book"
LESSONS = [f"content/01-Part/01-Chapter/{n:02d}-lesson.md" for n in range(1, 13)]
OLD = time.time() - 7200


def key(path: str, book: str = BOOK) -> str:
    return f"books/{book}/{path}"


async def seed(settings: Settings) -> dict[str, str]:
    """Twelve lessons written through the tools; returns path -> hash."""
    hashes: dict[str, str] = {}
    async with client(create_server(settings, background=False), agent="fsck-seeder") as c:
        for n, path in enumerate(LESSONS):
            hashes[path] = (await call(c, "write_content", book_id=BOOK, path=path, content=f"# {n}\n"))[
                "file_hash"
            ]
    return hashes


class Rig:
    """The settings' database and store, for tampering behind the server's back."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database.from_settings(settings)
        self.store = BlobStore.from_settings(settings)

    async def close(self) -> None:
        self.store.close()
        await self.db.dispose()

    async def row_count(self) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(file_journal))).scalar_one())

    def backdate(self, storage_key: str) -> None:
        """Make an fs object two hours old (S3 objects cannot be backdated)."""
        os.utime(Path(self.settings.storage_root) / storage_key, (OLD, OLD))


def fsck(settings: Settings, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(settings_env(settings), "fsck", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize("combo", PAIRS)
async def test_c7_seeded_damage_is_reported_exactly_and_repair_only_quarantines_old_orphans(
    backends: Backends, combo: str
) -> None:
    settings = await backends.settings(combo)
    await seed(settings)
    rig = Rig(settings)
    try:
        deleted, flipped, unrowed = LESSONS[0:3], LESSONS[3:5], LESSONS[5:7]
        for path in deleted:
            await rig.store.delete(key(path))
        for path in flipped:
            data = bytearray(await rig.store.read(key(path)))
            data[0] ^= 0x01
            await rig.store.write(key(path), bytes(data))
        strays = [
            key("content/09-Stray/01-Left/01-over.md"),
            key("static/img/unknown.png"),
            key("users/alice/content/01-Part/01-Chapter/01-lesson.md"),
            key("notes.txt", book="another-book"),
            "books/x/..weird",
        ]
        for stray in strays:
            await rig.store.write(stray, b"stray bytes")
        async with rig.db.write() as tx:
            conn = tx.conn
            await conn.execute(delete(file_journal).where(file_journal.c.path.in_(unrowed)))
        rows_before = await rig.row_count()

        status, report = fsck(settings, "--grace", "0")
        assert status == 1
        assert sorted(report["missing"]) == sorted(key(p) for p in deleted)
        assert sorted(report["corrupt"]) == sorted(key(p) for p in flipped)
        assert sorted(report["orphans"]) == sorted([*strays, *(key(p) for p in unrowed)])
        assert (report["pending"], report["resurrected"], report["stale_staging"]) == ([], [], [])
        assert (report["checked_rows"], report["checked_objects"]) == (10, 14)

        # Everything is younger than a 10-minute grace period: reported as skipped, not touched.
        status, young = fsck(settings, "--repair", "--grace", "600")
        assert young["found"]["orphans"] == [] and young["found"]["young_skipped"] == 7
        assert young["repair"]["quarantined"] == []
        if combo.endswith("fs"):
            old = [*strays[:3], key(unrowed[0]), key(unrowed[1])]
            for stray in old:
                rig.backdate(stray)
            status, repaired = fsck(settings, "--repair", "--grace", "600")
            assert sorted(repaired["repair"]["quarantined"]) == sorted(old)
            kept = {strays[3], strays[4]}
        else:
            status, repaired = fsck(settings, "--repair", "--grace", "0")
            old, kept = [*strays, *(key(p) for p in unrowed)], set()
            assert sorted(repaired["repair"]["quarantined"]) == sorted(old)
        assert status == 1  # missing and corrupt files cannot be repaired from storage
        assert sorted(repaired["repair"]["unrepairable"]) == sorted(key(p) for p in [*deleted, *flipped])
        assert sorted(repaired["after"]["missing"]) == sorted(key(p) for p in deleted)
        assert repaired["after"]["orphans"] == []
        assert await rig.row_count() == rows_before  # repair never deletes a journal row
        for stray in old:
            assert not await rig.store.exists(stray)
        for stray in kept:
            assert await rig.store.exists(stray)  # young objects are left alone
        quarantine = {blob.key for blob in await rig.store.list(QUARANTINE_PREFIX)}
        assert {k.split("/", 3)[3] for k in quarantine} == set(old)
        moved = next(k for k in quarantine if k.endswith("unknown.png"))
        assert await rig.store.read(moved) == b"stray bytes"
    finally:
        await rig.close()


@pytest.mark.parametrize("combo", PAIRS)
async def test_repair_finishes_a_leftover_intent_and_removes_stale_staging(
    backends: Backends, combo: str
) -> None:
    settings = await backends.settings(combo)
    hashes = await seed(settings)
    rig = Rig(settings)
    try:
        path = LESSONS[0]
        staged = f"{STAGING_PREFIX}leftover-0001"
        await rig.store.copy(key(path), staged)
        await rig.store.delete(key(path))  # a crash between commit and publish
        async with rig.db.write() as tx:
            conn = tx.conn
            await conn.execute(
                update(file_journal)
                .where(file_journal.c.path == path)
                .values(
                    publish_pending=True,
                    staging_key=staged,
                    pending_since=datetime.now(UTC) - timedelta(hours=1),
                )
            )
        await rig.store.write(f"{STAGING_PREFIX}abandoned-0002", b"nobody committed me")
        status, report = fsck(settings, "--grace", "0")
        assert status == 1
        assert report["pending"] == [key(path)]
        assert report["stale_staging"] == [f"{STAGING_PREFIX}abandoned-0002"]
        assert report["missing"] == [] and report["orphans"] == []  # a pending write is not lost
        status, repaired = fsck(settings, "--repair", "--grace", "0")
        assert status == 0, repaired
        assert (repaired["repair"]["published"], repaired["repair"]["staging_removed"]) == (1, 1)
        assert repaired["after"]["ok"] is True
        digest, _ = await rig.store.sha256(key(path))
        assert digest == hashes[path]
    finally:
        await rig.close()


@pytest.mark.parametrize("combo", PAIRS)
async def test_repair_with_grace_zero_finishes_an_intent_left_a_moment_ago(
    backends: Backends, combo: str
) -> None:
    """Every server stopped right after a crash: `grace` 0 must leave nothing pending, however
    young (a CI crash campaign once found six publishes left after its final repair)."""
    settings = await backends.settings(combo)
    hashes = await seed(settings)
    rig = Rig(settings)
    publisher = Publisher(rig.db, rig.store, Metrics())
    try:
        paths = LESSONS[:3]
        async with rig.db.write() as tx:
            conn = tx.conn
            for n, path in enumerate(paths):
                staged = f"{STAGING_PREFIX}just-left-{n:04d}"
                await rig.store.copy(key(path), staged)
                await rig.store.delete(key(path))
                await conn.execute(
                    update(file_journal)
                    .where(file_journal.c.path == path)
                    .values(publish_pending=True, staging_key=staged, pending_since=datetime.now(UTC))
                )
        found = await check(rig.db, rig.store)
        assert sorted(found.pending) == sorted(key(path) for path in paths)
        repaired = await repair(rig.db, rig.store, publisher, found, timedelta(0))
        assert repaired.published == len(paths)
        after = await check(rig.db, rig.store)
        assert after.ok, after.as_dict()
        for path in paths:
            assert (await rig.store.sha256(key(path)))[0] == hashes[path]
        # With a grace period, a write that young is still its writer's to finish.
        async with rig.db.write() as tx:
            conn = tx.conn
            staged = f"{STAGING_PREFIX}in-flight-0000"
            await rig.store.copy(key(paths[0]), staged)
            await conn.execute(
                update(file_journal)
                .where(file_journal.c.path == paths[0])
                .values(publish_pending=True, staging_key=staged, pending_since=datetime.now(UTC))
            )
        assert (await publisher.recover(timedelta(seconds=60))).published == 0
    finally:
        await rig.close()


async def test_repair_in_a_loop_beside_live_writers_loses_nothing(backends: Backends) -> None:
    """C-6 in short: repair in a loop with the shortest grace the write protocol allows beside
    live writers, racing 8 writers and deleters.

    A write commits its staged bytes within half the grace or not at all, so repair with the
    same grace never takes staged bytes a commit may still use. Grace 0 is for when every
    server is stopped: beside live writers it may remove bytes staged a moment before their
    commit (a loaded CI run did), which is why the grace exists.
    """
    settings = await backends.settings("postgres-fs", recovery_grace=6.0)
    grace = timedelta(seconds=settings.recovery_grace)
    server = create_server(settings, background=False)
    rig = Rig(settings)
    publisher = Publisher(rig.db, rig.store, Metrics())
    stop = asyncio.Event()
    repairs = 0

    async def repairer() -> None:
        nonlocal repairs
        while not stop.is_set():
            report = await check(rig.db, rig.store)
            await repair(rig.db, rig.store, publisher, report, grace)
            repairs += 1

    async def writer(c: Client[Any], n: int) -> None:
        path = f"content/02-Load/01-Race/{n:02d}-lesson.md"
        current: str | None = None
        for round_ in range(25):
            if round_ % 7 == 6 and current is not None:
                await call(c, "delete_content", book_id=BOOK, path=path)
                current = None
                continue
            args: dict[str, Any] = {"book_id": BOOK, "path": path, "content": f"# {n} round {round_}\n"}
            if current is not None:
                args["expected_hash"] = current
            current = (await call(c, "write_content", **args))["file_hash"]

    try:
        async with client(server, agent="racer") as c:
            task = asyncio.create_task(repairer())
            await asyncio.gather(*(writer(c, n) for n in range(8)))
            stop.set()
            await task
        final = await check(rig.db, rig.store)
        assert final.ok, final.as_dict()
        assert repairs >= 3
        assert await rig.store.list(QUARANTINE_PREFIX) == []  # nothing live was ever taken for stray
    finally:
        await rig.close()


async def test_the_server_exports_its_periodic_check_as_metrics(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("sqlite-fs")
    await seed(settings)
    rig = Rig(settings)
    try:
        await rig.store.delete(key(LESSONS[0]))
        await rig.store.write(key("static/img/stray.png"), b"stray")
    finally:
        await rig.close()
    # Grace 0 so that the stray object, seconds old, already counts as an orphan.
    extra = {"PANAVERSITY_FSCK_INTERVAL": "0.5", "PANAVERSITY_RECOVERY_GRACE": "0"}
    with ServerProcess(settings, tmp_path / "server.log", **extra) as server:
        deadline = time.monotonic() + 30
        samples: dict[str, float] = {}
        while time.monotonic() < deadline:
            text = httpx.get(f"{server.url}/metrics").text
            samples = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in text.splitlines()
                if line.startswith("panaversityfs_fsck_")
            }
            if samples.get("panaversityfs_fsck_last_run_timestamp_seconds"):
                break
            await asyncio.sleep(0.2)
        async with Client(f"{server.url}/mcp", client_info=Implementation(name="probe", version="1")) as c:
            await call(c, "read_content", book_id=BOOK, path=LESSONS[1])
    assert samples['panaversityfs_fsck_problems{kind="missing"}'] == 1
    assert samples['panaversityfs_fsck_problems{kind="orphans"}'] == 1
    assert samples['panaversityfs_fsck_problems{kind="corrupt"}'] == 0
    assert samples["panaversityfs_fsck_last_run_timestamp_seconds"] > time.time() - 60
    assert "users/" not in json.dumps(samples)
