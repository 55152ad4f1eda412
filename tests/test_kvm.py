"""Real KVM guests on the QEMU driver of the suite's libvirtd."""

from __future__ import annotations

import json
import time
import uuid

import anyio
import pytest

import aiovirt

pytestmark = pytest.mark.kvm


def guest_xml(name: str) -> str:
    """A diskless 32 MiB guest: enough for QEMU to run, nothing to boot."""
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>")


async def test_kvm_guest_define_start_virsh_destroy_undefine(daemon):
    name = f"kvm-{uuid.uuid4().hex[:8]}"
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(guest_xml(name))
        try:
            await dom.start()
            assert dom.id > 0
            assert daemon.virsh("domstate", name).strip() == "running"
            assert (await dom.state())[0] == aiovirt.DomainState.RUNNING
            # the QEMU program's procedures are reachable too
            reply = await conn.qemu_rpc.domain_monitor_command(
                dom._ref, '{"execute": "query-status"}', 0)
            assert json.loads(reply.result)["return"]["running"] is True
            await dom.destroy()
            assert daemon.virsh("domstate", name).strip() == "shut off"
        finally:
            if await dom.is_active():
                await dom.destroy()
            await dom.undefine()
        assert name not in daemon.virsh("list", "--all", "--name").split()


async def test_quick_call_completes_while_five_slow_ones_run(daemon):
    names = [f"slow-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        doms = [await conn.define_xml(guest_xml(n)) for n in names]
        finished: list[str] = []

        async def start(dom: aiovirt.Domain) -> None:
            await dom.start()
            finished.append(dom.name)

        try:
            async with anyio.create_task_group() as tg:
                for dom in doms:
                    tg.start_soon(start, dom)
                # wait until all five starts are on the wire (on the lanes)
                deadline = time.monotonic() + 30
                while (on_lanes := sum(c.in_flight for c in conn.channels[1:])) < 5:
                    if time.monotonic() > deadline or finished:
                        pytest.fail(f"the 5 starts were never all on the lanes at once "
                                    f"({on_lanes} now; finished already: {finished})")
                    await anyio.lowlevel.checkpoint()
                assert await conn.get_lib_version() == 9000000
                finished_when_quick_returned = list(finished)
            assert finished_when_quick_returned == []
            assert sorted(finished) == sorted(names)
        finally:
            for dom in doms:
                if await dom.is_active():
                    await dom.destroy()
                await dom.undefine()
