"""Signed audit checkpoints: A-3's truncation and suffix re-hash, detected against checkpoints.

The chain alone cannot see a tail cut off with the head wound back, or a suffix re-hashed with
the head moved (`test_audit.py` shows both pass in-database verification). These tests show
that a checkpoint kept in storage catches both, at the right position, in 100 random trials
each, on SQLite and PostgreSQL; that forged, foreign and unsigned checkpoints are told apart;
that the server's monitor only checkpoints a chain that verifies; and that the CLI and the
`verify_audit` tool report a rewrite.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import update

from panaversity_fs.app.server import create_server
from panaversity_fs.audit.checkpoints import (
    Checkpoint,
    CheckpointReport,
    CheckpointSigner,
    CheckpointStore,
    check_against,
)
from panaversity_fs.audit.monitor import ChainMonitor
from panaversity_fs.audit.recorder import append_entries
from panaversity_fs.audit.verify import verify_connection
from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import audit_log
from panaversity_fs.metrics import Metrics
from panaversity_fs.storage.blobs import BlobStore
from testkit.chains import commit_tampering, committed_tampering
from testkit.processes import run_cli, settings_env
from tests.conftest import Backends
from tests.service.test_audit import build_chain, delete_from, entry, rehash_from, tampering, wind_head_back
from tests.support import BOOK, LESSON, call, client

SECRET = "f3c1a9e07b6d42c88e15a0b9d7c64f21aa03be5c9d8e7f60"
CHAIN = 300
EVERY = 25
TRIALS = 100


@pytest.fixture
def store(db_settings: Settings) -> Iterator[BlobStore]:
    blobs = BlobStore.from_settings(db_settings)
    try:
        yield blobs
    finally:
        blobs.close()


def signer(secret: str = SECRET) -> CheckpointSigner:
    return CheckpointSigner.from_settings(Settings(audit_checkpoint_secret=secret))


async def checkpoint_every(db: Database, store: BlobStore, rows: list[dict[str, Any]]) -> CheckpointStore:
    """Checkpoints at seq 25, 50, ..., 300 (as a server writing one per interval would)."""
    checkpoints = CheckpointStore(store, signer(), kept=1000)
    for seq in range(EVERY, len(rows) + 1, EVERY):
        await checkpoints.write(seq, rows[seq - 1]["entry_hash"])
    return checkpoints


async def test_a3_truncated_tail_with_the_head_wound_back_is_detected_against_checkpoints(
    db: Database, store: BlobStore
) -> None:
    rows = await build_chain(db, CHAIN)
    checkpoints = await checkpoint_every(db, store, rows)
    rng = random.Random(11)
    for k in [2, CHAIN, *(rng.randint(2, CHAIN) for _ in range(TRIALS - 2))]:
        async with tampering(db) as conn:
            await delete_from(conn, k)
            await wind_head_back(conn, k - 1, rows[k - 2]["entry_hash"])
            chain = await verify_connection(conn)
            report = await checkpoints.check(conn)
        assert chain.ok, k  # the database alone cannot tell
        exposing = -(-k // EVERY) * EVERY  # the first checkpoint at or after k
        assert (report.ok, report.missing_from, report.checkpoint_seq) == (False, k, exposing), (k, report)
        assert report.first_bad_seq == (k - 1) // EVERY * EVERY + 1  # after the newest intact checkpoint
        assert "truncated" in (report.reason or "")
        assert report.verified_seq == ((k - 1) // EVERY * EVERY or None)
    async with db.read() as conn:
        assert await checkpoints.check(conn) == CheckpointReport(True, CHAIN // EVERY, verified_seq=CHAIN)


async def test_a3_rehashed_suffix_with_the_head_moved_is_detected_against_checkpoints(
    db: Database, store: BlobStore
) -> None:
    rows = await build_chain(db, CHAIN)
    checkpoints = await checkpoint_every(db, store, rows)
    rng = random.Random(12)
    for k in [1, CHAIN, *(rng.randint(1, CHAIN) for _ in range(TRIALS - 2))]:
        async with tampering(db) as conn:
            new_head = await rehash_from(conn, k)
            await wind_head_back(conn, CHAIN, new_head)
            chain = await verify_connection(conn)
            report = await checkpoints.check(conn)
        assert chain.ok and chain.entries_checked == CHAIN, k
        last_good = (k - 1) // EVERY * EVERY
        assert (report.ok, report.first_bad_seq) == (False, last_good + 1), (k, report)
        assert report.checkpoint_seq == -(-k // EVERY) * EVERY
        assert report.first_bad_seq is not None and report.first_bad_seq <= k < report.first_bad_seq + EVERY
        assert "rewritten" in (report.reason or "")


async def test_forged_foreign_and_unsigned_checkpoints_are_told_apart(db: Database, store: BlobStore) -> None:
    rows = await build_chain(db, 60)
    mine = signer()
    good = mine.make(60, rows[59]["entry_hash"])
    assert mine.judge(good) == "valid"
    assert mine.judge(Checkpoint(60, rows[59]["entry_hash"], good.created_at)) == "unsigned"
    assert mine.judge(signer("0" * 8 + SECRET).make(60, rows[59]["entry_hash"])) == "foreign"
    # Moving a signed checkpoint to another position (or hash) breaks its signature.
    moved = Checkpoint(59, rows[58]["entry_hash"], good.created_at, good.key_id, good.signature)
    assert mine.judge(moved) == "forged"
    assert Checkpoint.parse(good.to_json()) == good

    async def fetch_moved(_seq: int) -> Checkpoint:
        return moved

    async with db.read() as conn:
        forged = await check_against(conn, [59], fetch_moved, mine)
        # Without a key nothing is signed, and an unsigned checkpoint is honoured.
        unsigned = CheckpointSigner(None).make(60, rows[59]["entry_hash"])

        async def fetch_unsigned(_seq: int) -> Checkpoint:
            return unsigned

        honoured = await check_against(conn, [60], fetch_unsigned, CheckpointSigner(None))
        # With a key, a planted unsigned checkpoint is passed over (it can neither hide nor fake tampering).
        ignored = await check_against(conn, [60], fetch_unsigned, mine)
        # An operator's own file signed before a key rotation still counts as their record.
        old_key = signer("0" * 8 + SECRET).make(60, rows[59]["entry_hash"])

        async def fetch_old(_seq: int) -> Checkpoint:
            return old_key

        kept = await check_against(conn, [60], fetch_old, mine, trusted=True)
        passed_over = await check_against(conn, [60], fetch_old, mine)
    assert (kept.ok, kept.verified_seq) == (True, 60)
    assert (passed_over.verified_seq, passed_over.ignored) == (None, 1)
    assert (forged.ok, forged.checkpoint_seq) == (False, 59) and "signature" in (forged.reason or "")
    assert (honoured.ok, honoured.verified_seq) == (True, 60)
    assert (ignored.ok, ignored.verified_seq, ignored.ignored) == (True, None, 1)
    with pytest.raises(ValidationError, match="32 bytes"):
        Settings(audit_checkpoint_secret="short")


async def test_the_monitor_checkpoints_only_a_chain_that_verifies(db: Database, store: BlobStore) -> None:
    checkpoints = CheckpointStore(store, signer(), kept=2)
    metrics = Metrics()
    monitor = ChainMonitor(db, checkpoints, metrics)
    empty = await monitor.run_once()
    assert empty.ok and empty.checkpoint_written is None  # nothing to checkpoint yet
    rows = await build_chain(db, 40)
    first = await monitor.run_once()
    assert (first.ok, first.entries_checked, first.checkpoint_written) == (True, 40, 40)
    again = await monitor.run_once()
    assert (again.ok, again.entries_checked, again.checkpoint_written) == (True, 0, None)
    for start in (41, 51, 61):
        async with db.write() as tx:
            await append_entries(tx, [entry(n) for n in range(start, start + 10)])
        assert (await monitor.run_once()).checkpoint_written == start + 9
    assert await checkpoints.seqs() == [60, 70]  # kept=2 prunes the oldest
    assert metrics.registry.get_sample_value("panaversityfs_audit_chain_valid") == 1
    assert metrics.registry.get_sample_value("panaversityfs_audit_checkpoint_seq") == 70

    # Entries appended after the last run are verified incrementally: an edit among them is caught.
    async with db.write() as tx:
        await append_entries(tx, [entry(n) for n in range(71, 81)])
    await commit_tampering(db, update(audit_log).where(audit_log.c.seq == 75).values(agent_id="mallory"))
    broken = await monitor.run_once()
    assert (broken.ok, broken.checkpoint_written) == (False, None)
    assert metrics.registry.get_sample_value("panaversityfs_audit_chain_valid") == 0
    assert await checkpoints.seqs() == [60, 70]
    assert rows[0]["seq"] == 1


@pytest.mark.parametrize("combo", ["sqlite-fs", "postgres-s3"])
async def test_cli_checkpoint_then_verify_against_it_after_truncation(
    backends: Backends, tmp_path: Path, combo: str
) -> None:
    settings = await backends.settings(combo, audit_checkpoint_secret=SECRET)
    env = settings_env(settings) | {"PANAVERSITY_AUDIT_CHECKPOINT_SECRET": SECRET}
    db = Database.from_settings(settings)
    try:
        rows = await build_chain(db, 50)
        made = run_cli(env, "audit", "checkpoint")
        assert made.returncode == 0, made.stderr
        saved = tmp_path / "checkpoint.json"
        saved.write_text(made.stdout)
        checkpoint = Checkpoint.parse(made.stdout)
        assert (checkpoint.seq, checkpoint.head_hash) == (50, rows[-1]["entry_hash"])
        assert signer().judge(checkpoint) == "valid"
        store = BlobStore.from_settings(settings)
        try:
            assert (store_keys := await CheckpointStore(store, signer(), 10).seqs()) == [50], store_keys
        finally:
            store.close()
        clean = run_cli(env, "audit", "verify", "--against", str(saved))
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert json.loads(clean.stdout)["checkpoints"]["verified_seq"] == 50

        async with committed_tampering(db) as conn:  # cut the last 10 entries and wind the head back
            await delete_from(conn, 41)
            await wind_head_back(conn, 40, rows[39]["entry_hash"])
    finally:
        await db.dispose()

    chain_only = run_cli(env, "audit", "verify", "--no-checkpoints")
    assert chain_only.returncode == 0  # documented: the database alone cannot tell
    stored = run_cli(env, "audit", "verify")
    against = run_cli(env, "audit", "verify", "--no-checkpoints", "--against", str(saved))
    for result, key in ((stored, "checkpoints"), (against, "against")):
        assert result.returncode == 1, result.stdout + result.stderr
        out = json.loads(result.stdout)
        found = out[key] if key == "checkpoints" else out[key][0]
        assert (out["ok"], out["chain_ok"]) == (False, True)
        assert (found["missing_from"], found["checkpoint_seq"]) == (41, 50)
        assert found["first_bad_seq"] == 1  # no older checkpoint vouches for entries 1-40
    refused = run_cli(env, "audit", "checkpoint")
    assert refused.returncode == 1 and "no checkpoint made" in refused.stderr
    # After a deliberate restore to that shorter chain, the operator retires what it outdated.
    dry = run_cli(env, "audit", "retire-checkpoints")
    assert (dry.returncode, json.loads(dry.stdout)) == (0, {"would_retire": [50]})
    assert run_cli(env, "audit", "verify").returncode == 1  # a dry run moves nothing
    retired = run_cli(env, "audit", "retire-checkpoints", "--yes")
    assert retired.returncode == 0 and json.loads(retired.stdout)["retired"] == [50]
    assert run_cli(env, "audit", "verify").returncode == 0
    renewed = run_cli(env, "audit", "checkpoint")
    assert renewed.returncode == 0 and Checkpoint.parse(renewed.stdout).seq == 40
    bad_file = tmp_path / "bad.json"
    bad_file.write_text('{"seq": "x"}')
    assert run_cli(env, "audit", "verify", "--against", str(bad_file)).returncode == 2


async def test_verify_audit_tool_reports_a_rewrite_caught_by_a_checkpoint(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs", audit_checkpoint_secret=SECRET)
    server = create_server(settings, background=False)
    db, store = Database.from_settings(settings), BlobStore.from_settings(settings)
    checkpoints = CheckpointStore(store, signer(), kept=10)
    try:
        async with client(server) as c:
            created = await call(c, "write_content", book_id=BOOK, path=LESSON, content="# one\n")
            await call(
                c,
                "write_content",
                book_id=BOOK,
                path=LESSON,
                content="# two\n",
                expected_hash=created["file_hash"],
            )
            async with db.read() as conn:
                report = await verify_connection(conn)
            assert report.ok and report.last_hash is not None
            await checkpoints.write(report.head_seq, report.last_hash)
            intact = await call(c, "verify_audit")
            assert (intact["ok"], intact["checkpoint_seq"]) == (True, report.head_seq)
            async with committed_tampering(db) as conn:
                new_head = await rehash_from(conn, 1)
                await wind_head_back(conn, report.head_seq, new_head)
            broken = await call(c, "verify_audit")
    finally:
        store.close()
        await db.dispose()
    assert broken["ok"] is False and broken["first_broken_seq"] == 1
    assert "rewritten" in broken["reason"] and broken["checkpoint_seq"] is None
    assert await checkpoints.seqs() == [report.head_seq]
