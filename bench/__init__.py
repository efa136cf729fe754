"""Benchmarks of PanaversityFS (run `uv run python -m bench.bench_core`)."""
