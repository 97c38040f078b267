"""Fan-out benchmark (not tests): `python -m tests.bench.fanout --help`.

See docs/bench-fanout.md. The modules:

- `apps`: the servers measured, as uvicorn factories: realtime (in-process or Redis bus),
  a python-socketio app (emit to a room) and a Django Channels app (group_send on the
  in-memory layer), each answering `/health` for the runner;
- `clients`: picows subscribers and publishers speaking each server's wire protocol;
- `runs`: one measured run (closed-loop fan-out, or paced cross-node latency);
- `__main__`: starts the servers, alternates the runs, prints the tables.
"""
