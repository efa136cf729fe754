"""The asset tools through MCP: inline uploads, the expected_hash contract, sniffed MIME types,
path refusals, listing, deletes, and who uploaded what."""

from __future__ import annotations

import pytest

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from tests.asset_support import SVG, b64, history, journal_rows, noise, png, sha, stored_bytes, stored_keys
from tests.conftest import PAIRS, Backends
from tests.support import BOOK, LESSON, all_pages, assert_invariants, call, client, error_of


async def test_inline_upload_sniffs_the_type_from_the_bytes(matrix_settings: Settings) -> None:
    samples = {
        "static/images/photo.jpg": (png(), "image/png"),
        "static/img/diagrams/ch1.png": (SVG, "image/svg+xml"),
        "static/slides/deck.pdf": (noise(3000), "application/octet-stream"),
    }
    async with client(create_server(matrix_settings), agent="illustrator-1") as c:
        for path, (data, _) in samples.items():
            asset_type, filename = path.split("/", 2)[1:]
            stored = await call(
                c,
                "upload_asset",
                book_id=BOOK,
                asset_type=asset_type,
                filename=filename,
                binary_data=b64(data),
            )
            assert stored["status"] == "stored" and stored["mode"] == "created"
            assert stored["path"] == path and stored["file_hash"] == sha(data) and stored["size"] == len(data)
            assert stored["download_url"] and stored["previous_hash"] is None and stored["version"] == 1
        infos = {
            path: await call(c, "get_asset", book_id=BOOK, path=path, include_binary=True) for path in samples
        }
    for path, (data, content_type) in samples.items():
        info = infos[path]
        assert info["content_type"] == content_type
        assert info["file_hash"] == sha(data) and info["size"] == len(data) and info["version"] == 1
        assert info["inline_bytes"] == data and info["binary_note"] is None
        assert info["uploaded_by"] == "illustrator-1"
        assert await stored_bytes(matrix_settings, f"books/{BOOK}/{path}") == data
    rows = {row.path: row for row in await journal_rows(matrix_settings)}
    assert {path: rows[path].content_type for path in samples} == {p: t for p, (_, t) in samples.items()}
    await assert_invariants(matrix_settings)


async def test_asset_writes_follow_the_expected_hash_contract(settings: Settings) -> None:
    v1, v2 = png(1), png(2)
    args = {"book_id": BOOK, "asset_type": "images", "filename": "logo.png"}
    async with client(create_server(settings)) as c:
        missing = await error_of(c, "upload_asset", **args, binary_data=b64(v1), expected_hash=sha(v2))
        created = await call(c, "upload_asset", **args, binary_data=b64(v1))
        required = await error_of(c, "upload_asset", **args, binary_data=b64(v2))
        stale = await error_of(c, "upload_asset", **args, binary_data=b64(v2), expected_hash=sha(v2))
        updated = await call(c, "upload_asset", **args, binary_data=b64(v2), expected_hash=sha(v1))
        info = await call(c, "get_asset", book_id=BOOK, path="static/images/logo.png")
    assert missing["error"] == "NOT_FOUND"
    assert created["mode"] == "created"
    assert required["error"] == "HASH_REQUIRED" and required["current_hash"] == sha(v1)
    assert stale["error"] == "CONFLICT" and stale["current_hash"] == sha(v1)
    assert updated["mode"] == "updated" and updated["previous_hash"] == sha(v1) and updated["version"] == 2
    assert info["file_hash"] == sha(v2) and info["version"] == 2
    entries = await history(settings, BOOK, "static/images/logo.png")
    writes = [(e["operation"], e["status"], e["prev_hash"], e["new_hash"]) for e in entries]
    assert ("upload_asset", "success", None, sha(v1)) in writes
    assert ("upload_asset", "success", sha(v1), sha(v2)) in writes
    assert [e["error_code"] for e in entries if e["status"] == "refused"] == [
        "NOT_FOUND",
        "HASH_REQUIRED",
        "CONFLICT",
    ]
    assert {e["agent_id"] for e in entries} == {"lesson-writer-7"}
    await assert_invariants(settings)


async def test_uploaded_by_names_the_agent_of_the_last_write(settings: Settings) -> None:
    server = create_server(settings)
    path = "static/audio/intro.mp3"
    async with client(server, agent="narrator-a") as a:
        first = await call(
            a,
            "upload_asset",
            book_id=BOOK,
            asset_type="audio",
            filename="intro.mp3",
            binary_data=b64(noise(64, 1)),
        )
        assert (await call(a, "get_asset", book_id=BOOK, path=path))["uploaded_by"] == "narrator-a"
    async with client(server, agent="narrator-b") as b:
        await call(
            b,
            "upload_asset",
            book_id=BOOK,
            asset_type="audio",
            filename="intro.mp3",
            binary_data=b64(noise(64, 2)),
            expected_hash=first["file_hash"],
        )
    async with client(server, agent="narrator-a") as a:
        info = await call(a, "get_asset", book_id=BOOK, path=path)
    assert info["uploaded_by"] == "narrator-b"
    await assert_invariants(settings)


UNSAFE_UPLOADS = [
    ("images", "../x.png", "INVALID_PATH"),
    ("images", "a/../../x.png", "INVALID_PATH"),
    ("images", "..", "INVALID_PATH"),
    ("images", "/etc/passwd", "INVALID_PATH"),
    ("images", "x.png\x00.jpg", "INVALID_PATH"),
    ("images", "a\\b.png", "INVALID_PATH"),
    ("images", "%2e%2e/x.png", "INVALID_PATH"),
    ("images", "a//b.png", "INVALID_PATH"),
    ("images", "a b.png", None),
    ("other", "x.png", "SCHEMA_VIOLATION"),
    ("../images", "x.png", "SCHEMA_VIOLATION"),
    ("IMAGES", "x.png", "SCHEMA_VIOLATION"),
    ("images", "", "INVALID_ARGUMENT"),
]


async def test_unsafe_or_foreign_asset_paths_are_refused_and_change_nothing(settings: Settings) -> None:
    data = b64(png())
    async with client(create_server(settings), agent="fuzzer") as c:
        for asset_type, filename, code in UNSAFE_UPLOADS:
            error = await error_of(
                c, "upload_asset", book_id=BOOK, asset_type=asset_type, filename=filename, binary_data=data
            )
            assert error["error"] == code if code else error["error"] in ("INVALID_PATH", "SCHEMA_VIOLATION")
        kind = await error_of(
            c, "upload_asset", book_id=BOOK, asset_type="other", filename="x.png", binary_data=data
        )
        for tool, path, code in [
            ("get_asset", "static/other/x.png", "SCHEMA_VIOLATION"),
            ("get_asset", LESSON, "SCHEMA_VIOLATION"),
            ("get_asset", "static/images/../../x.png", "INVALID_PATH"),
            ("delete_asset", "static/images/../x.png", "INVALID_PATH"),
            ("delete_asset", "static", "SCHEMA_VIOLATION"),
        ]:
            assert (await error_of(c, tool, book_id=BOOK, path=path))["error"] == code
        bad_book = await error_of(
            c, "upload_asset", book_id="../etc", asset_type="images", filename="x.png", binary_data=data
        )
    assert kind["allowed"] == ["img", "images", "slides", "videos", "audio"]
    assert bad_book["error"] == "INVALID_ARGUMENT"
    assert await stored_keys(settings, "books/") == []
    assert await journal_rows(settings) == []
    await assert_invariants(settings)


@pytest.mark.parametrize("combo", PAIRS)
async def test_inline_limits_and_strict_base64(backends: Backends, combo: str) -> None:
    settings = await backends.settings(combo, max_inline_asset_bytes=1024)
    args = {"book_id": BOOK, "asset_type": "images", "filename": "x.png"}
    async with client(create_server(settings)) as c:
        too_large = await error_of(c, "upload_asset", **args, binary_data=b64(noise(1025)))
        way_too_large = await error_of(c, "upload_asset", **args, binary_data="A" * 100_000)
        invalid = [
            (await error_of(c, "upload_asset", **args, binary_data=text))["error"]
            for text in ("not base64!", "QUJD\nRA==", "QUI", "QUJD====", "w6k=é", "")
        ]
        mismatch = await error_of(
            c, "upload_asset", **args, binary_data=b64(png()), sha256=sha(b"other"), size=len(png())
        )
        fits = await call(c, "upload_asset", **args, binary_data=b64(noise(1024)))
        info = await call(c, "get_asset", book_id=BOOK, path="static/images/x.png", include_binary=True)
    assert too_large["error"] == way_too_large["error"] == "TOO_LARGE"
    assert too_large["limit"] == 1024 and "sha256" in too_large["message"]
    assert invalid == ["INVALID_ARGUMENT"] * 6
    assert mismatch["error"] == "INVALID_ARGUMENT"
    assert fits["size"] == 1024 and info["inline_bytes"] == noise(1024)
    assert [row.path for row in await journal_rows(settings)] == ["static/images/x.png"]
    await assert_invariants(settings)


async def test_get_asset_leaves_large_bytes_to_the_download_url(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs", max_inline_asset_bytes=2048)
    async with client(create_server(settings)) as c:
        await call(
            c,
            "upload_asset",
            book_id=BOOK,
            asset_type="videos",
            filename="clip.bin",
            binary_data=b64(noise(2000)),
        )
        settings_small = settings.model_copy(update={"max_inline_asset_bytes": 1024})
    async with client(create_server(settings_small)) as c:
        info = await call(c, "get_asset", book_id=BOOK, path="static/videos/clip.bin", include_binary=True)
        plain = await call(c, "get_asset", book_id=BOOK, path="static/videos/clip.bin")
    assert info["binary_data"] is None and "download_url" in info["binary_note"]
    assert plain["binary_data"] is None and plain["binary_note"] is None
    assert info["download_url"].startswith("http") and "/assets/" in info["download_url"]


async def test_list_assets_pages_in_path_order_and_is_bounded(settings: Settings) -> None:
    names = [("images", f"p{i:02d}.png") for i in range(7)] + [("slides", "a.pdf"), ("img", "z/y.png")]
    async with client(create_server(settings)) as c:
        await call(c, "write_content", book_id=BOOK, path=LESSON, content="# not an asset\n")
        for i, (asset_type, filename) in enumerate(names):
            await call(
                c,
                "upload_asset",
                book_id=BOOK,
                asset_type=asset_type,
                filename=filename,
                binary_data=b64(png(i)),
            )
        doomed = await call(c, "get_asset", book_id=BOOK, path="static/images/p03.png")
        await call(
            c, "delete_asset", book_id=BOOK, path="static/images/p03.png", expected_hash=doomed["file_hash"]
        )
        listed = await all_pages(c, "list_assets", book_id=BOOK, limit=3)
        assert (
            all(page["next_cursor"] is not None for page in listed[:-1]) and listed[-1]["next_cursor"] is None
        )
        pages = [[item["path"] for item in page["items"]] for page in listed]
        images = await call(c, "list_assets", book_id=BOOK, asset_type="images", limit=2)
        everything = await call(c, "list_assets", book_id=BOOK)
        refusals = [
            (await error_of(c, "list_assets", book_id=BOOK, **kwargs))["error"]
            for kwargs in (
                {"limit": 0},
                {"limit": 1001},
                {"cursor": "garbage"},
                {"cursor": images["next_cursor"]},
                {"asset_type": "other"},
            )
        ]
        empty = await call(c, "list_assets", book_id="other-book")
        foreign = await error_of(
            c, "list_assets", book_id="other-book", asset_type="images", cursor=images["next_cursor"]
        )
    expected = sorted(f"static/{t}/{n}" for t, n in names if n != "p03.png")
    assert [path for page in pages for path in page] == expected
    assert [len(page) for page in pages] == [3, 3, 2]
    assert [item["path"] for item in images["items"]] == ["static/images/p00.png", "static/images/p01.png"]
    assert images["next_cursor"] and images["asset_type"] == "images"
    item = everything["items"][0]
    assert set(item) == {"path", "file_hash", "size", "content_type", "last_modified"}
    assert item["content_type"] == "image/png" and everything["next_cursor"] is None
    assert refusals == ["INVALID_ARGUMENT"] * 4 + ["SCHEMA_VIOLATION"]
    assert empty["items"] == [] and empty["next_cursor"] is None
    assert (foreign["error"], foreign["field"]) == ("INVALID_ARGUMENT", "cursor")  # bound to its book
    await assert_invariants(settings)


async def test_delete_asset_is_idempotent_and_honours_expected_hash(settings: Settings) -> None:
    path = "static/slides/deck/intro.pdf"
    async with client(create_server(settings)) as c:
        stored = await call(
            c,
            "upload_asset",
            book_id=BOOK,
            asset_type="slides",
            filename="deck/intro.pdf",
            binary_data=b64(noise(99)),
        )
        stale = await error_of(c, "delete_asset", book_id=BOOK, path=path, expected_hash=sha(b"old"))
        first = await call(c, "delete_asset", book_id=BOOK, path=path, expected_hash=stored["file_hash"])
        second = await call(c, "delete_asset", book_id=BOOK, path=path)
        gone = await error_of(c, "get_asset", book_id=BOOK, path=path)
        recreated = await call(
            c,
            "upload_asset",
            book_id=BOOK,
            asset_type="slides",
            filename="deck/intro.pdf",
            binary_data=b64(noise(98)),
        )
    assert stale["error"] == "CONFLICT" and stale["current_hash"] == stored["file_hash"]
    assert first["existed"] is True and first["previous_hash"] == stored["file_hash"]
    assert second["existed"] is False
    assert gone["error"] == "NOT_FOUND"
    assert recreated["mode"] == "created"
    assert await stored_keys(settings, "books/") == [f"books/{BOOK}/{path}"]
    await assert_invariants(settings)


async def test_every_asset_call_is_audited_with_the_calling_agent(settings: Settings) -> None:
    path = "static/images/a.png"
    async with client(create_server(settings), agent="auditor-9") as c:
        await call(
            c, "upload_asset", book_id=BOOK, asset_type="images", filename="a.png", binary_data=b64(png())
        )
        await call(c, "get_asset", book_id=BOOK, path=path)
        await error_of(c, "get_asset", book_id=BOOK, path="static/images/missing.png")
        await call(c, "delete_asset", book_id=BOOK, path=path)
    entries = await history(settings, BOOK, path)
    # Read entries are appended in batches, so only the writes' order is fixed.
    assert sorted((e["operation"], e["status"]) for e in entries) == [
        ("delete_asset", "success"),
        ("get_asset", "success"),
        ("upload_asset", "success"),
    ]
    missing = await history(settings, BOOK, "static/images/missing.png")
    assert [(e["operation"], e["error_code"]) for e in missing] == [("get_asset", "NOT_FOUND")]
    assert {e["agent_id"] for e in entries + missing} == {"auditor-9"}


async def test_asset_tools_carry_annotations(db_settings: Settings) -> None:
    async with client(create_server(db_settings)) as c:
        tools = {tool.name: tool.annotations for tool in await c.list_tools()}
    hints = {
        name: (a.read_only_hint, a.destructive_hint, a.idempotent_hint)
        for name, a in tools.items()
        if name.endswith(("asset", "assets", "asset_upload")) and a is not None
    }
    assert hints == {
        "upload_asset": (False, True, False),
        "complete_asset_upload": (False, True, False),
        "get_asset": (True, None, True),
        "list_assets": (True, None, True),
        "delete_asset": (False, True, True),
    }
