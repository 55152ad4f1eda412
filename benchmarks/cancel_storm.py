"""How many cancelled calls a connection survives: cancel calls on the wire (by cancel scope,
by timeout, and by asyncio.wait_for) on the main socket and on lanes, under asyncio and trio,
against a private libvirtd; after each storm every socket must still answer a full load of
calls within 5 s.  Prints the counts and the rate.

    .venv/bin/python benchmarks/cancel_storm.py [--calls 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import anyio
import anyio.lowlevel

import aiovirt
from aiovirt.testing.daemon import PrivateDaemon
from aiovirt.protocol import remote

LIBVER = remote.PROCEDURES[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION]


async def cancel_batch(conn: aiovirt.Connection, lane: bool, how: str) -> int:
    """Five calls cancelled; returns how many were on the wire, unanswered, at that moment."""
    scopes = [anyio.CancelScope() for _ in range(5)]

    async def one(scope: anyio.CancelScope) -> None:
        with scope:
            if how == "wait_for":
                try:
                    await asyncio.wait_for(conn.call(LIBVER, lane=lane), 0.0001)
                except TimeoutError:
                    pass
            elif how == "timeout":
                with anyio.move_on_after(0.0001):
                    await conn.call(LIBVER, lane=lane)
            else:
                await conn.call(LIBVER, lane=lane)

    async with anyio.create_task_group() as group:
        for scope in scopes:
            group.start_soon(one, scope)
        await anyio.lowlevel.checkpoint()
        on_wire = sum(c.in_flight for c in conn.channels)
        if how == "scope":
            for scope in scopes:
                scope.cancel()
    return on_wire


async def storm(uri: str, calls: int, how: str, backend: str) -> str:
    async with aiovirt.connect(uri, lanes=2) as conn:
        await conn.call(LIBVER, lane=True)
        on_wire = 0
        start = time.perf_counter()
        for i in range(calls // 5):
            on_wire += await cancel_batch(conn, lane=bool(i % 2), how=how)
        elapsed = time.perf_counter() - start
        with anyio.fail_after(5):
            for channel in conn.channels:
                async with anyio.create_task_group() as group:
                    for _ in range(channel.max_in_flight * 4):
                        group.start_soon(channel.call, LIBVER)
        return (f"{backend:7} {how:8}: {calls} cancelled ({on_wire} caught on the wire) in "
                f"{elapsed:.1f} s ({calls / elapsed:,.0f}/s) on {len(conn.channels)} sockets; "
                "every socket answered afterwards")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    with PrivateDaemon(tempfile.mkdtemp(prefix="aiovirt-storm-")) as daemon:
        for backend in ("asyncio", "trio"):
            for how in ("scope", "timeout") + (("wait_for",) if backend == "asyncio" else ()):
                print(anyio.run(storm, daemon.uri(), args.calls, how, backend,
                                backend=backend), flush=True)


if __name__ == "__main__":
    main()
