"""A short tour against a private libvirtd this module starts itself.

    python -m aiovirt.demo [--guests N]

It starts a libvirtd on private sockets, connects over UNIX and TCP, defines and boots a
batch of guests (real KVM guests where /dev/kvm exists, the test driver otherwise) while
watching their lifecycle events, shows them running, and tears everything down.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid

import anyio

import aiovirt
from aiovirt.daemon import PrivateDaemon

GUEST = ("<domain type='{type}'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
         "<os><type arch='x86_64' machine='pc'>hvm</type></os>{devices}</domain>")


def _version(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


async def tour(daemon: PrivateDaemon, count: int) -> None:
    kvm = os.path.exists("/dev/kvm")
    uri = daemon.uri("qemu", "/system") if kvm else daemon.uri("test", "/default")
    print(f"libvirtd {daemon.pid} on {daemon.socket_path} and 127.0.0.1:{daemon.tcp_port}")
    async with aiovirt.connect(daemon.uri("test", "/default", transport="tcp")) as tcp:
        print(f"TCP:  libvirt {_version(await tcp.get_lib_version())} on {await tcp.hostname()}")
    async with aiovirt.connect(uri) as conn:
        print(f"UNIX: {uri.split('?')[0]} (hypervisor {_version(await conn.get_version())})")
        kind = "KVM guests" if kvm else "test-driver guests (no /dev/kvm here)"
        names = [f"demo-{uuid.uuid4().hex[:6]}-{i}" for i in range(count)]
        devices = "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>" \
            if kvm else ""
        seen: list[str] = []

        async with conn.domain_events() as events:
            async def watch() -> None:
                async for event in events:
                    if event.domain.name in names:
                        seen.append(f"{event.domain.name} {event.event.name.lower()}")

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                began = time.monotonic()

                async def bring_up(name: str) -> aiovirt.Domain:
                    dom = await conn.define_xml(GUEST.format(
                        type="kvm" if kvm else "test", name=name, devices=devices))
                    await dom.start()
                    return dom

                doms = await asyncio.gather(*(bring_up(n) for n in names))
                print(f"defined and started {count} {kind} in "
                      f"{time.monotonic() - began:.2f} s on one connection "
                      f"({len(conn.channels)} sockets: main + lanes)")
                for dom in doms:
                    state, _ = await dom.state()
                    info = await dom.info()
                    print(f"  {dom.name}  id={dom.id}  {aiovirt.DomainState(state).name.lower()}  "
                          f"{info.memory // 1024} MiB")
                await asyncio.gather(*(dom.destroy() for dom in doms))
                await asyncio.gather(*(dom.undefine() for dom in doms))
                # every guest reports started, stopped and undefined before we stop watching
                with anyio.fail_after(30):
                    while sum("undefined" in s for s in seen) < count:
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        print(f"events: {len(seen)} lifecycle events, e.g. {', '.join(seen[:4])}, ...")
        left = [d.name for d in await conn.list_domains() if d.name in names]
        print(f"torn down: {'nothing left' if not left else left}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiovirt.demo", description=__doc__)
    parser.add_argument("--guests", type=int, default=4, help="how many guests (default 4)")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aiovirt-demo-") as workdir:
        with PrivateDaemon(workdir) as daemon:
            asyncio.run(tour(daemon, options.guests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
