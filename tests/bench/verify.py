"""Token verification per socket: a fresh token each time against one token reused by
many sockets (tabs, a reconnect storm), with the cache on and off.

    python -m tests.bench.verify [N]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from realtime.auth.dev import DEV_ISSUER, DevIssuer
from realtime.auth.verifier import TokenVerifier


def _verifier(issuer: DevIssuer, cache_size: int) -> TokenVerifier:
    return TokenVerifier(
        issuer,
        issuer=DEV_ISSUER,
        audience="realtime",
        audience_in_azp=True,
        algorithms=("RS256",),
        leeway=0,
        client_id="realtime",
        tenant_claim="tenant_id",
        cache_size=cache_size,
    )


async def _per_call(check: TokenVerifier, tokens: list[str]) -> float:
    started = time.perf_counter()
    for token in tokens:
        await check.verify(token)
    return (time.perf_counter() - started) / len(tokens) * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory() as tmp:
        issuer = DevIssuer.load_or_create(
            str(Path(tmp) / "key.json"), audience="realtime", client_id="realtime"
        )
        fresh = [issuer.mint(f"u{i}", ["user"]) for i in range(n)]
        same = [fresh[0]] * n
        for label, size in (("cache off", 0), ("cache on", 10_000)):
            fresh_us = asyncio.run(_per_call(_verifier(issuer, size), fresh))
            same_us = asyncio.run(_per_call(_verifier(issuer, size), same))
            print(
                f"{label:>9}: fresh tokens {fresh_us:7.1f} us/verify, one token reused {same_us:7.1f} us/verify"
            )


if __name__ == "__main__":
    main()
