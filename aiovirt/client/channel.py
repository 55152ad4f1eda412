"""One socket to libvirtd: in-flight cap, reply routing, keepalive and the handshake.

A ``Connection`` owns one or more channels (its lanes).  Each channel runs the sans-IO
``ClientProtocol`` over a thin transport.  Callers wait on their own reply; the transport feeds
incoming bytes to the channel, which routes replies by serial and events to the connection.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import Callable, Container, Sequence
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from ..errors import ConnectionClosed, ProtocolError, TransportError, UsageError
from ..protocol import remote
from ..protocol.wire import (ERROR, ClientProtocol, EventMessage, KeepaliveMessage, Reply,
                             StreamMessage)
from ..protocol.xdr import ProcedureInfo
from .auth import authenticate
from .backend import AnyioWaiter, asyncio_loop, waiter_factory
from .offloop import stepping
from .transport import Transport
from .uri import ConnectionURI, parse_uri

__all__ = ["DEFAULT_EVENT_BATCH_WINDOW", "Channel", "StreamSink"]

# How long a socket rests after a read that brought events (``connect(event_batch_window=)``),
# and the reads that count as a trickle (bigger ones mean a backlog: no rest).
# 5 ms: at a storm of ~5000 events/s a wake-up then reads ~25 of them, and the consumer's CPU
# per event falls to about a third of the 1 ms window's (benchmarks/README.md, events).
DEFAULT_EVENT_BATCH_WINDOW = 0.005
_BATCH_BELOW = 16384

_BROKEN = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_FEATURE_KEEPALIVE = 10
_P = remote.PROCEDURES


class StreamSink(Protocol):
    """What a channel delivers one stream's messages to (``aiovirt.client.streams.Stream``)."""

    serial: int
    reply: Any   # the opening call's reply slot (set once the call is sent)

    def deliver(self, message: StreamMessage) -> None: ...

    def fail(self, error: BaseException) -> None: ...


def _never() -> bool:
    """A transport's ``backed_up`` when it cannot tell."""
    return False


def _no_fd() -> None:
    """A transport's ``fd_here`` when it has none: only the loop reads it."""


def _succeeded(waiter: Any) -> bool:
    """Whether a reply slot holds a value (not an error, not a cancellation)."""
    if isinstance(waiter, AnyioWaiter):
        return waiter.done() and waiter._error is None
    return bool(waiter.done() and not waiter.cancelled() and waiter.exception() is None)


class Channel:
    """A socket, its protocol state, and the callers waiting on it.

    It is the transport's sink: ``feed`` routes what arrives, ``lost`` fails every caller.
    """

    def __init__(self, transport: Transport, *, max_in_flight: int,
                 on_event: Callable[[EventMessage], None], name: str = "main",
                 pipeline_depth: int | None = None, slow: Container[int] = (),
                 on_closed: Callable[[BaseException], None] | None = None,
                 batch_window: float = 0.0) -> None:
        self.name = name
        self.transport = transport
        self.protocol = ClientProtocol(max_in_flight=max_in_flight,
                                       pipeline_depth=pipeline_depth, slow=slow)
        self.max_in_flight = max_in_flight
        self._waiters: dict[int, Any] = {}   # serial -> the caller's reply slot
        self._new_waiter = waiter_factory()
        self._on_event = on_event
        self._on_closed = on_closed
        self.closed: BaseException | None = None
        # set while our side closes the connection: the daemon's own close that follows
        # our goodbye is then not reported as the server's doing
        self.closing: str | None = None
        self.last_received = time.monotonic()
        self.pings_received = 0
        self.pongs_received = 0
        self.keepalive_supported = False
        # what the keepalive loop runs with, (interval, count), and whether one is started
        self.keepalive: tuple[float, int] | None = None
        self.keepalive_running = False
        self._keepalive_changed: anyio.Event | None = None
        # serial -> the stream reading it; weak: a stream dropped unclosed is collected (and
        # its finalizer aborts it), not kept fed for the channel's life
        self._streams: weakref.WeakValueDictionary[int, StreamSink] = \
            weakref.WeakValueDictionary()
        self._fd_calls: set[int] = set()   # call_with_fds serials whose reply has not come
        self._fd_lock: anyio.Lock | None = None
        self.reading_paused = False
        # Event batching: after a read that brought events and no call is waiting, leave
        # the socket unread for ``batch_window`` seconds so a storm is read in batches (one
        # wake-up per batch instead of per event).  A call sent meanwhile ends it at once.
        self.batch_window = batch_window
        self._batch_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio_loop()
        # the transport's, if it can be read without the loop (``fd_here``)
        self._fd_here: Callable[[], int | None] = getattr(transport, "fd_here", _no_fd)
        self._backed_up: Callable[[], bool] = getattr(transport, "backed_up", _never)
        transport.attach(self)

    # -- calls ----------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Calls sent on this socket whose replies have not arrived (abandoned ones included:
        the server is still working on them)."""
        return self.protocol.pending

    @property
    def load(self) -> int:
        """Calls on the wire plus calls queued for a slot: what a new call would wait behind
        (``protocol.load`` without its call: every slow call asks it of every lane)."""
        protocol = self.protocol
        return len(protocol._pending) + len(protocol._queued)

    async def call(self, procedure: ProcedureInfo, args: Any = None) -> Any:
        """Send one call and wait for its reply; calls the protocol has no room for on the
        wire wait their turn in FIFO order.  Cancelling it at any point leaves the channel
        fully usable."""
        serial, waiter = self._send(procedure, args)
        try:
            return await waiter
        except BaseException:
            self._abandon(serial)
            raise

    def _abandon(self, serial: int) -> None:
        """The caller of ``serial`` left (cancelled): a queued call is dropped unsent; one on
        the wire keeps its slot until the late reply is read, so the wire never holds more
        of ours than the protocol allows."""
        if self._waiters.pop(serial, None) is not None:
            self.protocol.cancel(serial)

    def _left(self, serial: int, waiter: Any) -> None:
        """A queued call's slot was settled: if its caller left (cancelled), drop it unsent."""
        if waiter.cancelled():
            self._abandon(serial)

    def _send(self, procedure: ProcedureInfo, args: Any,
              sink: StreamSink | None = None) -> tuple[int, Any]:
        """Frame a call, register its reply slot (and the stream its serial opens, before
        any reply can arrive), and write it now unless it queued; returns serial and slot."""
        if self.closed is not None:
            raise ConnectionClosed(str(self.closed)) from self.closed
        loop = self._loop
        if loop is not None and not loop.is_running() and not stepping():
            raise UsageError(f"{procedure.name}: this connection belongs to the event loop it "
                             "was opened on, which is not running now (another asyncio.run()?):"
                             " open a connection in the event loop that uses it; nothing was "
                             "sent")
        if self._batch_timer is not None:
            self._end_batch()   # its reply must not wait for the batch window
        protocol = self.protocol
        serial, packet = protocol.call(procedure, args)
        if sink is not None:
            sink.serial = serial
            protocol.streams.add(serial)
            self._streams[serial] = sink
        waiter = self._new_waiter()
        self._waiters[serial] = waiter
        if packet is not None:
            try:
                # alone: this call is the only one on the wire (``protocol.pending == 1``)
                self.transport.write(packet, len(protocol._pending) == 1)
            except _BROKEN as exc:
                self.lost(exc)   # fails every caller, this one included
        return serial, waiter

    # -- the transport's sink -----------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Route everything ``data`` completes: replies to callers, events, keepalive; then
        send what the protocol has to say (PONGs, queued calls a reply made room for)."""
        self.last_received = time.monotonic()
        protocol = self.protocol
        try:
            items: list[Any] = protocol.receive(data)
        except ProtocolError as exc:
            self.fail(exc)
            return
        waiters, fd_calls = self._waiters, self._fd_calls
        events = pinged = False
        for item in items:
            kind = type(item)
            if kind is tuple:   # a successful reply: (serial, value)
                serial, value = item
                waiter = waiters.pop(serial, None)
                if fd_calls and serial in fd_calls:
                    if not self._fd_reply(Reply(serial, value), waiter):
                        return
                elif waiter is not None and not waiter.done():
                    waiter.set_result(value)
            elif kind is Reply:
                serial = item.serial
                waiter = waiters.pop(serial, None)
                if item.fds or serial in fd_calls:
                    if not self._fd_reply(item, waiter):
                        return
                elif waiter is not None and not waiter.done():
                    if item.error is not None:
                        waiter.set_exception(item.error)
                    else:
                        waiter.set_result(item.value)
            elif kind is EventMessage:
                events = True
                self._on_event(item)
            elif kind is KeepaliveMessage:
                if item.ping:
                    self.pings_received += 1
                    pinged = True
                else:
                    self.pongs_received += 1
            elif kind is StreamMessage:
                sink = self._streams.get(item.serial)
                if sink is not None:
                    sink.deliver(item)
        if pinged and self._backed_up():
            protocol.drop_pongs()   # the peer does not read what we send: PONGs would pile up
        if protocol._outgoing:   # (``data_to_send`` is only called when it has something)
            self._write(protocol.data_to_send())
        # a small read is events trickling in: rest so they gather; a big one is a backlog,
        # read on at once
        if (events and len(data) < _BATCH_BELOW and self.batch_window and protocol.pending == 0
                and self._loop is not None
                and self._batch_timer is None and not self.reading_paused
                and self.closed is None and self.transport.pause_reading()):
            self._batch_timer = self._loop.call_later(self.batch_window, self._end_batch)

    def _end_batch(self) -> None:
        """The batch window is over (or a call is being sent): read the socket again."""
        timer, self._batch_timer = self._batch_timer, None
        if timer is not None:
            timer.cancel()
        if self.closed is None and not self.reading_paused:
            self.transport.resume_reading()

    def _fd_reply(self, item: Reply, waiter: Any) -> bool:
        """Complete a reply that brought FDs or answers ``call_with_fds``: the waiter of
        ``call_with_fds`` gets ``(value, fds)``; FDs nobody takes are closed.  False if the
        channel failed (FDs missing on a reply we read with recvmsg)."""
        ours = item.serial in self._fd_calls
        if ours:
            self._fd_calls.discard(item.serial)
            self.transport.expect_fds(False)
        fds = self.transport.take_fds(item.fds) if item.fds else []
        if ours and len(fds) < item.fds:
            for fd in fds:
                os.close(fd)
            error = ProtocolError(f"a reply announced {item.fds} file descriptors but "
                                  f"{len(fds)} arrived")
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
            self.fail(error)
            return False
        if waiter is None or waiter.done() or item.error is not None or not ours:
            for fd in fds:
                os.close(fd)
            if waiter is not None and not waiter.done():
                waiter.set_exception(item.error if item.error is not None else ProtocolError(
                    "the reply carries file descriptors: make this call with "
                    "call_with_fds (they were closed)"))
            return True
        waiter.set_result((item.value, fds))
        return True

    # -- without the loop: a thread that owns it while it does not run ------------------------
    def fd_here(self) -> int | None:
        """Send what is batched, then the socket's descriptor if ``read_here`` may read
        it, else None (only the loop reads this socket: TLS, a tunnel, a stream's paused
        reader, FDs expected)."""
        if self.closed is not None or self.reading_paused:
            return None
        return self._fd_here()   # type: ignore[no-any-return]

    def read_here(self) -> None:
        """Read what the socket holds and route it, as the loop would (after ``fd_here``
        said it may, and the socket polled readable)."""
        try:
            data = self.transport.read_here()   # type: ignore[attr-defined]
        except OSError as exc:
            self.lost(exc)
            return
        if data is None:
            return
        if data:
            self.feed(data)
        else:
            self.lost(None)

    def lost(self, exc: BaseException | None) -> None:
        """The socket ended under us: fail every caller, the cause (the socket's error, or
        ``EOFError`` for an orderly close) chained for whoever reports it further."""
        if self.closing is not None:
            self.fail(ConnectionClosed(self.closing))
            return
        error = ConnectionClosed(
            f"{self.name} socket: the server closed the connection" if exc is None else
            f"{self.name} socket: connection lost: {exc or type(exc).__name__}")
        error.__cause__ = exc if exc is not None else EOFError("end of file while reading")
        self.fail(error)

    def _write(self, data: bytes) -> None:
        try:
            self.transport.write(data)
        except _BROKEN as exc:
            self.lost(exc)

    async def call_with_fds(self, procedure: ProcedureInfo, args: Any = None,
                            fds: Sequence[int] = ()) -> tuple[Any, list[int]]:
        """Send one call with ``fds`` (CALL_WITH_FDS; none: a plain CALL) and wait for its
        reply, receiving the FDs it brings (REPLY_WITH_FDS).  Returns ``(value, fds)``.

        Ownership: the FDs sent stay the caller's (the daemon gets its own copies); the FDs
        returned are new descriptors (close-on-exec) owned by the caller, who must close them
        (``os.close``, or wrap them: ``socket.socket(fileno=fd)``, ``open(fd, closefd=True)``).
        Only a UNIX socket under asyncio carries FDs: on any other transport this raises
        ``TransportError`` naming it, before anything is sent.  FD calls are never queued
        behind the in-flight cap.  Cancelled while its FDs are being sent, the call closes
        the channel (the daemon would read what follows as FDs)."""
        reason = self.transport.fd_passing
        if reason is not None:
            raise TransportError(f"{procedure.name}: {reason}")
        if self.closed is not None:
            raise ConnectionClosed(str(self.closed)) from self.closed
        fds = [int(fd) for fd in fds]
        if not fds:
            return await self._call_with_fds(procedure, args, fds)
        # one FD send at a time, and no await between framing the call and writing it
        if self._fd_lock is None:
            self._fd_lock = anyio.Lock()
        await self._fd_lock.acquire()
        return await self._call_with_fds(procedure, args, fds, self._fd_lock)

    async def _call_with_fds(self, procedure: ProcedureInfo, args: Any, fds: list[int],
                             lock: anyio.Lock | None = None) -> tuple[Any, list[int]]:
        protocol = self.protocol
        try:
            if self.closed is not None:
                raise ConnectionClosed(str(self.closed)) from self.closed
            serial, packet = protocol.call(procedure, args, fds=len(fds))
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        waiter = self._new_waiter()
        self._waiters[serial] = waiter
        self._fd_calls.add(serial)   # until its reply comes, even if our caller leaves
        self.transport.expect_fds(True)
        try:
            if packet is not None:
                try:
                    if fds:
                        await self.transport.send_with_fds(packet, fds)
                    else:
                        self.transport.write(packet, protocol.pending == 1)
                except _BROKEN as exc:
                    self.lost(exc)
                finally:
                    if lock is not None:
                        lock.release()
            return await waiter
        except BaseException:
            if self._waiters.pop(serial, None) is not None:
                if not protocol.cancel(serial) and serial in self._fd_calls:
                    # dropped unsent: no reply will come
                    self._fd_calls.discard(serial)
                    self.transport.expect_fds(False)
            raise

    # -- keepalive and failure ----------------------------------------------------------------
    async def keepalive_loop(self) -> None:
        """Ping a quiet server; declare it dead after ``count`` intervals without a word, the
        figures in ``keepalive`` (set before the loop is started; ``set_keepalive`` changes
        them while it runs, None ends it)."""
        try:
            while self.closed is None and self.keepalive is not None:
                interval, count = self.keepalive
                changed = self._keepalive_changed = anyio.Event()
                with anyio.move_on_after(interval):
                    await changed.wait()
                    continue   # new figures: wait with them from now
                self._keepalive_check(interval, count)
        finally:
            self.keepalive = self._keepalive_changed = None
            self.keepalive_running = False

    def set_keepalive(self, keepalive: tuple[float, int] | None) -> None:
        """New figures for the keepalive loop, from now (None: stop it)."""
        self.keepalive = keepalive
        if self._keepalive_changed is not None:
            self._keepalive_changed.set()

    def _keepalive_check(self, interval: float, count: int) -> None:
        if self.closed is None:
            idle = time.monotonic() - self.last_received
            if idle >= interval * (count + 1) and not self.reading_paused:
                self.fail(ConnectionClosed(
                    f"{self.name} socket: the server did not answer keepalive for {idle:.1f} s"))
                return
            if idle >= interval:
                # While a stream's reader is paused the server's words wait unread: keep
                # pinging (the server counts them as signs of life) but judge nobody.
                self._write(self.protocol.ping())

    def fail(self, error: BaseException) -> None:
        """Mark the channel dead, close its socket and wake every caller with ``error``."""
        if self.closed is not None:
            return
        self.closed = error
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():   # queued callers included: each has a serial
            if not waiter.done():
                waiter.set_exception(error)
        streams, self._streams = self._streams, weakref.WeakValueDictionary()
        for sink in list(streams.values()):
            sink.fail(error)
        if self._keepalive_changed is not None:   # its loop ends now, not at its next tick
            self._keepalive_changed.set()
        self.transport.close()
        if self._on_closed is not None:
            self._on_closed(error)

    # -- streams ------------------------------------------------------------------------------
    async def open_stream(self, procedure: ProcedureInfo, args: Any, sink: StreamSink
                          ) -> tuple[int, Any]:
        """Call a stream-opening procedure; its serial is routed to ``sink`` before the
        reply can arrive.  Returns the serial and the reply.  On failure or cancellation
        nothing stays registered, and a stream the server did open is aborted."""
        protocol = self.protocol
        serial, waiter = self._send(procedure, args, sink)
        sink.reply = waiter   # the stream can tell data that comes before its reply
        try:
            return serial, await waiter
        except BaseException:
            self.end_stream(serial)
            if self._waiters.pop(serial, None) is not None:
                protocol.cancel(serial)
            elif _succeeded(waiter) and self.closed is None:
                # The reply came but our caller is gone: abort the stream it opened
                # (the server's confirmation is dropped: the serial is no longer expected).
                self._write(protocol.stream_packet(procedure, serial, ERROR))
            raise

    def end_stream(self, serial: int) -> None:
        """Forget stream ``serial``: its late messages are dropped."""
        self.protocol.end_stream(serial)
        self._streams.pop(serial, None)

    def send_stream(self, packet: bytes) -> None:
        """Write one stream packet now (it raises ``ConnectionClosed`` on a dead socket)."""
        if self.closed is not None:
            raise ConnectionClosed(str(self.closed)) from self.closed
        try:
            self.transport.write(packet, True)
        except _BROKEN as exc:
            self.lost(exc)
            raise ConnectionClosed(str(self.closed)) from exc

    def send_stream_data(self, header: bytes, payload: memoryview) -> None:
        """Write a stream packet as its header and payload (no copy into one packet)."""
        if self.closed is not None:
            raise ConnectionClosed(str(self.closed)) from self.closed
        try:
            self.transport.write_parts(header, payload)
        except _BROKEN as exc:
            self.lost(exc)
            raise ConnectionClosed(str(self.closed)) from exc

    async def drain(self) -> None:
        """Wait while the socket's send buffer is above its high-water mark (asyncio only;
        elsewhere the transport's writer queue takes everything)."""
        await self.transport.drain()

    def pause_reading(self) -> bool:
        """Stop reading the socket (a stream's buffer is full); False if the transport
        cannot (then the buffer grows)."""
        if self.closed is not None:
            return False
        if not self.reading_paused:
            if not self.transport.pause_reading():
                return False
            self.reading_paused = True
        return True

    def resume_reading(self) -> None:
        """Read the socket again; the keepalive clock restarts."""
        if self.reading_paused:
            self.reading_paused = False
            self.last_received = time.monotonic()
            if self.closed is None and self._batch_timer is None:
                self.transport.resume_reading()

    # -- handshake --------------------------------------------------------------------------
    async def open(self, name: str, flags: int = 0, *, uri: ConnectionURI | None = None,
                   credentials: Any = None) -> None:
        """AUTH_LIST and authentication (see ``auth``), the keepalive feature, then
        CONNECT_OPEN of ``name``."""
        offered = await self.call(_P[remote.REMOTE_PROC_AUTH_LIST])
        await authenticate(self, list(offered.types), uri or parse_uri("remote:///"),
                           credentials)
        feature = await self.call(
            _P[remote.REMOTE_PROC_CONNECT_SUPPORTS_FEATURE],
            remote.ConnectSupportsFeatureArgs(_FEATURE_KEEPALIVE))
        self.keepalive_supported = bool(feature.supported)
        await self.call(_P[remote.REMOTE_PROC_CONNECT_OPEN],
                        remote.ConnectOpenArgs(name, flags))
