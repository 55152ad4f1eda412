"""An asyncio agent that reacts to events: it keeps guests labelled ``restart=always`` running.

    python examples/event_agent.py URI [URI ...] [--restarts N]

It watches lifecycle events on every host at once (one connection each, no threads). When a
guest stops and its aiovirt provisioning metadata carries the label ``restart=always``, the
agent starts it again. It outlives its daemons: each connection reconnects after a loss
(libvirtd restarted, or silent past the keepalive window), and when its subscription says
``Resync`` (events may have been missed meanwhile) the agent re-lists the host and starts
every labelled guest that is not running. ``--restarts N`` ends the agent after N restarts
(for tests and demos).
"""

import argparse
import asyncio
import time

import anyio

import aiovirt
from aiovirt import Dropped, Reconnect, Resync
from aiovirt.provision import NAMESPACE


class Agent:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.restarts = 0
        self.done = anyio.Event()

    async def watch(self, uri: str) -> None:
        host = uri.split("?")[0]
        async with aiovirt.connect(uri, reconnect=Reconnect(max_delay=5)) as conn, \
                conn.domain_events() as events, anyio.create_task_group() as tg:
            tg.start_soon(self.report_states, host, conn)
            print(f"watching {host}", flush=True)
            async for event in events:
                if isinstance(event, Resync):
                    print(f"{time.strftime('%H:%M:%S')}  {host}: back, re-listing", flush=True)
                    for dom in await conn.list_domains():
                        if (await dom.state())[0] != aiovirt.DomainState.RUNNING:
                            await self.on_stopped(dom)
                elif isinstance(event, Dropped):
                    print(f"{time.strftime('%H:%M:%S')}  {host}: {event.count} events lost",
                          flush=True)
                elif event.event == aiovirt.DomainEventType.STOPPED:
                    await self.on_stopped(event.domain)

    async def report_states(self, host: str, conn: aiovirt.Connection) -> None:
        async for change in conn.state_changes():
            print(f"{time.strftime('%H:%M:%S')}  {host}: {change.state.value}"
                  f"{': ' + change.reason if change.reason else ''}", flush=True)

    async def on_stopped(self, dom: aiovirt.Domain) -> None:
        try:
            meta = await dom.read_metadata(namespace=NAMESPACE, default={})
            if meta.get("labels", {}).get("restart") != "always":
                return
            await dom.start()
        except aiovirt.NoSuchDomain:
            return   # undefined meanwhile: nothing to keep running
        except aiovirt.LibvirtError as exc:
            print(f"{time.strftime('%H:%M:%S')}  could not restart {dom.name}: {exc}")
            return
        self.restarts += 1
        print(f"{time.strftime('%H:%M:%S')}  {dom.name} stopped: restarted it", flush=True)
        if self.limit and self.restarts >= self.limit:
            self.done.set()

    async def run(self, uris: list[str]) -> None:
        async with anyio.create_task_group() as tg:
            for uri in uris:
                tg.start_soon(self.watch, uri)
            await self.done.wait()
            tg.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uris", nargs="+", metavar="URI")
    parser.add_argument("--restarts", type=int, default=0,
                        help="stop after this many restarts (default: run until Ctrl-C)")
    options = parser.parse_args()
    try:
        asyncio.run(Agent(options.restarts).run(options.uris))
    except KeyboardInterrupt:
        pass
