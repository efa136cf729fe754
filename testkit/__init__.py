"""Support shared by the test suite and the benchmarks: server processes, scratch books and
audit chains, CPU and memory sampling, and the load generator. `tests/` and `bench/` both import
this package and never each other (tests/unit/test_layers.py checks it)."""
