"""Several real processes for multi-replica and crash tests: a private PostgreSQL cluster, moto's
S3 server in its own process, and N `panaversity-fs serve` replicas sharing one database and one
store.

Topology (tests/chaos/test_replicas.py, tests/crash_campaign.py):

    writers (pytest process) --HTTP--> replica 0..N-1 (127.0.0.1, one port each)
                                         |  same DATABASE_URL, same S3 bucket + prefix,
                                         |  same URL-signing and audit-checkpoint secrets
                              PostgreSQL (private cluster or the machine's) + moto_server

The private cluster exists so that `pg_ctl stop -m immediate` hits a server nobody else uses:
the machine's shared cluster on 5432 serves the rest of the suite.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx

from panaversity_fs.config import Settings
from testkit.mcp_http import answer_to
from testkit.processes import REPO, ServerProcess, free_port, run_cli, settings_env, wait_healthy

PG_BIN = Path(os.environ.get("PFS_PG_BIN", "/usr/lib/postgresql/15/bin"))
S3_BUCKET = "pfs-test"
S3_KEYS = {"s3_access_key_id": "testing", "s3_secret_access_key": "testing"}


class ClusterUnavailable(RuntimeError):
    """A piece of the cluster (PostgreSQL binaries, the postgres user, moto) cannot be made here."""


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free loopback port, fsync on, trust auth.

    Run as root, initdb and pg_ctl run as the `postgres` user (initdb refuses root); the data
    directory, socket directory and log live in one temporary directory removed by `cleanup`.
    """

    def __init__(self, max_connections: int = 200) -> None:
        self.port = free_port()
        self._max_connections = max_connections
        self.root = Path(tempfile.mkdtemp(prefix="pfs-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "postgres.log"
        self._initialised = False

    def url(self, database: str = "postgres") -> str:
        """libpq-style URL of `database` on this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Initialise the cluster on first use, then start it and wait until it accepts connections.

        Raises:
            ClusterUnavailable: the binaries or the postgres user are missing, or initdb failed.
            RuntimeError: pg_ctl could not start the server.
        """
        if not self._initialised:
            self._initdb()
        self._pg_ctl(
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            str(self.log),
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.sockets}",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `immediate` is a crash (no checkpoint, WAL replay at the next start)."""
        self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def restart(self, mode: str = "immediate") -> None:
        """Stop with `mode`, then start again."""
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        """Whether the postmaster is up."""
        result = subprocess.run(
            [*self._as_postgres(), str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"],
            check=False,
            capture_output=True,
        )
        return result.returncode == 0

    def create_database(self, name: str) -> str:
        """Create database `name`; return its URL."""
        subprocess.run(
            [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return self.url(name)

    def cleanup(self) -> None:
        """Stop the server if it runs and remove its directory."""
        if self._initialised and self.running():
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _initdb(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise ClusterUnavailable(f"no PostgreSQL binaries in {PG_BIN}")
        self.sockets.mkdir()
        if os.geteuid() == 0:
            try:
                shutil.chown(self.root, "postgres", "postgres")
                shutil.chown(self.sockets, "postgres", "postgres")
            except (LookupError, OSError) as exc:
                raise ClusterUnavailable(f"cannot hand {self.root} to the postgres user: {exc}") from exc
        result = subprocess.run(
            [
                *self._as_postgres(),
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise ClusterUnavailable(f"initdb failed: {result.stdout}{result.stderr}")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# pfs test cluster: real durability, room for three replicas' pools\n"
                "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
                f"max_connections = {self._max_connections}\nshared_buffers = 64MB\n"
                "logging_collector = off\nlog_min_messages = warning\n"
            )
        self._initialised = True

    def _as_postgres(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _pg_ctl(self, *args: str) -> None:
        result = subprocess.run(
            [*self._as_postgres(), str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[0]} failed: {result.stdout}{result.stderr}{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class MotoProcess:
    """moto's S3 server as its own process (`moto_server`), with the test bucket made.

    In a separate process, several replicas hammering S3 do not compete with the test process
    for its GIL.
    """

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> MotoProcess:
        """Start the server, wait until it answers, create the bucket.

        Raises:
            ClusterUnavailable: there is no `moto_server` next to this interpreter.
            RuntimeError: it exited or did not answer in time.
        """
        executable = Path(sys.executable).parent / "moto_server"
        if not executable.exists():
            raise ClusterUnavailable(f"no moto_server next to {sys.executable}")
        with self._log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(executable), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            try:
                httpx.get(f"{self.endpoint}/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto_server did not answer") from None
                time.sleep(0.1)
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=S3_BUCKET)
        return self

    def store_settings(self, prefix: str) -> dict[str, Any]:
        """Settings of an S3 store under key prefix `prefix` of the bucket."""
        return {
            "storage_backend": "s3",
            "s3_bucket": S3_BUCKET,
            "s3_endpoint": self.endpoint,
            "s3_region": "us-east-1",
            "s3_root": f"/{prefix.strip('/')}/",
            **S3_KEYS,
        }

    def stop(self) -> None:
        """Terminate the server (killed if it does not exit)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


FORK_SERVER = r"""
import os, select, signal, sys
import panaversity_fs.ops.cli, panaversity_fs.app.server, uvicorn

children = set()

def reap():
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        os.write(1, f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())

pending = b""
while True:
    if not select.select([0], [], [], 0.05)[0]:
        reap()
        continue
    chunk = os.read(0, 4096)
    if not chunk:
        break
    pending += chunk
    while b"\n" in pending:
        line, pending = pending.split(b"\n", 1)
        command, first, rest = line.decode().split(" ", 2)
        if command == "signal" and int(first) in children:
            os.kill(int(first), int(rest))
        elif command == "serve":
            pid = os.fork()
            if pid == 0:
                try:
                    log = os.open(rest, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                    sys.argv = ["panaversity-fs", "serve", "--port", first]
                    panaversity_fs.ops.cli.run()
                finally:
                    os._exit(70)
            children.add(pid)
            os.write(1, f"pid {pid}\n".encode())
    reap()
for pid in children:
    os.kill(pid, signal.SIGKILL)
"""
"""A process that imports the server once, then forks one server per `serve PORT LOG` line it
reads, signals its children on `signal PID SIG` and reports `pid PID` and `exit PID STATUS`.
It SIGKILLs its children when its stdin closes (the test process ended)."""


class ForkServer:
    """Starts servers by forking a process that has already imported everything.

    Importing the server costs ~2 s of CPU here, the start-up itself ~0.1 s: a crash campaign
    restarting a replica every second or two would otherwise spend a core on imports. The
    forked child runs exactly `panaversity-fs serve --port PORT`. Signals go through the fork
    server, which only signals children it has not reaped (a pid is never reused under us).
    """

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-c", FORK_SERVER],
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._changed = threading.Condition()
        self._exits: dict[int, int] = {}
        self._started: queue.Queue[int] = queue.Queue()
        self._spawning = threading.Lock()
        self._gone = False
        threading.Thread(target=self._read, name="pfs-fork-server", daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            kind, pid, *status = line.decode().split()
            if kind == "pid":
                self._started.put(int(pid))
            elif kind == "exit":
                with self._changed:
                    self._exits[int(pid)] = int(status[0])
                    self._changed.notify_all()
        with self._changed:
            self._gone = True
            self._changed.notify_all()

    def _send(self, line: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(f"{line}\n".encode())
        self._process.stdin.flush()

    @property
    def running(self) -> bool:
        """Whether the fork server still runs."""
        return not self._gone and self._process.poll() is None

    def spawn(self, port: int, log_path: Path) -> ForkedServer:
        """Fork `panaversity-fs serve --port PORT` with its output appended to `log_path`.

        Raises:
            RuntimeError: the fork server is gone or did not answer.
        """
        with self._spawning:
            try:
                self._send(f"serve {port} {log_path}")
                return ForkedServer(self, self._started.get(timeout=30))
            except (OSError, queue.Empty) as exc:
                raise RuntimeError(f"the fork server did not start a server: {exc!r}") from exc

    def signal(self, pid: int, sig: int) -> None:
        """Send `sig` to child `pid` unless it has already ended."""
        with contextlib.suppress(OSError):
            self._send(f"signal {pid} {int(sig)}")

    def status(self, pid: int) -> int | None:
        """Exit status of child `pid` (negative: killed by that signal), None while it runs."""
        with self._changed:
            return self._exits.get(pid)

    def wait(self, pid: int, timeout: float | None) -> int:
        """Wait until child `pid` ends and return its exit status.

        Raises:
            subprocess.TimeoutExpired: it still runs after `timeout` seconds.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: pid in self._exits or self._gone, timeout):
                raise subprocess.TimeoutExpired(f"server {pid}", timeout or 0)
            return self._exits.get(pid, -int(signal.SIGKILL))

    def close(self) -> None:
        """Stop the fork server (it SIGKILLs any child still running)."""
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class ForkedServer:
    """The `subprocess.Popen` surface `ServerProcess` uses, for a server forked by a `ForkServer`."""

    def __init__(self, parent: ForkServer, pid: int) -> None:
        self._parent = parent
        self.pid = pid

    @property
    def returncode(self) -> int | None:
        return self._parent.status(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            self._parent.signal(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        return self._parent.wait(self.pid, timeout)


class Replica(ServerProcess):
    """A `ServerProcess` that can be SIGKILLed and started again on the same port, forked from
    `forks` when given (see `ForkServer`)."""

    def __init__(
        self, settings: Settings, log_path: Path, forks: ForkServer | None = None, **extra_env: Any
    ) -> None:
        super().__init__(settings, log_path, **extra_env)
        self._forks = forks

    def start(self, timeout: float = 60.0) -> Replica:
        """Start the server and wait until `/health` answers; a process that did not come up is
        killed before the error is raised.

        Raises:
            RuntimeError: the server exited or did not become healthy in time.
        """
        try:
            if self._forks is not None and self._forks.running:
                self.process = self._forks.spawn(self.port, self.log_path)  # type: ignore[assignment]
                self._wait_healthy(timeout)
            else:
                super().start(timeout)
        except RuntimeError:
            if self.alive:
                assert self.process is not None
                self.process.kill()
                self.process.wait()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        assert self.process is not None
        if wait_healthy(f"{self.url}/health", self.process, timeout, interval=0.05):
            return
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}: {self.log_tail()}")
        raise RuntimeError(f"server did not become healthy: {self.log_tail()}")

    @property
    def alive(self) -> bool:
        """Whether the server process is running."""
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` and wait for the process to end."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(sig)
            self.process.wait()


class Replicas:
    """`count` server processes on their own loopback ports, sharing `settings`' database and
    store and the same URL-signing and audit-checkpoint secrets (32 random bytes each).

    With `fork`, servers are forked from one `ForkServer` (restarts cost no imports).
    """

    def __init__(
        self, settings: Settings, count: int, log_dir: Path, fork: bool = False, **extra_env: Any
    ) -> None:
        self.settings = settings
        self.secrets = {
            "PANAVERSITY_URL_SIGNING_SECRET": secrets.token_hex(32),
            "PANAVERSITY_AUDIT_CHECKPOINT_SECRET": secrets.token_hex(32),
        }
        extra = {**self.secrets, **{k: str(v) for k, v in extra_env.items()}}
        self.env = settings_env(settings) | extra
        """Environment of the servers, and of `panaversity-fs` commands against the same backends."""
        self._forks = ForkServer(self.env, log_dir / "fork-server.log") if fork else None
        self.servers = [
            Replica(settings, log_dir / f"replica-{i}.log", self._forks, **extra) for i in range(count)
        ]

    def __len__(self) -> int:
        return len(self.servers)

    @property
    def urls(self) -> list[str]:
        """Base URL of each replica (`/mcp` is the MCP endpoint)."""
        return [server.url for server in self.servers]

    def start(self, timeout: float = 90.0) -> Replicas:
        """Start every replica at once and wait until all are healthy.

        Raises:
            RuntimeError: one did not come up (the others are stopped).
        """
        with ThreadPoolExecutor(len(self.servers)) as pool:
            futures = [pool.submit(server.start, timeout) for server in self.servers]
            errors = [f.exception() for f in futures]
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            self.stop()
            raise RuntimeError(f"a replica did not start: {failed}") from failed
        return self

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to replica `index` and wait for it to end."""
        self.servers[index].kill(sig)

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Start replica `index` again on its port (killed first if it still runs).

        Raises:
            RuntimeError: it did not become healthy.
        """
        server = self.servers[index]
        server.kill()
        server.start(timeout)

    def alive(self, index: int) -> bool:
        """Whether replica `index` runs."""
        return self.servers[index].alive

    def stop(self, sig: int = signal.SIGTERM) -> list[int | None]:
        """Stop every running replica with `sig`, then the fork server; return the replicas' exit
        statuses (None: was not running)."""
        statuses = [server.stop(sig) if server.alive else None for server in self.servers]
        if self._forks is not None:
            self._forks.close()
        return statuses

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run `panaversity-fs ARGS` against the replicas' backends and secrets."""
        return run_cli(self.env, *args, timeout=timeout)

    def log_tails(self, lines: int = 15) -> str:
        """The end of every replica's log, for failure messages."""
        return "\n".join(f"--- replica {i}\n{s.log_tail(lines)}" for i, s in enumerate(self.servers))


MCP_PROTOCOL = "2025-06-18"


class Refused(Exception):
    """The call never reached a server (connection refused, no session): nothing ran."""


class Ambiguous(Exception):
    """The call may or may not have run (connection lost mid-call, an HTTP error, no answer)."""


@dataclass(frozen=True)
class ToolAnswer:
    """A tool's answer: its structured result, or (`ok` False) its JSON error object."""

    ok: bool
    data: dict[str, Any]

    @property
    def code(self) -> str | None:
        """The error code (`CONFLICT`, `UNAVAILABLE`, ...) of a failed call."""
        return None if self.ok else str(self.data.get("error"))


class McpHttp:
    """One agent's MCP session with one server over plain HTTP (`/mcp`, JSON-RPC).

    Unlike fastmcp's `Client`, every failure is classified: a call is either answered, never
    delivered (`Refused`), or of unknown outcome (`Ambiguous`). The session is opened again
    when the server forgets it (a restarted process answers 404).
    """

    def __init__(self, http: httpx.AsyncClient, base_url: str, agent: str) -> None:
        self._http = http
        self._url = f"{base_url}/mcp"
        self._agent = agent
        self._headers: dict[str, str] | None = None
        self._ids = itertools.count(1)

    async def call(self, tool: str, **arguments: Any) -> ToolAnswer:
        """Call `tool` once.

        Raises:
            Refused: the request was not delivered; it did not run.
            Ambiguous: the request may have run.
        """
        for _ in range(3):
            headers = self._headers or await self._open()
            request_id = next(self._ids)
            request = {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments},
            }
            try:
                response = await self._http.post(self._url, json=request, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                self._headers = None
                raise Refused(repr(exc)) from exc
            except httpx.TransportError as exc:
                self._headers = None
                raise Ambiguous(repr(exc)) from exc
            if response.status_code == 404:  # a new process on the port: our session is gone
                self._headers = None
                continue
            if response.status_code != 200:
                raise Ambiguous(f"HTTP {response.status_code}: {response.text[:200]}")
            message = answer_to(response, request_id)
            if message is None or "result" not in message:
                raise Ambiguous(f"no tool result in the answer: {response.text[:300]}")
            result = message["result"]
            if result.get("isError"):
                try:
                    return ToolAnswer(False, json.loads(result["content"][0]["text"]))
                except (KeyError, IndexError, TypeError, json.JSONDecodeError):
                    raise Ambiguous(f"unreadable tool error: {result}") from None
            data = dict(result.get("structuredContent") or {})
            blocks = result.get("content") or []
            if len(blocks) >= 2 and blocks[0].get("type") == "text" and "file_hash" in data:
                data["content"] = blocks[0]["text"]  # a read: the markdown is the first block
            return ToolAnswer(True, data)
        raise Refused("the server kept forgetting the session")

    async def _open(self) -> dict[str, str]:
        base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        hello = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": MCP_PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": self._agent, "version": "1"},
            },
        }
        try:
            response = await self._http.post(self._url, json=hello, headers=base)
            answer = answer_to(response, 0) if response.status_code == 200 else None
            session = response.headers.get("mcp-session-id")
            if answer is None or "result" not in answer:
                raise Refused(f"initialize answered {response.status_code}")
            version = str(answer["result"].get("protocolVersion", MCP_PROTOCOL))
            headers = base | {"mcp-protocol-version": version}
            if session:  # a stateless server (PANAVERSITY_STATELESS_HTTP) gives none
                headers["mcp-session-id"] = session
            await self._http.post(
                self._url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
            )
        except httpx.HTTPError as exc:
            raise Refused(f"cannot open a session: {exc!r}") from exc
        self._headers = headers
        return headers
