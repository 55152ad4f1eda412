"""A real libvirtd SIGSTOPped past the keepalive window: it holds its sockets open but never
answers.  Calls in flight (main socket and lanes) and event streams end with
``ConnectionClosed`` within the keepalive bound, nothing hangs, nothing is left running; and a
provisioning run against such a host ends with a report that matches what the host has.
Each test stops a daemon of its own, never the session's."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import anyio
import pytest

import aiovirt
from aiovirt.testing.daemon import PrivateDaemon
from aiovirt.provision import GuestSpec, Provisioning, Stage

KEEPALIVE = (0.5, 2)          # dead after (2 + 1) * 0.5 = 1.5 s without a word
DEAD_AFTER = KEEPALIVE[0] * (KEEPALIVE[1] + 1)
BOUND = DEAD_AFTER + 2.5      # what a caller may wait at most (one interval late + slack)


def domain_xml(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
            "<os><type>hvm</type></os></domain>")


@pytest.fixture
def stoppable(tmp_path_factory: pytest.TempPathFactory):
    """A daemon of this test's own, continued (if stopped) and ended afterwards."""
    running = PrivateDaemon(tmp_path_factory.mktemp("stopped")).start()
    try:
        yield running
    finally:
        running.stop()


def active_tasks() -> set[asyncio.Task]:
    return {t for t in asyncio.all_tasks() if not t.done()}


async def calls_against_a_stopped_daemon(daemon: PrivateDaemon, quick: int,
                                         slow_first: bool) -> None:
    """Stop ``daemon`` under a connection with a lane, then make ``quick`` quick calls and
    one slow one, before or after them (and hold an event stream): each ends with
    ``ConnectionClosed`` within the keepalive bound, the connection closes at once, its
    tasks end, and the daemon is fine once continued."""
    uri = daemon.uri("test", "/default")
    name = f"ka{uuid.uuid4().hex[:8]}"
    before = active_tasks()
    conn = await aiovirt.connect(uri, keepalive=KEEPALIVE, lanes=2)
    try:
        dom = await conn.define_xml(domain_xml(name))
        await dom.start()                      # a slow call: it opened a lane
        assert len(conn.channels) == 2
        outcomes: list[BaseException | None] = []
        events_ended = anyio.Event()

        async def call(make) -> None:
            try:
                await make()
            except Exception as exc:           # noqa: BLE001 - the type is the assertion
                outcomes.append(exc)
            else:
                outcomes.append(None)

        async def watch() -> None:
            async with conn.domain_events() as events:
                async for _ in events:
                    pass
            events_ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            with anyio.fail_after(5):
                while not conn._subscriptions:    # registered with the daemon
                    await anyio.sleep(0.01)
            os.kill(daemon.pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            with anyio.fail_after(BOUND):
                async with anyio.create_task_group() as calls:
                    if slow_first:
                        calls.start_soon(call, dom.destroy)       # slow: the idle lane
                        await anyio.sleep(0)
                    for _ in range(quick):
                        calls.start_soon(call, conn.get_lib_version)
                    if not slow_first:
                        await anyio.sleep(0)
                        calls.start_soon(call, dom.destroy)       # the lane is busy: a new one
            took = time.monotonic() - stopped_at
            with anyio.fail_after(1):
                await events_ended.wait()
        assert len(outcomes) == quick + 1
        assert all(isinstance(o, aiovirt.ConnectionClosed) for o in outcomes), outcomes
        assert any("keepalive" in str(o) for o in outcomes)
        assert DEAD_AFTER - KEEPALIVE[0] <= took < BOUND, took
        assert not conn.is_alive
        with pytest.raises(aiovirt.ConnectionClosed):
            await conn.get_lib_version()
    finally:
        began = time.monotonic()
        await conn.close()
        assert time.monotonic() - began < 0.5   # no goodbye waits on a stopped daemon
    with anyio.fail_after(2):                     # the keepalive, reader and lane tasks ended
        while active_tasks() - before:
            await anyio.sleep(0.01)

    os.kill(daemon.pid, signal.SIGCONT)           # the daemon itself is fine afterwards
    with anyio.fail_after(10):
        async with aiovirt.connect(uri) as again:
            assert await again.get_lib_version() == 9000000


async def test_calls_in_flight_fail_once_the_keepalive_window_passes(stoppable):
    await calls_against_a_stopped_daemon(stoppable, quick=5, slow_first=True)


async def test_calls_needing_a_new_lane_fail_too(stoppable):
    """Quick calls overflow onto the lane, so the slow call after them makes the connection
    open another lane to the stopped daemon, whose handshake can never complete: every call
    must still end within the bound."""
    await calls_against_a_stopped_daemon(stoppable, quick=8, slow_first=False)


async def test_keepalive_set_on_an_open_connection_applies_at_once(stoppable):
    """``set_keepalive`` (libvirt's virConnectSetKeepAlive) on a connection opened with a
    minute's keepalive: the new figures judge a stopped daemon from then on, not after the
    minute."""
    async with aiovirt.connect(stoppable.uri(), keepalive=(60.0, 5), lanes=0) as conn:
        await conn.get_lib_version()
        assert conn.set_keepalive(*KEEPALIVE)
        os.kill(stoppable.pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(BOUND), pytest.raises(aiovirt.ConnectionClosed,
                                                        match="keepalive"):
                await conn.get_lib_version()
        finally:
            os.kill(stoppable.pid, signal.SIGCONT)


async def test_keepalive_stopped_then_started_again(stoppable):
    """``set_keepalive(0, 0)`` stops judging: a daemon stopped past the window is still
    waited for (the call's own time limit ends the call, the connection lives); started
    again, keepalive declares it dead within the window."""
    version = aiovirt.protocol.remote.PROCEDURES[
        aiovirt.protocol.remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION]
    async with aiovirt.connect(stoppable.uri(), keepalive=KEEPALIVE, lanes=0) as conn:
        assert conn.set_keepalive(0, 0)
        os.kill(stoppable.pid, signal.SIGSTOP)
        try:
            with pytest.raises(aiovirt.CallTimeout):
                await conn.call(version, timeout=DEAD_AFTER + 1)
            assert conn.is_alive
            assert conn.set_keepalive(*KEEPALIVE)
            with anyio.fail_after(BOUND), pytest.raises(aiovirt.ConnectionClosed,
                                                        match="keepalive"):
                await conn.get_lib_version()
        finally:
            os.kill(stoppable.pid, signal.SIGCONT)


async def test_provisioning_against_a_host_that_stops_ends_with_a_report(stoppable,
                                                                         tmp_path_factory):
    """The doomed host stops as its first guest is defined; the run's keepalive declares it
    lost, its queued guests move to the other host.  The host is then killed (it never read
    the calls it was sent while stopped) and started again on the same QEMU state: what it
    has is what the report says."""
    p = f"ks{uuid.uuid4().hex[:6]}"
    spec = GuestSpec(f"<domain><name>{p}</name></domain>", ["kvm-base"],
                     params={"kvm-base.memory": "32"}, count=12, start=False)
    with PrivateDaemon(tmp_path_factory.mktemp("other")) as other:
        conn = await aiovirt.connect(stoppable.uri("qemu", "/system"), keepalive=KEEPALIVE)
        d_uri, o_uri = conn.uri.uri, other.uri("qemu", "/system")
        stopped: dict[str, Stage] = {}
        job: Provisioning

        def on_change(result) -> None:
            if result.host == d_uri and result.stage is Stage.DEFINED and not stopped:
                stopped.update({r.name: r.stage for r in job.results if r.host == d_uri})
                os.kill(stoppable.pid, signal.SIGSTOP)

        job = Provisioning([conn, o_uri], spec, placement="spread", concurrency=2,
                           on_change=on_change)
        try:
            with anyio.fail_after(30):
                report = await job.run()
        finally:
            await conn.close()
        assert stopped, "the stop point was never reached"
        assert all(r.final for r in report.results)
        assert sum(report.counts().values()) == 12
        assert report.hosts[0].state == "lost" and "keepalive" in report.hosts[0].error
        on_stopped = [r for r in report.results if r.host == d_uri]
        on_other = [r for r in report.results if r.host == o_uri]
        assert len(on_stopped) + len(on_other) == 12
        assert all(r.stage is Stage.DEFINED and r.exists for r in on_other)
        assert any(r.moved_from == [d_uri] for r in on_other)   # queued there: moved
        for r in on_stopped:
            assert (r.stage is Stage.DEFINED and r.exists) or (
                r.stage is Stage.FAILED and "lost" in r.error and r.exists is not False), r
        async with aiovirt.connect(o_uri) as check:
            assert {d.name for d in await check.list_domains()} == {r.name for r in on_other}

    stoppable.kill()                              # SIGKILL ends a stopped process too
    stoppable.start()
    async with aiovirt.connect(stoppable.uri("qemu", "/system")) as check:
        there = {d.name for d in await check.list_domains() if d.name.startswith(p)}
    said = {r.name for r in on_stopped if r.exists}
    maybe = {r.name for r in on_stopped if r.exists is None}
    assert said <= there <= said | maybe, (said, maybe, there)


async def test_provisioning_with_starts_on_lanes_ends_when_its_host_stops(stoppable,
                                                                         tmp_path_factory):
    """The host stops as its first start call goes out; starts run on lanes, and a lane
    being opened to a stopped daemon never completes its handshake.  The run still ends
    soon after the keepalive declares the host lost, with every guest accounted for."""
    p = f"kl{uuid.uuid4().hex[:6]}"
    with PrivateDaemon(tmp_path_factory.mktemp("other")) as other:
        conn = await aiovirt.connect(stoppable.uri("test", "/default"), keepalive=KEEPALIVE)
        d_uri, o_uri = conn.uri.uri, other.uri("test", "/default")
        stopped_at: list[float] = []
        job: Provisioning

        def on_change(result) -> None:
            if result.host == d_uri and result.stage is Stage.STARTING and not stopped_at:
                os.kill(stoppable.pid, signal.SIGSTOP)
                stopped_at.append(time.monotonic())

        job = Provisioning([conn, o_uri], GuestSpec(domain_xml(p), count=40),
                           placement="spread", on_change=on_change)
        async with aiovirt.connect(o_uri) as holder:    # keeps the other host's state
            try:
                with anyio.fail_after(BOUND + 5):
                    report = await job.run()
            finally:
                await conn.close()
            assert stopped_at and time.monotonic() - stopped_at[0] < BOUND + 2
            assert all(r.final for r in report.results) and len(report.results) == 40
            assert report.hosts[0].state == "lost" and report.hosts[1].state == "ok"
            on_other = {r.name for r in report.results if r.host == o_uri}
            assert all(r.stage is Stage.STARTED for r in report.results if r.host == o_uri)
            assert {d.name for d in await holder.list_domains()
                    if d.name.startswith(p + "-")} == on_other
            for r in report.results:
                if r.host == d_uri and r.stage is not Stage.STARTED:
                    assert r.stage is Stage.FAILED and "lost" in r.error, r


async def test_provisioning_with_a_host_stopped_from_the_start(stoppable, daemon):
    """A host that accepts connections but never answers the handshake: it counts as
    unreachable after ``connect_timeout`` and every guest goes to the other host."""
    p = f"kc{uuid.uuid4().hex[:6]}"
    d_uri, o_uri = stoppable.uri("test", "/default"), daemon.uri("test", "/default")
    os.kill(stoppable.pid, signal.SIGSTOP)
    async with aiovirt.connect(o_uri) as holder:
        began = time.monotonic()
        with anyio.fail_after(10):
            report = await Provisioning([d_uri, o_uri], GuestSpec(domain_xml(p), count=6),
                                        connect_timeout=1.0).run()
        assert 1.0 <= time.monotonic() - began < 5
        assert report.hosts[0].state == "unreachable" and "handshake" in report.hosts[0].error
        assert report.ok and report.counts() == {"started": 6}
        assert all(r.host == o_uri for r in report.results)
        mine = [d for d in await holder.list_domains() if d.name.startswith(p + "-")]
        assert {d.name for d in mine} == {r.name for r in report.results}
        for dom in mine:
            await dom.destroy()
            await dom.undefine()
