"""A scripted libvirtd stand-in, for misbehaviour a real daemon won't show: on a UNIX socket
(``fake_daemon``) or in memory behind a dialer (``memory_dialer``)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc

from ..client.dialers import Dialer, dial_socket
from ..client.transport import Spawn, Transport
from ..client.uri import ConnectionURI
from ..protocol import remote
from ..protocol.wire import OK, REPLY, FrameDecoder, Message, encode_message
from ..protocol.xdr import encode

P = remote.PROCEDURES
Handler = Callable[[anyio.abc.ByteStream, Message], Awaitable[bool]]


def reply_to(msg: Message, value=None) -> bytes:
    procedure = P[msg.procedure]
    payload = encode(procedure.encode_ret, value, procedure.name) if value is not None else b""
    return encode_message(remote.PROGRAM, msg.procedure, REPLY, msg.serial, OK, payload)


async def handshake(stream: anyio.abc.ByteStream, msg: Message) -> bool:
    """Answer the three handshake calls and the closing CONNECT_CLOSE like a daemon without
    auth; False for anything else (keepalive included: its numbers overlap)."""
    if msg.program != remote.PROGRAM:
        return False
    if msg.procedure == remote.REMOTE_PROC_AUTH_LIST:
        await stream.send(reply_to(msg, remote.AuthListRet([0])))
    elif msg.procedure == remote.REMOTE_PROC_CONNECT_SUPPORTS_FEATURE:
        await stream.send(reply_to(msg, remote.ConnectSupportsFeatureRet(1)))
    elif msg.procedure in (remote.REMOTE_PROC_CONNECT_OPEN, remote.REMOTE_PROC_CONNECT_CLOSE):
        await stream.send(reply_to(msg))
    else:
        return False
    return True


async def serve_one(listener: anyio.abc.Listener, after_handshake: Handler) -> None:
    """Accept one client, do the handshake, then let ``after_handshake`` answer each call."""
    async with await listener.accept() as stream:
        await serve_stream(stream, after_handshake)


async def serve_stream(stream: anyio.abc.ByteStream, after_handshake: Handler) -> None:
    """Be the daemon on ``stream``: the handshake, then ``after_handshake`` for each call
    until it returns False or the client hangs up."""
    frames = FrameDecoder()
    while True:
        try:
            data = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        try:
            for msg in frames.feed(data):
                if not await handshake(stream, msg):
                    if not await after_handshake(stream, msg):
                        return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return    # the client hung up while we answered


def memory_dialer(after_handshake: Handler) -> Dialer:
    """A dialer for ``aiovirt.connect(uri, dialer=...)`` whose daemon is a fake peer in this
    process: each socket the connection opens (main, lanes) is one end of a socketpair, the
    peer serves the other end with ``after_handshake``.  No listening socket, no files."""
    async def dial(uri: ConnectionURI, spawn: Spawn, native: bool) -> Transport:
        ours, theirs = socket.socketpair()

        async def serve() -> None:
            theirs.setblocking(False)
            stream = await anyio.abc.UNIXSocketStream.from_socket(theirs)
            async with stream:
                await serve_stream(stream, after_handshake)

        spawn(serve, "aiovirt fake peer")
        return await dial_socket(ours, spawn, native)

    return dial


class FakeDaemon:
    """A running fake daemon: ``uri`` to connect to; ``finished`` is set once its client's
    socket has closed (or the peer gave up on it)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.finished = anyio.Event()


@contextlib.asynccontextmanager
async def fake_daemon(path: str | Path, after_handshake: Handler) -> AsyncIterator[FakeDaemon]:
    """A fake daemon on the UNIX socket ``path`` serving one client with ``after_handshake``
    (return False from it to close the client's socket).  Stopped when the block ends."""
    peer = FakeDaemon(f"test+unix:///default?socket={path}")

    async def serve(listener: anyio.abc.Listener) -> None:
        try:
            await serve_one(listener, after_handshake)
        finally:
            peer.finished.set()

    async with await anyio.create_unix_listener(str(path)) as listener:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, listener)
            yield peer
            tg.cancel_scope.cancel()
