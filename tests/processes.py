"""Real server processes for tests that need several of them, or need to kill one."""

from __future__ import annotations

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
    """`panaversity-fs serve` in a subprocess on a free port."""

    def __init__(self, settings: Settings, log_path: Path, **extra_env: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = settings_env(settings) | {k: str(v) for k, v in extra_env.items()}
        self._log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start the server and wait until `/health` answers."""
        log = self._log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "panaversity_fs", "serve", "--port", str(self.port)],
            cwd=REPO,
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if wait_healthy(f"{self.url}/health", self.process, timeout):
            return self
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}: {self.log_tail()}")
        self.process.kill()  # not left running behind a failed test
        self.process.wait()
        raise RuntimeError(f"server did not become healthy: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Stop the server with `sig` and return its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output."""
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

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
