"""The live event stream: domain lifecycle events of one or more hosts as server-sent events.

A stream first says ``ready`` once every host is subscribed (or found unreachable), so a
client knows from when on it sees everything; then one ``lifecycle`` event per domain event,
``error`` when a host's connection is lost, a comment line as keepalive when nothing happens,
and ``end`` when no host is left (or ``error`` then the end, when the client fell behind).

Every stream of a host shares one daemon connection: ``EventHub`` keeps one ``Feed`` per
host while anyone listens, and hands each event to every listener's bounded queue without
waiting; a listener whose queue is full (a client that stopped reading) is dropped, so it
holds no more than its queue and never delays the others.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..api.connection import connect
from ..errors import AiovirtError
from ..api.domain import DomainEventType, DomainLifecycleEvent
from .http import Write, sse

__all__ = ["EventHub", "Feed", "Listener", "lifecycle_data", "stream_lifecycle_events"]

log = logging.getLogger("aiovirt.service")

KEEPALIVE = b": keepalive\n\n"
# what a listener's queue carries: (host, SSE bytes) for an event, (host, error) when lost
_Item = tuple[str, bytes | str]


def lifecycle_data(host: str, event: DomainLifecycleEvent) -> dict[str, Any]:
    """The JSON form of one lifecycle event."""
    kind = event.event
    name = kind.name.lower() if isinstance(kind, DomainEventType) else str(int(kind))
    return {"host": host, "name": event.domain.name, "uuid": event.domain.uuid,
            "event": name, "detail": event.detail}


class Listener:
    """One stream's view of the hub: a bounded queue of events from its hosts."""

    def __init__(self, queue: int) -> None:
        self._send: MemoryObjectSendStream[_Item]
        self.receive: MemoryObjectReceiveStream[_Item]
        self._send, self.receive = anyio.create_memory_object_stream[_Item](queue)
        self.fell_behind = False

    def offer(self, item: _Item) -> bool:
        """Queue ``item`` without waiting; False (and the queue closed) when it is full."""
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            self.fell_behind = True
            self._send.close()
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    def close(self) -> None:
        """The stream has ended: both ends of the queue are let go."""
        self._send.close()
        self.receive.close()


class Feed:
    """One host's lifecycle events over one daemon connection, fanned out to listeners."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.listeners: set[Listener] = set()
        self.subscribed = anyio.Event()   # set once subscribed, or once the feed has ended
        self.error: str | None = None     # why it ended
        self.scope = anyio.CancelScope()

    def publish(self, item: _Item) -> None:
        for listener in list(self.listeners):
            if not listener.offer(item):
                self.listeners.discard(listener)


class EventHub:
    """The feeds of one service: started in the lifespan's task group on a first listener,
    stopped when the last one leaves; ``connect_timeout`` bounds reaching a host."""

    def __init__(self, *, queue: int = 1024, connect_timeout: float = 30.0) -> None:
        if queue < 1:
            raise ValueError("an event stream's queue must hold at least 1 event")
        self.queue = queue
        self.connect_timeout = connect_timeout
        self.feeds: dict[str, Feed] = {}
        self._group: anyio.abc.TaskGroup | None = None

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[EventHub]:
        """The hub's lifetime (the lifespan's): on exit every feed's connection closes."""
        async with anyio.create_task_group() as group:
            self._group = group
            try:
                yield self
            finally:
                self._group = None
                group.cancel_scope.cancel()

    @property
    def running(self) -> bool:
        return self._group is not None

    def listening(self) -> dict[str, int]:
        """Listeners per host: what ``/health`` shows."""
        return {host: len(feed.listeners) for host, feed in self.feeds.items()}

    @contextlib.asynccontextmanager
    async def listen(self, hosts: list[str]) -> AsyncIterator[tuple[Listener, dict[str, str]]]:
        """Listen to ``hosts``: yields the listener once every host's feed is subscribed or
        has failed, with the failures (host: error); leaving lets go of the feeds."""
        if self._group is None:
            raise RuntimeError("event streams need the server's lifespan")
        listener = Listener(self.queue)
        feeds = []
        try:
            for host in dict.fromkeys(hosts):
                feed = self.feeds.get(host)
                if feed is None:
                    feed = self.feeds[host] = Feed(host)
                    self._group.start_soon(self._run, feed, name=f"events {host}")
                feed.listeners.add(listener)
                feeds.append(feed)
            for feed in feeds:
                await feed.subscribed.wait()   # bounded: _run gives up after connect_timeout
            failed = {f.host: f.error for f in feeds if f.error is not None}
            yield listener, failed   # type: ignore[misc]
        finally:
            listener.close()
            for feed in feeds:
                feed.listeners.discard(listener)
                if not feed.listeners and self.feeds.get(feed.host) is feed:
                    del self.feeds[feed.host]   # a newcomer starts a new feed
                    feed.scope.cancel()

    async def _run(self, feed: Feed) -> None:
        """Subscribe to the host's lifecycle events and publish them until the connection
        is lost or the last listener leaves."""
        error = "the connection closed"
        with feed.scope:
            deadline = anyio.current_time() + self.connect_timeout
            with anyio.CancelScope(deadline=deadline) as setup:
                try:
                    async with connect(feed.host, lanes=0) as conn, \
                            conn.domain_events() as events:
                        setup.deadline = math.inf
                        feed.subscribed.set()
                        async for event in events:
                            if isinstance(event, DomainLifecycleEvent):
                                feed.publish((feed.host, sse(
                                    "lifecycle", lifecycle_data(feed.host, event))))
                except AiovirtError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                except Exception as exc:   # a bug: end this feed, keep the service
                    log.exception("the event feed of %s failed", feed.host)
                    error = f"{type(exc).__name__}: {exc}"
            if setup.cancelled_caught:
                error = f"no answer within {self.connect_timeout:g} s"
        if self.feeds.get(feed.host) is feed:
            del self.feeds[feed.host]
        feed.error = error
        feed.subscribed.set()
        feed.publish((feed.host, error))


_WRITE_BATCH = 256   # events joined into one write at most


async def stream_lifecycle_events(hub: EventHub, hosts: list[str], write: Write, *,
                                  keepalive: float = 15.0) -> None:
    """Write the events of ``hosts`` to ``write`` until every host is gone, the client
    falls behind, or the caller is cancelled (the client left)."""
    async with hub.listen(hosts) as (listener, unreachable):
        live = [h for h in dict.fromkeys(hosts) if h not in unreachable]
        await write(sse("ready", {"hosts": live, "unreachable": unreachable}))
        left = set(live)
        while left:
            try:
                with anyio.fail_after(keepalive):
                    host, item = await listener.receive.receive()
            except TimeoutError:
                await write(KEEPALIVE)
                continue
            except anyio.EndOfStream:
                break
            # what else is queued goes in the same write: one event per write kept a client
            # reading at full speed behind a burst, and cut it as "fell behind"
            chunks: list[bytes] = []
            ended = False
            while True:
                if isinstance(item, bytes):
                    chunks.append(item)
                elif host in left:
                    left.discard(host)
                    chunks.append(sse("error", {"host": host, "error": item}))
                if len(chunks) >= _WRITE_BATCH:
                    break
                try:
                    host, item = listener.receive.receive_nowait()
                except anyio.WouldBlock:
                    break
                except anyio.EndOfStream:
                    ended = True
                    break
            if chunks:
                await write(b"".join(chunks))
            if ended:
                break
        if listener.fell_behind:
            await write(sse("error", {"error": f"this client fell behind: more than "
                                               f"{hub.queue} events waited for it; "
                                               "reconnect"}))
        else:
            await write(sse("end", {"reason": "no host is left to watch"}))
