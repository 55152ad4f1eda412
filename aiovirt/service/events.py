"""The live event stream: domain lifecycle events of one or more hosts as server-sent events.

A stream first says ``ready`` once every host is subscribed (or found unreachable), so a
client knows from when on it sees everything; then one ``lifecycle`` event per domain event,
``error`` when a host's connection is lost, a comment line as keepalive when nothing happens,
and ``end`` when no host is left.
"""

from __future__ import annotations

from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..connection import connect
from ..errors import AiovirtError
from ..events import DomainEventType, DomainLifecycleEvent
from .http import Write, sse

__all__ = ["lifecycle_data", "stream_lifecycle_events"]

KEEPALIVE = b": keepalive\n\n"


def lifecycle_data(host: str, event: DomainLifecycleEvent) -> dict[str, Any]:
    """The JSON form of one lifecycle event."""
    kind = event.event
    name = kind.name.lower() if isinstance(kind, DomainEventType) else str(int(kind))
    return {"host": host, "name": event.domain.name, "uuid": event.domain.uuid,
            "event": name, "detail": event.detail}


class _Arrivals:
    """Which hosts have subscribed or failed to; ``all`` is set once every one has."""

    def __init__(self, hosts: list[str]) -> None:
        self.waiting = set(hosts)
        self.subscribed: list[str] = []
        self.unreachable: dict[str, str] = {}
        self.all = anyio.Event()
        if not self.waiting:
            self.all.set()

    def arrive(self, host: str, error: str | None) -> bool:
        """Record a host's subscription (``error`` None) or failure; False if it had
        already arrived (a later failure: the caller reports it in the stream)."""
        if host not in self.waiting:
            return False
        self.waiting.discard(host)
        if error is None:
            self.subscribed.append(host)
        else:
            self.unreachable[host] = error
        if not self.waiting:
            self.all.set()
        return True


async def _watch(host: str, out: MemoryObjectSendStream[bytes], arrivals: _Arrivals) -> None:
    async with out:
        try:
            async with connect(host) as conn, conn.domain_events() as events:
                arrivals.arrive(host, None)
                async for event in events:
                    if isinstance(event, DomainLifecycleEvent):
                        await out.send(sse("lifecycle", lifecycle_data(host, event)))
            error = "the connection closed"
        except (AiovirtError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if not arrivals.arrive(host, error):
            await out.send(sse("error", {"host": host, "error": error}))


async def stream_lifecycle_events(hosts: list[str], write: Write, *,
                                  keepalive: float = 15.0) -> None:
    """Write the events of ``hosts`` to ``write`` until every host is gone (or the caller
    is cancelled: the client left)."""
    send, receive = anyio.create_memory_object_stream[bytes](256)
    arrivals = _Arrivals(hosts)
    async with anyio.create_task_group() as group, receive:
        for host in dict.fromkeys(hosts):
            group.start_soon(_watch, host, send.clone(), arrivals, name=f"events {host}")
        send.close()
        await arrivals.all.wait()
        await write(sse("ready", {"hosts": arrivals.subscribed,
                                  "unreachable": arrivals.unreachable}))
        while True:
            try:
                with anyio.fail_after(keepalive):
                    item = await receive.receive()
            except TimeoutError:
                await write(KEEPALIVE)
                continue
            except anyio.EndOfStream:
                break
            await write(item)
        await write(sse("end", {"reason": "no host is left to watch"}))
