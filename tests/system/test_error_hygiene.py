"""S-10: no answer carries a traceback, an absolute path, SQL, driver names or configuration.

Against a real server process (PostgreSQL + S3 and SQLite + fs), every tool from `tools/list`
is sent malformed arguments (wrong types, missing fields, unsafe paths, bad regexes, bad
cursors, naive times), the HTTP routes are sent forged tokens; then the dependencies fail
underneath it (PostgreSQL refusing connections; an S3 endpoint nobody listens on) and every
tool is called again. Every answer, error or not, is searched for what must never leak.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from fastmcp import Client
from mcp_types import Implementation

from panaversity_fs.config import Settings
from panaversity_fs.storage.blobs import BlobStore, StorageError
from testkit.processes import ServerProcess, free_port
from tests.conftest import PG_URL, Backends
from tests.support import BOOK, LESSON

FORBIDDEN_TEXT = (
    "Traceback",
    'File "',
    "/tmp",
    "/work",
    "/root",
    "site-packages",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "psycopg",
    "opendal",
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "DELETE FROM",
    "postgresql://",
    "sqlite+",
    "secret_access_key",
)

BAD_ARGUMENTS: list[dict[str, Any]] = [
    {},
    {"book_id": 12, "path": ["x"], "content": {"a": 1}, "user_id": 3.5},
    {"book_id": "../../etc", "path": "/etc/passwd", "user_id": "__base__"},
    {"book_id": BOOK, "path": "content/01-a/01-b/01-x.md\x00.png", "expected_hash": "*"},
    {"book_id": BOOK, "path": "a" * 5000, "pattern": "(a+)+$(?<=x)", "cursor": "garbage!"},
    {"book_id": BOOK, "since": "2026-01-01T00:00:00", "scope": "galaxy", "limit": -1},
    {"book_id": BOOK, "pattern": "[", "path_glob": "**/../*", "max_results": 10**12},
    {"book_id": BOOK, "asset_type": "exe", "filename": "../../x.png", "binary_data": "%%%"},
    {"upload_id": "../../../../etc/passwd", "from_seq": "one", "max_entries": 0},
]


def leaks(text: str, extra: tuple[str, ...]) -> list[str]:
    return [needle for needle in (*FORBIDDEN_TEXT, *extra) if needle and needle in text]


async def every_answer(url: str) -> list[tuple[str, str]]:
    """(what was called, answer text) for every tool x every bad argument set, plus good calls."""
    answers: list[tuple[str, str]] = []
    async with Client(url, client_info=Implementation(name="hygiene-probe", version="1")) as c:
        tools = sorted(tool.name for tool in await c.list_tools())
        assert len(tools) >= 15
        calls = [(tool, args) for tool in tools for args in BAD_ARGUMENTS]
        calls += [
            ("write_content", {"book_id": BOOK, "path": LESSON, "content": "# fine\n"}),
            ("read_content", {"book_id": BOOK, "path": LESSON}),
            ("grep_search", {"book_id": BOOK, "pattern": "fine"}),
        ]
        for tool, args in calls:
            result = await c.call_tool(tool, args, raise_on_error=False)
            text = (
                result.content[0].text  # type: ignore[union-attr]
                if result.is_error
                else json.dumps(result.structured_content)
            )
            if result.is_error:
                payload = json.loads(text)  # always a JSON error object
                assert {"error", "message"} <= set(payload), (tool, text)
            answers.append((f"{tool} {sorted(args)}", text))
    return answers


async def route_answers(base: str) -> list[tuple[str, str]]:
    answers = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for path in (
            f"/archives/{BOOK}.zip?token=forged.token",
            f"/archives/{BOOK}.zip?scope=../../etc",
            "/archives/..%2f..%2fetc.zip",
            "/assets/forged-token",
            "/uploads/forged-token",
            "/mcp/../../etc/passwd",
        ):
            response = await http.get(path)
            answers.append((f"GET {path} -> {response.status_code}", response.text))
        response = await http.put("/uploads/forged-token", content=b"x" * 100)
        answers.append((f"PUT /uploads -> {response.status_code}", response.text))
    return answers


def assert_clean(answers: list[tuple[str, str]], extra: tuple[str, ...]) -> None:
    dirty = [(what, leaks(text, extra), text[:300]) for what, text in answers if leaks(text, extra)]
    assert not dirty, dirty


def secrets_of(settings: Settings, tmp_path: Path) -> tuple[str, ...]:
    values = [str(tmp_path), settings.database_url, settings.database_url.rsplit("/", 1)[-1]]
    if settings.storage_backend == "fs":
        values.append(str(Path(settings.storage_root).absolute()))
    else:
        values += [settings.s3_endpoint or "", settings.s3_root.strip("/"), settings.s3_bucket or ""]
    return tuple(v for v in values if v)


@pytest.mark.parametrize("combo", ["postgres-s3", "sqlite-fs"])
async def test_s10_bad_input_answers_leak_nothing(backends: Backends, tmp_path: Path, combo: str) -> None:
    settings = await backends.settings(combo)
    with ServerProcess(settings, tmp_path / "server.log") as server:
        answers = await every_answer(f"{server.url}/mcp") + await route_answers(server.url)
    assert_clean(answers, secrets_of(settings, tmp_path))
    assert len(answers) >= 15 * len(BAD_ARGUMENTS)


async def test_s10_a_failing_database_leaks_nothing(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("postgres-fs")
    name = settings.database_url.rsplit("/", 1)[-1]
    with ServerProcess(settings, tmp_path / "server.log") as server:
        async with Client(f"{server.url}/mcp") as c:
            await c.call_tool("write_content", {"book_id": BOOK, "path": LESSON, "content": "# up\n"})
        admin = await asyncpg.connect(PG_URL)
        try:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            answers = await every_answer(f"{server.url}/mcp")
            async with httpx.AsyncClient(base_url=server.url) as http:
                ready = await http.get("/ready")
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()
    assert ready.status_code == 503 and ready.json()["database"] == "unavailable"
    unavailable = [text for _, text in answers if '"UNAVAILABLE"' in text]
    assert len(unavailable) >= 5, answers[:5]
    assert_clean([*answers, ("ready", ready.text)], secrets_of(settings, tmp_path))


async def test_s10_a_storage_nobody_answers_leaks_nothing(backends: Backends, tmp_path: Path) -> None:
    good = await backends.settings("sqlite-s3")
    settings = good.model_copy(
        update={"s3_endpoint": f"http://127.0.0.1:{free_port()}", "storage_timeout": 2.0}
    )
    with ServerProcess(settings, tmp_path / "server.log") as server:
        answers = await every_answer(f"{server.url}/mcp")
        async with httpx.AsyncClient(base_url=server.url) as http:
            ready = await http.get("/ready")
    assert ready.status_code == 503 and ready.json()["storage"] == "unavailable"
    assert any('"UNAVAILABLE"' in text for what, text in answers if what.startswith("write_content"))
    assert_clean([*answers, ("ready", ready.text)], secrets_of(settings, tmp_path))


async def test_every_opendal_failure_becomes_a_storage_error(backends: Backends) -> None:
    """OpenDAL's exceptions share no base class: a refused connection must still be a
    `StorageError` (UNAVAILABLE to callers), from every kind of call."""
    good = await backends.settings("sqlite-s3")
    dead = good.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}", "storage_timeout": 2.0})
    store = BlobStore.from_settings(dead)
    try:
        calls = {
            "read": store.read("k"),
            "write": store.write("k", b"x"),
            "list": store.list("books/"),
            "stat": store.stat("k"),
            "exists": store.exists("k"),
            "delete": store.delete("k"),
            "copy": store.copy("k", "j"),
            "sha256": store.sha256("k"),
        }
        for name, pending in calls.items():
            with pytest.raises(StorageError) as raised:
                await pending
            assert type(raised.value) is StorageError, name
    finally:
        store.close()
