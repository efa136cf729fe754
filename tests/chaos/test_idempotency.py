"""C-9 idempotency keys, and C-8: an unknown commit outcome retried under its key.

Replays (one after another and ten at once, on SQLite and PostgreSQL) return the first result
and apply once: one journal change, one audit entry. The same key with other arguments is
refused and changes nothing; a refused call keeps no key; keys are per agent; every mutating
tool takes one. A commit whose outcome the server could not learn is retried with the same key
and lands exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from panaversity_fs.app.server import create_server
from panaversity_fs.db import idempotency_sql as idem_sql
from panaversity_fs.db import journal_sql as journal
from panaversity_fs.db.audit_sql import AuditFilter, query_entries
from panaversity_fs.db.engine import Database
from panaversity_fs.errors import Unavailable
from panaversity_fs.files.fsck import check
from panaversity_fs.identity import Caller
from panaversity_fs.operation import Operation
from testkit.processes import ServerProcess
from tests.chaos.test_faults import AGENT, Injected, Rig
from tests.conftest import PAIRS, Backends
from tests.support import BOOK, LESSON, audit_of, call, client, error_of

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64


@pytest.mark.parametrize("combo", PAIRS)
async def test_c9_replays_one_after_another_and_ten_at_once_apply_once(
    backends: Backends, combo: str
) -> None:
    settings = await backends.settings(combo)
    server = create_server(settings)
    async with client(server, agent="retrying-agent") as c:
        created = await call(
            c, "write_content", book_id=BOOK, path=LESSON, content="# v1\n", idempotency_key="k-1"
        )
        again = await call(
            c, "write_content", book_id=BOOK, path=LESSON, content="# v1\n", idempotency_key="k-1"
        )
        assert again == created and created["mode"] == "created"

        async def update() -> dict[str, Any]:
            return await call(
                c,
                "write_content",
                book_id=BOOK,
                path=LESSON,
                content="# v2\n",
                expected_hash=created["file_hash"],
                idempotency_key="k-2",
            )

        results = await asyncio.gather(*(update() for _ in range(10)))
        assert all(result == results[0] for result in results), results
        assert results[0]["mode"] == "updated" and results[0]["version"] == created["version"] + 1
        read = await call(c, "read_content", book_id=BOOK, path=LESSON)
        assert (read["content"], read["file_hash"]) == ("# v2\n", results[0]["file_hash"])

        deletes = await asyncio.gather(
            *(call(c, "delete_content", book_id=BOOK, path=LESSON, idempotency_key="k-3") for _ in range(5))
        )
        assert all(d == deletes[0] for d in deletes) and deletes[0]["existed"] is True
        assert (await error_of(c, "read_content", book_id=BOOK, path=LESSON))["error"] == "NOT_FOUND"
    entries = await audit_of(settings, agent_id="retrying-agent")
    mutations = [(e["operation"], e["status"]) for e in entries if e["operation"] != "read_content"]
    assert mutations == [
        ("write_content", "success"),
        ("write_content", "success"),
        ("delete_content", "success"),
    ]


async def test_a_reused_key_a_refused_call_and_keys_per_agent(backends: Backends) -> None:
    settings = await backends.settings("postgres-fs")
    server = create_server(settings)
    async with client(server, agent="agent-a") as a, client(server, agent="agent-b") as b:
        first = await call(
            a, "write_content", book_id=BOOK, path=LESSON, content="# a\n", idempotency_key="same"
        )
        reused = await error_of(
            a, "write_content", book_id=BOOK, path=LESSON, content="# other\n", idempotency_key="same"
        )
        assert (reused["error"], reused["reused_key"]) == ("INVALID_ARGUMENT", True)
        assert (await call(a, "read_content", book_id=BOOK, path=LESSON))["content"] == "# a\n"

        # A refused call keeps no key: the same key can carry the corrected call.
        stale = "0" * 64
        path = "content/01-Intro/01-Basics/02-next.md"
        await call(a, "write_content", book_id=BOOK, path=path, content="# base\n")
        refused = await error_of(
            a,
            "write_content",
            book_id=BOOK,
            path=path,
            content="# x\n",
            expected_hash=stale,
            idempotency_key="fix",
        )
        assert refused["error"] == "CONFLICT"
        fixed = await call(
            a,
            "write_content",
            book_id=BOOK,
            path=path,
            content="# x\n",
            expected_hash=refused["current_hash"],
            idempotency_key="fix",
        )
        assert fixed["mode"] == "updated"

        # Another agent's "same" key is its own: its call runs (and is refused on its merits).
        theirs = await error_of(
            b, "write_content", book_id=BOOK, path=LESSON, content="# b\n", idempotency_key="same"
        )
        assert theirs["error"] == "HASH_REQUIRED" and theirs["current_hash"] == first["file_hash"]
        bad = await error_of(
            a, "write_content", book_id=BOOK, path=LESSON, content="x", idempotency_key="bad key!"
        )
        assert (bad["error"], bad["field"]) == ("INVALID_ARGUMENT", "idempotency_key")
    refusals = [e["error_code"] for e in await audit_of(settings, status="refused")]
    assert sorted(refusals) == ["CONFLICT", "HASH_REQUIRED", "INVALID_ARGUMENT", "INVALID_ARGUMENT"]


async def test_every_mutating_tool_takes_a_key(backends: Backends, tmp_path: Any) -> None:
    settings = await backends.settings("sqlite-fs")
    data = base64.b64encode(PNG).decode()
    with ServerProcess(settings, tmp_path / "server.log") as server:
        from fastmcp import Client
        from mcp_types import Implementation

        async with Client(
            f"{server.url}/mcp", client_info=Implementation(name="asset-bot", version="1")
        ) as c:
            inline = [
                await call(
                    c,
                    "upload_asset",
                    book_id=BOOK,
                    asset_type="img",
                    filename="a.png",
                    binary_data=data,
                    idempotency_key="up-1",
                )
                for _ in range(3)
            ]
            assert {r["file_hash"] for r in inline} == {inline[0]["file_hash"]} and inline[0][
                "mode"
            ] == "created"
            assert {r["version"] for r in inline} == {1}
            big = PNG * 10
            digest = __import__("hashlib").sha256(big).hexdigest()
            declared = await call(
                c,
                "upload_asset",
                book_id=BOOK,
                asset_type="img",
                filename="big.png",
                size=len(big),
                sha256=digest,
            )
            async with httpx.AsyncClient() as http:
                put = await http.put(declared["upload_url"], content=big, headers=declared["headers"])
                assert put.status_code in (200, 201, 204)
            completions = [
                await call(
                    c, "complete_asset_upload", upload_id=declared["upload_id"], idempotency_key="done-1"
                )
                for _ in range(3)
            ]
            assert {r["file_hash"] for r in completions} == {digest} and {
                r["version"] for r in completions
            } == {1}
            without_key = await error_of(c, "complete_asset_upload", upload_id=declared["upload_id"])
            assert without_key["error"] == "NOT_FOUND"  # consumed: only the key replays it
            removed = [
                await call(c, "delete_asset", book_id=BOOK, path="static/img/a.png", idempotency_key="rm-1")
                for _ in range(3)
            ]
            assert all(r["existed"] for r in removed)
            tools = {t.name: t for t in await c.list_tools()}
    for name in ("write_content", "delete_content", "upload_asset", "complete_asset_upload", "delete_asset"):
        assert "idempotency_key" in tools[name].input_schema["properties"], name
    ops = [e["operation"] for e in await audit_of(settings, agent_id="asset-bot", status="success")]
    assert ops.count("upload_asset") == 2 and ops.count("delete_asset") == 1


@pytest.mark.parametrize("combo", PAIRS)
async def test_c8_an_unknown_commit_retried_under_its_key_lands_exactly_once(
    backends: Backends, combo: str
) -> None:
    """COMMIT succeeds, the connection drops before the answer, and the lookup that would settle
    it fails too: the caller gets UNAVAILABLE with `outcome_unknown`, retries with its key, and
    gets the committed result — one journal change, one audit entry."""
    settings = await backends.settings(combo)
    rig = Rig(settings)
    armed = {"left": 1}
    keyed = Operation(Caller(AGENT), "write_content", idempotency_key="c8-key")

    def _mark_the_write(conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        # PostgreSQL sends the entry's INSERT inside the chain head's UPDATE (a CTE).
        if "INSERT INTO AUDIT_LOG" in statement.upper():
            conn.info["test_appends_audit"] = True

    def _commit_then_fail(conn: Any) -> None:
        if armed["left"] and conn.info.pop("test_appends_audit", False):  # the write's own transaction
            armed["left"] = 0
            conn.connection.dbapi_connection.commit()
            rig.plan.arm(1, False, frozenset({"database"}))  # the settling lookup fails as well
            raise OperationalError("COMMIT", None, Injected("connection lost after commit"))

    for engine in rig.db.transaction_engines:
        event.listen(engine, "before_cursor_execute", _mark_the_write)
        event.listen(engine, "commit", _commit_then_fail)

    try:
        with pytest.raises(Unavailable) as unknown:
            await rig.service.write(keyed, BOOK, LESSON, "# once\n")
        assert unknown.value.details.get("outcome_unknown") is True
        rig.plan.disarm()
        retried = await rig.service.write(keyed, BOOK, LESSON, "# once\n")
        async with rig.db.read() as conn:
            row = (await journal.fetch(conn, BOOK, LESSON, ["__base__"])).get("__base__")
        assert row is not None and (row.sha256, row.version) == (retried.file_hash, retried.version)
        assert retried.mode == "created" and retried.version == 1
        async with rig.db.read() as conn:
            entries = await query_entries(conn, AuditFilter(path=LESSON), 0, 100)
        assert [e["status"] for e in entries] == ["success"]
        # The bytes of the commit that was in doubt were kept, not discarded with the error.
        read = await rig.service.read(Operation(Caller(AGENT), "read_content"), BOOK, LESSON)
        assert read.text == "# once\n"
        await rig.publisher.recover(timedelta(0), now=datetime.now(UTC) + timedelta(minutes=1))
        assert (await check(rig.db, rig.store)).ok
    finally:
        await rig.close()


async def test_keys_are_forgotten_after_their_ttl(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    server = create_server(settings)
    async with client(server, agent="forgetful") as c:
        await call(c, "write_content", book_id=BOOK, path=LESSON, content="# v1\n", idempotency_key="old")
        db = Database.from_settings(settings)
        try:
            async with db.write() as tx:
                conn = tx.conn
                assert await idem_sql.prune(conn, datetime.now(UTC) + timedelta(seconds=1)) == 1
        finally:
            await db.dispose()
        # Forgotten: the same call now runs afresh, and the contract refuses it on its merits.
        again = await error_of(
            c, "write_content", book_id=BOOK, path=LESSON, content="# v1\n", idempotency_key="old"
        )
        assert again["error"] == "HASH_REQUIRED"
    assert json.dumps(again)
