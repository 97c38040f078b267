"""The peers of tests.bench.compare that tests/bench had no server for yet, each doing
only what its stack's users would write (an echo handler, a broadcast to every
subscriber), nothing tuned:

- `asgi`: a bare ASGI callable, no framework: raw `websocket.receive` / `websocket.send`
  messages on the same uvicorn command as the others (tests/bench/server.py);
- `picows_server`: a picows server (Cython, a callback per frame, no ASGI): the
  practical limit of a Python WebSocket server, its own process and event loop.

Both answer `GET /health`, echo on `/echo/` with the envelope tests.bench.bare answers,
and fan out on `/ws/` in the JSON of tests/bench/fanout/apps.py's bare loop (`?pub=1`:
the publisher). The other peers (bare Starlette, python-socketio, Django Channels) are
tests/bench/bare.py and tests/bench/fanout/apps.py.
"""
