"""Check the official TypeScript SDK and the MCP Inspector CLI against a running server.

    uv run python scripts/check_clients.py

The official Python SDK is checked in the test suite (tests/system/test_official_clients.py); these
two need Node.js, so they are one documented command instead. It installs the pinned clients
into `.cache/mcp-clients/` (npm, once), starts `panaversity-fs serve` on a free loopback port
(SQLite + a scratch folder, HS256 auth with an issuer, so discovery metadata is served), and:

- runs `scripts/ts_client_check.mjs` with `@modelcontextprotocol/sdk`: a 2 MiB lesson, a book
  page, a 1.2 MB inline image, an error result, the resource template, `resources/read`, a
  completion, and a connection without a token (the 401 must say what is needed);
- runs the Inspector CLI (`@modelcontextprotocol/inspector --cli`): `tools/list`, a read,
  `resources/read`, and a call without a token (exit status 3, `auth_required`).

Prints one line per check and exits non-zero if any failed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import jwt

REPO = Path(__file__).resolve().parent.parent
CLIENTS = REPO / ".cache" / "mcp-clients"
PACKAGES = ["@modelcontextprotocol/sdk@1.32.2", "@modelcontextprotocol/inspector@2.12.0"]
SECRET = "check-clients-" + "8d2f4a6c1e3b5d7f9a0c2e4b6d8f1a3c5e7b9d0f"
ISSUER = "https://issuer.check.test"
BOOK = "ts-check-book"
LESSON = "content/01-Check/01-Client/01-largest.md"


def install_clients() -> None:
    if (CLIENTS / "node_modules" / "@modelcontextprotocol" / "inspector").is_dir():
        return
    CLIENTS.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm is not installed: the TypeScript clients need Node.js")
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CLIENTS), *PACKAGES], check=True
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def token() -> str:
    now = int(time.time())
    claims = {"sub": "client-check", "scope": "fs:admin", "iss": ISSUER, "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def start_server(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/check.db",
        "PANAVERSITY_STORAGE_ROOT": str(workdir / "data"),
        "PANAVERSITY_SERVER_PORT": str(port),
        "PANAVERSITY_JWT_SECRET": SECRET,
        "PANAVERSITY_AUTH_ISSUER": ISSUER,
        "PANAVERSITY_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    log = (workdir / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "panaversity_fs", "serve"], env=env, stdout=log, stderr=log
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    sys.exit(f"the server did not start: see {workdir / 'server.log'}")


def inspector(url: str, *args: str, bearer: str | None) -> subprocess.CompletedProcess[str]:
    command = [str(CLIENTS / "node_modules" / ".bin" / "mcp-inspector"), "--cli", url, "--transport", "http"]
    if bearer:
        command += ["--header", f"Authorization: Bearer {bearer}"]
    env = {**os.environ, "HOME": str(CLIENTS / "home")}
    return subprocess.run(
        [*command, "--stored-auth-only", "--format", "json", "-q", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def inspector_checks(url: str, bearer: str) -> list[dict[str, object]]:
    checks: list[dict[str, object]] = []
    listed = inspector(url, "--method", "tools/list", bearer=bearer)
    names = [tool["name"] for tool in json.loads(listed.stdout or "{}").get("result", {}).get("tools", [])]
    checks.append(
        {
            "name": "inspector tools/list",
            "ok": listed.returncode == 0 and len(names) >= 17,
            "detail": len(names),
        }
    )
    arguments = json.dumps({"book_id": BOOK, "path": LESSON})
    read = inspector(
        url,
        "--method",
        "tools/call",
        "--tool-name",
        "read_content",
        "--tool-args-json",
        arguments,
        bearer=bearer,
    )
    content = json.loads(read.stdout or "{}").get("result", {}).get("content", [{}])
    checks.append(
        {
            "name": "inspector read_content (2 MiB)",
            "ok": read.returncode == 0 and len(content[0].get("text", "")) == 2 * 1024 * 1024,
            "detail": read.stderr[-200:],
        }
    )
    resource = inspector(url, "--method", "resources/read", "--uri", f"book://{BOOK}/{LESSON}", bearer=bearer)
    contents = json.loads(resource.stdout or "{}").get("result", {}).get("contents", [{}])
    checks.append(
        {
            "name": "inspector resources/read",
            "ok": resource.returncode == 0 and contents[0].get("mimeType") == "text/markdown",
            "detail": resource.stderr[-200:],
        }
    )
    anonymous = inspector(url, "--method", "tools/list", bearer=None)
    checks.append(
        {
            "name": "inspector without a token",
            "ok": anonymous.returncode == 3 and "bearer token" in anonymous.stderr,
            "detail": anonymous.stderr[-300:],
        }
    )
    return checks


def main() -> None:
    install_clients()
    workdir = Path(tempfile.mkdtemp(prefix="check-clients-"))
    port = free_port()
    server = start_server(workdir, port)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        bearer = token()
        node = shutil.which("node") or "node"
        # An ES module resolves packages from its own folder: run a copy beside node_modules.
        script = shutil.copy(REPO / "scripts" / "ts_client_check.mjs", CLIENTS / "ts_client_check.mjs")
        ts = subprocess.run(
            [node, str(script), url, bearer], capture_output=True, text=True, timeout=300, check=False
        )
        checks = [json.loads(line) for line in ts.stdout.splitlines() if line.startswith("{")]
        if not checks:
            checks = [{"name": "typescript sdk", "ok": False, "detail": ts.stderr[-500:]}]
        checks += inspector_checks(url, bearer)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    for check in checks:
        print(f"{'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")
    sys.exit(0 if all(check["ok"] for check in checks) else 1)


if __name__ == "__main__":
    main()
