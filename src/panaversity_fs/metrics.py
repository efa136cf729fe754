"""Prometheus metrics of one server, on a private registry (never the global one).

Label values are bounded enums (status, mode, tool, code, source): never a user id or a path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every series the server exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.write_total = Counter(
            "panaversityfs_write_total",
            "Content writes by outcome and mode.",
            ["status", "mode"],
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
            "Audit entries appended, by status.",
            ["status"],
            registry=r,
        )
        self.audit_queue = Gauge(
            "panaversityfs_audit_queue_entries", "Read audit entries waiting for a batch.", registry=r
        )

    def render(self) -> bytes:
        """Return the registry in the Prometheus text format."""
        return generate_latest(self.registry)
