"""Device identity (``aiovirt.compose.aliases``) and per-device metadata (``aiovirt.metadata``).

Offline: every device that can carry an alias gets a ``ua-`` one made from its natural key,
stable across re-composition, unique, valid by libvirt 9.0's rule; bad or duplicate aliases
fail naming the device; per-device data is written, read, listed, removed and pruned on a
domain tree and survives composition, addressing and pretty-printing.

Against the suite's libvirtd (QEMU driver, defined only, nothing started): libvirt keeps
every alias we give through define, and per-device metadata survives define, a new
connection and a redefinition from the dumped XML.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

import aiovirt
from aiovirt.address import address_domain, address_tree
from aiovirt.compose import compose
from aiovirt.compose.aliases import (AliasError, assign_user_aliases, check_user_alias,
                                     device_aliases)
from aiovirt.xml import metadata
from aiovirt.xml.safe import parse, to_string

# libvirt 9.0 src/conf/domain_conf.c: USER_ALIAS_PREFIX "ua-", USER_ALIAS_CHARS
LIBVIRT_USER_ALIAS = re.compile(r"ua-[a-zA-Z0-9_-]*")

GUEST = """<domain type='kvm'>
  <name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><source file='/var/lib/x.img'/>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    <controller type='virtio-serial' index='0'/>
    <interface type='network'><mac address='52:54:00:0A:0B:0C'/>
      <source network='default'/><model type='virtio'/></interface>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <input type='tablet' bus='usb'/>
    <graphics type='vnc' port='-1'/>
    <audio id='1' type='none'/>
    <video><model type='virtio'/></video>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>"""

EXPECTED = ["ua-disk-vda", "ua-disk-sda", "ua-ctrl-virtio-serial-0",
            "ua-net-52_54_00_0a_0b_0c", "ua-net-user", "ua-serial-0",
            "ua-channel-org_qemu_guest_agent_0", "ua-input-tablet-usb", "ua-video-virtio",
            "ua-rng-virtio"]


def tree(name: str = "g") -> etree._Element:
    return parse(GUEST.format(name=name))


def aliases_of(root: etree._Element) -> list[tuple[str, str | None]]:
    return [(e.tag, None if e.find("alias") is None else e.find("alias").get("name"))
            for e in root.find("devices") if isinstance(e.tag, str)]


# -- aliases ------------------------------------------------------------------------------
def test_every_device_that_can_carry_an_alias_gets_one_from_its_natural_key():
    root = tree()
    assert assign_user_aliases(root) == EXPECTED
    found = dict(aliases_of(root))
    # libvirt has no alias for these: giving one would be dropped
    assert found["graphics"] is None and found["audio"] is None and found["emulator"] is None
    # the console mirrors the first serial: libvirt replaces it by that serial, alias and all
    assert found["console"] is None
    assert all(LIBVIRT_USER_ALIAS.fullmatch(a) for a in EXPECTED)
    # <alias> sits before <address> when there is one (where libvirt formats it)
    addressed = address_domain(root).tree
    disk = addressed.find("devices/disk")
    assert [c.tag for c in disk][-2:] == ["alias", "address"]


def test_aliases_are_stable_across_recomposition_and_never_change_once_given():
    first, second = tree(), tree()
    assert assign_user_aliases(first) == assign_user_aliases(second)
    assert to_string(first) == to_string(second)
    # a second pass adds nothing and changes nothing
    before = to_string(first)
    assert assign_user_aliases(first) == []
    assert to_string(first) == before


def test_a_changed_model_or_a_device_added_in_front_renames_nothing():
    base = tree()
    assign_user_aliases(base)
    changed = tree()
    changed.find("devices/interface/model").set("type", "e1000e")
    devices = changed.find("devices")
    devices.insert(1, etree.fromstring("<disk type='file' device='disk'><source file='/b'/>"
                                       "<target dev='vdb' bus='virtio'/></disk>"))
    devices.insert(1, etree.fromstring("<interface type='user'><model type='virtio'/>"
                                       "</interface>"))
    added = assign_user_aliases(changed)
    old = {a for _, a in aliases_of(base) if a}
    assert old <= set(added)
    # the new devices get new aliases; the second user-mode NIC is numbered after the first
    assert set(added) - old == {"ua-disk-vdb", "ua-net-user-2"}


def test_given_aliases_are_kept_and_taken_into_account():
    root = parse("<domain><devices>"
                 "<interface type='network'><source network='lan'/></interface>"
                 "<interface type='network'><source network='lan'/>"
                 "<alias name='ua-net-lan'/></interface>"
                 "<interface type='network'><source network='lan'/></interface>"
                 "</devices></domain>")
    assert assign_user_aliases(root) == ["ua-net-lan-2", "ua-net-lan-3"]
    assert [a for _, a in aliases_of(root)] == ["ua-net-lan-2", "ua-net-lan", "ua-net-lan-3"]


def test_libvirts_own_aliases_are_replaced_as_define_would_drop_them():
    root = parse("<domain><devices><disk><target dev='vdz'/><alias name='virtio-disk0'/>"
                 "</disk></devices></domain>")
    assert assign_user_aliases(root) == ["ua-disk-vdz"]
    assert root.findall("devices/disk/alias")[0].attrib == {"name": "ua-disk-vdz"}
    assert len(root.findall("devices/disk/alias")) == 1


@pytest.mark.parametrize("alias, fragment", [
    ("ua-disk.0", "holds '.'"),
    ("ua-räder", "holds 'ä'"),
    ("ua-a b", "holds ' '"),
])
def test_a_user_alias_libvirt_would_drop_is_refused_naming_the_device(alias, fragment):
    root = parse(f"<domain><devices>\n<disk><target dev='vda'/><alias name='{alias}'/></disk>"
                 "</devices></domain>")
    with pytest.raises(AliasError, match=re.escape(fragment)) as info:
        assign_user_aliases(root)
    assert "<disk> (line 2)" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_user_alias_used_twice_is_refused():
    root = parse("<domain><devices><disk><target dev='vda'/><alias name='ua-x'/></disk>"
                 "<disk><target dev='vdb'/><alias name='ua-x'/></disk></devices></domain>")
    with pytest.raises(AliasError, match="'ua-x' is used twice"):
        assign_user_aliases(root)
    with pytest.raises(AliasError, match="non-unique"):
        device_aliases(root)


def test_a_live_xml_with_the_serial_alias_on_the_console_too_is_accepted():
    live = parse((Path(__file__).parent / "data" / "live-q35-hotplug.xml").read_text())
    found = device_aliases(live)
    assert found["ua-serial-0"].tag == "serial"
    assert {"ua-net-user", "pci.1", "usb", "balloon0"} <= set(found)


def test_check_user_alias_says_what_is_wrong():
    assert check_user_alias("ua-ok_1-x") == "ua-ok_1-x"
    with pytest.raises(AliasError, match="does not start with 'ua-'"):
        check_user_alias("net0")


def channels(names: list[str]) -> etree._Element:
    root = etree.Element("domain")
    devices = etree.SubElement(root, "devices")
    for name in names:
        channel = etree.SubElement(devices, "channel", type="unix")
        etree.SubElement(channel, "target", type="virtio", name=name)
    return root


@given(st.lists(st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=80),
                min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_any_channel_names_give_valid_distinct_short_aliases(names):
    added = assign_user_aliases(channels(names))
    assert len(added) == len(names) == len(set(added))
    for alias in added:
        assert LIBVIRT_USER_ALIAS.fullmatch(alias), alias
        assert len(alias) <= len("ua-channel-") + 40 + 4
    assert assign_user_aliases(channels(names)) == added


def test_aliases_survive_addressing_and_name_devices_for_tunables():
    root = tree()
    assign_user_aliases(root)
    before = aliases_of(root)
    devices = address_tree(root, device_tunables={"ua-net-user": {"placement": "pci"}})
    assert [a for t, a in aliases_of(root) if a and a.startswith("ua-")] == \
        [a for _, a in before if a]
    nic = next(d for d in devices if d.name == "ua-net-user")
    assert nic.placement == "pci"


# -- per-device metadata, offline -----------------------------------------------------------
def aliased() -> etree._Element:
    root = tree()
    assign_user_aliases(root)
    return root


def test_device_metadata_write_read_list_remove():
    root = aliased()
    value = {"displayIp": "10.0.0.5", "displayNetwork": "ops", "ports": [5900, 5901]}
    metadata.write_device(root, "ua-video-virtio", value)
    metadata.write_device(root, "ua-disk-vda", {"volume": uuid.UUID(int=7).hex, "gb": 20.5})
    assert metadata.read_device(root, "ua-video-virtio") == value
    assert metadata.read_device(root, "ua-net-user", "none") == "none"
    assert list(metadata.device_entries(root)) == ["ua-video-virtio", "ua-disk-vda"]
    # replacing keeps the order and the other device's data
    metadata.write_device(root, "ua-video-virtio", None)
    assert metadata.device_entries(root) == {"ua-video-virtio": None,
                                             "ua-disk-vda": {"volume": uuid.UUID(int=7).hex,
                                                             "gb": 20.5}}
    assert metadata.remove_device(root, "ua-video-virtio") is True
    assert metadata.remove_device(root, "ua-video-virtio") is False
    assert metadata.remove_device(root, "ua-disk-vda") is True
    # the last one out takes the element with it
    assert root.find("metadata").find(f"{{{metadata.DEVICES_NAMESPACE}}}devices") is None


def test_device_metadata_is_readable_xml_in_its_own_namespace():
    root = aliased()
    metadata.write(root, {"app": 1}, namespace="https://example.org/app")
    metadata.write_device(root, "ua-disk-vda", {"volume": "v1"})
    text = to_string(root)
    assert ('<aiovirt-devices:devices xmlns:aiovirt-devices='
            '"https://aiovirt.org/xmlns/devices/1">') in text
    assert '<device alias="ua-disk-vda" type="dict">' in text
    assert "<volume>v1</volume>" in text
    assert metadata.read(root, "https://example.org/app") == {"app": 1}


def test_unknown_alias_and_non_user_alias_are_refused_saying_which():
    root = aliased()
    with pytest.raises(metadata.UnknownDevice, match=r"'ua-disk-vdq'.*ua-disk-vda"):
        metadata.write_device(root, "ua-disk-vdq", 1)
    with pytest.raises(metadata.UnknownDevice, match="'net0' is not a user alias"):
        metadata.write_device(root, "net0", 1)
    # binding ahead of the device is allowed when asked for
    metadata.write_device(root, "ua-disk-vdq", 1, check=False)
    assert metadata.read_device(root, "ua-disk-vdq") == 1
    assert metadata.prune_devices(root) == ["ua-disk-vdq"]
    assert metadata.device_entries(root) == {}


def test_a_bad_value_leaves_the_tree_alone():
    root = aliased()
    metadata.write_device(root, "ua-disk-vda", {"keep": True})
    before = to_string(root)
    with pytest.raises(TypeError, match=r"device ua-disk-vda\['x'\]"):
        metadata.write_device(root, "ua-disk-vda", {"x": object()})
    assert to_string(root) == before


def test_malformed_device_metadata_says_where():
    with pytest.raises(ValueError, match="without an alias"):
        metadata.devices_from_xml("<devices><device type='int'>1</device></devices>")
    with pytest.raises(ValueError, match="device ua-a"):
        metadata.devices_from_xml("<devices><device alias='ua-a' type='int'>x</device>"
                                  "</devices>")
    assert metadata.devices_from_xml(None) == {} and metadata.devices_from_xml(" ") == {}


def test_device_metadata_survives_pretty_printing_composition_and_addressing():
    root = aliased()
    metadata.write_device(root, "ua-net-user", {"displayNetwork": "ops", "n": 3})
    reparsed = parse(to_string(root))
    assert metadata.read_device(reparsed, "ua-net-user") == {"displayNetwork": "ops", "n": 3}
    composed = compose(reparsed, ["guest-agent", "virtio-rng"], validate=False).tree
    assert metadata.read_device(composed, "ua-net-user") == {"displayNetwork": "ops", "n": 3}
    assert metadata.find_device(composed, "ua-net-user") is not None
    addressed = address_domain(composed).tree
    assert metadata.read_device(addressed, "ua-net-user") == {"displayNetwork": "ops", "n": 3}
    # aliasing the composed result again keeps every alias the data is bound to
    assign_user_aliases(addressed)
    assert metadata.find_device(addressed, "ua-net-user") is not None


@pytest.mark.parametrize("alias, ok", [
    ("ua-", True), ("ua-a_B-9", True), ("ua-a.b", False), ("ua:a", False), ("net0", False),
    ("UA-x", False), ("ua-x\n", False), (None, False)])
def test_is_user_alias_follows_libvirts_rule(alias, ok):
    assert metadata.is_user_alias(alias) is ok
    if alias is not None:
        assert bool(LIBVIRT_USER_ALIAS.fullmatch(alias)) is ok


# -- against libvirt (defined, not started) ----------------------------------------------------
async def test_libvirt_keeps_every_alias_and_the_device_metadata_through_define(daemon):
    name = f"ident-{uuid.uuid4().hex[:8]}"
    root = tree(name)
    added = assign_user_aliases(root)
    metadata.write_device(root, "ua-disk-vda", {"volume": "vol-1", "size": 1 << 40})
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(to_string(root))
        try:
            dumped = parse(await dom.xml(2))
            kept = {a.get("name") for a in dumped.iterfind("devices/*/alias")}
            assert set(added) <= kept
            assert metadata.read_device(dumped, "ua-disk-vda") == {"volume": "vol-1",
                                                                   "size": 1 << 40}
            # the live API sees what the XML carried, and writes through it
            assert await dom.read_device_metadata("ua-disk-vda") == {"volume": "vol-1",
                                                                     "size": 1 << 40}
            await dom.write_device_metadata("ua-net-user", ["a", 1])
            with pytest.raises(metadata.UnknownDevice, match="'ua-nope'"):
                await dom.write_device_metadata("ua-nope", 1)
            async with aiovirt.connect(daemon.uri("qemu", "/system")) as other:
                again = await other.lookup_domain(name=name)
                assert await again.device_metadata() == {
                    "ua-disk-vda": {"volume": "vol-1", "size": 1 << 40},
                    "ua-net-user": ["a", 1]}
            # redefining from the dumped XML (a re-composition's input) keeps it all
            xml = await dom.xml(2)
            await dom.undefine()
            dom = await conn.define_xml(xml)
            assert await dom.read_device_metadata("ua-net-user") == ["a", 1]
            assert await dom.remove_device_metadata("ua-net-user") is True
            assert await dom.remove_device_metadata("ua-net-user") is False
            assert list(await dom.device_metadata()) == ["ua-disk-vda"]
        finally:
            await dom.undefine()


@pytest.mark.kvm
async def test_a_composed_guest_with_aliases_on_every_device_starts_and_keeps_them(daemon):
    """Composed from shipped profiles, addressed, then aliased (built-in controllers too):
    QEMU starts it, and the live XML names every device by our alias except the PS/2 inputs
    libvirt adds on its own."""
    name = f"ident-{uuid.uuid4().hex[:8]}"
    root = compose(f"<domain><name>{name}</name></domain>",
                   ["kvm-base", "q35", "virtio-linux", "guest-agent", "usb3", "virtio-rng",
                    "spice-desktop"], params={"kvm-base.memory": "64"}, address=True).tree
    added = assign_user_aliases(root)
    assert {"ua-ctrl-pci-0", "ua-ctrl-sata-0", "ua-channel-org_qemu_guest_agent_0",
            "ua-video-qxl"} <= set(added)
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(to_string(root))
        try:
            await dom.start()
            live = parse(await dom.xml())
            names = {a.get("name"): a.getparent() for a in live.iterfind("devices/*/alias")}
            assert set(added) <= set(names)
            others = [e for alias, e in names.items() if not alias.startswith("ua-")]
            assert others and all(e.tag == "input" and e.get("bus") == "ps2" for e in others)
        finally:
            if await dom.is_active():
                await dom.destroy()
            await dom.undefine()


def test_compose_gives_aliases_when_asked_and_keeps_them_on_recomposition():
    """``compose(aliases=True)`` names every device after addressing (the controllers it adds
    too) and reports them; composing its own output again gives no new alias and moves none."""
    from aiovirt.compose import compose
    from aiovirt.xml.safe import parse
    partial = ("<domain type='kvm'><name>g</name><memory>524288</memory><os><type "
               "arch='x86_64' machine='q35'>hvm</type></os><devices><disk type='file' "
               "device='disk'><source file='/x.img'/><target dev='vda' bus='virtio'/></disk>"
               "<interface type='network'><mac address='52:54:00:0a:0b:0c'/><source "
               "network='default'/><model type='virtio'/></interface></devices></domain>")
    assert compose(partial, [], validate=False).aliased == []
    first = compose(partial, [], validate=False, address=True, aliases=True)
    assert "ua-disk-vda" in first.aliased and "ua-net-52_54_00_0a_0b_0c" in first.aliased
    assert any(alias.startswith("ua-ctrl-pci") for alias in first.aliased)
    again = compose(first.xml, [], validate=False, address=True, aliases=True)
    assert again.aliased == []
    names = [a.get("name") for a in parse(again.xml).iter("alias")]
    assert sorted(names) == sorted(first.aliased)
