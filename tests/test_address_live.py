"""Addressing against the suite's real libvirtd: agreement with libvirt on its own test inputs
and generated domains, libvirt keeping what aiovirt assigns, tunables that start as KVM
guests, and hotplug into a reserved root port."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

import pytest
from lxml import etree

import aiovirt
from aiovirt.address import PciAddress, Tunables, address_domain

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".libvirt-src" / "libvirt-9.0.0"


def agreement_tool():
    spec = importlib.util.spec_from_file_location(
        "address_agreement", ROOT / "benchmarks" / "address_agreement.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["address_agreement"] = module
    spec.loader.exec_module(module)
    return module


# What the corpus gives with libvirt 9.0.0 + QEMU 7.2 (benchmarks/README.md): documents that
# libvirt accepts, per mode, of 903 + 903 libvirt test inputs and 400 generated domains.  A
# floor a little under them: a corpus that shrank (inputs lost, libvirt refusing more) fails.
SCORED_AT_LEAST = {"addresses": 775, "controllers": 780, "generated": 380}


def libvirt_tree() -> Path:
    """libvirt's source tree; its absence is a failure, not a skip: CI always has it."""
    if not (TREE / "tests" / "qemuxml2argvdata").is_dir():
        pytest.fail(f"libvirt's test inputs are missing at {TREE}: run "
                    "`bash rpc/fetch-libvirt-source` (scripts/setup runs it)", pytrace=False)
    return TREE


async def test_agreement_with_libvirt_and_libvirt_keeps_our_addresses(daemon):
    tool = agreement_tool()
    modes = ("addresses", "controllers", "generated")
    cases = tool.build_cases(libvirt_tree(), modes, count=400)
    await tool.define_all(cases, daemon, cached=False)   # the truth from this daemon, now
    lines, scores = tool.report(cases, modes, show=5, roundtrips={})
    print("\n".join(lines))
    for mode in modes:
        result = scores[mode]
        assert result.documents >= SCORED_AT_LEAST[mode], (mode, result.documents)
        assert not result.failed, result.failed[:5]
        # every document agrees exactly, as the README says: not "nearly all"
        assert result.differing == [], (mode, result.differing[:5])
        assert result.exact == result.documents
        assert result.agreeing == result.devices > 0
        checked, changed = await tool.roundtrip([c for c in cases if c.mode == mode], daemon)
        assert checked == result.documents
        assert changed == [], changed[:5]
    assert sum(scores[mode].documents for mode in modes) >= 1950


GUEST = """<domain type='kvm'><name>{name}</name><memory unit='MiB'>128</memory>
<vcpu>2</vcpu><cpu><numa><cell id='0' cpus='0' memory='65536'/>
<cell id='1' cpus='1' memory='65536'/></numa></cpu>
<os><type arch='x86_64' machine='{machine}'>hvm</type></os><devices>
<interface type='user'><model type='virtio'/><alias name='ua-net0'/></interface>
<interface type='user'><model type='virtio'/><alias name='ua-net1'/></interface>
<interface type='user'><model type='e1000'/><alias name='ua-net2'/></interface>
<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
<input type='tablet' bus='usb'/></devices></domain>"""

TUNED = {
    "reserve": (Tunables(hotplug_reserve=3), {}),
    "numa": (Tunables(), {"ua-net0": {"numa_node": 1}, "ua-net1": {"numa_node": 0}}),
    "integrated": (Tunables(), {"ua-net0": {"hotpluggable": False}}),
    "pci": (Tunables(placement="pci"), {}),
    "pack": (Tunables(multifunction="pack"), {"ua-net0": {"function_group": "a"},
                                              "ua-net1": {"function_group": "a"}}),
}


def kept(ours: str, theirs: str) -> dict[str, tuple[str | None, str | None]]:
    tool = sys.modules.get("address_agreement") or agreement_tool()
    a, b = tool.address_map(ours), tool.address_map(theirs)
    return {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}


@pytest.mark.parametrize("machine", ["pc", "q35"])
@pytest.mark.parametrize("tuning", sorted(TUNED))
async def test_tuned_output_defines_unchanged(daemon, tuning, machine):
    tunables, per_device = TUNED[tuning]
    xml = address_domain(GUEST.format(name=f"tuned-{uuid.uuid4().hex[:6]}", machine=machine),
                         tunables, device_tunables=per_device).xml
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(xml)
        try:
            assert kept(xml, await dom.xml(2)) == {}
        finally:
            await dom.undefine()


@pytest.mark.kvm
@pytest.mark.parametrize("tuning", sorted(TUNED))
async def test_tuned_q35_guest_starts(daemon, tuning):
    tunables, per_device = TUNED[tuning]
    xml = address_domain(GUEST.format(name=f"run-{uuid.uuid4().hex[:6]}", machine="q35"),
                         tunables, device_tunables=per_device).xml
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(xml)
        try:
            await dom.start()
            assert (await dom.state())[0] == aiovirt.DomainState.RUNNING
            assert kept(xml, await dom.xml()) == {}     # the live guest has them too
        finally:
            if await dom.is_active():
                await dom.destroy()
            await dom.undefine()


@pytest.mark.kvm
async def test_nic_hotplugs_into_a_reserved_root_port(daemon):
    result = address_domain(GUEST.format(name=f"hotplug-{uuid.uuid4().hex[:6]}",
                                         machine="q35"), Tunables(hotplug_reserve=2))
    used = {d.address.bus for d in result.devices if isinstance(d.address, PciAddress)}
    reserved = {c.index for c in result.devices if c.kind == "controller" and
                c.model == "pcie-root-port" and c.index not in used}
    assert len(reserved) == 2
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(result.xml)
        try:
            await dom.start()
            await dom.attach_device("<interface type='user'><model type='virtio'/>"
                                    "<alias name='ua-hot'/></interface>")
            live = etree.fromstring((await dom.xml()).encode())
            hot = live.xpath("devices/interface[alias/@name='ua-hot']/address")[0]
            assert int(hot.get("bus"), 16) in reserved
            assert (hot.get("slot"), hot.get("function")) == ("0x00", "0x0")
        finally:
            if await dom.is_active():
                await dom.destroy()
            await dom.undefine()
