"""The benchmark suite in one command; it writes docs/benchmarks.md from the results of one run.

    uv run python -m bench --wait-quiet 600     # every benchmark, full variants (~25 min)
    uv run python -m bench --quick              # short variants (~6 min)
    uv run python -m bench --only core,audit    # some of them

Each benchmark runs as its own subprocess, in the order of BENCHMARKS, and writes its results
JSON into bench/results/run-<stamp>/. A benchmark that crashes or times out is recorded as such
and the next one still runs. The runner also records the machine, and for each benchmark its
wall time, exit status, load average and the CPU that processes outside it took (PostgreSQL's
backends among them, counted apart as well). bench/report.py then renders
bench/results/run-<stamp>/report.md and, after a full run of every benchmark (or with `--doc`),
the generated part of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

import asyncpg

from bench import report
from bench.bench_core import REPO, RESULTS
from testkit.databases import PG_ADMIN_URL
from testkit.measure import machine_busy_seconds, machine_info, wait_quiet
from testkit.processes import stop_group

DOC = REPO / "docs" / "benchmarks.md"
SAMPLE_SECONDS = 10.0
"""Length of the windows in which other processes' CPU is sampled while a benchmark runs."""
STOP_GRACE = 60.0
"""Seconds a benchmark gets to clean up (servers, scratch databases) after SIGTERM."""
LIBRARIES = (
    "fastmcp",
    "mcp",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "opendal",
    "uvicorn",
    "uvloop",
    "httptools",
    "starlette",
    "pydantic",
    "httpx",
    "stream-zip",
    "google-re2",
)
PG_SETTINGS = ("synchronous_commit", "fsync", "wal_sync_method", "shared_buffers", "max_connections")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark module and the arguments of its two variants (`--json PATH` is added)."""

    name: str
    module: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    timeout_s: float
    """Seconds after which the full variant is stopped (the quick one gets the same)."""


BENCHMARKS = (
    Benchmark("core", "bench.bench_core", (), ("--quick",), 900),
    Benchmark(
        "load",
        "testkit.loadgen",
        ("all", "--duration", "30", "--backend", "sqlite,postgres"),
        ("all", "--duration", "3", "--files-per-book", "20", "--backend", "postgres"),
        1800,
    ),
    Benchmark("archive", "bench.bench_archive", (), ("--runs", "1"), 1200),
    Benchmark("books", "bench.bench_books", (), ("--quick",), 1200),
    Benchmark("builds", "bench.bench_builds", (), ("--quick",), 900),
    Benchmark("audit", "bench.bench_audit", (), ("--entries", "100000"), 1800),
)
NAMES = tuple(b.name for b in BENCHMARKS)


# -- CPU accounting -----------------------------------------------------------------------


def process_table() -> dict[int, tuple[str, int, float, float]]:
    """pid -> (command name, parent pid, own CPU s, CPU s of its reaped children), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[str, int, float, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        own = (int(fields[11]) + int(fields[12])) / tick
        reaped = (int(fields[13]) + int(fields[14])) / tick
        table[int(entry.name)] = (comm, int(fields[1]), own, reaped)
    return table


def tree_cpu(table: dict[int, tuple[str, int, float, float]], root: int) -> float:
    """CPU seconds of `root` and its live descendants, with the children each of them reaped."""
    children: dict[int, list[int]] = {}
    for pid, (_comm, ppid, _own, _reaped) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            total += table[pid][2] + table[pid][3]
        stack.extend(children.get(pid, ()))
    return total


def postgres_cpu(table: dict[int, tuple[str, int, float, float]], postmaster: int | None) -> float | None:
    """CPU seconds of the PostgreSQL cluster under `postmaster`, ended backends included.

    None when the cluster is not on this machine. Other `postgres` processes (throwaway
    clusters that tests start and stop) are left out: their CPU is "other processes".
    """
    if postmaster is None or table.get(postmaster, ("",))[0] != "postgres":
        return None
    return tree_cpu(table, postmaster)


def reaped_children_cpu() -> float:
    """CPU seconds of this process's reaped children (and everything they reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """Everything else's CPU while one benchmark runs: the machine minus the benchmark and the runner.

    The benchmark's own total comes from `getrusage(RUSAGE_CHILDREN)` once it has been reaped
    (exact); the windows use /proc snapshots of its live process tree.
    """

    def __init__(self, postmaster: int | None) -> None:
        self._postmaster = postmaster
        table = process_table()
        self._start = (
            time.perf_counter(),
            machine_busy_seconds(),
            reaped_children_cpu(),
            time.process_time(),
        )
        self._pg_start = postgres_cpu(table, postmaster)
        self._last: tuple[float, float, float, float, float | None] | None = None
        self.windows: list[dict[str, float | None]] = []
        self.loadavg: list[tuple[float, float, float]] = [os.getloadavg()]

    def sample(self, pid: int) -> None:
        """Close one window: other processes' (and PostgreSQL's) CPU since the last sample."""
        table = process_table()
        now = (
            time.perf_counter(),
            machine_busy_seconds(),
            tree_cpu(table, pid),
            time.process_time(),
            postgres_cpu(table, self._postmaster),
        )
        self.loadavg.append(os.getloadavg())
        if self._last is not None:
            wall = now[0] - self._last[0]
            bench = now[2] - self._last[2]
            other = now[1] - self._last[1] - bench - (now[3] - self._last[3])
            pg = None if now[4] is None or self._last[4] is None else now[4] - self._last[4]
            self.windows.append(
                {
                    "wall_s": round(wall, 1),
                    "benchmark_cpu_pct": round(100 * bench / wall, 1),
                    "other_cpu_pct": round(100 * max(0.0, other) / wall, 1),
                    "postgres_cpu_pct": None if pg is None else round(100 * pg / wall, 1),
                }
            )
        self._last = now

    def summary(self) -> dict[str, Any]:
        """Means over the whole benchmark (call after it has been reaped) and the worst window."""
        wall0, machine0, children0, self0 = self._start
        wall = time.perf_counter() - wall0
        bench = reaped_children_cpu() - children0
        other = machine_busy_seconds() - machine0 - bench - (time.process_time() - self0)
        pg_end = postgres_cpu(process_table(), self._postmaster)
        pg = None if pg_end is None or self._pg_start is None else pg_end - self._pg_start
        self.loadavg.append(os.getloadavg())
        others = [w["other_cpu_pct"] or 0.0 for w in self.windows]
        return {
            "benchmark_cpu_pct": round(100 * bench / wall, 1),
            "other_cpu_pct": round(100 * max(0.0, other) / wall, 1),
            "postgres_cpu_pct": None if pg is None else round(100 * pg / wall, 1),
            "other_cpu_pct_worst_window": max(others) if others else None,
            "window_s": SAMPLE_SECONDS,
            "windows": self.windows,
            "loadavg_start": [round(x, 2) for x in self.loadavg[0]],
            "loadavg_max_1min": round(max(x[0] for x in self.loadavg), 2),
            "loadavg_end": [round(x, 2) for x in self.loadavg[-1]],
        }


# -- the machine and the tree ---------------------------------------------------------------


def git(*args: str) -> str:
    """The output of `git args` in the repository ("" if git fails)."""
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def tree_state() -> dict[str, Any]:
    """The commit, the tracked files with uncommitted changes, and a digest of those changes."""
    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "dirty_files": [
            line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
        ],
        "diff_sha256": hashlib.sha256(git("diff", "HEAD").encode()).hexdigest()[:16],
    }


async def postgres_info() -> dict[str, Any]:
    """The PostgreSQL server's version and durability settings (`error` if it cannot be reached)."""
    try:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return {"error": str(exc)[:200]}
    try:
        info = {"version": await conn.fetchval("SHOW server_version")}
        for name in PG_SETTINGS:
            info[name] = await conn.fetchval(f"SHOW {name}")
        # Our backend's parent is the postmaster, if the server runs on this machine.
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        entry = process_table().get(backend)
        info["postmaster_pid"] = entry[1] if entry is not None and entry[0] == "postgres" else None
        return info
    finally:
        await conn.close()


def full_machine_info() -> dict[str, Any]:
    """bench_core's machine_info plus the kernel, CPU clock, library versions and PostgreSQL."""
    info = machine_info()
    mhz = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = round(float(line.split(":", 1)[1]))
                break
    libraries = {}
    for name in LIBRARIES:
        with contextlib.suppress(PackageNotFoundError):
            libraries[name] = version(name)
    return info | {
        "kernel": platform.release(),
        "cpu_mhz": mhz,
        "libraries": libraries,
        "postgresql": asyncio.run(postgres_info()),
    }


# -- running one benchmark ------------------------------------------------------------------


def _tee(source: TextIO, log: TextIO, prefix: str) -> None:
    for line in source:
        log.write(line)
        log.flush()
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM the benchmark's process group (even if its leader has exited), SIGKILL after STOP_GRACE."""
    stop_group(process, STOP_GRACE)


def run_benchmark(bench: Benchmark, quick: bool, run_dir: Path, postmaster: int | None) -> dict[str, Any]:
    """Run one benchmark to the end (or its timeout); return what happened and what it cost."""
    out = run_dir / f"{bench.name}.json"
    argv = [sys.executable, "-m", bench.module, *(bench.quick if quick else bench.full), "--json", str(out)]
    command = " ".join(["uv run python -m", bench.module, *argv[3:]]).replace(str(REPO) + "/", "")
    print(f"\n== {bench.name}: {command}", flush=True)
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    started_at = datetime.now(UTC)
    meter = CpuMeter(postmaster)
    status = "ok"
    with (run_dir / f"{bench.name}.log").open("w") as log:
        process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert process.stdout is not None
        tee = threading.Thread(target=_tee, args=(process.stdout, log, f"  [{bench.name}] "), daemon=True)
        tee.start()
        deadline = time.monotonic() + bench.timeout_s
        try:
            meter.sample(process.pid)
            while True:
                try:
                    process.wait(SAMPLE_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    meter.sample(process.pid)
                if time.monotonic() > deadline:
                    print(f"  {bench.name}: no result after {bench.timeout_s:.0f} s, stopping it", flush=True)
                    status = "timeout"
                    stop(process)
                    break
        except BaseException:
            stop(process)
            raise
        finally:
            tee.join(10)
    cpu = meter.summary()
    if status == "ok" and not out.exists():
        status = "failed"
    record = {
        "name": bench.name,
        "command": command,
        "started_at": started_at.isoformat(timespec="seconds"),
        "wall_s": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "exit_status": process.returncode,
        "status": status,
        "results": out.name if out.exists() else None,
        "log": f"{bench.name}.log",
        "cpu": cpu,
    }
    print(
        f"== {bench.name}: {status} (exit {process.returncode}) in {record['wall_s']:.0f} s; other processes "
        f"{cpu['other_cpu_pct']:.0f}% of a core on average (PostgreSQL {cpu['postgres_cpu_pct']}%)",
        flush=True,
    )
    return record


# -- the command ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's short variant")
    parser.add_argument(
        "--only", metavar="NAMES", help=f"comma-separated subset of {','.join(NAMES)} (default: all)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave the CPU idle (< 15%% of a core)",
    )
    parser.add_argument(
        "--doc",
        type=Path,
        help="also write the generated section of this file (default: docs/benchmarks.md after a "
        "full run of every benchmark, none otherwise)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in (args.only or ",".join(NAMES)).split(",") if n.strip()]
    if unknown := set(names) - set(NAMES):
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))} (one of {', '.join(NAMES)})")
    args.benchmarks = [b for b in BENCHMARKS if b.name in names]
    if args.doc is None and not args.quick and len(args.benchmarks) == len(BENCHMARKS):
        args.doc = DOC
    return args


def _exit_on_sigterm(_signum: int, _frame: Any) -> None:
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    """Run the suite and write the report; 0 if every benchmark produced results, 1 if not."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS / f"run-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join(["uv run python -m bench", *(sys.argv[1:] if argv is None else argv)])
    print(f"{command}\nresults: {run_dir.relative_to(REPO)}", flush=True)
    quiet = wait_quiet(args.wait_quiet)
    print(f"other processes before the run: {quiet[-1]}% of one core ({len(quiet)} samples of 2 s)")
    manifest: dict[str, Any] = {
        "command": command,
        "quick": args.quick,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": full_machine_info(),
        "tree_at_start": tree_state(),
        "wait_quiet": {"max_wait_s": args.wait_quiet, "threshold_pct": 15.0, "samples_pct": quiet},
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "benchmarks": [],
    }
    manifest_path = run_dir / "run.json"
    try:
        for bench in args.benchmarks:
            postmaster = manifest["machine"]["postgresql"].get("postmaster_pid")
            manifest["benchmarks"].append(run_benchmark(bench, args.quick, run_dir, postmaster))
            manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    except (KeyboardInterrupt, SystemExit):
        print("interrupted: the running benchmark was stopped", file=sys.stderr)
        manifest_path.write_text(json.dumps(manifest | {"interrupted": True}, indent=2) + "\n")
        return 143
    manifest["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    manifest["tree_at_end"] = tree_state()
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")

    generated = report.render(report.load_run(run_dir))
    (run_dir / "report.md").write_text(generated + "\n")
    print(f"\nreport: {(run_dir / 'report.md').relative_to(REPO)}")
    if args.doc is not None:
        report.update_doc(args.doc, generated)
        print(f"updated the generated section of {args.doc}")
    return 0 if all(b["status"] == "ok" for b in manifest["benchmarks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
