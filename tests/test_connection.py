"""`_finish`: a send that could not complete at once (the transport was paused) is driven
to its end by a task, exactly as if a task had run it from the start."""

from __future__ import annotations

import asyncio

import pytest

from realtime.connection import _finish

pytestmark = pytest.mark.anyio


async def test_a_held_send_completes_when_the_transport_resumes() -> None:
    writable = asyncio.Event()
    written: list[str] = []

    async def send() -> None:  # uvicorn's send, reduced: wait until writable, then write
        await writable.wait()
        written.append("frame")

    held = send()
    blocked = held.send(None)  # what Connection._send_now does: run it up to its first wait
    task = asyncio.ensure_future(_finish(held, blocked))
    await asyncio.sleep(0.01)
    assert not task.done() and written == []
    writable.set()
    await asyncio.wait_for(task, 1)
    assert written == ["frame"]


async def test_a_held_send_is_cancelled_by_the_send_deadline() -> None:
    unwound: list[bool] = []

    async def send() -> None:
        try:
            await asyncio.Event().wait()  # the peer never reads again
        finally:
            unwound.append(True)

    held = send()
    task = asyncio.ensure_future(_finish(held, held.send(None)))
    await asyncio.sleep(0.01)
    task.cancel()  # what the sweeper does after send_timeout
    with pytest.raises(asyncio.CancelledError):
        await task
    assert unwound == [True]
