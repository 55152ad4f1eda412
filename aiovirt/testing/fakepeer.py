"""A scripted libvirtd stand-in on a UNIX socket, for misbehaviour a real daemon won't show."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc

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
        frames = FrameDecoder()
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            try:
                for msg in frames.feed(data):
                    if not await handshake(stream, msg):
                        if not await after_handshake(stream, msg):
                            return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return    # the client hung up while we answered


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
