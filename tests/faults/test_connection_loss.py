"""A socket that dies under a live connection fails calls with ``ConnectionClosed``, exactly:
never ``anyio.BrokenResourceError`` or ``OSError``, whatever the moment of the call."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

import aiovirt


async def test_call_while_asyncio_transport_is_closing(daemon):
    """asyncio marks the transport closing one pass before ``connection_lost``; a call
    written in that window used to raise ``anyio.BrokenResourceError``."""
    async with aiovirt.connect(daemon.uri(), lanes=0) as conn:
        main = conn.channels[0]
        main.transport._transport.abort()          # closing now, connection_lost next pass
        with anyio.fail_after(5), pytest.raises(aiovirt.ConnectionClosed, match="main socket"):
            await conn.get_lib_version()
        with pytest.raises(aiovirt.ConnectionClosed):
            await conn.get_lib_version()
        assert not conn.is_alive


async def test_calls_in_flight_and_queued_all_fail_exactly(daemon):
    async with aiovirt.connect(daemon.uri(), lanes=0, max_in_flight=2) as conn:
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await conn.get_lib_version()
            except BaseException as exc:   # noqa: BLE001 - the type is what is checked
                errors.append(exc)

        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(one)
            await anyio.lowlevel.checkpoint()
            conn.channels[0].transport._transport.abort()
        assert errors and all(type(e) is aiovirt.ConnectionClosed for e in errors), errors


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_generic_stream_closed_under_a_call(daemon, backend):
    async def main() -> None:
        async with aiovirt.connect(daemon.uri(), lanes=0, native_transport=False) as conn:
            transport = conn.channels[0].transport
            await transport._stream.aclose()       # the socket is gone under the reader
            with anyio.fail_after(5), pytest.raises(aiovirt.ConnectionClosed):
                for _ in range(3):
                    await conn.get_lib_version()

    anyio.run(main, backend=backend)


async def test_lane_lost_fails_only_its_calls(daemon):
    """A lane that dies fails its own calls exactly; the connection opens another."""
    async with aiovirt.connect(daemon.uri(), lanes=1) as conn:
        from aiovirt.protocol import remote
        libver = remote.PROCEDURES[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION]
        await conn.call(libver, lane=True)
        lane = conn.channels[1]
        lane.transport._transport.abort()
        with anyio.fail_after(5), pytest.raises(aiovirt.ConnectionClosed, match="lane1"):
            await lane.call(libver)
        with anyio.fail_after(5):
            assert (await conn.call(libver, lane=True)).lib_ver == 9000000
            assert await conn.get_lib_version() == 9000000
        assert conn.is_alive and lane not in conn.channels


async def test_calls_cut_short_by_our_close_say_so(daemon):
    """Calls under way when the connection is closed fail with "the connection was closed":
    the daemon's own close that answers our goodbye is not reported as the server's doing
    (about one call in six said "the server closed the connection" before)."""
    outcomes: list[object] = []

    async def one(conn: aiovirt.Connection) -> None:
        try:
            outcomes.append(await conn.capabilities())
        except aiovirt.ConnectionClosed as exc:
            outcomes.append(exc)

    with anyio.fail_after(60):
        for _ in range(50):
            async with anyio.create_task_group() as group:
                conn = await aiovirt.connect(daemon.uri(), lanes=0)
                for _ in range(4):
                    group.start_soon(one, conn)
                await anyio.lowlevel.checkpoint()   # written, not answered yet
                await conn.close()
    errors = [str(o) for o in outcomes if isinstance(o, aiovirt.ConnectionClosed)]
    assert len(outcomes) == 200 and errors
    assert set(errors) == {"the connection was closed"}, set(errors)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_killed_daemon_is_reported_with_the_real_cause(own_daemon, loop):
    """Replies and the end of the socket often arrive in one read: the callers those replies
    wake call again in the pass where asyncio has marked the socket closing but not yet
    said why.  Those calls used to fail the connection with "the socket is closed"; now
    every caller gets the socket's own end (a reset, a broken pipe, the end of file)."""
    if loop == "uvloop":
        runner = pytest.importorskip("uvloop", reason="uvloop is not installed").run
    else:
        runner = asyncio.run

    async def one_kill() -> list[BaseException]:
        async with aiovirt.connect(own_daemon.uri(), lanes=0) as conn:
            done = 0

            async def caller() -> None:
                nonlocal done
                while True:
                    await conn.get_lib_version()
                    done += 1

            tasks = [asyncio.ensure_future(caller()) for _ in range(16)]
            while done < 1000:
                await asyncio.sleep(0.001)
            own_daemon.kill()
            async with asyncio.timeout(10):
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            return [o for o in outcomes if isinstance(o, BaseException)]

    for _ in range(3):
        errors = runner(one_kill())
        own_daemon.start()
        assert len(errors) == 16
        for error in errors:
            assert type(error) is aiovirt.ConnectionClosed, error
            assert "the socket is closed" not in str(error)
            root = error
            while isinstance(root.__cause__, aiovirt.ConnectionClosed):
                root = root.__cause__
            assert isinstance(root.__cause__, OSError | EOFError), root.__cause__
