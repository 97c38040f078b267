"""Benchmarks (not tests): `python -m tests.bench --help`. See docs/benchmarks.md."""
