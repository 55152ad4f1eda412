"""Transport faults against real components: the local ``ssh`` killed under a storm of calls,
the far side's sshd session stopped (a call's timeout, then keepalive), a libvirtd killed
under a volume stream, and a TLS peer that turns to garbage after the handshake.

Every wait is bounded; each test also checks that nothing went astray (no exception left
for asyncio's handler, nothing logged, no child process or zombie left behind)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
import ssl
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.abc
import pytest
from anyio.streams.tls import TLSStream

import aiovirt
from aiovirt.client.streams import CHUNK
from aiovirt.errors import CallTimeout, ConnectionClosed, TransportError
from aiovirt.protocol.wire import Message
from aiovirt.testing.server import process_table
from aiovirt.testing.fakepeer import serve_stream
from aiovirt.testing.pki import loopback_tls
from aiovirt.testing.sshd import ssh_children
from tests.test_ssh import LIMIT, gone, sshd, wait_gone  # noqa: F401 - sshd is a fixture
from tests.test_streams import MiB, dir_pool, new_volume

pytestmark = [
    pytest.mark.faults,
    pytest.mark.timeout(30),
    # an exception in a thread (the tunnel's reaper) or one nobody retrieved fails the test
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning",
                               "error::pytest.PytestUnraisableExceptionWarning"),
]


# -- what went astray ------------------------------------------------------------------------------
class Strays:
    """What asyncio's exception handler was given ("Future exception was never retrieved",
    "Task exception was never retrieved", a failing callback) and every warning or error
    logged while the test ran."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.handled: list[dict] = []
        self._caplog = caplog

    async def check(self) -> None:
        gc.collect()                 # unretrieved exceptions are reported when collected
        await asyncio.sleep(0)
        logged = [f"{r.name}: {r.getMessage()}" for r in self._caplog.records
                  if r.levelno >= logging.WARNING]
        assert self.handled == [] and logged == [], (self.handled, logged)


@pytest.fixture
async def strays(caplog) -> AsyncIterator[Strays]:
    caplog.set_level(logging.WARNING)
    found = Strays(caplog)
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: found.handled.append(context))
    try:
        yield found
    finally:
        gc.collect()
        loop.set_exception_handler(previous)


def children_of(pid: int) -> dict[int, str]:
    """Every descendant of ``pid``: its pid and name (from /proc)."""
    parents = process_table()
    found: dict[int, str] = {}
    frontier = {pid}
    while frontier:
        frontier = {child for child, (parent, _) in parents.items()
                    if parent in frontier and child not in found}
        found.update((child, parents[child][1]) for child in frontier)
    return found


def reaped(pid: int) -> bool:
    """``pid`` is gone and was reaped by us (waitpid has nothing left to collect)."""
    if not gone(pid):
        return False
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


# -- 1. the local ssh killed under 32 calls in flight ----------------------------------------------
async def test_killed_ssh_fails_every_call_in_flight_at_once(sshd, daemon, strays):
    before = ssh_children()
    conn = await aiovirt.connect(sshd.uri(socket=daemon.socket_path), connect_timeout=LIMIT)
    try:
        assert await conn.get_lib_version() == 9000000
        [pid] = ssh_children() - before
        main = conn.channels[0]
        # Stop the tunnel first, so that all 32 calls are surely out on it, unanswered, when
        # it dies (SIGKILL ends a stopped process all the same).
        os.kill(pid, signal.SIGSTOP)
        outcomes: list[BaseException | int] = []

        async def one() -> None:
            try:
                outcomes.append(await conn.get_lib_version())
            except BaseException as exc:   # noqa: BLE001 - the type is what is checked
                outcomes.append(exc)

        async with anyio.create_task_group() as group:
            for _ in range(32):
                group.start_soon(one)
            with anyio.fail_after(5):
                while main.load < 32:
                    await anyio.sleep(0.005)
            # all written (pipeline_depth 32), none answered, one socket (no lanes over ssh)
            assert (main.in_flight, len(conn.channels), outcomes) == (32, 1, [])
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            with anyio.fail_after(10):
                while len(outcomes) < 32:
                    await anyio.sleep(0.005)
        took = time.monotonic() - killed
        assert all(type(o) is ConnectionClosed for o in outcomes), outcomes
        assert len({str(o) for o in outcomes}) == 1       # one loss, told to everyone
        message = str(outcomes[0])
        assert "ssh to 127.0.0.1: it was killed by SIGKILL" in message, message
        assert took < 2, took               # at most the tunnel's grace period, no hang
        assert not conn.is_alive and conn.state is aiovirt.ConnectionState.LOST
        with pytest.raises(ConnectionClosed):
            await conn.get_lib_version()
        with anyio.fail_after(5):
            while not reaped(pid):           # reaped by us: no zombie left
                await anyio.sleep(0.01)
    finally:
        with anyio.fail_after(5):
            await conn.close()
    assert conn.state is aiovirt.ConnectionState.CLOSED
    assert ssh_children() - before == set()
    await strays.check()


# -- 2. the sshd session stopped -------------------------------------------------------------------
@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def session_of(sshd, before: dict[int, str]) -> list[int]:
    """The sshd processes serving the session opened since ``before`` was taken."""
    assert sshd.pid is not None
    return [pid for pid, name in children_of(sshd.pid).items()
            if pid not in before and name == "sshd"]


async def test_stopped_sshd_times_the_call_out_and_the_connection_survives(sshd, daemon,
                                                                         strays):
    """Designed behaviour: a call's timeout is the call's own; the connection keeps its
    socket (the late reply is read and dropped) while keepalive still believes the server."""
    before_ssh, before_sshd = ssh_children(), children_of(sshd.pid)
    async with aiovirt.connect(sshd.uri(socket=daemon.socket_path), connect_timeout=LIMIT,
                               keepalive=(5, 5)) as conn:
        assert await conn.get_lib_version() == 9000000
        session = session_of(sshd, before_sshd)
        assert session, children_of(sshd.pid)
        with stopped(session):
            began = time.monotonic()
            with pytest.raises(CallTimeout, match="no reply within 0.5 s"):
                await conn.rpc.connect_get_lib_version(call_timeout=0.5)
            assert time.monotonic() - began < 1.5
            assert conn.is_alive
        with anyio.fail_after(10):           # the stopped session's backlog, then new calls
            assert await conn.get_lib_version() == 9000000
            assert isinstance(await conn.hostname(), str)
        assert conn.is_alive and conn.channels[0].in_flight == 0
    await wait_gone(ssh_children() - before_ssh)
    await strays.check()


async def test_stopped_sshd_past_the_keepalive_window_is_declared_dead(sshd, daemon, strays):
    """Past ``interval * (count + 1)`` without a word the connection is lost, exactly:
    the call waiting on it fails with ConnectionClosed naming keepalive, the ssh child is
    reaped."""
    interval, count = 0.3, 2
    before_ssh, before_sshd = ssh_children(), children_of(sshd.pid)
    conn = await aiovirt.connect(sshd.uri(socket=daemon.socket_path), connect_timeout=LIMIT,
                                 keepalive=(interval, count))
    try:
        assert await conn.get_lib_version() == 9000000
        [pid] = ssh_children() - before_ssh
        changes = conn.state_changes()
        with stopped(session_of(sshd, before_sshd)):
            began = time.monotonic()
            with anyio.fail_after(10), pytest.raises(ConnectionClosed,
                                                     match="did not answer keepalive"):
                await conn.get_lib_version()
            took = time.monotonic() - began
            # silence is counted from the last word received, a moment before ``began``
            assert took < interval * (count + 2) + 1, took
            with anyio.fail_after(5):
                lost = await changes.receive()
            assert lost.state is aiovirt.ConnectionState.LOST and "keepalive" in lost.reason
            assert not conn.is_alive
            with anyio.fail_after(5):
                while not reaped(pid):
                    await anyio.sleep(0.01)
    finally:
        with anyio.fail_after(5):
            await conn.close()
    await strays.check()


async def test_a_daemon_closing_the_tunnel_is_the_server_closing(sshd, own_daemon, strays):
    """A daemon stopped in good order closes its end: nc and then ssh exit 0, and the call
    under way is told the server closed the connection (not how ssh ended, which says
    nothing more)."""
    conn = await aiovirt.connect(sshd.uri(socket=own_daemon.socket_path, proxy="netcat"),
                                 connect_timeout=LIMIT, lanes=0)
    try:
        assert await conn.get_lib_version() == 9000000
        changes = conn.state_changes()
        await anyio.to_thread.run_sync(own_daemon.stop)
        with anyio.fail_after(10):
            lost = await changes.receive()
        assert lost.state is aiovirt.ConnectionState.LOST
        assert "the server closed the connection" in lost.reason, lost.reason
        assert "exited with status" not in lost.reason
    finally:
        with anyio.fail_after(5):
            await conn.close()
    await strays.check()


# -- 3. the daemon killed under a volume stream ----------------------------------------------------
@pytest.fixture
def doomed_daemon(own_daemon):
    """The test's own libvirtd (``tests/faults/conftest.py``), to kill; skips if it has no
    storage driver."""
    if "Name" not in own_daemon.virsh("pool-list", check=False):
        pytest.skip("the private libvirtd has no storage driver (virsh pool-list failed): "
                    f"{own_daemon.log_tail(5)}")
    return own_daemon


@contextlib.asynccontextmanager
async def doomed_pool(daemon, tmp_path):
    """``dir_pool`` on a daemon the test kills: the pool dies with the daemon's private
    state, so its clean-up can only meet a dead connection (that alone is let pass)."""
    pool = dir_pool(daemon, tmp_path)
    conn, p = await pool.__aenter__()
    try:
        yield conn, p
    except BaseException as exc:
        with contextlib.suppress(ConnectionClosed):
            await pool.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    with contextlib.suppress(ConnectionClosed):
        await pool.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def volume_on(daemon, pool, volume, lanes: int):
    """A new connection with ``lanes`` and its handle on ``volume``: with lanes a stream has
    a socket of its own, without it shares the main socket."""
    async with aiovirt.connect(daemon.uri("qemu", "/system"), lanes=lanes) as conn:
        found = await conn.lookup_storage_pool(name=pool.name)
        yield conn, await found.lookup_volume(volume.name)


async def after_the_loss(conn) -> None:
    """The connection itself is lost too: it says so, and calls fail at once."""
    with anyio.fail_after(5):
        while conn.is_alive:
            await anyio.sleep(0.005)
    with anyio.fail_after(2), pytest.raises(ConnectionClosed):
        await conn.get_lib_version()


@pytest.mark.parametrize("lanes", [4, 0], ids=["own-socket", "main-socket"])
async def test_killed_daemon_under_a_download(doomed_daemon, tmp_path, lanes, strays):
    size = 64 * MiB   # a sparse file: the daemon sends zeros, without an upload first
    async with doomed_pool(doomed_daemon, tmp_path) as (_, p):
        vol = await new_volume(p, size)
        async with volume_on(doomed_daemon, p, vol, lanes) as (conn, handle):
            stream = await handle.download()
            with anyio.fail_after(10):
                first = await stream.receive()            # under way
            assert isinstance(first, bytes) and first
            await anyio.to_thread.run_sync(doomed_daemon.kill)
            killed, after = time.monotonic(), 0
            with anyio.fail_after(10), pytest.raises(ConnectionClosed,
                                                     match="closed the connection|lost"):
                while True:              # what was already on its way, then the loss
                    item = await stream.receive()
                    after += len(item)   # type: ignore[arg-type]
            assert time.monotonic() - killed < 5
            assert after < size - len(first)   # the loss ended it, not the end of the data
            with anyio.fail_after(2):
                await stream.aclose()              # prompt, and raises nothing
            with pytest.raises(aiovirt.StreamClosed, match="the stream is closed"):
                await stream.receive()
            assert stream.serial not in stream.channel.protocol.streams
            await after_the_loss(conn)
    await strays.check()


@pytest.mark.parametrize("lanes", [4, 0], ids=["own-socket", "main-socket"])
async def test_killed_daemon_under_an_upload(doomed_daemon, tmp_path, lanes, strays):
    chunk = os.urandom(CHUNK)
    async with doomed_pool(doomed_daemon, tmp_path) as (_, p):
        vol = await new_volume(p, 64 * MiB)
        async with volume_on(doomed_daemon, p, vol, lanes) as (conn, handle):
            stream = await handle.upload()
            with anyio.fail_after(10):
                for _ in range(8):
                    await stream.send(chunk)           # under way
            await anyio.to_thread.run_sync(doomed_daemon.kill)
            killed = time.monotonic()
            with anyio.fail_after(10), pytest.raises(ConnectionClosed):
                for _ in range(248):                   # never more than the volume holds
                    await stream.send(chunk)
            assert time.monotonic() - killed < 5
            with anyio.fail_after(2):
                await stream.aclose()
            with pytest.raises(aiovirt.StreamClosed, match="the stream is closed"):
                await stream.send(chunk)
            await after_the_loss(conn)
    await strays.check()


# -- 4. a TLS peer that turns to garbage after the handshake ---------------------------------------
GARBAGE = b"GARBAGE: these bytes are no TLS record\r\n" * 8


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """The loopback PKI: the server's certificate and key, and the client's ``pkipath``."""
    config, pkipath = loopback_tls(tmp_path_factory.mktemp("pki"))
    return config["cert_file"], config["key_file"], pkipath


@contextlib.asynccontextmanager
async def garbage_after_handshake(tls_files, at: str) -> AsyncIterator[str]:
    """A fake libvirtd on a loopback port (in this event loop): a real TLS handshake (stdlib
    ``ssl``), the status byte, the RPC handshake (``fakepeer``); then, to the first other
    call, raw bytes straight on the TCP socket, outside any TLS record (``at="call"``).
    ``at="status"``: those bytes instead of the status byte.  Yields the URI."""
    cert, key, pkipath = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def garbage(stream: TLSStream) -> bool:
        await stream.transport_stream.send(GARBAGE)
        with anyio.move_on_after(10):        # until the client hangs up
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while await stream.transport_stream.receive():
                    pass
        return False

    async def after_handshake(stream: anyio.abc.ByteStream, msg: Message) -> bool:
        assert isinstance(stream, TLSStream)
        return await garbage(stream)

    async def serve(listener: anyio.abc.SocketListener) -> None:
        async with await listener.accept() as tcp:
            stream = await TLSStream.wrap(tcp, server_side=True, ssl_context=context,
                                          standard_compatible=False)
            if at == "status":
                await garbage(stream)
                return
            await stream.send(b"\x01")      # go on: the client's certificate is fine
            await serve_stream(stream, after_handshake)

    [listener] = (await anyio.create_tcp_listener(local_host="127.0.0.1")).listeners
    async with listener, anyio.create_task_group() as group:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        group.start_soon(serve, listener)
        yield f"test+tls://localhost:{port}/default?pkipath={pkipath}"
        group.cancel_scope.cancel()


@pytest.mark.parametrize("native", [True, False], ids=["asyncio-protocol", "anyio-stream"])
async def test_garbage_instead_of_tls_records_fails_the_call(tls_files, native, strays):
    async with garbage_after_handshake(tls_files, "call") as uri:
        with anyio.fail_after(10):
            conn = await aiovirt.connect(uri, native_transport=native)
        try:
            began = time.monotonic()
            # the connection is lost, as for any broken socket, and the error says TLS broke
            with anyio.fail_after(5), pytest.raises(
                    ConnectionClosed, match=r"main socket: connection lost: TLS error from "
                                            r"localhost: \[SSL: WRONG_VERSION_NUMBER\]"):
                await conn.get_lib_version()
            assert time.monotonic() - began < 2
            assert not conn.is_alive
            with pytest.raises(ConnectionClosed):
                await conn.get_lib_version()
        finally:
            with anyio.fail_after(5):
                await conn.close()
    await strays.check()


@pytest.mark.parametrize("native", [True, False], ids=["asyncio-protocol", "anyio-stream"])
async def test_garbage_instead_of_the_status_byte_fails_the_connect(tls_files, native, strays):
    async with garbage_after_handshake(tls_files, "status") as uri:
        began = time.monotonic()
        # not a refusal of our certificate (AuthenticationError): the peer is not speaking TLS
        with anyio.fail_after(10), pytest.raises(TransportError) as caught:
            await aiovirt.connect(uri, native_transport=native)
        assert time.monotonic() - began < 2
        assert type(caught.value) is aiovirt.ConnectionFailed, caught.value
        assert re.search(r"TLS handshake with localhost:\d+ failed: WRONG_VERSION_NUMBER",
                         str(caught.value)), caught.value
    await strays.check()
