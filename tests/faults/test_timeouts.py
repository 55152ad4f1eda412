"""Per-call timeouts and the connection's default: a call without a reply in time fails with
``CallTimeout`` (a ``TimeoutError``) within its bound, and the connection stays usable."""

from __future__ import annotations

import time

import anyio
import pytest

import aiovirt
from aiovirt.client import events as client_events
from aiovirt.protocol import remote
from aiovirt.testing.fakepeer import memory_dialer, reply_to

LIBVER = remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION
HOSTNAME = remote.REMOTE_PROC_CONNECT_GET_HOSTNAME
REGISTER = remote.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY


async def answers_all_but_hostname(stream, msg) -> bool:
    """A daemon that never answers getHostname and answers getLibVersion at once."""
    if msg.procedure == LIBVER:
        await stream.send(reply_to(msg, remote.ConnectGetLibVersionRet(9_000_000)))
    return True


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_connection_default_bounds_every_call(backend):
    async def main() -> None:
        async with aiovirt.connect("test:///default", call_timeout=0.3,
                                   dialer=memory_dialer(answers_all_but_hostname)) as conn:
            began = time.monotonic()
            with pytest.raises(aiovirt.CallTimeout, match="connect_get_hostname: no reply "
                               r"within 0.3 s \(whether it took effect on the daemon is "
                               "unknown\\)"):
                await conn.hostname()
            assert 0.25 <= time.monotonic() - began < 2
            # the late (never) reply holds its slot; other calls go on
            assert await conn.get_lib_version() == 9_000_000
            # a call's own limit wins over the default, both ways
            with pytest.raises(TimeoutError):
                await conn.rpc.connect_get_hostname(call_timeout=0.05)
            with anyio.move_on_after(0.6) as outer:
                await conn.rpc.connect_get_hostname(call_timeout=None)   # waits for ever
            assert outer.cancelled_caught
            assert (await conn.rpc.connect_get_lib_version(call_timeout=5)).lib_ver == \
                9_000_000

    anyio.run(main, backend=backend)


async def test_timeouts_on_a_real_daemon_leave_it_usable(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        timed_out = 0
        for _ in range(200):
            try:
                await conn.rpc.connect_list_all_domains(1, 0, call_timeout=1e-6)
            except aiovirt.CallTimeout:
                timed_out += 1
        assert timed_out > 0
        names = [d.name for d in await conn.list_domains()]
        assert "test" in names
        with anyio.fail_after(5):
            assert await conn.get_lib_version() == 9000000


def test_call_timeout_must_be_positive():
    with pytest.raises(ValueError, match="call_timeout"):
        aiovirt.connect("test:///default", call_timeout=0)


async def never_drops_subscriptions(stream, msg) -> bool:
    """A daemon that takes event subscriptions but never answers their removal."""
    if msg.procedure == REGISTER:
        await stream.send(reply_to(msg, remote.ConnectDomainEventCallbackRegisterAnyRet(7)))
    elif msg.procedure == LIBVER:
        await stream.send(reply_to(msg, remote.ConnectGetLibVersionRet(9_000_000)))
    return True


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ending_a_subscription_is_bounded_when_the_daemon_never_answers(backend, monkeypatch,
                                                                         caplog):
    """Deregistering is shielded (a cancelled consumer still deregisters) but bounded: a
    daemon that never confirms holds neither the consumer nor its cancellation for ever,
    and the connection goes on."""
    monkeypatch.setattr(client_events, "STOP_TIMEOUT", 0.3)

    async def main() -> None:
        async with aiovirt.connect("test:///default",
                                   dialer=memory_dialer(never_drops_subscriptions)) as conn:
            began = time.monotonic()
            async with conn.domain_events() as events:
                assert events.callback_id == 7
            assert 0.25 <= time.monotonic() - began < 3

            async def consume() -> None:
                async with conn.domain_events() as events:
                    async for _ in events:
                        pass

            began = time.monotonic()
            with anyio.move_on_after(0.2) as outer:   # cancels the consumer mid-iteration
                await consume()
            assert outer.cancelled_caught
            assert 0.45 <= time.monotonic() - began < 3
            assert await conn.get_lib_version() == 9_000_000

    anyio.run(main, backend=backend)
    assert caplog.text.count("did not confirm dropping the subscription within 0.3 s") == 2
