"""`get_book_archive` over MCP HTTP and its ZIP route over real HTTP, on every backend."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import zipfile
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastmcp import Client
from mcp_types import Implementation
from pydantic import SecretStr

from panaversity_fs.archive.builder import CHUNK, MANIFEST_NAME, WHOLE_READ_LIMIT
from panaversity_fs.config import Settings
from panaversity_fs.paths import storage_key
from panaversity_fs.signing import UrlSigner
from panaversity_fs.storage.blobs import BlobStore
from testkit.books import BookFile, journal_view, markdown, png, write_files
from tests.archive_support import complete_members, fetch, http_server, manifest_of, members, ticket
from tests.conftest import PAIRS, Backends
from tests.support import assert_invariants, call, error_of

BOOK = "python-book"
SECRET = "archive-test-signing-secret-0123456789"
L1 = "content/01-Intro/01-Basics/01-hello.md"
L2 = "content/01-Intro/01-Basics/02-names.md"
S1 = "content/01-Intro/01-Basics/01-hello.summary.md"
L3 = "content/02-Data/01-Lists/01-lists.md"
IMG = "static/images/diagram.png"
SVG = "static/img/logo.svg"
SLIDES = "static/slides/deck.pdf"


def sample_book(rng: random.Random) -> list[BookFile]:
    return [
        BookFile(L1, markdown(rng, 3000)),
        BookFile(L2, markdown(rng, 5000)),
        BookFile(S1, b"# Summary\n\nShort.\n"),
        BookFile(L3, markdown(rng, 70_000)),
        BookFile(IMG, png(20_000)),
        BookFile(SVG, b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="1" height="1"/></svg>\n'),
        BookFile(SLIDES, b"%PDF-1.4\n" + bytes(range(256)) * 40),
    ]


async def download(base: str, **arguments: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    link = await ticket(base, book_id=BOOK, **arguments)
    response = await fetch(link["url"])
    assert response.status_code == 200, response.text
    return link, members(response.content)


def settled(settings: Settings, **overrides: Any) -> Settings:
    return settings.model_copy(update={"url_signing_secret": SecretStr(SECRET), **overrides})


async def test_scopes_pick_their_members_and_hashes_match_the_journal(matrix_settings: Settings) -> None:
    settings = settled(matrix_settings)
    files = sample_book(random.Random(1))
    await write_files(settings, BOOK, files)
    written = {f.path: f.data for f in files}
    expected = await journal_view(settings, BOOK)
    async with http_server(settings) as base:
        for scope, prefix in (("content", "content/"), ("assets", "static/"), ("all", "")):
            link, got = await download(base, scope=scope)
            manifest = manifest_of(got)
            names = sorted(name for name in got if name != MANIFEST_NAME)
            assert names == sorted(p for p in written if p.startswith(prefix))
            assert all(got[name] == written[name] for name in names)
            assert {m["path"]: m["sha256"] for m in manifest["members"]} == {
                p: h for p, h in expected.items() if p.startswith(prefix)
            }
            assert manifest["complete"] is True and manifest["errors"] == []
            assert link["file_count"] == manifest["file_count"] == len(names)
            assert link["total_bytes"] == manifest["total_bytes"] == sum(len(written[n]) for n in names)
            assert link["manifest_hash"] == manifest["manifest_hash"]
            assert link["manifest_hash"] == path_ordered_hash({n: written[n] for n in names})
            assert link["scope"] == scope and link["url"].startswith(f"{base}/archives/{BOOK}.zip?token=")
    await assert_invariants(settings)


def path_ordered_hash(files: dict[str, bytes]) -> str:
    """The manifest hash of the contract: `path:sha256` lines in byte order of the paths."""
    lines = "\n".join(f"{p}:{hashlib.sha256(files[p]).hexdigest()}" for p in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


async def test_manifest_hash_orders_by_path_when_one_path_prefixes_another(settings: Settings) -> None:
    """`a.png` sorts before `a.png.png` as a path, after it as a `path:hash` line ('.' < ':')."""
    settings = settled(settings)
    files = [BookFile("static/images/a.png", png(64)), BookFile("static/images/a.png.png", png(64))]
    await write_files(settings, BOOK, files)
    async with http_server(settings) as base:
        link, got = await download(base, scope="assets")
    expected = path_ordered_hash({f.path: f.data for f in files})
    assert link["manifest_hash"] == manifest_of(got)["manifest_hash"] == expected


async def test_text_is_deflated_and_compressed_assets_are_stored(backends: Backends) -> None:
    settings = settled(await backends.settings("sqlite-fs"))
    big = png(WHOLE_READ_LIMIT + 2 * CHUNK + 123)
    await write_files(
        settings, BOOK, [*sample_book(random.Random(2)), BookFile("static/videos/big.png", big)]
    )
    async with http_server(settings) as base:
        link = await ticket(base, book_id=BOOK, scope="all")
        first = (await fetch(link["url"])).content
        second = (await fetch(link["url"])).content
    assert first == second, "the same files make the same archive"
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        kinds = {info.filename: info.compress_type for info in archive.infolist()}
        assert archive.read("static/videos/big.png") == big
        assert archive.getinfo("static/videos/big.png").compress_size < len(big) * 1.001 + 100
    assert kinds[L1] == kinds[L3] == kinds[SVG] == kinds[MANIFEST_NAME] == zipfile.ZIP_DEFLATED
    assert kinds[IMG] == kinds[SLIDES] == zipfile.ZIP_STORED
    # Large compressed files stream as deflate level 0 (stored blocks): no buffering of the member.
    assert kinds["static/videos/big.png"] == zipfile.ZIP_DEFLATED


async def test_user_archive_has_their_overlays_and_never_another_users(settings: Settings) -> None:
    settings = settled(settings)
    base_l1, base_l2 = b"# base one\n", b"# base two\n"
    alice_l1, bob_l2, bob_only = b"# alice's one\n", b"# bob's two\n", b"# bob's own lesson\n"
    await write_files(settings, BOOK, [BookFile(L1, base_l1), BookFile(L2, base_l2), BookFile(IMG, png(500))])
    await write_files(
        settings,
        BOOK,
        [BookFile(L1, alice_l1, "alice"), BookFile(L2, bob_l2, "bob"), BookFile(L3, bob_only, "bob")],
    )
    async with http_server(settings) as base:
        _, alice = await download(base, scope="all", user_id="alice")
        _, bob = await download(base, scope="content", user_id="bob")
        _, shared = await download(base, scope="content")
    assert {k: v for k, v in alice.items() if k != MANIFEST_NAME} == {
        L1: alice_l1,
        L2: base_l2,
        IMG: alice[IMG],
    }
    assert {k: v for k, v in bob.items() if k != MANIFEST_NAME} == {L1: base_l1, L2: bob_l2, L3: bob_only}
    assert {k: v for k, v in shared.items() if k != MANIFEST_NAME} == {L1: base_l1, L2: base_l2}
    sources = {m["path"]: m["source"] for m in manifest_of(alice)["members"]}
    assert sources == {L1: "overlay", L2: "base", IMG: "base"}
    assert manifest_of(bob)["user_id"] == "bob"
    assert b"bob" not in b"".join(v for k, v in alice.items() if k != MANIFEST_NAME)


async def test_an_empty_book_gives_a_valid_archive_with_only_the_manifest(settings: Settings) -> None:
    settings = settled(settings)
    await write_files(settings, BOOK, [BookFile(L1, b"# soon gone\n")])
    async with http_server(settings) as base:
        async with Client(f"{base}/mcp", client_info=Implementation(name="remover", version="1")) as c:
            await call(c, "delete_content", book_id=BOOK, path=L1)
            unknown = await error_of(c, "get_book_archive", book_id="never-written")
        link, got = await download(base, scope="all")
    assert unknown["error"] == "NOT_FOUND" and "list_books" in unknown["message"]
    assert list(got) == [MANIFEST_NAME]
    manifest = manifest_of(got)
    assert manifest["members"] == [] and manifest["complete"] is True and manifest["file_count"] == 0
    assert link["file_count"] == 0 and link["total_bytes"] == 0
    assert link["manifest_hash"] == hashlib.sha256(b"").hexdigest() == manifest["manifest_hash"]


async def test_unreadable_files_go_to_the_error_manifest_and_the_rest_arrive(settings: Settings) -> None:
    settings = settled(settings)
    files = sample_book(random.Random(3))
    big = png(WHOLE_READ_LIMIT + CHUNK + 7)
    await write_files(settings, BOOK, [*files, BookFile("static/videos/big.png", big)])
    store = BlobStore.from_settings(settings)
    try:
        await store.write(storage_key(BOOK, L2, None), b"# tampered\n")
        await store.delete(storage_key(BOOK, S1, None))
        await store.write(storage_key(BOOK, "static/videos/big.png", None), b"x" + big[1:])
    finally:
        store.close()
    async with http_server(settings) as base:
        _, got = await download(base, scope="all")
    manifest = manifest_of(got)
    errors = {e["path"]: e for e in manifest["errors"]}
    assert set(errors) == {L2, S1, "static/videos/big.png"}
    assert errors[L2]["reason"] == "hash_mismatch" and errors[L2]["error"] == "INTERNAL"
    assert errors[S1]["reason"] == "missing"
    assert errors["static/videos/big.png"]["member_emitted"] is True
    assert L2 not in got and S1 not in got
    good = {f.path: f.data for f in files if f.path not in (L2, S1)}
    assert {k: v for k, v in got.items() if k in good} == good
    assert {m["path"] for m in manifest["members"]} == set(good)
    assert manifest["complete"] is True


async def test_bad_tokens_are_refused_with_403(backends: Backends) -> None:
    settings = settled(await backends.settings("sqlite-fs"))
    await write_files(settings, BOOK, [BookFile(L1, b"# one\n")])
    signer = UrlSigner.from_settings(settings)
    claims = {"book": BOOK, "scope": "content", "user": None}
    async with http_server(settings) as base:
        link = await ticket(base, book_id=BOOK)
        token = parse_qs(urlsplit(link["url"]).query)["token"][0]
        cases = {
            "another book": f"{base}/archives/other-book.zip?token={token}",
            "expired": f"{base}/archives/{BOOK}.zip?token={signer.sign('archive', claims, -5)[0]}",
            "another purpose": f"{base}/archives/{BOOK}.zip?token={signer.sign('asset', claims, 60)[0]}",
            "tampered": f"{base}/archives/{BOOK}.zip?token={token[:-2]}{'AA' if token[-2:] != 'AA' else 'BB'}",
            "missing": f"{base}/archives/{BOOK}.zip",
            "bad scope": f"{base}/archives/{BOOK}.zip?token="
            + signer.sign("archive", {**claims, "scope": "everything"}, 60)[0],
        }
        async with httpx.AsyncClient() as http:
            for case, url in cases.items():
                response = await http.get(url)
                assert response.status_code == 403, case
                assert response.json()["error"] == "FORBIDDEN", case
                assert response.headers["content-type"].startswith("application/json")
            good = await http.get(link["url"])
            assert good.status_code == 200
            assert good.headers["content-type"] == "application/zip"
            assert good.headers["content-disposition"] == f'attachment; filename="{BOOK}-content.zip"'
            assert good.headers["cache-control"] == "no-store"
            assert good.headers["x-content-type-options"] == "nosniff"


async def test_malformed_arguments_and_resume_points_are_refused(backends: Backends) -> None:
    settings = settled(await backends.settings("sqlite-fs"))
    await write_files(settings, BOOK, [BookFile(L1, b"# hello\n")])
    async with http_server(settings) as base:
        info = Implementation(name="archive-agent-1", version="1")
        async with Client(f"{base}/mcp", client_info=info) as c:
            for arguments in (
                {"book_id": "Bad_Book"},
                {"book_id": BOOK, "scope": "everything"},
                {"book_id": BOOK, "user_id": "__base__"},
                {"book_id": BOOK, "user_id": "no spaces"},
            ):
                assert (await error_of(c, "get_book_archive", **arguments))["error"] == "INVALID_ARGUMENT"
            tool = next(t for t in await c.list_tools() if t.name == "get_book_archive")
            assert tool.annotations is not None
            assert tool.annotations.read_only_hint and tool.annotations.idempotent_hint
        link = await ticket(base, book_id=BOOK)
        for after in ("../etc/passwd", "/content/x.md", "content/../x", "notes/x.md", "content/a%2Fb.md", ""):
            response = await fetch(link["url"], after=after)
            assert response.status_code == 400, after
            assert response.json()["error"] in ("INVALID_PATH", "SCHEMA_VIOLATION", "INVALID_ARGUMENT")


async def unzip_all_resuming(url: str) -> tuple[dict[str, bytes], int]:
    """Follow `resume_after` until the manifest says complete; returns the members and requests."""
    collected: dict[str, bytes] = {}
    after: str | None = None
    for requests in range(1, 100):
        response = await fetch(url, after=after)
        assert response.status_code == 200
        got = members(response.content)
        manifest = manifest_of(got)
        for name, data in got.items():
            if name != MANIFEST_NAME:
                assert name not in collected
                collected[name] = data
        if manifest["complete"]:
            return collected, requests
        assert manifest["resume_after"] is not None
        after = manifest["resume_after"]
    raise AssertionError("the archive never completed")


@pytest.mark.parametrize("combo", PAIRS)
async def test_timeout_ends_partial_and_resuming_completes_the_set(backends: Backends, combo: str) -> None:
    settings = settled(await backends.settings(combo), archive_timeout=1e-6)
    files = sample_book(random.Random(4))
    await write_files(settings, BOOK, files)
    async with http_server(settings) as base:
        link = await ticket(base, book_id=BOOK, scope="all")
        first = members((await fetch(link["url"])).content)
        manifest = manifest_of(first)
        assert manifest["complete"] is False
        assert manifest["resume_after"] == manifest["members"][-1]["path"]
        collected, requests = await unzip_all_resuming(link["url"])
    assert collected == {f.path: f.data for f in files}
    assert requests > 1


async def test_resume_after_a_cut_at_any_byte_yields_the_same_files(settings: Settings) -> None:
    settings = settled(settings)
    rng = random.Random(5)
    files = [
        BookFile(f"content/01-Part/{c:02d}-Ch/{n:02d}-l.md", markdown(rng, rng.randrange(10, 30_000)))
        for c in (1, 2)
        for n in range(1, 6)
    ]
    files += [BookFile(f"static/images/p{i}.png", png(rng.randrange(100, 40_000))) for i in range(6)]
    files.append(BookFile("static/videos/clip.png", png(WHOLE_READ_LIMIT + 1000)))
    await write_files(settings, BOOK, files)
    expected = {f.path: f.data for f in files}
    async with http_server(settings) as base:
        link = await ticket(base, book_id=BOOK, scope="all")
        full = (await fetch(link["url"])).content
        assert {k: v for k, v in members(full).items() if k != MANIFEST_NAME} == expected
        cuts = [0, 1, 29, 31, len(full) - 1, len(full) - 22, *rng.sample(range(len(full)), 14)]
        for cut in cuts:
            received = dict(complete_members(full[:cut]))
            received.pop(MANIFEST_NAME, None)
            assert all(expected[k] == v for k, v in received.items()), cut
            last = max(received) if received else None
            rest = (await fetch(link["url"], after=last)).content
            resumed = {k: v for k, v in members(rest).items() if k != MANIFEST_NAME}
            assert not set(resumed) & set(received), cut
            assert received | resumed == expected, cut


async def test_client_that_disconnects_mid_download_leaves_the_server_clean(backends: Backends) -> None:
    settings = settled(await backends.settings("sqlite-fs"))
    await write_files(
        settings, BOOK, [BookFile(f"static/images/p{i:03d}.png", png(300_000)) for i in range(60)]
    )
    async with http_server(settings) as base:
        link = await ticket(base, book_id=BOOK, scope="assets")
        freed = "panaversityfs_archive_memory_bytes 0.0"
        metrics = ""
        for n in range(1, 4):
            async with httpx.AsyncClient() as http, http.stream("GET", link["url"]) as response:
                assert response.status_code == 200
                async for _chunk in response.aiter_bytes():
                    break
            aborted = f'panaversityfs_archive_total{{book_id="{BOOK}",scope="assets",status="aborted"}} {n}.0'
            # The server learns of a disconnect at its next send, and only then gives the
            # agent's stream slot back (2 per agent): wait for it, but not for ever.
            deadline = asyncio.get_running_loop().time() + 10
            async with httpx.AsyncClient() as http:
                while True:
                    metrics = (await http.get(f"{base}/metrics")).text
                    if (
                        aborted in metrics and freed in metrics
                    ) or asyncio.get_running_loop().time() > deadline:
                        break
                    await asyncio.sleep(0.1)
            assert aborted in metrics, [line for line in metrics.splitlines() if "archive_total" in line]
        assert freed in metrics
        _, got = await download(base, scope="assets")
        assert len(got) == 61
