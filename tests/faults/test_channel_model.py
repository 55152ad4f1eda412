"""A property over ``Channel``: calls, replies, late replies, cancellations, PINGs and the loss
of the socket in any order.  After every step the protocol's in-flight and queued counts agree
with what really went over the wire, queued calls leave in FIFO order, every live caller is
waiting and every finished one got exactly its own answer; at the end every call is answered
and the channel still works (or, once lost, every call failed with ``ConnectionClosed``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiovirt import ConnectionClosed
from aiovirt.client.channel import Channel
from aiovirt.protocol import keepalive, remote
from aiovirt.client.transport import Sink
from aiovirt.protocol.wire import CALL, MESSAGE, OK, REPLY, FrameDecoder, encode_message
from aiovirt.protocol.xdr import encode

LIBVER = remote.PROCEDURES[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION]
MAX_IN_FLIGHT = 3


class Wire:
    """The far end of the channel's transport, in memory: what was sent, in order."""

    def __init__(self) -> None:
        self.frames = FrameDecoder()
        self.calls: list[int] = []       # serials of CALL packets, in the order sent
        self.pongs = 0
        self.closed = False
        self.sink: Sink | None = None

    def attach(self, sink: Sink) -> None:
        self.sink = sink

    def write(self, data: bytes, alone: bool = False) -> None:
        if self.closed:
            raise anyio.BrokenResourceError("closed")
        for msg in self.frames.feed(data):
            if msg.type == CALL:
                self.calls.append(msg.serial)
            elif msg.program == keepalive.PROGRAM:
                self.pongs += 1

    def close(self) -> None:
        self.closed = True


@dataclass
class Caller:
    serial: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    result: object = None
    error: BaseException | None = None
    cancelled: bool = False


def answer(serial: int) -> bytes:
    payload = encode(LIBVER.encode_ret, remote.ConnectGetLibVersionRet(serial * 10), "ret")
    return encode_message(remote.PROGRAM, LIBVER.number, REPLY, serial, OK, payload)


async def settle(condition) -> None:
    """Let the other tasks run until ``condition()`` holds; a bounded number of passes."""
    for _ in range(10_000):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the channel did not settle")


ops = st.lists(st.one_of(
    st.just(("call",)), st.tuples(st.just("reply"), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 50)), st.just(("ping",)),
    st.just(("lose",))), max_size=60)


async def drive(steps: list[tuple]) -> None:
    wire = Wire()
    channel = Channel(wire, max_in_flight=MAX_IN_FLIGHT, on_event=lambda m: None)
    protocol = channel.protocol
    callers: list[Caller] = []
    answered: set[int] = set()
    pongs_expected = 0

    async def run(caller: Caller) -> None:
        with caller.scope:
            try:
                caller.result = await channel.call(LIBVER)
            except ConnectionClosed as exc:
                caller.error = exc
        caller.cancelled = caller.scope.cancelled_caught
        caller.done.set()

    def check() -> None:
        on_wire = [s for s in wire.calls if s not in answered]
        live = [c for c in callers if not c.done.is_set()]
        assert wire.calls == sorted(wire.calls), "queued calls left out of order"
        if channel.closed is None:
            assert protocol.pending == len(on_wire) <= MAX_IN_FLIGHT
            assert protocol.queued == len([c for c in live if c.serial not in wire.calls])
            assert protocol.queued == 0 or protocol.pending == MAX_IN_FLIGHT
            assert sorted(channel._waiters) == sorted(c.serial for c in live)
        else:
            assert not live
        for c in callers:
            if c.done.is_set() and c.error is None and not c.cancelled:
                assert c.result.lib_ver == c.serial * 10

    async with anyio.create_task_group() as group:
        for op in steps:
            live = [c for c in callers if not c.done.is_set()]
            if op[0] == "call":
                before = protocol._serial
                if channel.closed is not None:
                    with pytest.raises(ConnectionClosed):
                        await channel.call(LIBVER)
                    continue
                caller = Caller(before + 1)
                callers.append(caller)
                group.start_soon(run, caller)
                await settle(lambda: caller.serial in channel._waiters)
            elif op[0] == "reply":
                on_wire = [s for s in wire.calls if s not in answered]
                if not on_wire or channel.closed is not None:
                    continue
                serial = on_wire[op[1] % len(on_wire)]
                answered.add(serial)
                owner = next(c for c in callers if c.serial == serial)
                channel.feed(answer(serial))
                await settle(lambda: owner.done.is_set() or owner.serial not in
                             channel._waiters)
                await settle(owner.done.is_set)
            elif op[0] == "cancel":
                if not live:
                    continue
                victim = live[op[1] % len(live)]
                victim.scope.cancel()
                await settle(victim.done.is_set)
            elif op[0] == "ping":
                if channel.closed is None:
                    channel.feed(encode_message(keepalive.PROGRAM,
                                                keepalive.KEEPALIVE_PROC_PING, MESSAGE, 0, OK))
                    pongs_expected += 1
                    assert wire.pongs == pongs_expected
            elif op[0] == "lose":
                channel.lost(None)
                await settle(lambda: all(c.done.is_set() for c in callers))
                assert all(isinstance(c.error, ConnectionClosed) or c.cancelled
                           or c.error is None for c in callers)
            check()
        # the end: answer everything still out (answers admit queued calls), then one more
        while channel.closed is None:
            on_wire = [s for s in wire.calls if s not in answered]
            if not on_wire:
                break
            for serial in on_wire:
                answered.add(serial)
                channel.feed(answer(serial))
        await settle(lambda: all(c.done.is_set() for c in callers))
        check()
        if channel.closed is None:
            assert (protocol.pending, protocol.queued) == (0, 0)
            last = Caller(protocol._serial + 1)
            callers.append(last)
            group.start_soon(run, last)
            await settle(lambda: last.serial in wire.calls)
            answered.add(last.serial)
            channel.feed(answer(last.serial))
            await settle(last.done.is_set)
            assert last.result.lib_ver == last.serial * 10
        else:
            assert all(c.error is not None or c.cancelled or c.result is not None
                       for c in callers)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops)
def test_channel_state_agrees_with_the_wire(backend, steps):
    anyio.run(drive, steps, backend=backend)
