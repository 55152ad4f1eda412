"""The client is anyio code: it runs under trio, and on asyncio over anyio's generic streams."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest
import trio

import aiovirt


async def exercise(uri: str, **options) -> tuple[int, list[str], int]:
    async with aiovirt.connect(uri, **options) as conn:
        version = await conn.get_lib_version()
        names = [d.name for d in await conn.list_domains()]
        results = []

        async def one() -> None:
            results.append((await conn.lookup_domain(name="test")).name)

        import anyio
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        assert results == ["test"] * 50
        return version, names, len(conn.channels)


def test_under_trio(daemon):
    version, names, _ = trio.run(exercise, daemon.uri())
    assert version == 9000000 and "test" in names


def test_under_trio_over_tcp(daemon):
    version, names, _ = trio.run(exercise, daemon.uri(transport="tcp"))
    assert version == 9000000 and "test" in names


def test_awaitable_form_needs_asyncio(daemon):
    async def main() -> None:
        with pytest.raises(RuntimeError, match="async with"):
            await aiovirt.connect(daemon.uri())

    trio.run(main)


async def test_generic_streams_on_asyncio(daemon):
    version, names, _ = await exercise(daemon.uri(), native_transport=False)
    assert version == 9000000 and "test" in names


def unclosed_when_collected() -> list[str]:
    """The ResourceWarnings a garbage collection raises now."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("run", ["trio", "asyncio"])
def test_generic_streams_leave_nothing_unclosed(daemon, run):
    """A connection over anyio's generic streams closes its writer's queue when it ends: the
    queue's receiving end was left to the collector (a ResourceWarning per socket)."""
    if run == "trio":
        trio.run(exercise, daemon.uri())
    else:
        asyncio.run(exercise(daemon.uri(), native_transport=False))
    assert unclosed_when_collected() == []


async def test_generic_streams_see_the_server_hang_up(daemon):
    async with aiovirt.connect(daemon.uri(), native_transport=False) as conn:
        await conn.rpc.connect_close()  # the daemon closes the socket after this
        with pytest.raises(aiovirt.ConnectionClosed):
            await conn.get_lib_version()


def test_own_programs_run_on_uvloop_when_installed(daemon, monkeypatch):
    """``backend.run`` (the CLI's loop) is uvloop's when installed, asyncio's when declined,
    and the same client code works on both; a bad ``AIOVIRT_LOOP`` is a clear error."""
    from aiovirt.client import backend

    async def loop_and_calls() -> tuple[str, int]:
        import asyncio
        version, _, _ = await exercise(daemon.uri())
        return type(asyncio.get_running_loop()).__module__.split(".")[0], version

    pytest.importorskip("uvloop", reason="uvloop (aiovirt[speed]) is not installed")
    monkeypatch.setenv("AIOVIRT_LOOP", "auto")
    assert backend.loop_name() == "uvloop"
    assert backend.run(loop_and_calls()) == ("uvloop", 9000000)
    monkeypatch.setenv("AIOVIRT_LOOP", "asyncio")
    assert backend.run(loop_and_calls()) == ("asyncio", 9000000)
    monkeypatch.setenv("AIOVIRT_LOOP", "tokio")
    with pytest.raises(ValueError, match="AIOVIRT_LOOP='tokio'"):
        backend.new_event_loop()


async def test_rpc_calls_on_the_fast_path_still_fail_where_awaited(daemon):
    """Under asyncio a ``conn.rpc`` call awaits its reply's future directly; a call that
    cannot be encoded still fails where it is awaited, naming the procedure, and the
    connection goes on."""
    async with aiovirt.connect(daemon.uri()) as conn:
        first = conn.rpc.connect_get_lib_version()
        second = conn.rpc.connect_get_hostname()
        assert (await first).lib_ver == 9000000 and (await second).hostname
        pending = conn.rpc.connect_get_max_vcpus(type=12345)   # not a string
        with pytest.raises(aiovirt.EncodeError, match="connect_get_max_vcpus"):
            await pending
        assert (await conn.rpc.connect_get_lib_version()).lib_ver == 9000000


def test_provisioning_under_trio(daemon):
    """A provisioning run is anyio code too: under trio its per-guest shields and STARTED
    waits are trio's (the run picks the backend's own classes once), and every guest is
    defined, started and reported."""
    import uuid

    from aiovirt.provision import GuestSpec, Stage, provision

    prefix = f"tr{uuid.uuid4().hex[:6]}"
    xml = ("<domain type='test'><name>x</name><memory unit='MiB'>8</memory>"
           "<os><type>hvm</type></os></domain>")

    async def main() -> tuple[object, set[str]]:
        # the test driver's shared host lives while a connection holds it
        async with aiovirt.connect(daemon.uri()) as conn:
            report = await provision(daemon.uri(), GuestSpec(xml, count=12,
                                                             name=prefix + "-{n}"))
            running = {d.name for d in await conn.list_domains()
                       if d.name.startswith(prefix) and await d.is_active()}
            for dom in await conn.list_domains():
                if dom.name.startswith(prefix):
                    await dom.destroy()
                    await dom.undefine()
        return report, running

    report, running = trio.run(main)
    assert report.ok, report
    assert [r.stage for r in report.results] == [Stage.STARTED] * 12
    assert running == {r.name for r in report.results} and len(running) == 12
