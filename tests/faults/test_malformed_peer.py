"""The malformed-server catalogue: a fake daemon that breaks the protocol in one way each,
right after the handshake.  Every call fails with ``ProtocolError`` or ``ConnectionClosed``
(never another type) within a bound, the connection closes its socket at once, and closing it
leaves no task behind.  Frames a peer may legitimately send (PINGs, even a flood of them;
data for a stream nobody reads) leave the connection working."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable

import anyio
import anyio.abc
import pytest

import aiovirt
from aiovirt.protocol import keepalive, qemu, remote
from aiovirt.protocol.xdr import XdrError, encode
from aiovirt.protocol.wire import (CONTINUE, ERROR, MESSAGE, OK, REPLY, REPLY_WITH_FDS, STREAM,
                          STREAM_HOLE, Message, encode_message)

from aiovirt.testing.fakepeer import fake_daemon, reply_to

LIBVER = remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION
FAIL_BOUND = 1.0     # seconds from the call to its failure (generous: a loaded CI machine)


def version_reply(msg: Message) -> bytes:
    return reply_to(msg, remote.ConnectGetLibVersionRet(9000000))


def frame(msg: Message, **fields: int | bytes) -> bytes:
    """The right reply to ``msg`` with some header fields (or the payload) replaced."""
    good = {"program": remote.PROGRAM, "procedure": msg.procedure, "type_": REPLY,
            "serial": msg.serial, "status": OK, "payload": version_reply(msg)[28:],
            "version": remote.VERSION}
    good.update(fields)
    return encode_message(**good)  # type: ignore[arg-type]


def raw(length: int, rest: bytes = b"") -> bytes:
    return struct.pack(">I", length) + rest


# name -> (what the peer sends for the call, whether it then closes, error type, message)
CATALOGUE: dict[str, tuple[Callable[[Message], bytes], bool, type[Exception], str]] = {
    "truncated frame, then close": (lambda m: version_reply(m)[:2], True,
                                    aiovirt.ConnectionClosed, "closed"),
    "header only, then close": (lambda m: version_reply(m)[:30], True,
                                aiovirt.ConnectionClosed, "closed"),
    "length below the header": (lambda m: raw(12, bytes(24)), False,
                                aiovirt.ProtocolError, "shorter than the 28-byte header"),
    "length zero": (lambda m: raw(0), False, aiovirt.ProtocolError, "shorter"),
    "length over 32 MiB": (lambda m: raw((32 << 20) + 1, bytes(24)), False,
                           aiovirt.ProtocolError, "exceeds the limit"),
    "length 4 GiB - 1": (lambda m: raw(0xFFFFFFFF), False, aiovirt.ProtocolError,
                         "exceeds the limit"),
    "reply to an unknown serial": (lambda m: frame(m, serial=m.serial + 1000), False,
                                   aiovirt.ProtocolError, "no call waiting"),
    "reply with the wrong procedure": (lambda m: frame(m, procedure=LIBVER + 1), False,
                                       aiovirt.ProtocolError, "procedure"),
    "reply from the wrong program": (lambda m: frame(m, program=qemu.PROGRAM), False,
                                     aiovirt.ProtocolError, "program"),
    "reply with the wrong version": (lambda m: frame(m, version=remote.VERSION + 1), False,
                                     aiovirt.ProtocolError, "version"),
    "reply with a bad status": (lambda m: frame(m, status=7), False, aiovirt.ProtocolError,
                                "bad status 7"),
    "reply payload truncated": (lambda m: frame(m, payload=b"\0\0\0"), False,
                                aiovirt.ProtocolError, "connect_get_lib_version"),
    "reply payload too long": (lambda m: frame(m, payload=bytes(12)), False,
                               aiovirt.ProtocolError, "left over"),
    "error reply with a garbage remote_error": (
        lambda m: frame(m, status=ERROR, payload=b"\xff" * 9), False, aiovirt.ProtocolError,
        "remote_error"),
    "reply announcing too many file descriptors": (
        lambda m: frame(m, type_=REPLY_WITH_FDS,
                        payload=struct.pack(">I", 33) + version_reply(m)[28:]), False,
        aiovirt.ProtocolError, "33 file descriptors; at most 32"),
    "reply with file descriptors but no FD count": (
        lambda m: frame(m, type_=REPLY_WITH_FDS, payload=b""), False,
        aiovirt.ProtocolError, "no FD count"),
    "event with an unknown procedure": (
        lambda m: encode_message(remote.PROGRAM, 99999, MESSAGE, 1, OK), False,
        aiovirt.ProtocolError, "not an event"),
    "event too short to name its callback": (
        lambda m: encode_message(remote.PROGRAM,
                                 remote.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE,
                                 MESSAGE, 1, OK, b"\0\0"), False, aiovirt.ProtocolError,
        "lifecycle: 2-byte payload has no callback id"),
    "message from an unknown program": (lambda m: encode_message(0x12345678, 1, MESSAGE, 1, OK),
                                        False, aiovirt.ProtocolError, "0x12345678"),
    "unknown message type": (lambda m: frame(m, type_=9), False, aiovirt.ProtocolError,
                             "message type 9"),
    "keepalive with an unknown procedure": (
        lambda m: encode_message(keepalive.PROGRAM, 7, MESSAGE, 0, OK), False,
        aiovirt.ProtocolError, "keepalive procedure 7"),
    "server closes before replying": (lambda m: b"", True, aiovirt.ConnectionClosed, "closed"),
}


def active_tasks() -> set[asyncio.Task]:
    return {t for t in asyncio.all_tasks() if not t.done()}


async def no_task_left(before: set[asyncio.Task]) -> None:
    """Every task the connection started has ended (bounded wait: they end on close)."""
    with anyio.fail_after(2):
        while active_tasks() - before:
            await anyio.sleep(0.01)


@pytest.mark.parametrize("case", list(CATALOGUE))
async def test_misbehaving_server(tmp_path, case):
    make, close_after, error, message = CATALOGUE[case]

    async def misbehave(stream: anyio.abc.ByteStream, msg: Message) -> bool:
        if msg.procedure == LIBVER:
            data = make(msg)
            if data:
                await stream.send(data)
            return not close_after
        return True

    before = active_tasks()
    async with fake_daemon(tmp_path / "fake.sock", misbehave) as peer:
        conn = await aiovirt.connect(peer.uri)
        try:
            began = time.monotonic()
            with anyio.fail_after(5):
                with pytest.raises(error, match=message) as caught:
                    await conn.get_lib_version()
            took = time.monotonic() - began
            assert type(caught.value) in (error, aiovirt.ProtocolError, XdrError,
                                          aiovirt.ConnectionClosed)
            assert took < FAIL_BOUND, took
            assert not conn.is_alive
            with pytest.raises(aiovirt.ConnectionClosed):    # and so is every later call
                await conn.get_lib_version()
            with anyio.fail_after(2):                         # our side closed its socket
                await peer.finished.wait()
        finally:
            began = time.monotonic()
            await conn.close()
            assert time.monotonic() - began < 0.5            # no goodbye to a dead socket
    await no_task_left(before)


async def test_a_call_the_server_never_answers_times_out_and_the_next_works(tmp_path):
    ignored: list[int] = []

    async def ignore_first(stream: anyio.abc.ByteStream, msg: Message) -> bool:
        if msg.procedure == LIBVER:
            if not ignored:
                ignored.append(msg.serial)
            else:
                await stream.send(version_reply(msg))
        return True

    before = active_tasks()
    async with fake_daemon(tmp_path / "fake.sock", ignore_first) as peer:
        async with aiovirt.connect(peer.uri) as conn:
            began = time.monotonic()
            with anyio.move_on_after(0.3) as scope:
                await conn.get_lib_version()
            assert scope.cancelled_caught and time.monotonic() - began < 1.0
            with anyio.fail_after(2):
                assert await conn.get_lib_version() == 9000000
            assert conn.is_alive and len(ignored) == 1
    await no_task_left(before)


async def test_a_flood_of_pings_is_answered_and_the_call_still_returns(tmp_path):
    flood = 5000
    pongs = 0

    async def ping_flood(stream: anyio.abc.ByteStream, msg: Message) -> bool:
        nonlocal pongs
        if msg.program == keepalive.PROGRAM and msg.procedure == keepalive.KEEPALIVE_PROC_PONG:
            pongs += 1
        elif msg.procedure == LIBVER:
            ping = encode_message(keepalive.PROGRAM, keepalive.KEEPALIVE_PROC_PING, MESSAGE,
                                  0, OK)
            await stream.send(ping * flood + version_reply(msg))
        return True

    async with fake_daemon(tmp_path / "fake.sock", ping_flood) as peer:
        async with aiovirt.connect(peer.uri) as conn:
            began = time.monotonic()
            with anyio.fail_after(5):
                assert await conn.get_lib_version() == 9000000
            took = time.monotonic() - began
            with anyio.fail_after(5):
                while pongs < flood:
                    await anyio.sleep(0.01)
            assert pongs == flood and conn.channels[0].pings_received == flood
            assert conn.is_alive and took < 2.0, took


async def test_stream_data_for_no_stream_is_dropped(tmp_path):
    """Data for a stream nobody reads (its call abandoned) is read and dropped: the call
    behind it is answered and the connection stays up."""
    async def stray_stream(stream: anyio.abc.ByteStream, msg: Message) -> bool:
        if msg.procedure == LIBVER:
            stray = encode_message(remote.PROGRAM, remote.REMOTE_PROC_DOMAIN_OPEN_CONSOLE,
                                   STREAM, 4242, CONTINUE, b"console output")
            await stream.send(stray + version_reply(msg))
        return True

    async with fake_daemon(tmp_path / "fake.sock", stray_stream) as peer:
        async with aiovirt.connect(peer.uri) as conn:
            with anyio.fail_after(2):
                assert await conn.get_lib_version() == 9000000
                assert await conn.get_lib_version() == 9000000
            assert conn.is_alive


async def test_a_garbage_event_body_fails_its_reader_and_nothing_else(tmp_path):
    """Events are decoded when read: a malformed body for a subscribed callback raises
    ``ProtocolError`` naming the event from the iteration that reaches it; the connection
    and the subscription stay up (the packet was framed), the next event arrives, calls work.
    The same garbage for a callback nobody subscribed to is dropped unread."""
    callback = 5
    dom = remote.NonnullDomain("vm", bytes(range(16)), 1)
    lifecycle = remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE]

    def event(callback_id: int, payload: bytes | None = None) -> bytes:
        """A lifecycle event for ``callback_id``, or one with this raw ``payload``."""
        if payload is None:
            payload = encode(lifecycle.encode_ret, remote.DomainEventCallbackLifecycleMsg(
                callback_id, remote.DomainEventLifecycleMsg(dom, 2, 0)), "event")
        return encode_message(remote.PROGRAM, lifecycle.number, MESSAGE, 1, OK, payload)

    async def peer(stream: anyio.abc.ByteStream, msg: Message) -> bool:
        if msg.procedure == remote.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY:
            await stream.send(reply_to(msg, remote.ConnectDomainEventCallbackRegisterAnyRet(
                callback)))
        elif msg.procedure == remote.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY:
            await stream.send(reply_to(msg))
        elif msg.procedure == LIBVER:
            garbage = b"\xff" * 9
            await stream.send(event(0, struct.pack(">i", callback + 1) + garbage) +
                              event(0, struct.pack(">i", callback) + garbage) +
                              event(callback) + version_reply(msg))
        return True

    before = active_tasks()
    async with fake_daemon(tmp_path / "fake.sock", peer) as daemon:
        async with aiovirt.connect(daemon.uri) as conn, conn.domain_events() as events:
            with anyio.fail_after(5):
                assert await conn.get_lib_version() == 9000000
                with pytest.raises(aiovirt.ProtocolError,
                                   match="event domain_event_callback_lifecycle"):
                    async for _ in events:
                        pass
                got = await events.__aiter__().__anext__()   # iterating again goes on
            assert (got.domain.name, int(got.event)) == ("vm", 2)
            assert events.buffered == 0 and conn.is_alive
            with anyio.fail_after(5):
                assert await conn.get_lib_version() == 9000000
    await no_task_left(before)


_UP, _DOWN = remote.REMOTE_PROC_STORAGE_VOL_UPLOAD, remote.REMOTE_PROC_STORAGE_VOL_DOWNLOAD
_VOL = remote.NonnullStorageVol("pool", "vol", "key")


def _stream_packet(procedure: int, serial: int, payload: bytes = b"", kind: int = STREAM,
                   status: int = CONTINUE) -> bytes:
    return encode_message(remote.PROGRAM, procedure, kind, serial, status, payload)


async def _open(conn: aiovirt.Connection, procedure: int, **options):
    from aiovirt.client.streams import open_stream
    args = (remote.StorageVolUploadArgs if procedure == _UP else
            remote.StorageVolDownloadArgs)(_VOL, 0, 0, 0)
    return (await open_stream(conn, remote.PROCEDURES[procedure], args, own_socket=False,
                              **options))[1]


@pytest.mark.parametrize("case", ["upload fed data", "data before the reply"])
async def test_stream_data_nobody_can_take_fails_the_stream_not_the_socket(tmp_path, case):
    """Data the server sends on an upload, or (1.5 MiB) before it answers the call that
    opens a download, used to fill the stream's buffer and stop the socket for good (every
    later call on it hung): now it fails that stream with ``ProtocolError``."""
    procedure = _UP if case == "upload fed data" else _DOWN

    async def peer(stream: anyio.abc.ByteStream, msg: Message) -> bool:
        if msg.procedure == procedure and msg.type == 0:
            junk = _stream_packet(procedure, msg.serial, b"j" * 262144) * 6
            await stream.send(reply_to(msg) + junk if procedure == _UP else junk + reply_to(msg))
        elif msg.procedure == LIBVER:
            await stream.send(version_reply(msg))
        return True

    async with fake_daemon(tmp_path / "fake.sock", peer) as fake:
        async with aiovirt.connect(fake.uri, lanes=0) as conn:
            with anyio.fail_after(5):
                stream = await _open(conn, procedure)
                assert await conn.get_lib_version() == 9000000   # the socket reads on
            assert not conn.channels[0].reading_paused
            words = "data on an upload stream" if procedure == _UP else \
                "over 1048576 bytes of stream data before answering the call that opens it"
            with pytest.raises(aiovirt.ProtocolError, match=words):
                if procedure == _UP:
                    await stream.send(b"x")
                else:
                    await stream.receive()
            assert conn.is_alive


async def test_stream_holes_count_against_the_buffer_and_are_checked(tmp_path):
    """Holes were buffered without bound (200,000 of them: 16 MB, the socket never paused)
    and a negative one reached the reader; ``send(Hole(2**63))`` raised struct.error."""
    count = 20000
    negative = struct.pack(">qI", -4096, 0)

    async def peer(stream: anyio.abc.ByteStream, msg: Message) -> bool:
        if msg.procedure == _DOWN and msg.type == 0:
            hole = _stream_packet(_DOWN, msg.serial, struct.pack(">qI", 4096, 0),
                                  kind=STREAM_HOLE)
            bad = _stream_packet(_DOWN, msg.serial, negative, kind=STREAM_HOLE)
            await stream.send(reply_to(msg) + hole * count + bad)
        elif msg.procedure == _UP and msg.type == 0:
            await stream.send(reply_to(msg))
        elif msg.procedure == _UP and msg.type == STREAM and msg.status != CONTINUE:
            await stream.send(_stream_packet(_UP, msg.serial, status=OK))   # abort confirmed
        return True

    async with fake_daemon(tmp_path / "fake.sock", peer) as fake:
        async with aiovirt.connect(fake.uri, lanes=0) as conn:
            with anyio.fail_after(5):
                stream = await _open(conn, _DOWN, sparse=True)
                while not conn.channels[0].reading_paused:   # the holes filled the buffer
                    await anyio.sleep(0.01)
            assert len(stream._items) < count
            seen = 0
            with anyio.fail_after(10), pytest.raises(aiovirt.ProtocolError,
                                                     match="malformed stream hole: length -4096"):
                async for item in stream:
                    assert item == aiovirt.Hole(4096)
                    seen += 1
            assert seen == count
            upload = await _open(conn, _UP, sparse=True)
            for bad in (2 ** 63, -1, 1.5):
                with pytest.raises(aiovirt.EncodeError, match="a hole's length must be an int "
                                   "from 0 to 2\\*\\*63 - 1"):
                    await upload.send(aiovirt.Hole(bad))
            await upload.aclose()
            with pytest.raises(aiovirt.StreamClosed, match="storage_vol_upload: the stream is "
                               "closed"):
                await upload.send(b"x")
            assert conn.is_alive


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
async def test_a_download_is_held_to_the_length_asked_for(tmp_path, sparse):
    """A daemon that sent more than a download's ``length`` (data, or holes on a sparse
    stream) had it all passed on; now the stream fails at the first byte over."""
    async def peer(stream: anyio.abc.ByteStream, msg: Message) -> bool:
        if msg.procedure == _DOWN and msg.type == 0:
            over = _stream_packet(_DOWN, msg.serial, struct.pack(">qI", 600, 0),
                                  kind=STREAM_HOLE) if sparse else \
                _stream_packet(_DOWN, msg.serial, b"y" * 600)
            await stream.send(reply_to(msg) + _stream_packet(_DOWN, msg.serial, b"x" * 600)
                              + over + _stream_packet(_DOWN, msg.serial))
        elif msg.procedure == _DOWN and msg.type == STREAM and msg.status != CONTINUE:
            await stream.send(_stream_packet(_DOWN, msg.serial, status=OK))
        elif msg.procedure == LIBVER:
            await stream.send(version_reply(msg))
        return True

    from aiovirt.api.streams import vol_download
    async with fake_daemon(tmp_path / "fake.sock", peer) as fake:
        async with aiovirt.connect(fake.uri, lanes=0) as conn:
            with anyio.fail_after(5):
                stream = await vol_download(conn, _VOL, 0, 1000, sparse, 0)
                assert await stream.receive() == b"x" * 600
                with pytest.raises(aiovirt.ProtocolError, match="storage_vol_download: the "
                                   "server sent 1200 bytes or more, over the 1000 asked for"):
                    await stream.receive()
                await stream.aclose()
                assert await conn.get_lib_version() == 9000000
                unbounded = await vol_download(conn, _VOL, 0, 0, sparse, 0)   # 0: to the end
                assert len(await read_all_of(unbounded)) == 2
            assert conn.is_alive


async def read_all_of(stream) -> list:
    return [item async for item in stream]


async def test_two_readers_of_a_download_both_see_its_end(tmp_path):
    """The reader that did not run the end-of-stream handshake used to get
    ``anyio.ClosedResourceError`` instead of the end of its ``async for``."""
    async def peer(stream: anyio.abc.ByteStream, msg: Message) -> bool:
        if msg.procedure == _DOWN and msg.type == 0:
            await stream.send(reply_to(msg))
            await anyio.sleep(0.2)
            await stream.send(_stream_packet(_DOWN, msg.serial, b"x" * 100)
                              + _stream_packet(_DOWN, msg.serial))
        elif msg.procedure == _DOWN and msg.type == STREAM and msg.status == OK:
            await stream.send(_stream_packet(_DOWN, msg.serial, status=OK))
        return True

    async with fake_daemon(tmp_path / "fake.sock", peer) as fake:
        async with aiovirt.connect(fake.uri, lanes=0) as conn:
            stream = await _open(conn, _DOWN)
            got: list[int] = []

            async def reader() -> None:
                async for chunk in stream:
                    got.append(len(chunk))   # type: ignore[arg-type]

            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    group.start_soon(reader)
                    group.start_soon(reader)
            assert got == [100]
            assert conn.is_alive


_CB = 7
_DOM = remote.NonnullDomain("vm", bytes(range(16)), 1)
_LIFE = remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE]
_REBOOT = remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_REBOOT]


def _lifecycle(kind: int) -> bytes:
    return encode_message(remote.PROGRAM, _LIFE.number, MESSAGE, 1, OK, encode(
        _LIFE.encode_ret, remote.DomainEventCallbackLifecycleMsg(
            _CB, remote.DomainEventLifecycleMsg(_DOM, kind, 0)), "event"))


def _event_peer(events: Callable[[], bytes], deregistered: list[int], delay: float = 0.0):
    """A daemon that registers domain callbacks as ``_CB`` (after ``delay``) and sends
    ``events()`` before each getLibVersion reply."""
    async def peer(stream: anyio.abc.ByteStream, msg: Message) -> bool:
        if msg.procedure == remote.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY:
            await anyio.sleep(delay)
            await stream.send(reply_to(msg, remote.ConnectDomainEventCallbackRegisterAnyRet(
                _CB)))
        elif msg.procedure == remote.REMOTE_PROC_CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY:
            deregistered.append(msg.serial)
            await stream.send(reply_to(msg))
        elif msg.procedure == LIBVER:
            await stream.send(events() + version_reply(msg))
        return True
    return peer


async def test_two_readers_starting_one_subscription_register_it_once(tmp_path):
    """Two ``async for`` loops starting one subscription at once used to add it twice:
    every event came twice and the daemon's callback was never dropped."""
    deregistered: list[int] = []
    peer = _event_peer(lambda: b"".join(_lifecycle(i) for i in range(4)), deregistered, 0.1)
    async with fake_daemon(tmp_path / "fake.sock", peer) as fake:
        async with aiovirt.connect(fake.uri) as conn:
            events = conn.domain_events()
            got: list[int] = []

            async def reader() -> None:
                async for event in events:
                    got.append(int(event.event))

            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    group.start_soon(reader)
                    group.start_soon(reader)
                    while events.callback_id is None:
                        await anyio.sleep(0.01)
                    await conn.get_lib_version()
                    while len(got) < 4:
                        await anyio.sleep(0.01)
                    group.cancel_scope.cancel()
                while not deregistered:
                    await anyio.sleep(0.01)
            assert sorted(got) == [0, 1, 2, 3]
            assert events.callback_id is None and len(deregistered) == 1


async def test_iterating_again_right_after_break_keeps_the_subscription(tmp_path):
    """``break`` out of ``async for``, then ``async for`` again at once: the first loop's
    late clean-up used to unsubscribe the second loop, which then ended with no error."""
    deregistered: list[int] = []
    peer = _event_peer(lambda: _lifecycle(2), deregistered)
    async with fake_daemon(tmp_path / "fake.sock", peer) as fake:
        async with aiovirt.connect(fake.uri) as conn:
            events = conn.domain_events()
            second = []
            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    async def poke(count: int) -> None:   # once subscribed, count events
                        while events.callback_id is None:
                            await anyio.sleep(0.01)
                        for _ in range(count):
                            await conn.get_lib_version()

                    group.start_soon(poke, 1)
                    async for event in events:
                        break
                    group.start_soon(poke, 3)   # the first loop's clean-up comes meanwhile
                    async for event in events:   # (no await since the break)
                        second.append(event)
                        if len(second) == 3:
                            break
                while not deregistered:   # the second loop's end stops the subscription
                    await anyio.sleep(0.01)
            assert len(second) == 3 and len(deregistered) == 1


async def test_an_event_of_another_kind_for_a_callback_is_a_protocol_error(tmp_path):
    """A reboot event sent to a lifecycle subscription's callback id raised AttributeError
    from the iterator ('DomainEventRebootMsg' object has no attribute 'event')."""
    reboot = encode_message(remote.PROGRAM, _REBOOT.number, MESSAGE, 1, OK, encode(
        _REBOOT.encode_ret, remote.DomainEventCallbackRebootMsg(
            _CB, remote.DomainEventRebootMsg(_DOM)), "event"))
    peer = _event_peer(lambda: reboot + _lifecycle(2), [])
    async with fake_daemon(tmp_path / "fake.sock", peer) as fake:
        async with aiovirt.connect(fake.uri) as conn:
            async with conn.domain_events() as events:
                await conn.get_lib_version()
                iterator = aiter(events)
                with anyio.fail_after(5), pytest.raises(
                        aiovirt.ProtocolError, match="domain_event_callback_reboot event: "
                        "cannot be read as a domain event"):
                    await anext(iterator)
                with anyio.fail_after(5):   # the next one is read
                    assert int((await anext(aiter(events))).event) == 2
            assert conn.is_alive


@pytest.mark.parametrize("native", [True, False], ids=["asyncio", "anyio-streams"])
async def test_a_peer_that_pings_and_never_reads_cannot_pile_up_pongs(native):
    """Every PING queued a PONG in our write buffer: a peer that stopped reading and sent
    200,000 PINGs left 5.6 MB of PONGs (and on, without bound).  PONGs are now dropped while
    the socket is backed up."""
    import socket

    from aiovirt.client.dialers import dial_socket
    from aiovirt.protocol.wire import FrameDecoder
    from aiovirt.testing.fakepeer import handshake
    pings = 200_000
    ping = encode_message(keepalive.PROGRAM, keepalive.KEEPALIVE_PROC_PING, MESSAGE, 0, OK)
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):   # small kernel buffers: a backlog lands in user space
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    theirs.setblocking(False)
    flooded = anyio.Event()

    async def serve() -> None:
        stream = await anyio.abc.UNIXSocketStream.from_socket(theirs)
        frames = FrameDecoder()
        while True:   # the handshake, then PINGs and no more reading
            for msg in frames.feed(await stream.receive()):
                await handshake(stream, msg)
                if msg.procedure == remote.REMOTE_PROC_CONNECT_OPEN:
                    for _ in range(pings // 10000):
                        await stream.send(ping * 10000)
                    flooded.set()
                    await anyio.sleep(60)

    async def dialer(uri, spawn, native):
        spawn(serve, "peer")
        return await dial_socket(ours, spawn, native)

    try:
        async with aiovirt.connect("test:///default", dialer=dialer, lanes=0, keepalive=None,
                                   native_transport=native) as conn:
            channel = conn.channels[0]
            with anyio.fail_after(30):
                await flooded.wait()
                while channel.pings_received < pings:
                    await anyio.sleep(0.01)
            transport = channel.transport
            unsent = getattr(transport, "_unsent", None)
            if unsent is None:
                unsent = transport._transport.get_write_buffer_size()
            assert unsent < 2 << 20, unsent
            channel.fail(aiovirt.ConnectionClosed("the test is over"))
    finally:
        theirs.close()
