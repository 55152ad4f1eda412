"""Hot-plug: addressing a new device against a live domain (``aiovirt.address.hotplug``),
preparing snippets from devices and profiles (``aiovirt.compose.hotplug``), and
``Domain.hotplug``/``unplug`` and ``aiovirt hotplug``/``unplug`` on real KVM guests.

Offline tests use a live q35 XML libvirt 9.0 produced here (tests/data/live-q35-hotplug.xml:
five pcie-root-ports, two of them free).  The KVM tests start diskless q35 guests without an
OS: PCI devices plug (QEMU reports DEVICE_ADDED) but never leave, since only a guest OS
releases them; USB devices and virtio-serial ports leave without the guest's help.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from lxml import etree

import aiovirt
from aiovirt.address import AddressError, PciAddress, Tunables, UsbAddress, address_domain
from aiovirt.address.domainxml import read_devices
from aiovirt.address.hotplug import address_hotplug
from aiovirt.api.domain import DeviceEventTimeout
from aiovirt.api.events import DomainDeviceAddedEvent, DomainDeviceRemovedEvent
from aiovirt.compose import ComposeError
from aiovirt.compose.aliases import AliasError, assign_user_aliases
from aiovirt.compose.hotplug import HotplugRequest, prepare_hotplug
from aiovirt.xml import metadata
from aiovirt.xml.safe import parse, to_string

LIVE = (Path(__file__).parent / "data" / "live-q35-hotplug.xml").read_text()
NIC = "<interface type='user'><model type='virtio'/></interface>"
VDISK = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
         "<source file='{path}'/><target dev='{dev}' bus='virtio'/></disk>")
USBDISK = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
           "<source file='{path}'/><target dev='sda' bus='usb'/></disk>")
CHANNEL = "<channel type='pty'><target type='virtio' name='org.example.hot.0'/></channel>"
GUEST = """<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type></os><features><acpi/><apic/></features>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
<controller type='virtio-serial'/>
<interface type='user'><model type='virtio'/></interface>
</devices></domain>"""
AIOVIRT = shutil.which("aiovirt", path=str(Path(sys.executable).parent)) or "aiovirt"


def addresses(xml: str | etree._Element) -> dict[str, object]:
    """Every device's address by name (alias, else kind#n)."""
    root = parse(xml) if isinstance(xml, str) else xml
    return {d.name: d.address for d in read_devices(root)}


# -- addressing a new device, offline ------------------------------------------------------------
def test_a_new_nic_takes_a_free_root_port_and_nothing_moves():
    plugged = address_hotplug(LIVE, NIC)
    assert plugged.address == PciAddress(bus=4, slot=0, function=0)
    assert plugged.element.find("address").attrib == {
        "type": "pci", "domain": "0x0000", "bus": "0x04", "slot": "0x00", "function": "0x0"}
    # the domain given is left alone; with the device added, every old address is the same
    live = parse(LIVE)
    live.find("devices").append(plugged.element)
    after = addresses(live)
    for name, address in addresses(LIVE).items():
        assert after[name] == address, name


def test_devices_plug_one_after_another_until_the_free_ports_are_used():
    live = parse(LIVE)
    taken = []
    for dev in ("vdb", "vdc"):
        plugged = address_hotplug(live, VDISK.format(path="/x", dev=dev))
        taken.append(plugged.address)
        live.find("devices").append(plugged.element)
    assert taken == [PciAddress(4, 0), PciAddress(5, 0)]
    with pytest.raises(AddressError, match=r"the new <disk>: no free place .*pcie-root-port.* "
                                           "hotplug reserve"):
        address_hotplug(live, VDISK.format(path="/x", dev="vdd"))


@pytest.mark.parametrize("reserve", [0, 1, 3])
def test_the_hotplug_reserve_is_what_hotplug_can_use(reserve):
    """A saved definition addressed with a reserve of N takes exactly N hot-plugged PCIe
    devices (plus the one spare root port libvirt itself leaves when it adds ports)."""
    bare = ("<domain type='kvm'><name>r</name><memory>65536</memory>"
            "<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
            f"{NIC}</devices></domain>")
    root = address_domain(bare, Tunables(hotplug_reserve=reserve)).tree
    free = max(reserve, 1)
    for n in range(free):
        plugged = address_hotplug(root, VDISK.format(path="/x", dev=f"vd{'bcdef'[n]}"))
        assert isinstance(plugged.address, PciAddress) and plugged.address.bus > 0
        root.find("devices").append(plugged.element)
    with pytest.raises(AddressError, match="no free place"):
        address_hotplug(root, VDISK.format(path="/x", dev="vdz"))


def test_usb_and_sata_devices_take_free_ports_and_units():
    usb = address_hotplug(LIVE, USBDISK.format(path="/x"))
    assert usb.address == UsbAddress(0, (1,))
    sata = address_hotplug(LIVE, "<disk type='file' device='disk'><source file='/x'/>"
                                 "<target dev='sdb' bus='sata'/></disk>")
    assert str(sata.address) == "drive 0:0:0:1"


@pytest.mark.parametrize("device, fragment", [
    (CHANNEL, "would need <controller type='virtio-serial'>"),
    ("<interface type='user'><model type='virtio'/><address type='pci' bus='0x01' "
     "slot='0x00'/></interface>", "0000:01:00.0 is already in use"),
    ("<domain/>", "expected one device element"),
    ("<interface", "<device>"),
])
def test_impossible_or_malformed_devices_are_refused_saying_why(device, fragment):
    with pytest.raises((AddressError, aiovirt.XMLInputError), match=fragment):
        address_hotplug(LIVE, device)


# -- preparing snippets ---------------------------------------------------------------------------
def test_prepare_gives_a_stable_alias_and_an_address():
    [nic] = prepare_hotplug(LIVE, NIC)
    # ua-net-user is the running NIC's: the new one is numbered after it
    assert nic.find("alias").get("name") == "ua-net-user-2"
    assert nic.find("address").get("bus") == "0x04"
    [again] = prepare_hotplug(LIVE, NIC)
    assert to_string(again) == to_string(nic)


def test_prepare_checks_a_given_alias():
    with pytest.raises(AliasError, match="'ua-net-user' is already used"):
        prepare_hotplug(LIVE, "<interface type='user'><alias name='ua-net-user'/></interface>")
    with pytest.raises(AliasError, match="holds '.'"):
        prepare_hotplug(LIVE, "<interface type='user'><alias name='ua-a.b'/></interface>")


def test_prepare_takes_the_devices_a_profile_adds():
    profile = ("<profile name='two-disks' version='1'><add><devices>"
               + VDISK.format(path="/a", dev="vdb") + VDISK.format(path="/b", dev="vdc")
               + "</devices></add></profile>")
    disks = prepare_hotplug(LIVE, profile)
    assert [(d.find("alias").get("name"), d.find("address").get("bus")) for d in disks] == \
        [("ua-disk-vdb", "0x04"), ("ua-disk-vdc", "0x05")]
    # a profile that changes more than devices cannot be hot-plugged
    with pytest.raises(ComposeError, match="changes more than devices"):
        prepare_hotplug(LIVE, "q35")


def test_hotplug_request_is_what_domain_hotplug_calls():
    request = HotplugRequest(NIC)
    [xml] = request(LIVE)
    assert "ua-net-user-2" in xml and len(request.prepared) == 1


def test_cli_hotplug_offline_prints_the_addressed_device(tmp_path):
    live = tmp_path / "live.xml"
    live.write_text(LIVE)
    run = subprocess.run([AIOVIRT, "hotplug", "g", "-", "--offline",
                          str(live)], input=NIC, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "<alias name=\"ua-net-user-2\"/>" in run.stdout and 'bus="0x04"' in run.stdout
    run = subprocess.run([AIOVIRT, "hotplug", "g", "-", "--offline",
                          str(live)], input=CHANNEL, capture_output=True, text=True,
                         check=False)
    assert run.returncode == 1 and "virtio-serial" in run.stderr


# -- a defined (shut-off) domain: the definition only, no event ------------------------------------
async def test_hotplug_into_a_shut_off_domain_changes_its_definition(daemon):
    root = parse(GUEST.format(name=f"cold-{uuid.uuid4().hex[:8]}"))
    assign_user_aliases(root)
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(address_domain(root, Tunables(hotplug_reserve=1)).xml)
        try:
            expected = prepare_hotplug(await dom.xml(), NIC)[0].find("address").attrib
            [plugged] = await dom.hotplug(HotplugRequest(NIC), timeout=5)
            assert plugged.alias == "ua-net-user-2"
            device = metadata.find_device(parse(await dom.xml()), plugged.alias)
            assert device.find("address").attrib == expected
            with pytest.raises(aiovirt.OperationInvalid, match="not running"):
                await dom.hotplug(NIC, persistent=False)
            await dom.unplug(plugged.alias)
            assert metadata.find_device(parse(await dom.xml()), plugged.alias) is None
        finally:
            await dom.undefine()


# -- live, on KVM guests -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_guest(conn: aiovirt.Connection) -> AsyncIterator[aiovirt.Domain]:
    """A persistent diskless q35 guest, addressed with two ports to spare, then aliased:
    every controller, the built-in pcie-root and SATA ones too, has a ``ua-`` alias (libvirt
    still names QEMU's built-in buses itself, so the guest starts)."""
    root = address_domain(GUEST.format(name=f"hot-{uuid.uuid4().hex[:8]}"),
                          Tunables(hotplug_reserve=2)).tree
    assert "ua-ctrl-pci-0" in assign_user_aliases(root)
    dom = await conn.define_xml(to_string(root))
    try:
        await dom.start()
        yield dom
    finally:
        if await dom.is_active():
            await dom.destroy()
        await dom.undefine()


async def next_event(subscription, kind: type, alias: str) -> object:
    with anyio.fail_after(10):
        async for event in subscription:
            if isinstance(event, kind) and event.dev_alias == alias:
                return event
    raise AssertionError("subscription ended")


@pytest.mark.kvm
async def test_hotplug_a_virtio_nic_into_a_running_q35_guest(daemon):
    uri = daemon.uri("qemu", "/system")
    async with aiovirt.connect(uri) as conn, running_guest(conn) as dom:
        expected = prepare_hotplug(await dom.xml(), NIC)[0]
        async with conn.domain_events(aiovirt.DomainEventID.DEVICE_ADDED, dom) as added:
            [plugged] = await dom.hotplug(HotplugRequest(NIC), timeout=10)
            event = await next_event(added, DomainDeviceAddedEvent, plugged.alias)
        assert event.domain == dom and plugged.alias == "ua-net-user-2"
        live = parse(await dom.xml())
        device = metadata.find_device(live, plugged.alias)
        assert device is not None and device.find("model").get("type") == "virtio"
        assert device.find("address").attrib == expected.find("address").attrib
        # persistent domain: the definition has it too, at the same address
        config = metadata.find_device(parse(await dom.xml(2)), plugged.alias)
        assert config is not None
        assert config.find("address").attrib == expected.find("address").attrib

        await dom.write_device_metadata(plugged.alias, {"displayNetwork": "ops", "vlan": 7})
        async with aiovirt.connect(uri) as other:   # a new connection, the daemon's copy
            again = await other.lookup_domain(name=dom.name)
            assert await again.read_device_metadata(plugged.alias) == {
                "displayNetwork": "ops", "vlan": 7}
            assert metadata.read_device(parse(await again.xml(2)), plugged.alias) == {
                "displayNetwork": "ops", "vlan": 7}

        # the definition outlives the guest: after a restart the device is where it was,
        # with its data
        await dom.destroy()
        assert await dom.read_device_metadata(plugged.alias) == {"displayNetwork": "ops",
                                                                 "vlan": 7}
        await dom.start()
        device = metadata.find_device(parse(await dom.xml()), plugged.alias)
        assert device.find("address").attrib == expected.find("address").attrib
        assert await dom.read_device_metadata(plugged.alias) == {"displayNetwork": "ops",
                                                                 "vlan": 7}

        # a guest without an OS never lets a PCI device go: bounded, and says so; libvirt
        # has taken it out of the definition at once, the running guest keeps it
        with pytest.raises(DeviceEventTimeout, match="guest OS"):
            await dom.unplug(plugged.alias, timeout=1)
        assert metadata.find_device(parse(await dom.xml()), plugged.alias) is not None
        assert metadata.find_device(parse(await dom.xml(2)), plugged.alias) is None
        assert await dom.read_device_metadata(plugged.alias) is not None


@pytest.mark.kvm
async def test_hotplug_and_unplug_usb_disk_and_channel(daemon, tmp_path):
    image = tmp_path / "usb.img"
    image.write_bytes(b"\0" * 65536)
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn, \
            running_guest(conn) as dom:
        async with conn.domain_events(aiovirt.DomainEventID.DEVICE_ADDED, dom) as added, \
                conn.domain_events(aiovirt.DomainEventID.DEVICE_REMOVED, dom) as removed:
            disk, channel = await dom.hotplug(HotplugRequest(
                "<profile name='hot-usb' version='1'><add><devices>"
                + USBDISK.format(path=image) + CHANNEL + "</devices></add></profile>"),
                timeout=10)
            assert (disk.alias, channel.alias) == ("ua-disk-sda",
                                                   "ua-channel-org_example_hot_0")
            for alias in (disk.alias, channel.alias):
                await next_event(added, DomainDeviceAddedEvent, alias)
            assert "<address type=\"usb\" bus=\"0\" port=\"1\"/>" in disk.xml
            assert "type=\"virtio-serial\"" in channel.xml
            await dom.write_device_metadata(disk.alias, {"volume": "v-1"})

            await dom.unplug(disk.alias, timeout=10)
            await next_event(removed, DomainDeviceRemovedEvent, disk.alias)
            await dom.unplug(channel.alias, timeout=10)
            await next_event(removed, DomainDeviceRemovedEvent, channel.alias)
        for xml in (await dom.xml(), await dom.xml(2)):
            assert metadata.find_device(parse(xml), disk.alias) is None
            assert metadata.find_device(parse(xml), channel.alias) is None
        # unplugging forgets the device's data
        assert await dom.device_metadata() == {}
        with pytest.raises(metadata.UnknownDevice, match=r"'ua-disk-sda'.*ua-net-user"):
            await dom.unplug(disk.alias)


@pytest.mark.kvm
async def test_a_raw_device_gets_a_random_user_alias_and_a_live_only_plug(daemon):
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn, \
            running_guest(conn) as dom:
        [plugged] = await dom.hotplug(CHANNEL, persistent=False, timeout=10)
        assert metadata.is_user_alias(plugged.alias)
        assert plugged.alias.startswith("ua-channel-")
        assert metadata.find_device(parse(await dom.xml(2)), plugged.alias) is None
        await dom.unplug(plugged.alias, timeout=10)
        assert metadata.find_device(parse(await dom.xml()), plugged.alias) is None


@pytest.mark.kvm
async def test_cli_hotplug_and_unplug(daemon):
    uri = daemon.uri("qemu", "/system")
    async with aiovirt.connect(uri) as conn, running_guest(conn) as dom:
        def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
            return subprocess.run([AIOVIRT, *args], input=stdin,
                                  capture_output=True, text=True, timeout=60, check=False)

        run = await anyio.to_thread.run_sync(
            lambda: cli("hotplug", dom.name, "-", "-c", uri, "--json", stdin=CHANNEL))
        assert run.returncode == 0, run.stderr
        assert '"alias": "ua-channel-org_example_hot_0"' in run.stdout
        assert metadata.find_device(parse(await dom.xml()),
                                    "ua-channel-org_example_hot_0") is not None
        run = await anyio.to_thread.run_sync(
            lambda: cli("unplug", dom.name, "ua-channel-org_example_hot_0", "-c", uri))
        assert run.returncode == 0, run.stderr
        assert metadata.find_device(parse(await dom.xml()),
                                    "ua-channel-org_example_hot_0") is None
        run = await anyio.to_thread.run_sync(
            lambda: cli("unplug", dom.name, "ua-nope", "-c", uri))
        assert run.returncode == 1 and "no device with alias 'ua-nope'" in run.stderr
