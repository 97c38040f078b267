"""How every bench runs: the event loop, CPU pinning, dev tokens, alternating rounds.

The pattern (tests.bench, tests.bench.fanout, tests.bench.projects): the server under
test in its own process pinned to CPU 0 (`tests.bench.server.bench_server`), this process
(the load generator) pinned to CPU 1, and the scenarios run in alternation, round by round
(a, b, a, b, ...), so drift on the machine hits each of them alike; a ratio is only ever
taken against a baseline measured in the same run (`figures.ratio`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

TOKEN_TTL = 24 * 3600


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when installed (what the servers run on too), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def event_loop() -> asyncio.Runner:
    """One loop for several runs: `with event_loop() as loop: loop.run(...)`."""
    return asyncio.Runner(loop_factory=loop_factory())


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """One coroutine on a fresh loop."""
    with event_loop() as loop:
        return loop.run(coroutine)


def pinning(no_pin: bool) -> bool:
    """Whether to pin: asked for (not `--no-pin`) and at least two CPUs."""
    return not no_pin and (os.cpu_count() or 1) >= 2


def pin_self(cpu: int) -> None:
    """Pin this process (and the children it starts afterwards) to `cpu`."""
    os.sched_setaffinity(0, {cpu})


def pin_process(pid: int, cpu: int) -> None:
    """Pin every thread of process `pid` to `cpu` (a server started by another launcher,
    e.g. `realtime serve`: affinity is per thread, and its threads exist already)."""
    for thread in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(thread), {cpu})


def pick(value: str, known: Iterable[str], what: str = "scenarios") -> list[str]:
    """The comma-separated names of `value`, in order; ValueError naming the unknown."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    known = list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown {what}: {unknown}; known: {', '.join(known)}")
    return names


def dev_tokens(
    key_file: str, users: Mapping[str, Sequence[str]], tenant: str = "bench"
) -> dict[str, str]:
    """A token for each user (subject -> roles) from the development issuer whose key is
    `key_file` (created if missing; the servers are given the same file)."""
    from realtime.auth.dev import DevIssuer

    issuer = DevIssuer.load_or_create(key_file, audience="realtime", client_id="realtime")
    return {
        subject: issuer.mint(subject, list(roles), tenant=tenant, ttl=TOKEN_TTL)
        for subject, roles in users.items()
    }


def alternate(
    rounds: int,
    names: Sequence[str],
    run_one: Callable[[str, int], R],
    table: Callable[[list[R]], str],
    after: Callable[[], object] | None = None,
) -> list[R]:
    """Round 1: every name in order, round 2: again, ...; `run_one(name, round)` is one
    measured run. Each result is printed as it comes, as the last row of `table([it])`
    (the whole table when its header is new). `after()` runs after each run (a pause for
    the server to close the last run's sockets)."""
    results: list[R] = []
    header = None
    for round_ in range(1, rounds + 1):
        for name in names:
            result = run_one(name, round_)
            results.append(result)
            lines = table([result]).splitlines()
            print("\n".join(lines if lines[0] != header else lines[-1:]), flush=True)
            header = lines[0]
            if after is not None:
                after()
    return results


def write_json(path: Path | None, document: Mapping[str, Any]) -> None:
    """`--json FILE`: every figure, the machine and the arguments (nothing without FILE)."""
    if path is not None:
        path.write_text(json.dumps(document, indent=2, default=str))
