"""The ``libvirt`` placement policy: what libvirt 9.0 does with QEMU 7.2, done offline.

It follows libvirt's own steps when a domain is defined (qemu_domain.c, domain_postparse.c,
domain_conf.c, qemu_domain_address.c, domain_addr.c in libvirt 9.0.0), for x86_64 ``pc``
(i440fx) and ``q35``, aarch64 and riscv64 ``virt``, ppc64 ``pseries`` (spapr-vio and PCI
host bridges) and s390x ``s390-ccw-virtio`` (CCW) machines; x86_64 ``microvm``, which libvirt
9.0 gives no PCI bus, only where nothing needs one:

1. controller indexes for controllers that have none;
2. the machine's default devices: the PCI root (pci-root or pcie-root), the USB controller
   (piix3-uhci on pc, qemu-xhci on q35 and pSeries), q35's SATA controller, the virtio memory
   balloon (all but ARM), pSeries' USB keyboard and mouse for a graphical console;
3. per-device defaults that decide addressing: disk buses from target names and their drive
   addresses, controller models (USB, SCSI), NIC and video models, SCSI host device units;
4. implicit controllers (SCSI/IDE/SATA/FDC for disks, virtio-serial for channels, CCID for
   smartcards) and the video device a display implies;
5. virtio-serial ports, spapr-vio regs, s390 CCW device numbers, virtio-mmio, then PCI
   addresses (a sizing pass that adds the pcie-root-ports, pci-bridges or pSeries PHBs the
   devices need, then the real pass: chipset-fixed slots, then devices in libvirt's order),
   then USB ports (hubs added when ports run out).

Tunables beyond libvirt (``Tunables`` and the per-device fields) change the PCI steps:
a hotplug reserve, PCI or PCIe placement, devices that need not be hot-pluggable placed as
integrated endpoints, NUMA placement behind expander buses, and multifunction packing.
Addresses already given are kept: they are reserved first, so existing devices never move.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterator
from typing import Any

from .model import (
    MAX_CONTROLLER_INDEX,
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
    pci_address,
)
from .pci import Bus, Connect, Flags, PciSpace, controller_connect

__all__ = ["LibvirtPlacement", "disk_index"]

_PCI_DEV = Connect.PCI_DEVICE | Connect.AUTOASSIGN
_PCIE_DEV = Connect.PCIE_DEVICE | Connect.AUTOASSIGN
_USB2 = ("ich9-ehci1", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3")
_USB_PORTS = {None: 2, "piix3-uhci": 2, "piix4-uhci": 2, "vt82c686b-uhci": 2, "ehci": 6,
              "ich9-ehci1": 6, "ich9-uhci1": 0, "ich9-uhci2": 0, "ich9-uhci3": 0,
              "pci-ohci": 3, "nec-xhci": 4, "qemu-xhci": 4, "qusb1": 8, "qusb2": 8}
_HUB_PORTS = 8
_VIRTIO_SERIAL_PORTS = 31
_MODEL_NAMES = {"pci-bridge": "pci-bridge", "dmi-to-pci-bridge": "i82801b11-bridge",
                "pcie-to-pci-bridge": "pcie-pci-bridge", "pcie-root-port": "pcie-root-port",
                "pcie-switch-upstream-port": "x3130-upstream",
                "pcie-switch-downstream-port": "xio3130-downstream",
                "pci-expander-bus": "pxb", "pcie-expander-bus": "pxb-pcie"}
_VIRTIO_MODELS = ("virtio", "virtio-non-transitional", None)
_VIRTIO_NETS = ("virtio", "virtio-transitional", "virtio-non-transitional")
# the NIC models libvirt 9.0 knows by name (any other is passed to QEMU as it is)
_NET_MODELS = frozenset(("unknown", "netfront", "rtl8139", "virtio", "e1000", "e1000e",
                         "virtio-transitional", "virtio-non-transitional", "usb-net",
                         "spapr-vlan", "lan9118", "scm91c111", "vlance", "vmxnet", "vmxnet2",
                         "vmxnet3", "am79c970a", "am79c973", "82540em", "82545em", "82543gc"))
# spapr-vio regs libvirt starts from (QEMU's own defaults), by kind of device
_VIO_NET, _VIO_SCSI, _VIO_SERIAL, _VIO_NVRAM, _VIO_TPM = (0x1000, 0x2000, 0x30000000, 0x3000,
                                                          0x4000)
_CCW_CSSID = 0xFE   # virtio-ccw devices live in channel subsystem 0xfe
_CCW_DEVNO_LAST = 0xFFFF
_CCID_SLOT_LAST = 0xFF   # the highest slot a CcidAddress may give (model.py's range)
_MACHINES = ("x86_64 pc (pc-i440fx-*) and q35 (pc-q35-*), aarch64 and riscv64 virt, ppc64 "
             "pseries, s390x s390-ccw-virtio, x86_64 microvm (without PCI devices)")


_CONNECT_MEMO: dict[tuple[Any, ...], Flags] = {}   # LibvirtPlacement.connect's results
# the slots the chipsets fix
_PIIX3_ISA, _PIIX3_IDE, _PIIX3_USB, _PIIX3_ACPI = (PciAddress(0, 1, f) for f in range(4))
_PIIX3_VIDEO = PciAddress(0, 2, 0)
_ICH9_LPC, _ICH9_SATA, _ICH9_SMBUS = (PciAddress(0, 0x1F, f) for f in (0, 2, 3))
_Q35_VIDEO, _ICH9_AUDIO = PciAddress(0, 1, 0), PciAddress(0, 0x1B, 0)
_DIGITS = "0123456789"                          # string.digits, without importing string
_LOWERCASE = "abcdefghijklmnopqrstuvwxyz"       # string.ascii_lowercase


@functools.lru_cache(maxsize=4096)
def disk_index(name: str) -> int:
    """A disk target name's index (``hda`` 0, ``sdb`` 1, ``vdaa`` 26), or -1."""
    for prefix in ("fd", "hd", "vd", "sd", "xvd", "ubd"):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            break
    else:
        return -1
    letters = rest.rstrip(_DIGITS)
    digits = rest[len(letters):]
    if not letters or not all(c in _LOWERCASE for c in letters):
        return -1
    if len(digits) > 1 and digits[0] == "0":
        return -1
    index = 0
    for position, letter in enumerate(letters):
        index = (index + (1 if position else 0)) * 26 + ord(letter) - ord("a")
    return index


class LibvirtPlacement:
    """One run of the policy over one domain's devices (mutated in place; new devices are
    appended with ``added=True``)."""

    def __init__(self, machine: Machine, devices: list[Device], tunables: Tunables) -> None:
        self.machine = machine
        self.devices = devices
        self.tunables = tunables
        self.groups: dict[str, PciAddress] = {}
        self._lists: dict[tuple[str, str | None], Any] = {}
        self._kinds: dict[str, list[Device]] = {}   # of(): the devices by kind
        self._root: str | None = None   # the PCI root's model, once the defaults are in
        self._numa = False               # whether any device asks for a NUMA node
        self._plain = True               # neither NUMA nor multifunction packing
        self._device_order: list[Device] | None = None   # PCI requests, once known
        self._order_flags: list[Flags] | None = None     # and their connect flags
        self._flags: dict[int, Flags] = {}  # connect flags by device, once the root is known

    # -- helpers ----------------------------------------------------------------------------
    def of(self, kind: str) -> list[Device]:
        """The devices of one kind, in order (cached; kept up to date as devices are added)."""
        found = self._kinds.get(kind)
        if found is None:
            kinds = self._kinds
            if not kinds:   # every kind's list in one pass over the devices
                for dev in self.devices:
                    same = kinds.get(dev.kind)
                    if same is None:
                        kinds[dev.kind] = [dev]
                    else:
                        same.append(dev)
                found = kinds.get(kind)
            if found is None:
                found = kinds[kind] = []
        return found

    def _forget(self) -> None:
        """Drop the cached lists (after the devices were reordered)."""
        self._lists.clear()
        self._kinds.clear()

    def controllers(self, type_: str | None = None) -> list[Device]:
        key = ("controller", type_)
        found = self._lists.get(key)
        if found is None:
            found = self._lists[key] = [d for d in self.of("controller")
                                        if type_ is None or d.type == type_]
        return found

    def controller(self, type_: str, index: int) -> Device | None:
        key = ("controller#", type_)
        found = self._lists.get(key)
        if found is None:
            found = self._lists[key] = {c.index: c for c in reversed(self.controllers(type_))}
        return found.get(index)  # type: ignore[union-attr]

    def add(self, device: Device) -> Device:
        """Append a device the policy adds (after every device of its kind)."""
        device.added = True
        same = self.of(device.kind)
        at = self.devices.index(same[-1]) + 1 if same else len(self.devices)
        self.devices.insert(at, device)
        # it is now the last of its kind: the cached lists it belongs to just grow
        same.append(device)
        if device.kind == "controller":
            for key in (("controller", None), ("controller", device.type)):
                if key in self._lists:
                    self._lists[key].append(device)
            indexes = self._lists.get(("controller#", device.type))
            if indexes is not None:
                indexes.setdefault(device.index, device)
        return device

    def add_many(self, devices: list[Device]) -> None:
        """``add`` for several devices of one kind at once (one search for the place)."""
        if not devices:
            return
        kind = devices[0].kind
        same = self.of(kind)
        at = self.devices.index(same[-1]) + 1 if same else len(self.devices)
        self.devices[at:at] = devices
        for device in devices:
            device.added = True
        same.extend(devices)
        if kind == "controller":
            if ("controller", None) in self._lists:
                self._lists[("controller", None)].extend(devices)
            for type_ in {d.type for d in devices}:
                mine = [d for d in devices if d.type == type_]
                if ("controller", type_) in self._lists:
                    self._lists[("controller", type_)].extend(mine)
                indexes = self._lists.get(("controller#", type_))
                if indexes is not None:
                    for device in mine:
                        indexes.setdefault(device.index, device)

    def add_controller(self, type_: str, index: int | None = None,
                       model: str | None = None) -> Device:
        if index is None:
            index = self.unused_index(type_)
        return self.add(Device("controller", type_, model, None, index))

    def maybe_add_controller(self, type_: str, index: int, model: str | None = None
                             ) -> Device | None:
        if self.controller(type_, index) is not None:
            return None
        return self.add_controller(type_, index, model)

    def unused_index(self, type_: str) -> int:
        used = {c.index for c in self.controllers(type_)}
        index = 0
        while index in used:
            index += 1
        return index

    @property
    def has_pcie_root(self) -> bool:
        if self._root is not None:
            return self._root == "pcie-root"
        return any(c.model == "pcie-root" for c in self.controllers("pci"))

    @property
    def has_pci_root(self) -> bool:
        if self._root is not None:
            return self._root == "pci-root"
        return any(c.model == "pci-root" for c in self.controllers("pci"))

    # -- the whole run ----------------------------------------------------------------------
    def run(self) -> list[Device]:
        self.check_disks()
        self.sort_controllers()
        self.sort_disks()
        self.assign_controller_indexes()
        self.add_default_devices()
        self.device_defaults()
        self.add_implicit_devices()
        self.assign_virtio_serial()
        self.assign_spapr_vio()
        self.assign_ccw()
        self.assign_virtio_mmio()
        self.assign_pci()
        self.assign_usb()
        self.assign_memory_slots()
        self.mirror_serial_console()
        return self.devices

    # -- 0. what libvirt refuses at define time -----------------------------------------------
    def check_disks(self) -> None:
        """Two disks with one target name, or one drive address on one kind of bus, and two
        controllers of one type with one index, are refused as libvirt refuses them
        (virDomainDefCheckDuplicateDiskInfo, ...DriveAddresses, "Multiple controllers"), not
        written out for the daemon to reject."""
        indexes: dict[tuple[str | None, int], Device] = {}
        for cont in self.of("controller"):
            if cont.index is not None and cont.type != "usb":   # (USB companions share one)
                other = indexes.setdefault((cont.type, cont.index), cont)
                if other is not cont:
                    raise AddressError(f"{cont.label()}: {cont.type} controller index "
                                       f"{cont.index} is {other.label()}'s too")
        targets: dict[str, Device] = {}
        drives: dict[tuple[str | None, DriveAddress], Device] = {}
        for disk in self.of("disk"):
            if disk.target:
                other = targets.setdefault(disk.target, disk)
                if other is not disk:
                    raise AddressError(f"{disk.label()}: target {disk.target!r} is "
                                       f"{other.label()}'s too")
            if isinstance(disk.address, DriveAddress):
                other = drives.setdefault((disk.bus, disk.address), disk)
                if other is not disk:
                    raise AddressError(f"{disk.label()}: drive address {disk.address} on the "
                                       f"{disk.bus} bus is {other.label()}'s too")

    # -- 1. controller order and indexes ------------------------------------------------------
    def sort_controllers(self) -> None:
        """Order controllers as libvirt's parser inserts them: by type, each new one after
        the last of its type with a lower index (a USB master before its companions)."""
        slots = [i for i, d in enumerate(self.devices) if d.kind == "controller"]
        ordered: list[Device] = []
        for cont in (self.devices[i] for i in slots):
            at = -1
            for position in range(len(ordered) - 1, -1, -1):
                current = ordered[position]
                if current.type != cont.type:
                    continue
                if cont.index is None:
                    at = position + 1
                    break
                later = current.index is not None and current.index > cont.index
                before_its_companion = not cont.options.get("master") and \
                    current.options.get("master") and current.index == cont.index
                if later or before_its_companion:
                    at = position
                elif at == -1:
                    at = position + 1
            ordered.insert(len(ordered) if at == -1 else at, cont)
        for slot, cont in zip(slots, ordered):
            self.devices[slot] = cont
        self._forget()

    def sort_disks(self) -> None:
        """Order disks as libvirt's parser inserts them (virDomainDiskInsert): on the same
        bus, by target index; in near-linear time where libvirt's scan is quadratic."""
        if self._disks_in_order():
            return
        slots = [i for i, d in enumerate(self.devices) if d.kind == "disk"]
        disks = [self.devices[i] for i in slots]
        for slot, position in zip(slots, _disk_order(disks)):
            self.devices[slot] = disks[position]
        self._forget()

    def _disks_in_order(self) -> bool:
        """Whether sorting would leave the disks as they are: each bus's disks together and
        by target index."""
        highest: dict[str | None, int] = {}
        previous: str | None = None
        for disk in self.of("disk"):
            bus = disk.bus
            seen = highest.get(bus)
            index = disk_index(disk.target) if disk.target else -1
            if seen is not None and (bus != previous or not disk.target or index < seen):
                return False
            highest[bus] = index
            previous = bus
        return True

    # -- 1b. controller indexes ----------------------------------------------------------------
    def assign_controller_indexes(self) -> None:
        controllers = self.controllers()
        for position, cont in enumerate(controllers):
            if cont.index is not None:
                continue
            previous = None
            if position > 0 and cont.type == "usb" and cont.model in _USB2:
                earlier = [c for c in controllers[:position] if c.type == "usb"]
                previous = earlier[-1] if earlier else None
                if previous is not None and previous.model not in _USB2:
                    previous = None
                if previous is not None and any(
                        c.type == "usb" and c.index == previous.index and c.model == cont.model
                        for c in controllers):
                    previous = None
            cont.index = previous.index if previous is not None else \
                self.unused_index(cont.type or "")

    # -- 2. the machine's default devices ----------------------------------------------------
    def add_default_devices(self) -> None:
        m = self.machine
        usb_model: str | None = None
        add_usb = add_sata = add_balloon = True
        root = None
        if m.is_x86:
            if m.machine == "isapc":
                add_usb = False
            elif m.is_q35:
                root, add_sata, usb_model = "pcie-root", True, "qemu-xhci"
            elif m.is_i440fx:
                root = "pci-root"
            if not m.is_q35:
                add_sata = False
        elif m.is_arm_virt:
            add_usb = add_sata = add_balloon = False
            root = "pcie-root"
        elif m.is_riscv_virt:
            add_usb = add_sata = False
            root = "pcie-root"
        elif m.is_pseries:
            add_sata = False
            root = "pci-root"
            self._pseries_inputs()
        elif m.is_s390_ccw:
            add_usb = add_sata = False
            root = "pci-root"   # zPCI
        else:
            raise AddressError(f"the libvirt policy knows {_MACHINES}; not {m.arch} "
                               f"{m.machine!r}")
        if add_usb and self.controller("usb", 0) is None:
            self.add_usb_controller(0, usb_model)
        if add_sata:
            self.maybe_add_controller("sata", 0)
        if root is not None:
            existing = self.controller("pci", 0)
            if existing is None:
                self.add_controller("pci", 0, root)
            elif existing.model is None:
                existing.model = root
            elif existing.model != root:
                raise AddressError(f"the PCI controller with index 0 must be {root} on "
                                   f"{m.machine}, not {existing.model}")
        if add_balloon and not self.of("memballoon"):
            self.add(Device("memballoon", model="virtio"))
        root_cont = self.controller("pci", 0)
        self._root = (root_cont.model or "") if root_cont is not None else ""

    def _pseries_inputs(self) -> None:
        """With a graphical console, libvirt gives ppc64 guests a USB keyboard, and a USB
        mouse unless there is a USB tablet."""
        if not self.of("graphics"):
            return
        inputs = self.of("input")
        for kind in ("keyboard", "mouse"):
            if kind == "mouse" and any(i.type == "tablet" and i.bus == "usb" for i in inputs):
                continue
            if not any(i.type == kind and i.bus == "usb" for i in inputs):
                self.add(Device("input", type=kind, bus="usb"))

    def add_usb_controller(self, index: int, model: str | None) -> None:
        self.add_controller("usb", index, model)
        if model == "ich9-ehci1":
            for companion in ("ich9-uhci1", "ich9-uhci2", "ich9-uhci3"):
                self.add_controller("usb", index, companion)

    # -- 3. per-device defaults ---------------------------------------------------------------
    def device_defaults(self) -> None:
        m = self.machine
        scsi_hosts = {h.address for h in self.of("hostdev") if h.type == "scsi"}
        for disk in self.of("disk"):
            self.disk_defaults(disk, scsi_hosts)
        for net in self.of("interface"):
            if net.type not in ("hostdev",) and net.model is None:
                net.model = "virtio" if net.type == "vdpa" or m.is_arm_virt or \
                    m.is_riscv_virt or m.is_s390_ccw else "rtl8139"
        self._console_compat()
        for serial in self.of("serial"):
            if serial.target in (None, "isa-serial"):
                serial.target = self._serial_target()
        used = {d.address for d in self.devices if isinstance(d.address, DriveAddress) and
                ((d.kind == "disk" and d.bus == "scsi") or
                 (d.kind == "hostdev" and d.type == "scsi"))}
        controller = 0   # the first with a free unit: full ones stay full, so it only grows
        for host in self.of("hostdev"):
            if host.type == "scsi" and _unaddressed(host):
                while (unit := self.next_scsi_unit(controller, used)) is None:
                    controller += 1
                if controller > MAX_CONTROLLER_INDEX:
                    raise AddressError(f"{host.label()}: needs scsi controller {controller}: "
                                       f"over the limit of {MAX_CONTROLLER_INDEX}")
                host.address = DriveAddress(controller, 0, 0, unit)
                used.add(host.address)
        for video in self.of("video"):
            if video.model is None:
                video.model = self._video_model()
        for vsock in self.of("vsock"):
            if vsock.model is None:
                vsock.model = "virtio"
        for cont in self.controllers():
            self.controller_defaults(cont)

    def _console_compat(self) -> None:
        """libvirt's console/serial aliasing, where it decides an address: on pSeries (whose
        default serial port is on spapr-vio) a first console of type serial without a serial
        port becomes one, and a first serial port gets a console that mirrors it."""
        if not self.machine.is_pseries:
            return   # elsewhere the serial ports the aliasing adds have no address
        consoles, serials = self.of("console"), self.of("serial")
        if consoles and consoles[0].target in (None, "serial"):
            if not serials:
                self.add(Device("serial", options={"copy_of": consoles[0].name}))
        elif serials and serials[0].target in (None, "isa-serial", "spapr-vio-serial",
                                               "system-serial", "sclp-serial"):
            stub = Device("console", target="serial", added=True,
                          options={"copy_of": serials[0].name})
            at = self.devices.index(consoles[0]) if consoles else len(self.devices)
            self.devices.insert(at, stub)
            self._forget()

    def _video_model(self) -> str:
        m = self.machine
        if m.arch in ("ppc64", "ppc64le"):
            return "vga"
        if m.is_arm_virt or m.is_riscv_virt or m.is_s390_ccw:
            return "virtio"
        return "cirrus"

    def _serial_target(self) -> str | None:
        m = self.machine
        if m.is_x86:
            return "isa-serial"
        if m.is_pseries:
            return "spapr-vio-serial"
        if m.is_arm_virt or m.is_riscv_virt:
            return "system-serial"
        if m.is_s390_ccw:
            return "sclp-serial"
        return None

    def disk_defaults(self, disk: Device, scsi_hosts: set[Any]) -> None:
        """A disk's bus from its target name and its drive address (``scsi_hosts``: the
        SCSI host devices' addresses, which a SCSI disk's must not be)."""
        if disk.bus is None:
            target = disk.target or ""
            if disk.options.get("device") == "floppy":
                disk.bus = "fdc"
            elif target.startswith("hd"):
                disk.bus = "ide"
            elif target.startswith("sd"):
                disk.bus = "scsi"
            elif target.startswith("vd"):
                disk.bus = "virtio"
            elif target.startswith("xvd"):
                disk.bus = "xen"
            elif target.startswith("ubd"):
                disk.bus = "uml"
            else:
                disk.bus = "ide"
        if not _unaddressed(disk) or not disk.target:
            return
        if disk.bus not in ("scsi", "ide", "sata", "fdc"):
            return
        index = disk_index(disk.target)
        if index < 0:
            raise AddressError(f"{disk.label()}: unknown disk name {disk.target!r} and no "
                               "address given")
        if disk.bus == "scsi":
            address = DriveAddress(index // 7, 0, 0, index % 7)
            if address in scsi_hosts:
                raise AddressError(f"{disk.label()}: target {disk.target!r} conflicts with "
                                   f"a SCSI host device at {address}")
        elif disk.bus == "ide":
            address = DriveAddress(index // 4, (index % 4) // 2, 0, index % 2)
        elif disk.bus == "sata":
            address = DriveAddress(index // 6, 0, 0, index % 6)
        else:
            address = DriveAddress(index // 2, 0, 0, index % 2)
        if address.controller > MAX_CONTROLLER_INDEX:
            raise AddressError(f"{disk.label()}: target {disk.target!r} is disk number "
                               f"{index}, which needs {disk.bus} controller "
                               f"{address.controller}: over the limit of "
                               f"{MAX_CONTROLLER_INDEX}")
        disk.address = address

    @staticmethod
    def next_scsi_unit(controller: int, used: set[DriveAddress]) -> int | None:
        """The first of a SCSI controller's units 0-6 no address in ``used`` takes."""
        for unit in range(7):
            if DriveAddress(controller, 0, 0, unit) not in used:
                return unit
        return None

    def controller_defaults(self, cont: Device) -> None:
        m = self.machine
        if cont.type == "usb" and cont.model is None:
            if m.is_s390_ccw:
                if _unaddressed(cont):
                    cont.model = "none"
            elif m.arch in ("aarch64", "ppc64", "ppc64le"):
                cont.model = "qemu-xhci"
            elif m.is_x86 or m.is_riscv_virt:
                cont.model = "piix3-uhci"
        elif cont.type == "scsi" and cont.model in (None, "auto"):
            cont.model = "ibmvscsi" if m.is_pseries else \
                "virtio-scsi" if m.is_s390_ccw else "lsilogic"

    # -- 4. implicit devices ---------------------------------------------------------------------
    def add_implicit_devices(self) -> None:
        for cont_type, bus in (("scsi", "scsi"), ("fdc", "fdc"), ("ide", "ide"),
                               ("sata", "sata")):
            highest = max((d.address.controller for d in self.of("disk")
                           if d.bus == bus and isinstance(d.address, DriveAddress)), default=-1)
            for index in range(highest + 1):
                added = self.maybe_add_controller(cont_type, index)
                if added is not None:
                    self.controller_defaults(added)
        for chr_kind in ("channel", "console"):
            for chr_dev in self.of(chr_kind):
                if chr_dev.target == "virtio":
                    index = chr_dev.address.controller \
                        if isinstance(chr_dev.address, VirtioSerialAddress) else 0
                    self.maybe_add_controller("virtio-serial", index)
        # a card without an address takes the slot after the highest on controller 0 (any
        # card's, given or just assigned): that highest only grows, so it is kept, not rescanned
        highest = max((c.address.slot for c in self.of("smartcard")
                       if isinstance(c.address, CcidAddress) and c.address.controller == 0),
                      default=-1)
        for card in self.of("smartcard"):
            if isinstance(card.address, CcidAddress):
                index = card.address.controller
            else:
                index, highest = 0, highest + 1
                if highest > _CCID_SLOT_LAST:   # (what a given address may say: fed back in)
                    raise AddressError(f"{card.label()}: needs CCID slot {highest}: over the "
                                       f"limit of {_CCID_SLOT_LAST}")
                card.address = CcidAddress(0, highest)
            self.maybe_add_controller("ccid", index)
        scsi_hosts = [h for h in self.of("hostdev")
                      if h.type == "scsi" and isinstance(h.address, DriveAddress)]
        if scsi_hosts:
            highest, model = -1, None
            for host in scsi_hosts:
                assert isinstance(host.address, DriveAddress)
                if host.address.controller > highest:
                    highest = host.address.controller
                    cont = self.controller("scsi", highest)
                    if cont is not None and cont.model is not None:
                        model = cont.model
            for index in range(highest + 1):
                added = self.maybe_add_controller("scsi", index, model)
                if added is not None:
                    self.controller_defaults(added)
        if self.of("graphics") and not self.of("video"):
            self.add(Device("video", model=self._video_model()))

    # -- 5a. virtio-serial ---------------------------------------------------------------------
    def assign_virtio_serial(self) -> None:
        ports = _SerialPorts()
        for cont in self.controllers("virtio-serial"):
            assert cont.index is not None
            ports.add(cont.index, int(cont.options.get("ports", _VIRTIO_SERIAL_PORTS)))
        chrs = [d for d in self.devices if d.kind in ("channel", "console")
                and d.target == "virtio"]
        for dev in chrs:
            if isinstance(dev.address, VirtioSerialAddress) and dev.address.port:
                ports.take(dev.address, dev)
        for kind in ("console", "channel"):
            for dev in chrs:
                if dev.kind != kind or (isinstance(dev.address, VirtioSerialAddress) and
                                        dev.address.port):
                    continue
                controller = dev.address.controller \
                    if isinstance(dev.address, VirtioSerialAddress) else None
                if kind == "console" and controller is None:
                    # port 0, which libvirt neither reserves nor records: a virtio console
                    # takes no port (a new controller only when there is none at all)
                    if not ports.sizes:
                        self._add_virtio_serial(ports)
                    continue
                if controller is not None:
                    address = ports.free_on(controller)
                else:
                    address = ports.first_free() or self._add_virtio_serial(ports)
                ports.take(address, dev)
                if kind == "channel":   # libvirt reserves a console's port but records none
                    dev.address = address

    def _add_virtio_serial(self, ports: _SerialPorts) -> VirtioSerialAddress:
        """A new virtio-serial controller (the lowest free index) and its first port."""
        index = 0
        while self.controller("virtio-serial", index) is not None:
            index += 1
        self.add_controller("virtio-serial", index)
        ports.add(index, _VIRTIO_SERIAL_PORTS)
        return VirtioSerialAddress(index, 1)

    # -- 5b. other buses that keep devices off PCI ----------------------------------------------
    def _foreign(self, dev: Device, kind: str) -> None:
        """Give ``dev`` an address of another bus, which libvirt completes itself."""
        dev.options["foreign_address"] = kind
        dev.options["write_foreign"] = True

    def assign_spapr_vio(self) -> None:
        """spapr-vio regs: spapr-vlan NICs, IBM vSCSI controllers and spapr-vio serial ports
        on any machine, the NVRAM and TPMs on pSeries; each from its kind's default reg, up
        in steps of 0x1000 past regs in use (libvirt's qemuDomainAssignSpaprVIOAddresses)."""
        pseries = self.machine.is_pseries
        if not pseries and not self._any_spapr_vio():
            return   # nothing on spapr-vio (the common case off pSeries)
        order: list[tuple[Device, int, bool]] = []
        for net in self.of("interface"):
            order.append((net, _VIO_NET, net.model == "spapr-vlan"))
        for cont in self.controllers():
            order.append((cont, _VIO_SCSI, cont.type == "scsi" and cont.model == "ibmvscsi"))
        for serial in self.of("serial"):
            order.append((serial, _VIO_SERIAL, serial.target == "spapr-vio-serial"))
        for nvram in self.of("nvram")[:1]:
            order.append((nvram, _VIO_NVRAM, pseries))
        for tpm in self.of("tpm"):
            order.append((tpm, _VIO_TPM, pseries and tpm.model != "spapr-tpm-proxy"))
        taken: set[int] = set()
        backcompat = self._backcompat_console()
        for dev in self.devices:
            if isinstance(dev.address, SpaprVioAddress) and dev is not backcompat:
                if dev.address.reg in taken:
                    raise AddressError(f"{dev.label()}: spapr-vio address {dev.address.reg:#x} "
                                       "is already in use")
                taken.add(dev.address.reg)
        # each kind's search resumes where its last stopped: regs are only ever taken, so
        # the ones it passed are still in use (a rescan from the default was quadratic)
        resume: dict[int, int] = {}
        for dev, start, vio in order:
            if dev.address is None and dev.options.get("foreign_address") in (None, "spapr-vio") \
                    and (vio or dev.options.get("foreign_address") == "spapr-vio"):
                reg = resume.get(start, start)
                while reg in taken:
                    reg += 0x1000
                taken.add(reg)
                resume[start] = reg
                dev.address = SpaprVioAddress(reg)
                dev.options.pop("foreign_address", None)

    def _any_spapr_vio(self) -> bool:
        for kind in ("interface", "controller", "serial", "nvram", "tpm"):
            for dev in self.of(kind):
                if dev.model in ("spapr-vlan", "ibmvscsi") or dev.target == "spapr-vio-serial" \
                        or isinstance(dev.address, SpaprVioAddress) or \
                        dev.options.get("foreign_address") == "spapr-vio":
                    return True
        return False

    def assign_ccw(self) -> None:
        """s390 CCW machines: virtio devices (and vfio-ccw host devices) get device numbers
        in channel subsystem 0xfe, the next free one each, in libvirt's device order."""
        if not self.machine.is_s390_ccw:
            return
        wanted = []
        for dev in self._iteration_order():
            if isinstance(dev.address, CcwAddress):
                continue
            foreign = dev.options.get("foreign_address")
            if foreign == "ccw" or (dev.address is None and foreign is None and
                                    self._is_ccw(dev)):
                wanted.append(dev)
        if not wanted:
            return
        taken: set[tuple[int, int, int]] = set()
        for dev in self.devices:
            address = dev.address
            if isinstance(address, CcwAddress) and not (dev.kind == "console" and
                                                         dev is self._backcompat_console()):
                key = (address.cssid, address.ssid, address.devno)
                if key in taken:
                    raise AddressError(f"{dev.label()}: CCW device number {address} is "
                                       "already in use")
                taken.add(key)
        devno = 0
        for dev in wanted:
            while (_CCW_CSSID, 0, devno) in taken:
                devno += 1
                if devno > _CCW_DEVNO_LAST:
                    raise AddressError(f"{dev.label()}: no free CCW device number")
            taken.add((_CCW_CSSID, 0, devno))
            dev.address = CcwAddress(_CCW_CSSID, 0, devno)
            dev.options.pop("foreign_address", None)

    def _is_ccw(self, dev: Device) -> bool:
        """Whether libvirt puts ``dev`` on the CCW bus of an s390 guest by default."""
        kind, model = dev.kind, dev.model
        return (kind == "disk" and dev.bus == "virtio") or \
            (kind == "interface" and model in _VIRTIO_NETS) or \
            (kind == "video" and model == "virtio") or \
            (kind == "input" and dev.bus == "virtio") or \
            (kind == "controller" and dev.type in ("virtio-serial", "scsi")) or \
            (kind == "hostdev" and (dev.type == "scsi_host" or
                                    (dev.type == "mdev" and model == "vfio-ccw"))) or \
            (kind == "memballoon" and model != "none") or kind in ("rng", "filesystem",
                                                                   "vsock") or \
            (kind == "memory" and model in ("virtio-pmem", "virtio-mem"))

    def _backcompat_console(self) -> Device | None:
        """The first console when it only mirrors the first serial port (libvirt skips it
        when it walks the devices)."""
        consoles = self.of("console")
        if consoles and consoles[0].target in (None, "serial"):
            return consoles[0]
        return None

    def _iteration_order(self) -> list[Device]:
        """Devices in the order libvirt's virDomainDeviceInfoIterate visits them."""
        order: list[Device] = []
        for kind in ("disk", "interface", "sound", "hostdev", "video", "controller",
                     "smartcard", "serial", "parallel", "channel", "console", "input",
                     "filesystem", "watchdog", "memballoon", "rng", "nvram", "hub", "shmem",
                     "tpm", "panic", "memory", "redirdev", "iommu", "vsock"):
            found = self.of(kind)
            if kind == "console" and found and found[0] is self._backcompat_console():
                found = found[1:]
            order += found
        return order

    def assign_virtio_mmio(self) -> None:
        """On ARM and RISC-V virt, virtio devices go on virtio-mmio once any device already
        does."""
        if not (self.machine.is_arm_virt or self.machine.is_riscv_virt):
            return
        if not any(d.options.get("foreign_address") == "virtio-mmio" for d in self.devices):
            return
        for dev in self.devices:
            if not _unaddressed(dev):
                continue
            kind, model = dev.kind, dev.model
            virtio = (kind == "disk" and dev.bus == "virtio") or \
                (kind == "interface" and model in _VIRTIO_NETS) or \
                (kind == "video" and model == "virtio") or \
                (kind == "input" and dev.bus == "virtio") or \
                (kind == "controller" and dev.type in ("virtio-serial", "scsi")) or \
                (kind == "hostdev" and dev.type == "scsi_host") or \
                (kind == "memballoon" and model != "none") or kind == "rng" or \
                (kind == "memory" and model in ("virtio-pmem", "virtio-mem"))
            if virtio:
                self._foreign(dev, "virtio-mmio")

    def assign_memory_slots(self) -> None:
        """DIMM slots for memory devices, when the domain has memory hotplug."""
        slots = self.machine.memory_slots
        if not slots:
            return
        used: set[int] = set()
        for mem in self.of("memory"):
            given = mem.options.get("dimm_slot")
            if given is None:
                continue
            if given >= slots:   # libvirt refuses it too
                raise AddressError(f"{mem.label()}: DIMM slot {given} is beyond the domain's "
                                   f"{slots} (<maxMemory slots='{slots}'>)")
            used.add(given)
        slot = 0
        for mem in self.of("memory"):
            if mem.model not in ("dimm", "nvdimm") or not _unaddressed(mem):
                continue
            while slot in used:
                slot += 1
            if slot >= slots:
                raise AddressError(f"{mem.label()}: no free memory slot (all {slots} of "
                                   f"<maxMemory slots='{slots}'> are taken)")
            used.add(slot)
            self._foreign(mem, "dimm")
            mem.options["dimm_slot"] = slot

    def mirror_serial_console(self) -> None:
        """The first console of an HVM guest, when it is the first serial port's alias,
        shows that port's address."""
        consoles, serials = self.of("console"), self.of("serial")
        if consoles and serials and consoles[0].target in (None, "serial") and \
                consoles[0].address is None:
            consoles[0].address = serials[0].address

    # -- 5c. PCI -------------------------------------------------------------------------------
    def connect(self, dev: Device) -> Flags:
        """What ``dev`` needs from a PCI slot (libvirt's connect flags), 0 for none."""
        flags = self._flags.get(id(dev))
        if flags is None:
            # a pure function of these: remembered across runs (a handful of device shapes)
            kind = dev.kind
            if dev.placement is None and dev.hotpluggable is None and \
                    dev.numa_node is None and kind != "filesystem" and \
                    self.tunables.placement is None:   # no tunables: a shorter key
                key = (kind, dev.type, dev.model, dev.bus, dev.target, self._root)
            else:
                key = (kind, dev.type, dev.model, dev.bus, dev.target,
                       dev.options.get("driver") if kind == "filesystem" else None,
                       self._root, dev.placement or self.tunables.placement,
                       dev.hotpluggable, dev.numa_node is None)
            flags = _CONNECT_MEMO.get(key)
            if flags is None:
                flags = self._connect(dev)
                if len(_CONNECT_MEMO) < 4096:
                    _CONNECT_MEMO[key] = flags
            self._flags[id(dev)] = flags
        return flags

    def _connect(self, dev: Device) -> Flags:
        pcie = _PCIE_DEV if self.has_pcie_root else _PCI_DEV
        flags = self._base_connect(dev, pcie, pcie)
        choice = dev.placement or self.tunables.placement
        if flags & (Connect.PCI_DEVICE | Connect.PCIE_DEVICE) and choice is not None:
            if choice == "pci":
                flags = (flags & ~Connect.PCIE_DEVICE) | Connect.PCI_DEVICE
            elif self.has_pcie_root:
                flags = (flags & ~Connect.PCI_DEVICE) | Connect.PCIE_DEVICE
        if flags and dev.hotpluggable:
            flags |= Connect.HOTPLUGGABLE
        if flags & Connect.PCIE_DEVICE and dev.hotpluggable is False and self.has_pcie_root \
                and dev.numa_node is None:
            flags |= Connect.INTEGRATED   # straight onto pcie-root: no root port needed
        return flags

    def _base_connect(self, dev: Device, pcie: Flags, virtio: Flags) -> Flags:
        kind, model = dev.kind, dev.model
        if kind == "controller":
            if dev.type == "pci":
                return controller_connect(model or "")
            if dev.type in ("sata", "ide"):
                return _PCI_DEV
            if dev.type == "usb":
                if model in ("nec-xhci", "qemu-xhci"):
                    return pcie
                if model in ("none", "qusb1", "qusb2"):
                    return 0
                return _PCI_DEV
            if dev.type == "scsi":
                if model in (None, "ncr53c90"):
                    return 0
                if model in ("virtio-scsi", "virtio-non-transitional"):
                    return virtio
                return _PCI_DEV
            if dev.type == "virtio-serial":
                return _PCI_DEV if model == "virtio-transitional" else virtio
            return 0
        if kind == "filesystem":
            if dev.options.get("driver") in ("loop", "nbd", "ploop"):
                return 0
            return _PCI_DEV if model == "virtio-transitional" else virtio
        if kind == "interface":
            if dev.type == "hostdev":
                return pcie  # placed as the PCI host device it is
            if model == "usb-net":
                return 0
            if model in ("virtio", "virtio-non-transitional"):
                return virtio
            if model == "virtio-transitional":
                return _PCI_DEV
            if model is None or model == "e1000e" or model.lower() not in _NET_MODELS:
                return pcie   # a model libvirt does not name is taken for PCI Express
            return _PCI_DEV
        if kind == "sound":
            return _PCI_DEV if model in ("es1370", "ac97", "ich6", "ich9") else 0
        if kind == "disk":
            if dev.bus != "virtio":
                return 0
            return _PCI_DEV if model == "virtio-transitional" else virtio
        if kind in ("hostdev", "hostdev-interface"):
            if dev.type == "scsi_host":
                return _PCI_DEV if model == "virtio-transitional" else virtio
            if dev.type in ("pci", "mdev"):
                return pcie
            return 0
        if kind == "memballoon":
            if model == "virtio-transitional":
                return _PCI_DEV
            return virtio if model in ("virtio", "virtio-non-transitional") else 0
        if kind == "rng":
            return _PCI_DEV if model == "virtio-transitional" else virtio
        if kind == "watchdog":
            return _PCI_DEV if model == "i6300esb" else 0
        if kind == "video":
            if model == "virtio":
                return virtio
            if model == "bochs":
                return pcie
            if model in ("vga", "cirrus", "vmvga", "xen", "vbox", "qxl", "parallels"):
                return _PCI_DEV
            return 0
        if kind == "shmem":
            return _PCI_DEV
        if kind == "input":
            if dev.bus != "virtio":
                return 0
            return _PCI_DEV if model == "virtio-transitional" else virtio
        if kind == "serial":
            return _PCI_DEV if dev.target == "pci-serial" else 0
        if kind == "iommu":
            return virtio | Connect.INTEGRATED if model == "virtio" else 0
        if kind == "vsock":
            if model == "virtio-transitional":
                return _PCI_DEV
            return virtio if model in ("virtio", "virtio-non-transitional") else 0
        if kind == "memory":
            return virtio if model in ("virtio-pmem", "virtio-mem") else 0
        return 0

    def wants_pci(self, dev: Device) -> bool:
        return _unaddressed(dev)

    def _space(self, nbuses: int, growing: bool, reuse: list[Bus] | None = None) -> PciSpace:
        """The PCI buses the controllers make (``reuse``: the sizing pass's, emptied)."""
        buses: list[Bus | None] = [None] * nbuses
        for cont in self.controllers("pci"):
            index = cont.index
            assert index is not None
            if index >= nbuses:
                raise AddressError(f"{cont.label()}: index {index} out of range")
            if cont.model is None:
                raise AddressError(f"{cont.label()}: a PCI controller needs a model")
            hotplug = cont.options.get("hotplug") != "off"
            if reuse is not None and index < len(reuse):
                buses[index] = reuse[index].reused(cont.model, hotplug)
            else:
                buses[index] = Bus.of(cont.model, hotplug)
        if nbuses and buses[0] is None:
            buses[0] = Bus.of("pci-root")
        pseries = self.machine.is_pseries
        default = "pci-root" if pseries else \
            "pcie-root-port" if self.has_pcie_root else "pci-bridge"
        filled = [b if b is not None else Bus.of(default) for b in buses]
        return PciSpace(filled, growing=growing, multiple_roots=pseries)

    def _collect(self, space: PciSpace) -> None:
        """Reserve every PCI address already given (they are kept)."""
        for dev in self.devices:
            address = dev.address
            if address is None or not isinstance(address, PciAddress):
                continue
            flags = self.connect(dev) or Connect.PCI_DEVICE
            if dev.kind == "controller" and address.bus == 0 and address.slot == 1 and \
                    address.domain == 0 and dev.index == 0 and (
                    (dev.type == "ide" and address.function == 1) or
                    (dev.type == "usb" and dev.model in (None, "piix3-uhci") and
                     address.function == 2)):
                continue  # the PIIX3's own functions, reserved with the chipset
            space.reserve(address, flags, dev)

    def _chipset(self, space: PciSpace) -> None:
        """The slots the machine's chipset fixes (libvirt's ValidateDevicePCISlots*)."""
        if self.machine.is_i440fx:
            self._chipset_piix3(space)
        elif self.machine.is_q35:
            self._chipset_q35(space)

    def _fixed(self, space: PciSpace, dev: Device, address: PciAddress, flags: Flags,
               what: str) -> None:
        if isinstance(dev.address, PciAddress):
            if (dev.address.bus, dev.address.slot, dev.address.function) != \
                    (address.bus, address.slot, address.function):
                raise AddressError(f"{dev.label()}: {what} must have PCI address {address}")
            return
        dev.address = address
        space.reserve(address, flags, dev)

    def _chipset_piix3(self, space: PciSpace) -> None:
        for cont in self.controllers():
            if cont.type == "ide" and cont.index == 0:
                self._fixed(space, cont, _PIIX3_IDE, _PCI_DEV,
                            "the primary IDE controller")
            elif cont.type == "usb" and cont.index == 0 and cont.model in (None, "piix3-uhci"):
                self._fixed(space, cont, _PIIX3_USB, _PCI_DEV,
                            "the PIIX3 USB controller")
        if space.buses:
            space.reserve(_PIIX3_ISA, _PCI_DEV, "the PIIX3 ISA bridge")
            space.reserve(_PIIX3_ACPI, _PCI_DEV, "the PIIX3 ACPI bridge")
        self._primary_video(space, _PIIX3_VIDEO, _PCI_DEV)

    def _primary_video(self, space: PciSpace, wanted: PciAddress, flags: Flags) -> None:
        videos = self.of("video")
        if not videos or videos[0].model in ("none", "ramfb") or \
                not self.wants_pci(videos[0]):
            return
        primary = videos[0]
        space.validate(wanted, flags, True, primary)
        if space.slot_in_use(wanted):
            primary.address = space.reserve_next(self.connect(primary), primary)
        else:
            space.reserve(wanted, flags, primary)
            primary.address = wanted

    def _chipset_q35(self, space: PciSpace) -> None:
        flags = Connect.PCIE_DEVICE
        # (by type: the chipset's slots for each kind of controller are distinct)
        for cont in self.controllers("sata") + self.controllers("usb") + \
                self.controllers("pci"):
            if cont.type == "sata" and cont.index == 0:
                if isinstance(cont.address, PciAddress):
                    if (cont.address.bus, cont.address.slot, cont.address.function) != \
                            (0, 0x1F, 2):
                        raise AddressError(f"{cont.label()}: the primary SATA controller "
                                           "must have PCI address 0000:00:1f.2")
                else:
                    cont.address = _ICH9_SATA
            elif cont.type == "usb" and cont.model == "ich9-uhci1" and cont.address is None:
                for slot in (0x1D, 0x1A):
                    candidate = PciAddress(0, slot, 0)
                    if not space.slot_in_use(candidate):
                        space.reserve(candidate, flags, cont)
                        cont.address = PciAddress(0, slot, 0, multifunction=True)
                        break
            elif cont.type == "pci" and cont.model == "dmi-to-pci-bridge" and \
                    cont.address is None:
                candidate = PciAddress(0, 0x1E, 0)
                if not space.slot_in_use(candidate):
                    space.reserve(candidate, flags, cont)
                    cont.address = candidate
        if space.buses:
            space.reserve(_ICH9_LPC, flags, "the ICH9 LPC bridge")
            space.reserve(_ICH9_SMBUS, flags, "the ICH9 SMBus")
        self._primary_video(space, _Q35_VIDEO, flags)
        audio = _ICH9_AUDIO
        if not space.slot_in_use(audio):
            for sound in self.of("sound"):
                if sound.model == "ich9" and self.wants_pci(sound):
                    space.reserve(audio, flags, sound)
                    sound.address = audio
                    break

    def _next(self, space: PciSpace, dev: Device, dry: bool,
              function: int | None = None) -> None:
        """Reserve the next free place for ``dev``; record it unless this is the dry run."""
        flags = self._flags.get(id(dev)) or self.connect(dev)
        who = dev   # its label is made only for an error message
        if self._plain:   # no packing, no NUMA: the common case, kept short
            found = space.take_next(flags, who, function)
            if not dry:
                dev.address = pci_address(*found)
            return
        group = dev.function_group if self.tunables.multifunction == "pack" else None
        if group is not None and group in self.groups:
            slot = self.groups[group]
            bus = space.buses[slot.bus]
            free = [f for f in range(8) if not bus.functions[slot.slot] & (1 << f)]
            if free:
                address = PciAddress(slot.bus, slot.slot, free[0])
                space.reserve(address, flags, who)
                if not dry:
                    dev.address = address
                return
        if not self._numa:
            address = space.reserve_next(flags, who, function)
        elif dev.numa_node is not None:
            address = space.next_free(flags, who, function, self._numa_buses(space, dev))
            space.reserve(address, flags, who, from_config=False)
        else:   # devices placed on no particular node stay off the nodes' buses
            address = space.reserve_next(flags, who, function, self._numa_owned(space))
        if group is not None and group not in self.groups:
            self.groups[group] = address
        if not dry:
            dev.address = address

    def _numa_owned(self, space: PciSpace) -> frozenset[int]:
        """Every bus that belongs to some NUMA node's expander."""
        if not self._numa:
            return frozenset()
        owned: set[int] = set()
        for node in {d.numa_node for d in self.devices if d.numa_node is not None}:
            owned |= set(self._below(space, node))
        return frozenset(owned)

    def _numa_buses(self, space: PciSpace, dev: Device) -> list[int] | None:
        """For a device placed on a NUMA node: the buses below that node's expander bus."""
        if dev.numa_node is None:
            return None
        return self._below(space, dev.numa_node, dev)

    def _below(self, space: PciSpace, node: int, dev: Device | None = None) -> list[int]:
        expanders = [c for c in self.controllers("pci")
                     if c.model in ("pci-expander-bus", "pcie-expander-bus") and
                     c.options.get("numa_node") == node]
        if not expanders:
            who = dev.label() if dev is not None else "a device"
            raise AddressError(f"{who}: no expander bus for NUMA node {node}")
        below: set[int] = set()
        # the expanders, the ports added for the node, and whatever hangs below them
        frontier = {c.index for c in self.controllers("pci")
                    if c in expanders or c.numa_node == node}
        while frontier:
            below |= frontier
            frontier = {c.index for c in self.controllers("pci")
                        if isinstance(c.address, PciAddress) and c.address.bus in frontier
                        and c.index not in below}
        return sorted(i for i in below if i is not None and i < len(space.buses))

    def assign_devices(self, space: PciSpace, dry: bool) -> None:
        """libvirt's qemuDomainAssignDevicePCISlots: every device wanting a PCI address, in
        libvirt's order (which decides who gets which slot)."""
        order = self._device_order
        if order is None:
            order = self._pci_device_order()
            if self._plain and not any(d.kind == "controller" and d.model in _USB2
                                       for d in order):
                self._device_order = order   # the same for the sizing and the real pass
        controllers = [c for c in self.controllers("pci")
                       if c.model not in ("pci-root", "pcie-root") and _unaddressed(c)]
        devices = controllers + order
        if order is self._device_order:   # no packing, NUMA or USB2 companions: one loop
            flags = self._order_flags
            if flags is None:
                flags = self._order_flags = [self.connect(d) for d in order]
            known = self._flags
            found = space.take_each([known.get(id(c)) or self.connect(c)
                                     for c in controllers] + flags,
                                    devices, record=not dry)  # type: ignore[arg-type]
            if not dry:
                for dev, (bus, slot, function) in zip(devices, found):
                    dev.address = pci_address(bus, slot, function)
            return
        for dev in devices:
            if dev.kind == "controller" and dev.model in _USB2:
                self._usb2(space, dev, dry)
            else:
                self._next(space, dev, dry)

    def _pci_device_order(self) -> list[Device]:
        """The devices (but PCI controllers) that want a PCI slot, in libvirt's order."""
        order: list[Device] = []
        wants = _unaddressed   # (what wants_pci asks)
        connect = self.connect
        order += [fs for fs in self.of("filesystem") if wants(fs) and connect(fs)]
        for net in self.of("interface"):
            if net.type != "hostdev" and wants(net):
                if not connect(net):
                    raise AddressError(f"{net.label()}: libvirt 9.0 gives a {net.model} NIC "
                                       "no address of its own and refuses it without one; "
                                       "give it an <address type='usb' bus=... port=...>")
                order.append(net)
        for sound in self.of("sound"):
            if wants(sound) and sound.model not in ("sb16", "pcspk", "usb"):
                if not connect(sound):
                    raise AddressError(f"{sound.label()}: libvirt 9.0 asks a PCI slot for "
                                       f"{sound.model} sound but has no PCI type for it, and "
                                       "refuses it; use ich6 or ich9")
                order.append(sound)
        for cont in self.controllers():
            if cont.type in ("pci", "fdc", "ccid") or not wants(cont):
                continue
            if cont.type == "usb" and cont.model == "none":
                continue
            if cont.type == "ide" and cont.index == 0:
                continue
            if cont.type == "scsi" and cont.model == "ncr53c90":
                continue
            if connect(cont):
                order.append(cont)
        order += [d for d in self.of("disk") if d.bus == "virtio" and wants(d)]
        order += [h for h in self.hostdevs()
                  if wants(h) and (h.kind == "interface" or h.type in ("pci", "scsi_host") or
                                   h.type == "mdev" and h.model in (None, "vfio-pci")) and
                  connect(h)]
        order += [b for b in self.of("memballoon")
                  if b.model != "none" and wants(b) and connect(b)]
        order += [r for r in self.of("rng") if wants(r)]
        order += [w for w in self.of("watchdog")[:1] if w.model == "i6300esb" and wants(w)]
        order += [v for v in self.of("video")
                  if v.model not in ("none", "ramfb") and wants(v) and connect(v)]
        for kind in ("shmem", "input", "serial", "iommu", "vsock", "memory"):
            order += [d for d in self.of(kind) if wants(d) and connect(d)]
        return order

    def hostdevs(self) -> Iterator[Device]:
        """libvirt's hostdev list: interfaces of type hostdev first, then <hostdev>s."""
        for net in self.of("interface"):
            if net.type == "hostdev":
                yield net
        yield from self.of("hostdev")

    def _usb2(self, space: PciSpace, cont: Device, dry: bool) -> None:
        function = {"ich9-ehci1": 7, "ich9-uhci1": 0, "ich9-uhci2": 1, "ich9-uhci3": 2}
        multi = {"ich9-uhci1": True}
        flags = self.connect(cont)
        sibling = next((c for c in self.controllers("usb")
                        if c.model in _USB2 and c.index == cont.index and
                        isinstance(c.address, PciAddress)), None)
        fn = function[cont.model or ""]
        if sibling is not None:
            assert isinstance(sibling.address, PciAddress)
            address = PciAddress(sibling.address.bus, sibling.address.slot, fn,
                                 multifunction=multi.get(cont.model or ""))
            space.reserve(address, flags, cont)
            cont.address = address
        else:
            found = space.reserve_next(flags, cont, fn)
            if not dry:
                cont.address = found.with_multifunction(multi.get(cont.model or ""))

    def _check_address_kinds(self) -> None:
        """A device that plugs into PCI cannot carry another kind of our addresses."""
        for dev in self.devices:
            address = dev.address
            if address is None:
                continue
            if isinstance(address, PciAddress):
                if address.bus > 255:
                    raise AddressError(f"{dev.label()}: PCI address {address}: bus numbers "
                                       "go up to 255")
                continue
            if isinstance(address, (CcwAddress, SpaprVioAddress)):
                continue
            if dev.kind in ("disk", "hostdev") and isinstance(address, DriveAddress) and \
                    dev.bus != "virtio" and dev.type != "scsi_host":
                continue
            if self._base_connect(dev, _PCI_DEV, _PCI_DEV) and not (
                    dev.kind == "controller" and dev.type == "usb"):
                raise AddressError(f"{dev.label()}: a PCI device cannot have an address of "
                                   f"type {type(address).__name__}: {address}")

    def assign_pci(self) -> None:
        self._check_address_kinds()
        self._ensure_numa_expanders()
        self._plain = not self._numa and self.tunables.multifunction != "pack"
        indexes = [c.index for c in self.controllers("pci") if c.index is not None]
        highest = max(indexes, default=-1)
        if highest > 255:   # a PCI controller's index is the bus it provides
            cont = next(c for c in self.controllers("pci") if c.index == highest)
            raise AddressError(f"{cont.label()}: index {highest}: PCI bus numbers go up to 255")
        nbuses = highest + 1
        if nbuses > 0:
            space = self._space(nbuses, growing=True)
            self._collect(space)
            self._chipset(space)
            if self.has_pci_root and not all(b.fully_reserved() for b in space.buses):
                space.reserve_next(_PCI_DEV, "a spare slot for a future bridge")
            self.assign_devices(space, dry=True)
            # libvirt leaves one empty pcie-root-port when it added ports itself; a hotplug
            # reserve asks for that many empty hot-pluggable places instead
            spare = 1 if highest <= 0 and len(space.buses) > highest + 1 and \
                self.has_pcie_root else 0
            reserve = self.tunables.hotplug_reserve
            flags = _PCIE_DEV if self.has_pcie_root else _PCI_DEV
            for _ in range(max(spare, reserve)):
                space.reserve_next(flags | Connect.HOTPLUGGABLE if reserve else flags,
                                   "the hotplug reserve")
            number = 1
            while number < len(space.buses):   # reserving places may add more buses
                added = []
                while number < len(space.buses):
                    if self.controller("pci", number) is None:
                        added.append(Device("controller", "pci", space.buses[number].model,
                                            None, number))
                    number += 1
                self.add_many(added)
                placed = [c for c in added if c.model not in ("pci-root", "pcie-root")]
                space.take_each([self.connect(c) for c in placed], placed,  # type: ignore
                                record=False)
            nbuses = len(space.buses)
            sized = space.buses
        else:
            sized = None
        self.groups.clear()
        space = self._space(nbuses, growing=False, reuse=sized)
        self._collect(space)
        self._chipset(space)
        try:
            self.assign_devices(space, dry=False)
        except AddressError as exc:
            if space.buses:
                raise
            m = self.machine
            hint = (" (libvirt 9.0 gives microvm no PCI root: give every virtio device "
                    "<address type='virtio-mmio'/> and set <controller type='usb' "
                    "model='none'/> and <memballoon model='none'/>)") if m.is_microvm else ""
            raise AddressError(f"{exc}: {m.arch} {m.machine!r} has no PCI bus{hint}") from None
        self._set_multifunction()
        self._pci_controller_defaults()

    def _ensure_numa_expanders(self) -> None:
        """An expander bus (with its NUMA node) for every node devices ask to be placed on."""
        nodes = sorted({d.numa_node for d in self.devices if d.numa_node is not None})
        self._numa = bool(nodes)
        if not nodes:
            return
        m = self.machine
        if nodes and not (m.is_i440fx or m.is_q35 or m.is_arm_virt):
            who = next(d for d in self.devices if d.numa_node is not None)
            raise AddressError(f"{who.label()}: NUMA placement needs PCI expander buses, "
                               f"which {m.arch} {m.machine!r} does not have (pc, q35 and "
                               "aarch64 virt do)")
        cells = self.machine.numa_nodes
        for node in nodes:
            if cells is not None and not 0 <= node < cells:
                who = next(d for d in self.devices if d.numa_node == node)
                raise AddressError(f"{who.label()}: guest NUMA node {node} does not exist "
                                   f"(the guest has {cells} node{'s' if cells != 1 else ''}: "
                                   "add <cpu><numa><cell> elements)")
            if any(c.model in ("pci-expander-bus", "pcie-expander-bus") and
                   c.options.get("numa_node") == node for c in self.controllers("pci")):
                continue
            model = "pcie-expander-bus" if self.has_pcie_root else "pci-expander-bus"
            cont = self.add_controller("pci", None, model)
            cont.options["numa_node"] = node
            if model == "pcie-expander-bus":
                # devices plug into root ports below a pxb-pcie: one per device on the node
                for dev in [d for d in self.devices if d.numa_node == node and
                            d.kind != "controller"]:
                    port = self.add_controller("pci", None, "pcie-root-port")
                    port.numa_node = node

    def _set_multifunction(self) -> None:
        """multifunction='on' for function 0 of every slot that has other functions used."""
        busy: set[tuple[int, int]] = set()
        first: list[Device] = []   # at function 0
        for dev in self.devices:
            address = dev.address
            if isinstance(address, PciAddress):
                if address.function:
                    busy.add((address.bus, address.slot))
                elif address.multifunction is None:
                    first.append(dev)
        for dev in first:
            address = dev.address
            assert isinstance(address, PciAddress)
            if (address.bus, address.slot) in busy:
                dev.address = address.with_multifunction(True)

    def _pci_controller_defaults(self) -> None:
        bus_numbers = [int(c.options["busNr"]) for c in self.controllers("pci")
                       if c.options.get("busNr") is not None]
        pseries = self.machine.is_pseries
        for cont in self.controllers("pci"):
            model = cont.model or ""
            if model in _MODEL_NAMES and "model_name" not in cont.options:
                cont.options["model_name"] = _MODEL_NAMES[model]
            address = cont.address if isinstance(cont.address, PciAddress) else None
            if model == "pcie-root-port" and address is not None:   # the common case first
                options = cont.options
                if "chassis" not in options:
                    options["chassis"] = cont.index
                if "port" not in options:
                    options["port"] = (address.slot << 3) + address.function
            elif model == "pci-root" and pseries:
                cont.options.setdefault("model_name", "spapr-pci-host-bridge")
                if cont.options.get("targetIndex") is None:
                    cont.options["targetIndex"] = 0 if cont.index == 0 else \
                        self._new_target_index(cont)
            elif model == "pci-bridge" and cont.options.get("chassisNr") is None:
                cont.options["chassisNr"] = cont.index
            elif model == "pcie-switch-downstream-port" and address is not None:
                cont.options.setdefault("chassis", cont.index)
                cont.options.setdefault("port", address.slot)
            elif model in ("pci-expander-bus", "pcie-expander-bus") and \
                    cont.options.get("busNr") is None:
                lowest = min(bus_numbers, default=256)
                if lowest <= 2:
                    raise AddressError(f"{cont.label()}: no free busNr below {lowest}; "
                                       "set one")
                cont.options["busNr"] = lowest - 2
                bus_numbers.append(lowest - 2)

    def _new_target_index(self, cont: Device) -> int:
        """The lowest PHB target index (1-31) no PCI host bridge uses yet."""
        used = {c.options.get("targetIndex") for c in self.controllers("pci")
                if c.model == "pci-root" and
                c.options.get("model_name") == "spapr-pci-host-bridge"}
        for index in range(1, 32):
            if index not in used:
                return index
        raise AddressError(f"{cont.label()}: no free PHB target index (QEMU has 32 PHBs)")

    # -- 5d. USB -------------------------------------------------------------------------------
    def usb_devices(self, hubs: bool = True) -> list[Device]:
        """libvirt's USB device order: hubs, host devices, disks, CCID controllers, inputs,
        serial ports, sound, redirection."""
        order: list[Device] = []
        if hubs:
            order += [h for h in self.of("hub") if h.type in (None, "usb")]
        order += [h for h in self.of("hostdev") if h.type == "usb"]
        order += [d for d in self.of("disk") if d.bus == "usb"]
        order += self.controllers("ccid")
        order += [i for i in self.of("input") if i.bus == "usb"]
        order += [s for s in self.of("serial") if s.target == "usb-serial"]
        order += [s for s in self.of("sound") if s.model == "usb"]
        order += [r for r in self.of("redirdev") if r.bus in (None, "usb")]
        return order

    def assign_usb(self) -> None:
        devices = self.usb_devices(hubs=False)
        controllers = [c for c in self.controllers("usb")]
        has_usb = any(c.model != "none" for c in controllers)
        ports = sum(_USB_PORTS.get(c.model, 0) if c.model not in ("nec-xhci", "qemu-xhci",
                                                                 "qusb1", "qusb2")
                    or "ports" not in c.options else int(c.options["ports"])
                    for c in controllers if c.model != "none")
        hubs = [h for h in self.of("hub") if h.type in (None, "usb")]
        ports += _HUB_PORTS * len(hubs)
        count = len(devices) + len(hubs)
        if count and not has_usb:
            raise AddressError("USB devices are present, but the domain has no USB "
                               "controller (or model='none')")
        if count > ports:
            needed = -(-(count - ports + 1) // (_HUB_PORTS - 1))
            for _ in range(needed):
                hubs.append(self.add(Device("hub", type="usb")))
        tree: dict[int, _Hub] = {}
        for cont in controllers:
            size = int(cont.options["ports"]) if cont.model in ("nec-xhci", "qemu-xhci") \
                and "ports" in cont.options else _USB_PORTS.get(cont.model, 0)
            if size == 0 or cont.model == "none":
                continue
            assert cont.index is not None
            if cont.index in tree:
                raise AddressError(f"{cont.label()}: two USB controllers with index "
                                   f"{cont.index}")
            tree[cont.index] = _Hub(size)
        for hub in hubs:
            if isinstance(hub.address, UsbAddress):
                _place_hub(tree, hub)
        for dev in devices:
            if isinstance(dev.address, UsbAddress):
                _reserve(tree, dev.address, dev)
        for hub in hubs:
            if _unaddressed(hub):
                hub.address = _assign_usb(tree, hub)
                _place_hub(tree, hub, reserved=True)
        for dev in devices:
            if _unaddressed(dev):
                dev.address = _assign_usb(tree, dev)


def _disk_order(disks: list[Device]) -> list[int]:
    """The positions of ``disks`` in the order libvirt's insertion gives them: each disk
    goes before the first disk on its bus with a higher target index, else right after the
    last disk on its bus, else last.

    A bus's disks with targets stay sorted by index, so "the first with a higher index" is
    the first disk of the next higher index present when the disk arrives.  That index is
    found going backwards in time, where indexes only leave (union-find over each bus's
    indexes); the inserts then go into a linked list."""
    count = len(disks)
    ranks: dict[str | None, dict[int, int]] = {}   # bus -> target index -> its rank
    keys = [disk_index(d.target) if d.target else None for d in disks]
    for disk, key in zip(disks, keys):
        if key is not None:
            ranks.setdefault(disk.bus, {})[key] = 0
    for known in ranks.values():
        for rank, key in enumerate(sorted(known)):
            known[key] = rank
    rank_of = [None if key is None else ranks[d.bus][key] for d, key in zip(disks, keys)]
    first: dict[tuple[str | None, int], int] = {}   # (bus, rank) -> the first disk with it
    for number, (disk, rank) in enumerate(zip(disks, rank_of)):
        if rank is not None:
            first.setdefault((disk.bus, rank), number)
    # backwards: the next higher rank present when each disk arrives (len(known): none)
    parents = {bus: list(range(len(known) + 1)) for bus, known in ranks.items()}
    before_this: list[int | None] = [None] * count   # the disk each one goes before
    for number in range(count - 1, -1, -1):
        rank = rank_of[number]
        if rank is None:
            continue
        bus = disks[number].bus
        parent = parents[bus]
        if first[(bus, rank)] == number:
            parent[rank] = rank + 1   # not present before this disk
        root = rank + 1
        while parent[root] != root:
            root = parent[root]
        step = rank + 1
        while parent[step] != root:
            parent[step], step = root, parent[step]
        if root < len(parent) - 1:
            before_this[number] = first[(bus, root)]
    # forwards: the inserts into a circular doubly linked list, ``count`` its head
    after, before = [count] * (count + 1), [count] * (count + 1)
    last: dict[str | None, int] = {}   # each bus's last disk so far
    for number, disk in enumerate(disks):
        successor = before_this[number]
        if successor is not None:
            previous = before[successor]
        else:
            previous = last.get(disk.bus, before[count])
            last[disk.bus] = number
        following = after[previous]
        after[previous], before[number] = number, previous
        after[number], before[following] = following, number
    order = []
    number = after[count]
    while number != count:
        order.append(number)
        number = after[number]
    return order


class _SerialPorts:
    """The virtio-serial controllers' ports in use, and where each search for a free one
    resumes: ports are only ever taken, so those a search passed stay taken (a rescan from
    port 1 of controller 0 each time was quadratic)."""

    def __init__(self) -> None:
        self.taken: dict[int, set[int]] = {}
        self.sizes: dict[int, int] = {}
        self.resume: dict[int, int] = {}   # controller -> its lowest port from 1 maybe free
        self.order: list[int] = []         # the controllers' indexes, sorted
        self.full = 0                      # how many of ``order`` are known to be full

    def add(self, index: int, size: int) -> None:
        """A controller with ``size`` ports (empty: the full ones stop before it)."""
        self.taken[index], self.sizes[index] = set(), size
        at = bisect.bisect(self.order, index)
        self.order.insert(at, index)
        self.full = min(self.full, at)

    def take(self, address: VirtioSerialAddress, dev: Device) -> None:
        """Mark ``dev``'s port used: a missing controller, no such port or one in use is an
        error naming it."""
        if address.controller not in self.taken:
            raise AddressError(f"{dev.label()}: virtio-serial controller "
                               f"{address.controller} is missing")
        if address.port >= self.sizes[address.controller]:
            raise AddressError(f"{dev.label()}: virtio-serial controller "
                               f"{address.controller} has no port {address.port}")
        if address.port in self.taken[address.controller]:
            raise AddressError(f"{dev.label()}: virtio-serial port {address.port} on "
                               f"controller {address.controller} is already in use")
        self.taken[address.controller].add(address.port)

    def _free_port(self, controller: int) -> int | None:
        """The controller's lowest free port from 1, None when it is full."""
        port, taken, size = self.resume.get(controller, 1), self.taken[controller], \
            self.sizes[controller]
        while port < size and port in taken:
            port += 1
        self.resume[controller] = port
        return port if port < size else None

    def free_on(self, controller: int) -> VirtioSerialAddress:
        """The lowest free port from 1 on one controller."""
        port = self._free_port(controller) if controller in self.taken else None
        if port is None:
            raise AddressError(f"no free port on virtio-serial controller {controller}")
        return VirtioSerialAddress(controller, port)

    def first_free(self) -> VirtioSerialAddress | None:
        """The lowest free port from 1 on the lowest controller that has one."""
        while self.full < len(self.order):
            controller = self.order[self.full]
            port = self._free_port(controller)
            if port is not None:
                return VirtioSerialAddress(controller, port)
            self.full += 1
        return None


def _unaddressed(dev: Device) -> bool:
    """No address at all: neither one we assign nor another kind (isa, ccw, unassigned...)."""
    return dev.address is None and dev.options.get("foreign_address") is None


class _Hub:
    """A USB controller's or hub's ports: which are used, and hubs plugged into them."""

    def __init__(self, size: int) -> None:
        self.used = [False] * size
        self.hubs: dict[int, _Hub] = {}


def _find(tree: dict[int, _Hub], address: UsbAddress, dev: Device) -> tuple[_Hub, int]:
    hub = tree.get(address.bus)
    if hub is None:
        raise AddressError(f"{dev.label()}: USB address {address}: there is no USB bus "
                           f"{address.bus}")
    for port in address.port[:-1]:
        child = hub.hubs.get(port - 1)
        if child is None:
            raise AddressError(f"{dev.label()}: USB address {address}: no hub at port "
                               f"{port}")
        hub = child
    last = address.port[-1] - 1
    if last < 0 or last >= len(hub.used):
        raise AddressError(f"{dev.label()}: USB address {address}: no such port")
    return hub, last


def _reserve(tree: dict[int, _Hub], address: UsbAddress, dev: Device) -> None:
    hub, port = _find(tree, address, dev)
    if hub.used[port]:
        raise AddressError(f"{dev.label()}: USB address {address} is already in use")
    hub.used[port] = True


def _place_hub(tree: dict[int, _Hub], hub_dev: Device, reserved: bool = False) -> None:
    address = hub_dev.address
    assert isinstance(address, UsbAddress)
    hub, port = _find(tree, address, hub_dev)
    if port in hub.hubs:
        raise AddressError(f"{hub_dev.label()}: two USB hubs at {address}")
    if not reserved:
        hub.used[port] = True
    hub.hubs[port] = _Hub(_HUB_PORTS)


def _free_port(hub: _Hub, depth: int = 0) -> tuple[int, ...] | None:
    for port, used in enumerate(hub.used):
        if not used:
            return (port + 1,)
    if depth >= 3:
        return None
    for port in sorted(hub.hubs):
        below = _free_port(hub.hubs[port], depth + 1)
        if below is not None:
            return (port + 1, *below)
    return None


def _assign_usb(tree: dict[int, _Hub], dev: Device) -> UsbAddress:
    for bus in sorted(tree):
        path = _free_port(tree[bus])
        if path is not None:
            address = UsbAddress(bus, path)
            _reserve(tree, address, dev)
            return address
    raise AddressError(f"{dev.label()}: no free USB port")
