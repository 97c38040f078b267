"""The scope of one job delivery on a worker, and a task's request to be delivered again.

Apart from the Redis broker (realtime.jobs.broker) so that the run machinery, which every
app imports, does not load redis on the embedded default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

# Set by the worker around each delivery; a task that met an outage asks (run_again) for
# its message not to be acknowledged, since taskiq acknowledges whatever the outcome.
_RUN_AGAIN: ContextVar[list[bool] | None] = ContextVar("realtime_run_again", default=None)


def run_again() -> bool:
    """Ask that the job being run be delivered again later (after the claim timeout)
    instead of acknowledged; False where nothing can redeliver it (in-process broker)."""
    asked = _RUN_AGAIN.get()
    if asked is None:
        return False
    asked[0] = True
    return True


@contextlib.contextmanager
def delivery() -> Iterator[None]:
    """The scope of one delivery, in which `run_again` applies to it."""
    token = _RUN_AGAIN.set([False])
    try:
        yield
    finally:
        _RUN_AGAIN.reset(token)


def asked_again() -> bool:
    """Whether the task of the current delivery asked to be delivered again."""
    asked = _RUN_AGAIN.get()
    return asked is not None and asked[0]
