"""A scripted libvirtd stand-in on a UNIX socket, for misbehaviour a real daemon won't show."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from aiovirt.protocol import remote
from aiovirt.wire import OK, REPLY, FrameDecoder, Message, encode_message
from aiovirt.xdr import encode

P = remote.PROCEDURES
Handler = Callable[[anyio.abc.ByteStream, Message], Awaitable[bool]]


def reply_to(msg: Message, value=None) -> bytes:
    procedure = P[msg.procedure]
    payload = encode(procedure.encode_ret, value, procedure.name) if value is not None else b""
    return encode_message(remote.PROGRAM, msg.procedure, REPLY, msg.serial, OK, payload)


async def handshake(stream: anyio.abc.ByteStream, msg: Message) -> bool:
    """Answer the three handshake calls like a daemon without auth; False for anything else."""
    if msg.procedure == remote.REMOTE_PROC_AUTH_LIST:
        await stream.send(reply_to(msg, remote.AuthListRet([0])))
    elif msg.procedure == remote.REMOTE_PROC_CONNECT_SUPPORTS_FEATURE:
        await stream.send(reply_to(msg, remote.ConnectSupportsFeatureRet(1)))
    elif msg.procedure == remote.REMOTE_PROC_CONNECT_OPEN:
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
            for msg in frames.feed(data):
                if not await handshake(stream, msg):
                    if not await after_handshake(stream, msg):
                        return
