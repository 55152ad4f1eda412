"""Thin transports: move bytes between a socket and a channel, nothing more (``dialers``
makes them).

A transport pushes what it reads into its *sink* (``feed``, ``lost``) and writes without
waiting.  Under asyncio it is an ``asyncio.Protocol`` (no reader task, no per-read
registration); under any other anyio backend it wraps an anyio byte stream with a reader and
a writer task.

File descriptors (SCM_RIGHTS) pass only on a UNIX socket under asyncio.  The asyncio transport
reads with plain ``recv``, which would make the kernel drop (close) descriptors that arrive, so
while a reply with FDs may come (``expect_fds``) the transport's own reading is paused and a
reader of ours (``loop.add_reader`` on a duplicate of the socket's descriptor) reads with
``recvmsg``, queueing each FD before the bytes that came with it reach the sink; the channel
takes them (``take_fds``) when the reply they belong to is complete.  ``send_with_fds`` writes a
packet, waits until it has left, then sends each FD as libvirt does: one zero byte carrying it;
writes made meanwhile are held back and follow.
"""

from __future__ import annotations

import array
import asyncio
import math
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel


__all__ = ["AnyioTransport", "AsyncioTransport", "NoFdPassing", "Sink", "Spawn", "Transport"]

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]], str], None]
_BROKEN = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
# the anyio transport's writer queue: drain() waits above the high mark until the low one
_HIGH_WATER, _LOW_WATER = 1 << 20, 1 << 18


class Sink(Protocol):
    """What a transport delivers to: bytes as they arrive, then the end of the stream."""

    def feed(self, data: bytes) -> None: ...

    def lost(self, exc: BaseException | None) -> None: ...

    def fail(self, error: BaseException) -> None:
        """End with ``error`` as it is (a transport that knows better than "connection
        lost", e.g. a tunnel whose command failed before the daemon answered)."""


class Transport(Protocol):
    def attach(self, sink: Sink) -> None: ...

    def write(self, data: bytes, alone: bool = False) -> None:
        """Send ``data`` without waiting.  ``alone``: nothing else is in flight, so there is
        no burst to coalesce with and the bytes should leave at once."""


    def close(self) -> None: ...

    def write_parts(self, header: bytes, payload: memoryview) -> None:
        """Send a header then a payload the caller may reuse once this returns: copied only
        when it cannot leave at once."""

    def pause_reading(self) -> bool:
        """Stop reading the socket (a consumer is behind); False if this transport cannot."""

    def resume_reading(self) -> None: ...

    async def drain(self) -> None:
        """Wait while the socket's send buffer is above its high-water mark."""

    def backed_up(self) -> bool:
        """Whether the send buffer is above its high-water mark now (the peer is not
        reading): what is only a sign of life (a PONG) need not be queued."""

    @property
    def fd_passing(self) -> str | None:
        """None if file descriptors can pass; else why not (names the transport)."""

    @property
    def raw_socket(self) -> socket.socket | None:
        """The socket to the daemon itself, when there is one (not through a tunnel): for
        asking the kernel who the peer is (``limits.read_max_client_requests``)."""

    async def send_with_fds(self, packet: bytes, fds: list[int]) -> None: ...

    def expect_fds(self, on: bool) -> None: ...

    def take_fds(self, count: int) -> list[int]: ...


class AsyncioTransport(asyncio.Protocol):
    """asyncio's own callbacks: ``data_received`` feeds the sink directly."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._sink: Sink | None = None
        self._early: list[bytes] = []
        self._lost: tuple[BaseException | None] | None = None
        self._ended = False   # connection_lost has come: asyncio's last word on the socket
        self._pending: list[bytes] | None = None
        self._call_soon: Callable[..., Any] | None = None   # the loop's, from connection_made
        self._writable: asyncio.Event | None = None   # made when the buffer first fills
        # FD passing (UNIX sockets): see the module's docstring
        self._unix_fd: int | None = None
        self._fd_socket: socket.socket | None = None  # a dup of the socket, for sendmsg/recvmsg
        self._fd_lock: asyncio.Lock | None = None
        self._held: list[bytes] | None = None          # writes waiting behind an FD send
        self._fds: list[int] = []                      # received, not taken yet
        self._expecting = 0                            # replies with FDs awaited
        self._reader_on = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused = False                           # pause_reading asked by the channel
        self._kind = "non-socket pipe"
        self._plain_fd: int | None = None   # a plain socket's (no TLS): see ``read_here``
        self._buffer: memoryview | None = None   # ``read_here`` reads into it

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        # the loop's call_soon, kept: get_running_loop() costs a getpid() system call on
        # Python 3.11, once per batch of writes
        try:
            self._call_soon = asyncio.get_running_loop().call_soon
        except RuntimeError:   # made outside the loop: looked up at the first batched write
            self._call_soon = None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            family = getattr(sock, "family", None)
            if family == socket.AF_UNIX:
                self._unix_fd = sock.fileno()
            if transport.get_extra_info("ssl_object") is None:
                self._plain_fd = sock.fileno()
            self._kind = {socket.AF_INET: "TCP", socket.AF_INET6: "TCP"}.get(
                family, str(family)) + " socket"

    def data_received(self, data: bytes) -> None:
        if self._sink is None:
            self._early.append(data)
        else:
            self._sink.feed(data)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        if self._sink is None:
            self._lost = (exc,)
        else:
            self._sink.lost(exc)

    @property
    def raw_socket(self) -> socket.socket | None:
        transport = self._transport
        return None if transport is None else transport.get_extra_info("socket")

    # Transport
    def attach(self, sink: Sink) -> None:
        self._sink = sink
        for data in self._early:
            sink.feed(data)
        self._early.clear()
        if self._lost is not None:
            sink.lost(self._lost[0])

    def _closed_for_good(self) -> bool:
        """(The transport gone or closing) True if writes must fail now.  asyncio marks a
        socket closing one pass before ``connection_lost`` brings the cause (a reset, the
        daemon's end): a write in that pass is dropped instead, and its caller failed by
        ``connection_lost`` with that cause rather than "the socket is closed"."""
        return self._transport is None or self._ended or self._sink is None

    def write(self, data: bytes, alone: bool = False) -> None:
        # Under load, writes made during one pass of the event loop leave in one send() at
        # its end: many concurrent callers cost one system call, not one each.  A lone call
        # leaves at once, saving a pass of the loop (latency at low concurrency).
        transport = self._transport
        if transport is None or transport.is_closing():
            if self._closed_for_good():
                raise anyio.BrokenResourceError("the socket is closed")
            return   # connection_lost is on its way: it fails this call with the cause
        if self._held is not None:     # an FD send is under way: its bytes must be adjacent
            self._held.append(data)
        elif alone and self._pending is None:
            transport.write(data)
        elif self._pending is None:
            self._pending = [data]
            call_soon = self._call_soon
            if call_soon is None:
                call_soon = self._call_soon = asyncio.get_running_loop().call_soon
            call_soon(self._flush)
        else:
            self._pending.append(data)

    def write_parts(self, header: bytes, payload: memoryview) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            if self._closed_for_good():
                raise anyio.BrokenResourceError("the socket is closed")
            return   # connection_lost is on its way (``_closed_for_good``)
        if self._pending is None:   # nothing batched: straight to asyncio, which copies
            transport.write(header)  # only what the socket does not take at once
            transport.write(payload)
        else:
            self._pending.append(header + bytes(payload))

    # Read and written by a thread that owns the loop while the loop does not run (the
    # blocking drop-in's lone caller, as libvirt's client reads its own reply)
    def fd_here(self) -> int | None:
        """Send batched writes now (their flush waits for a pass of the loop), then the
        socket's descriptor if ``read_here`` may read it: a plain socket, reading not
        paused, no FDs expected, still open; else None (only the loop reads it)."""
        if self._pending is not None and self._held is None:
            self._flush()
        fd = self._plain_fd
        if fd is None or self._paused or self._expecting or self._transport.is_closing():  # type: ignore[union-attr]
            return None
        return fd

    def read_here(self) -> bytes | None:
        """Read what the socket holds now, without the loop; None if nothing, b"" at its
        end.  The loop, when it runs again, finds those bytes gone and goes on."""
        buffer = self._buffer
        if buffer is None:   # made once: a new 256 KiB object per read costs more than it
            buffer = self._buffer = memoryview(bytearray(1 << 18))
        try:
            count = os.readv(self._plain_fd, (buffer,))   # type: ignore[arg-type]
        except (BlockingIOError, InterruptedError):
            return None
        return bytes(buffer[:count])

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and self._transport is not None and not self._transport.is_closing():
            if len(pending) == 1:
                self._transport.write(pending[0])
            else:   # our TLS layer encrypts each packet as it is; sockets join them
                self._transport.writelines(pending)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        if self._writable is not None:
            self._writable.set()
        self._stop_fd_reader()
        if self._fd_socket is not None:
            self._fd_socket.close()
            self._fd_socket = None
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    # FD passing ------------------------------------------------------------------------------
    @property
    def fd_passing(self) -> str | None:
        if self._unix_fd is None:
            return (f"file descriptors cannot pass over this connection's {self._kind} "
                    "(asyncio transport): FD passing needs a UNIX socket")
        return None

    def _socket(self) -> socket.socket:
        if self._fd_socket is None:
            if self._unix_fd is None:
                raise anyio.BrokenResourceError(self.fd_passing)
            self._fd_socket = socket.socket(fileno=os.dup(self._unix_fd))
            self._fd_socket.setblocking(False)
        return self._fd_socket

    async def send_with_fds(self, packet: bytes, fds: list[int]) -> None:
        """Write ``packet`` then each FD (a zero byte carrying it), nothing in between.  The
        FDs stay the caller's.  Interrupted half way, the connection is closed (the daemon
        would read the next bytes as FDs)."""
        if self._fd_lock is None:
            self._fd_lock = asyncio.Lock()
        async with self._fd_lock:
            transport = self._transport
            if transport is None or transport.is_closing():
                raise anyio.BrokenResourceError("the socket is closed")
            sock = self._socket()
            pending, self._pending = self._pending, None
            self._held = []
            sent = False
            try:
                if pending:
                    transport.write(b"".join(pending))
                transport.write(packet)
                sent = True
                for fd in fds:
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  array.array("i", [fd]).tobytes())]
                    while True:
                        # asyncio's buffer first: the FD byte must follow the packet
                        if transport.is_closing():
                            raise anyio.BrokenResourceError("the socket is closed")
                        if not transport.get_write_buffer_size():
                            try:
                                if sock.sendmsg([b"\0"], ancillary) == 1:
                                    break
                            except (BlockingIOError, InterruptedError):
                                pass
                        await asyncio.sleep(0.002)
                sent = False
            except BaseException:
                if sent:
                    self.close()
                raise
            finally:
                held, self._held = self._held, None
                if held and not transport.is_closing():
                    transport.write(b"".join(held))

    def expect_fds(self, on: bool) -> None:
        """A reply with FDs may come (True) or one fewer may (False): read with recvmsg
        while any may."""
        self._expecting += 1 if on else -1
        self._sync_reader()

    def take_fds(self, count: int) -> list[int]:
        """The next ``count`` received FDs (fewer if fewer came), now the caller's."""
        taken, self._fds = self._fds[:count], self._fds[count:]
        return taken

    def _sync_reader(self) -> None:
        transport = self._transport
        want = self._expecting > 0 and not self._paused and transport is not None and \
            not transport.is_closing() and self._sink is not None
        if want and not self._reader_on:
            transport.pause_reading()
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._socket().fileno(), self._read_fds)
            self._reader_on = True
        elif not want and self._reader_on:
            self._stop_fd_reader()
            if transport is not None and not transport.is_closing() and not self._paused:
                transport.resume_reading()

    def _stop_fd_reader(self) -> None:
        if self._reader_on:
            self._reader_on = False
            if self._fd_socket is not None and self._loop is not None:
                self._loop.remove_reader(self._fd_socket.fileno())

    def _read_fds(self) -> None:
        sock, sink = self._fd_socket, self._sink
        if sock is None or sink is None or not self._reader_on:
            return
        try:
            data, ancillary, flags, _ = sock.recvmsg(
                1 << 18, socket.CMSG_SPACE(4 * 32), getattr(socket, "MSG_CMSG_CLOEXEC", 0))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._stop_fd_reader()
            sink.lost(exc)
            return
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            self._stop_fd_reader()
            sink.lost(OSError("file descriptors received were truncated (MSG_CTRUNC)"))
            return
        if not data:
            self._stop_fd_reader()
            sink.lost(None)
            return
        sink.feed(data)

    # flow control: asyncio tells its protocol when the send buffer crosses its marks
    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()

    def backed_up(self) -> bool:
        """Whether the socket's send buffer is above asyncio's high-water mark."""
        return self._writable is not None and not self._writable.is_set()

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
        self._paused = True
        if self._reader_on:
            self._stop_fd_reader()     # the transport's own reading is already paused
        else:
            transport.pause_reading()
        return True

    def resume_reading(self) -> None:
        transport = self._transport
        self._paused = False
        if transport is not None and not transport.is_closing():
            if self._expecting > 0:
                self._sync_reader()
            else:
                transport.resume_reading()


class NoFdPassing:
    """The FD-passing part of a transport that cannot carry file descriptors: the channel
    checks ``fd_passing`` (the reason) before sending any."""

    fd_passing: Any

    async def send_with_fds(self, packet: bytes, fds: list[int]) -> None:
        raise anyio.BrokenResourceError(self.fd_passing)

    def expect_fds(self, on: bool) -> None:
        pass

    def take_fds(self, count: int) -> list[int]:
        return []


class AnyioTransport(NoFdPassing):
    """Any anyio backend: a reader task feeds the sink, a writer task coalesces writes."""

    def __init__(self, stream: anyio.abc.ByteStream, spawn: Spawn) -> None:
        self._stream = stream
        self._spawn = spawn
        self._send, self._receive = anyio.create_memory_object_stream[bytes](math.inf)
        self._closing = False
        self._paused: anyio.Event | None = None     # set to resume, while reading is paused
        self._unsent = 0                            # bytes queued for the writer task
        self._sent: anyio.Event | None = None       # drain() waits on it

    @property
    def raw_socket(self) -> socket.socket | None:
        sock: socket.socket | None = self._stream.extra(anyio.abc.SocketAttribute.raw_socket,
                                                        None)
        return sock

    def attach(self, sink: Sink) -> None:
        async def read() -> None:
            try:
                while True:
                    paused = self._paused
                    if paused is not None:
                        await paused.wait()
                        continue
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
                    data = b"".join(chunks)
                    await self._stream.send(data)
                    self._unsent -= len(data)
                    sent = self._sent
                    if sent is not None and self._unsent <= _LOW_WATER:
                        self._sent = None
                        sent.set()
            except _BROKEN as exc:
                sink.lost(exc)
            finally:
                self._receive.close()   # the queue's reading end: closed however the writer ends

        self._spawn(read, "aiovirt reader")
        self._spawn(write, "aiovirt writer")

    def write(self, data: bytes, alone: bool = False) -> None:
        try:
            self._send.send_nowait(data)
        except anyio.ClosedResourceError:
            raise anyio.BrokenResourceError("the socket is closed") from None
        self._unsent += len(data)

    def write_parts(self, header: bytes, payload: memoryview) -> None:
        self.write(header + bytes(payload))   # queued for the writer task: a copy it owns

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._send.close()
        self.resume_reading()
        sent, self._sent = self._sent, None
        if sent is not None:
            sent.set()

        async def close() -> None:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

        self._spawn(close, "aiovirt close")

    # flow control: the reader waits before its next receive while paused; drain() waits
    # while the writer task has more than _HIGH_WATER bytes queued
    def pause_reading(self) -> bool:
        if self._closing:
            return False
        if self._paused is None:
            self._paused = anyio.Event()
        return True

    def resume_reading(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.set()

    def backed_up(self) -> bool:
        """Whether the writer task has more than ``_HIGH_WATER`` bytes queued."""
        return self._unsent > _HIGH_WATER

    async def drain(self) -> None:
        if self._unsent <= _HIGH_WATER or self._closing:
            await anyio.lowlevel.checkpoint()
            return
        if self._sent is None:
            self._sent = anyio.Event()
        await self._sent.wait()

    # FD passing is not implemented on this path
    @property
    def fd_passing(self) -> str | None:
        return ("file descriptors cannot pass over the anyio stream transport (used off "
                "asyncio): FD passing needs the asyncio transport on a UNIX socket")


