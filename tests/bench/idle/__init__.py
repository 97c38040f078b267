"""Idle memory (issue 15): what an idle authenticated socket costs the server, and the
server's RSS before any socket, measured beside a bare Starlette endpoint in one run.

    python -m tests.bench.idle [--sockets 20000] [--systems realtime,bare] [--rounds 1]
    python -m tests.bench.idle --profile 1000

- `realtime`: `realtime serve` on the embedded default (SQLite, in-process bus and broker,
  the development issuer), its own process, as a user starts it (tests.nodes.node);
- `bare`: tests.bench.bare on the same uvicorn (uvloop, httptools, the websockets-sansio
  protocol, `--ws-max-size 65536`), same allocator (`PYTHONMALLOC=malloc`, what
  `realtime serve` chooses), its own process (tests.bench.server).

For each: the server's RSS once it has started, then `--sockets` sockets opened by
`--clients` processes (tests.bench.idle.client), each authenticated (a dev token in the
upgrade request), answered once (an `echo`) and then idle; after `--settle` seconds the
RSS again. Printed: KiB per socket ((after - before) / sockets), the RSS before any
socket, and both as ratios realtime / bare. The descriptor limit of this process and of
the servers is raised to its hard limit; more sockets than that leaves room for are
not opened (the number measured is printed). `--profile N`: `realtime` only, with
tracemalloc, what N sockets added, by traceback, and the objects per socket by type
(tests/bench/idle/hook). Nothing here asserts anything.
"""
