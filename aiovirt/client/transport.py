"""Thin transports: move bytes between a socket and a channel, nothing more (``dialers``
makes them).

A transport pushes what it reads into its *sink* (``feed``, ``lost``) and writes without
waiting.  Under asyncio it is an ``asyncio.Protocol`` (no reader task, no per-read
registration); under any other anyio backend it wraps an anyio byte stream with a reader and
a writer task.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel


__all__ = ["AnyioTransport", "AsyncioTransport", "Sink", "Spawn", "Transport"]

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]], str], None]
_BROKEN = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class Sink(Protocol):
    """What a transport delivers to: bytes as they arrive, then the end of the stream."""

    def feed(self, data: bytes) -> None: ...

    def lost(self, exc: BaseException | None) -> None: ...


class Transport(Protocol):
    def attach(self, sink: Sink) -> None: ...

    def write(self, data: bytes, *, alone: bool = False) -> None:
        """Send ``data`` without waiting.  ``alone``: nothing else is in flight, so there is
        no burst to coalesce with and the bytes should leave at once."""


    def close(self) -> None: ...

    def pause_reading(self) -> bool:
        """Stop reading the socket (a consumer is behind); False if this transport cannot."""

    def resume_reading(self) -> None: ...

    async def drain(self) -> None:
        """Wait while the socket's send buffer is above its high-water mark."""


class AsyncioTransport(asyncio.Protocol):
    """asyncio's own callbacks: ``data_received`` feeds the sink directly."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._sink: Sink | None = None
        self._early: list[bytes] = []
        self._lost: tuple[BaseException | None] | None = None
        self._pending: list[bytes] | None = None
        self._writable: asyncio.Event | None = None   # made when the buffer first fills

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._sink is None:
            self._early.append(data)
        else:
            self._sink.feed(data)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sink is None:
            self._lost = (exc,)
        else:
            self._sink.lost(exc)

    # Transport
    def attach(self, sink: Sink) -> None:
        self._sink = sink
        for data in self._early:
            sink.feed(data)
        self._early.clear()
        if self._lost is not None:
            sink.lost(self._lost[0])

    def write(self, data: bytes, *, alone: bool = False) -> None:
        # Under load, writes made during one pass of the event loop leave in one send() at
        # its end: many concurrent callers cost one system call, not one each.  A lone call
        # leaves at once, saving a pass of the loop (latency at low concurrency).
        transport = self._transport
        if transport is None or transport.is_closing():
            raise anyio.BrokenResourceError("the socket is closed")
        if alone and self._pending is None:
            transport.write(data)
        elif self._pending is None:
            self._pending = [data]
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and self._transport is not None and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        if self._writable is not None:
            self._writable.set()

    # flow control: asyncio tells its protocol when the send buffer crosses its marks
    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()

    async def drain(self) -> None:
        await asyncio.sleep(0)   # let a coalesced write reach the socket first
        transport = self._transport
        while self._writable is not None and not self._writable.is_set() and \
                transport is not None and not transport.is_closing():
            await self._writable.wait()

    def pause_reading(self) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.pause_reading()
        return True

    def resume_reading(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()


class AnyioTransport:
    """Any anyio backend: a reader task feeds the sink, a writer task coalesces writes."""

    def __init__(self, stream: anyio.abc.ByteStream, spawn: Spawn) -> None:
        self._stream = stream
        self._spawn = spawn
        self._send, self._receive = anyio.create_memory_object_stream[bytes](math.inf)
        self._closing = False

    def attach(self, sink: Sink) -> None:
        async def read() -> None:
            try:
                while True:
                    sink.feed(await self._stream.receive(1 << 18))
            except anyio.EndOfStream:
                sink.lost(None)
            except _BROKEN as exc:
                sink.lost(exc)

        async def write() -> None:
            try:
                async for data in self._receive:
                    chunks = [data]
                    while True:
                        try:
                            chunks.append(self._receive.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    await self._stream.send(b"".join(chunks))
            except _BROKEN as exc:
                sink.lost(exc)

        self._spawn(read, "aiovirt reader")
        self._spawn(write, "aiovirt writer")

    def write(self, data: bytes, *, alone: bool = False) -> None:
        try:
            self._send.send_nowait(data)
        except anyio.ClosedResourceError:
            raise anyio.BrokenResourceError("the socket is closed") from None

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._send.close()

        async def close() -> None:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

        self._spawn(close, "aiovirt close")

    # flow control: the writer task takes everything and the reader always reads, so a slow
    # consumer's data is buffered (aiovirt.client.streams says so)
    def pause_reading(self) -> bool:
        return False

    def resume_reading(self) -> None:
        pass

    async def drain(self) -> None:
        await anyio.lowlevel.checkpoint()
