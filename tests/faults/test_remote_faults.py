"""Faults under a TLS connection to a real libvirtd: the daemon restarted (the connection
comes back through a new TLS handshake and its subscriptions resync) and the daemon killed in
the middle of a storm of calls (every call fails with ``ConnectionClosed``, none hangs)."""

from __future__ import annotations

import os
import time
import uuid

import anyio
import pytest

import aiovirt
from aiovirt.client.events import Resync
from aiovirt.client.reconnect import ConnectionState, Reconnect
from aiovirt.testing.daemon import PrivateDaemon
from aiovirt.testing.pki import loopback_tls

FAST = Reconnect(initial=0.05, max_delay=0.5, jitter=0.1)


@pytest.fixture
def tls(tmp_path):
    """A private libvirtd listening for TLS, and the ``pkipath`` its clients use."""
    config, pkipath = loopback_tls(tmp_path)
    daemon = PrivateDaemon(tmp_path / "d", extra_config=config).start()
    try:
        yield daemon, f"{daemon.uri(transport='tls')}?pkipath={pkipath}"
    finally:
        daemon.stop()


def domain_xml(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
            "<os><type>hvm</type></os></domain>")


async def test_a_restarted_daemon_is_reconnected_over_tls(tls):
    daemon, uri = tls
    async with aiovirt.connect(uri, reconnect=FAST, keepalive=(0.5, 2)) as conn:
        changes = conn.state_changes()
        async with conn.domain_events() as events:
            await anyio.to_thread.run_sync(daemon.stop)
            with anyio.fail_after(20):
                lost = await changes.receive()
            assert lost.state is ConnectionState.LOST
            await anyio.to_thread.run_sync(daemon.start)
            with anyio.fail_after(20):
                back = await changes.receive()
            assert back.state is ConnectionState.RECONNECTED
            stream = aiter(events)
            with anyio.fail_after(10):
                assert isinstance(await anext(stream), Resync)
                name = f"tlsrc-{uuid.uuid4().hex[:6]}"
                dom = await conn.define_xml(domain_xml(name))
                event = await anext(stream)
            assert (event.domain.name, event.event) == (name, aiovirt.DomainEventType.DEFINED)
            await dom.undefine()
        assert await conn.get_lib_version() > 0


async def test_a_killed_daemon_fails_every_call_of_a_storm_over_tls(tls):
    daemon, uri = tls
    outcomes: list[str] = []
    done = 0
    under_way = anyio.Event()
    async with aiovirt.connect(uri) as conn:
        async def caller() -> None:
            nonlocal done
            try:
                while True:
                    await conn.get_lib_version()
                    done += 1
                    if done == 500:
                        under_way.set()
            except aiovirt.ConnectionClosed:
                outcomes.append("closed")

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(caller)
                await under_way.wait()             # 500 calls answered: the storm is on
                await anyio.to_thread.run_sync(daemon.kill)
        assert outcomes == ["closed"] * 50         # every caller ended, each the same way
        with pytest.raises(aiovirt.ConnectionClosed):
            await conn.get_lib_version()


def test_a_peer_whose_config_is_a_fifo_cannot_freeze_the_loop(tmp_path):
    """The daemon's config file is read to learn max_client_requests; its path comes from
    the peer's command line (``-f``).  A FIFO there froze the event loop in open() for ever:
    connect_timeout never fired.  Now only a regular file is read, without blocking."""
    import subprocess
    import sys
    import textwrap
    fifo, sock = tmp_path / "conf", tmp_path / "sock"
    os.mkfifo(fifo)
    peer_code = textwrap.dedent(f"""
        import anyio
        from aiovirt.testing.fakepeer import handshake, serve_one
        async def main():
            async with await anyio.create_unix_listener({str(sock)!r}) as listener:
                await serve_one(listener, handshake)
        anyio.run(main)
    """)
    fake = tmp_path / "libvirtd"   # a process whose argv[0] is .../libvirtd
    fake.symlink_to(os.path.realpath(sys.executable))
    peer = subprocess.Popen([str(fake), "-c", peer_code, "-f", str(fifo)],
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        client = textwrap.dedent(f"""
            import asyncio, aiovirt
            async def main():
                async with aiovirt.connect("test:///default?socket={sock}",
                                           connect_timeout=5) as conn:
                    print(conn.max_in_flight)
            asyncio.run(main())
        """)
        done = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "5"   # libvirt's default: the FIFO was not read
    finally:
        peer.kill()
        peer.wait()
