"""Cancellation storms on a real daemon: calls cancelled while on the wire (by scope and by
timeout, on the main socket and on lanes, asyncio and trio, UNIX and TCP) never cost a slot;
every socket answers afterwards.  Before the fix five such cancellations jammed a socket."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

import aiovirt
from aiovirt.protocol import remote

LIBVER = remote.PROCEDURES[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION]
STORM = 200          # cancelled calls per socket; the old code died after 5


async def storm(conn: aiovirt.Connection, *, lane: bool | None, by: str) -> int:
    """Cancel STORM calls; returns how many were on the wire, unanswered, when their caller
    gave up (their replies arrive late and must free the slot they hold)."""
    on_the_wire = 0
    for _ in range(STORM // 5):
        async with anyio.create_task_group() as group:
            if by == "scope":
                # The five calls run and are written in one pass of the loop; the scope is
                # cancelled in the next, before any reply can have been read.
                scopes = [anyio.CancelScope() for _ in range(5)]
                for scope in scopes:
                    group.start_soon(cancellable_call, conn, lane, scope)
                await anyio.lowlevel.checkpoint()
                for scope in scopes:
                    scope.cancel()
                on_the_wire += sum(c.in_flight for c in conn.channels)
            else:
                for _ in range(5):
                    group.start_soon(call_with_timeout, conn, lane)
    return on_the_wire


async def cancellable_call(conn: aiovirt.Connection, lane: bool | None,
                           scope: anyio.CancelScope) -> None:
    with scope:
        await conn.call(LIBVER, lane=lane)


async def call_with_timeout(conn: aiovirt.Connection, lane: bool | None) -> None:
    with anyio.move_on_after(0.0002):
        await conn.call(LIBVER, lane=lane)


async def every_socket_answers(conn: aiovirt.Connection) -> None:
    """Calls on each open socket, more than its slots, all return promptly."""
    with anyio.fail_after(10):
        for channel in conn.channels:
            async with anyio.create_task_group() as group:
                for _ in range(channel.max_in_flight * 3):
                    async def one(channel=channel) -> None:
                        ret = await channel.call(LIBVER)
                        assert ret.lib_ver == 9000000
                    group.start_soon(one)
            # a cancelled call of the storm keeps its slot until its late reply is read, and
            # libvirtd's workers may answer it after these: the load drains, it never sticks
            while channel.load:
                await anyio.sleep(0.005)


async def run_storm(uri: str, lanes: int, by: str) -> int:
    async with aiovirt.connect(uri, lanes=lanes) as conn:
        hit = await storm(conn, lane=False, by=by)
        if lanes:
            await conn.call(LIBVER, lane=True)   # open a lane, then storm it
            hit += await storm(conn, lane=True, by=by)
            assert len(conn.channels) >= 2
        await every_socket_answers(conn)
        with anyio.fail_after(5):
            assert await conn.get_lib_version() == 9000000
        return hit


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("lanes", [0, 2])
@pytest.mark.parametrize("by", ["scope", "timeout"])
def test_cancelled_calls_never_jam_a_socket(daemon, backend, transport, lanes, by):
    hit = anyio.run(run_storm, daemon.uri(transport=transport), lanes, by, backend=backend)
    if by == "scope":
        # the storm really hit calls on the wire (else it would prove nothing)
        assert hit > 0


async def test_asyncio_wait_for_timeouts_leave_the_connection_usable(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        for _ in range(100):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.rpc.connect_get_lib_version(), 0)
            try:
                await asyncio.wait_for(conn.rpc.connect_get_lib_version(), 0.0001)
            except TimeoutError:
                pass
        with anyio.fail_after(5):
            assert (await conn.rpc.connect_get_lib_version()).lib_ver == 9000000
            # abandoned calls keep their slots until their late replies are read, and the
            # daemon's workers may answer them after a later call: every slot comes back
            # within a few more round trips (a leaked one fails the time limit above)
            while conn.channels[0].load:
                await conn.rpc.connect_get_lib_version()


async def test_queued_calls_cancelled_are_never_sent(daemon):
    """Calls waiting for a slot and then cancelled leave no trace on the wire.  No writing
    ahead (``pipeline_depth=1``): the calls really queue, and the last call goes out only
    after every abandoned one is answered (written ahead, the daemon's workers could answer
    it first and leave a late reply still counted)."""
    async with aiovirt.connect(daemon.uri(), lanes=0, max_in_flight=1,
                               pipeline_depth=1) as conn:
        main = conn.channels[0]
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(call_with_timeout, conn, None)
        with anyio.fail_after(5):
            assert await conn.get_lib_version() == 9000000
        assert (main.in_flight, main.load) == (0, 0)


async def test_close_after_a_storm_is_prompt(daemon):
    conn = await aiovirt.connect(daemon.uri(), lanes=0)
    await storm(conn, lane=False, by="scope")
    with anyio.fail_after(1.5):   # the old code needed its full 2 s goodbye timeout
        await conn.close()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_a_scope_that_ends_a_connect_or_close_catches_its_own_cancellation(
        daemon, transport):
    """A cancel scope firing while ``await connect()`` or ``close()`` waited for the
    connection's cancelled background tasks let a CancelledError escape (``gather`` raised a
    child's, which anyio took for a foreign one): 5% of cycles killed the caller's task."""
    outcomes = {True: 0, False: 0}
    for i in range(210):
        with anyio.move_on_after((0, 1e-4, 5e-4, 1e-3, 2e-3, 5e-3)[i % 6]) as scope:
            conn = await aiovirt.connect(daemon.uri(transport=transport))
            try:
                await conn.get_lib_version()
            finally:
                await conn.close()
        outcomes[scope.cancelled_caught] += 1
    assert outcomes[True] >= 35   # (the zero timeouts at least)
    assert asyncio.current_task().cancelling() == 0
