"""`serve --workers N`: N serving processes, each listening on its own socket on the same port.

uvicorn's own supervisor shares one listening socket between its workers, and asyncio accepts
every pending connection in one go: the first worker to wake took all eight connections of a
load test while the other sat idle. Here every worker binds its own `SO_REUSEPORT` socket, so
the kernel spreads new connections over the workers by their addresses. The supervisor starts
the workers, restarts one that dies (after a pause, so a worker that cannot start does not spin),
and on SIGTERM/SIGINT stops them all gracefully; its exit status is 0 after a requested stop.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from typing import Any

logger = logging.getLogger(__name__)

RESTART_PAUSE = 1.0
"""Seconds before a worker that died is started again."""


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` that other processes may bind as well (`SO_REUSEPORT`).

    Raises:
        OSError: the address cannot be bound.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Runs `count` workers until told to stop."""

    def __init__(
        self, count: int, worker: Callable[..., None], arguments: tuple[Any, ...], drain: float
    ) -> None:
        """`worker(*arguments)` runs one worker process (a module-level function: it is started
        by name in a fresh interpreter); `drain` is the seconds a worker may take to stop."""
        self._count = count
        self._worker = worker
        self._arguments = arguments
        self._drain = drain
        self._context = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()

    def _start(self) -> SpawnProcess:
        process = self._context.Process(target=self._worker, args=self._arguments)
        process.start()
        return process

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return 0 once every worker has stopped."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            workers = [self._start() for _ in range(self._count)]
            while not self._stopping.wait(0.2):
                for n, process in enumerate(workers):
                    if not process.is_alive() and not self._stopping.is_set():
                        logger.error(
                            "worker %s exited with %s; starting another", process.pid, process.exitcode
                        )
                        time.sleep(RESTART_PAUSE)
                        workers[n] = self._start()
            self._stop(workers)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _request_stop(self, _signum: int, _frame: object) -> None:
        self._stopping.set()

    def _stop(self, workers: list[SpawnProcess]) -> None:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._drain + 15
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("worker %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
