"""Benchmark of `projects.list` on PostgreSQL against a FastAPI + SQLModel baseline.

`python -m tests.bench.projects --help`; see docs/bench-projects.md.
"""
