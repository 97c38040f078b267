"""`/ws/jobs/{job_id}`, the compatibility stream of one job: it authenticates as `/ws`,
ignores what the client sends, writes the data of each `job.progress` as a plain JSON
object (history first), then closes with 1000 at `job.done`. A job the caller may not
see is closed 1008 `job not found`, exactly as one that does not exist.

The plain objects are the bytes the run published, not re-encoded: the socket writes
`Event.data` itself (see `_PlainProgress`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from realtime.auth.principal import Principal
from realtime.bus import Offset
from realtime.exceptions import NormalClosure, PolicyViolation
from realtime.jobs.steps import DONE, PROGRESS, StepJobs, job_topic
from realtime.socket.connection import Connection

PATH = "/ws/jobs/{job_id}"
_PROGRESS, _DONE = PROGRESS.encode(), DONE.encode()

# The hub hands a subscriber whole message frames (realtime.bus.hub.message_frame):
# `{"event":"<name>","topic":<json>,"offset":"<epoch>:<seq>","data":<event data>}`. Until
# it can hand over the event itself, the name and the data are cut out of that template
# (tests/test_job_steps.py pins the cut to message_frame): no JSON is parsed or re-made.
_HEAD = b'{"event":"'
_DATA_MARK = b',"data":'  # outside strings only: inside one, every quote is escaped


def event_of(frame: bytes) -> tuple[bytes, bytes] | None:
    """(event name, event data) of a hub event frame (the hub's `subscription.recovered`
    notices too, which this stream does not forward); None for a frame of another shape."""
    if not frame.startswith(_HEAD):
        return None
    name_end = frame.find(b'"', len(_HEAD))
    data_at = frame.find(_DATA_MARK, name_end)
    if name_end < 0 or data_at < 0:
        return None
    return frame[len(_HEAD) : name_end], frame[data_at + len(_DATA_MARK) : -1]


class _PlainProgress:
    """The hub subscriber behind one compatibility stream."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.id = connection.id  # dropped with its socket
        self.principal: Principal | None = connection.principal

    def enqueue(self, message: bytes, direct: bool = True, replay: bool = False) -> None:
        event = event_of(message)
        if event is not None:
            self.on_event(*event, replay=replay)

    def on_event(self, name: bytes, data: bytes, replay: bool) -> None:
        if name == _PROGRESS:
            self.connection.enqueue(data, replay=replay)
        elif name == _DONE:
            self.connection.close(NormalClosure("job finished"))


def _ignore(connection: Connection, text: str) -> None:
    """What the client sends on a compatibility stream means nothing."""


def _opener(jobs: StepJobs, job_id: str) -> Callable[[Connection], Awaitable[None]]:
    async def on_open(connection: Connection) -> None:
        services, principal = connection.services, connection.principal
        assert principal is not None  # on_open runs once the socket is authenticated
        see_all = services.dispatcher.granted(jobs.see_all, principal.roles)
        if await jobs.find(services.database, principal, job_id, see_all=see_all) is None:
            raise PolicyViolation("job not found")
        subscriber = _PlainProgress(connection)
        _, go_live = await services.hub.subscribe(subscriber, job_topic(job_id), Offset.start())
        go_live()

    return on_open


def job_stream(jobs: StepJobs, path: str = PATH) -> WebSocketRoute:
    """The route of the compatibility stream over `jobs`' records (a handler module's
    ROUTES)."""

    async def endpoint(websocket: WebSocket) -> None:
        opener = _opener(jobs, websocket.path_params["job_id"])
        await Connection(websocket, websocket.app.state.services, _ignore, opener).run()

    return WebSocketRoute(path, endpoint)
