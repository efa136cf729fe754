"""JWT authentication and access control over real HTTP (specs/test-catalogue.md S-1, S-11; specs/contract.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import time
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastmcp import Client

from panaversity_fs.auth.access import TOOL_RULES, WRITE, granted
from panaversity_fs.auth.tokens import build_verifier, check_secret
from panaversity_fs.config import Settings
from panaversity_fs.errors import ConfigurationError
from testkit.processes import ServerProcess, run_cli, settings_env
from tests.auth_support import (
    ALL_SCOPES,
    HS_ENV,
    SECRET,
    KeyRing,
    audit_rows,
    claims,
    hs_token,
    jwks_server,
    unsigned_token,
)
from tests.conftest import Backends
from tests.support import BOOK, HEADERS, INIT, LESSON, call, error_of

OTHER_BOOK = "other-book"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def rpc(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- configuration (S-11) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    ["short", "a" * 40, "changeme-changeme-changeme-changeme", "your-super-secret-jwt-key-goes-here!!"],
)
def test_weak_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ConfigurationError):
        check_secret(secret)
    with pytest.raises(ConfigurationError):
        build_verifier(Settings(jwt_secret=secret))  # pyright: ignore[reportCallIssue]


def test_algorithm_configuration() -> None:
    check_secret(SECRET)
    assert build_verifier(Settings()) is None
    hs = build_verifier(Settings(jwt_secret=SECRET))  # pyright: ignore[reportCallIssue]
    assert hs is not None and hs.algorithms == ["HS256"]
    keyed = build_verifier(Settings(jwks_url="https://issuer.test/jwks"))  # pyright: ignore[reportCallIssue]
    assert keyed is not None and keyed.algorithms == ["ES256", "RS256"]
    wrong = [
        {"jwt_secret": SECRET, "jwt_algorithms": ["RS256"]},
        {"jwks_url": "https://issuer.test/jwks", "jwt_algorithms": ["HS256"]},
        {"jwks_url": "https://issuer.test/jwks", "jwt_algorithms": ["none"]},
        {"jwt_secret": SECRET, "jwks_url": "https://issuer.test/jwks"},
        {"jwks_url": "file:///etc/passwd"},
    ]
    for values in wrong:
        with pytest.raises(ConfigurationError):
            build_verifier(Settings(**values))


def test_installed_and_locked_pyjwt_is_at_least_2_13() -> None:
    """S-11: PyJWT before 2.13 accepted a public JWK as an HMAC secret (CVE-2026-48526)."""
    installed = tuple(int(part) for part in metadata.version("pyjwt").split(".")[:2])
    assert installed >= (2, 13)
    lock = (Path(__file__).resolve().parents[2] / "uv.lock").read_text()
    locked = re.search(r'\[\[package\]\]\nname = "pyjwt"\nversion = "(\d+)\.(\d+)', lock)
    assert locked is not None and (int(locked.group(1)), int(locked.group(2))) >= (2, 13)


def test_scope_implications() -> None:
    assert granted(frozenset({"fs:admin"})) == {"fs:admin", "fs:write", "fs:read"}
    assert granted(frozenset({"fs:write"})) == {"fs:write", "fs:read"}
    assert granted(frozenset({"fs:read", "openid"})) == {"fs:read"}


async def test_server_refuses_to_start_with_a_short_secret(backends: Backends) -> None:
    settings = await backends.settings("sqlite-fs")
    env = settings_env(settings) | {"PANAVERSITY_JWT_SECRET": "too-short"}
    result = run_cli(env, "serve", "--port", "0", timeout=60)
    assert result.returncode == 2
    assert "PANAVERSITY_JWT_SECRET" in result.stderr and "too-short" not in result.stderr


# -- HS256 server: 401s, scopes, identity, limits ----------------------------------------------


async def test_bad_tokens_get_401_on_every_tool(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("sqlite-fs")
    now = int(time.time())
    variants = {
        "none": None,
        "garbage": "not.a.jwt",
        "alg none": unsigned_token(),
        "wrong secret": jwt.encode({"sub": "a", "exp": now + 60}, "x" * 64, algorithm="HS256"),
        "HS512 not configured": jwt.encode(
            {"sub": "a", "exp": now + 60, "iss": HS_ENV["PANAVERSITY_AUTH_ISSUER"]}, SECRET, algorithm="HS512"
        ),
        "expired beyond leeway": hs_token(exp=now - 61),
        "not yet valid": hs_token(nbf=now + 120),
        "missing exp": hs_token(exp=None),
        "wrong iss": hs_token(iss="https://evil.test"),
        "wrong aud": hs_token(aud="another-service"),
        "no iss": hs_token(iss=None),
        "sub system": hs_token(sub="system"),
        "empty sub": hs_token(sub=""),
        "no sub": hs_token(sub=None),
        "bad books claim": hs_token(books="python-book"),
        "bad user_id claim": hs_token(user_id="../etc"),
    }
    # Hundreds of failures from one address: the per-address failure limit (tested in
    # test_limits.py) would answer 429 long before the matrix is through.
    unlimited = HS_ENV | {"PANAVERSITY_AUTH_FAILURES_PER_MINUTE": "0"}
    with ServerProcess(settings, tmp_path / "server.log", **unlimited) as server:
        async with Client(f"{server.url}/mcp", auth=hs_token()) as c:
            tools = sorted(tool.name for tool in await c.list_tools())
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200
            for name, token in variants.items():
                headers = HEADERS | (bearer(token) if token else {})
                for message in [INIT] + [rpc("tools/call", {"name": t, "arguments": {}}) for t in tools]:
                    response = await http.post("/mcp", json=message, headers=headers)
                    assert response.status_code == 401, (name, message["params"].get("name"))
                    assert response.headers["www-authenticate"].startswith("Bearer"), name
            leeway = await http.post("/mcp", json=INIT, headers=HEADERS | bearer(hs_token(exp=now - 30)))
            assert leeway.status_code == 200, "a token expired within the leeway is accepted"
        assert SECRET not in server.log_tail(1000)


async def test_every_tool_needs_its_scope(backends: Backends, tmp_path: Path) -> None:
    """S-1: every tool `tools/list` shows has an access rule and is refused without its scope."""
    settings = await backends.settings("sqlite-fs")
    lacking = {"fs:read": "", "fs:write": "fs:read", "fs:admin": "fs:read fs:write"}
    with ServerProcess(settings, tmp_path / "server.log", **HS_ENV) as server:
        url = f"{server.url}/mcp"
        async with Client(url, auth=hs_token("admin-bot")) as c:
            tools = [tool.name for tool in await c.list_tools()]
        assert set(tools) <= set(TOOL_RULES), set(tools) - set(TOOL_RULES)
        assert len(tools) >= 15
        for scope, weaker in lacking.items():
            async with Client(url, auth=hs_token("weak-bot", weaker)) as c:
                for tool in tools:
                    if TOOL_RULES[tool].scope != scope:
                        continue
                    error = await error_of(c, tool, book_id=BOOK)
                    assert error["error"] == "FORBIDDEN", (tool, error)
                    assert scope in error["message"] and error["required_scope"] == scope, (tool, error)
        # The right scope gets past the access check (whatever the tool then says).
        async with Client(url, auth=hs_token("strong-bot", ALL_SCOPES)) as c:
            for tool in tools:
                result = await c.call_tool(tool, {}, raise_on_error=False)
                text = result.content[0].text if result.is_error else ""  # type: ignore[union-attr]
                assert "required_scope" not in text, (tool, text)
    rows = await audit_rows(settings)
    refused = {(r["agent_id"], r["operation"]) for r in rows if r["error_code"] == "FORBIDDEN"}
    assert {op for agent, op in refused if agent == "weak-bot"} == set(tools)


async def test_identity_user_and_book_limits(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("postgres-fs")
    with ServerProcess(settings, tmp_path / "server.log", **HS_ENV) as server:
        url = f"{server.url}/mcp"
        async with Client(url, auth=hs_token("editor-sub", agent_id="editor-agent")) as editor:
            base = await call(editor, "write_content", book_id=BOOK, path=LESSON, content="# base\n")
            await call(editor, "write_content", book_id=OTHER_BOOK, path=LESSON, content="# other\n")
            await call(editor, "write_content", book_id=BOOK, path=LESSON, content="# bob\n", user_id="bob")
            await call(
                editor,
                "upload_asset",
                book_id=BOOK,
                asset_type="images",
                filename="a.png",
                binary_data=base64.b64encode(PNG).decode(),
            )
        alice = hs_token("alice-tutor", "fs:read fs:write", user_id="alice")
        async with Client(url, auth=alice) as c:
            mine = await call(
                c,
                "write_content",
                book_id=BOOK,
                path=LESSON,
                content="# alice\n",
                user_id="alice",
                expected_hash=base["file_hash"],
            )
            assert mine["mode"] in ("created", "updated")
            assert (await call(c, "read_content", book_id=BOOK, path=LESSON))["content"] == "# base\n"
            own = await call(c, "read_content", book_id=BOOK, path=LESSON, user_id="alice")
            assert own["content"] == "# alice\n"
            refusals = [
                await error_of(c, "read_content", book_id=BOOK, path=LESSON, user_id="bob"),
                await error_of(c, "delete_content", book_id=BOOK, path=LESSON, user_id="bob"),
                await error_of(c, "write_content", book_id=BOOK, path=LESSON, content="x"),
                await error_of(c, "delete_content", book_id=BOOK, path=LESSON),
                await error_of(c, "grep_search", pattern="bob", book_id=BOOK, user_id="bob"),
                await error_of(c, "get_book_archive", book_id=BOOK, user_id="bob"),
                await error_of(c, "delta_build", book_id=BOOK, since="2020-01-01T00:00:00Z", user_id="bob"),
                await error_of(c, "validate_book", book_id=BOOK),
                await error_of(c, "delete_asset", book_id=BOOK, path="static/images/a.png"),
                await error_of(c, "upload_asset", book_id=BOOK, asset_type="images", filename="b.png"),
                await error_of(c, "complete_asset_upload", upload_id="x"),
            ]
            for error in refusals:
                assert error["error"] == "FORBIDDEN" and error["limit"] == "user_id", error
                assert "bob" not in json.dumps(error)
        shelf = hs_token("shelf-bot", "fs:read fs:write", books=[BOOK])
        async with Client(url, auth=shelf) as c:
            listed = await call(c, "list_books", book_id=BOOK)
            assert [b["book_id"] for b in listed["books"]] == [BOOK]
            hits = await call(c, "grep_search", pattern="base", book_id=BOOK)
            assert hits["matches"]
            refusals = [
                await error_of(c, "read_content", book_id=OTHER_BOOK, path=LESSON),
                await error_of(c, "write_content", book_id=OTHER_BOOK, path=LESSON, content="x"),
                await error_of(c, "list_books"),
                await error_of(c, "list_books", book_id=OTHER_BOOK),
                await error_of(c, "grep_search", pattern="other", all_books=True),
                await error_of(c, "glob_search", pattern="**", book_id=BOOK, all_books="true"),
                await error_of(c, "get_book_archive", book_id=OTHER_BOOK),
                await error_of(c, "plan_build", book_id=OTHER_BOOK),
            ]
            for error in refusals:
                assert error["error"] == "FORBIDDEN" and error["limit"] == "books", error
                assert "other" not in error["message"], error
    rows = await audit_rows(settings)
    agents = {r["agent_id"] for r in rows}
    assert {"editor-agent", "alice-tutor", "shelf-bot"} <= agents and "editor-sub" not in agents
    refused = [r for r in rows if r["error_code"] == "FORBIDDEN"]
    assert {r["agent_id"] for r in refused} == {"alice-tutor", "shelf-bot"}
    assert len(refused) == 11 + 8


async def test_download_routes_accept_bearer_tokens(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("sqlite-fs")
    with ServerProcess(settings, tmp_path / "server.log", **HS_ENV) as server:
        async with Client(f"{server.url}/mcp", auth=hs_token("writer")) as c:
            await call(c, "write_content", book_id=BOOK, path=LESSON, content="# base\n")
            await call(c, "write_content", book_id=BOOK, path=LESSON, content="# carol\n", user_id="carol")
            await call(c, "write_content", book_id=OTHER_BOOK, path=LESSON, content="# other\n")
            stored = await call(
                c,
                "upload_asset",
                book_id=BOOK,
                asset_type="images",
                filename="a.png",
                binary_data=base64.b64encode(PNG).decode(),
            )
            signed = await call(c, "get_book_archive", book_id=BOOK)
        reader = bearer(hs_token("reader", "fs:read", user_id="carol", books=[BOOK]))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            own = await http.get(f"/archives/{BOOK}.zip?user_id=carol", headers=reader)
            assert own.status_code == 200, own.text
            with zipfile.ZipFile(io.BytesIO(own.content)) as archive:
                assert archive.read(LESSON) == b"# carol\n"
            base = await http.get(f"/archives/{BOOK}.zip", headers=reader)
            with zipfile.ZipFile(io.BytesIO(base.content)) as archive:
                assert archive.read(LESSON) == b"# base\n"
            asset = await http.get(f"/assets/{BOOK}/static/images/a.png", headers=reader)
            assert asset.status_code == 200 and asset.content == PNG
            assert asset.headers["etag"] == f'"{stored["file_hash"]}"'
            assert (await http.get(signed["url"])).status_code == 200, "signed URLs still work alone"
            denied = {
                "other user": await http.get(f"/archives/{BOOK}.zip?user_id=dave", headers=reader),
                "other book": await http.get(f"/archives/{OTHER_BOOK}.zip", headers=reader),
                "other book asset": await http.get(
                    f"/assets/{OTHER_BOOK}/static/images/a.png", headers=reader
                ),
                "no scope": await http.get(f"/archives/{BOOK}.zip", headers=bearer(hs_token("x", ""))),
            }
            for case, response in denied.items():
                assert response.status_code == 403 and response.json()["error"] == "FORBIDDEN", case
            unauthenticated = {
                "no token": await http.get(f"/archives/{BOOK}.zip"),
                "bad token": await http.get(f"/archives/{BOOK}.zip", headers=bearer("nope")),
                "asset, no token": await http.get(f"/assets/{BOOK}/static/images/a.png"),
            }
            for case, response in unauthenticated.items():
                assert response.status_code == 401 and response.json()["error"] == "UNAUTHENTICATED", case
                assert response.headers["www-authenticate"].startswith("Bearer"), case
            missing = await http.get(f"/assets/{BOOK}/static/images/none.png", headers=reader)
            assert missing.status_code == 404
    rows = await audit_rows(settings)
    downloads = [r for r in rows if r["operation"] in ("download_archive", "download_asset")]
    assert {r["agent_id"] for r in downloads} >= {"reader"}
    assert any(r["error_code"] == "FORBIDDEN" and r["agent_id"] == "reader" for r in downloads)


async def test_cli_token_works_against_the_server(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("sqlite-fs")
    env = settings_env(settings) | HS_ENV
    minted = run_cli(env, "token", "--sub", "cli-agent", "--scope", "fs:read", "--books", f"{BOOK},x-book")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], audience=HS_ENV["PANAVERSITY_AUTH_AUDIENCE"])
    assert decoded["books"] == [BOOK, "x-book"] and decoded["scope"] == "fs:read"
    assert run_cli(env, "token", "--sub", "system").returncode == 2
    with ServerProcess(settings, tmp_path / "server.log", **HS_ENV) as server:
        async with Client(f"{server.url}/mcp", auth=token) as c:
            assert (await error_of(c, "list_books", book_id=BOOK))["error"] == "NOT_FOUND"
            error = await error_of(c, "write_content", book_id=BOOK, path=LESSON, content="x")
            assert error["required_scope"] == WRITE


# -- JWKS: RS256 / ES256, rotation, confusion --------------------------------------------------


async def test_jwks_keys_rotation_and_confusion(backends: Backends, tmp_path: Path) -> None:
    settings = await backends.settings("sqlite-fs")
    ring = KeyRing()
    attacker = KeyRing()
    attacker.rotate("rsa-2")  # its own key under the key id the server trusts
    with jwks_server(ring) as jwks_url, jwks_server(attacker) as attacker_url:
        env = {
            "PANAVERSITY_JWKS_URL": jwks_url,
            "PANAVERSITY_AUTH_ISSUER": HS_ENV["PANAVERSITY_AUTH_ISSUER"],
            "PANAVERSITY_AUTH_AUDIENCE": HS_ENV["PANAVERSITY_AUTH_AUDIENCE"],
            "PANAVERSITY_JWKS_REFRESH_INTERVAL": "0",
        }
        with ServerProcess(settings, tmp_path / "server.log", **env) as server:
            url = f"{server.url}/mcp"
            async with Client(url, auth=ring.token("rsa-1", "rs-agent")) as c:
                await call(c, "write_content", book_id=BOOK, path=LESSON, content="# rs\n")
            async with Client(url, auth=ring.token("ec-1", "es-agent")) as c:
                assert (await call(c, "read_content", book_id=BOOK, path=LESSON))["content"] == "# rs\n"
            ring.rotate("rsa-2")
            async with Client(url, auth=ring.token("rsa-2", "rotated-agent")) as c:
                await call(c, "read_content", book_id=BOOK, path=LESSON)
            confusion = _hs_with_raw_key(ring.public_pem("rsa-2"))
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                for case, token in {
                    "HS256 signed with the public key": confusion,
                    "unknown kid": _with_kid(ring, "nope"),
                    "retired key": ring.token("rsa-1"),
                    "alg none": unsigned_token(),
                    "HS256 with a shared secret": hs_token(),
                    "HS256 keyed with the public JWK": _hs_with_raw_key(
                        json.dumps(ring.jwks()["keys"][-1]).encode()
                    ),
                    "attacker key named by jku": attacker.token(
                        "rsa-2", "evil", headers_extra={"jku": attacker_url, "x5u": attacker_url}
                    ),
                }.items():
                    response = await http.post("/mcp", json=INIT, headers=HEADERS | bearer(token))
                    assert response.status_code == 401, case
                    assert response.headers["www-authenticate"].startswith("Bearer"), case
        assert attacker.fetches == 0  # keys come from the configured JWKS URL only
    rows = await audit_rows(settings)
    assert {"rs-agent", "es-agent", "rotated-agent"} <= {r["agent_id"] for r in rows}
    assert "evil" not in {r["agent_id"] for r in rows}


def _hs_with_raw_key(key: bytes) -> str:
    """HS256 over the token with `key` as the HMAC secret (PyJWT refuses PEM keys, so by hand)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-2"}).encode())
    body = b64(
        json.dumps(
            {
                "sub": "evil",
                "scope": ALL_SCOPES,
                "exp": now + 60,
                "iss": HS_ENV["PANAVERSITY_AUTH_ISSUER"],
                "aud": HS_ENV["PANAVERSITY_AUTH_AUDIENCE"],
            }
        ).encode()
    )
    mac = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(mac)}"


def _with_kid(ring: KeyRing, kid: str) -> str:
    """A token signed by the current RSA key but naming a key id the JWKS does not have."""
    key = ring.rsa["rsa-2"]
    return jwt.encode(claims("evil"), key, algorithm="RS256", headers={"kid": kid})
