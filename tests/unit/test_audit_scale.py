"""A-5: `panaversity-fs audit verify` streams: a long chain verifies in bounded memory.

A synthetic chain (default 100,000 entries; `PFS_A5_ENTRIES=1000000` for the test catalogue's full
size) is written into SQLite and PostgreSQL; the CLI, in a fresh process, must verify it whole
with its peak RSS under 200 MB, then name the entry an attacker edited. Speed is measured by
`bench/bench_audit.py` (docs/benchmarks.md), not asserted here.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import update

from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import audit_log
from testkit.chains import commit_tampering, verify_and_measure, write_chain
from testkit.processes import settings_env
from tests.conftest import Backends

ENTRIES = int(os.environ.get("PFS_A5_ENTRIES", "100000"))
RSS_LIMIT = 200 * 1024 * 1024


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
async def test_a5_a_long_chain_verifies_in_bounded_memory_and_an_edit_is_named(
    backends: Backends, kind: str
) -> None:
    settings = await backends.settings(f"{kind}-fs")
    db = Database.from_settings(settings)
    try:
        head = await write_chain(db, ENTRIES)
        assert head[0] == ENTRIES
        report, seconds, max_rss = verify_and_measure(settings_env(settings))
        assert (report["ok"], report["entries_checked"], report["head_seq"]) == (True, ENTRIES, ENTRIES)
        assert max_rss < RSS_LIMIT, f"peak RSS {max_rss / 2**20:.0f} MiB over {seconds:.1f} s"

        edited = ENTRIES * 2 // 3
        await commit_tampering(
            db, update(audit_log).where(audit_log.c.seq == edited).values(agent_id="mallory")
        )
    finally:
        await db.dispose()
    broken, _, _ = verify_and_measure(settings_env(settings))
    assert (broken["ok"], broken["first_bad_seq"], broken["reason"]) == (
        False,
        edited,
        "entry content altered",
    )
    assert broken["entries_checked"] == edited - 1
