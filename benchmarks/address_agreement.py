"""How closely aiovirt's offline addressing agrees with libvirt's own, on libvirt's test inputs.

    .venv/bin/python benchmarks/address_agreement.py [--tree LIBVIRT_TREE] [--mode MODE]
                                                     [--show N] [--only SUBSTRING]

The corpus is built here, not shipped: every domain XML in libvirt's
``tests/qemuxml2argvdata`` (the source tree ``rpc/fetch-libvirt-source`` unpacks into
``.libvirt-src/``) for x86_64 (``pc``, ``pc-i440fx-*``, ``q35``, ``pc-q35-*``) or aarch64
(``virt``, ``virt-*``) is prepared in two modes:

* ``addresses``: every device address (PCI, drive, USB, virtio-serial, CCID) removed;
* ``controllers``: also the controllers libvirt inserts by itself removed (all PCI
  controllers except expander buses, and controllers that say nothing but their type and
  index),

its ``<emulator>`` dropped (libvirt picks the one for the architecture), aarch64 guests made
TCG (``type='qemu'``: this host has no aarch64 KVM), the name made unique and the UUID
dropped. Each is defined on a private libvirtd (``PrivateDaemon``, QEMU driver, QEMU 7.2)
and its inactive XML read back: that is the truth. Inputs that libvirt refuses (machine
types QEMU 7.2 no longer has, missing host devices...) are left out, and counted. The truth
is cached in ``.cache/address-agreement/`` by a digest of the input.

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
from aiovirt.daemon import PrivateDaemon

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = ROOT / ".cache" / "address-agreement"
ADDRESS_TYPES = {"pci", "drive", "usb", "virtio-serial", "ccid"}
MODES = ("addresses", "controllers")


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
        if kind == "pci" and model not in ("pci-expander-bus", "pcie-expander-bus"):
            devices.remove(controller)
        elif kind != "pci" and is_bare(controller):
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
    for tag in ("uuid", "devices/emulator"):
        for element in root.findall(tag):
            element.getparent().remove(element)
    name = root.find("name")
    if name is None:
        name = etree.SubElement(root, "name")
    strip_addresses(root)
    if mode == "controllers":
        strip_inserted_controllers(root)
    digest = hashlib.sha256(etree.tostring(root)).hexdigest()[:16]
    name.text = f"aa-{digest}"
    return path.stem, etree.tostring(root, encoding="unicode")


@dataclass
class Case:
    name: str
    mode: str
    xml: str
    truth: str | None = None      # libvirt's inactive XML
    refused: str | None = None    # why libvirt would not define it


async def define_all(cases: list[Case], daemon: PrivateDaemon, parallel: int = 8) -> None:
    """Fill ``truth`` or ``refused`` for every case, from the cache or the daemon."""
    CACHE.mkdir(parents=True, exist_ok=True)
    todo = []
    for case in cases:
        cached = CACHE / (hashlib.sha256(case.xml.encode()).hexdigest()[:24] + ".json")
        if cached.exists():
            data = json.loads(cached.read_text())
            case.truth, case.refused = data["truth"], data["refused"]
        else:
            todo.append((case, cached))
    if not todo:
        return
    print(f"defining {len(todo)} documents on the private libvirtd...", file=sys.stderr)
    gate = asyncio.Semaphore(parallel)
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        async def one(case: Case, cached: Path) -> None:
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
            cached.write_text(json.dumps({"truth": case.truth, "refused": case.refused}))

        await asyncio.gather(*(one(case, cached) for case, cached in todo))


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(ROOT / ".libvirt-src" / "libvirt-9.0.0"),
                        help="a libvirt source tree (default: .libvirt-src/libvirt-9.0.0)")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--show", type=int, default=10, help="mismatching documents to show")
    parser.add_argument("--only", help="only test files whose name contains this")
    parser.add_argument("--output", help="also write the summary to this file")
    options = parser.parse_args()
    data = Path(options.tree) / "tests" / "qemuxml2argvdata"
    if not data.is_dir():
        parser.error(f"{data} is missing: run `bash rpc/fetch-libvirt-source` first")
    modes = MODES if options.mode == "both" else (options.mode,)
    files = sorted(data.glob("*.xml"))
    if options.only:
        files = [f for f in files if options.only in f.name]
    cases = []
    for mode in modes:
        for path in files:
            prepared = prepare(path, mode)
            if prepared is not None:
                cases.append(Case(prepared[0], mode, prepared[1]))
    with PrivateDaemon() as daemon:
        asyncio.run(define_all(cases, daemon))
    lines = [f"# address agreement, libvirt 9.0.0 + QEMU 7.2 vs aiovirt {aiovirt.__version__}, "
             f"{time.strftime('%Y-%m-%d')}",
             f"# corpus: {data} ({len(files)} files)"]
    for mode in modes:
        mine = [c for c in cases if c.mode == mode]
        refused = Counter(c.refused for c in mine if c.refused)
        started = time.perf_counter()
        result = score(mine, assign_with_aiovirt)
        took = time.perf_counter() - started
        lines.append(f"\n## mode {mode}: {len(mine)} in scope, {sum(refused.values())} refused "
                     f"by libvirt, {result.documents} scored ({took:.1f} s)")
        if result.documents:
            lines.append(f"documents exact: {result.exact}/{result.documents} = "
                         f"{100 * result.exact / result.documents:.2f}%")
            lines.append(f"devices agreeing: {result.agreeing}/{result.devices} = "
                         f"{100 * result.agreeing / max(result.devices, 1):.2f}%")
            lines.append(f"aiovirt failed on {len(result.failed)}")
        for name, error in result.failed[:options.show]:
            lines.append(f"  FAILED {name}: {error}")
        for name, diffs in result.differing[:options.show]:
            lines.append(f"  DIFFERS {name}:")
            lines += [f"    {d}" for d in diffs[:8]]
    text = "\n".join(lines)
    print(text)
    if options.output:
        Path(options.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
