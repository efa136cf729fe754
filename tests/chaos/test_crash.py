"""C-2, short: the crash campaign of `tests.crash_campaign` with fewer writes per writer, but
still at least 20 SIGKILLs (and 5 PostgreSQL crashes on postgres-s3 and postgres-fs).

`PFS_CRASH_SEED` replays a seed; `PFS_CRASH_WRITES` changes the writes per writer. The long
run is `uv run python -m tests.crash_campaign --seed N --writes 250 --backend postgres-s3`.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from tests.cluster import ClusterUnavailable
from tests.conftest import backend_unavailable
from tests.crash_campaign import Backend, CampaignConfig, Slot, check_history, run_campaign

WRITES = int(os.environ.get("PFS_CRASH_WRITES", "40"))


def _seed() -> int:
    return int(os.environ.get("PFS_CRASH_SEED") or random.randrange(1 << 30))


@pytest.mark.slow
@pytest.mark.timeout(280)
@pytest.mark.parametrize(("backend", "replicas"), [("postgres-s3", 3), ("postgres-fs", 2), ("sqlite-fs", 1)])
async def test_crash_campaign(backend: Backend, replicas: int, tmp_path: Path) -> None:
    seed = _seed()
    print(f"crash campaign: backend={backend} seed={seed} (replay: PFS_CRASH_SEED={seed})")
    config = CampaignConfig(
        seed=seed, backend=backend, replicas=replicas, writes=WRITES, max_seconds=200, workdir=tmp_path
    )
    try:
        report = await run_campaign(config)
    except ClusterUnavailable as exc:
        backend_unavailable(
            "a private PostgreSQL cluster", exc, ci_note="the crash campaign needs its own PostgreSQL cluster"
        )
    print(report.summary())
    assert not report.violations, (
        f"{report.summary()}\nreplay: PFS_CRASH_SEED={seed} or "
        f"`python -m tests.crash_campaign --seed {seed} --backend {backend}`; logs in {tmp_path}\n"
        + "\n".join(report.violations[:40])
    )
    stats = report.stats
    assert stats["kills"] >= config.min_kills
    assert stats["restarts"] >= stats["kills"]
    if backend.startswith("postgres"):
        assert stats["pg_restarts"] >= config.min_pg_restarts
    assert stats["acked"] >= config.writers * WRITES // 2, report.summary()
    shutil.rmtree(tmp_path, ignore_errors=True)


H1, H2, H3 = ("1" * 64, "2" * 64, "3" * 64)
SLOT = Slot("crash-book-a", "content/01-Part/01-Chapter/01-lesson-0.md", None)
AGENT = "crash-writer-0"


def _entry(
    seq: int, prev: str | None, new: str | None, operation: str = "write_content"
) -> dict[str, object]:
    return {
        "seq": seq,
        "operation": operation,
        "status": "success",
        "prev_hash": prev,
        "new_hash": new,
        "agent_id": AGENT,
    }


def _attempt(
    name: str, expected: str | None, new: str | None, outcome: str = "acked", **more: object
) -> dict[str, object]:
    tool = "write_content" if new is not None else "delete_content"
    return {"attempt": name, "tool": tool, "expected": expected, "new": new, "outcome": outcome, **more}


def test_the_oracle_accepts_a_clean_history_and_names_each_broken_guarantee() -> None:
    attempts = [_attempt("w0-0", None, H1), _attempt("w0-1", H1, H2), _attempt("w0-2", H2, None)]
    entries = [_entry(1, None, H1), _entry(2, H1, H2), _entry(3, H2, None, "delete_content")]
    found: list[str] = []
    check_history(SLOT, AGENT, entries, attempts, None, found)
    assert found == []

    def problems(
        entries: list[dict[str, object]], attempts: list[dict[str, object]], stored: str | None
    ) -> str:
        found = []
        check_history(SLOT, AGENT, entries, attempts, stored, found)
        return "\n".join(found)

    forked = [_entry(1, None, H1), _entry(2, H1, H2), _entry(3, H1, H3)]
    assert "share a prev_hash" in problems(forked, [*attempts[:2], _attempt("w0-2", H1, H3)], H3)
    assert "no successful audit entry" in problems(entries[:1], attempts[:2], H1)
    assert "journal holds" in problems(entries[:2], attempts[:2], H1)
    claimed = [attempts[0], _attempt("w0-1", H1, H2, "ambiguous", code="UNAVAILABLE", outcome_unknown=False)]
    assert "was committed, but its call answered" in problems(entries[:2], claimed, H2)
    unknown = [attempts[0], _attempt("w0-1", H1, H2, "ambiguous", code="UNAVAILABLE", outcome_unknown=True)]
    assert problems(entries[:2], unknown, H2) == ""
    assert "no writer attempted" in problems(entries[:2], attempts[:1], H2)
    stranger = [entries[0], {**entries[1], "agent_id": "someone-else"}]
    assert "only crash-writer-0 writes it" in problems(stranger, attempts[:2], H2)
