"""Event subscriptions: server-pushed events delivered as an async iterator.

``conn.domain_events()`` registers a callback with the daemon and yields typed events; leaving
``async for`` (or the ``async with`` block around it) deregisters the callback.  Each
subscription buffers its events, so a slow consumer never stalls the connection's reader.

libvirtd tracks one callback per connection for each event kind (and domain filter): a
second registration fails with "event callback already tracked".  So subscriptions of the
same kind on one connection share a ``Registration``: the first registers it with the daemon,
every event is delivered to all of them, and the last one to leave deregisters it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import anyio

__all__ = ["EventSubscription", "Registration", "SubscriptionHost", "event_family"]

T = TypeVar("T")


class SubscriptionHost(Protocol):
    """What a subscription needs of its connection: the shared registrations, the routing
    table from callback ids to them, and whether the connection still lives."""

    @property
    def is_alive(self) -> bool: ...

    def _registration(self, key: tuple[Any, ...]) -> Registration: ...

    def _add_subscription(self, family: str, callback_id: int,
                          subscription: Registration) -> None: ...

    def _remove_subscription(self, family: str, callback_id: int) -> None: ...


_FAMILIES = (("domain_monitor_event", "qemu_monitor"), ("domain_event", "domain"),
             ("network_event", "network"), ("storage_pool_event", "storage_pool"),
             ("node_device_event", "node_device"), ("secret_event", "secret"))


def event_family(procedure_name: str) -> str:
    """Which callback-ID space an event procedure belongs to (domain, network, ...)."""
    for prefix, family in _FAMILIES:
        if procedure_name.startswith(prefix):
            return family
    return procedure_name


class Registration:
    """One callback registered with the daemon, shared by the local subscriptions of one
    kind (``key``); ``lock`` orders registering and deregistering."""

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        self.callback_id: int | None = None
        self.subscribers: list[EventSubscription[Any]] = []
        self.lock = anyio.Lock()

    def deliver(self, procedure: Any, body: Any) -> None:
        for subscriber in self.subscribers:
            subscriber.deliver(procedure, body)

    def close(self) -> None:
        """The connection is gone: end every subscriber's iteration."""
        for subscriber in self.subscribers:
            subscriber.close()


class EventSubscription(Generic[T]):
    """A subscription to one kind of event; iterate it for events.

    Usable as ``async for e in sub`` (registers on the first step, deregisters when the loop
    ends) or ``async with sub: async for e in sub`` (deterministic deregistration).
    ``key`` names the kind (family, event id, filter): subscriptions with the same key on one
    connection share the daemon-side callback.
    """

    def __init__(self, conn: SubscriptionHost, family: str, key: tuple[Any, ...],
                 register: Callable[[], Awaitable[int]],
                 deregister: Callable[[int], Awaitable[None]],
                 convert: Callable[[Any], T]) -> None:
        self._conn = conn
        self._family = family
        self._key = (family, *key)
        self._register = register
        self._deregister = deregister
        self._convert = convert
        self._send, self._receive = anyio.create_memory_object_stream[Any](math.inf)
        self._registration: Registration | None = None
        self.dropped = False

    @property
    def callback_id(self) -> int | None:
        """The daemon's id of the (shared) callback while subscribed, else None."""
        return self._registration.callback_id if self._registration is not None else None

    async def __aenter__(self) -> EventSubscription[T]:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Subscribe: register the callback with the daemon unless this connection already
        has one of this kind (idempotent)."""
        if self._registration is not None:
            return
        registration = self._conn._registration(self._key)
        async with registration.lock:
            if registration.callback_id is None:
                registration.callback_id = await self._register()
                self._conn._add_subscription(self._family, registration.callback_id,
                                             registration)
            registration.subscribers.append(self)
        self._registration = registration

    async def stop(self) -> None:
        """Unsubscribe (the last one out deregisters the callback); iteration ends once
        buffered events are consumed."""
        registration, self._registration = self._registration, None
        if registration is None:
            return
        self._send.close()
        registration.subscribers.remove(self)
        if registration.subscribers:
            return
        with anyio.CancelScope(shield=True):
            async with registration.lock:
                callback_id = registration.callback_id
                if registration.subscribers or callback_id is None:
                    return   # someone subscribed again meanwhile
                registration.callback_id = None
                self._conn._remove_subscription(self._family, callback_id)
                if self._conn.is_alive:
                    await self._deregister(callback_id)

    def deliver(self, procedure: Any, body: Any) -> None:
        try:
            self._send.send_nowait(body)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def close(self) -> None:
        """The connection is gone: end iteration."""
        self._send.close()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        owned = self._registration is None
        if owned:
            await self.start()
        receive, receive_nowait = self._receive.receive, self._receive.receive_nowait
        try:
            while True:
                try:   # events already buffered need no trip through the event loop
                    body = receive_nowait()
                except anyio.WouldBlock:
                    try:
                        body = await receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                yield self._convert(body)
        finally:
            if owned:
                await self.stop()
