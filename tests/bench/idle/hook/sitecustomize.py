"""Loaded by the profiled server of `python -m tests.bench.idle --profile` (its directory is
put first on PYTHONPATH; Python imports `sitecustomize` at start-up): on SIGUSR1 the
process writes what it holds to `$BENCH_IDLE_DUMP/<n>.pickle` (n = 0, 1, ...): a
tracemalloc snapshot and the count of live objects by type, from the garbage collector, and the names of the modules loaded.
Tracing starts at the first dump (`$BENCH_IDLE_FRAMES` frames deep): what the process
allocated before is not traced (only what comes after the first dump is compared), and
the start-up does not run traced (several times slower). Nothing in realtime is patched: the handler runs
between two bytecodes of the main thread, as any Python signal handler does.
"""

from __future__ import annotations

import os
import signal
import sys

DUMP = os.environ.get("BENCH_IDLE_DUMP")


def _dump(*_: object) -> None:
    import collections
    import gc
    import pickle
    import tracemalloc

    assert DUMP is not None
    gc.collect()
    counts = collections.Counter(type(obj).__qualname__ for obj in gc.get_objects())
    frames = collections.Counter(
        f"{obj.cr_code.co_qualname}"
        for obj in gc.get_objects()
        if type(obj).__name__ == "coroutine"
    )
    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ.get("BENCH_IDLE_FRAMES", "12")))
    snapshot = tracemalloc.take_snapshot()
    n = len([name for name in os.listdir(DUMP) if name.endswith(".pickle")])
    partial = os.path.join(DUMP, f"{n}.partial")
    with open(partial, "wb") as out:
        modules = sorted(sys.modules)
        dumped = {"types": counts, "coroutines": frames, "snapshot": snapshot, "modules": modules}
        pickle.dump(dumped, out)
    os.rename(partial, os.path.join(DUMP, f"{n}.pickle"))


if DUMP:
    signal.signal(signal.SIGUSR1, _dump)
