"""How closely aiovirt's offline addressing agrees with libvirt's own, on libvirt's test inputs.

    .venv/bin/python benchmarks/address_agreement.py [--tree LIBVIRT_TREE] [--mode MODE]
                                                     [--generated N] [--show N]
                                                     [--only SUBSTRING] [--output FILE]

The corpus is built here, not shipped: every domain XML in libvirt's
``tests/qemuxml2argvdata`` (the source tree ``rpc/fetch-libvirt-source`` unpacks into
``.libvirt-src/``) for x86_64 (``pc``, ``pc-i440fx-*``, ``q35``, ``pc-q35-*``, ``microvm``),
aarch64 or riscv64 (``virt``, ``virt-*``), ppc64 (``pseries``, ``pseries-*``) or s390x
(``s390-ccw-virtio*``) is prepared in two modes:

* ``addresses``: every device address (PCI, drive, USB, virtio-serial, CCID) removed;
* ``controllers``: also the controllers libvirt inserts by itself removed (all PCI
  controllers except expander buses, and controllers that say nothing but their type and
  index);

and a third set, ``generated``: seeded random domains over every machine family (pc, q35,
ARM and RISC-V virt, pSeries, s390x, microvm) with dozens of devices (bus growth: bridges,
root ports, PHBs), every model libvirt's schema allows per device kind (legacy PCI NICs,
SCSI, USB, video, sound, watchdog, input), serial/console/channel mixes (several virtio
consoles beside virtio-serial channels, spicevmc and guest-agent channels), USB hubs,
spapr-vio and CCW devices, that libvirt's tests rarely reach;

its ``<emulator>`` dropped (libvirt picks the one for the architecture), guests of other
architectures made TCG (``type='qemu'``: this host has only x86 KVM), the name made unique
and the UUID dropped (and an SMBIOS UUID, which libvirt would copy). Each is defined on a
private libvirtd (``PrivateDaemon``, QEMU driver, QEMU 7.2) and its inactive XML read back:
that is the truth. Inputs that libvirt refuses (machine types QEMU 7.2 no longer has,
missing host devices...) are left out, and counted. The truth is cached in
``.cache/address-agreement/<versions>/`` by a digest of the input.

aiovirt then addresses the same prepared input offline (``aiovirt.address``), and the two
are compared on every addressed device and every controller: a document agrees exactly when
all of them carry the same address (PCI, drive, USB, virtio-serial, CCID, CCW, spapr-vio; and
each controller the same model, model name, and chassis/port/busNr/target index), device
agreement counts devices.  The report ends with the score per machine family, and for
microvm how many of the documents libvirt refuses for want of a PCI bus aiovirt refuses too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

import aiovirt
from aiovirt.testing.daemon import PrivateDaemon

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = ROOT / ".cache" / "address-agreement"
ADDRESS_TYPES = {"pci", "drive", "usb", "virtio-serial", "ccid", "ccw", "spapr-vio"}
MODES = ("addresses", "controllers", "generated")


# -- the corpus -------------------------------------------------------------------------------

def machine_of(root: etree._Element) -> tuple[str, str] | None:
    """(arch, machine) when the document is in scope, else None."""
    os_type = root.find("os/type")
    if os_type is None or root.get("type") not in ("qemu", "kvm"):
        return None
    arch = os_type.get("arch", "x86_64")
    machine = os_type.get("machine", "")
    if arch in ("x86_64", "i686") and (machine in ("pc", "q35") or
                                       machine.startswith(("pc-i440fx-", "pc-q35-"))):
        return arch, machine
    if arch in ("aarch64", "riscv64") and (machine == "virt" or machine.startswith("virt-")):
        return arch, machine
    if arch in ("ppc64", "ppc64le") and (machine == "pseries" or
                                         machine.startswith("pseries-")):
        return arch, machine
    if arch == "s390x" and machine.startswith("s390-ccw-virtio"):
        return arch, machine
    if arch == "x86_64" and machine == "microvm":
        return arch, machine
    return None


def family(xml: str) -> str:
    """The machine family a document is scored under (``Machine.family``)."""
    from aiovirt.address import Machine

    os_type = etree.fromstring(xml.encode()).find("os/type")
    assert os_type is not None
    return Machine(os_type.get("arch", "x86_64"), os_type.get("machine", "pc")).family


def strip_addresses(root: etree._Element) -> None:
    devices = root.find("devices")
    if devices is None:
        return
    for device in devices:
        for address in device.findall("address"):
            if address.get("type") in ADDRESS_TYPES:
                device.remove(address)


def is_bare(controller: etree._Element) -> bool:
    """A controller that says nothing but its type and index (and has no children)."""
    return set(controller.attrib) <= {"type", "index"} and len(controller) == 0


def strip_inserted_controllers(root: etree._Element) -> None:
    devices = root.find("devices")
    if devices is None:
        return
    for controller in devices.findall("controller"):
        kind, model = controller.get("type"), controller.get("model", "")
        inserted_pci = kind == "pci" and model not in ("pci-expander-bus", "pcie-expander-bus")
        if inserted_pci or kind != "pci" and is_bare(controller):
            devices.remove(controller)


def prepare(path: Path, mode: str) -> tuple[str, str] | None:
    """(name, prepared XML) for ``path`` in ``mode``, or None when out of scope."""
    try:
        root = etree.parse(str(path), etree.XMLParser(resolve_entities=False,
                                                      no_network=True)).getroot()
    except etree.XMLSyntaxError:
        return None
    if root.tag != "domain" or machine_of(root) is None:
        return None
    arch, _ = machine_of(root)  # type: ignore[misc]
    if arch != "x86_64":
        root.set("type", "qemu")   # TCG: no KVM for other architectures here
    for tag in ("uuid", "devices/emulator", "sysinfo/system/entry[@name='uuid']"):
        for element in root.findall(tag):
            element.getparent().remove(element)
    name = root.find("name")
    if name is None:
        name = etree.SubElement(root, "name")
    strip_addresses(root)
    if mode == "controllers":
        strip_inserted_controllers(root)
    # unique per file and mode: inputs that are the same once prepared are defined at once
    digest = hashlib.sha256(f"{path.stem} {mode} ".encode() + etree.tostring(root)
                            ).hexdigest()[:16]
    name.text = f"aa-{digest}"
    return path.stem, etree.tostring(root, encoding="unicode")


# the machines the generated corpus covers, with how often each is drawn
GENERATED_MACHINES = [("x86_64", "pc", 3), ("x86_64", "q35", 3), ("aarch64", "virt", 1),
                      ("riscv64", "virt", 1), ("ppc64", "pseries", 2),
                      ("s390x", "s390-ccw-virtio", 2), ("x86_64", "microvm", 1)]
VIRTIO = ["virtio", "virtio-transitional", "virtio-non-transitional"]
# per device kind, every model libvirt 9.0's schema allows that some QEMU 7.2 here has
# (usb-net NICs and ich7 sound are left out: libvirt 9.0 refuses them without an address,
# and so does aiovirt, see tests/test_address.py)
NIC_MODELS = {"x86": VIRTIO + ["e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet", "i82551",
                               "i82557b", "i82559er", "vmxnet3"],
              "pci": VIRTIO + ["e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet", "i82559er"],
              "pseries": VIRTIO + ["spapr-vlan", "spapr-vlan", "e1000", "rtl8139", "ne2k_pci",
                                   "pcnet"],
              "s390": VIRTIO}
VIRTIO_SCSI = ["virtio-scsi", "virtio-transitional", "virtio-non-transitional"]
SCSI_MODELS = {"x86": VIRTIO_SCSI + ["lsilogic", "lsisas1068", "lsisas1078", "vmpvscsi",
                                     "am53c974", "dc390", "auto", None],
               "pci": VIRTIO_SCSI + ["lsilogic", "lsisas1068", "lsisas1078", "am53c974",
                                     "dc390", None],
               "pseries": VIRTIO_SCSI + ["ibmvscsi", "ibmvscsi", "lsilogic", None],
               "s390": ["virtio-scsi", None]}
USB_MODELS = {"x86": ["piix3-uhci", "piix4-uhci", "ehci", "ich9-ehci1", "pci-ohci", "nec-xhci",
                      "qemu-xhci", "none", "vt82c686b-uhci"],
              "pci": ["qemu-xhci", "nec-xhci", "pci-ohci", "ehci", "ich9-ehci1", "piix3-uhci",
                      "none"],
              "pseries": ["qemu-xhci", "nec-xhci", "pci-ohci", "ehci", "none"],
              "s390": ["none"]}
VIDEO_MODELS = {"x86": ["vga", "cirrus", "vmvga", "qxl", "virtio", "bochs", "ramfb", "none"],
                "pci": ["virtio", "vga", "bochs", "ramfb", "cirrus", "none"],
                "pseries": ["vga", "virtio", "bochs", "none"], "s390": ["virtio"]}
SOUND_MODELS = ["es1370", "ac97", "ich6", "ich9", "sb16", "pcspk", "usb"]
WATCHDOGS = {"x86": ["i6300esb", "ib700"], "pci": ["i6300esb"], "pseries": ["i6300esb"],
             "s390": ["diag288"]}


def _family_of(arch: str, machine: str) -> str:
    if machine == "microvm":
        return "microvm"
    if arch == "x86_64":
        return "x86"
    if arch == "ppc64":
        return "pseries"
    if arch == "s390x":
        return "s390"
    return "pci"


def _console_mix(rng, family: str, spice: bool = False, usb: bool = False) -> list[str]:
    """Serial ports, consoles and channels: every combination libvirt distinguishes (the
    first console mirroring a serial port, several virtio consoles beside virtio-serial
    channels, spicevmc and guest-agent channels, explicit ports)."""
    parts = []
    serial_targets = {"x86": ["isa-serial", None, "pci-serial", "usb-serial"],
                      "pci": ["system-serial", None, "pci-serial", "usb-serial"],
                      "pseries": ["spapr-vio-serial", None, "pci-serial", "usb-serial"],
                      "s390": ["sclp-serial", None], "microvm": ["isa-serial", None]}[family]
    if not usb:
        serial_targets = [t for t in serial_targets if t != "usb-serial"]
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        target = rng.choice(serial_targets)
        inner = f"<target type='{target}'/>" if target else ""
        parts.append(f"<serial type='pty'>{inner}</serial>")
    first = rng.choice(["serial", "virtio", None, None] + (["sclp"] if family == "s390" else []))
    if first:
        parts.append(f"<console type='pty'><target type='{first}'/></console>")
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        parts.append("<console type='pty'><target type='virtio'/></console>")
    names = iter(["org.qemu.guest_agent.0", "org.example.a", "org.example.b", "org.example.c",
                  "org.example.d", "org.example.e"])
    for _ in range(rng.choice([0, 0, 1, 2, 4])):
        kind = rng.choice(["unix", "unix", "pty"] + (["spicevmc"] if spice else []))
        if kind == "spicevmc":
            parts.append("<channel type='spicevmc'><target type='virtio' "
                         "name='com.redhat.spice.0'/></channel>")
        else:
            source = "<source mode='bind'/>" if kind == "unix" else ""
            parts.append(f"<channel type='{kind}'>{source}<target type='virtio' "
                         f"name='{next(names)}'/></channel>")
    if rng.random() < 0.15:
        parts.append(f"<channel type='unix'><target type='virtio' name='org.example.fixed'/>"
                     f"<address type='virtio-serial' controller='0' bus='0' "
                     f"port='{rng.choice([1, 2, 5])}'/></channel>")
    if rng.random() < 0.1:
        parts.append("<controller type='virtio-serial' ports='4'/>")
    if rng.random() < 0.1:
        model = rng.choice(VIRTIO)
        parts.append(f"<controller type='virtio-serial' model='{model}'/>")
    return parts


def generated(count: int, seed: int = 20261124) -> list[tuple[str, str]]:
    """``count`` random domains over every machine family the policy knows, stressing what
    libvirt's tests rarely do: dozens of devices (bus growth: pci-bridges on pc, root ports
    and pcie-to-pci-bridges on q35, PHBs on pSeries), every model libvirt's schema allows per
    device kind (legacy conventional-PCI NICs, SCSI, USB, video, sound, watchdog, input
    models), console/serial/channel mixes, USB hubs, spapr-vio and CCW devices."""
    import random

    rng = random.Random(seed)
    machines = [(a, m) for a, m, weight in GENERATED_MACHINES for _ in range(weight)]
    cases = []
    for number in range(count):
        arch, machine = rng.choice(machines)
        family = _family_of(arch, machine)
        if family == "microvm":
            cases.append((f"generated-{number}-{machine}", _microvm(rng, number)))
            continue
        models = "pci" if family == "microvm" else family
        parts: list[str] = []
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        for _ in range(rng.randrange(0, 12)):
            model = rng.choice([None, None, None] + (VIRTIO if family != "s390" else []))
            attr = f" model='{model}'" if model else ""
            parts.append(f"<disk type='file' device='disk'{attr}><source file='/img/{number}-"
                         f"{len(parts)}.qcow2'/><target dev='vd{next(letters)}' "
                         "bus='virtio'/></disk>")
        if family == "x86":
            bus = "ide" if machine == "pc" else "sata"
            prefix = "hd" if bus == "ide" else "sd"
            for letter in "abcd"[:rng.randrange(0, 4)]:
                parts.append(f"<disk type='file' device='cdrom'><target dev='{prefix}{letter}' "
                             f"bus='{bus}'/><readonly/></disk>")
            if machine == "pc" and rng.random() < 0.15:
                parts.append("<disk type='file' device='floppy'><source file='/img/f'/>"
                             "<target dev='fda' bus='fdc'/></disk>")
        scsi = rng.randrange(0, 3)
        for index in range(scsi):
            parts.append(f"<disk type='file' device='disk'><source file='/img/s{number}-"
                         f"{index}'/><target dev='sd{'mnopqrstuvw'[index]}' bus='scsi'/></disk>")
        if rng.random() < 0.5:
            model = rng.choice(SCSI_MODELS[models])
            attr = f" model='{model}'" if model else ""
            parts.append(f"<controller type='scsi'{attr}/>")

        for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 35])):
            model = rng.choice(NIC_MODELS[models] + [None])
            inner = f"<model type='{model}'/>" if model else ""
            parts.append(f"<interface type='user'>{inner}</interface>")
        usb = rng.choice(["default", "default"] + USB_MODELS[models])
        if usb != "default" and not (family == "s390" and usb == "none" and rng.random() < .5):
            parts.append(f"<controller type='usb' model='{usb}'/>")
            if usb == "ich9-ehci1":
                for companion in ("ich9-uhci1", "ich9-uhci2", "ich9-uhci3"):
                    parts.append(f"<controller type='usb' model='{companion}'/>")
            if usb in ("qemu-xhci", "nec-xhci") and rng.random() < 0.3:
                parts[-1] = parts[-1].replace("/>", f" ports='{rng.choice([4, 8, 15])}'/>")
        has_usb = usb != "none" and family != "s390" and (usb != "default" or family not in (
            "pci",))
        graphics = rng.random() < 0.6 or family == "pseries" and rng.random() < 0.5
        spice = graphics and rng.random() < 0.5
        if has_usb:
            if rng.random() < 0.15:
                parts.append("<disk type='file' device='disk'><source file='/img/u'/>"
                             "<target dev='sdz' bus='usb'/></disk>")
            if family in ("x86", "pci", "pseries") and rng.random() < 0.1:
                parts.append("<sound model='usb'/>")
            for _ in range(rng.choice([0, 1, 2, 4, 7, 12])):
                parts.append("<redirdev bus='usb' type='tcp'><source mode='connect' "
                             "host='127.0.0.1' service='4000'/></redirdev>")
            for kind in ("tablet", "mouse", "keyboard"):
                if rng.random() < 0.3:
                    parts.append(f"<input type='{kind}' bus='usb'/>")
            if rng.random() < 0.1:
                parts.append("<hub type='usb'/>")
            if spice and rng.random() < 0.15:
                parts.append("<smartcard mode='passthrough' type='spicevmc'/>")
        ordered = _console_mix(rng, family, spice, has_usb)
        if family in ("x86", "pci", "pseries"):
            for _ in range(rng.randrange(0, 3)):
                model = rng.choice([m for m in SOUND_MODELS if m != "usb"]
                                   if family == "x86" else ["ich9", "ich6", "ac97", "es1370"])
                parts.append(f"<sound model='{model}'/>")
        if graphics:
            parts.append(f"<graphics type='{'spice' if spice else 'vnc'}' port='-1'/>")
            for video in range(rng.randrange(0, 3)):
                model = rng.choice(VIDEO_MODELS[models] if not video else
                                   ["virtio"] + (["qxl"] if family == "x86" else []))
                ordered.append(f"<video><model type='{model}'/></video>")
                if model in ("none", "ramfb"):
                    break
        if rng.random() < 0.4:
            model = rng.choice(VIRTIO[:1] * 3 + VIRTIO[1:])
            parts.append(f"<rng model='{model}'><backend model='random'>/dev/urandom"
                         "</backend></rng>")
        if rng.random() < 0.3:
            model = rng.choice(WATCHDOGS[models])
            parts.append(f"<watchdog model='{model}'/>")
        if rng.random() < 0.3:
            attr = " model='virtio'" if rng.random() < 0.3 else ""
            parts.append(f"<input type='{rng.choice(['keyboard', 'mouse', 'tablet'])}' "
                         f"bus='virtio'{attr}/>")
        if rng.random() < 0.15:
            parts.append("<filesystem type='mount' accessmode='passthrough'><source "
                         "dir='/tmp'/><target dir='share'/></filesystem>")
        if rng.random() < 0.1:
            parts.append("<vsock model='virtio'><cid auto='yes'/></vsock>")
        if family == "pseries":
            if rng.random() < 0.3:
                parts.append("<nvram/>")
            if rng.random() < 0.2:
                parts.append("<tpm model='tpm-spapr'><backend type='emulator' version='2.0'/>"
                             "</tpm>")
            if rng.random() < 0.2:
                parts.append("<interface type='user'><model type='spapr-vlan'/>"
                             f"<address type='spapr-vio' reg='{rng.choice([0x1000, 0x2000]):#x}'/>"
                             "</interface>")
        if family == "s390" and rng.random() < 0.3:
            parts.append("<interface type='user'><model type='virtio'/><address type='ccw' "
                         f"cssid='0xfe' ssid='0x0' devno='{rng.choice([0, 1, 2, 7]):#06x}'/>"
                         "</interface>")
        if family != "s390":
            for index in range(rng.choice([0, 0, 1, 3])):
                parts.append(f"<hostdev mode='subsystem' type='pci' managed='no'><source>"
                             f"<address domain='0x0000' bus='0x{0x40 + index:02x}' slot='0x00' "
                             "function='0x0'/></source></hostdev>")
        if family == "x86" and rng.random() < 0.1:
            parts.append("<shmem name='shm0'><model type='ivshmem-plain'/></shmem>")
        if rng.random() < 0.2:
            parts.append(f"<memballoon model='{rng.choice(['none'] + VIRTIO)}'/>")
        rng.shuffle(parts)
        parts += ordered   # consoles and videos keep their order (the first is special)
        kind = "kvm" if arch == "x86_64" else "qemu"
        xml = (f"<domain type='{kind}'><name>gen-{number}</name><memory unit='MiB'>256"
               f"</memory><os><type arch='{arch}' machine='{machine}'>hvm</type></os>"
               f"<devices>{''.join(parts)}</devices></domain>")
        cases.append((f"generated-{number}-{machine}", xml))
    return cases


def _microvm(rng, number: int) -> str:
    """An x86_64 microvm guest: libvirt 9.0 gives it no PCI bus, so it takes only devices on
    virtio-mmio (given) or on no bus; some documents still ask for PCI, and both refuse."""
    parts = ["<controller type='usb' model='none'/>" if rng.random() < 0.95 else "",
             "<memballoon model='none'/>" if rng.random() < 0.95 else ""]
    for letter in "abc"[:rng.randrange(0, 4)]:
        mmio = "<address type='virtio-mmio'/>" if rng.random() < 0.97 else ""
        parts.append(f"<disk type='file' device='disk'><source file='/img/m{number}{letter}'/>"
                     f"<target dev='vd{letter}' bus='virtio'/>{mmio}</disk>")
    for _ in range(rng.randrange(0, 3)):
        mmio = "<address type='virtio-mmio'/>" if rng.random() < 0.97 else ""
        parts.append(f"<interface type='user'><model type='virtio'/>{mmio}</interface>")
    # the virtio-serial controller that channels and virtio consoles need: on virtio-mmio
    ordered = [part for part in _console_mix(rng, "microvm")
               if not part.startswith("<controller type='virtio-serial'")]
    if any("type='virtio'" in part for part in ordered) and rng.random() < 0.95:
        parts.append("<controller type='virtio-serial' index='0'><address "
                     "type='virtio-mmio'/></controller>")
    if rng.random() < 0.3:
        parts.append("<rng model='virtio'><backend model='random'>/dev/urandom</backend>"
                     "<address type='virtio-mmio'/></rng>")
    rng.shuffle(parts)
    parts += ordered
    return (f"<domain type='kvm'><name>gen-{number}</name><memory unit='MiB'>256</memory><os>"
            f"<type arch='x86_64' machine='microvm'>hvm</type></os>"
            f"<devices>{''.join(parts)}</devices></domain>")


@dataclass
class Case:
    name: str
    mode: str
    xml: str
    truth: str | None = None      # libvirt's inactive XML
    refused: str | None = None    # why libvirt would not define it


def _version(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


async def define_all(cases: list[Case], daemon: PrivateDaemon, parallel: int = 8, *,
                     cached: bool = True) -> str:
    """Fill ``truth`` or ``refused`` for every case, from the cache (kept per libvirt and
    QEMU version; unless ``cached`` is false) or the daemon; returns the versions, e.g.
    "libvirt 9.0.0 + QEMU 7.2.0"."""
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        versions = (f"libvirt {_version(await conn.get_lib_version())} + QEMU "
                    f"{_version(await conn.get_version())}")
        cache = CACHE / versions.replace(" + ", "-").replace(" ", "-")
        cache.mkdir(parents=True, exist_ok=True)
        todo = []
        for case in cases:
            path = cache / (hashlib.sha256(case.xml.encode()).hexdigest()[:24] + ".json")
            if cached and path.exists():
                data = json.loads(path.read_text())
                case.truth, case.refused = data["truth"], data["refused"]
            else:
                todo.append((case, path))
        if not todo:
            return versions
        print(f"defining {len(todo)} documents on the private libvirtd...", file=sys.stderr)
        gate = asyncio.Semaphore(parallel)

        async def one(case: Case, path: Path) -> None:
            async with gate:
                try:
                    dom = await conn.define_xml(case.xml)
                except aiovirt.LibvirtError as exc:
                    case.refused = str(exc).splitlines()[0]
                else:
                    try:
                        case.truth = await dom.xml(2)  # VIR_DOMAIN_XML_INACTIVE
                    finally:
                        await dom.undefine(4 | 1 | 2 | 16 | 32)
            path.write_text(json.dumps({"truth": case.truth, "refused": case.refused}))

        await asyncio.gather(*(one(case, path) for case, path in todo))
    return versions


# -- comparison ------------------------------------------------------------------------------

def _number(value: str) -> str:
    try:
        return str(int(value, 0))
    except ValueError:
        return value


def address_map(xml: str) -> dict[str, str]:
    """Every addressed device and every controller, by identity, as a comparable string."""
    root = etree.fromstring(xml.encode())
    result: dict[str, str] = {}
    devices = root.find("devices")
    if devices is None:
        return result
    ordinal: Counter[str] = Counter()
    for device in devices:
        if not isinstance(device.tag, str):
            continue
        tag = device.tag
        address = device.find("address")
        extra: list[str] = []
        if tag == "controller":
            key = f"controller[{device.get('type')}][{device.get('index')}]"
            if device.get("type") == "usb":  # USB2 companions share an index
                key += f"[{device.get('model', '')}]"
            model = device.find("model")
            target = device.find("target")
            extra = [f"model={device.get('model', '')}",
                     f"name={model.get('name', '') if model is not None else ''}"]
            if target is not None:
                extra += [f"{k}={_number(v)}" for k, v in sorted(target.attrib.items())
                          if k in ("chassis", "port", "busNr", "chassisNr", "index")]
        elif tag == "disk" and device.find("target") is not None:
            key = f"disk[{device.find('target').get('dev')}]"  # libvirt sorts disks
            if address is None:
                continue
        else:
            key = f"{tag}[{ordinal[tag]}]"
            ordinal[tag] += 1
            if address is None:
                continue
        if address is None:
            attrs = "-"
        elif address.get("type") in ADDRESS_TYPES:
            attrs = ",".join(f"{k}={_number(v)}" for k, v in sorted(address.attrib.items()))
        else:  # another bus (dimm, spapr-vio, virtio-mmio...): libvirt fills in the details
            attrs = f"type={address.get('type')}"
        result[key] = " ".join([attrs, *extra])
    return result


@dataclass
class Score:
    documents: int = 0
    exact: int = 0
    devices: int = 0
    agreeing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)   # (case, error)
    differing: list[tuple[str, list[str]]] = field(default_factory=list)


def score(cases: list[Case], assign) -> Score:  # type: ignore[no-untyped-def]
    result = Score()
    for case in cases:
        if case.truth is None:
            continue
        result.documents += 1
        truth = address_map(case.truth)
        result.devices += len(truth)
        try:
            ours = address_map(assign(case.xml))
        except Exception as exc:  # noqa: BLE001 - any failure is a disagreement, reported
            result.failed.append((case.name, f"{type(exc).__name__}: {exc}"))
            continue
        diffs = [f"{key}: libvirt {truth.get(key)!r}, aiovirt {ours.get(key)!r}"
                 for key in sorted(set(truth) | set(ours)) if truth.get(key) != ours.get(key)]
        result.agreeing += sum(1 for key in truth if ours.get(key) == truth[key])
        if diffs:
            result.differing.append((case.name, diffs))
        else:
            result.exact += 1
    return result


def assign_with_aiovirt(xml: str) -> str:
    from aiovirt.address import address_domain

    return address_domain(xml).xml


async def roundtrip(cases: list[Case], daemon: PrivateDaemon, parallel: int = 8
                    ) -> tuple[int, list[tuple[str, list[str]]]]:
    """Define aiovirt's own output for every scored case: libvirt must keep every address
    and controller as aiovirt wrote them.  Returns (documents checked, differences)."""
    gate = asyncio.Semaphore(parallel)
    differences: list[tuple[str, list[str]]] = []
    later: list[tuple[int, Case]] = []
    checked = 0
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        async def one(number: int, case: Case, retry: bool = True) -> None:
            nonlocal checked
            try:
                ours = assign_with_aiovirt(case.xml)
            except Exception:  # noqa: BLE001 - scored as a failure elsewhere
                return
            root = etree.fromstring(ours.encode())
            root.find("name").text = f"rt-{number}"
            async with gate:
                try:
                    dom = await conn.define_xml(etree.tostring(root, encoding="unicode"))
                except aiovirt.LibvirtError as exc:
                    if retry and "already defined with uuid" in str(exc):
                        later.append((number, case))  # a twin shares its sysinfo UUID
                        return
                    checked += 1
                    differences.append((case.name, [f"libvirt refused it: {exc}"]))
                    return
                try:
                    kept = await dom.xml(2)
                finally:
                    await dom.undefine(4 | 1 | 2 | 16 | 32)
            checked += 1
            mine, theirs = address_map(ours), address_map(kept)
            diffs = [f"{key}: aiovirt {mine.get(key)!r}, libvirt kept {theirs.get(key)!r}"
                     for key in sorted(set(mine) | set(theirs))
                     if mine.get(key) != theirs.get(key)]
            if diffs:
                differences.append((case.name, diffs))

        await asyncio.gather(*(one(n, c) for n, c in enumerate(cases)
                               if c.truth is not None))
        for number, case in later:  # one at a time
            await one(number, case, retry=False)
    return checked, differences


def build_cases(tree: Path, modes: tuple[str, ...], count: int, only: str | None = None
                ) -> list[Case]:
    data = tree / "tests" / "qemuxml2argvdata"
    files = sorted(data.glob("*.xml"))
    if only:
        files = [f for f in files if only in f.name]
    cases = []
    for mode in modes:
        if mode == "generated":
            cases += [Case(name, mode, xml) for name, xml in generated(count)]
            continue
        for path in files:
            prepared = prepare(path, mode)
            if prepared is not None:
                cases.append(Case(prepared[0], mode, prepared[1]))
    return cases


def report(cases: list[Case], modes: tuple[str, ...], show: int,
           roundtrips: dict[str, tuple[int, list[tuple[str, list[str]]]]]
           ) -> tuple[list[str], dict[str, Score]]:
    lines, scores = [], {}
    families: dict[str, list[Case]] = {}
    for case in cases:
        families.setdefault(family(case.xml), []).append(case)
    for mode in modes:
        mine = [c for c in cases if c.mode == mode]
        refused = Counter(c.refused for c in mine if c.refused)
        started = time.perf_counter()
        result = scores[mode] = score(mine, assign_with_aiovirt)
        took = time.perf_counter() - started
        by_family = []
        for name, members in sorted(families.items()):
            part = score([c for c in members if c.mode == mode], assign_with_aiovirt)
            if part.documents:
                by_family.append(f"{name} {part.exact}/{part.documents}")
        lines.append(f"\n## mode {mode}: {len(mine)} in scope, {sum(refused.values())} "
                     f"refused by libvirt, {result.documents} scored ({took:.1f} s)")
        if result.documents:
            lines.append(f"documents exact: {result.exact}/{result.documents} = "
                         f"{100 * result.exact / result.documents:.2f}%")
            lines.append(f"devices agreeing: {result.agreeing}/{result.devices} = "
                         f"{100 * result.agreeing / max(result.devices, 1):.2f}%")
            lines.append(f"aiovirt failed on {len(result.failed)}")
            lines.append("exact by machine family: " + ", ".join(by_family))
        if mode in roundtrips:
            checked, diffs = roundtrips[mode]
            lines.append(f"aiovirt's output defined again: libvirt kept every address in "
                         f"{checked - len(diffs)}/{checked}")
            for name, changed in diffs[:show]:
                lines.append(f"  CHANGED {name}:")
                lines += [f"    {d}" for d in changed[:8]]
        for name, error in result.failed[:show]:
            lines.append(f"  FAILED {name}: {error}")
        for name, found in result.differing[:show]:
            lines.append(f"  DIFFERS {name}:")
            lines += [f"    {d}" for d in found[:8]]
    lines.append("\n## by machine family, all modes")
    for name, members in sorted(families.items()):
        part = scores[f"family:{name}"] = score(members, assign_with_aiovirt)
        refusals = [c for c in members if c.refused]
        line = (f"{name:<11} {part.exact}/{part.documents} documents exact "
                f"({100 * part.exact / max(part.documents, 1):.2f}%), devices "
                f"{part.agreeing}/{part.devices}; libvirt refused {len(refusals)}")
        no_pci = [c for c in refusals if "No PCI buses available" in (c.refused or "")]
        if no_pci:
            also = sum(1 for c in no_pci if _refuses(c.xml))
            line += f" ({len(no_pci)} for want of a PCI bus: aiovirt refused {also} of those)"
        lines.append(line)
    return lines, scores


def _refuses(xml: str) -> bool:
    """Whether aiovirt's addressing refuses ``xml`` (with an ``AddressError``)."""
    from aiovirt.address import AddressError

    try:
        assign_with_aiovirt(xml)
    except AddressError:
        return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(ROOT / ".libvirt-src" / "libvirt-9.0.0"),
                        help="a libvirt source tree (default: .libvirt-src/libvirt-9.0.0)")
    parser.add_argument("--mode", choices=(*MODES, "all"), default="all")
    parser.add_argument("--generated", type=int, default=1300,
                        help="how many generated domains (mode generated; default 1300)")
    parser.add_argument("--no-roundtrip", action="store_true",
                        help="skip defining aiovirt's own output to see libvirt keep it")
    parser.add_argument("--show", type=int, default=10, help="mismatching documents to show")
    parser.add_argument("--only", help="only test files whose name contains this")
    parser.add_argument("--output", help="also write the summary to this file")
    options = parser.parse_args()
    tree = Path(options.tree)
    if not (tree / "tests" / "qemuxml2argvdata").is_dir():
        parser.error(f"{tree}/tests/qemuxml2argvdata is missing: run "
                     "`bash rpc/fetch-libvirt-source` first")
    modes = MODES if options.mode == "all" else (options.mode,)
    cases = build_cases(tree, modes, options.generated, options.only)
    roundtrips = {}
    with PrivateDaemon() as daemon:
        versions = asyncio.run(define_all(cases, daemon))
        if not options.no_roundtrip:
            for mode in modes:
                roundtrips[mode] = asyncio.run(
                    roundtrip([c for c in cases if c.mode == mode], daemon))
    lines = [f"# address agreement, {versions} vs aiovirt {aiovirt.__version__}, "
             f"{time.strftime('%Y-%m-%d')}",
             f"# corpus: {tree}/tests/qemuxml2argvdata and {options.generated} generated "
             "domains"]
    more, _ = report(cases, modes, options.show, roundtrips)
    text = "\n".join(lines + more)
    print(text)
    if options.output:
        Path(options.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
