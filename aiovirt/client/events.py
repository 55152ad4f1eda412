"""Event subscriptions: server-pushed events delivered as an async iterator.

``conn.domain_events()`` (and ``network_events``, ``storage_pool_events``... in the API)
registers a callback with the daemon and yields typed events; leaving ``async for`` (or the
``async with`` block around it) deregisters the callback.

Buffering policy.  Events arrive from the socket reader, which must never wait (it also
carries every call's reply and the keepalives), so each subscription buffers what its consumer
has not read yet, at most ``max_buffer`` events (1000 by default).  When the buffer is full the
OLDEST event is dropped; the iterator then yields ``Dropped(count)`` - how many were lost
since the last thing it yielded - before the next event, so a consumer knows to re-list.
Memory stays flat however long a consumer stalls.  ``max_buffer=None`` keeps everything
(unbounded memory: only for consumers that are known to keep up).

Backpressure (an ``overflow="block"`` policy) is deliberately not offered: the only way to
push back on the daemon is to stop reading the socket, and that socket also carries the
replies of every call on the connection and the keepalive PINGs.  A stalled event consumer
would then stall all calls and, after the keepalive window, make libvirtd drop the whole
connection - losing every subscription instead of some events.  Drop-oldest with an exact
loss count is the recoverable choice; a consumer that must not lose events re-lists on
``Dropped`` (as it must on ``Resync`` after a reconnect anyway).

Decoding is lazy.  The reader routes an event by the callback id at the head of its payload
and buffers the packet undecoded; the body is decoded when the consumer reads it (an
``accept`` test may drop events from their raw bytes before that, e.g. lifecycle events of
types nobody waits for).  An event nobody subscribed to is never decoded.  A malformed event
body raises ``ProtocolError`` from the iteration that reaches it; the connection and the
subscription stay up (the packet was framed correctly), so iterating again goes on after it.

libvirtd tracks one callback per connection for each event kind (and filter): a second
registration fails with "event callback already tracked".  So subscriptions of the same kind on
one connection share a ``Registration``: the first registers it with the daemon, every event is
delivered to all of them (each with its own buffer), and the last one to leave deregisters it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import anyio

from ..checks import check_count
from ..errors import AiovirtError, ConnectionClosed, ProtocolError
from ..protocol.wire import EventMessage
from .backend import waiter_factory

__all__ = ["DEFAULT_MAX_BUFFER", "Dropped", "EventSubscription", "Registration", "Resync",
           "SubscriptionHost", "event_callback_id", "event_family"]

T = TypeVar("T")

DEFAULT_MAX_BUFFER = 1000
MAX_BUFFER_LIMIT = 1 << 24   # events a subscription may be told to keep unread (None: no bound)
# How long ``stop`` waits (shielded from cancellation) for the daemon to drop the callback:
# a courtesy, since the daemon drops it with the connection anyway; events still arriving
# for it reach no subscriber.
STOP_TIMEOUT = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Dropped:
    """``count`` events were dropped (the buffer was full) just before the next one yielded."""

    count: int


@dataclass(frozen=True, slots=True)
class Resync:
    """The subscription was registered again after a reconnect: events may have been missed
    while disconnected, so re-list the state you track."""


_RESYNC = Resync()


class SubscriptionHost(Protocol):
    """What a subscription needs of its connection: the shared registrations, the routing
    table from callback ids to them, and whether the connection still lives."""

    @property
    def is_alive(self) -> bool: ...

    def _registration(self, key: tuple[Any, ...]) -> Registration: ...

    def _forget_registration(self, registration: Registration) -> None: ...

    def _add_subscription(self, family: str, callback_id: int,
                          subscription: Registration) -> None: ...

    def _remove_subscription(self, family: str, callback_id: int) -> None: ...

    def _spawn(self, fn: Callable[[], Coroutine[Any, Any, None]], name: str) -> bool: ...


_FAMILIES = (("domain_monitor_event", "qemu_monitor"), ("domain_event", "domain"),
             ("network_event", "network"), ("storage_pool_event", "storage_pool"),
             ("node_device_event", "node_device"), ("secret_event", "secret"),
             ("connect_event_connection_closed", "connection_closed"))

# The connection-closed event has no callback id (one close callback per connection):
# its registration is routed under this id.
CLOSE_CALLBACK_ID = 0


def event_callback_id(message: EventMessage) -> int | None:
    """The callback id an event message is routed by (None: not routed), read without
    decoding the event."""
    callback_id = message.callback_id
    if callback_id is None and message.procedure.name == "connect_event_connection_closed":
        return CLOSE_CALLBACK_ID
    return callback_id


@functools.cache
def event_family(procedure_name: str) -> str:
    """Which callback-ID space an event procedure belongs to (domain, network, ...)."""
    for prefix, family in _FAMILIES:
        if procedure_name.startswith(prefix):
            return family
    return procedure_name


class Registration:
    """One callback registered with the daemon, shared by the local subscriptions of one
    kind (``key``); ``lock`` orders registering and deregistering.  ``register`` and
    ``deregister`` are the callables it was registered with, to register it again after a
    reconnect (then call ``resynced()``)."""

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        self.callback_id: int | None = None
        self.subscribers: list[EventSubscription[Any]] = []
        self.lock = anyio.Lock()
        self.family: str | None = None
        self.register: Callable[[], Awaitable[int]] | None = None
        self.deregister: Callable[[int], Awaitable[None]] | None = None
        # set while a registration whose caller left is still to be answered (and its
        # callback dropped): the daemon would refuse another one of this kind until then
        self.settling: anyio.Event | None = None

    def deliver(self, message: EventMessage) -> None:
        for subscriber in self.subscribers:
            subscriber.deliver(message)

    def resynced(self) -> None:
        """Registered again after a reconnect: every subscriber yields ``Resync`` next in
        order."""
        for subscriber in self.subscribers:
            subscriber.deliver(_RESYNC)

    def close(self) -> None:
        """The connection is gone: end every subscriber's iteration."""
        for subscriber in self.subscribers:
            subscriber.close()


class EventSubscription(Generic[T]):
    """A subscription to one kind of event; iterate it for events (and ``Dropped`` /
    ``Resync`` markers).

    Usable as ``async for e in sub`` (registers on the first step, deregisters when the loop
    ends) or ``async with sub: async for e in sub`` (deterministic deregistration).  Readers
    iterating one subscription at once share its events (each goes to one of them) and all
    see its end; ``async for`` again after ``stop()`` subscribes again.
    ``key`` names the kind (family, event id, filter): subscriptions with the same key on one
    connection share the daemon-side callback.  ``max_buffer``: see the module docstring.
    ``on_close``, if given, makes a last item when the connection ends (not on ``stop``).
    ``accept``, if given, is asked about each event before it is buffered (it may read the
    message's raw ``payload``); events it refuses are dropped undecoded and not counted.
    ``read``, if given, makes an item from the undecoded message in place of
    ``convert(message.body)`` (a reader of the raw payload for a common event).
    """

    def __init__(self, conn: SubscriptionHost, family: str, key: tuple[Any, ...],
                 register: Callable[[], Awaitable[int]],
                 deregister: Callable[[int], Awaitable[None]],
                 convert: Callable[[Any], T], *, max_buffer: int | None = DEFAULT_MAX_BUFFER,
                 on_close: Callable[[], Any] | None = None,
                 accept: Callable[[EventMessage], bool] | None = None,
                 read: Callable[[EventMessage], T] | None = None) -> None:
        check_count("max_buffer", max_buffer, 1, MAX_BUFFER_LIMIT)
        self._conn = conn
        self._family = family
        self._key = (family, *key)
        self._register = register
        self._deregister = deregister
        self._convert = convert
        self._read: Callable[[EventMessage], T] = read or (lambda message: convert(message.body))
        self._on_close = on_close
        self._accept = accept
        self.max_buffer = max_buffer
        self._limit: float = max_buffer if max_buffer is not None else float("inf")
        self._buffer: deque[Any] = deque()
        self._lost = 0              # dropped since the last item yielded
        self._resync_lost = False   # a Resync marker itself was dropped
        self._ended = False
        self._wakeup: Any = None   # a one-shot slot (backend.waiter_factory) while waiting
        self._also_waiting: deque[Any] = deque()   # more readers' slots (each event to one)
        self._registration: Registration | None = None
        self._starting: anyio.Event | None = None   # set when a start() under way ends
        self._iterating = 0         # ``async for`` loops running over it
        self._auto = False          # an ``async for`` subscribed it: the last one out stops it
        self.dropped_total = 0      # events dropped over the subscription's life

    @property
    def callback_id(self) -> int | None:
        """The daemon's id of the (shared) callback while subscribed, else None."""
        return self._registration.callback_id if self._registration is not None else None

    @property
    def buffered(self) -> int:
        """Items waiting to be read."""
        return len(self._buffer)

    async def __aenter__(self) -> EventSubscription[T]:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Subscribe: register the callback with the daemon unless this connection already
        has one of this kind (idempotent)."""
        while self._starting is not None:   # another reader subscribes it: share the outcome
            await self._starting.wait()
        if self._registration is not None:
            return
        starting = self._starting = anyio.Event()
        registration = None
        try:
            self._ended = False   # subscribed again after stop(): events flow again
            registration = self._conn._registration(self._key)
            async with registration.lock:
                settling = registration.settling
                if settling is not None:
                    await settling.wait()
                    if registration.settling is settling:
                        registration.settling = None
                if registration.callback_id is None:
                    registration.callback_id = await self._registered(registration)
                    registration.family = self._family
                    registration.register, registration.deregister = \
                        self._register, self._deregister
                    self._conn._add_subscription(self._family, registration.callback_id,
                                                 registration)
                registration.subscribers.append(self)
            self._registration = registration
        finally:
            self._starting = None
            starting.set()
            if self._registration is None and registration is not None:   # it failed
                self._conn._forget_registration(registration)

    async def _registered(self, registration: Registration) -> int:
        """Register with the daemon in a task of the connection's, and wait for the callback
        id: a caller that leaves meanwhile (cancelled, timed out) leaves no callback behind
        on the daemon (which would refuse the next registration of the kind): the task drops
        it when the answer comes."""
        outcome: list[Any] = []
        done = anyio.Event()
        settled = anyio.Event()   # a left caller's callback is dropped (or never was)
        left = False

        async def drop(callback_id: int) -> None:
            try:
                if self._conn.is_alive:
                    with contextlib.suppress(AiovirtError):
                        await self._deregister(callback_id)
            finally:
                settled.set()

        async def ask() -> None:
            try:
                try:
                    outcome.append(await self._register())
                except Exception as exc:   # noqa: BLE001 - raised again by the caller
                    outcome.append(exc)
                except BaseException:   # the connection's tasks are cancelled: it is closing
                    outcome.append(ConnectionClosed("the connection was closed"))
                    raise
                finally:
                    done.set()
                if left and isinstance(outcome[0], int):   # its caller is gone: nobody holds it
                    await drop(outcome[0])
            finally:
                if left:
                    settled.set()

        name = f"aiovirt {self._family} events registration"
        if not self._conn._spawn(ask, name):
            return await self._register()
        try:
            await done.wait()
        except BaseException:
            left = True   # (the answer, if it comes later, is dropped by ``ask``)
            if not done.is_set():
                registration.settling = settled
            elif isinstance(outcome[0], int):   # it came first
                registration.settling = settled
                if not self._conn._spawn(functools.partial(drop, outcome[0]), name):
                    settled.set()
            raise
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]   # type: ignore[no-any-return]

    async def stop(self) -> None:
        """Unsubscribe (the last one out deregisters the callback); iteration ends once
        buffered events are consumed."""
        registration, self._registration = self._registration, None
        self._auto = False
        if registration is None:
            return
        self._end()
        registration.subscribers.remove(self)
        if registration.subscribers:
            return
        # shielded, so a cancelled consumer still deregisters; bounded, so a daemon that
        # does not answer cannot hold the consumer (or its cancellation) for ever
        with anyio.move_on_after(STOP_TIMEOUT, shield=True) as bound:
            async with registration.lock:
                callback_id = registration.callback_id
                if registration.subscribers or callback_id is None:
                    return   # someone subscribed again meanwhile
                registration.callback_id = None
                self._conn._remove_subscription(self._family, callback_id)
                try:
                    if self._conn.is_alive:
                        await self._deregister(callback_id)
                finally:
                    self._conn._forget_registration(registration)
        if bound.cancelled_caught:
            log.warning("%s events: the daemon did not confirm dropping the subscription "
                        "within %g s; going on without it", self._family, STOP_TIMEOUT)

    def deliver(self, item: EventMessage | Resync | _Final) -> None:
        """Buffer one event, undecoded, or a marker (called by the socket reader: never
        waits); when the buffer is full the oldest is dropped and counted."""
        if self._ended:
            return
        accept = self._accept
        if accept is not None and type(item) is EventMessage and not accept(item):
            return
        buffer = self._buffer
        if len(buffer) >= self._limit:
            if buffer.popleft() is _RESYNC:
                self._resync_lost = True
            else:
                self._lost += 1
                self.dropped_total += 1
        buffer.append(item)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        elif self._also_waiting:
            wakeup = self._also_waiting.popleft()
            if not wakeup.done():
                wakeup.set_result(None)

    def close(self) -> None:
        """The connection is gone: end iteration (after the buffered events, and the
        ``on_close`` item if any)."""
        if not self._ended and self._on_close is not None:
            item = self._on_close()
            if item is not None:
                self.deliver(_Final(item))
        self._end()

    def _end(self) -> None:
        self._ended = True
        wakeup, self._wakeup = self._wakeup, None
        waiting = [wakeup, *self._also_waiting]
        self._also_waiting.clear()
        for wakeup in waiting:   # every reader, so that each sees the end
            if wakeup is not None and not wakeup.done():
                wakeup.set_result(None)

    def __aiter__(self) -> AsyncIterator[T | Dropped | Resync]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T | Dropped | Resync]:
        # The last ``async for`` to end stops what an ``async for`` started (counted, not
        # owned by one loop: a loop left by ``break`` is finalized later, maybe after the
        # next loop began).
        self._iterating += 1
        try:
            if self._registration is None:
                await self.start()
                self._auto = True
            buffer, read = self._buffer, self._read
            new_waiter = waiter_factory()
            while True:
                if self._resync_lost:
                    self._resync_lost = False
                    yield _RESYNC
                if self._lost:
                    lost, self._lost = self._lost, 0
                    yield Dropped(lost)
                    continue   # more may have been lost while the consumer had the marker
                if buffer:
                    item = buffer.popleft()
                    if type(item) is EventMessage:
                        try:
                            value = read(item)   # a malformed body raises here
                        except AiovirtError:
                            raise
                        except Exception as exc:   # a body of another kind than ours
                            raise ProtocolError(f"{item.procedure.name} event: cannot be read "
                                                f"as a {self._family} event of this "
                                                f"subscription: {exc}") from exc
                        yield value
                    elif item is _RESYNC:
                        yield _RESYNC
                    else:
                        yield item.item
                elif self._ended:
                    return
                else:
                    wakeup = new_waiter()
                    if self._wakeup is None:
                        self._wakeup = wakeup
                    else:   # a second reader: each event goes to one of them
                        self._also_waiting.append(wakeup)
                    try:
                        await wakeup
                    finally:
                        if self._wakeup is wakeup:
                            self._wakeup = None
                        elif wakeup in self._also_waiting:
                            self._also_waiting.remove(wakeup)
        finally:
            self._iterating -= 1
            if not self._iterating and self._auto:
                self._auto = False
                await self.stop()


@dataclass(frozen=True, slots=True)
class _Final:
    """An already-converted last item (``on_close``)."""

    item: Any
