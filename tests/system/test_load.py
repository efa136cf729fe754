"""Short load runs (specs/test-catalogue.md L-1, L-2, L-3) against a real `panaversity-fs serve`.

Thresholds are loose, because this 2-core machine is shared: they catch a server that
falls over or answers wrongly under concurrency, not a slow one (testkit/loadgen.py measures).
After each run the store must be consistent: `fsck` and `audit verify` exit 0, and every
successful write the generator saw has exactly one successful audit entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.db.schema import audit_log
from testkit.load_scenarios import hot_key, mixed, read_smoke
from testkit.loadgen import Target, classify
from testkit.processes import ServerProcess, run_cli, settings_env
from tests.conftest import Backends

FILES = 40
"""Files seeded per book: enough for 8 agents to spread over, few enough to seed in ~1 s."""


def target_of(server: ServerProcess) -> Target:
    """The generator's view of `server`."""
    assert server.process is not None
    return Target([server.url], server_pid=server.process.pid)


async def audited_successful_writes(settings: Settings) -> int:
    """Successful `write_content` entries in the audit log."""
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            query = select(func.count()).where(
                audit_log.c.operation == "write_content", audit_log.c.status == "success"
            )
            return int((await conn.execute(query)).scalar_one())
    finally:
        await db.dispose()


async def assert_store_consistent(settings: Settings, generator_writes: int) -> None:
    """fsck and the audit chain are clean, and the audit log holds exactly the writes made."""
    env = settings_env(settings)
    fsck = run_cli(env, "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    verify = run_cli(env, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert await audited_successful_writes(settings) == generator_writes


def describe(result: dict[str, Any]) -> str:
    """The parts of a result worth reading when an assertion fails."""
    keys = ("tools", "errors_by_code", "cpu", "wall_s")
    return repr({k: result.get(k) for k in keys})


@pytest.mark.slow
@pytest.mark.parametrize("combo", ["sqlite-fs", "postgres-fs"])
async def test_reads_and_mixed_writes_under_load_leave_a_consistent_store(
    backends: Backends, tmp_path: Path, combo: str
) -> None:
    settings = await backends.settings(combo)
    with ServerProcess(settings, tmp_path / "server.log") as server:
        reads = await read_smoke(target_of(server), concurrency=8, duration=5.0, files=FILES)
        load = await mixed(target_of(server), concurrency=8, duration=10.0, files_per_book=FILES)

    assert reads["errors"] == 0, describe(reads)
    assert reads["tools"]["read_content"]["ok_per_s"] >= 40, describe(reads)
    assert load["errors"] == 0, describe(load)
    assert load["writes_per_s"] >= 10, describe(load)
    assert load["tools"]["write_content"]["ok"] > 0
    for result in (reads, load):
        assert result["writes_match_server"] is True, result
    await assert_store_consistent(settings, reads["successful_writes"] + load["successful_writes"])


@pytest.mark.slow
async def test_hot_key_writers_lose_with_conflict_only(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("postgres-fs")
    with ServerProcess(settings, tmp_path / "server.log") as server:
        race = await hot_key(target_of(server), concurrency=16, duration=5.0)

    assert race["all_losers_conflict"], race["losers_not_conflict"]
    assert race["http_5xx"] == 0
    assert race["read_failures"] == {}
    assert race["conflicts"] > 0, describe(race)
    assert race["successes_per_s"] >= 1, describe(race)
    assert race["version_advance_matches"], race
    assert race["writes_match_server"] is True, race
    await assert_store_consistent(settings, race["successful_writes"])


def answer(content_type: str, body: str, status: int = 200, **headers: str) -> httpx.Response:
    """A server answer as the generator receives it."""
    return httpx.Response(status, headers={"content-type": content_type, **headers}, content=body.encode())


def tool_result(request_id: int, text: str, *, is_error: bool = False, **result: Any) -> str:
    """A JSON-RPC `tools/call` result carrying `text` (plus, e.g., structuredContent)."""
    content = [{"type": "text", "text": text}]
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "result": {"content": content, "isError": is_error, **result}}
    )


def test_generator_reads_json_and_sse_answers_and_classifies_them() -> None:
    ok = tool_result(7, "{}", structuredContent={"file_hash": "ab"})
    shed = tool_result(
        7, json.dumps({"error": "UNAVAILABLE", "message": "busy", "retry_after": 2}), is_error=True
    )
    # A comment and a priming event (id, empty data) come before the answer on an SSE stream.
    sse = f": keep-alive\r\nid: 1\r\ndata:\r\n\r\nevent: message\r\ndata: {ok}\r\n\r\n"

    from_json = classify("read_content", answer("application/json", ok), 7, 0.01)
    assert from_json.ok and from_json.result == {"file_hash": "ab"}
    for line_end in ("\r\n", "\n", "\r"):
        stream = answer("text/event-stream", sse.replace("\r\n", line_end))
        from_sse = classify("read_content", stream, 7, 0.01)
        assert from_sse.ok and from_sse.result == {"file_hash": "ab"}, line_end

    refused = classify("write_content", answer("application/json", shed), 7, 0.01)
    assert (refused.status, refused.retry_after) == ("UNAVAILABLE", 2.0)
    throttled = classify("write_content", answer("text/plain", "", 429, **{"retry-after": "3"}), 7, 0.01)
    assert (throttled.status, throttled.retry_after) == ("HTTP_429", 3.0)
    assert classify("read_content", answer("text/html", "<html>"), 7, 0.01).status == "PROTOCOL"
    assert classify("read_content", answer("application/json", ok), 8, 0.01).status == "PROTOCOL"
