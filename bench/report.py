"""The generated part of docs/benchmarks.md, rendered from the results of one `python -m bench` run.

    uv run python -m bench.report bench/results/run-<stamp>                          # print it
    uv run python -m bench.report bench/results/run-<stamp> --doc docs/benchmarks.md  # rewrite the doc's part

The part sits between BEGIN and END; the rest of the doc (the hand-written analysis) is kept
as it is. It holds the run (machine, date, tree, and the CPU other processes took during each
benchmark), one table of every target with its same-run baseline, then each benchmark's table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench:generated:begin -->"
END = "<!-- bench:generated:end -->"
BACKENDS = {"sqlite": "SQLite + fs", "postgres": "PostgreSQL + fs"}
GREP_TARGET_S = 10.0
""""grep over 200 MB in seconds", read as: under 10 s."""


@dataclass
class Run:
    """One run's manifest (run.json) and each benchmark's results, by benchmark name."""

    path: Path
    manifest: dict[str, Any]
    results: dict[str, dict[str, Any]]

    def record(self, name: str) -> dict[str, Any] | None:
        """The manifest's record of benchmark `name` (None: not part of this run)."""
        return next((b for b in self.manifest["benchmarks"] if b["name"] == name), None)


def load_run(path: Path) -> Run:
    """Read run.json and every results file it names."""
    manifest = json.loads((path / "run.json").read_text())
    results = {}
    for bench in manifest["benchmarks"]:
        if bench.get("results"):
            results[bench["name"]] = json.loads((path / bench["results"]).read_text())
    return Run(path, manifest, results)


# -- formatting -----------------------------------------------------------------------------


def num(value: float | None, digits: int = 2) -> str:
    """`value` with `digits` decimals, or an em dash."""
    return "—" if value is None else f"{value:,.{digits}f}"


def pct(value: float | None) -> str:
    """A CPU share in % of one core."""
    return "—" if value is None else f"{value:.0f}%"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def verdict(met: bool | None) -> str:
    """met, **missed**, or not measured."""
    return {True: "met", False: "**missed**", None: "not measured"}[met]


# -- targets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One row of the targets table."""

    benchmark: str
    what: str
    figure: str
    baseline: str
    versus: str
    goal: str
    met: bool | None


def _missing(run: Run, name: str, what: str, goal: str) -> Target:
    record = run.record(name)
    why = "not run" if record is None else f"{record['status']}, exit {record['exit_status']}"
    return Target(name, what, f"not measured ({why})", "—", "—", goal, None)


def core_targets(run: Run) -> list[Target]:
    """Read and write p50 and server CPU against the payload-matched trivial tools (`give` for a
    read, `take` for a write; the short `echo` in runs made before those existed), overlay − base,
    8-client writes/s on PostgreSQL.

    The thresholds, the ratios and the verdicts are bench_core's (`TARGETS`, `ratios`, `meets`),
    the ratios taken unrounded from the stored series; the raw-transaction ratio is the stored one.
    """
    from bench.bench_core import TARGETS as CORE_TARGETS
    from bench.bench_core import baseline_names, baselines, meets, ratios, target_key

    def goal(metric: str, shown: str) -> str:
        op, value = CORE_TARGETS[metric]
        return f"{op.replace('<=', '≤').replace('>=', '≥')} {shown.format(value)}"

    goals = {
        "read_over_trivial": goal("read_over_trivial", "{:.1f}×"),
        "write_over_trivial": goal("write_over_trivial", "{:.1f}×"),
        "read_cpu_over_trivial_ms": goal("read_cpu_over_trivial_ms", "+{:g} ms"),
        "write_cpu_over_trivial_ms": goal("write_cpu_over_trivial_ms", "+{:g} ms"),
        "overlay_minus_base_ms": goal("overlay_minus_base_ms", "{:+g} ms"),
        "writes_per_s_8_clients": goal("writes_per_s_8_clients", "{:g} writes/s"),
        "sqlite_writes_per_s_8_clients": goal("sqlite_writes_per_s_8_clients", "{:g} writes/s"),
    }
    core = run.results.get("core")
    if core is None:
        labels = {
            "read_over_trivial": "read_content p50 / trivial give p50",
            "write_over_trivial": "write_content p50 / trivial take p50",
            "read_cpu_over_trivial_ms": "read_content server CPU − give's",
            "write_cpu_over_trivial_ms": "write_content server CPU − take's",
            "overlay_minus_base_ms": "overlay read p50 − base read p50",
            "writes_per_s_8_clients": "write_content, 8 clients, PostgreSQL + fs",
            "sqlite_writes_per_s_8_clients": "write_content, 8 clients, SQLite + fs",
        }
        return [_missing(run, "core", labels[k], g) for k, g in goals.items()]
    give, take = baselines(core["trivial"])
    read_base, write_base = baseline_names(core["trivial"])
    out = []
    for backend, label in BACKENDS.items():
        b = core.get(backend)
        if b is None:
            continue
        r = ratios(core["trivial"], b, digits=None)
        read, overlay, write = b["read_base"]["p50_ms"], b["read_overlay"]["p50_ms"], b["write"]["p50_ms"]
        read_cpu, write_cpu = b["read_base"]["server_cpu_ms_per_call"], b["write"]["server_cpu_ms_per_call"]
        out += [
            Target(
                "core", f"read_content p50 / trivial {read_base} p50, {label}", f"{num(read)} ms",
                f"{read_base} {num(give['p50_ms'])} ms", f"{r['read_over_trivial']:.2f}×", goals["read_over_trivial"],
                meets("read_over_trivial", r["read_over_trivial"]),
            ),
            Target(
                "core", f"write_content p50 / trivial {write_base} p50, {label}", f"{num(write)} ms",
                f"{write_base} {num(take['p50_ms'])} ms", f"{r['write_over_trivial']:.2f}×", goals["write_over_trivial"],
                meets("write_over_trivial", r["write_over_trivial"]),
            ),
            Target(
                "core", f"read_content server CPU per call − {read_base}'s, {label}", f"{num(read_cpu)} ms",
                f"{read_base} {num(give['server_cpu_ms_per_call'])} ms", f"{r['read_cpu_over_trivial_ms']:+.2f} ms",
                goals["read_cpu_over_trivial_ms"], meets("read_cpu_over_trivial_ms", r["read_cpu_over_trivial_ms"]),
            ),
            Target(
                "core", f"write_content server CPU per call − {write_base}'s, {label}", f"{num(write_cpu)} ms",
                f"{write_base} {num(take['server_cpu_ms_per_call'])} ms", f"{r['write_cpu_over_trivial_ms']:+.2f} ms",
                goals["write_cpu_over_trivial_ms"], meets("write_cpu_over_trivial_ms", r["write_cpu_over_trivial_ms"]),
            ),
            Target(
                "core", f"overlay read p50 − base read p50, {label}", f"{num(overlay)} ms",
                f"base read {num(read)} ms", f"{r['overlay_minus_base_ms']:+.2f} ms", goals["overlay_minus_base_ms"],
                meets("overlay_minus_base_ms", r["overlay_minus_base_ms"]),
            ),
        ]  # fmt: skip
    ceiling = core["trivial"].get("take_throughput")
    for backend, label in BACKENDS.items():
        b = core.get(backend)
        if b is None:
            continue
        rate = ratios(core["trivial"], b, digits=None)["writes_per_s_8_clients"]
        key = target_key(backend, "writes_per_s_8_clients")
        compared: list[str] = []
        versus: list[str] = []
        raw = core.get("postgres_raw_txn", {}).get("throughput") if backend == "postgres" else None
        over_raw = core.get("raw_txn_ratios", {}).get("writes_per_s_over_raw_txns_per_s")
        if raw and over_raw is not None:
            compared.append(f"plain asyncpg {num(raw['txns_per_s'], 0)} txns/s")
            versus.append(f"{over_raw:.3f}×")
        if ceiling:
            compared.append(f"trivial `take` {num(ceiling['calls_per_s'], 0)} calls/s")
            versus.append(f"{rate / ceiling['calls_per_s']:.2f}×")
        out.append(
            Target(
                "core", f"write_content, 8 clients, {label}", f"{num(rate, 1)} writes/s",
                "; ".join(compared) or "—", "; ".join(versus) or "—", goals[key], meets(key, rate),
            )
        )  # fmt: skip
    return out


def load_targets(run: Run) -> list[Target]:
    """L-1, L-2 and L-3 on PostgreSQL (specs/test-catalogue.md sets them for PostgreSQL + fs)."""
    goals = {
        "L-1 reads/s": "≥ 200/s",
        "L-1 read p99": "< 150 ms",
        "L-1 errors": "0",
        "L-2 writes/s": "≥ 50/s",
        "L-2 reads/s": "≥ 150/s",
        "L-2 errors": "0",
        "L-3 losers": "all CONFLICT, no 5xx",
        "L-3 successes": "≥ 20/s",
    }
    load = run.results.get("load") or {}
    pg = load.get("runs", {}).get("postgres")
    if pg is None:
        return [_missing(run, "load", f"{k}, PostgreSQL + fs", g) for k, g in goals.items()]
    echo = (load.get("baseline") or {}).get("tools", {}).get("echo", {})
    core = run.results.get("core") or {}
    raw = core.get("postgres_raw_txn", {}).get("throughput")
    echo_rate = f"echo {num(echo.get('ok_per_s'), 0)} calls/s" if echo else "—"
    out: list[Target] = []
    if l1 := pg.get("L-1"):
        reads = l1["tools"].get("read_content", {})
        rate, p99 = reads.get("ok_per_s", 0.0), reads.get("p99_ms")
        out += [
            Target(
                "load", "L-1 read smoke, c=8: reads/s", f"{num(rate, 1)} reads/s", echo_rate,
                f"{rate / echo['ok_per_s']:.2f}×" if echo else "—", goals["L-1 reads/s"], rate >= 200,
            ),
            Target(
                "load", "L-1 read smoke, c=8: read p99", f"{num(p99, 1)} ms",
                f"echo p99 {num(echo.get('p99_ms'), 1)} ms" if echo else "—",
                f"{p99 / echo['p99_ms']:.2f}×" if echo and p99 else "—", goals["L-1 read p99"],
                p99 is not None and p99 < 150,
            ),
            Target("load", "L-1 read smoke: errors", str(l1["errors"]), "—", "—", goals["L-1 errors"], l1["errors"] == 0),
        ]  # fmt: skip
    if l2 := pg.get("L-2"):
        codes = ", ".join(f"{k} {v}" for k, v in l2["error_codes"].items())
        out += [
            Target(
                "load", "L-2 mixed 80/20, c=8: writes/s", f"{num(l2['writes_per_s'], 1)} writes/s",
                f"plain asyncpg {num(raw['txns_per_s'], 0)} txns/s" if raw else "—",
                f"{l2['writes_per_s'] / raw['txns_per_s']:.3f}×" if raw else "—", goals["L-2 writes/s"],
                l2["writes_per_s"] >= 50,
            ),
            Target(
                "load", "L-2 mixed 80/20, c=8: reads/s", f"{num(l2['reads_per_s'], 1)} reads/s", echo_rate,
                f"{l2['reads_per_s'] / echo['ok_per_s']:.2f}×" if echo else "—", goals["L-2 reads/s"],
                l2["reads_per_s"] >= 150,
            ),
            Target(
                "load", "L-2 mixed: errors (CONFLICT counted apart)",
                f"{l2['errors']}{f' ({codes})' if codes else ''}; {l2['conflicts']} CONFLICT", "—", "—",
                goals["L-2 errors"], l2["errors"] == 0,
            ),
        ]  # fmt: skip
    if l3 := pg.get("L-3"):
        wrong = sum(l3["losers_not_conflict"].values())
        out.append(
            Target(
                "load", "L-3 hot key, c=16: losing writes",
                f"{l3['conflicts']} CONFLICT, {wrong} other, {l3['http_5xx']} 5xx", "—", "—",
                goals["L-3 losers"], bool(l3["all_losers_conflict"]) and l3["http_5xx"] == 0,
            )
        )  # fmt: skip
        alone = core.get("postgres", {})
        cycle_ms = (alone.get("read_base", {}).get("p50_ms") or 0) + (
            alone.get("write", {}).get("p50_ms") or 0
        )
        out.append(
            Target(
                "load", "L-3 hot key, c=16: successful writes/s", f"{num(l3['successes_per_s'], 1)} writes/s",
                f"one agent alone, read + write p50: {1000 / cycle_ms:.0f}/s" if cycle_ms else "—",
                f"{l3['successes_per_s'] * cycle_ms / 1000:.2f}×" if cycle_ms else "—", goals["L-3 successes"],
                l3["successes_per_s"] >= 20,
            )
        )  # fmt: skip
    return out


def archive_targets(run: Run) -> list[Target]:
    """The 500-file / 200 MiB archive over HTTP against `zipfile`, and the server's RSS growth."""
    goals = {"ratio": "≤ 1.5×", "time": "≤ 5 s", "rss": "< 32 MiB"}
    a = run.results.get("archive")
    if a is None:
        labels = {
            "ratio": "archive of 500 files / 200 MiB over HTTP / `zipfile`",
            "time": "archive of 500 files / 200 MiB over HTTP: time",
            "rss": "archive: peak server RSS growth over idle",
        }
        return [_missing(run, "archive", labels[k], g) for k, g in goals.items()]
    http, base, ratio = a["http_best_seconds"], a["zipfile_best_seconds"], a["ratio_best"]
    book = f"{a['files']} files / {a['total_mib']:.0f} MiB"
    return [
        Target(
            "archive", f"archive of {book} over HTTP / `zipfile` (best of {len(a['http_downloads'])})",
            f"{num(http)} s", f"`zipfile` {num(base)} s", f"{ratio:.2f}×", goals["ratio"], ratio <= 1.5,
        ),
        Target(
            "archive", f"archive of {book} over HTTP: time", f"{num(http)} s", f"`zipfile` {num(base)} s",
            f"{ratio:.2f}×", goals["time"], http <= 5.0,
        ),
        Target(
            "archive", "archive: peak server RSS growth over idle", f"{num(a['peak_rss_growth_mb'], 1)} MiB",
            "—", "—", goals["rss"], a["peak_rss_growth_mb"] < 32,
        ),
    ]  # fmt: skip


def builds_targets(run: Run) -> list[Target]:
    """plan_build on the 10,000-file book, each series, each database: p95 ≤ 300 ms."""
    b = run.results.get("builds")
    if b is None:
        return [_missing(run, "builds", "plan_build, 10,000 files", "p95 ≤ 300 ms")]
    echo = b["trivial_echo"]["p50_ms"]
    out = []
    for backend, label in BACKENDS.items():
        if backend not in b:
            continue
        listed = b[backend]["plan_first"].get("files_listed", 10_000)
        labels = {
            "plan_unchanged": "target = current hash (unchanged)",
            "plan_diff_100": "diff against an older snapshot (100 changed)",
            "plan_first": f"new manifest, no target (first page: {listed:,} files listed)",
        }
        for key, what in labels.items():
            s = b[backend][key]
            out.append(
                Target(
                    "builds", f"plan_build, 10,000 files, {what}, {label}",
                    f"p50 {num(s['p50_ms'], 0)} / p95 {num(s['p95_ms'], 0)} ms", f"echo p50 {num(echo)} ms",
                    f"{s['p50_ms'] / echo:.0f}×", "p95 ≤ 300 ms", s["p95_ms"] <= 300,
                )
            )  # fmt: skip
        whole = b[backend].get("plan_whole")
        if whole is not None:
            out.append(
                Target(
                    "builds", f"plan_build, 10,000 files, every next page of the whole listing ({whole['pages']} calls, "
                    f"all of them p50 {num(whole['p50_ms'], 0)} ms), {label}",
                    f"p50 {num(whole['next_page_p50_ms'], 0)} / p95 {num(whole['next_page_p95_ms'], 0)} ms",
                    f"echo p50 {num(echo)} ms", f"{whole['next_page_p50_ms'] / echo:.0f}×", "p95 ≤ 300 ms",
                    whole["next_page_p95_ms"] <= 300,
                )
            )  # fmt: skip
    return out


def books_targets(run: Run) -> list[Target]:
    """grep_search over the 200 MB book against `re2` over the same markdown on local disk."""
    b = run.results.get("books")
    goal = f"seconds (≤ {GREP_TARGET_S:g} s)"
    if b is None:
        return [_missing(run, "books", "grep_search over a 200 MB book", goal)]
    g = b["grep"]
    mcp, re2 = g["mcp_grep"]["median_s"], g["disk_re2"]["median_s"]
    size = "40 MB (quick)" if b.get("quick") else "200 MB"
    return [
        Target(
            "books", f"grep_search over a {size} book ({g['markdown_bytes'] / 1e6:.0f} MB markdown), median",
            f"{num(mcp, 3)} s", f"`re2` on local files {num(re2, 3)} s", f"{mcp / re2:.1f}×", goal,
            None if b.get("quick") else mcp <= GREP_TARGET_S,
        )
    ]  # fmt: skip


def audit_targets(run: Run) -> list[Target]:
    """`audit verify` of 1,000,000 entries: under 60 s and 200 MiB RSS."""
    a = run.results.get("audit")
    if a is None:
        return [
            _missing(run, "audit", "audit verify, 1,000,000 entries: time", "< 60 s"),
            _missing(run, "audit", "audit verify: peak RSS", "< 200 MiB"),
        ]
    full = a["entries"] >= 1_000_000
    base = (a["baseline_fetch_seconds"] or 0.0) + a["baseline_hash_seconds"]
    entries = f"{a['entries']:,} entries, {BACKENDS.get(a['backend'], a['backend'])}"
    return [
        Target(
            "audit", f"audit verify, {entries}: time", f"{num(a['verify_seconds'], 1)} s",
            f"raw fetch + hash {num(base, 1)} s", f"{a['verify_seconds'] / base:.2f}×", "< 60 s",
            (a["verify_seconds"] < 60 and a["verify_ok"]) if full else None,
        ),
        Target(
            "audit", f"audit verify, {entries}: peak RSS", f"{num(a['verify_peak_rss_mib'], 0)} MiB", "—", "—",
            "< 200 MiB", a["verify_peak_rss_mib"] < 200 if full else None,
        ),
    ]  # fmt: skip


TARGETS: tuple[Callable[[Run], list[Target]], ...] = (
    core_targets,
    load_targets,
    archive_targets,
    books_targets,
    builds_targets,
    audit_targets,
)


# -- sections -------------------------------------------------------------------------------


def run_section(run: Run) -> list[str]:
    """The machine, the date, the tree, and each benchmark's status and the CPU others took."""
    m = run.manifest
    machine = m["machine"]
    libs = machine.get("libraries", {})
    pg = machine.get("postgresql", {})
    start, end = m["tree_at_start"], m.get("tree_at_end", m["tree_at_start"])
    started = datetime.fromisoformat(m["started_at"])
    finished = datetime.fromisoformat(m["finished_at"]) if m.get("finished_at") else None
    when = f"{started:%Y-%m-%d %H:%M}–{finished:%H:%M} UTC" if finished else f"{started:%Y-%m-%d %H:%M} UTC"
    tree = f"commit `{start['commit'][:7]}`"
    if start["dirty_files"]:
        tree += " plus uncommitted changes to " + ", ".join(f"`{f}`" for f in start["dirty_files"])
        tree += f" (diff `{start['diff_sha256']}`)"
    if (end["commit"], end["diff_sha256"]) != (start["commit"], start["diff_sha256"]):
        changed = sorted(set(end["dirty_files"]) | set(start["dirty_files"])) or ["(reverted changes)"]
        server_code = any(f.startswith("src/") for f in changed) or end["commit"] != start["commit"]
        tree += (
            f"; the tree changed during the run (at the end: commit `{end['commit'][:7]}`, "
            f"diff `{end['diff_sha256']}`, changed: {', '.join(f'`{f}`' for f in changed)})"
            + (", so later benchmarks may have run other server code" if server_code else "")
        )
    if pg.get("version"):
        database = (
            f"PostgreSQL {pg['version']} on the same machine (synchronous_commit {pg['synchronous_commit']}, "
            f"fsync {pg['fsync']} via {pg['wal_sync_method']}, shared_buffers {pg['shared_buffers']})"
        )
    else:
        database = f"PostgreSQL not reachable ({pg.get('error', '?')})"
    versions = ", ".join(f"{k} {v}" for k, v in libs.items())
    mhz = f" ({machine['cpu_mhz']} MHz)" if machine.get("cpu_mhz") else ""
    quiet = m["wait_quiet"]
    samples = quiet["samples_pct"]
    if quiet["max_wait_s"] > 0:
        reached = samples[-1] < quiet["threshold_pct"]
        waited = (
            f"Waited up to {quiet['max_wait_s']:g} s for other processes to drop below "
            f"{quiet['threshold_pct']:g}% of a core: {'reached' if reached else '**not reached**'} after "
            f"{len(samples)} samples of 2 s (last {samples[-1]:g}%, highest {max(samples):g}%)."
        )
    else:
        waited = f"No wait for a quiet machine; other processes took {samples[-1]:g}% of a core just before."
    lines = [
        f"- **Command**: `{m['command']}`{' (quick variants)' if m.get('quick') else ''}; {when}.",
        f"- **Tree**: {tree}.",
        (
            f"- **Machine**: {machine['nproc']} × {machine['cpu_model']}{mhz}, {machine['ram_gib']} GiB RAM, "
            f"kernel {machine.get('kernel', '?')}, Python {machine['python']}; {versions}."
        ),
        f"- **Database**: {database}. Client, server and PostgreSQL share the cores.",
        f"- **Load before the run**: {waited} Load average {', '.join(map(str, m['loadavg_at_start']))}.",
        "",
        (
            "CPU is in % of one core. *Other processes* is the machine's busy time minus the benchmark's own "
            "process tree (bench, servers, CLIs) and the runner; PostgreSQL's backends are part of it, so the "
            "PostgreSQL column is shown too (all its databases: other sessions' tests may use it). The worst "
            f"window is the busiest {run_window(run)} s window."
        ),
        "",
    ]
    rows = []
    for b in m["benchmarks"]:
        c = b["cpu"]
        status = b["status"] if b["status"] == "ok" else f"**{b['status']}** (exit {b['exit_status']})"
        rows.append(
            [
                b["name"],
                f"`{b['command']}`",
                status,
                f"{b['wall_s']:.0f} s",
                f"{c['loadavg_start'][0]:.2f} / {c['loadavg_max_1min']:.2f} / {c['loadavg_end'][0]:.2f}",
                f"{pct(c['other_cpu_pct'])} ({pct(c['other_cpu_pct_worst_window'])})",
                pct(c["postgres_cpu_pct"]),
                pct(c["benchmark_cpu_pct"]),
            ]
        )
    lines += table(
        [
            "benchmark",
            "command",
            "status",
            "wall",
            "load avg (1 min): start / max / end",
            "other processes: mean (worst window)",
            "of which PostgreSQL",
            "benchmark itself",
        ],
        rows,
    )
    return lines


def run_window(run: Run) -> str:
    """The sampling window's length, as the manifest recorded it."""
    for b in run.manifest["benchmarks"]:
        return f"{b['cpu'].get('window_s', 10):g}"
    return "10"


def targets_section(run: Run) -> list[str]:
    """One table of every target."""
    targets = [t for make in TARGETS for t in make(run)]
    met = sum(t.met is True for t in targets)
    missed = sum(t.met is False for t in targets)
    rows = [[t.benchmark, t.what, t.figure, t.baseline, t.versus, t.goal, verdict(t.met)] for t in targets]
    unmeasured = len(targets) - met - missed
    summary = f"**{met} of {len(targets)} targets met, {missed} missed**" + (
        f", {unmeasured} not measured." if unmeasured else "."
    )
    if run.manifest.get("quick"):
        summary += " Quick variants: shorter series and smaller inputs, so the verdicts are indicative only."
    return [
        summary,
        "",
        *table(
            ["benchmark", "what", "figure", "same-run baseline", "vs baseline", "target", "verdict"], rows
        ),
    ]


def core_section(core: dict[str, Any]) -> list[str]:
    """Latency series and 8-client throughput against the trivial echo and plain asyncpg."""
    cfg = core["config"]
    head = (
        f"Sequential calls from one fastmcp `Client`: {cfg['warmup']} warm-up calls, then {cfg['n']} timed"
        + (
            f", interleaved with the other series in {cfg['blocks']} blocks; "
            if cfg.get("blocks", 1) > 1
            else "; "
        )
        + f"{cfg['load_clients']} clients for {cfg['load_seconds']:g} s in the throughput rows; "
        f"{cfg['lesson_bytes'] // 1024} KB lessons; server log level {cfg['server_log_level']}."
    )
    if cfg.get("rounds", 1) > 1:
        head += (
            f" Every series ran in {cfg['rounds']} rounds (on fresh servers and databases each round);"
            " each figure is the median of its rounds."
        )

    def row(label: str, s: dict[str, Any], server: bool = True) -> list[str]:
        return [
            label,
            num(s["p50_ms"]),
            num(s["p95_ms"]),
            num(s.get("server_cpu_ms_per_call")) if server else "",
            num(s.get("client_cpu_ms_per_call")),
            pct(s["other_processes_cpu_pct"]),
        ]

    trivial_titles = {
        "echo": "trivial FastMCP `echo` (short text)",
        "give": "trivial `give`: answers {kb} KB of text (a read's baseline)",
        "take": "trivial `take`: accepts {kb} KB (a write's baseline)",
    }
    kb = cfg["lesson_bytes"] // 1024
    rows = [
        row(title.format(kb=kb), core["trivial"][tool])
        for tool, title in trivial_titles.items()
        if tool in core["trivial"]
    ]
    if t := core["trivial"].get("take_throughput"):
        rows.append(row(f"trivial `take`, {t['clients']} clients: **{t['calls_per_s']} calls/s**", t))
    titles = {
        "read_base": "read_content (base)",
        "read_overlay": "read_content (overlay)",
        "write": "write_content (update)",
        "throughput": "write_content, {clients} clients: **{writes_per_s} writes/s**, {errors} errors",
    }
    for backend, label in BACKENDS.items():
        if backend not in core:
            continue
        for series, title in titles.items():
            s = core[backend][series]
            rows.append(row(f"{label}: {title.format(**s)}", s))
    if raw := core.get("postgres_raw_txn"):
        rows.append(
            row("plain asyncpg: `UPDATE … RETURNING` + `INSERT`, one transaction", raw["sequential"], False)
        )
        t = raw["throughput"]
        rows.append(
            row(
                f"plain asyncpg: the same, {t['connections']} connections: **{t['txns_per_s']} txns/s**",
                t,
                False,
            )
        )
    return [
        head,
        "",
        *table(
            ["series", "p50 ms", "p95 ms", "server CPU ms/call", "client CPU ms/call", "other processes CPU"],
            rows,
        ),
    ]


def _cpu(cpu: dict[str, Any]) -> str:
    return f"{pct(cpu.get('server_cpu_pct'))} / {pct(cpu['client_cpu_pct'])} / {pct(cpu['other_cpu_pct'])}"


def _outcomes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if k != "ok") or "—"


def _processes(workers: int | None) -> str:
    return "one server process" if (workers or 1) == 1 else f"{workers} server worker processes"


def load_section(load: dict[str, Any]) -> list[str]:
    """Per scenario and tool: rate and latency; then L-6's steps."""
    cfg = load["config"]
    lines = [
        (
            f"`testkit/loadgen.py`: {cfg['duration_s']:g} s per scenario, seed {cfg['seed']}, server log level "
            f"{cfg['server_log_level']}, {_processes(cfg.get('server_workers'))} per database. CPU: server / generator / other processes."
        ),
        "",
    ]
    rows = []

    def tool_rows(server: str, scenario: str, result: dict[str, Any]) -> None:
        for tool, s in result["tools"].items():
            rows.append(
                [
                    server,
                    scenario,
                    f"`{tool}`",
                    str(s["calls"]),
                    num(s["ok_per_s"], 1),
                    num(s["p50_ms"], 1),
                    num(s["p99_ms"], 1),
                    num(s["max_ms"], 0),
                    _outcomes(s["outcomes"]),
                    _cpu(result["cpu"]),
                ]
            )

    if load.get("baseline"):
        tool_rows("trivial FastMCP", f"echo, c={load['baseline']['concurrency']}", load["baseline"])
    notes = []
    for backend, scenarios in load["runs"].items():
        label = BACKENDS.get(backend) or str(backend)
        for name in ("L-1", "L-2", "L-3", "L-5"):
            if r := scenarios.get(name):
                tool_rows(label, f"{name}, c={r['concurrency']}", r)
        if r := scenarios.get("L-2"):
            notes.append(
                f"- {label}, L-2: {r['writes_per_s']} writes/s and {r['reads_per_s']} reads/s, "
                f"{r['conflicts']} CONFLICT (expected), {r['errors']} errors; successful writes "
                f"{'match' if r['writes_match_server'] else 'DO NOT match'} the server's metric."
            )
        if r := scenarios.get("L-3"):
            notes.append(
                f"- {label}, L-3: {r['successes_per_s']} successful writes/s, {r['conflicts']} CONFLICT, "
                f"losers with another code: {_outcomes(r['losers_not_conflict'])}, 5xx: {r['http_5xx']}, "
                f"version advance {r['version_advance']} "
                f"{'= the successful writes' if r['version_advance_matches'] else '**≠ the successful writes**'}."
            )
        if (r := scenarios.get("L-5")) and r.get("resources", {}).get("sampled"):
            res = r["resources"]
            notes.append(
                f"- {label}, L-5 (paced at {r['rate_calls_per_s']} calls/s, {res['warmup_s']:g} s warm-up): RSS "
                f"{res['rss_mb_after_warmup']} → {res['rss_mb_end']} MB ({res['rss_growth_pct']:+.1f}%), FDs "
                f"{res['fds_after_warmup']} → {res['fds_end']}, database connections at most {res['db_tcp_max']}, "
                f"error rate {r['error_rate']}."
            )
    lines += table(
        ["server", "scenario", "tool", "calls", "ok/s", "p50 ms", "p99 ms", "max ms", "not ok", "CPU"], rows
    )
    lines += ["", *notes]
    steps = []
    for backend, scenarios in load["runs"].items():
        if not (r := scenarios.get("L-6")):
            continue
        for s in [*r["steps"], r["cooldown"] | {"concurrency": "cool-down, 1"}]:
            steps.append(
                [
                    BACKENDS.get(backend, backend),
                    str(s["concurrency"]),
                    num(s["calls_per_s"], 1),
                    num(s["ok_per_s"], 1),
                    num(s["p50_ms"], 1),
                    num(s["p99_ms"], 1),
                    num(s["max_ms"], 0),
                    str(s["timeouts"]),
                    f"{s['typed_sheds']} ({s['sheds_with_retry_after']})",
                    str(s["conflicts"]),
                    _outcomes(s["other_errors"]),
                    _cpu(s["cpu"]),
                ]
            )
    if steps:
        first = next(r for r in load["runs"].values() if "L-6" in r)["L-6"]
        lines += [
            "",
            f"L-6 saturation: steps of {first['step_seconds']:g} s, client deadline {first['call_deadline_s']:g} s.",
            "",
            *table(
                [
                    "server",
                    "c",
                    "calls/s",
                    "ok/s",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "timeouts",
                    "typed sheds (with retry_after)",
                    "CONFLICT",
                    "other errors",
                    "CPU",
                ],
                steps,
            ),
        ]
    return lines


def archive_section(a: dict[str, Any]) -> list[str]:
    """Download against zipfile, RSS, and the in-process ZIP writers."""
    downloads = ", ".join(f"{d['seconds']:.2f}" for d in a["http_downloads"])
    rows = [
        ["`zipfile` → /dev/null", ", ".join(f"{s:.2f}" for s in a["zipfile_seconds"]) + " s"],
        [f"HTTP archive download ({a['files']} files, {a['total_mib']:.0f} MiB)", f"{downloads} s"],
        ["download / `zipfile`", f"{a['ratio_best']:.2f} best, {a['ratio_median']:.2f} median"],
        ["peak server RSS growth over idle", f"{a['peak_rss_growth_mb']:.1f} MiB"],
        [
            "`stream_zip` on a thread / `async_stream_zip`, in-process",
            (
                f"{min(a['stream_zip_thread']['seconds']):.2f} s / {min(a['async_stream_zip']['seconds']):.2f} s; "
                f"worst loop stall {a['stream_zip_thread']['worst_loop_stall_ms']:.1f} / "
                f"{a['async_stream_zip']['worst_loop_stall_ms']:.1f} ms"
            ),
        ],
    ]
    return table(["measurement", "result"], rows)


def audit_section(a: dict[str, Any]) -> list[str]:
    """Verify time and RSS against fetching and hashing the same rows."""
    rows = [
        ["entries", f"{a['entries']:,} ({BACKENDS.get(a['backend'], a['backend'])})"],
        ["fill (synthetic chain)", f"{a['fill_seconds']:.1f} s"],
        [
            "`panaversity-fs audit verify`",
            (
                f"{a['verify_seconds']:.2f} s ({a['verify_entries_per_second']:,} entries/s), "
                f"{'ok' if a['verify_ok'] else '**failed**'}"
            ),
        ],
        ["peak RSS of the verify process", f"{a['verify_peak_rss_mib']:.1f} MiB"],
        ["baseline: stream the rows with plain asyncpg", f"{num(a['baseline_fetch_seconds'])} s"],
        ["baseline: canonical JSON + sha256 of every entry", f"{a['baseline_hash_seconds']:.2f} s"],
        ["verify / (fetch + hash)", f"{a['verify_over_fetch_plus_hash']:.2f}×"],
    ]
    return table(["measurement", "result"], rows)


def benchmark_sections(run: Run) -> list[str]:
    """Each benchmark's main table (books and builds use their modules' own tables)."""
    from bench import bench_books, bench_builds

    sections: list[tuple[str, str, Callable[[dict[str, Any]], list[str]]]] = [
        ("core", "Core: tool latency and write throughput", core_section),
        ("load", "Load: L-1, L-2, L-3, L-5, L-6", load_section),
        ("archive", "Archive of a 500-file / 200 MiB book", archive_section),
        ("books", "Whole-book reads and grep", lambda r: bench_books.report(r).splitlines()),
        ("builds", "Build planning on a 10,000-file book", lambda r: bench_builds.report(r).splitlines()),
        ("audit", "Audit chain verification", audit_section),
    ]
    lines: list[str] = []
    for name, title, render_one in sections:
        record = run.record(name)
        if record is None:
            continue
        where = f", results `{run_file(run, name)}`" if record.get("results") else ""
        lines += ["", f"### {title}", "", f"`{record['command']}`{where}.", ""]
        if name in run.results:
            lines += render_one(run.results[name])
        else:
            lines.append(
                f"**No results**: {record['status']}, exit status {record['exit_status']}; "
                f"see `{run_file(run, name, log=True)}`."
            )
    return lines


def run_file(run: Run, name: str, log: bool = False) -> str:
    """The path of a benchmark's results (or log) file, relative to the repository."""
    record = run.record(name) or {}
    file = record.get("log") if log else record.get("results")
    return f"bench/results/{run.path.name}/{file}"


def render(run: Run) -> str:
    """The generated part, markers included."""
    lines = [
        BEGIN,
        "",
        "## Results of the last run",
        "",
        (
            f"*Generated by `python -m bench` (`bench/report.py`) from `bench/results/{run.path.name}/`. "
            "The next run rewrites everything up to the end marker; the analysis below it is hand-written.*"
        ),
        "",
        "### This run",
        "",
        *run_section(run),
        "",
        "### Targets",
        "",
        *targets_section(run),
        *benchmark_sections(run),
        "",
        END,
    ]
    return "\n".join(lines)


def update_doc(doc: Path, generated: str) -> None:
    """Replace the part between the markers of `doc` (or insert it after the title) with `generated`."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        doc.write_text(head + generated + tail)
        return
    title, _, body = text.partition("\n")
    doc.write_text(f"{title}\n\n{generated}\n{body}")


def main(argv: list[str] | None = None) -> int:
    """Print (or write into --doc) the generated part for one run folder."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.report", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("run", type=Path, help="a bench/results/run-<stamp> folder")
    parser.add_argument("--doc", type=Path, help="rewrite the generated part of this file")
    args = parser.parse_args(argv)
    generated = render(load_run(args.run))
    if args.doc is None:
        print(generated)
    else:
        update_doc(args.doc, generated)
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
