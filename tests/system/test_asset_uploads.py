"""Large assets over real HTTP: declare an upload, PUT the bytes (our route on fs, a presigned
S3 PUT on S3), complete it, download it; refusals of bad bytes and bad tokens; recovery of
uploads never completed."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from mcp_types import Implementation
from pydantic import SecretStr

from panaversity_fs.app.server import create_server
from panaversity_fs.config import Settings
from panaversity_fs.db.engine import Database
from panaversity_fs.files.publisher import Publisher
from panaversity_fs.metrics import Metrics
from panaversity_fs.signing import UrlSigner
from panaversity_fs.storage.blobs import UPLOAD_PREFIX, BlobStore
from testkit.processes import ServerProcess, run_cli, settings_env
from tests.asset_support import SVG, b64, history, journal_rows, noise, overwrite, png, sha, stored_keys
from tests.conftest import Backends
from tests.support import BOOK, assert_invariants, call, client, error_of

SECRET = "asset-upload-test-secret-0123456789"
AGENT = "slide-maker-3"
BIG = noise(5 * 1024 * 1024 + 123, seed=11)


def http_client(url: str, agent: str = AGENT) -> Client[Any]:
    """An MCP client over streamable HTTP."""
    return Client(f"{url}/mcp", client_info=Implementation(name=agent, version="1"))


def signer() -> UrlSigner:
    """The signer of the servers started with `SECRET`."""
    return UrlSigner.from_settings(Settings(url_signing_secret=SecretStr(SECRET)))


def claims_of(token: str) -> dict[str, Any]:
    """The (unverified) claims inside a signed token."""
    body = token.split(".", 1)[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def declare(data: bytes, filename: str = "lecture.bin", **extra: Any) -> dict[str, Any]:
    """upload_asset arguments declaring `data` for an upload URL."""
    return {
        "book_id": BOOK,
        "asset_type": "videos",
        "filename": filename,
        "size": len(data),
        "sha256": sha(data),
        **extra,
    }


@pytest.mark.parametrize("combo", ["sqlite-fs", "postgres-s3"])
async def test_url_upload_end_to_end_over_http(backends: Backends, tmp_path: Path, combo: str) -> None:
    settings = await backends.settings(combo)
    with ServerProcess(settings, tmp_path / "server.log", PANAVERSITY_URL_SIGNING_SECRET=SECRET) as server:
        async with http_client(server.url) as c:
            ticket = await call(c, "upload_asset", **declare(BIG))
            async with httpx.AsyncClient(timeout=60) as http:
                put = await http.put(ticket["upload_url"], content=BIG, headers=ticket["headers"])
            stored = await call(c, "complete_asset_upload", upload_id=ticket["upload_id"])
            again = await error_of(c, "complete_asset_upload", upload_id=ticket["upload_id"])
            info = await call(
                c, "get_asset", book_id=BOOK, path="static/videos/lecture.bin", include_binary=True
            )
            svg = await call(
                c, "upload_asset", book_id=BOOK, asset_type="img", filename="x.png", binary_data=b64(SVG)
            )
            image = await call(
                c, "upload_asset", book_id=BOOK, asset_type="img", filename="y.jpg", binary_data=b64(png())
            )
        async with httpx.AsyncClient(timeout=60) as http:
            download = await http.get(info["download_url"])
            part = await http.get(info["download_url"], headers={"Range": "bytes=1048570-1048589"})
            tail = await http.get(info["download_url"], headers={"Range": f"bytes=-{7}"})
            outside = await http.get(info["download_url"], headers={"Range": f"bytes={len(BIG)}-"})
            head = await http.head(info["download_url"])
            svg_download = await http.get(svg["download_url"])
            image_download = await http.get(image["download_url"])
    assert ticket["status"] == "upload_required" and ticket["method"] == "PUT"
    assert ticket["path"] == "static/videos/lecture.bin" and ticket["size"] == len(BIG)
    if combo.endswith("fs"):
        assert ticket["upload_url"].startswith(f"{server.url}/uploads/")
    else:
        assert (
            ticket["upload_url"].startswith(str(settings.s3_endpoint))
            and "X-Amz-Signature" in ticket["upload_url"]
        )
    assert put.status_code == 200, put.text
    assert stored["status"] == "stored" and stored["mode"] == "created"
    assert stored["file_hash"] == sha(BIG) and stored["size"] == len(BIG)
    assert stored["content_type"] == "application/octet-stream"
    assert again["error"] == "NOT_FOUND"
    assert info["uploaded_by"] == AGENT and info["file_hash"] == sha(BIG)
    assert info["inline_bytes"] is None and info["binary_note"]
    assert download.status_code == 200 and download.content == BIG
    headers = download.headers
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-length"] == str(len(BIG))
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert headers["content-disposition"] == 'attachment; filename="lecture.bin"'
    assert headers["cache-control"].startswith("private, max-age=")
    assert part.status_code == 206 and part.content == BIG[1048570:1048590]
    assert part.headers["content-range"] == f"bytes 1048570-1048589/{len(BIG)}"
    assert tail.status_code == 206 and tail.content == BIG[-7:]
    assert outside.status_code == 416
    assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(BIG))
    assert svg_download.headers["content-type"] == "image/svg+xml"
    assert svg_download.headers["content-disposition"].startswith("attachment")
    assert svg_download.content == SVG
    assert image_download.headers["content-type"] == "image/png"
    assert image_download.headers["content-disposition"].startswith("inline")
    assert await stored_keys(settings, ".pfs/uploads/") == []
    assert await stored_keys(settings, ".pfs/staging/") == []
    entries = await history(settings, BOOK, "static/videos/lecture.bin")
    committed = [e for e in entries if e["operation"] == "upload_asset" and e["status"] == "success"]
    assert [(e["agent_id"], e["new_hash"]) for e in committed] == [(AGENT, sha(BIG))]
    await assert_invariants(settings)


async def test_fs_upload_route_enforces_the_declared_bytes(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("sqlite-fs")
    data = noise(300_000, seed=3)
    with ServerProcess(settings, tmp_path / "server.log", PANAVERSITY_URL_SIGNING_SECRET=SECRET) as server:
        async with http_client(server.url) as c:
            ticket = await call(c, "upload_asset", **declare(data))
            async with httpx.AsyncClient(timeout=60) as http:
                url = ticket["upload_url"]
                declared_too_long = await http.put(url, content=data + b"x")
                after_declared = await stored_keys(settings, UPLOAD_PREFIX)

                async def stream_longer() -> AsyncIterator[bytes]:
                    for _ in range(4):
                        yield data[:100_000]

                streamed_too_long = await http.put(url, content=stream_longer())
                after_streamed = await stored_keys(settings, UPLOAD_PREFIX)
                short = await http.put(url, content=data[:-1])
                wrong = await http.put(url, content=noise(300_000, seed=4))
                after_wrong = await stored_keys(settings, UPLOAD_PREFIX)
                early = await error_of(c, "complete_asset_upload", upload_id=ticket["upload_id"])
                good = await http.put(url, content=data)
                kept = await stored_keys(settings, UPLOAD_PREFIX)
                # A request body over the server-wide limit is still refused elsewhere.
                over = settings.request_body_limit + 1
                mcp_too_large = await http.post(f"{server.url}/mcp", content=b"x" * over)
            stored = await call(c, "complete_asset_upload", upload_id=ticket["upload_id"])
    assert declared_too_long.status_code == 413 and declared_too_long.json()["error"] == "TOO_LARGE"
    assert after_declared == []
    assert streamed_too_long.status_code == 413 and after_streamed == []
    assert short.status_code == 400 and short.json()["error"] == "INVALID_ARGUMENT"
    assert wrong.status_code == 400 and after_wrong == []
    assert early["error"] == "NOT_FOUND"
    assert good.status_code == 200 and good.json()["status"] == "uploaded"
    assert kept == [claims_of(ticket["upload_id"])["k"]]
    assert mcp_too_large.status_code == 413
    assert stored["file_hash"] == sha(data)
    await assert_invariants(settings)


async def test_s3_completion_refuses_bytes_that_differ_from_the_declaration(
    backends: Backends, tmp_path: Path
) -> None:
    settings = await backends.settings("postgres-s3")
    data = noise(200_000, seed=5)
    with ServerProcess(settings, tmp_path / "server.log", PANAVERSITY_URL_SIGNING_SECRET=SECRET) as server:
        async with http_client(server.url) as c:
            wrong_bytes = await call(c, "upload_asset", **declare(data))
            short = await call(c, "upload_asset", **declare(data))
            async with httpx.AsyncClient(timeout=60) as http:
                bad = noise(200_000, seed=6)
                assert (await http.put(wrong_bytes["upload_url"], content=bad)).status_code == 200
                assert (await http.put(short["upload_url"], content=data[:-10])).status_code == 200
            mismatch = await error_of(c, "complete_asset_upload", upload_id=wrong_bytes["upload_id"])
            too_short = await error_of(c, "complete_asset_upload", upload_id=short["upload_id"])
            gone = await error_of(c, "get_asset", book_id=BOOK, path="static/videos/lecture.bin")
    assert mismatch["error"] == "INVALID_ARGUMENT"
    assert mismatch["declared_sha256"] == sha(data) and mismatch["uploaded_sha256"] == sha(bad)
    assert too_short["error"] == "INVALID_ARGUMENT" and too_short["uploaded_size"] == len(data) - 10
    assert gone["error"] == "NOT_FOUND"
    assert await journal_rows(settings) == []
    assert await stored_keys(settings, ".pfs/") == []
    assert await stored_keys(settings, "books/") == []
    entries = await history(settings, BOOK, "static/videos/lecture.bin")
    refused = [e["error_code"] for e in entries if e["operation"] == "upload_asset"]
    assert refused == ["INVALID_ARGUMENT", "INVALID_ARGUMENT"]
    await assert_invariants(settings)


async def test_tampered_expired_or_foreign_tokens_are_refused(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("sqlite-fs")
    data = noise(1000, seed=8)
    forger = signer()
    with ServerProcess(settings, tmp_path / "server.log", PANAVERSITY_URL_SIGNING_SECRET=SECRET) as server:
        async with http_client(server.url) as c:
            ticket = await call(c, "upload_asset", **declare(data))
            claims = claims_of(ticket["upload_id"])
            mac = ticket["upload_id"].split(".")[1]
            bigger = dict(claims, n=10**9)
            tampered = base64.urlsafe_b64encode(json.dumps(bigger).encode()).decode().rstrip("=") + "." + mac
            expired, _ = forger.sign("upload", {k: v for k, v in claims.items() if k != "exp"}, -5)
            async with httpx.AsyncClient(timeout=30, base_url=server.url) as http:
                put_tampered = await http.put(f"/uploads/{tampered}", content=data)
                put_expired = await http.put(f"/uploads/{expired}", content=data)
                assert (await http.put(ticket["upload_url"], content=data)).status_code == 200
            tool_tampered = await error_of(c, "complete_asset_upload", upload_id=tampered)
            tool_expired = await error_of(c, "complete_asset_upload", upload_id=expired)
            async with http_client(server.url, agent="someone-else") as other:
                foreign_agent = await error_of(other, "complete_asset_upload", upload_id=ticket["upload_id"])
            stored = await call(c, "complete_asset_upload", upload_id=ticket["upload_id"])
            wrong_purpose = await error_of(
                c, "complete_asset_upload", upload_id=stored["download_url"].rsplit("/", 1)[1]
            )
            download_claims = claims_of(stored["download_url"].rsplit("/", 1)[1])
            stale, _ = forger.sign(
                "asset-download", {k: v for k, v in download_claims.items() if k != "exp"}, -5
            )
            other_hash, _ = forger.sign("asset-download", dict(download_claims, h=sha(b"older")), 60)
            async with httpx.AsyncClient(timeout=30, base_url=server.url) as http:
                get_tampered = await http.get(f"/assets/{stored['download_url'].rsplit('/', 1)[1]}x")
                get_expired = await http.get(f"/assets/{stale}")
                get_upload_token = await http.get(f"/assets/{ticket['upload_id']}")
                get_changed = await http.get(f"/assets/{other_hash}")
                await call(c, "delete_asset", book_id=BOOK, path=stored["path"])
                get_deleted = await http.get(stored["download_url"])
    assert put_tampered.status_code == put_expired.status_code == 403
    assert put_expired.json()["error"] == "FORBIDDEN" and "expired" in put_expired.json()["message"]
    for error in (tool_tampered, tool_expired, foreign_agent, wrong_purpose):
        assert error["error"] == "FORBIDDEN", error
    assert stored["mode"] == "created"
    assert get_tampered.status_code == get_expired.status_code == get_upload_token.status_code == 403
    assert get_changed.status_code == 409 and get_changed.json()["error"] == "CONFLICT"
    assert get_deleted.status_code == 404
    await assert_invariants(settings)


async def test_declaring_an_upload_checks_everything_it_can_up_front(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs", max_asset_bytes=10_000)
    async with client(create_server(settings), agent=AGENT) as c:
        existing = await call(
            c,
            "upload_asset",
            book_id=BOOK,
            asset_type="videos",
            filename="lecture.bin",
            binary_data=b64(b"v1"),
        )
        refusals = {
            "too large": await error_of(c, "upload_asset", **declare(noise(10_001))),
            "zero size": await error_of(c, "upload_asset", **dict(declare(b"x"), size=0)),
            "no sha": await error_of(c, "upload_asset", **dict(declare(b"x"), sha256=None)),
            "bad sha": await error_of(c, "upload_asset", **dict(declare(b"x"), sha256="ABC")),
            "exists": await error_of(c, "upload_asset", **declare(b"x")),
            "stale": await error_of(c, "upload_asset", **declare(b"x", expected_hash=sha(b"v0"))),
            "missing": await error_of(
                c, "upload_asset", **declare(b"x", filename="n.bin", expected_hash=sha(b"v0"))
            ),
            "bad path": await error_of(c, "upload_asset", **declare(b"x", filename="../n.bin")),
        }
        ticket = await call(c, "upload_asset", **declare(b"v2", expected_hash=existing["file_hash"]))
    assert {name: error["error"] for name, error in refusals.items()} == {
        "too large": "TOO_LARGE",
        "zero size": "INVALID_ARGUMENT",
        "no sha": "INVALID_ARGUMENT",
        "bad sha": "INVALID_ARGUMENT",
        "exists": "HASH_REQUIRED",
        "stale": "CONFLICT",
        "missing": "NOT_FOUND",
        "bad path": "INVALID_PATH",
    }
    assert refusals["exists"]["current_hash"] == existing["file_hash"]
    assert ticket["status"] == "upload_required"
    assert claims_of(ticket["upload_id"])["e"] == existing["file_hash"]
    assert await stored_keys(settings, ".pfs/uploads/") == []


async def test_completion_rechecks_the_contract_and_discards_a_hopeless_upload(backends: Backends) -> None:
    """The file changed between declaration and completion: CONFLICT, nothing kept."""
    settings = await backends.settings("postgres-fs")
    async with client(create_server(settings), agent=AGENT) as c:
        ticket = await call(c, "upload_asset", **declare(b"late bytes"))
        await overwrite(settings, claims_of(ticket["upload_id"])["k"], b"late bytes")
        await call(
            c,
            "upload_asset",
            book_id=BOOK,
            asset_type="videos",
            filename="lecture.bin",
            binary_data=b64(b"first"),
        )
        refused = await error_of(c, "complete_asset_upload", upload_id=ticket["upload_id"])
        info = await call(c, "get_asset", book_id=BOOK, path="static/videos/lecture.bin")
    assert refused["error"] == "HASH_REQUIRED" and refused["current_hash"] == sha(b"first")
    assert info["file_hash"] == sha(b"first")
    assert await stored_keys(settings, ".pfs/staging/") == []
    assert await stored_keys(settings, ".pfs/uploads/") == []
    await assert_invariants(settings)


async def test_recovery_removes_uploads_never_completed_once_expired(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs", asset_url_ttl=60)
    async with client(create_server(settings), agent=AGENT) as c:
        ticket = await call(c, "upload_asset", **declare(b"abandoned"))
    key = claims_of(ticket["upload_id"])["k"]
    await overwrite(settings, key, b"abandoned")
    stale_key = f"{UPLOAD_PREFIX}{int(time.time()) - 120}-{uuid.uuid4().hex}"
    await overwrite(settings, stale_key, b"old")
    db, store = Database.from_settings(settings), BlobStore.from_settings(settings)
    try:
        publisher = Publisher(db, store, Metrics())
        now = datetime.now(UTC)
        grace = timedelta(seconds=30)
        first = await publisher.recover(grace, now=now)
        after_first = await stored_keys(settings, UPLOAD_PREFIX)
        within_grace = await publisher.recover(grace, now=now + timedelta(seconds=70))
        expired = await publisher.recover(grace, now=now + timedelta(seconds=95))
    finally:
        store.close()
        await db.dispose()
    assert first.uploads_removed == 1 and after_first == [key]
    assert within_grace.uploads_removed == 0
    assert expired.uploads_removed == 1
    assert await stored_keys(settings, UPLOAD_PREFIX) == []
    assert first.orphans_removed == expired.orphans_removed == 0


async def test_recover_command_removes_expired_uploads(backends: Backends) -> None:
    settings = await backends.settings("postgres-s3")
    stale_key = f"{UPLOAD_PREFIX}{int(time.time()) - 10}-{uuid.uuid4().hex}"
    fresh_key = f"{UPLOAD_PREFIX}{int(time.time()) + 600}-{uuid.uuid4().hex}"
    await overwrite(settings, stale_key, b"old")
    await overwrite(settings, fresh_key, b"new")
    result = run_cli(settings_env(settings), "recover", "--grace", "0")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["uploads_removed"] == 1
    assert await stored_keys(settings, UPLOAD_PREFIX) == [fresh_key]


async def test_a_download_is_cut_short_when_the_stored_bytes_do_not_match(
    backends: Backends, tmp_path: Path
) -> None:
    settings = await backends.settings("sqlite-fs")
    data = noise(3 * 1024 * 1024, seed=9)
    with ServerProcess(settings, tmp_path / "server.log") as server:
        async with http_client(server.url) as c:
            ticket = await call(c, "upload_asset", **declare(data))
            async with httpx.AsyncClient(timeout=60) as http:
                assert (await http.put(ticket["upload_url"], content=data)).status_code == 200
            stored = await call(c, "complete_asset_upload", upload_id=ticket["upload_id"])
        corrupt = data[:-1] + bytes([data[-1] ^ 1])
        await overwrite(settings, f"books/{BOOK}/{stored['path']}", corrupt)
        received = bytearray()
        async with httpx.AsyncClient(timeout=60) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                async with http.stream("GET", stored["download_url"]) as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_bytes():
                        received += chunk
            ranged = await http.get(stored["download_url"], headers={"Range": "bytes=0-9"})
    assert len(received) < len(data)
    assert ranged.status_code == 206 and ranged.content == data[:10]
