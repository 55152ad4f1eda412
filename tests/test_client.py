"""The client against a real libvirtd (started by the suite): transports, calls, concurrency,
cancellation, failures, keepalive and events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid

import anyio
import pytest

import aiovirt
from aiovirt.testing.daemon import PrivateDaemon
from aiovirt.protocol import remote

from aiovirt.testing.fakepeer import serve_one


def domain_xml(name: str, memory_mib: int = 64) -> str:
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory>"
            "<os><type>hvm</type></os></domain>")




def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["unix", "tcp"])
def test_uri(request, daemon):
    return daemon.uri("test", "/default", transport=request.param)


async def test_basic_calls_over_unix_and_tcp(test_uri):
    async with aiovirt.connect(test_uri) as conn:
        assert await conn.get_lib_version() == 9000000
        assert isinstance(await conn.hostname(), str)
        assert "<capabilities>" in await conn.capabilities()
        [test] = [d for d in await conn.list_domains() if d.name == "test"]
        assert test.id > 0 and len(test.uuid) == 36
        ret = await conn.rpc.domain_lookup_by_name(name="test")
        assert isinstance(ret, remote.DomainLookupByNameRet) and ret.dom.name == "test"
        state, _ = await test.state()
        assert state == aiovirt.DomainState.RUNNING


async def test_awaitable_connect_and_close(daemon):
    conn = await aiovirt.connect(daemon.uri())
    assert conn.is_alive
    assert await conn.get_lib_version() == 9000000
    await conn.close()
    assert not conn.is_alive
    with pytest.raises(aiovirt.ConnectionClosed):
        await conn.get_lib_version()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_close_inside_async_with_ends_only_the_connection(daemon, backend):
    """close() inside ``async with connect()`` used to cancel the block itself (the task
    group's scope held both): the next await raised CancelledError."""
    pytest.importorskip(backend)

    async def main() -> list[str]:
        steps = []
        async with aiovirt.connect(daemon.uri()) as conn:
            await conn.get_lib_version()
            await conn.close()
            await anyio.sleep(0.01)
            steps.append("after close")
            with pytest.raises(aiovirt.ConnectionClosed):
                await conn.get_lib_version()
            await conn.close()   # twice: nothing more to do
        steps.append("left the block")
        return steps

    assert anyio.run(main, backend=backend) == ["after close", "left the block"]


async def test_domain_lifecycle_on_the_test_driver(daemon):
    name = unique()
    async with aiovirt.connect(daemon.uri()) as conn:
        dom = await conn.define_xml(domain_xml(name))
        assert dom.name == name and dom.id == -1
        found = await conn.lookup_domain(uuid=dom.uuid)
        assert (found.name, found.uuid, found.id) == (name, dom.uuid, -1)
        await dom.start()
        assert dom.id > 0
        assert (await conn.lookup_domain(id=dom.id)).name == name
        assert (await dom.state())[0] == aiovirt.DomainState.RUNNING
        await dom.suspend()
        assert (await dom.info()).state == aiovirt.DomainState.PAUSED
        await dom.resume()
        await dom.set_metadata("<app><owner>me</owner></app>", key="app",
                               uri="http://example.org/app")
        assert "<owner>me</owner>" in await dom.metadata(uri="http://example.org/app")
        assert "http://example.org/app" in await dom.xml()
        await dom.destroy()
        assert (await dom.state())[0] == aiovirt.DomainState.SHUTOFF
        await dom.undefine()
        with pytest.raises(aiovirt.NoSuchDomain) as err:
            await conn.lookup_domain(name=name)
        assert err.value.code == 42 and name in err.value.message


async def test_private_state_per_connection(daemon, node_xml):
    uri = daemon.uri("test", node_xml)
    name = unique()
    async with aiovirt.connect(uri) as a, aiovirt.connect(uri) as b:
        names_b = {d.name for d in await b.list_domains()}
        await a.define_xml(domain_xml(name))
        assert name in {d.name for d in await a.list_domains()}
        assert {d.name for d in await b.list_domains()} == names_b


async def test_500_concurrent_calls_reach_the_right_caller(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        names = [unique("c") for _ in range(25)]
        doms = [await conn.define_xml(domain_xml(n)) for n in names]
        results: list[tuple[str, str]] = []

        async def lookup(i: int) -> None:
            wanted = names[i % len(names)]
            dom = await conn.lookup_domain(name=wanted)
            results.append((wanted, dom.name))

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(lookup, i)
        assert len(results) == 500
        assert all(wanted == got for wanted, got in results)
        # the cap held: never more than max_in_flight on the socket
        assert conn.channels[0].in_flight == 0
        for dom in doms:
            await dom.undefine()


@pytest.mark.parametrize(("max_in_flight", "pipeline_depth"), [(3, 3), (3, 8)])
async def test_calls_on_the_wire_stay_within_the_pipeline_depth(daemon, max_in_flight,
                                                                 pipeline_depth):
    """100 quick calls at once: the socket holds at most ``pipeline_depth`` of them (the
    daemon reads the ones beyond its max_client_requests as it finishes others), and every
    caller gets its answer."""
    async with aiovirt.connect(daemon.uri(), max_in_flight=max_in_flight,
                               pipeline_depth=pipeline_depth, lanes=0) as conn:
        peak = 0
        channel = conn.channels[0]

        async def one() -> None:
            nonlocal peak
            peak = max(peak, channel.in_flight)
            assert await conn.get_lib_version() > 0
            peak = max(peak, channel.in_flight)

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one)
        assert peak == pipeline_depth
        assert channel.in_flight == 0


async def test_cancelled_call_leaves_connection_usable(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        channel = conn.channels[0]
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.get_lib_version)
            deadline = time.monotonic() + 10
            while channel.in_flight == 0:  # wait until the call is on the wire
                if time.monotonic() > deadline:
                    pytest.fail("the call never went on the wire (in_flight stayed 0 for 10 s)")
                await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()
        # the late reply is read and dropped; the next callers get their own answers
        assert (await conn.lookup_domain(name="test")).name == "test"
        assert await conn.get_lib_version() == 9000000
        assert channel.in_flight == 0
        assert channel.protocol.pending == 0


async def test_daemon_killed_mid_call_fails_every_pending_call(tmp_path):
    with PrivateDaemon(tmp_path / "d") as daemon:
        async with aiovirt.connect(daemon.uri(), keepalive=None) as conn:
            os.kill(daemon.pid, signal.SIGSTOP)  # calls now wait on a daemon that won't answer
            errors: list[BaseException] = []

            async def call() -> None:
                try:
                    await conn.get_lib_version()
                except aiovirt.ConnectionClosed as exc:
                    errors.append(exc)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(call)
                    while conn.channels[0].in_flight < 5:
                        await anyio.lowlevel.checkpoint()
                    started = time.monotonic()
                    daemon.kill()
            assert len(errors) == 20
            assert time.monotonic() - started < 5
            assert not conn.is_alive
            with pytest.raises(aiovirt.ConnectionClosed):
                await conn.get_lib_version()


async def test_keepalive_pings_from_the_server_are_answered(tmp_path):
    with PrivateDaemon(tmp_path / "d", keepalive_interval=1, keepalive_count=1) as daemon:
        async with aiovirt.connect(daemon.uri(), keepalive=None) as conn:
            channel = conn.channels[0]
            with anyio.fail_after(15):
                while channel.pings_received < 3:  # > count: unanswered we'd be dropped
                    await anyio.sleep(0.1)
            assert conn.is_alive
            assert await conn.get_lib_version() == 9000000


async def test_dead_server_is_detected_by_keepalive(tmp_path):
    with PrivateDaemon(tmp_path / "d") as daemon:
        async with aiovirt.connect(daemon.uri(), keepalive=(0.3, 2)) as conn:
            assert await conn.get_lib_version() == 9000000
            os.kill(daemon.pid, signal.SIGSTOP)
            try:
                with anyio.fail_after(10):
                    with pytest.raises(aiovirt.ConnectionClosed, match="keepalive"):
                        await conn.get_lib_version()
            finally:
                os.kill(daemon.pid, signal.SIGCONT)


@pytest.mark.parametrize("bad_reply, message", [
    ((64 << 20).to_bytes(4, "big") + bytes(24), "exceeds the limit"),
    (b"GARBAGE!" * 8, "packet length"),
])
async def test_fake_peer_sending_bad_frames(tmp_path, bad_reply, message):
    path = str(tmp_path / "fake.sock")

    async def misbehave(stream, msg) -> bool:
        await stream.send(bad_reply)
        return True

    async with await anyio.create_unix_listener(path) as listener:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_one, listener, misbehave)
            with anyio.fail_after(5):
                async with aiovirt.connect(f"test+unix:///default?socket={path}") as conn:
                    with pytest.raises(aiovirt.ProtocolError, match=message):
                        await conn.get_lib_version()
                    assert not conn.is_alive
                    with pytest.raises(aiovirt.ConnectionClosed):
                        await conn.get_lib_version()
            tg.cancel_scope.cancel()


async def test_connect_errors_name_the_target(tmp_path):
    with pytest.raises(aiovirt.ConnectionFailed, match=str(tmp_path / "none.sock")):
        await aiovirt.connect(f"test+unix:///default?socket={tmp_path / 'none.sock'}")
    with pytest.raises(aiovirt.InvalidURI, match="transport 'foo'"):
        aiovirt.connect("test+foo:///default")


async def test_lifecycle_events(daemon):
    name = unique("ev")
    async with aiovirt.connect(daemon.uri()) as conn:
        async with conn.domain_events() as events:
            dom = await conn.define_xml(domain_xml(name))
            await dom.start()
            await dom.destroy()
            await dom.undefine()
            seen = []
            with anyio.fail_after(10):
                async for event in events:
                    if event.domain.name == name:
                        seen.append(event.event)
                    if event.event == aiovirt.DomainEventType.UNDEFINED:
                        break
        assert seen == [aiovirt.DomainEventType.DEFINED, aiovirt.DomainEventType.STARTED,
                        aiovirt.DomainEventType.STOPPED, aiovirt.DomainEventType.UNDEFINED]
        # leaving the block deregistered the callback
        assert conn._subscriptions == {}


async def test_subscriptions_of_many_kinds_leave_no_registration_behind(daemon):
    """Each kind of subscription ever used (one per domain filtered on) kept its shared
    registration for the connection's life: 1000 short-lived domains, 2.4 MB."""
    async with aiovirt.connect(daemon.uri()) as conn:
        doms = [await conn.define_xml(domain_xml(unique("reg"))) for _ in range(20)]
        for dom in doms:
            async with conn.domain_events(domain=dom):
                pass
            sub = conn.domain_events(domain=dom, max_buffer=4)
            await sub.start()
            await sub.stop()
            await dom.undefine()
        assert conn._subscriptions == {} and conn._registrations == {}
        async with conn.domain_events() as events:   # a kind used again works as before
            dom = await conn.define_xml(domain_xml(unique("reg")))
            with anyio.fail_after(10):
                assert (await events.__aiter__().__anext__()).domain.name == dom.name
            await dom.undefine()
        assert conn._registrations == {}


async def test_two_readers_of_one_subscription_share_its_events_and_its_end(daemon):
    """A second reader used to take the only wake-up slot: the first then slept through
    every event and through stop() and close(), for ever."""
    names = [unique("two") for _ in range(4)]
    async with aiovirt.connect(daemon.uri()) as conn:
        sub = conn.domain_events()
        await sub.start()
        seen: list[str] = []

        async def reader() -> None:
            async for event in sub:
                if event.domain.name in names:
                    seen.append(event.domain.name)

        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            for name in names:
                await (await conn.define_xml(domain_xml(name))).undefine()
            with anyio.fail_after(10):
                while len(seen) < 2 * len(names):   # DEFINED and UNDEFINED of each
                    await anyio.sleep(0.01)
            with anyio.fail_after(10):
                await sub.stop()   # both readers end: the group exits
        assert sorted(seen) == sorted(names * 2)

        # reading again after stop() subscribes again (it used to end at once)
        again: list[str] = []
        name = unique("again")
        async with anyio.create_task_group() as group:
            async def read_again() -> None:
                async for event in sub:
                    if event.domain.name == name:
                        again.append(event.event.name)
                        if len(again) == 2:
                            return
            group.start_soon(read_again)
            with anyio.fail_after(10):
                while sub.callback_id is None:
                    await anyio.sleep(0.01)
                await (await conn.define_xml(domain_xml(name))).undefine()
        assert again == ["DEFINED", "UNDEFINED"]


async def test_a_subscription_cancelled_while_registering_leaves_no_callback(daemon):
    """Cancelled between sending its registration and reading the answer, a subscription
    used to leave the daemon's callback registered and unknown: every later subscription of
    that kind failed ("event callback already tracked")."""
    async with aiovirt.connect(daemon.uri(), lanes=0) as conn:
        for passes in range(1, 6):   # cancelled at each point of the exchange in turn
            task = asyncio.ensure_future(conn.domain_events().start())
            for _ in range(passes):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # at once, while the cancelled one's answer may still be on its way: it used to
            # be refused ("event callback already tracked"); it now waits for that drop
            with anyio.fail_after(10):
                async with conn.domain_events() as events:
                    assert events.callback_id is not None
            with anyio.fail_after(10):
                while conn._subscriptions or any(
                        t.get_name().endswith("events registration")
                        for t in asyncio.all_tasks()):
                    await asyncio.sleep(0.01)
        name = unique("after")
        async with conn.domain_events() as events:
            await (await conn.define_xml(domain_xml(name))).undefine()
            with anyio.fail_after(10):
                async for event in events:
                    if event.domain.name == name:
                        break


async def test_leaving_async_for_deregisters(daemon):
    name = unique("ev")
    async with aiovirt.connect(daemon.uri()) as conn:
        async def define_later() -> None:
            while not conn._subscriptions:
                await anyio.lowlevel.checkpoint()
            await conn.define_xml(domain_xml(name))

        async with anyio.create_task_group() as tg:
            tg.start_soon(define_later)
            with anyio.fail_after(10):
                events = conn.domain_events()
                iterator = aiter(events)
                async for event in iterator:
                    assert isinstance(event, aiovirt.DomainLifecycleEvent)
                    if event.domain.name == name:
                        break
                await iterator.aclose()
        assert conn._subscriptions == {}
        await (await conn.lookup_domain(name=name)).undefine()


async def test_subscriptions_of_one_kind_share_the_daemon_callback(daemon):
    """libvirtd tracks one lifecycle callback per connection: a second subscription must
    share it, both see every event, and only the last one out deregisters."""
    first_name, second_name = unique("ev"), unique("ev")

    async def until(events, name: str) -> list[str]:
        seen = []
        with anyio.fail_after(10):
            async for event in events:
                seen.append(event.domain.name)
                if event.domain.name == name:
                    return seen
        return seen

    async with aiovirt.connect(daemon.uri()) as conn:
        async with conn.domain_events() as one, conn.domain_events() as two:
            assert one.callback_id == two.callback_id is not None
            assert len(conn._subscriptions) == 1
            await conn.define_xml(domain_xml(first_name))
            assert first_name in await until(one, first_name)
            assert first_name in await until(two, first_name)
            await one.stop()                      # the other keeps receiving
            assert two.callback_id is not None and len(conn._subscriptions) == 1
            await conn.define_xml(domain_xml(second_name))
            assert second_name in await until(two, second_name)
        assert conn._subscriptions == {}
        async with conn.domain_events() as again:  # registering anew works
            await (await conn.lookup_domain(name=first_name)).undefine()
            assert first_name in await until(again, first_name)
        await (await conn.lookup_domain(name=second_name)).undefine()


async def test_all_domain_stats(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        stats = await conn.all_domain_stats()
        by_name = {dom.name: values for dom, values in stats}
        assert by_name["test"]["state.state"] == 1


async def test_lanes_open_on_demand_for_slow_calls(daemon):
    name = unique()
    async with aiovirt.connect(daemon.uri(), lanes=2) as conn:
        assert len(conn.channels) == 1
        dom = await conn.define_xml(domain_xml(name))
        await dom.start()                      # domain_create_with_flags is slow: a lane
        assert len(conn.channels) == 2
        await dom.destroy()
        await dom.undefine()
    async with aiovirt.connect(daemon.uri(), lanes=0) as conn:
        dom = await conn.define_xml(domain_xml(name))
        await dom.start()
        assert len(conn.channels) == 1
        await dom.destroy()
        await dom.undefine()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_daemon_in_memory_through_the_dialer_seam(backend):
    """``connect(dialer=memory_dialer(...))``: the whole client (handshake, calls, lanes,
    close) against a scripted peer over socketpairs, no listening socket at all."""
    from aiovirt.testing.fakepeer import memory_dialer, reply_to

    seen: list[int] = []

    async def answer(stream, msg) -> bool:
        seen.append(msg.procedure)
        if msg.procedure == remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION:
            await stream.send(reply_to(msg, remote.ConnectGetLibVersionRet(8_123_456)))
            return True
        return False

    async def main() -> int:
        async with aiovirt.connect("test:///default", dialer=memory_dialer(answer)) as conn:
            libver = remote.PROCEDURES[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION]
            assert await conn.get_lib_version() == 8_123_456
            assert (await conn.call(libver, lane=True)).lib_ver == 8_123_456
            return len(conn.channels)

    sockets = anyio.run(main, backend=backend)   # bounded by the suite's per-test timeout
    assert sockets == 2 and seen == [remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION] * 2
