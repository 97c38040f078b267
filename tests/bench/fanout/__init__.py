"""Fan-out benchmark (not tests): `python -m tests.bench.fanout --help`.

See docs/bench-fanout.md. The modules:

- `apps`: the servers measured, as uvicorn factories: realtime (in-process or Redis bus),
  a python-socketio app (emit to a room), a Django Channels app (group_send on the
  in-memory layer) and the bare Starlette ceiling, each answering `/health`;
- `clients`: picows subscribers and publishers speaking each server's wire protocol;
- `runs`: one measured run (closed-loop fan-out, or paced cross-node latency);
- `diagnostics`: `--patch`, patches of realtime in the bench server only, each target
  checked when the server starts (a renamed one stops it, naming it);
- `__main__`: starts the servers, alternates the runs, prints the tables.
"""
