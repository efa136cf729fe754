"""MCP load generator: simulated agents over streamable HTTP, and the `testkit.loadgen` command.

    uv run python -m testkit.loadgen SCENARIO [--url URL ...] [--duration S] [--concurrency N]
                                            [--seed N] [--json OUT] [--backend sqlite|postgres]

SCENARIO is `L-1` (read smoke), `L-2` (mixed), `L-3` (hot key), `L-5` (soak), `L-6`
(saturation) or `all` (L-1, L-2, L-3, a short L-5, L-6; writes bench/results/load-<stamp>.json).
Without `--url` it starts its own `panaversity-fs serve` (SQLite + a temporary fs folder, or
`--backend postgres` on a scratch database made on PFS_BENCH_PG_URL) and, for L-1 and `all`,
the trivial FastMCP server as a same-run baseline, and stops them at the end.

Each agent is a plain httpx client speaking the MCP lifecycle itself (initialize,
notifications/initialized, tools/call..., DELETE), so the client costs little CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from testkit.mcp_http import jsonrpc_messages
from testkit.measure import percentile

PROTOCOL_VERSION = LATEST_HANDSHAKE_VERSION
"""Offered in `initialize`. LATEST_PROTOCOL_VERSION (2026-07-28) is the stateless era that
has no initialize handshake; the newest handshake revision is what the server negotiates."""

ACCEPT = "application/json, text/event-stream"
DEFAULT_CALL_DEADLINE = 30.0
"""Seconds a call may take before the client gives up and counts a `TIMEOUT`."""

TIMEOUT = "TIMEOUT"
CONNECTION = "CONNECTION"
PROTOCOL = "PROTOCOL"
SHED_CODES = frozenset({"RATE_LIMITED", "UNAVAILABLE", "HTTP_429", "HTTP_503"})
"""Outcomes that mean "the server refused the work for now, try later"."""

# httpcore runs `import sniffio` on every request; without sniffio installed each failed import
# walks sys.path (a quarter of the generator's CPU). A None entry makes the import fail at once.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[assignment]


class LoadError(Exception):
    """A scenario could not run (its sessions could not be opened, its seed files not written)."""


class SessionError(LoadError):
    """An agent could not open (initialize) its MCP session."""


def is_transport_failure(status: str) -> bool:
    """Whether `status` is a failure below the tool layer (HTTP status, timeout, connection, protocol)."""
    return status in (TIMEOUT, CONNECTION, PROTOCOL) or status.startswith(("HTTP_", "JSONRPC_"))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One tool call as the agent saw it.

    `status` is `ok`, the tool error's CODE (`CONFLICT`, ...), or a transport failure:
    `HTTP_<status>`, `TIMEOUT`, `CONNECTION`, `PROTOCOL` (unreadable answer) or
    `JSONRPC_<code>` (a JSON-RPC error instead of a tool result).
    """

    tool: str
    status: str
    seconds: float
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the tool succeeded."""
        return self.status == "ok"


def _retry_after_header(response: httpx.Response) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        return float(response.headers.get("retry-after"))
    return None


def classify(tool: str, response: httpx.Response, request_id: int, seconds: float) -> Outcome:
    """The outcome of a `tools/call` answer (never raises)."""
    if response.status_code != 200:
        return Outcome(
            tool, f"HTTP_{response.status_code}", seconds, retry_after=_retry_after_header(response)
        )
    try:
        answer = next(m for m in jsonrpc_messages(response) if m.get("id") == request_id)
        if "error" in answer:
            return Outcome(tool, f"JSONRPC_{answer['error'].get('code')}", seconds, error=answer["error"])
        result = answer["result"]
        text = (result.get("content") or [{}])[0].get("text", "")
    except (ValueError, StopIteration, KeyError, TypeError, AttributeError):
        return Outcome(tool, PROTOCOL, seconds)
    if result.get("isError"):
        try:
            error = json.loads(text)
            code = str(error["error"])
        except (ValueError, KeyError, TypeError):
            return Outcome(tool, "UNPARSED_TOOL_ERROR", seconds, error={"text": text[:300]})
        retry_after = error.get("retry_after")
        return Outcome(
            tool, code, seconds, error=error, retry_after=float(retry_after) if retry_after else None
        )
    structured = result.get("structuredContent")
    if structured is None:
        with contextlib.suppress(ValueError):
            structured = json.loads(text)
    return Outcome(tool, "ok", seconds, result=structured if isinstance(structured, dict) else {})


def mcp_url(url: str) -> str:
    """`url` pointing at the MCP endpoint (`/mcp` is added to a bare server address)."""
    url = url.rstrip("/")
    return url if url.endswith("/mcp") else f"{url}/mcp"


class Recorder:
    """Every outcome's latency and status, per tool; percentiles come from all samples."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.ok_latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.retry_after_given: Counter[str] = Counter()

    def record(self, outcome: Outcome) -> None:
        """Add one outcome."""
        self.latencies[outcome.tool].append(outcome.seconds)
        if outcome.ok:
            self.ok_latencies[outcome.tool].append(outcome.seconds)
        self.statuses[outcome.tool][outcome.status] += 1
        if outcome.retry_after is not None:
            self.retry_after_given[outcome.status] += 1

    def count(self, tool: str, status: str = "ok") -> int:
        """How many calls of `tool` ended with `status`."""
        return self.statuses[tool][status]

    def outcomes(self) -> Counter[str]:
        """Statuses summed over every tool."""
        total: Counter[str] = Counter()
        for counts in self.statuses.values():
            total.update(counts)
        return total

    def summary(self, wall_s: float) -> dict[str, Any]:
        """Per tool: calls, throughput, p50/p95/p99/max latency (ms, all calls) and outcomes."""
        tools: dict[str, Any] = {}
        for tool, samples in sorted(self.latencies.items()):
            ok = self.statuses[tool]["ok"]
            tools[tool] = {
                "calls": len(samples),
                "ok": ok,
                "calls_per_s": round(len(samples) / wall_s, 1),
                "ok_per_s": round(ok / wall_s, 1),
                **latency_ms(samples),
                "ok_p99_ms": latency_ms(self.ok_latencies[tool])["p99_ms"],
                "outcomes": dict(self.statuses[tool].most_common()),
            }
        errors = {k: v for k, v in self.outcomes().most_common() if k != "ok"}
        return {"wall_s": round(wall_s, 3), "tools": tools, "errors_by_code": errors}


def latency_ms(samples: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max/mean of `samples` (seconds) in milliseconds; None without samples."""
    if not samples:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    return {
        "p50_ms": round(percentile(samples, 0.50) * 1000, 2),
        "p95_ms": round(percentile(samples, 0.95) * 1000, 2),
        "p99_ms": round(percentile(samples, 0.99) * 1000, 2),
        "max_ms": round(max(samples) * 1000, 2),
        "mean_ms": round(statistics.fmean(samples) * 1000, 2),
    }


class McpAgent:
    """One simulated agent: one MCP session over streamable HTTP, identified by `agent_id`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        agent_id: str,
        *,
        token: str | None = None,
        call_deadline: float = DEFAULT_CALL_DEADLINE,
        recorder: Recorder | None = None,
    ) -> None:
        self.url = mcp_url(url)
        self.agent_id = agent_id
        self.call_deadline = call_deadline
        self.recorder = recorder
        self.protocol_version: str | None = None
        self._http = http
        self._headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._next_id = 0

    async def _post(self, message: dict[str, Any]) -> httpx.Response:
        async with asyncio.timeout(self.call_deadline):
            return await self._http.post(self.url, content=json.dumps(message), headers=self._headers)

    async def open(self) -> None:
        """Initialize the session and send `notifications/initialized`.

        Raises:
            SessionError: the server refused, did not answer in time, or answered nonsense.
        """
        self._next_id += 1
        hello = {
            "jsonrpc": "2.0",
            "id": self._next_id,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": self.agent_id, "version": "1"},
            },
        }
        try:
            response = await self._post(hello)
            if response.status_code != 200:
                raise SessionError(f"initialize answered HTTP {response.status_code}")
            answer = next(m for m in jsonrpc_messages(response) if m.get("id") == self._next_id)
            self.protocol_version = str(answer["result"]["protocolVersion"])
            session_id = response.headers.get("mcp-session-id")
            if session_id:
                self._headers["mcp-session-id"] = session_id
            self._headers["mcp-protocol-version"] = self.protocol_version
            done = await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        except (TimeoutError, httpx.HTTPError, ValueError, KeyError, StopIteration) as exc:
            raise SessionError(f"{self.agent_id}: initialize failed: {exc!r}") from exc
        if done.status_code not in (200, 202):
            raise SessionError(f"notifications/initialized answered HTTP {done.status_code}")

    async def call_tool(self, tool: str, arguments: dict[str, Any]) -> Outcome:
        """Call `tool`; the outcome is recorded and returned (transport failures included, never raised)."""
        self._next_id += 1
        request_id = self._next_id
        message = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        started = time.perf_counter()
        try:
            response = await self._post(message)
            outcome = classify(tool, response, request_id, time.perf_counter() - started)
        except (TimeoutError, httpx.TimeoutException):
            outcome = Outcome(tool, TIMEOUT, time.perf_counter() - started)
        except httpx.HTTPError:
            outcome = Outcome(tool, CONNECTION, time.perf_counter() - started)
        if self.recorder is not None:
            self.recorder.record(outcome)
        return outcome

    async def close(self) -> None:
        """End the session (DELETE); failures are ignored, the server expires sessions anyway."""
        if "mcp-session-id" not in self._headers:
            return
        with contextlib.suppress(TimeoutError, httpx.HTTPError):
            async with asyncio.timeout(min(self.call_deadline, 10.0)):
                await self._http.delete(self.url, headers=self._headers)


@dataclass
class Target:
    """Where agents go: server URLs (agents spread round-robin), tokens and the server to watch."""

    urls: list[str]
    token_for: Callable[[str], str | None] | None = None
    """The bearer token of an agent id (None: no Authorization header)."""
    server_pid: int | None = None
    """The server process, for CPU accounting and RSS/FD sampling (None: not sampled)."""
    call_deadline: float = DEFAULT_CALL_DEADLINE
    db_port: int | None = None
    """The database server's TCP port, to count the server's database connections."""

    def base_urls(self) -> list[str]:
        """The distinct server addresses (without `/mcp`)."""
        return sorted({mcp_url(u).removesuffix("/mcp") for u in self.urls})


@dataclass
class AgentPool:
    """Agents with open sessions, plus the ones that could not open one."""

    agents: list[McpAgent]
    failures: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def agent_pool(
    target: Target,
    agent_ids: list[str],
    recorder: Recorder | None,
    *,
    call_deadline: float | None = None,
    require_all: bool = True,
) -> AsyncIterator[AgentPool]:
    """Open one session per agent id (URLs round-robin); close them all on exit.

    Raises:
        SessionError: `require_all` and some session could not be opened.
    """
    deadline = call_deadline or target.call_deadline
    # One client (one connection) per agent, as real agents have; they share one TLS context
    # because building one costs ~20 ms of CPU.
    tls = ssl.create_default_context()
    async with contextlib.AsyncExitStack() as stack:
        agents = []
        for i, agent_id in enumerate(agent_ids):
            http = httpx.AsyncClient(timeout=httpx.Timeout(deadline), verify=tls, trust_env=False)
            await stack.enter_async_context(http)
            agents.append(
                McpAgent(
                    http,
                    target.urls[i % len(target.urls)],
                    agent_id,
                    token=target.token_for(agent_id) if target.token_for else None,
                    call_deadline=deadline,
                    recorder=recorder,
                )
            )
        opened = await asyncio.gather(*(a.open() for a in agents), return_exceptions=True)
        pool = AgentPool([a for a, r in zip(agents, opened, strict=True) if r is None])
        pool.failures = [str(r) for r in opened if r is not None]
        try:
            if require_all and pool.failures:
                raise SessionError(f"{len(pool.failures)} sessions failed; first: {pool.failures[0]}")
            yield pool
        finally:
            await asyncio.gather(*(a.close() for a in pool.agents))


# -- report ---------------------------------------------------------------------------------

TITLES = {
    "baseline": "trivial echo baseline",
    "L-1": "L-1 read smoke",
    "L-2": "L-2 mixed 80/20",
    "L-3": "L-3 hot key",
    "L-5": "L-5 soak",
    "L-6": "L-6 saturation",
}


def baseline_ratios(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """L-1 against the same-run echo baseline, per run: throughput and latency ratios."""
    echo = (results.get("baseline") or {}).get("tools", {}).get("echo")
    ratios: dict[str, dict[str, float | None]] = {}
    for run, scenarios in results["runs"].items():
        read = scenarios.get("L-1", {}).get("tools", {}).get("read_content")
        if not echo or not read:
            continue

        def ratio(key: str, read: dict[str, Any] = read) -> float | None:
            return round(read[key] / echo[key], 3) if read[key] and echo[key] else None

        ratios[run] = {
            "reads_per_s_over_echo_calls_per_s": ratio("ok_per_s"),
            "read_p50_over_echo_p50": ratio("p50_ms"),
            "read_p99_over_echo_p99": ratio("p99_ms"),
        }
    return ratios


def _cpu(cpu: dict[str, Any]) -> str:
    server = "?" if cpu.get("server_cpu_pct") is None else f"{cpu['server_cpu_pct']:.0f}%"
    return f"CPU server {server}, generator {cpu['client_cpu_pct']:.0f}%, other {cpu['other_cpu_pct']:.0f}%"


def _outcomes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _tools_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"    {'tool':<15}{'calls':>7}{'ok/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}  outcomes"
    ]
    for tool, s in result["tools"].items():
        lines.append(
            f"    {tool:<15}{s['calls']:>7}{s['ok_per_s']:>8.1f}{_ms(s['p50_ms']):>9}{_ms(s['p95_ms']):>9}"
            f"{_ms(s['p99_ms']):>9}{_ms(s['max_ms']):>9}  {_outcomes(s['outcomes'])}"
        )
    return lines


def _scenario_lines(name: str, r: dict[str, Any]) -> list[str]:
    if name == "L-6":
        lines = [
            f"  {TITLES[name]}: steps of {r['step_seconds']:g} s, client deadline {r['call_deadline_s']:g} s",
            (
                f"    {'c':>4}{'calls/s':>9}{'ok/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'timeouts':>10}"
                f"{'sheds (retry_after)':>21}{'conflicts':>11}  other errors / CPU"
            ),
        ]
        for s in [*r["steps"], r["cooldown"] | {"concurrency": "cool"}]:
            sheds = f"{s['typed_sheds']} ({s['sheds_with_retry_after']})"
            lines.append(
                f"    {s['concurrency']:>4}{s['calls_per_s']:>9.1f}{s['ok_per_s']:>8.1f}{_ms(s['p50_ms']):>9}"
                f"{_ms(s['p99_ms']):>9}{_ms(s['max_ms']):>9}{s['timeouts']:>10}{sheds:>21}{s['conflicts']:>11}"
                f"  {_outcomes(s['other_errors'])} / {_cpu(s['cpu'])}"
            )
        lines.append(f"    cool-down p99 / c=1 p99: {r['cooldown_p99_over_c1_p99']}")
        return lines
    head = f"  {TITLES[name]}: c={r['concurrency']}, {r['wall_s']:.1f} s, {_cpu(r['cpu'])}"
    lines = [head, *_tools_table(r)]
    if name in ("L-2", "L-5"):
        lines.append(
            f"    {r['writes_per_s']} writes/s, {r['reads_per_s']} reads/s, {r['conflicts']} CONFLICT "
            f"(expected), {r['errors']} errors {_outcomes(r['error_codes'])}"
        )
    if name == "L-3":
        lines.append(
            f"    {r['successes_per_s']} successful writes/s, {r['conflicts']} CONFLICT, losers with another "
            f"code: {_outcomes(r['losers_not_conflict'])}, 5xx: {r['http_5xx']}, version advance "
            f"{r['version_advance']} {'matches' if r['version_advance_matches'] else 'DOES NOT match'}"
        )
    if name == "L-5":
        res = r["resources"]
        if res.get("sampled"):
            lines.append(
                f"    paced at {r['rate_calls_per_s']} calls/s; after {res['warmup_s']:g} s warm-up: RSS "
                f"{res['rss_mb_after_warmup']} -> {res['rss_mb_end']} MB ({res['rss_growth_pct']:+.1f}%), FDs "
                f"{res['fds_after_warmup']} -> {res['fds_end']} (range {res['fds_min_max']}), DB connections "
                f"max {res['db_tcp_max']}, error rate {r['error_rate']}"
            )
    if "successful_writes" in r:
        match = {True: "match", False: "MISMATCH", None: "server count unavailable"}[r["writes_match_server"]]
        lines.append(
            f"    successful writes: generator {r['successful_writes']}, server metric delta "
            f"{r['server_successful_writes_delta']} ({match})"
        )
    return lines


def format_report(results: dict[str, Any]) -> str:
    """The results as a human-readable table."""
    lines = [""]
    if results.get("baseline"):
        lines.extend(_scenario_lines("baseline", results["baseline"]))
    for run, scenarios in results["runs"].items():
        lines.append(f"== {run} ==")
        for name, result in scenarios.items():
            lines.extend(_scenario_lines(name, result))
        if ratio := results.get("ratios", {}).get(run):
            lines.append(
                f"  L-1 against echo: reads/s ÷ echo calls/s {ratio['reads_per_s_over_echo_calls_per_s']}, "
                f"p50 ratio {ratio['read_p50_over_echo_p50']}, p99 ratio {ratio['read_p99_over_echo_p99']}"
            )
    return "\n".join(lines)


# -- the command ----------------------------------------------------------------------------

SCENARIOS = ("L-1", "L-2", "L-3", "L-5", "L-6", "all")
ALL_ORDER = ("L-1", "L-2", "L-3", "L-5", "L-6")
RESULTS = Path(__file__).resolve().parent / "results"


def _scenario_name(value: str) -> str:
    name = value.upper().replace("_", "-")
    if name == "ALL":
        return "all"
    if re.fullmatch(r"L[0-9]", name):
        name = f"L-{name[1:]}"
    if name not in SCENARIOS:
        raise argparse.ArgumentTypeError(f"unknown scenario {value!r} (one of {', '.join(SCENARIOS)})")
    return name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m testkit.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", type=_scenario_name, help="L-1, L-2, L-3, L-5, L-6 or all")
    parser.add_argument("--url", action="append", help="server URL (repeat: agents go round-robin)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per scenario (default 30)")
    parser.add_argument(
        "--concurrency", type=int, help="agents (defaults: 8, L-3 16; L-6: the ramp's maximum, 64)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here (all: bench/results/load-*.json)")
    parser.add_argument("--backend", default="sqlite", help="sqlite, postgres or sqlite,postgres")
    parser.add_argument("--log-level", default="WARNING", help="level of servers we start (default WARNING)")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes of servers we start (default 1)"
    )
    parser.add_argument("--files-per-book", type=int, default=200, help="L-2/L-5/L-6 files per book")
    parser.add_argument("--rate", type=float, help="L-5 calls/s (all: half of L-2's rate; else 20)")
    parser.add_argument("--step-seconds", type=float, help="L-6 step length (default duration/4, ≥ 3 s)")
    parser.add_argument("--call-deadline", type=float, help="client deadline per call (default 30; L-6 10)")
    parser.add_argument("--token", help="bearer token sent by every agent")
    parser.add_argument("--jwt-secret", help="mint an HS256 token per agent (sub = agent id)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server process to watch")
    parser.add_argument("--no-baseline", action="store_true", help="skip the trivial-server baseline")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if unknown := set(args.backends) - {"sqlite", "postgres"}:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    return args


def token_minter(args: argparse.Namespace) -> Callable[[str], str | None] | None:
    """Agent id -> bearer token, from `--token` or `--jwt-secret` (None: no tokens)."""
    if args.token:
        return lambda _agent_id: args.token
    if not args.jwt_secret:
        return None
    import jwt

    def mint(agent_id: str) -> str:
        now = int(time.time())
        claims = {"sub": agent_id, "scope": "fs:read fs:write", "iat": now, "exp": now + 24 * 3600}
        return jwt.encode(claims, args.jwt_secret, algorithm="HS256")

    return mint


async def run_scenario(name: str, target: Target, args: argparse.Namespace, done: dict[str, Any]) -> Any:
    """Run scenario `name` with the command's options (`done`: this run's earlier results)."""
    from testkit import load_scenarios as ls

    c, duration, seed = args.concurrency, args.duration, args.seed
    if name == "L-1":
        return await ls.read_smoke(target, concurrency=c or 8, duration=duration, seed=seed)
    if name == "L-2":
        return await ls.mixed(
            target, concurrency=c or 8, duration=duration, seed=seed, files_per_book=args.files_per_book
        )
    if name == "L-3":
        return await ls.hot_key(target, concurrency=c or 16, duration=duration, seed=seed)
    if name == "L-5":
        rate = args.rate
        if rate is None and "L-2" in done:
            rate = round(0.5 * sum(t["calls_per_s"] for t in done["L-2"]["tools"].values()), 1)
        return await ls.soak(
            target, concurrency=c or 8, duration=duration, seed=seed, rate=rate or 20.0,
            files_per_book=args.files_per_book,
        )  # fmt: skip
    return await ls.saturation(
        target, max_concurrency=c or 64, step_seconds=args.step_seconds or max(3.0, duration / 4),
        call_deadline=args.call_deadline or 10.0, seed=seed, files_per_book=args.files_per_book,
    )  # fmt: skip


async def run_all(names: list[str], target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Run `names` in order against `target`."""
    done: dict[str, Any] = {}
    for name in names:
        print(f"  {name} ({args.duration:g} s)", flush=True)
        done[name] = await run_scenario(name, target, args, done)
    return done


@contextlib.asynccontextmanager
async def local_server(backend: str, tmp: Path, args: argparse.Namespace) -> AsyncIterator[Target]:
    """`panaversity-fs serve` on `backend` (a scratch PostgreSQL database is dropped afterwards)."""
    from testkit.databases import PG_ADMIN_URL, create_pg_database, drop_pg_database
    from testkit.processes import ServerProcess, free_port, server_env

    pg_name = f"pfs_load_{os.getpid()}"
    db_port = None
    if backend == "postgres":
        database_url = await create_pg_database(pg_name)
        db_port = urlsplit(PG_ADMIN_URL).port or 5432
    else:
        database_url = f"sqlite+aiosqlite:///{tmp / backend / 'pfs.db'}"
    (tmp / backend).mkdir(parents=True, exist_ok=True)
    env = server_env(database_url, tmp / backend / "storage", args.log_level)
    if args.jwt_secret:
        env["PANAVERSITY_JWT_SECRET"] = args.jwt_secret
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "panaversity_fs",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(args.workers),
    ]
    server = ServerProcess.command(backend, argv, env, tmp / f"{backend}.log", port)
    try:
        await asyncio.to_thread(server.start)
        yield Target(
            [server.url], token_minter(args), server.pid, args.call_deadline or DEFAULT_CALL_DEADLINE, db_port
        )
    finally:
        server.stop()
        if server.process is not None and server.process.returncode not in (0, -signal.SIGTERM):
            print(f"warning: {backend} server exited with {server.process.returncode}:\n{server.log_tail()}")
        if backend == "postgres":
            try:
                await drop_pg_database(pg_name)
            except Exception as exc:
                print(f"warning: could not drop database {pg_name}: {exc}", file=sys.stderr)


async def baseline(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The trivial FastMCP server's `echo` at c=8 for the L-1 duration, with the same generator."""
    from testkit.load_scenarios import echo_baseline
    from testkit.processes import ServerProcess, free_port

    port = free_port()
    argv = [sys.executable, "-m", "bench.trivial_server", "--port", str(port)]
    server = ServerProcess.command("trivial", argv, dict(os.environ), tmp / "trivial.log", port)
    try:
        await asyncio.to_thread(server.start)
        print(f"  baseline: echo, c=8 ({args.duration:g} s)", flush=True)
        return await echo_baseline(Target([server.url], server_pid=server.pid), duration=args.duration)
    finally:
        server.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole command: servers (unless --url), scenarios, ratios against the baseline."""
    from testkit.measure import machine_info

    names = list(ALL_ORDER) if args.scenario == "all" else [args.scenario]
    results: dict[str, Any] = {
        "benchmark": "load",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["uv run python -m testkit.loadgen", *sys.argv[1:]]),
        "machine": machine_info(),
        "config": {
            "scenarios": names,
            "duration_s": args.duration,
            "seed": args.seed,
            "server_log_level": None if args.url else args.log_level,
            "server_workers": None if args.url else args.workers,
            "protocol_version_offered": PROTOCOL_VERSION,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "baseline": None,
        "runs": {},
    }
    if args.url:
        target = Target(args.url, token_minter(args), args.server_pid, args.call_deadline or 30.0)
        results["runs"]["url"] = await run_all(names, target, args)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="pfs-load-"))
        try:
            if "L-1" in names and not args.no_baseline:
                results["baseline"] = await baseline(tmp, args)
            for backend in args.backends:
                print(f"panaversity-fs on {backend}", flush=True)
                async with local_server(backend, tmp, args) as target:
                    results["runs"][backend] = await run_all(names, target, args)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    results["ratios"] = baseline_ratios(results)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


async def _run_cancellable(args: argparse.Namespace) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(args)


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit status (143 when interrupted)."""
    args = parse_args(argv)
    try:
        results = asyncio.run(_run_cancellable(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: servers stopped, scratch data removed", file=sys.stderr)
        return 143
    except LoadError as exc:
        print(f"load run failed: {exc}", file=sys.stderr)
        return 1
    out = args.json
    if out is None and args.scenario == "all":
        out = RESULTS / f"load-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    print(format_report(results))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    # Run the copy the scenarios import (`testkit.loadgen`), not this `__main__` one, so that
    # there is one set of classes.
    from testkit.loadgen import main as _main

    sys.exit(_main())
