"""How closely aiovirt's offline addressing agrees with libvirt's own, on libvirt's test inputs.

    .venv/bin/python benchmarks/address_agreement.py [--tree LIBVIRT_TREE] [--mode MODE]
                                                     [--generated N] [--show N]
                                                     [--only SUBSTRING] [--output FILE]

The corpus is built here, not shipped: every domain XML in libvirt's
``tests/qemuxml2argvdata`` (the source tree ``rpc/fetch-libvirt-source`` unpacks into
``.libvirt-src/``) for x86_64 (``pc``, ``pc-i440fx-*``, ``q35``, ``pc-q35-*``) or aarch64
(``virt``, ``virt-*``) is prepared in two modes:

* ``addresses``: every device address (PCI, drive, USB, virtio-serial, CCID) removed;
* ``controllers``: also the controllers libvirt inserts by itself removed (all PCI
  controllers except expander buses, and controllers that say nothing but their type and
  index);

and a third set, ``generated``: seeded random domains with dozens of devices (bus growth,
PCI-only devices on q35, USB hubs, virtio-serial ports) that libvirt's tests rarely reach;

its ``<emulator>`` dropped (libvirt picks the one for the architecture), aarch64 guests made
TCG (``type='qemu'``: this host has no aarch64 KVM), the name made unique and the UUID
dropped (and an SMBIOS UUID, which libvirt would copy). Each is defined on a private
libvirtd (``PrivateDaemon``, QEMU driver, QEMU 7.2) and its inactive XML read back: that is
the truth. Inputs that libvirt refuses (machine
types QEMU 7.2 no longer has, missing host devices...) are left out, and counted. The truth
is cached in ``.cache/address-agreement/<versions>/`` by a digest of the input.

aiovirt then addresses the same prepared input offline (``aiovirt.address``), and the two
are compared on every addressed device and every controller: a document agrees exactly when
all of them carry the same address (and each controller the same model, model name, and
chassis/port/busNr), device agreement counts devices.
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
ADDRESS_TYPES = {"pci", "drive", "usb", "virtio-serial", "ccid"}
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
    if arch == "aarch64" and (machine == "virt" or machine.startswith("virt-")):
        return arch, machine
    return None


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
    if arch == "aarch64":
        root.set("type", "qemu")
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


def generated(count: int, seed: int = 20261124) -> list[tuple[str, str]]:
    """``count`` random domains that stress what libvirt's tests rarely do: dozens of
    devices (bus growth: pci-bridges on pc, root ports and pcie-to-pci-bridges on q35),
    mixes of PCI-only and PCIe devices, USB hubs, virtio-serial ports, drive addresses."""
    import random

    rng = random.Random(seed)
    cases = []
    for number in range(count):
        arch, machine = rng.choice([("x86_64", "pc"), ("x86_64", "pc"), ("x86_64", "q35"),
                                    ("x86_64", "q35"), ("aarch64", "virt")])
        x86 = arch == "x86_64"
        parts = []
        letters = iter("abcdefghijklmnopqrstuvwxyz")
        for _ in range(rng.randrange(0, 14)):
            parts.append(f"<disk type='file' device='disk'><source file='/img/{number}-"
                         f"{len(parts)}.qcow2'/><target dev='vd{next(letters)}' "
                         "bus='virtio'/></disk>")
        if x86:
            bus = "ide" if machine == "pc" else "sata"
            prefix = "hd" if bus == "ide" else "sd"
            for letter in "abcd"[:rng.randrange(0, 4)]:
                parts.append(f"<disk type='file' device='cdrom'><target dev='{prefix}{letter}' "
                             f"bus='{bus}'/><readonly/></disk>")
        scsi = rng.randrange(0, 3)
        for index in range(scsi):
            parts.append(f"<disk type='file' device='disk'><source file='/img/s{number}-"
                         f"{index}'/><target dev='sd{'mnopqrstuvw'[index]}' bus='scsi'/></disk>")
        if scsi and rng.random() < 0.5:
            parts.append("<controller type='scsi' model='virtio-scsi'/>")
        models = ["virtio", "virtio", "e1000e"] + (["e1000", "rtl8139"] if x86 else [])
        for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 35])):
            parts.append("<interface type='user'><model type='"
                         f"{rng.choice(models)}'/></interface>")
        usb = rng.choice(["default", "default", "qemu-xhci", "ich9-ehci1", "none"] +
                         (["piix3-uhci", "nec-xhci"] if x86 else []))
        if usb != "default":
            parts.append(f"<controller type='usb' model='{usb}'/>")
            if usb == "ich9-ehci1":
                for companion in ("ich9-uhci1", "ich9-uhci2", "ich9-uhci3"):
                    parts.append(f"<controller type='usb' model='{companion}'/>")
        if usb != "none" and (x86 or usb != "default"):
            for _ in range(rng.choice([0, 1, 2, 4, 7, 12])):
                parts.append("<redirdev bus='usb' type='tcp'><source mode='connect' "
                             "host='127.0.0.1' service='4000'/></redirdev>")
            if rng.random() < 0.5:
                parts.append("<input type='tablet' bus='usb'/>")
        for index in range(rng.randrange(0, 5)):
            parts.append(f"<channel type='unix'><target type='virtio' name='org.example.{index}'"
                         "/></channel>")
        if x86:
            for _ in range(rng.randrange(0, 3)):
                parts.append(f"<sound model='{rng.choice(['ich9', 'ich6', 'ac97'])}'/>")
        if rng.random() < 0.6:
            parts.append("<graphics type='vnc' port='-1'/>")
            primary = ["virtio"] + (["vga", "qxl", "cirrus", "bochs"] if x86 else [])
            secondary = ["virtio"] + (["qxl"] if x86 else [])
            for count in range(rng.randrange(0, 3)):
                model = rng.choice(secondary if count else primary)
                parts.append(f"<video><model type='{model}'/></video>")
        if rng.random() < 0.4:
            parts.append("<rng model='virtio'><backend model='random'>/dev/urandom</backend>"
                         "</rng>")
        if x86 and rng.random() < 0.3:
            parts.append("<watchdog model='i6300esb'/>")
        if rng.random() < 0.3:
            parts.append("<input type='keyboard' bus='virtio'/>")
        for index in range(rng.choice([0, 0, 1, 3])):
            parts.append(f"<hostdev mode='subsystem' type='pci' managed='no'><source><address "
                         f"domain='0x0000' bus='0x{0x40 + index:02x}' slot='0x00' "
                         "function='0x0'/></source></hostdev>")
        if rng.random() < 0.2:
            parts.append("<memballoon model='none'/>")
        rng.shuffle(parts)
        videos = [p for p in parts if p.startswith("<video>")]  # the primary stays first
        parts = [p for p in parts if not p.startswith("<video>")] + videos
        kind = "kvm" if x86 else "qemu"
        xml = (f"<domain type='{kind}'><name>gen-{number}</name><memory unit='MiB'>256"
               f"</memory><os><type arch='{arch}' machine='{machine}'>hvm</type></os>"
               f"<devices>{''.join(parts)}</devices></domain>")
        cases.append((f"generated-{number}-{machine}", xml))
    return cases


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
                          if k in ("chassis", "port", "busNr", "chassisNr")]
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
    for mode in modes:
        mine = [c for c in cases if c.mode == mode]
        refused = Counter(c.refused for c in mine if c.refused)
        started = time.perf_counter()
        result = scores[mode] = score(mine, assign_with_aiovirt)
        took = time.perf_counter() - started
        lines.append(f"\n## mode {mode}: {len(mine)} in scope, {sum(refused.values())} "
                     f"refused by libvirt, {result.documents} scored ({took:.1f} s)")
        if result.documents:
            lines.append(f"documents exact: {result.exact}/{result.documents} = "
                         f"{100 * result.exact / result.documents:.2f}%")
            lines.append(f"devices agreeing: {result.agreeing}/{result.devices} = "
                         f"{100 * result.agreeing / max(result.devices, 1):.2f}%")
            lines.append(f"aiovirt failed on {len(result.failed)}")
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
    return lines, scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(ROOT / ".libvirt-src" / "libvirt-9.0.0"),
                        help="a libvirt source tree (default: .libvirt-src/libvirt-9.0.0)")
    parser.add_argument("--mode", choices=(*MODES, "all"), default="all")
    parser.add_argument("--generated", type=int, default=400,
                        help="how many generated domains (mode generated; default 400)")
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
