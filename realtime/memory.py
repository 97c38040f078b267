"""Giving memory back once a crowd of sockets has left.

What a socket allocated (its frames, buffers, tasks) is freed when it closes, but glibc's
malloc keeps freed memory in its heaps for reuse: after thousands of sockets left, the
process's RSS stays near its high-water mark (the soak benchmark measured it; a
`malloc_trim(0)` gave back about a third of what the crowd had added). So, when the
number of open sockets has fallen to half of its peak or less, by at least `min_drop`
sockets, and is still that low `delay` seconds later (not a reconnect storm, whose crowd
is back by then), the collector runs once (cycles that still hold a closed socket) and
then `malloc_trim(0)` returns the free pages to the system. Where the C library has no
`malloc_trim` (musl, macOS) only the collection runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

logger = logging.getLogger("realtime.memory")

MIN_DROP = 256  # sockets: below this, what they held is not worth a trim


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class Trimmer:
    """Watches the number of open sockets (`observe`, from the process's sweeper) and
    gives memory back once after each crowd has left. The trim waits `delay` seconds
    after the drop: a closed socket's transport is released up to the close timeout
    later (realtime.socket.connection's reset), and a trim before that returns little."""

    def __init__(self, delay: float = 0.0, min_drop: int = MIN_DROP) -> None:
        self._delay = delay
        self._min_drop = min_drop
        self._peak = 0
        self._due: float | None = None
        self._before = 0  # the peak before the drop that made the trim due
        self._trim = malloc_trim()
        self.trims = 0

    def observe(self, open_sockets: int, now: float) -> bool:
        """True if this call gave memory back."""
        if self._due is not None and now >= self._due:
            self._due = None
            if open_sockets <= self._before // 2:
                self.give_back()
                return True
            # they came back (a reconnect storm): what they hold is in use again, and a
            # trim's full collection would stall the loop while it is busiest
            logger.info("%d sockets are back: no memory given back", open_sockets)
        if open_sockets > self._peak:
            self._peak = open_sockets
            return False
        left = self._peak - open_sockets
        if left >= self._min_drop and open_sockets <= self._peak // 2:
            if self._due is None:
                self._before = self._peak
                self._due = now + self._delay
                logger.info("%d sockets left: memory is given back in %.0f s", left, self._delay)
            self._peak = open_sockets
        return False

    def give_back(self) -> None:
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        self.trims += 1
