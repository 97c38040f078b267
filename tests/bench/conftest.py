"""tests/bench holds benchmarks, not tests: pytest collects nothing here."""

collect_ignore_glob = ["*"]
