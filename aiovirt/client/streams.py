"""Streams: the byte streams libvirt opens with a call (volume upload/download, screenshots,
consoles, channels).

A stream is bound to the serial of the call that opened it; data then flows as STREAM
packets with that serial.  A download ends with an empty STREAM/CONTINUE, then the client
sends STREAM/OK and waits for the server's; an upload ends with the client's STREAM/OK
answered the same way; either side aborts with STREAM/ERROR (libvirt's
``virnetclientstream.c`` and ``remote_daemon_stream.c``).

Flow control: libvirt has no stream window, the server just sends.  A stream keeps at most
``buffer_limit`` bytes unread; beyond that its channel stops reading the socket (every
backend: asyncio's transport pauses, anyio's reader task waits), so the kernel's socket
buffers fill and the daemon waits, and reading resumes once the
consumer has taken half of it.  While paused the channel keeps pinging so the daemon's
keepalive stays content.  Sending waits while the socket's send buffer (asyncio) or the
writer task's queue (other backends, above 1 MiB) is full.  Streams
opened through ``open_stream`` get a socket of their own, so a paused stream holds up no
other call (on a connection without lanes they share the main socket).
"""

from __future__ import annotations

import contextlib
import struct
import weakref
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio

from ..errors import (AiovirtError, ConnectionClosed, EncodeError, LibvirtError, ProtocolError,
                      TransportError, UsageError)
from ..protocol.wire import CONTINUE, ERROR, OK, STREAM_HOLE, StreamMessage
from ..protocol.xdr import ProcedureInfo
from .channel import Channel
from .offloop import OnLoop, stepping

__all__ = ["CHUNK", "Hole", "Stream", "StreamBroken", "StreamClosed", "open_stream"]

CHUNK = 256 * 1024                    # libvirt's stream packet payload (LEGACY_PAYLOAD_MAX)
_HOLE = struct.Struct(">qI")          # virNetStreamHole {hyper length; unsigned int flags}
_CLOSE_TIMEOUT = 10.0                 # how long an abort or finish waits for the server
# streams the daemon only writes to (a console or channel stream goes both ways, though the
# protocol marks it "read")
_READ_ONLY = frozenset({"storage_vol_download", "domain_screenshot"})
_HOLE_COST = 64                       # what a buffered hole counts against ``buffer_limit``
_HOLE_MAX = (1 << 63) - 1             # a hole's length is an XDR hyper


class StreamClosed(UsageError, anyio.ClosedResourceError):
    """A stream used after it was finished or aborted (``aclose``, leaving ``async with``).
    Also anyio's ``ClosedResourceError``, as for any anyio stream."""


class StreamBroken(TransportError, anyio.BrokenResourceError):
    """The server ended the stream (or it failed): nothing more can be sent on it.  Also
    anyio's ``BrokenResourceError``."""


@dataclass(frozen=True, slots=True)
class Hole:
    """A run of ``length`` unallocated bytes in a sparse stream."""

    length: int


class Stream:
    """One libvirt stream: ``send``, ``receive``, ``aclose`` and ``async for``.

    ``receive`` returns bytes (and ``Hole`` values on a sparse stream) and raises
    ``anyio.EndOfStream`` after the end-of-stream handshake; a stream used after it was
    closed raises ``StreamClosed``, one the server ended ``StreamBroken``.  Leaving ``async with`` normally
    finishes an upload (``finish``) or a download read to its end; otherwise, an exception, ``aclose`` or cancellation aborts the
    stream on the daemon.  The connection stays usable either way."""

    def __init__(self, channel: Channel, procedure: ProcedureInfo, *, sparse: bool = False,
                 owns_channel: bool = False, buffer_limit: int = 4 * CHUNK,
                 limit: int | None = None) -> None:
        self.channel = channel
        self.procedure = procedure
        self.sparse = sparse
        # the most the server may send, holes included (a download's ``length``); None: any
        self.limit = limit
        self._received = 0
        self.serial = 0
        self.buffer_limit = buffer_limit
        self._owns_channel = owns_channel
        self._items: deque[bytes | Hole] = deque()
        self._buffered = 0
        self._arrived = anyio.Event()
        self._eof = False              # the server sent its empty CONTINUE
        self._server_done = False      # the server sent OK or ERROR: its side is gone
        self._server_done_event = anyio.Event()
        self._error: BaseException | None = None
        self._closed = False           # ours: finished or aborted
        self._finished = False         # ended by the end-of-stream handshake, not aborted
        self.reply: Any = None         # the opening call's reply slot (``Channel.open_stream``)
        self._dropped: weakref.finalize | None = None   # aborts it if it is collected open

    # -- what the channel delivers --------------------------------------------------------
    def deliver(self, message: StreamMessage) -> None:
        """Take one STREAM or STREAM_HOLE message (called by the channel)."""
        if message.status == CONTINUE:
            if self._closed:
                return   # data still in flight after our abort
            if message.payload and self.procedure.stream == "write":
                self.fail(ProtocolError(f"{self.procedure.name}: the server sent data on an "
                                        "upload stream"))
                return
            if message.type == STREAM_HOLE:
                if not self.sparse:
                    self.fail(ProtocolError("the server sent a hole on a stream opened "
                                            "without sparse=True"))
                    return
                if len(message.payload) != _HOLE.size:
                    self.fail(ProtocolError("malformed stream hole"))
                    return
                length, _flags = _HOLE.unpack(message.payload)
                if length < 0:
                    self.fail(ProtocolError(f"malformed stream hole: length {length}"))
                    return
                if not self._within(length):
                    return
                self._items.append(Hole(length))
                self._buffered += _HOLE_COST
            elif message.payload:
                if not self._within(len(message.payload)):
                    return
                self._items.append(message.payload)
                self._buffered += len(message.payload)
            else:
                self._eof = True
            if self._buffered > self.buffer_limit:
                reply = self.reply
                if reply is not None and not reply.done():
                    # nobody holds the stream yet: stopping the socket would wait for ever
                    self._items.clear()
                    self._buffered = 0
                    self.fail(ProtocolError(
                        f"{self.procedure.name}: the server sent over {self.buffer_limit} "
                        "bytes of stream data before answering the call that opens it"))
                    return
                self.channel.pause_reading()
        else:
            if message.status == ERROR and self._error is None:
                self._error = message.error or ProtocolError("stream error without details")
            elif message.status not in (OK, ERROR):
                self._error = ProtocolError(f"stream message with bad status "
                                            f"{message.status}")
            self._server_done = True
            self._server_done_event.set()
            self.channel.end_stream(self.serial)
        self._wake()

    def _within(self, count: int) -> bool:
        """Count ``count`` more bytes from the server; past ``limit`` the stream fails
        (False): the reader asked for that much and no more."""
        self._received += count
        if self.limit is None or self._received <= self.limit:
            return True
        self.fail(ProtocolError(f"{self.procedure.name}: the server sent {self._received} "
                                f"bytes or more, over the {self.limit} asked for"))
        return False

    def fail(self, error: BaseException) -> None:
        """The channel died (or the stream broke the protocol): wake everyone with ``error``."""
        if self._error is None:
            self._error = error
        self._server_done = True
        self._server_done_event.set()
        self.channel.end_stream(self.serial)
        self.channel.resume_reading()
        self._wake()

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = anyio.Event()

    # -- reading ----------------------------------------------------------------------------
    async def receive(self) -> bytes | Hole:
        """The next chunk (or ``Hole``); ``anyio.EndOfStream`` at the end, ``LibvirtError``
        if the daemon failed the stream."""
        if self.procedure.stream == "write":   # nothing ever comes: it would wait for ever
            raise UsageError(f"{self.procedure.name}: this stream only sends (an upload); "
                             "send() the data, then finish()")
        while True:
            if self._items:
                item = self._items.popleft()
                self._buffered -= len(item) if type(item) is bytes else _HOLE_COST
                if self.channel.reading_paused and self._buffered <= self.buffer_limit // 2:
                    self.channel.resume_reading()
                return item
            if self._closed:
                if self._finished:   # another reader ran the end-of-stream handshake
                    raise anyio.EndOfStream
                raise StreamClosed(f"{self.procedure.name}: the stream is closed")
            if self._error is not None:
                await self._release()
                raise self._error
            if self._eof:
                await self._finish_handshake()
                raise anyio.EndOfStream
            if self._server_done:   # OK without an empty CONTINUE first: end all the same
                await self._release()
                raise anyio.EndOfStream
            await self._arrived.wait()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes | Hole:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    # -- writing ----------------------------------------------------------------------------
    async def send(self, data: bytes | Hole) -> None:
        """Send bytes (split into 256 KiB packets) or, on a sparse stream, a ``Hole``."""
        if self.procedure.name in _READ_ONLY:   # the daemon would abort the stream
            raise UsageError(f"{self.procedure.name}: this stream only receives (a "
                             "download); read it with receive() or async for")
        if not isinstance(data, bytes | bytearray | memoryview | Hole):
            raise TypeError(f"{self.procedure.name}: send() takes bytes or a Hole, not "
                            f"{type(data).__name__}")
        self._check_writable()
        channel, protocol = self.channel, self.channel.protocol
        if isinstance(data, Hole):
            if not self.sparse:
                raise ValueError("holes need a stream opened with sparse=True")
            length = data.length
            if type(length) is not int or not 0 <= length <= _HOLE_MAX:
                raise EncodeError(f"{self.procedure.name}: a hole's length must be an int "
                                  f"from 0 to 2**63 - 1, not {length!r:.40}")
            if data.length:
                channel.send_stream(protocol.stream_packet(
                    self.procedure, self.serial, CONTINUE, _HOLE.pack(data.length, 0),
                    STREAM_HOLE))
                await channel.drain()
            return
        view = memoryview(data).cast("B")
        for start in range(0, len(view), CHUNK):
            chunk = view[start:start + CHUNK]
            channel.send_stream_data(protocol.stream_header(
                self.procedure, self.serial, CONTINUE, len(chunk)), chunk)
            await channel.drain()
            self._check_writable()

    def _check_writable(self) -> None:
        if self._closed:
            raise StreamClosed(f"{self.procedure.name}: the stream is closed")
        if self._error is not None:
            raise self._error
        if self._server_done:
            raise StreamBroken(f"{self.procedure.name}: the server closed the stream")

    async def finish(self) -> None:
        """End an upload: STREAM/OK, then wait for the server's (its error is raised)."""
        if self._closed:
            return
        await self._finish_handshake()

    # -- ending -----------------------------------------------------------------------------
    async def _finish_handshake(self) -> None:
        await self._close_with(OK)
        if self._error is not None:
            raise self._error

    async def aclose(self) -> None:
        """Abort the stream on the daemon unless it already ended; never raises for that."""
        if self._closed:
            return
        try:
            await self._close_with(ERROR)
        except (LibvirtError, ConnectionClosed):
            pass

    async def _close_with(self, status: int) -> None:
        """Send OK (finish) or ERROR (abort) if the server's side is still open, wait for
        its answer (bounded), then forget the serial and release a socket of our own."""
        self._closed = True
        self._finished = self._eof and status == OK
        aborting = status == ERROR
        with anyio.CancelScope(shield=True):
            try:
                if not self._server_done and self.channel.closed is None:
                    self.channel.send_stream(self.channel.protocol.stream_packet(
                        self.procedure, self.serial, status))
                    self.channel.resume_reading()
                    with anyio.move_on_after(_CLOSE_TIMEOUT) as scope:
                        await self._server_done_event.wait()
                    if scope.cancelled_caught:
                        self.channel.fail(ConnectionClosed(
                            f"{self.channel.name} socket: no answer to closing stream "
                            f"{self.serial} within {_CLOSE_TIMEOUT:g} s"))
                        if not aborting and self._error is None:
                            self._error = ConnectionClosed("the server did not confirm "
                                                           "the end of the stream")
                if aborting and isinstance(self._error, LibvirtError):
                    self._error = None   # the daemon's "aborted at client request"
            finally:
                self._items.clear()
                self._buffered = 0
                self.channel.end_stream(self.serial)
                self.channel.resume_reading()
                await self._release()

    async def _release(self) -> None:
        if self._dropped is not None:   # ended: nothing to abort if it is collected
            self._dropped.detach()
        self.channel.end_stream(self.serial)
        self.channel.resume_reading()
        if self._owns_channel and self.channel.closed is None:
            self.channel.fail(ConnectionClosed(f"{self.channel.name} socket: stream done"))

    # -- context manager --------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None and not self._closed and self._error is None and (
                self._eof or self.procedure.stream == "write"):
            await self.finish()
        else:
            await self.aclose()


async def open_stream(conn: Any, procedure: ProcedureInfo, args: Any, *,
                      sparse: bool = False, buffer_limit: int = 4 * CHUNK,
                      own_socket: bool = True, limit: int | None = None
                      ) -> tuple[Any, Stream]:
    """Call the stream-opening ``procedure`` on ``conn`` (an ``RpcConnection``); returns its
    reply and the ``Stream``.  With lanes, the stream gets a socket of its own.  ``limit``:
    the most the server may send (holes included); more fails the stream."""
    if procedure.stream is None:
        raise TypeError(f"{procedure.name} does not open a stream")
    if stepping():   # a stream lives on the running loop
        return await OnLoop(open_stream(  # type: ignore[no-any-return]
            conn, procedure, args, sparse=sparse, buffer_limit=buffer_limit,
            own_socket=own_socket, limit=limit))
    if conn._closed:   # (a lane would be dialled for nothing)
        raise ConnectionClosed(f"{procedure.name}: the connection is closed")
    owns = bool(own_socket and conn.lanes)
    if owns:
        channel: Channel = await conn._open_channel("stream")
    else:
        channel = conn._main
        if channel is None or not conn.is_alive:
            raise ConnectionClosed("the connection is closed")
    stream = Stream(channel, procedure, sparse=sparse, owns_channel=owns,
                    buffer_limit=buffer_limit, limit=limit)
    try:
        _serial, reply = await channel.open_stream(procedure, args, stream)
    except BaseException:
        if owns:
            channel.fail(ConnectionClosed("stream socket: the opening call failed"))
        raise
    stream._dropped = weakref.finalize(stream, _dropped_unclosed, channel, procedure,
                                       stream.serial, owns)
    return reply, stream


def _dropped_unclosed(channel: Channel, procedure: ProcedureInfo, serial: int,
                      owns: bool) -> None:
    """A stream was collected without being closed (no ``async with``, no ``aclose``): abort
    it on the daemon and free its socket, on the channel's loop (a collection may run
    anywhere, another thread included)."""
    def abort() -> None:
        if channel.closed is not None:
            return
        if owns:   # closing its own socket ends the stream on the daemon
            channel.fail(ConnectionClosed(f"{channel.name} socket: its stream was dropped "
                                          "unclosed"))
            return
        channel.end_stream(serial)
        channel.resume_reading()
        with contextlib.suppress(AiovirtError):
            channel._write(channel.protocol.stream_packet(procedure, serial, ERROR))

    loop = channel._loop
    if loop is None:
        abort()
    elif not loop.is_closed():
        loop.call_soon_threadsafe(abort)
