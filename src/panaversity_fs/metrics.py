"""Prometheus metrics of one server, on a private registry (never the global one).

Label values are bounded enums (status, mode, tool, code, source, scope, kind) or the id of a
book that exists (`Metrics.book`): never a user id or a path, and never a value a caller made
up, so no caller can grow the number of series. A book exists for the metrics once it has a
shared (base) file; a book that lives only in someone's overlay is personal and is counted
under `other`.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

OTHER_BOOK = "other"
"""The label of every book id that is not a known book (made up, mistyped, overlay-only)."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every series the server exports."""

    def __init__(self) -> None:
        self._books: set[str] = set()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.write_total = Counter(
            "panaversityfs_write_total",
            "Writes (content and assets) by book, outcome (`success` or the lower-case error code, "
            "e.g. `conflict`, `schema_violation`) and mode (`create`, `update`, `unknown`).",
            ["book_id", "status", "mode"],
            registry=r,
        )
        self.write_duration = Histogram(
            "panaversityfs_write_duration_seconds",
            "Write latency by phase (storage = staging upload, journal = commit, total).",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.read_total = Counter(
            "panaversityfs_read_total",
            "Content reads by outcome and the layer that served them.",
            ["status", "source"],
            registry=r,
        )
        self.delete_total = Counter(
            "panaversityfs_delete_total", "Content deletes by outcome.", ["status"], registry=r
        )
        self.overlay_latency = Histogram(
            "panaversityfs_overlay_latency_seconds",
            "Latency of reads that resolved a user overlay.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors_total = Counter(
            "panaversityfs_errors_total", "Tool errors by tool and code.", ["tool", "code"], registry=r
        )
        self.tool_duration = Histogram(
            "panaversityfs_tool_duration_seconds",
            "Tool call latency.",
            ["tool"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.route_duration = Histogram(
            "panaversityfs_route_duration_seconds",
            "Latency of the HTTP routes besides /mcp until their answer starts (downloads stream on).",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.route_total = Counter(
            "panaversityfs_route_requests_total",
            "Requests to the HTTP routes besides /mcp, by route and HTTP status.",
            ["route", "status"],
            registry=r,
        )
        self.limited_total = Counter(
            "panaversityfs_limited_total",
            "Tool calls refused by a limit: `rate` (an agent over its budget) or `overload` (shed).",
            ["limit"],
            registry=r,
        )
        self.calls_running = Gauge("panaversityfs_calls_running", "Tool calls running now.", registry=r)
        self.calls_waiting = Gauge(
            "panaversityfs_calls_waiting", "Tool calls waiting for a slot now.", registry=r
        )
        self.replays = Counter(
            "panaversityfs_idempotent_replays_total",
            "Mutations answered from an idempotency key's stored outcome (nothing changed), by tool.",
            ["tool"],
            registry=r,
        )
        self.storage_rollback_total = Counter(
            "panaversityfs_storage_rollback_total",
            "Staged uploads discarded because their journal commit did not happen.",
            registry=r,
        )
        self.recovery_total = Counter(
            "panaversityfs_recovery_total",
            "Recovery actions: leftover publishes finished, orphan staged objects removed.",
            ["action"],
            registry=r,
        )
        self.journal_storage_mismatch_total = Counter(
            "panaversityfs_journal_storage_mismatch_total",
            "Reads that found stored bytes not matching the journal after retries.",
            registry=r,
        )
        self.audit_entries_total = Counter(
            "panaversityfs_audit_entries_total",
            "Audit entries committed to the log, by status (success, refused, error).",
            ["status"],
            registry=r,
        )
        self.audit_dropped = Counter(
            "panaversityfs_audit_dropped_total",
            "Batched audit entries (reads, limit refusals) dropped because the queue was full.",
            registry=r,
        )
        self.storage_calls = Counter(
            "panaversityfs_storage_calls_total",
            "Storage calls by outcome (`ok`, `error`), for the storage success rate.",
            ["status"],
            registry=r,
        )
        self.audit_queue = Gauge(
            "panaversityfs_audit_queue_entries", "Read audit entries waiting for a batch.", registry=r
        )

        self.audit_chain_valid = Gauge(
            "panaversityfs_audit_chain_valid",
            "1 when the last audit check verified the chain and its checkpoints, 0 when it failed "
            "(NaN until the first check).",
            registry=r,
        )
        self.audit_chain_valid.set(float("nan"))
        self.audit_checkpoint_seq = Gauge(
            "panaversityfs_audit_checkpoint_seq", "Chain position of the last checkpoint written.", registry=r
        )

        self.fsck_problems = Gauge(
            "panaversityfs_fsck_problems",
            "Journal/storage disagreements found by the last periodic check, by kind.",
            ["kind"],
            registry=r,
        )
        self.fsck_last_run = Gauge(
            "panaversityfs_fsck_last_run_timestamp_seconds",
            "When the last periodic consistency check finished (unix time).",
            registry=r,
        )
        self.fsck_duration = Gauge(
            "panaversityfs_fsck_duration_seconds",
            "How long the last periodic consistency check took.",
            registry=r,
        )

        self.archive_total = Counter(
            "panaversityfs_archive_total",
            "Archive downloads by book, scope and outcome (complete, partial, aborted, refused).",
            ["book_id", "scope", "status"],
            registry=r,
        )
        self.archive_duration = Histogram(
            "panaversityfs_archive_duration_seconds",
            "Time to stream one archive.",
            ["scope"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
            registry=r,
        )
        self.archive_memory = Gauge(
            "panaversityfs_archive_memory_bytes",
            "Bytes archive downloads hold between storage and the ZIP writer, all archives together.",
            registry=r,
        )

        self.journal_entries = Gauge(
            "panaversityfs_journal_entries_total",
            "Live files (journal rows that are not tombstones) per book, base and overlays together; "
            "books without shared files are summed under `other`.",
            ["book_id"],
            registry=r,
        )
        self.delta_files = Histogram(
            "panaversityfs_delta_files_count",
            "Files one delta_build page or plan_build diff reported, per book.",
            ["book_id"],
            buckets=(0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000),
            registry=r,
        )
        self.storage_errors = Counter(
            "panaversityfs_storage_errors_total",
            "Failed or timed-out storage calls, by error kind.",
            ["kind"],
            registry=r,
        )
        self.database_errors = Counter(
            "panaversityfs_database_errors_total",
            "Failed database statements or connections, by error kind.",
            ["kind"],
            registry=r,
        )

    def render(self) -> bytes:
        """Return the registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def count_write(self, book_id: object, status: str, mode: str = "unknown") -> None:
        """Count one write outcome (`status`: `success` or an error code)."""
        self.write_total.labels(self.book(book_id), status.lower(), mode).inc()

    def book(self, book_id: object) -> str:
        """`book_id` as a label value if it names a known book, else `other`."""
        return book_id if isinstance(book_id, str) and book_id in self._books else OTHER_BOOK

    def know_books(self, book_ids: Iterable[str]) -> None:
        """Add books that have shared files (from the journal, or a write that just created one)."""
        self._books.update(book_ids)
