"""``aiovirt demo``: the whole pipeline against a libvirtd it starts itself.

It starts a private libvirtd (unless given ``--uri``), provisions a batch of guests composed
from shipped profiles and addressed offline (real KVM guests where ``/dev/kvm`` exists, the
test driver otherwise) while printing their lifecycle events, shows them running, tears
them down and checks that nothing is left.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from typing import Any

import anyio

from ..client.backend import run as run_loop
from ..errors import AiovirtError
from .progress import summary, teardown_summary

__all__ = ["register"]

KVM_TEMPLATE = "<domain><name>demo</name></domain>"
KVM_PROFILES = ("kvm-base", "q35", "virtio-linux", "guest-agent", "virtio-rng")
TEST_TEMPLATE = ("<domain type='test'><name>demo</name><os><type>hvm</type></os></domain>")
TEST_PROFILES = ("kvm-base", "virtio-linux", "guest-agent")


def _version(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


async def _tour(uri: str, tcp_uri: str | None, count: int, kvm: bool, keep: bool) -> int:
    from ..address import Tunables
    from ..api.connection import connect
    from ..api.domain import DomainLifecycleEvent, DomainState
    from ..provision import GuestSpec, Provisioning, teardown

    async with connect(uri) as conn:
        print(f"connected: {uri.split('?')[0]} (libvirt {_version(await conn.get_lib_version())}"
              f", hypervisor {_version(await conn.get_version())}, host "
              f"{await conn.hostname()})")
        if tcp_uri:
            async with connect(tcp_uri) as tcp:
                print(f"and over TCP: {tcp_uri.split('?')[0]} (libvirt "
                      f"{_version(await tcp.get_lib_version())})")
        prefix = f"demo-{os.getpid() % 10000:04d}"
        if kvm:
            spec = GuestSpec(KVM_TEMPLATE, KVM_PROFILES, {"kvm-base.memory": "64"}, count,
                             name=prefix + "-{n}", address=Tunables(hotplug_reserve=2))
        else:
            spec = GuestSpec(TEST_TEMPLATE, TEST_PROFILES, {"kvm-base.memory": "64"}, count,
                             name=prefix + "-{n}")
        kind = "KVM guests" if kvm else "test-driver guests (no /dev/kvm here)"
        print(f"provisioning {count} {kind} composed from {', '.join(spec.profiles)}"
              f"{' + 2 spare hotplug ports' if kvm else ''}, addressed offline")
        job = Provisioning(conn, spec)
        began = time.monotonic()
        seen: list[str] = []
        gone = anyio.Event()
        expected = [count]   # undefined events to wait for (the guests that exist)
        async with conn.domain_events() as events, anyio.create_task_group() as tg:
            async def show() -> None:
                async for event in events:
                    if isinstance(event, DomainLifecycleEvent) and \
                            event.domain.name.startswith(prefix):
                        kind_ = getattr(event.event, "name", str(event.event)).lower()
                        seen.append(kind_)
                        print(f"  {time.monotonic() - began:6.2f} s  event  "
                              f"{event.domain.name:<12} {kind_}")
                        if seen.count("undefined") >= expected[0]:
                            gone.set()

            tg.start_soon(show)
            report = await job.run()
            print(summary(report))
            for result in report.results:
                if result.exists:
                    dom = await conn.lookup_domain(name=result.name)
                    state, _ = await dom.state()
                    info = await dom.info()
                    xml = await dom.xml()
                    print(f"  {dom.name}  id={dom.id}  "
                          f"{getattr(DomainState(state), 'name', state).lower()}  "
                          f"{info.memory // 1024} MiB  {xml.count('<controller')} controllers, "
                          f"{xml.count('<address type=')} addresses")
            if keep:
                print(f"kept them (--keep): aiovirt teardown --uri '{uri}' --run "
                      f"{report.run_id}")
                tg.cancel_scope.cancel()
                return 0 if report.ok else 1
            expected[0] = len(report.existing())
            removed = await teardown(conn, report=report)
            print("teardown: " + teardown_summary(removed))
            # every guest reports undefined before we stop watching: proof from the daemon
            with anyio.fail_after(30):
                if expected[0] and seen.count("undefined") < expected[0]:
                    await gone.wait()
            tg.cancel_scope.cancel()
        left = [d.name for d in await conn.list_domains() if d.name.startswith(prefix)]
        print(f"{len(seen)} lifecycle events; left behind: {', '.join(left) or 'nothing'}")
        return 0 if report.ok and removed.ok and not left else 1


def _demo(options: argparse.Namespace) -> int:
    from ..testing.daemon import PrivateDaemon

    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK) and not options.test_driver
    with ExitStack() as stack:
        if options.uri:
            uri, tcp_uri = options.uri, None
            kvm = kvm and options.uri.startswith("qemu")
        else:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="aiovirt-demo-"))
            try:
                daemon = stack.enter_context(PrivateDaemon(workdir))
            except Exception as exc:   # noqa: BLE001 - say why the daemon did not start
                raise AiovirtError(f"could not start a private libvirtd: {exc} (run "
                                   "`bash scripts/setup` first?)") from None
            print(f"started a private libvirtd (pid {daemon.pid}) on {daemon.socket_path} "
                  f"and 127.0.0.1:{daemon.tcp_port}")
            uri = daemon.uri("qemu", "/system") if kvm else daemon.uri("test", "/default")
            tcp_uri = daemon.uri("test", "/default", transport="tcp")
        return run_loop(_tour(uri, tcp_uri, options.guests, kvm, options.keep))


def register(commands: Any) -> None:
    """Add ``demo``."""
    demo = commands.add_parser(
        "demo", help="provision and tear down a batch of guests on a private libvirtd",
        description=sys.modules[__name__].__doc__)
    demo.add_argument("--guests", "-n", type=int, default=4, help="how many (default 4)")
    demo.add_argument("--uri", help="use this libvirtd instead of starting one")
    demo.add_argument("--test-driver", action="store_true",
                      help="use the test driver even where KVM exists")
    demo.add_argument("--keep", action="store_true", help="leave the guests running")
    demo.set_defaults(run=_demo)
