"""A plain-text summary of what py-spy recorded (tests.bench.common.pyspy.PySpy writes
the collapsed stacks): shares of the samples per function, self and inclusive."""

from __future__ import annotations

import collections
from pathlib import Path


def profile_summary(collapsed: Path, top: int = 40) -> str:
    """Self and inclusive shares of samples per function, from py-spy's collapsed stacks.

    Functions are named `name (package/module.py)`; frames present in every sample (the
    interpreter, uvicorn's runner) are left out of the inclusive list."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [_function(frame) for frame in stack.split(";")]
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples

    def share(samples: int) -> str:
        return f"{100 * samples / max(total, 1):5.1f}%"

    lines = [f"{total} samples", "self:"]
    lines += [f"{share(n)}  {name}" for name, n in own.most_common(top // 2)]
    lines.append("inclusive:")
    common = [(name, n) for name, n in inclusive.most_common() if n < total]
    lines += [f"{share(n)}  {name}" for name, n in common[:top]]
    return "\n".join(lines)


def _function(frame: str) -> str:
    """`name (path/to/pkg/module.py:12)` -> `name (pkg/module.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    return f"{name} ({'/'.join(Path(path).parts[-2:])})"
