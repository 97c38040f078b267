"""`/ws/jobs/{job_id}`, the compatibility stream of one job: it authenticates as `/ws`,
ignores what the client sends, writes the data of each `job.progress` as a plain JSON
object (history first), then closes with 1000 at `job.done`. A job the caller may not
see is closed 1008 `job not found`, exactly as one that does not exist.

The plain objects are the bytes the run published, not re-encoded: the socket writes
the `Event.data` its frame carries (see `_PlainProgress`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from realtime.auth.principal import Principal
from realtime.bus import Event, Offset
from realtime.exceptions import NormalClosure, PolicyViolation
from realtime.jobs.steps import DONE, PROGRESS, StepJobs, job_topic
from realtime.socket.connection import Connection
from realtime.socket.frames import ignore_frame

PATH = "/ws/jobs/{job_id}"
_PROGRESS, _DONE = PROGRESS.encode(), DONE.encode()


class _PlainProgress:
    """The hub subscriber behind one compatibility stream."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.id = connection.id  # dropped with its socket
        self.principal: Principal | None = connection.principal

    def enqueue(self, message: bytes, direct: bool = True, replay: bool = False) -> None:
        # the hub's event frames carry their event (realtime.bus.hub.EventFrame); its
        # other frames (subscription.recovered) mean nothing here
        event: Event | None = getattr(message, "event", None)
        if event is not None:
            self.on_event(event.name, event.data, replay=replay)

    def on_event(self, name: bytes, data: bytes, replay: bool) -> None:
        if name == _PROGRESS:
            self.connection.enqueue(data, replay=replay)
        elif name == _DONE:
            self.connection.close(NormalClosure("job finished"))


def _opener(jobs: StepJobs, job_id: str) -> Callable[[Connection], Awaitable[None]]:
    async def on_open(connection: Connection) -> None:
        services, principal = connection.services, connection.principal
        assert principal is not None  # on_open runs once the socket is authenticated
        see_all = services.dispatcher.granted(jobs.see_all, principal.roles)
        if await jobs.find(services.database, principal, job_id, see_all=see_all) is None:
            raise PolicyViolation("job not found")
        subscriber = _PlainProgress(connection)
        _, go_live, _ = await services.hub.subscribe(subscriber, job_topic(job_id), Offset.start())
        go_live()

    return on_open


def job_stream(jobs: StepJobs, path: str = PATH) -> WebSocketRoute:
    """The route of the compatibility stream over `jobs`' records (a handler module's
    ROUTES)."""

    async def endpoint(websocket: WebSocket) -> None:
        opener = _opener(jobs, websocket.path_params["job_id"])
        await Connection(websocket, websocket.app.state.services, ignore_frame, opener).run()

    return WebSocketRoute(path, endpoint)
