"""Batched read audit entries: every queued entry is appended exactly once, even when the
batcher is cancelled (server shutdown) while its transaction is in flight."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy import func, select

from panaversity_fs.audit.recorder import AuditRecorder
from panaversity_fs.audit.verify import verify_database
from panaversity_fs.config import Settings
from panaversity_fs.db.audit_sql import NewAuditEntry
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import audit_chain_head, audit_log
from tests.support import audit_entry


def _entry(n: int) -> NewAuditEntry:
    return audit_entry(path=f"content/01-A/01-B/{n:02d}-x.md")


async def _count(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(audit_log))).scalar_one())


async def test_cancelling_the_batcher_mid_flush_neither_loses_nor_duplicates(db_settings: Settings) -> None:
    db = Database.from_settings(db_settings)
    recorder = AuditRecorder(db, batch_interval=0.01)
    try:
        async with db.write() as tx:
            await recorder.append(tx, _entry(0))  # creates the chain head row
        for n in range(1, 6):
            recorder.enqueue(_entry(n))
        release = asyncio.Event()
        held = asyncio.Event()

        async def hold_the_chain() -> None:
            # The batcher's append needs the chain head: hold it so its flush waits mid-way.
            async with db.write() as tx:
                conn = tx.conn
                await conn.execute(select(audit_chain_head).with_for_update())
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold_the_chain())
        await held.wait()
        batcher = asyncio.create_task(recorder.run())
        await asyncio.sleep(0.3)
        assert await _count(db) == 1  # the flush is blocked, nothing appended yet
        batcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await batcher
        release.set()
        await holder
        await recorder.flush()  # what the lifespan does at shutdown
        assert recorder.queued == 0
        assert await _count(db) == 6
        assert (await verify_database(db)).ok
    finally:
        await db.dispose()


async def test_cancelling_the_batcher_at_any_instant_appends_each_entry_once(db_settings: Settings) -> None:
    """Sweep the cancellation point across a whole flush (BEGIN ... COMMIT, connection release)."""
    db = Database.from_settings(db_settings)
    recorder = AuditRecorder(db, batch_interval=0.0005)
    try:
        # How long one flush takes here, to spread the cancellation points over it.
        recorder.enqueue(_entry(0))
        started = asyncio.get_running_loop().time()
        await recorder.flush()
        span = asyncio.get_running_loop().time() - started
        expected = 1
        for step in range(120):
            for n in range(3):
                recorder.enqueue(_entry(n))
            expected += 3
            batcher = asyncio.create_task(recorder.run())
            await asyncio.sleep(span * 1.5 * step / 120)
            batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batcher
            await recorder.flush()
            assert recorder.queued == 0
            assert await _count(db) == expected, f"cancelled at step {step}"
        assert (await verify_database(db)).ok
    finally:
        await db.dispose()
