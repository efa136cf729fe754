"""Profiling a benchmark's server: py-spy attached per phase, or cProfile inside the server
process (`bench_core --profile`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testkit.processes import ServerProcess

CPROFILE_LAUNCHER = """
import cProfile, os, runpy, signal, sys, time
out_dir, module, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
state = {"prof": cProfile.Profile(time.thread_time)}

def dump(_signum, _frame):
    # The bench names the dump in out_dir/next-name, then sends SIGUSR1.
    prof = state["prof"]
    prof.disable()
    with open(os.path.join(out_dir, "next-name")) as f:
        name = f.read().strip()
    if not name.startswith("discard"):
        prof.dump_stats(os.path.join(out_dir, name))
    state["prof"] = cProfile.Profile(time.thread_time)
    state["prof"].enable()

signal.signal(signal.SIGUSR1, dump)
sys.argv = [module, *argv]
state["prof"].enable()
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    state["prof"].disable()
"""


PY_SPY_MODES = ("pyspy", "pyspy-gil")
"""py-spy of every thread not idle (wall clock), or only of the thread holding the GIL (its
Python CPU: a thread waiting in fsync or for a socket does not count)."""


class Profiler:
    """Optional per-phase profiles of the servers: py-spy (wall clock) or cProfile (CPU clock)."""

    def __init__(self, mode: str | None, out_dir: Path | None) -> None:
        self.mode = mode
        self.out_dir = out_dir
        self.py_spy = shutil.which("py-spy") if mode in PY_SPY_MODES else None
        if mode in PY_SPY_MODES and self.py_spy is None:
            raise SystemExit(
                "--profile pyspy needs py-spy on PATH: uv run --with py-spy python -m bench.bench_core"
            )
        self.files: list[str] = []

    def wrap(self, argv: list[str], module: str = "panaversity_fs") -> list[str]:
        """The command that runs `python -m module` with `argv` (under cProfile in cprofile mode)."""
        if self.mode != "cprofile" or self.out_dir is None:
            return [sys.executable, "-m", module, *argv]
        return [sys.executable, "-c", CPROFILE_LAUNCHER, str(self.out_dir), module, *argv]

    def _cprofile_dump(self, server: ServerProcess, name: str) -> None:
        assert self.out_dir is not None
        (self.out_dir / "next-name").write_text(name)
        os.kill(server.pid, signal.SIGUSR1)
        time.sleep(0.3)

    @contextlib.contextmanager
    def phase(self, server: ServerProcess, phase: str) -> Any:
        """Profile `server` while the body runs (no-op without --profile)."""
        if self.out_dir is None or self.mode is None:
            yield
            return
        if self.mode == "cprofile":
            self._cprofile_dump(server, f"discard-{phase}")
            try:
                yield
            finally:
                name = f"{server.name}-{phase}.prof"
                self._cprofile_dump(server, name)
                self.files.append(str(self.out_dir / name))
            return
        assert self.py_spy is not None
        out = self.out_dir / f"{server.name}-{phase}.txt"
        spy = subprocess.Popen(
            [
                self.py_spy,
                "record",
                "--pid",
                str(server.pid),
                "--rate",
                "250",
                *(["--gil"] if self.mode == "pyspy-gil" else []),
                "--format",
                "raw",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(0.5)  # let py-spy attach before the phase starts
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
            self.files.append(str(out))
