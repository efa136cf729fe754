"""The real server process over real HTTP: routes, transport protection, metrics, clean exit."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import httpx
from fastmcp import Client
from mcp_types import Implementation

from panaversity_fs.db import audit_sql as audit_repository
from panaversity_fs.db.engine import Database
from testkit.processes import ServerProcess, run_cli, settings_env
from tests.conftest import Backends
from tests.support import BOOK, HEADERS, INIT, LESSON, call, error_of


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


async def test_tools_routes_and_metrics_over_http(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("postgres-s3")
    with ServerProcess(settings, tmp_path / "server.log") as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/health")).json()["status"] == "ok"
            ready = (await http.get("/ready")).json()
            assert ready == {"status": "ready", "database": "ok", "storage": "ok"}
        agent = Implementation(name="claude-lesson-writer-7", version="1")
        async with Client(f"{server.url}/mcp", client_info=agent) as c:
            created = await call(c, "write_content", book_id=BOOK, path=LESSON, content="# hi\n")
            await call(
                c,
                "write_content",
                book_id=BOOK,
                path=LESSON,
                content="# hi 2\n",
                expected_hash=created["file_hash"],
            )
            conflict = await error_of(
                c, "write_content", book_id=BOOK, path=LESSON, content="x", expected_hash=created["file_hash"]
            )
            read = await call(c, "read_content", book_id=BOOK, path=LESSON)
            tools = {tool.name: tool for tool in await c.list_tools()}
        assert conflict["error"] == "CONFLICT"
        assert read["content"] == "# hi 2\n"
        assert (
            tools["read_content"].annotations is not None and tools["read_content"].annotations.read_only_hint
        )
        assert (
            tools["delete_content"].annotations is not None
            and tools["delete_content"].annotations.destructive_hint
        )
        assert all(tool.output_schema for tool in tools.values())
        async with httpx.AsyncClient(base_url=server.url) as http:
            metrics = (await http.get("/metrics")).text
        writes = {"book_id": BOOK}
        assert _metric(metrics, "panaversityfs_write_total", **writes, status="success", mode="create") == 1
        assert _metric(metrics, "panaversityfs_write_total", **writes, status="success", mode="update") == 1
        assert _metric(metrics, "panaversityfs_write_total", **writes, status="conflict", mode="unknown") == 1
        assert _metric(metrics, "panaversityfs_read_total", status="success", source="base") == 1
        assert LESSON not in metrics and "claude-lesson-writer-7" not in metrics
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            history = await audit_repository.file_history(conn, BOOK, LESSON, "__base__")
    finally:
        await db.dispose()
    assert {entry["agent_id"] for entry in history} == {"claude-lesson-writer-7"}
    assert [e["status"] for e in history if e["operation"] == "write_content"] == [
        "success",
        "success",
        "refused",
    ]


async def test_dns_rebinding_and_body_limits(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("sqlite-fs")
    with ServerProcess(settings, tmp_path / "server.log") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            ok = await http.post("/mcp", json=INIT, headers=HEADERS)
            evil_host = await http.post("/mcp", json=INIT, headers=HEADERS | {"Host": "evil.example"})
            evil_origin = await http.post(
                "/mcp", json=INIT, headers=HEADERS | {"Origin": "http://evil.example"}
            )
            null_origin = await http.post("/mcp", json=INIT, headers=HEADERS | {"Origin": "null"})
            local_origin = await http.post(
                "/mcp", json=INIT, headers=HEADERS | {"Origin": f"http://127.0.0.1:{server.port}"}
            )
            text_plain = await http.post(
                "/mcp", content=b"{}", headers=HEADERS | {"Content-Type": "text/plain"}
            )
            huge = await http.post("/mcp", content=b"x" * (settings.request_body_limit + 1), headers=HEADERS)
    assert ok.status_code == 200
    assert evil_host.status_code == 421
    assert evil_origin.status_code == 403 and null_origin.status_code == 403
    assert local_origin.status_code == 200
    assert text_plain.status_code in (400, 415)
    assert huge.status_code == 413


async def test_public_bind_without_allow_list_refuses_to_start(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    env = settings_env(settings) | {"PANAVERSITY_SERVER_HOST": "0.0.0.0"}
    result = await asyncio.to_thread(run_cli, env, "serve", "--port", "0")
    assert result.returncode == 2
    assert "PANAVERSITY_ALLOWED_HOSTS" in result.stderr


async def test_server_exits_cleanly_every_time(backends: Backends, tmp_path: Path) -> None:
    """OpenDAL must never abort the interpreter at exit: 30 start/stop cycles all exit 0."""
    settings = [await backends.settings("sqlite-fs") for _ in range(3)]

    async def cycle(n: int) -> int:
        server = ServerProcess(settings[n % 3], tmp_path / f"server-{n}.log")
        await asyncio.to_thread(server.start)
        async with Client(
            f"{server.url}/mcp", client_info=Implementation(name="exit-probe", version="1")
        ) as c:
            await call(c, "write_content", book_id=BOOK, path=f"content/01-a/01-b/{n:02d}-x.md", content="x")
        status = await asyncio.to_thread(server.stop, signal.SIGTERM)
        assert status == 0, server.log_tail()
        return status

    statuses: list[int] = []
    for batch in range(10):
        statuses += await asyncio.gather(*(cycle(batch * 3 + i) for i in range(3)))
    assert statuses == [0] * 30, statuses


async def test_cli_exits_cleanly_every_time(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    env = settings_env(settings)

    def run_once() -> int:
        return run_cli(env, "recover", "--grace", "0").returncode

    statuses: list[int] = []
    for _ in range(10):
        statuses += await asyncio.gather(*(asyncio.to_thread(run_once) for _ in range(3)))
    assert statuses == [0] * 30, statuses
