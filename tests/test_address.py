"""Offline addressing: libvirt's layout rules, tunables, stability and errors.  (Agreement
with a real libvirtd is measured in test_address_live.py.)"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiovirt.address import (
    AddressError,
    CcidAddress,
    CcwAddress,
    Device,
    DriveAddress,
    Machine,
    PciAddress,
    SpaprVioAddress,
    Tunables,
    UsbAddress,
    VirtioSerialAddress,
    address_domain,
    device_from_dict,
    place,
)

PC, Q35 = Machine("x86_64", "pc"), Machine("x86_64", "q35")
PSERIES, S390 = Machine("ppc64", "pseries"), Machine("s390x", "s390-ccw-virtio")
RISCV, MICROVM = Machine("riscv64", "virt"), Machine("x86_64", "microvm")


def nic(model: str = "virtio", **kw) -> Device:
    return Device("interface", type="network", model=model, **kw)


def disk(target: str, bus: str | None = None, **kw) -> Device:
    return Device("disk", bus=bus, target=target, **kw)


def by_name(devices: list[Device]) -> dict[str, Device]:
    return {d.name: d for d in devices if d.name}


def controllers(devices: list[Device], type_: str) -> list[Device]:
    return [d for d in devices if d.kind == "controller" and d.type == type_]


def pci(bus: int, slot: int, function: int = 0) -> tuple[int, int, int]:
    return (bus, slot, function)


def at(device: Device) -> tuple[int, int, int]:
    assert isinstance(device.address, PciAddress), device
    return (device.address.bus, device.address.slot, device.address.function)


# -- the libvirt layout -----------------------------------------------------------------------

def test_i440fx_layout():
    devices = place(PC, [nic(name="a"), nic("e1000", name="b"), disk("vda", "virtio",
                                                                     name="d"),
                         Device("video", model="qxl", name="v")])
    named = by_name(devices)
    assert at(named["v"]) == pci(0, 2)           # the primary video: slot 2
    assert at(named["a"]) == pci(0, 3)           # then NICs, controllers, disks, balloon...
    assert at(named["b"]) == pci(0, 4)
    assert at(named["d"]) == pci(0, 5)
    [usb] = controllers(devices, "usb")
    assert (usb.model, at(usb)) == ("piix3-uhci", pci(0, 1, 2))
    [root] = controllers(devices, "pci")
    assert root.model == "pci-root" and root.added
    balloon = next(d for d in devices if d.kind == "memballoon")
    assert balloon.added and at(balloon) == pci(0, 6)


def test_q35_layout_root_ports_aggregate_in_slots():
    devices = place(Q35, [nic(name=f"n{i}") for i in range(3)])
    ports = [c for c in controllers(devices, "pci") if c.model == "pcie-root-port"]
    # 3 NICs + USB + balloon + the one spare libvirt leaves = 6 root ports, packed into
    # the functions of slot 1 (no video, so slot 1 is free)
    assert len(ports) == 6
    assert [at(p) for p in ports] == [pci(0, 1, f) for f in range(6)]
    assert ports[0].address.multifunction is True
    assert [(p.options["chassis"], p.options["port"]) for p in ports] == \
        [(p.index, 8 + f) for f, p in enumerate(ports)]
    assert all(p.options["model_name"] == "pcie-root-port" for p in ports)
    named = by_name(devices)
    assert [at(named[f"n{i}"]) for i in range(3)] == [pci(1, 0), pci(2, 0), pci(3, 0)]
    sata = controllers(devices, "sata")[0]
    assert at(sata) == pci(0, 0x1F, 2)
    used = {at(d)[0] for d in devices if isinstance(d.address, PciAddress)}
    assert [p.index for p in ports if p.index not in used] == [6]   # the spare


def test_q35_pci_only_devices_get_a_pcie_to_pci_bridge():
    devices = place(Q35, [nic("rtl8139", name="old")])
    models = [c.model for c in controllers(devices, "pci")]
    assert "pcie-to-pci-bridge" in models
    bridge = next(c for c in controllers(devices, "pci") if c.model == "pcie-to-pci-bridge")
    assert at(by_name(devices)["old"])[0] == bridge.index


def test_i440fx_grows_a_pci_bridge_when_slots_run_out():
    devices = place(PC, [nic(name=f"n{i}") for i in range(40)])
    bridges = [c for c in controllers(devices, "pci") if c.model == "pci-bridge"]
    assert len(bridges) == 1 and bridges[0].options["chassisNr"] == bridges[0].index
    addresses = [at(d) for d in devices if isinstance(d.address, PciAddress)]
    assert len(addresses) == len(set(addresses))
    assert sum(1 for a in addresses if a[0] == bridges[0].index) > 0


def test_drive_addresses_from_target_names_and_implicit_controllers():
    devices = place(PC, [disk("hda", name="a"), disk("hdd", name="b"), disk("sdb", name="c"),
                         disk("sdi", name="d"),
                         disk("fda", None, name="e", options={"device": "floppy"})])
    named = by_name(devices)
    assert named["a"].address == DriveAddress(0, 0, 0, 0)
    assert named["b"].address == DriveAddress(0, 1, 0, 1)     # hdd: bus 1, unit 1
    assert named["c"].address == DriveAddress(0, 0, 0, 1)     # sdb: scsi controller 0 unit 1
    assert named["d"].address == DriveAddress(1, 0, 0, 1)     # sdi: index 8 -> controller 1
    assert named["e"].bus == "fdc" and named["e"].address == DriveAddress(0, 0, 0, 0)
    scsi = controllers(devices, "scsi")
    assert [(c.index, c.model) for c in scsi] == [(0, "lsilogic"), (1, "lsilogic")]
    assert [c.index for c in controllers(devices, "ide")] == [0]
    assert at(controllers(devices, "ide")[0]) == pci(0, 1, 1)


def libvirt_disk_insert(disks: list[Device]) -> list[Device]:
    """libvirt's virDomainDiskInsert loop, as it is (quadratic): the order to agree with."""
    from aiovirt.address.libvirt import disk_index
    ordered: list[Device] = []
    for new in disks:
        at = -1
        for position in range(len(ordered) - 1, -1, -1):
            current = ordered[position]
            if current.bus != new.bus:
                continue
            if current.target and new.target and \
                    disk_index(current.target) > disk_index(new.target):
                at = position
            elif at == -1:
                at = position + 1
        ordered.insert(len(ordered) if at == -1 else at, new)
    return ordered


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([None, "virtio", "sata", "scsi"]),
                          st.sampled_from([None, "", "vda", "sda", "sda1", "vdb", "hdc", "zz",
                                           "sdz", "sdaa", "vdc", "fda", "sdb", "hda"])),
                max_size=14),
       st.lists(st.integers(0, 14), max_size=4))
def test_disks_are_ordered_exactly_as_libvirt_inserts_them(disks, nic_positions):
    from aiovirt.address.libvirt import LibvirtPlacement
    devices = [Device("disk", bus=bus, target=target, name=f"d{i}")
               for i, (bus, target) in enumerate(disks)]
    for i, position in enumerate(nic_positions):
        devices.insert(position, nic(name=f"n{i}"))
    placement = LibvirtPlacement(Q35, list(devices), Tunables())
    placement.sort_disks()
    assert [d.name for d in placement.devices if d.kind == "disk"] == \
        [d.name for d in libvirt_disk_insert([d for d in devices if d.kind == "disk"])]
    assert [(i, d.name) for i, d in enumerate(placement.devices) if d.kind != "disk"] == \
        [(i, d.name) for i, d in enumerate(devices) if d.kind != "disk"]


def test_usb_ports_then_hubs_when_they_run_out():
    redirs = [Device("redirdev", bus="usb", name=f"r{i}") for i in range(5)]
    devices = place(PC, redirs)        # piix3-uhci has 2 ports: one hub is added
    hubs = [d for d in devices if d.kind == "hub"]
    assert len(hubs) == 1 and hubs[0].added
    assert hubs[0].address == UsbAddress(0, (1,))
    named = by_name(devices)
    assert [named[f"r{i}"].address for i in range(5)] == [
        UsbAddress(0, (2,)), UsbAddress(0, (1, 1)), UsbAddress(0, (1, 2)),
        UsbAddress(0, (1, 3)), UsbAddress(0, (1, 4))]


def test_virtio_serial_ports_and_ccid_slots():
    chans = [Device("channel", target="virtio", name=f"c{i}") for i in range(3)]
    cards = [Device("smartcard", name=f"s{i}") for i in range(2)]
    devices = place(Q35, chans + cards)
    named = by_name(devices)
    assert [named[f"c{i}"].address for i in range(3)] == \
        [VirtioSerialAddress(0, p) for p in (1, 2, 3)]
    assert [named[f"s{i}"].address for i in range(2)] == [CcidAddress(0, 0), CcidAddress(0, 1)]
    [ccid] = controllers(devices, "ccid")
    assert isinstance(ccid.address, UsbAddress)
    assert len(controllers(devices, "virtio-serial")) == 1


def test_virtio_consoles_take_no_port_beside_channels():
    # libvirt puts a virtio console on port 0, which it neither reserves nor records
    consoles = [Device("console", target="virtio", name=f"k{i}") for i in range(3)]
    chans = [Device("channel", target="virtio", name=f"c{i}") for i in range(2)]
    named = by_name(place(Q35, consoles + chans))
    assert [named[f"c{i}"].address for i in range(2)] == \
        [VirtioSerialAddress(0, 1), VirtioSerialAddress(0, 2)]
    assert all(named[f"k{i}"].address is None for i in range(3))


def test_legacy_pci_nics_and_unnamed_models():
    # models libvirt names (e1000, rtl8139) are conventional PCI: a pcie-to-pci-bridge on
    # q35; a model it does not name (pcnet, ne2k_pci) is taken for PCI Express
    named = by_name(place(Q35, [nic("e1000", name="e"), nic("pcnet", name="p"),
                                nic("ne2k_pci", name="k"), nic("rtl8139", name="r")]))
    bridge_bus = named["e"].address.bus
    assert named["r"].address.bus == bridge_bus
    assert named["p"].address.bus != bridge_bus and named["p"].address.slot == 0
    assert named["k"].address.slot == 0


def test_what_libvirt_refuses_is_refused():
    with pytest.raises(AddressError, match="usb-net NIC no address of its own"):
        place(Q35, [nic("usb-net", name="u")])
    with pytest.raises(AddressError, match="ich7 sound"):
        place(PC, [Device("sound", model="ich7", name="s")])


# -- other machines -------------------------------------------------------------------------

def test_pseries_spapr_vio_regs():
    devices = place(PSERIES, [
        nic("spapr-vlan", name="v0"), nic("spapr-vlan", name="v1",
                                          address=SpaprVioAddress(0x2000)),
        Device("controller", type="scsi", name="scsi"),          # ibmvscsi by default
        Device("serial", name="s0"), Device("serial", target="isa-serial", name="s1"),
        Device("nvram", name="nv"), Device("tpm", model="tpm-spapr", name="tpm"),
        Device("console", name="con")])
    named = by_name(devices)
    assert named["scsi"].model == "ibmvscsi"
    assert named["v0"].address == SpaprVioAddress(0x1000)
    assert named["scsi"].address == SpaprVioAddress(0x3000)   # 0x2000 is taken: up by 0x1000
    assert named["s0"].address == SpaprVioAddress(0x30000000)
    assert named["s1"].address == SpaprVioAddress(0x30001000)   # isa-serial means the default
    assert named["nv"].address == SpaprVioAddress(0x4000)      # 0x3000 went to the vSCSI
    assert named["tpm"].address == SpaprVioAddress(0x5000)
    assert named["con"].address == named["s0"].address          # the console mirrors it
    with pytest.raises(AddressError, match="spapr-vio address 0x2000 is already in use"):
        place(PSERIES, [nic("spapr-vlan", name="a", address=SpaprVioAddress(0x2000)),
                        nic("spapr-vlan", name="b", address=SpaprVioAddress(0x2000))])


def test_pseries_grows_by_host_bridges_and_adds_usb_inputs():
    devices = place(PSERIES, [nic(name=f"n{i}") for i in range(33)] +
                    [Device("graphics", type="vnc", name="g"),
                     Device("input", type="tablet", bus="usb", name="t")])
    roots = controllers(devices, "pci")
    assert [(c.model, c.options.get("model_name"), c.options.get("targetIndex"))
            for c in roots] == [("pci-root", "spapr-pci-host-bridge", 0),
                                ("pci-root", "spapr-pci-host-bridge", 1)]
    named = by_name(devices)
    assert at(named["n30"]) == pci(0, 31) and at(named["n31"]) == pci(1, 1)
    [usb] = controllers(devices, "usb")
    assert usb.model == "qemu-xhci"
    inputs = [d for d in devices if d.kind == "input"]
    # a USB keyboard comes with the graphics; no mouse, since there is a tablet
    assert [(i.type, i.added) for i in inputs] == [("tablet", False), ("keyboard", True)]
    assert [d.kind for d in devices if d.kind == "video"] == ["video"]   # vga by default
    assert next(d for d in devices if d.kind == "video").model == "vga"


def test_s390_ccw_device_numbers_in_libvirt_order():
    devices = place(S390, [
        disk("vda", "virtio", name="d"), nic(name="n", address=CcwAddress(0xFE, 0, 1)),
        nic(name="m"), Device("channel", target="virtio", name="c"),
        Device("controller", type="scsi", name="scsi"), Device("video", name="v"),
        Device("rng", model="virtio", name="r")])
    named = by_name(devices)
    ccw = {name: d.address.devno for name, d in named.items()
           if isinstance(d.address, CcwAddress)}
    # disks, NICs, videos, controllers (virtio-serial added after scsi), ..., balloon, rngs
    assert ccw == {"d": 0, "n": 1, "m": 2, "v": 3, "scsi": 4, "r": 7}
    assert named["scsi"].model == "virtio-scsi" and named["v"].model == "virtio"
    serial = controllers(devices, "virtio-serial")[0]
    balloon = next(d for d in devices if d.kind == "memballoon")
    assert (serial.address.devno, balloon.address.devno) == (5, 6)
    assert all(a.cssid == 0xFE for a in (serial.address, balloon.address))
    assert not controllers(devices, "usb")          # no USB on s390 unless asked
    assert [c.model for c in controllers(devices, "pci")] == ["pci-root"]   # zPCI
    with pytest.raises(AddressError, match="CCW device number ccw fe.0.0001 is already"):
        place(S390, [nic(name="a", address=CcwAddress(0xFE, 0, 1)),
                     nic(name="b", address=CcwAddress(0xFE, 0, 1))])


def test_riscv_virt_like_arm_virt():
    devices = place(RISCV, [nic(name="n"), disk("vda", "virtio", name="d"),
                            Device("rng", model="virtio", name="r")])
    named = by_name(devices)
    assert named["n"].model == "virtio"
    assert [c.model for c in controllers(devices, "pci")][0] == "pcie-root"
    assert {at(named[n])[1:] for n in "ndr"} == {(0, 0)}   # each on a root port
    assert any(d.kind == "memballoon" for d in devices)    # unlike ARM
    mmio = place(RISCV, [nic(name="n"), Device("disk", bus="virtio", target="vda", name="d",
                                               options={"foreign_address": "virtio-mmio"})])
    assert by_name(mmio)["n"].options.get("foreign_address") == "virtio-mmio"


def test_microvm_takes_only_what_needs_no_pci():
    mmio = {"foreign_address": "virtio-mmio"}
    devices = place(MICROVM, [Device("controller", type="usb", model="none", name="u"),
                              Device("memballoon", model="none", name="b"),
                              disk("vda", "virtio", name="d", options=dict(mmio)),
                              Device("serial", name="s")])
    assert not any(isinstance(d.address, PciAddress) for d in devices)
    assert not controllers(devices, "pci")
    with pytest.raises(AddressError, match=r"x86_64 'microvm' has no PCI bus \(libvirt 9.0 "
                                           r"gives microvm no PCI root"):
        place(MICROVM, [disk("vda", "virtio", name="d")])


def test_numa_placement_needs_expander_buses():
    with pytest.raises(AddressError, match="NUMA placement needs PCI expander buses, which "
                                           "ppc64 'pseries' does not have"):
        place(Machine("ppc64", "pseries", numa_nodes=2), [nic(name="n", numa_node=1)])


def test_given_addresses_are_kept():
    given = PciAddress(0, 2, 0)
    devices = place(PC, [nic(name="a"), nic(name="b", address=given)])
    named = by_name(devices)
    assert named["b"].address == given and at(named["a"]) == pci(0, 3)


def test_the_input_is_left_as_it_was_on_success_and_on_failure():
    given = [nic(name="a"), disk("sda", name="d"), nic(name="b", address=PciAddress(0, 5))]
    before = [d.to_dict() for d in given]
    devices = place(PC, given)
    named = by_name(devices)
    assert len(devices) > len(given) and all(named[n].address is not None for n in "abd")
    assert [d.to_dict() for d in given] == before and given[0].address is None
    given.append(nic(name="c", address=PciAddress(0, 5)))   # the slot b has: an error
    before = [d.to_dict() for d in given]
    with pytest.raises(AddressError, match="c: "):
        place(PC, given)
    assert [d.to_dict() for d in given] == before and len(given) == 4


# -- errors -------------------------------------------------------------------------------------

def test_slot_taken_names_the_device():
    with pytest.raises(AddressError, match=r"b: PCI address 0000:00:05.0 is already in use"):
        place(PC, [nic(name="a", address=PciAddress(0, 5)), nic(name="b",
                                                                 address=PciAddress(0, 5))])


def test_slot_out_of_range_for_the_bus():
    devices = place(Q35, [nic(name="a")])
    port = next(c for c in controllers(devices, "pci") if c.model == "pcie-root-port")
    with pytest.raises(AddressError, match=r"b: .*slot 3 is out of range .*pcie-root-port"):
        place(Q35, [*devices, nic(name="b", address=PciAddress(port.index, 3))])


def test_address_of_the_wrong_type():
    with pytest.raises(AddressError, match=r"n: a PCI device cannot have an address of type "
                                           "DriveAddress"):
        place(PC, [nic(name="n", address=DriveAddress(0))])
    port = Device("controller", type="pci", index=1, model="pcie-root-port", name="p1")
    nested = Device("controller", type="pci", index=2, model="pcie-root-port", name="p2",
                    address=PciAddress(1, 0))
    with pytest.raises(AddressError, match=r"p2: PCI address 0000:01:00.0: the "
                                           "pcie-root-port of bus 1 does not take a "
                                           "pcie-root-port"):
        place(Q35, [port, nested])


def test_usb_bus_out_of_range_and_full_virtio_serial():
    with pytest.raises(AddressError, match=r"t: USB address usb 3:1: there is no USB bus 3"):
        place(PC, [Device("input", type="tablet", bus="usb", name="t",
                          address=UsbAddress(3, (1,)))])
    chans = [Device("channel", target="virtio", name=f"c{i}",
                    address=VirtioSerialAddress(0, 0)) for i in range(3)]
    small = Device("controller", type="virtio-serial", index=0, options={"ports": 2})
    with pytest.raises(AddressError, match="no free port on virtio-serial controller 0"):
        place(PC, [small, *chans])


def test_numa_node_that_does_not_exist():
    with pytest.raises(AddressError, match=r"n: guest NUMA node 2 does not exist"):
        place(Machine("x86_64", "q35", numa_nodes=2), [nic(name="n", numa_node=2)])


def test_unknown_machine_and_policy():
    with pytest.raises(AddressError, match=r"knows x86_64 pc .* not ppc64 'powernv9'"):
        place(Machine("ppc64", "powernv9"), [])
    with pytest.raises(AddressError, match="unknown addressing policy 'magic'"):
        place(PC, [], policy="magic")


# -- tunables -------------------------------------------------------------------------------

@pytest.mark.parametrize("reserve", [1, 3, 6])
def test_hotplug_reserve_on_q35_leaves_empty_root_ports(reserve):
    devices = place(Q35, [nic(name="a"), disk("vda", "virtio")], Tunables(hotplug_reserve=reserve))
    used = {d.address.bus for d in devices if isinstance(d.address, PciAddress)}
    empty = [c for c in controllers(devices, "pci")
             if c.model == "pcie-root-port" and c.index not in used]
    assert len(empty) == reserve


def test_hotplug_reserve_on_pc_keeps_free_hot_pluggable_slots():
    devices = place(PC, [nic(name=f"n{i}") for i in range(28)], Tunables(hotplug_reserve=4))
    taken = {(d.address.bus, d.address.slot) for d in devices
             if isinstance(d.address, PciAddress)}
    free = [(b.index, s) for b in controllers(devices, "pci") for s in range(1, 32)
            if b.model in ("pci-root", "pci-bridge") and (b.index, s) not in taken]
    assert len(free) >= 4
    assert any(c.model == "pci-bridge" for c in controllers(devices, "pci"))


def test_pci_placement_on_q35():
    devices = place(Q35, [nic(name="n", placement="pci")])
    bridge = next(c for c in controllers(devices, "pci") if c.model == "pcie-to-pci-bridge")
    assert at(by_name(devices)["n"])[0] == bridge.index
    devices = place(Q35, [nic(name="n")], Tunables(placement="pci"))
    assert any(c.model == "pcie-to-pci-bridge" for c in controllers(devices, "pci"))


def test_not_hotpluggable_goes_straight_onto_pcie_root():
    devices = place(Q35, [nic(name="n", hotpluggable=False)])
    assert at(by_name(devices)["n"])[0] == 0


def test_numa_placement_behind_expander_buses():
    machine = Machine("x86_64", "q35", numa_nodes=2)
    devices = place(machine, [nic(name="n", numa_node=1), nic(name="m")])
    pxb = next(c for c in controllers(devices, "pci") if c.model == "pcie-expander-bus")
    assert pxb.options["numa_node"] == 1 and pxb.options["busNr"] == 254
    port = next(c for c in controllers(devices, "pci")
                if c.model == "pcie-root-port" and at(c)[0] == pxb.index)
    assert at(by_name(devices)["n"])[0] == port.index
    assert at(by_name(devices)["m"])[0] not in (pxb.index, port.index)
    devices = place(Machine("x86_64", "pc", numa_nodes=2), [nic(name="n", numa_node=1)])
    pxb = next(c for c in controllers(devices, "pci") if c.model == "pci-expander-bus")
    assert at(by_name(devices)["n"])[0] == pxb.index


def test_multifunction_packing():
    group = [nic(name=f"g{i}", function_group="g") for i in range(3)]
    devices = place(Q35, [*group, nic(name="x")], Tunables(multifunction="pack"))
    named = by_name(devices)
    slots = {at(named[f"g{i}"])[:2] for i in range(3)}
    assert len(slots) == 1
    assert sorted(at(named[f"g{i}"])[2] for i in range(3)) == [0, 1, 2]
    assert named["g0"].address.multifunction is True
    spread = place(Q35, [nic(name=f"g{i}", function_group="g") for i in range(3)])
    assert len({at(d)[:2] for d in spread if d.name.startswith("g")}) == 3


def test_bad_tunables():
    for reserve in (-1, 1025, 10**12, 10**5000, "4", True, 4.0):
        with pytest.raises(AddressError, match="hotplug_reserve must be a whole number from 0 "
                                               "to 1024"):
            Tunables(hotplug_reserve=reserve)
    assert Tunables(hotplug_reserve=1024).hotplug_reserve == 1024
    with pytest.raises(AddressError, match="placement 'isa'"):
        Tunables(placement="isa")


# -- JSON ---------------------------------------------------------------------------------------

def test_devices_travel_as_json():
    devices = place(Q35, [nic(name="n", numa_node=None), disk("sda", "sata", name="d"),
                          Device("input", type="tablet", bus="usb", name="t")])
    data = json.loads(json.dumps([d.to_dict() for d in devices]))
    again = [device_from_dict(d) for d in data]
    assert [(d.kind, d.name, d.address) for d in again] == \
        [(d.kind, d.name, d.address) for d in devices]
    with pytest.raises(AddressError, match="unknown fields colour"):
        device_from_dict({"kind": "disk", "colour": "red"})
    with pytest.raises(AddressError, match="unknown address type 'isa'"):
        device_from_dict({"kind": "disk", "address": {"type": "isa"}})


# -- stability (property) -------------------------------------------------------------------------

KINDS = st.sampled_from([
    lambda i: nic(name=f"n{i}"), lambda i: nic("e1000", name=f"e{i}"),
    lambda i: nic("rtl8139", name=f"r{i}"), lambda i: disk(f"vd{chr(97 + i % 26)}{i // 26 or ''}",
                                                           "virtio", name=f"v{i}"),
    lambda i: Device("sound", model="ich9", name=f"s{i}"),
    lambda i: Device("channel", target="virtio", name=f"c{i}"),
    lambda i: Device("redirdev", bus="usb", name=f"u{i}"),
    lambda i: Device("rng", model="virtio", name=f"g{i}"),
    lambda i: Device("controller", type="scsi", model="virtio-scsi", name=f"k{i}"),
    lambda i: nic(name=f"p{i}", function_group=f"group{i % 3}"),   # packed when asked
])


def build(makers: list, offset: int = 0) -> list[Device]:
    return [make(offset + i) for i, make in enumerate(makers)]


def addresses(devices: list[Device]) -> dict[str, object]:
    """Where each device sits (for PCI: bus, slot, function; the multifunction bit of a
    slot's function 0 may turn on when libvirt packs another root port into that slot).
    A device without a name (a controller, a hub) is known by what it is and where it sits:
    two USB hubs are told apart only by their ports, so one that moved is one missing."""
    def where(d: Device) -> object:
        address = d.address
        if isinstance(address, PciAddress):
            return (address.bus, address.slot, address.function)
        return address
    return {d.name or f"{d.kind}/{d.type}/{d.index}/{d.model}@{where(d)}": where(d)
            for d in devices if d.address is not None}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([PC, Q35]), st.lists(KINDS, max_size=25), st.lists(KINDS, max_size=12),
       st.integers(0, 4), st.integers(0, 4), st.sampled_from([None, "pci", "pcie"]),
       st.sampled_from(["spread", "pack"]), st.sampled_from(["spread", "pack"]))
def test_adding_devices_or_changing_tunables_never_moves_existing_ones(
        machine, first, later, reserve, reserve_later, placement_later, multifunction,
        multifunction_later):
    before = place(Machine(machine.arch, machine.machine), build(first),
                   Tunables(hotplug_reserve=reserve, multifunction=multifunction))
    old = addresses(before)
    old_indexes = {(c.type, c.index) for c in before if c.kind == "controller"}
    highest_pci = max(c.index for c in before if c.kind == "controller" and c.type == "pci")
    try:
        after = place(Machine(machine.arch, machine.machine), [*before, *build(later, 100)],
                      Tunables(hotplug_reserve=reserve_later, placement=placement_later,
                               multifunction=multifunction_later))
    except AddressError as exc:
        # the one thing that can make room is moving a device, which is never done: when
        # every USB port is taken, a hub has nowhere to go (libvirt fails the same way)
        assert "no free USB port" in str(exc)
        return
    new = addresses(after)
    for name, address in old.items():
        assert new.get(name) == address, name
    for cont in after:
        if cont.kind == "controller" and cont.type == "pci" and \
                (cont.type, cont.index) not in old_indexes:
            assert cont.index > highest_pci
    pci_addresses = [a for a in new.values() if isinstance(a, tuple)]
    assert len(pci_addresses) == len(set(pci_addresses))


OTHER_KINDS = {
    "pseries": [lambda i: nic(name=f"n{i}"), lambda i: nic("e1000", name=f"e{i}"),
                lambda i: nic("spapr-vlan", name=f"v{i}"),
                lambda i: disk(f"vd{chr(97 + i % 26)}{i // 26 or ''}", "virtio", name=f"d{i}"),
                lambda i: Device("channel", target="virtio", name=f"c{i}"),
                lambda i: Device("serial", name=f"s{i}"),
                lambda i: Device("redirdev", bus="usb", name=f"u{i}"),
                lambda i: Device("controller", type="scsi", name=f"k{i}")],
    "s390": [lambda i: nic(name=f"n{i}"),
             lambda i: disk(f"vd{chr(97 + i % 26)}{i // 26 or ''}", "virtio", name=f"d{i}"),
             lambda i: Device("channel", target="virtio", name=f"c{i}"),
             lambda i: Device("rng", model="virtio", name=f"g{i}"),
             lambda i: Device("controller", type="scsi", name=f"k{i}")],
    "riscv": [lambda i: nic(name=f"n{i}"), lambda i: nic("e1000", name=f"e{i}"),
              lambda i: disk(f"vd{chr(97 + i % 26)}{i // 26 or ''}", "virtio", name=f"d{i}"),
              lambda i: Device("channel", target="virtio", name=f"c{i}"),
              lambda i: Device("rng", model="virtio", name=f"g{i}")],
}
OTHER_MACHINES = {"pseries": PSERIES, "s390": S390, "riscv": RISCV}


def test_a_full_usb_controller_refuses_a_device_that_needs_a_hub():
    """Every port of pseries' USB controller taken by placed devices: one more needs a hub,
    which has no port to go to; libvirt 9.0 refuses the same domain ("No free USB ports")."""
    placed = place(PSERIES, [Device("redirdev", bus="usb", name=f"u{i}") for i in range(4)])
    assert sorted(str(d.address) for d in placed if d.kind == "redirdev") == \
        ["usb 0:1", "usb 0:2", "usb 0:3", "usb 0:4"]
    with pytest.raises(AddressError, match="hub type=usb: no free USB port"):
        place(PSERIES, [*placed, Device("redirdev", bus="usb", name="u4")])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(OTHER_KINDS)), st.data(), st.integers(0, 3))
def test_adding_devices_never_moves_existing_ones_on_other_machines(family, data, reserve):
    kinds = st.sampled_from(OTHER_KINDS[family])
    first = data.draw(st.lists(kinds, max_size=40))
    later = data.draw(st.lists(kinds, max_size=12))
    machine = OTHER_MACHINES[family]
    before = place(Machine(machine.arch, machine.machine), build(first),
                   Tunables(hotplug_reserve=reserve))
    old = addresses(before)
    try:
        after = place(Machine(machine.arch, machine.machine), [*before, *build(later, 100)])
    except AddressError as exc:
        # the only refusal allowed: the new USB devices need a hub and the devices already
        # placed hold every port it could take (moving one is what must never happen)
        assert "no free USB port" in str(exc), exc
        return
    new = addresses(after)
    for name, address in old.items():
        assert new.get(name) == address, name
    # no two devices share a place (but the console that mirrors the first serial port)
    placed = [repr(d.address) for d in after if d.address is not None and d.kind != "console"]
    assert len(placed) == len(set(placed))


# -- XML ----------------------------------------------------------------------------------------

def test_domain_xml_in_and_out():
    result = address_domain(
        "<domain type='kvm'><name>x</name><memory>1</memory><os><type arch='x86_64' "
        "machine='q35'>hvm</type></os><devices><interface type='user'><model type='virtio'/>"
        "<alias name='ua-net'/></interface><graphics type='vnc'/></devices></domain>",
        Tunables(hotplug_reserve=1), device_tunables={"ua-net": {"hotpluggable": False}})
    from lxml import etree
    root = etree.fromstring(result.xml.encode())
    nic_address = root.find("devices/interface/address")
    assert nic_address.get("bus") == "0x00"    # integrated: straight on pcie-root
    assert root.find("devices/video/address").get("slot") == "0x01"    # implicit video
    assert root.find("devices/video/model").get("type") == "cirrus"
    assert {d.kind for d in result.added} >= {"video", "memballoon", "controller"}
    with pytest.raises(AddressError, match="no device named 'ua-nope'"):
        address_domain(result.xml, device_tunables={"ua-nope": {"numa_node": 0}})
