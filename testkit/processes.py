"""Real server processes (tests that need several or kill one; every benchmark), the command
line as a subprocess, and free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from panaversity_fs.config import Settings

REPO = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))
"""Under CI a backend that cannot be reached fails the test instead of skipping it."""


def free_port() -> int:
    """An unused loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make `panaversity-fs serve` use `settings`' backends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PANAVERSITY_", "DATABASE_"))}
    env["DATABASE_URL"] = settings.database_url
    env["PANAVERSITY_STORAGE_BACKEND"] = settings.storage_backend
    env["PANAVERSITY_STORAGE_ROOT"] = str(settings.storage_root)
    env["PANAVERSITY_RECOVERY_GRACE"] = str(settings.recovery_grace)
    env["PANAVERSITY_RECOVERY_INTERVAL"] = str(settings.recovery_interval)
    env["PANAVERSITY_LOG_LEVEL"] = "WARNING"
    if settings.storage_backend == "s3":
        env["PANAVERSITY_S3_BUCKET"] = settings.s3_bucket or ""
        env["PANAVERSITY_S3_ENDPOINT"] = settings.s3_endpoint or ""
        env["PANAVERSITY_S3_REGION"] = settings.s3_region
        env["PANAVERSITY_S3_ROOT"] = settings.s3_root
        if settings.s3_access_key_id and settings.s3_secret_access_key:
            env["PANAVERSITY_S3_ACCESS_KEY_ID"] = settings.s3_access_key_id.get_secret_value()
            env["PANAVERSITY_S3_SECRET_ACCESS_KEY"] = settings.s3_secret_access_key.get_secret_value()
    return env


def wait_healthy(
    url: str,
    process: subprocess.Popen[bytes],
    timeout: float,
    interval: float = 0.1,
    request_timeout: float = 1.0,
) -> bool:
    """Poll `url` every `interval` seconds until it answers 200 (True), or until `process` exits
    or `timeout` seconds pass (False: the caller tells the two apart with `process.poll()`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=request_timeout).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    return False


class ServerProcess:
    """A server subprocess in its own process group, its output in a log file: `panaversity-fs
    serve` for `settings` (tests), or any command serving `/health` (`command`, benchmarks)."""

    def __init__(self, settings: Settings, log_path: Path, **extra_env: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = "server"
        self.argv = [sys.executable, "-m", "panaversity_fs", "serve", "--port", str(self.port)]
        self.env = settings_env(settings) | {k: str(v) for k, v in extra_env.items()}
        self.log_path = log_path
        self.announce = False
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def command(
        cls, name: str, argv: list[str], env: dict[str, str], log_path: Path, port: int
    ) -> ServerProcess:
        """A process running `argv` (which must listen on `port`), announcing when it is healthy."""
        server = cls.__new__(cls)
        server.port, server.url, server.name = port, f"http://127.0.0.1:{port}", name
        server.argv, server.env, server.log_path = argv, env, log_path
        server.announce, server.process = True, None
        return server

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 120.0) -> ServerProcess:
        """Start the process and wait until `/health` answers 200.

        Raises:
            RuntimeError: it exited, or did not become healthy in time (it is killed then).
        """
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait_healthy(f"{self.url}/health", self.process, timeout):
            if self.announce:
                print(f"  {self.name}: healthy after {time.monotonic() - started:.1f} s (pid {self.pid})")
            return self
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
        stop_group(self.process, 0)  # not left running behind a failed start
        raise RuntimeError(f"{self.name} did not become healthy: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Stop the server with `sig` (its whole process group is killed after `timeout`) and
        return its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)  # its workers too, when it leads a group
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `panaversity-fs ARGS` (as `python -m panaversity_fs`) from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "panaversity_fs", *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop_group(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM `process`'s process group; SIGKILL it if it has not exited after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def server_env(database_url: str, storage_root: Path, log_level: str) -> dict[str, str]:
    """Environment for `panaversity-fs serve`: ours, minus any PANAVERSITY_/DATABASE_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PANAVERSITY_", "DATABASE_"))}
    env["DATABASE_URL"] = database_url
    env["PANAVERSITY_STORAGE_BACKEND"] = "fs"
    env["PANAVERSITY_STORAGE_ROOT"] = str(storage_root)
    env["PANAVERSITY_LOG_LEVEL"] = log_level
    # The benchmarks measure the server's capacity, not the per-agent limits (a few agents make
    # every call here, so the default budgets would answer RATE_LIMITED within seconds).
    env["PANAVERSITY_RATE_LIMIT_READS_PER_MINUTE"] = "0"
    env["PANAVERSITY_RATE_LIMIT_WRITES_PER_MINUTE"] = "0"
    return env
