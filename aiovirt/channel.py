"""One socket to libvirtd: its reader and writer tasks, in-flight cap, keepalive and handshake.

A ``Connection`` owns one or more channels (its lanes).  Each channel runs the sans-IO
``ClientProtocol`` over an anyio byte stream.  Callers wait on their own reply; the reader task
routes replies by serial and hands events to the connection.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import anyio
import anyio.abc

from .errors import AuthenticationError, ConnectionClosed, ProtocolError
from .protocol import remote
from .wire import ClientProtocol, EventMessage, KeepaliveMessage, Reply, StreamMessage
from .xdr import ProcedureInfo

__all__ = ["Channel"]

_BROKEN = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_AUTH_NONE, _AUTH_SASL, _AUTH_POLKIT = 0, 1, 2
_FEATURE_KEEPALIVE = 10
_P = remote.PROCEDURES


class _Waiter:
    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Channel:
    """A socket, its protocol state and the tasks that serve it."""

    def __init__(self, stream: anyio.abc.ByteStream, *, max_in_flight: int,
                 on_event: Callable[[EventMessage], None], name: str = "main") -> None:
        self.name = name
        self.stream = stream
        self.protocol = ClientProtocol()
        self.max_in_flight = max_in_flight
        self._slots = anyio.Semaphore(max_in_flight, fast_acquire=True)
        self._waiters: dict[int, _Waiter] = {}
        self._on_event = on_event
        self._outbox_send, self._outbox = anyio.create_memory_object_stream[bytes](math.inf)
        self.closed: BaseException | None = None
        self.last_received = time.monotonic()
        self.pings_received = 0
        self.pongs_received = 0
        self.keepalive_supported = False

    # -- calls ----------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Calls sent on this socket whose replies have not arrived."""
        return self.protocol.pending

    async def call(self, procedure: ProcedureInfo, args: Any = None) -> Any:
        """Send one call and wait for its reply; respects the in-flight cap (FIFO)."""
        if self.closed is not None:
            raise ConnectionClosed(str(self.closed)) from self.closed
        slots = self._slots
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            await slots.acquire()
            if self.closed is not None:
                slots.release()
                raise ConnectionClosed(str(self.closed)) from self.closed
        try:
            serial, packet = self.protocol.call(procedure, args)
        except BaseException:
            slots.release()
            raise
        waiter = _Waiter()
        self._waiters[serial] = waiter
        self._outbox_send.send_nowait(packet)
        try:
            await waiter.event.wait()
        except BaseException:
            # Cancelled: the reply (when it comes) is read and dropped; its slot is freed then.
            if self._waiters.pop(serial, None) is not None:
                self.protocol.abandon(serial)
            raise
        if waiter.error is not None:
            raise waiter.error
        return waiter.value

    # -- tasks ----------------------------------------------------------------------------------
    async def read_loop(self) -> None:
        """Read until the socket closes; route every message; fail all waiters at the end."""
        stream, protocol = self.stream, self.protocol
        waiters, slots = self._waiters, self._slots
        error: BaseException
        try:
            while True:
                data = await stream.receive(1 << 18)
                self.last_received = time.monotonic()
                for item in protocol.receive_data(data):
                    if type(item) is Reply:
                        slots.release()
                        waiter = waiters.pop(item.serial, None)
                        if waiter is not None:
                            if item.error is not None:
                                waiter.error = item.error
                            else:
                                waiter.value = item.value
                            waiter.event.set()
                    elif type(item) is EventMessage:
                        self._on_event(item)
                    elif type(item) is KeepaliveMessage:
                        if item.ping:
                            self.pings_received += 1
                            self._outbox_send.send_nowait(protocol.data_to_send())
                        else:
                            self.pongs_received += 1
                    elif type(item) is StreamMessage:
                        pass  # streams are not served yet; ClientProtocol drops unknown ones
        except _BROKEN as exc:
            error = ConnectionClosed(f"{self.name} socket: the server closed the connection"
                                     if isinstance(exc, anyio.EndOfStream) else
                                     f"{self.name} socket: connection lost: {exc!r}")
        except ProtocolError as exc:
            error = exc
        except BaseException as exc:  # cancelled: we are closing
            error = ConnectionClosed(f"{self.name} socket: connection closed")
            self.fail(error)
            raise exc
        self.fail(error)
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()

    async def write_loop(self) -> None:
        """Send queued packets, coalescing whatever queued up meanwhile into one write."""
        outbox = self._outbox
        try:
            async for packet in outbox:
                chunks = [packet]
                while True:
                    try:
                        chunks.append(outbox.receive_nowait())
                    except anyio.WouldBlock:
                        break
                await self.stream.send(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        except _BROKEN as exc:
            self.fail(ConnectionClosed(f"{self.name} socket: send failed: {exc!r}"))

    async def keepalive_loop(self, interval: float, count: int) -> None:
        """Ping a quiet server; declare it dead after ``count`` intervals without a word."""
        while self.closed is None:
            await anyio.sleep(interval)
            idle = time.monotonic() - self.last_received
            if idle >= interval * (count + 1):
                self.fail(ConnectionClosed(
                    f"{self.name} socket: the server did not answer keepalive for {idle:.1f} s"))
                await self.stream.aclose()
                return
            if idle >= interval:
                self._outbox_send.send_nowait(self.protocol.ping())

    def fail(self, error: BaseException) -> None:
        """Mark the channel dead and wake every caller (now and later) with ``error``."""
        if self.closed is not None:
            return
        self.closed = error
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.error = error
            waiter.event.set()
        # wake callers queued for a slot; they see ``closed`` and raise
        for _ in range(self._slots.statistics().tasks_waiting):
            self._slots.release()
        self._outbox_send.close()

    # -- handshake --------------------------------------------------------------------------
    async def open(self, name: str, flags: int = 0) -> None:
        """AUTH_LIST, the keepalive feature, then CONNECT_OPEN of ``name``."""
        auth = await self.call(_P[remote.REMOTE_PROC_AUTH_LIST])
        types = list(auth.types)
        if types and _AUTH_NONE not in types:
            if _AUTH_POLKIT in types:
                await self.call(_P[remote.REMOTE_PROC_AUTH_POLKIT])
            else:
                names = {_AUTH_SASL: "sasl", _AUTH_POLKIT: "polkit"}
                wanted = ", ".join(names.get(t, str(t)) for t in types)
                raise AuthenticationError(f"the server requires authentication ({wanted}); "
                                          "aiovirt does not support it yet")
        feature = await self.call(
            _P[remote.REMOTE_PROC_CONNECT_SUPPORTS_FEATURE],
            remote.ConnectSupportsFeatureArgs(_FEATURE_KEEPALIVE))
        self.keepalive_supported = bool(feature.supported)
        await self.call(_P[remote.REMOTE_PROC_CONNECT_OPEN],
                        remote.ConnectOpenArgs(name, flags))
