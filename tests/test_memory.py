"""realtime.memory: memory is given back once after a crowd of sockets has left."""

from __future__ import annotations

import ctypes.util

from realtime.memory import Trimmer, malloc_trim


def test_a_crowd_that_left_is_given_back_once_after_the_delay() -> None:
    trimmer = Trimmer(delay=5, min_drop=100)
    for sockets in range(0, 1001, 50):  # a crowd arrives
        assert not trimmer.observe(sockets, now=0)
    assert not trimmer.observe(600, now=1)  # 400 left: not yet half of the peak
    assert not trimmer.observe(400, now=2)  # 600 left, at most half remain: due at 7
    assert not trimmer.observe(100, now=6.9)
    assert trimmer.observe(100, now=7)  # given back
    assert trimmer.trims == 1
    assert not trimmer.observe(90, now=20)  # the peak is now 400: a few more is nothing
    assert trimmer.trims == 1


def test_a_crowd_that_comes_back_within_the_delay_is_not_trimmed() -> None:
    """A reconnect storm: every socket dropped at once and reconnecting. A trim then
    would stall the loop with a full collection while the crowd is back."""
    trimmer = Trimmer(delay=5, min_drop=100)
    trimmer.observe(1000, now=0)
    assert not trimmer.observe(0, now=1)  # all gone: due at 6
    assert not trimmer.observe(700, now=3)  # coming back
    assert not trimmer.observe(1000, now=6)  # back at the due time: no trim
    assert trimmer.trims == 0
    assert not trimmer.observe(100, now=7)  # a later departure is due again, at 12
    assert trimmer.observe(100, now=12)
    assert trimmer.trims == 1


def test_a_small_crowd_is_not_worth_a_trim() -> None:
    trimmer = Trimmer(min_drop=100)
    trimmer.observe(150, now=0)
    assert not trimmer.observe(60, now=1)  # 90 left: below min_drop
    assert not trimmer.observe(0, now=2)  # 150 left, none remain: due now
    assert trimmer.observe(0, now=2)
    assert trimmer.trims == 1


def test_glibc_malloc_trim_is_found() -> None:
    assert "libc.so" in (ctypes.util.find_library("c") or "")  # this machine's glibc
    trim = malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)  # 1: memory was released, 0: there was none to release
