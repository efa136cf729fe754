"""The eleven findings of the outside attack on a running server, one section each.

Every test here failed on the code the attack ran against and passes since its fix
(docs/security.md, "Findings of the outside attack", names each fix and its test).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from fastmcp import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from mcp_types import Implementation

from testkit.processes import ServerProcess
from tests.books_support import lesson
from tests.conftest import Backends
from tests.support import BOOK, HEADERS, INIT, call, error_of

# -- 1. one grep must not stall the server -------------------------------------------------


async def test_1_a_pathological_grep_leaves_the_server_responsive(backends: Backends, tmp_path: Path) -> None:
    """`(a|b){1000}c` forces RE2's slow path: over 1 MiB it took 25 s on the event loop, and
    /health waited as long. Now it runs off the loop in bounded slices and stops at its budget."""
    settings = await backends.settings("sqlite-fs")
    path = lesson(1, 1, 1)
    with ServerProcess(settings, tmp_path / "server.log", PANAVERSITY_SEARCH_TIME_BUDGET="2") as server:
        agent = Implementation(name="grep-attacker", version="1")
        async with Client(f"{server.url}/mcp", client_info=agent, timeout=60) as c:
            await call(
                c, "write_content", book_id=BOOK, path=path, content="ab" * (1 << 19), user_id="mallory"
            )
            started = time.monotonic()
            grep = asyncio.create_task(
                call(c, "grep_search", book_id=BOOK, user_id="mallory", pattern="(a|b){1000}c")
            )
            slowest = 0.0
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                while not grep.done():
                    asked = time.monotonic()
                    assert (await http.get("/health")).status_code == 200
                    slowest = max(slowest, time.monotonic() - asked)
                    await asyncio.sleep(0.1)
            result = await grep
            took = time.monotonic() - started
            other = await call(c, "read_content", book_id=BOOK, path=path, user_id="mallory")
    assert slowest < 1.0, f"/health took {slowest:.2f} s during the grep"
    assert result["reason"] == "time_budget" and result["next_cursor"]
    assert took < 6.0, f"the grep ran {took:.1f} s past a 2 s budget"
    assert other["size"] == 1 << 20


async def test_1_a_pattern_needing_more_than_the_memory_bound_is_refused(backends: Backends) -> None:
    from panaversity_fs.app.server import create_server
    from tests.support import client

    settings = await backends.settings("sqlite-fs")
    async with client(create_server(settings)) as c:
        error = await error_of(c, "grep_search", book_id=BOOK, pattern=r"\pL{1000}")
    assert error["error"] == "INVALID_ARGUMENT" and error["field"] == "pattern"
    assert "too large" in error["reason"]


# -- 2. nobody grows /metrics; download refusals count as failed credentials --------------------


def _series(metrics: str, name: str) -> list[str]:
    return [line for line in metrics.splitlines() if line.startswith(name + "{")]


async def test_2_made_up_books_never_become_metric_labels(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("sqlite-fs")
    limits = {"PANAVERSITY_AUTH_FAILURES_PER_MINUTE": "10", "PANAVERSITY_RATE_LIMIT_BURST": "1"}
    with ServerProcess(settings, tmp_path / "server.log", **limits) as server:
        agent = Implementation(name="metrics-grower", version="1")
        async with Client(f"{server.url}/mcp", client_info=agent) as c:
            await call(c, "write_content", book_id=BOOK, path=lesson(1, 1, 1), content="# real\n")
            await call(
                c, "write_content", book_id="alice-notes", path=lesson(1, 1, 1), content="x", user_id="alice"
            )
            refused = [
                await error_of(c, "delta_build", book_id=f"made-up-{n}", since="2020-01-01T00:00:00Z")
                for n in range(5)
            ]
            await call(c, "delta_build", book_id=BOOK, since="2020-01-01T00:00:00Z")
        async with httpx.AsyncClient(base_url=server.url) as http:
            statuses = [
                (await http.get(f"/archives/made-up-{n}.zip", params={"token": "x"})).status_code
                for n in range(40)
            ]
            last = await http.get("/archives/made-up-x.zip", params={"token": "x"})
            metrics = (await http.get("/metrics")).text
    assert {error["error"] for error in refused} == {"NOT_FOUND"}
    assert "made-up" not in metrics and "alice-notes" not in metrics
    assert len(_series(metrics, "panaversityfs_archive_total")) == 1  # book_id="other", refused
    assert 'panaversityfs_delta_files_count_count{book_id="python-book"} 1.0' in metrics
    assert statuses[:10] == [403] * 10 and 429 in statuses
    assert last.status_code == 429 and int(last.headers["Retry-After"]) >= 1


# -- 3. refused calls are limited before they are audited ----------------------------------------


async def test_3_a_token_without_scopes_cannot_flood_the_audit_chain(
    backends: Backends, tmp_path: Path
) -> None:
    from tests.auth_support import HS_ENV, audit_rows, hs_token

    settings = await backends.settings("postgres-fs")
    # 30 refusals at once, refilled at one every 20 s: the test cannot earn a 31st.
    env = HS_ENV | {"PANAVERSITY_REFUSALS_PER_MINUTE": "3", "PANAVERSITY_RATE_LIMIT_BURST": "10"}
    with ServerProcess(settings, tmp_path / "server.log", **env) as server:
        async with Client(f"{server.url}/mcp", auth=hs_token(sub="scopeless", scope="")) as c:
            answers = [
                await error_of(c, "write_content", book_id=BOOK, path=lesson(1, 1, 1), content="x")
                for _ in range(120)
            ]
    codes = [answer["error"] for answer in answers]
    entries = [row for row in await audit_rows(settings) if row["agent_id"] == "scopeless"]
    assert codes[:30] == ["FORBIDDEN"] * 30 and codes[30:] == ["RATE_LIMITED"] * 90
    assert [row["error_code"] for row in entries if row["error_code"] == "FORBIDDEN"] == ["FORBIDDEN"] * 30
    assert len([row for row in entries if row["error_code"] == "RATE_LIMITED"]) == 90


# -- 4. overlay-only books are personal ----------------------------------------------------------


async def test_4_list_books_shows_only_base_books_and_the_callers_own_overlay(backends: Backends) -> None:
    from panaversity_fs.app.server import create_server
    from tests.support import client

    settings = await backends.settings("postgres-fs")
    async with client(create_server(settings)) as c:
        await call(c, "write_content", book_id=BOOK, path=lesson(1, 1, 1), content="# base\n")
        before = await call(c, "list_books")
        await call(
            c, "write_content", book_id="alice-secret", path=lesson(1, 1, 1), content="a", user_id="alice"
        )
        await call(c, "write_content", book_id=BOOK, path=lesson(1, 1, 2), content="mine", user_id="alice")
        anyone = await call(c, "list_books")
        bob = await call(c, "list_books", user_id="bob")
        alice = await call(c, "list_books", user_id="alice")
        hidden = await error_of(c, "list_books", book_id="alice-secret", user_id="bob")
        never = await error_of(c, "list_books", book_id="never-was", user_id="bob")
    assert anyone == before == bob
    assert [(b["book_id"], b["overlay_files"]) for b in anyone["books"]] == [(BOOK, 0)]
    assert [(b["book_id"], b["overlay_files"]) for b in alice["books"]] == [("alice-secret", 1), (BOOK, 1)]
    # Alice's book is refused exactly as a book that never existed: nothing tells it apart.
    assert hidden["error"] == "NOT_FOUND"
    assert str(hidden).replace("alice-secret", "?") == str(never).replace("never-was", "?")


# -- 5. only a verified token escapes the failed-login lockout ------------------------------------


async def test_5_bad_tokens_answered_404_elsewhere_are_still_locked_out(
    backends: Backends, tmp_path: Path
) -> None:
    """A 404 from a route that checks no token used to mark a bad token "recently accepted",
    which let it past the lockout later: an attacker could wash any number of guesses first."""
    from tests.auth_support import HS_ENV

    settings = await backends.settings("sqlite-fs")
    env = HS_ENV | {"PANAVERSITY_AUTH_FAILURES_PER_MINUTE": "5", "PANAVERSITY_RATE_LIMIT_BURST": "1"}
    guesses = [{"Authorization": f"Bearer guess-{n}", **HEADERS} for n in range(10)]
    with ServerProcess(settings, tmp_path / "server.log", **env) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            washed = [(await http.get("/no-such-route", headers=guess)).status_code for guess in guesses]
            other = {"Authorization": "Bearer locks-the-address-out", **HEADERS}
            failures = [(await http.post("/mcp", headers=other, json=INIT)).status_code for _ in range(6)]
            statuses = [(await http.post("/mcp", headers=guess, json=INIT)).status_code for guess in guesses]
    assert washed == [404] * 10 and failures == [401] * 5 + [429]
    assert statuses == [429] * 10


# -- 6. agent ids are visible text and never look like a reserved id -----------------------------

LOOKALIKES = [
    "system\u200b",
    "\u202emetsys",
    "sy\u00adstem",
    "System\ufe0f",
    "\u0455ystem",
    "ＳＹＳＴＥＭ",
    "unkn\u043ewn",
]


async def test_6_invisible_and_lookalike_client_names_are_refused(backends: Backends) -> None:
    from panaversity_fs.app.server import create_server
    from tests.support import client

    settings = await backends.settings("sqlite-fs")
    server = create_server(settings)
    for name in LOOKALIKES:
        async with client(server, agent=name) as c:
            error = await error_of(c, "list_books")
        assert error["error"] == "UNAUTHENTICATED", name
    async with client(server, agent="Claude Desktop 日本語") as c:
        assert (await call(c, "list_books"))["books"] == []


async def test_6_lookalike_subjects_get_401(backends: Backends, tmp_path: Path) -> None:
    from tests.auth_support import HS_ENV, hs_token

    settings = await backends.settings("sqlite-fs")
    env = HS_ENV | {"PANAVERSITY_AUTH_FAILURES_PER_MINUTE": "0"}
    with ServerProcess(settings, tmp_path / "server.log", **env) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for name in LOOKALIKES:
                headers = {"Authorization": f"Bearer {hs_token(sub=name)}", **HEADERS}
                assert (await http.post("/mcp", headers=headers, json=INIT)).status_code == 401, name


# -- 7. every bad input gets a typed JSON error ---------------------------------------------------


async def test_7_out_of_range_times_and_forged_cursors_are_invalid_arguments(backends: Backends) -> None:
    from panaversity_fs.app.server import create_server
    from panaversity_fs.paging import encode, query_digest
    from tests.support import client

    settings = await backends.settings("postgres-fs")
    extremes = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]
    async with client(create_server(settings)) as c:
        await call(c, "write_content", book_id=BOOK, path=lesson(1, 1, 1), content="x")
        errors = [await error_of(c, "delta_build", book_id=BOOK, since=moment) for moment in extremes]
        errors += [await error_of(c, "query_audit", since=moment) for moment in extremes]
        errors += [await error_of(c, "query_audit", until=moment) for moment in extremes]
        query = query_digest("query_audit", [None] * 8, None)
        forged = await error_of(c, "query_audit", cursor=encode(query, {"s": 10**30}))
        huge = await error_of(c, "query_audit", cursor=encode(query, {"s": 2**63}))
        fine = await call(c, "query_audit", cursor=encode(query, {"s": 2**63 - 1}))
    assert [(e["error"], e["field"]) for e in errors] == [("INVALID_ARGUMENT", "since")] * 4 + [
        ("INVALID_ARGUMENT", "until")
    ] * 2
    assert (
        (forged["error"], forged["field"]) == (huge["error"], huge["field"]) == ("INVALID_ARGUMENT", "cursor")
    )
    assert fine["entries"] == []


async def test_7_a_list_as_book_id_under_a_books_claim_is_an_audited_denial(
    backends: Backends, tmp_path: Path
) -> None:
    from tests.auth_support import HS_ENV, audit_rows, hs_token

    settings = await backends.settings("sqlite-fs")
    with ServerProcess(settings, tmp_path / "server.log", **HS_ENV) as server:
        async with Client(f"{server.url}/mcp", auth=hs_token(sub="limited", books=[BOOK])) as c:
            error = await error_of(c, "read_content", book_id=[BOOK], path=lesson(1, 1, 1))
    assert (error["error"], error["limit"]) == ("FORBIDDEN", "books")
    denials = [row for row in await audit_rows(settings) if row["agent_id"] == "limited"]
    assert [(row["operation"], row["error_code"]) for row in denials] == [("read_content", "FORBIDDEN")]


async def test_7_a_range_of_thousands_of_digits_is_unsatisfiable(backends: Backends, tmp_path: Path) -> None:
    import base64

    settings = await backends.settings("sqlite-fs")
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    with ServerProcess(settings, tmp_path / "server.log") as server:
        async with Client(f"{server.url}/mcp", client_info=Implementation(name="ranger", version="1")) as c:
            await call(
                c,
                "upload_asset",
                book_id=BOOK,
                asset_type="images",
                filename="a.png",
                binary_data=base64.b64encode(png).decode(),
            )
            url = (await call(c, "get_asset", book_id=BOOK, path="static/images/a.png"))["download_url"]
        async with httpx.AsyncClient() as http:
            far = await http.get(url, headers={"Range": "bytes=" + "9" * 5000 + "-"})
            tail = await http.get(url, headers={"Range": "bytes=-" + "9" * 5000})
            end = await http.get(url, headers={"Range": "bytes=2-" + "9" * 5000})
    assert far.status_code == 416 and far.json()["error"] == "INVALID_ARGUMENT"
    assert tail.status_code == 206 and tail.content == png
    assert end.status_code == 206 and end.content == png[2:]


RAISED = [
    ValueError("v"),
    TypeError("t"),
    OverflowError("date value out of range"),
    KeyError("k"),
    RecursionError("r"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
    ZeroDivisionError("z"),
    OSError(5, "input/output error", "/srv/data/secret"),
    AttributeError("a"),
    RuntimeError("boom"),
    ExceptionGroup("g", [ValueError("inner")]),
]


def _minimal_arguments(schema: dict[str, object]) -> dict[str, object]:
    """Arguments of the right JSON types for every required parameter of a tool."""
    samples: dict[str, object] = {"string": "x", "integer": 1, "boolean": True, "number": 1.0}
    properties = schema.get("properties", {})
    assert isinstance(properties, dict)
    arguments: dict[str, object] = {}
    for name in schema.get("required", []):  # type: ignore[union-attr]
        spec = properties[name]
        kinds = [spec.get("type")] + [option.get("type") for option in spec.get("anyOf", [])]
        if "enum" in spec:
            arguments[name] = spec["enum"][0]
        else:
            arguments[name] = next(samples[kind] for kind in kinds if kind in samples)
    return arguments


async def test_7_no_tool_answers_anything_but_a_result_or_the_json_error(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a tool raises, the answer is the JSON error object: no traceback, no text."""
    import json

    from panaversity_fs.app.resources import ServerState
    from panaversity_fs.app.server import create_server
    from tests.support import client

    settings = await backends.settings("sqlite-fs")
    server = create_server(settings)
    raised: list[BaseException] = []

    def failing(_state: ServerState) -> None:
        raise raised[-1]

    async with client(server) as c:
        tools = await c.list_tools()
        monkeypatch.setattr(ServerState, "require", failing)
        for tool in tools:
            arguments = _minimal_arguments(tool.inputSchema)
            for exception in RAISED:
                raised.append(exception)
                result = await c.call_tool(tool.name, arguments, raise_on_error=False)
                assert result.is_error, (tool.name, exception)
                payload = json.loads(result.content[0].text)  # type: ignore[union-attr]
                assert payload["error"] == "INTERNAL", (tool.name, exception, payload)
                assert set(payload) == {"error", "message"}
                assert "secret" not in payload["message"] and "Traceback" not in payload["message"]


@examples(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_7_fuzzed_arguments_get_a_result_or_the_json_error(
    backends: Backends, data: st.DataObject
) -> None:
    import json

    from panaversity_fs.app.server import create_server
    from tests.support import client

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=6,
    )
    fuzz_settings = await backends.settings("sqlite-fs")
    async with client(create_server(fuzz_settings)) as c:
        for tool in await c.list_tools():
            names = list(tool.inputSchema.get("properties", {}))
            chosen = data.draw(st.lists(st.sampled_from(names), unique=True) if names else st.just([]))
            arguments = {name: data.draw(json_values) for name in chosen}
            result = await c.call_tool(tool.name, arguments, raise_on_error=False)
            if result.is_error:
                payload = json.loads(result.content[0].text)  # type: ignore[union-attr]
                assert isinstance(payload, dict) and {"error", "message"} <= set(payload), payload
                assert payload["error"] != "INTERNAL", (tool.name, arguments, payload)


# -- 8. import refuses hard links -----------------------------------------------------------------


async def test_8_import_refuses_a_hard_link_to_a_file_outside_the_folder(
    backends: Backends, tmp_path: Path
) -> None:
    import os

    from panaversity_fs.app.resources import open_resources
    from panaversity_fs.ops.importer import Importer

    settings = await backends.settings("sqlite-fs")
    secret = tmp_path / "outside" / "secret.md"
    secret.parent.mkdir()
    secret.write_text("# the server's secret\n")
    chapter = tmp_path / "book" / "content" / "01-Intro" / "01-Basics"
    chapter.mkdir(parents=True)
    (chapter / "01-hello.md").write_text("# hello\n")
    os.link(secret, chapter / "02-linked.md")
    async with open_resources(settings, background=False) as resources:
        report = await Importer(resources, BOOK, "importer").run(tmp_path / "book")
    rejected = {item["path"]: item["reason"] for item in report.as_dict()["rejected_files"]}
    assert report.created == ["content/01-Intro/01-Basics/01-hello.md"]
    assert "hard link" in rejected["content/01-Intro/01-Basics/02-linked.md"]


# -- 9. hydrate sends its token only to the server -------------------------------------------------


async def test_9_hydrate_never_sends_its_token_to_another_host(backends: Backends, tmp_path: Path) -> None:
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from testkit.processes import run_cli, settings_env

    seen: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    settings = await backends.settings("sqlite-fs")
    try:
        public = f"http://127.0.0.1:{elsewhere.server_address[1]}"
        with ServerProcess(settings, tmp_path / "server.log", PANAVERSITY_PUBLIC_URL=public) as server:
            async with Client(f"{server.url}/mcp", client_info=Implementation(name="seed", version="1")) as c:
                data = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()
                await call(
                    c, "upload_asset", book_id=BOOK, asset_type="images", filename="a.png", binary_data=data
                )
            hydrated = run_cli(
                settings_env(settings),
                "hydrate",
                BOOK,
                str(tmp_path / "site"),
                "--server",
                server.url,
                "--token",
                "the-bearer-token",
            )
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()
    assert hydrated.returncode == 1 and "HTTP 404" in hydrated.stdout + hydrated.stderr
    assert seen == [None]


# -- 10. plan_build of a made-up book ------------------------------------------------------------


async def test_10_plan_build_of_a_made_up_book_stores_nothing(backends: Backends) -> None:
    import sqlalchemy as sa

    from panaversity_fs.app.server import create_server
    from panaversity_fs.db.engine import Database
    from panaversity_fs.db.schema import manifest_snapshot
    from tests.support import client

    settings = await backends.settings("postgres-fs")
    async with client(create_server(settings)) as c:
        errors = [await error_of(c, "plan_build", book_id=f"made-up-{n}") for n in range(20)]
    db = Database.from_settings(settings)
    try:
        async with db.read() as conn:
            stored = (
                await conn.execute(sa.select(sa.func.count()).select_from(manifest_snapshot))
            ).scalar_one()
    finally:
        await db.dispose()
    assert {error["error"] for error in errors} == {"NOT_FOUND"} and stored == 0


# -- 11. the smaller ones ---------------------------------------------------------------------------


async def _archive_url(server_url: str, agent: str) -> str:
    async with Client(f"{server_url}/mcp", client_info=Implementation(name=agent, version="1")) as c:
        return (await call(c, "get_book_archive", book_id=BOOK, scope="all"))["url"]


async def test_11_archive_streams_are_bounded_in_all_and_per_agent(
    backends: Backends, tmp_path: Path
) -> None:
    import base64
    import os

    settings = await backends.settings("sqlite-fs")
    env = {
        "PANAVERSITY_ARCHIVE_STREAMS": "3",
        "PANAVERSITY_ARCHIVE_STREAMS_PER_AGENT": "2",
        "PANAVERSITY_ARCHIVE_STALL_TIMEOUT": "2",
    }
    with ServerProcess(settings, tmp_path / "server.log", **env) as server:
        async with Client(f"{server.url}/mcp", client_info=Implementation(name="seed", version="1")) as c:
            for n in range(12):  # 24 MiB that do not compress: more than the socket buffers hold
                data = base64.b64encode(b"\x89PNG\r\n\x1a\n" + os.urandom(2 * 1024 * 1024 - 64)).decode()
                await call(
                    c,
                    "upload_asset",
                    book_id=BOOK,
                    asset_type="images",
                    filename=f"{n}.png",
                    binary_data=data,
                )
        first, second = await _archive_url(server.url, "reader-1"), await _archive_url(server.url, "reader-2")
        async with httpx.AsyncClient(timeout=30) as http:
            opened = []
            for url in (first, first, first, second, second):
                request = http.build_request("GET", url)
                opened.append(await http.send(request, stream=True))  # never read: a stalled client
            statuses = [response.status_code for response in opened]
            over_agent, over_total = opened[2], opened[4]
            started = time.monotonic()
            while time.monotonic() - started < 15:  # the stalled streams are cut off and free their slots
                retry = await http.get(second)
                if retry.status_code == 200:
                    break
                await asyncio.sleep(0.5)
            for response in opened:
                await response.aclose()
    assert statuses == [200, 200, 429, 200, 503]
    assert over_agent.headers["Retry-After"] and over_total.headers["Retry-After"]
    assert retry.status_code == 200 and retry.content[:2] == b"PK"


async def test_11_the_body_limit_admits_the_largest_valid_lesson(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("sqlite-fs")
    escaped = "\x01" * (2 * 1024 * 1024)  # 2 MiB of text, 12 MiB of JSON
    with ServerProcess(settings, tmp_path / "server.log") as server:
        async with Client(f"{server.url}/mcp", client_info=Implementation(name="big", version="1")) as c:
            written = await call(c, "write_content", book_id=BOOK, path=lesson(1, 1, 1), content=escaped)
            too_big = await error_of(
                c, "write_content", book_id=BOOK, path=lesson(1, 1, 2), content=escaped + "x"
            )
    assert written["size"] == 2 * 1024 * 1024
    assert too_big["error"] == "TOO_LARGE"


def test_11_settings_refuse_short_secrets_and_a_body_limit_below_the_largest_write() -> None:
    from pydantic import ValidationError

    from panaversity_fs.config import Settings

    for values in (
        {"url_signing_secret": "short"},
        {"audit_checkpoint_secret": "x" * 31},
        {"max_request_bytes": 4 * 1024 * 1024},
    ):
        with pytest.raises(ValidationError):
            Settings(**values)  # pyright: ignore[reportArgumentType]
    assert Settings().request_body_limit == 6 * 2 * 1024 * 1024 + 64 * 1024


async def test_11_a_short_url_signing_secret_stops_serve_with_a_clean_message(backends: Backends) -> None:
    from testkit.processes import run_cli, settings_env

    settings = await backends.settings("sqlite-fs")
    result = run_cli(
        settings_env(settings) | {"PANAVERSITY_URL_SIGNING_SECRET": "too-short"}, "serve", "--port", "0"
    )
    assert result.returncode == 2
    assert "url_signing_secret" in result.stderr and "32 bytes" in result.stderr
    assert "Traceback" not in result.stderr and "too-short" not in result.stderr


async def test_11_exp_must_be_a_number_within_the_longest_lifetime(
    backends: Backends, tmp_path: Path
) -> None:
    from tests.auth_support import HS_ENV, hs_token

    settings = await backends.settings("sqlite-fs")
    now = int(time.time())
    env = HS_ENV | {"PANAVERSITY_AUTH_FAILURES_PER_MINUTE": "0", "PANAVERSITY_JWT_MAX_LIFETIME": "3600"}
    refused = {
        "numeric string": hs_token(exp=str(now + 600)),
        "1e30": hs_token(exp=1e30),
        "a day ahead": hs_token(exp=now + 86400),
        "iat string": hs_token(iat=str(now)),
    }
    with ServerProcess(settings, tmp_path / "server.log", **env) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:

            async def status(token: str) -> int:
                headers = {"Authorization": f"Bearer {token}", **HEADERS}
                return (await http.post("/mcp", headers=headers, json=INIT)).status_code

            statuses = {name: await status(token) for name, token in refused.items()}
            fine = await status(hs_token(exp=now + 3000))
    assert statuses == dict.fromkeys(refused, 401) and fine == 200


async def test_11_arguments_must_have_their_json_types_exactly(backends: Backends) -> None:
    from panaversity_fs.app.server import create_server
    from tests.support import client

    settings = await backends.settings("sqlite-fs")
    async with client(create_server(settings)) as c:
        size = await error_of(
            c, "upload_asset", book_id=BOOK, asset_type="images", filename="a.png", size=True, sha256="a" * 64
        )
        limit = await error_of(c, "list_assets", book_id=BOOK, limit="5")
        flag = await error_of(c, "validate_book", book_id=BOOK, strict="yes")
    assert size["error"] == limit["error"] == flag["error"] == "INVALID_ARGUMENT"
    assert "size" in size["message"] and "limit" in limit["message"] and "strict" in flag["message"]


async def test_11_only_the_servers_own_origin_or_a_configured_one_is_accepted(
    backends: Backends, tmp_path: Path
) -> None:
    settings = await backends.settings("sqlite-fs")
    with ServerProcess(
        settings, tmp_path / "server.log", PANAVERSITY_ALLOWED_ORIGINS='["https://editor.example"]'
    ) as server:
        port = server.url.rsplit(":", 1)[1]
        async with httpx.AsyncClient(base_url=server.url) as http:

            async def status(origin: str) -> int:
                return (await http.post("/mcp", headers={"Origin": origin, **HEADERS}, json=INIT)).status_code

            answers = {
                origin: await status(origin)
                for origin in (
                    f"http://127.0.0.1:{port}",
                    "https://editor.example",
                    "http://localhost:9999",
                    f"http://127.0.0.1:{int(port) + 1}",
                    "null",
                    "http://evil.example",
                )
            }
    assert list(answers.values()) == [200, 200, 403, 403, 403, 403]
