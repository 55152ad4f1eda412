"""Domain XML to ``Device`` lists and back: read what addressing needs, write addresses and
added controllers into the same document (everything else is left as it was)."""

from __future__ import annotations

import copy
from typing import Any

from lxml import etree

from .model import (
    Address,
    MAX_CONTROLLER_INDEX,
    MAX_MEMORY_SLOTS,
    MAX_PORTS,
    AddressError,
    CcidAddress,
    CcwAddress,
    Device,
    DriveAddress,
    Machine,
    PciAddress,
    SpaprVioAddress,
    UsbAddress,
    VirtioSerialAddress,
)

__all__ = ["machine_of", "read_devices", "write_devices"]

OURS = ("pci", "drive", "usb", "virtio-serial", "ccid", "ccw", "spapr-vio")
# device elements in the order libvirt formats them; added devices go after their kind
_ORDER = ("emulator", "disk", "controller", "lease", "filesystem", "interface", "smartcard",
          "serial", "parallel", "console", "channel", "input", "tpm", "graphics", "sound",
          "audio", "video", "hostdev", "redirdev", "redirfilter", "hub", "watchdog",
          "memballoon", "rng", "nvram", "panic", "shmem", "memory", "iommu", "vsock", "crypto")


def machine_of(root: etree._Element) -> Machine:
    os_type = root.find("os/type")
    cells = len(root.findall("cpu/numa/cell"))
    machine = Machine(numa_nodes=cells) if os_type is None else \
        Machine(os_type.get("arch", "x86_64"), os_type.get("machine", "pc"), 0, cells)
    machine.memory_slots = _count(_attr(root.find("maxMemory"), "slots"), "<maxMemory slots>",
                                  machine.max_memory_slots) or 0
    return machine


def _int(value: str | None, what: str, base: int = 0) -> int | None:
    if value is None:
        return None
    try:
        return int(value, base)
    except ValueError:
        raise AddressError(f"{what}: {value!r} is not a number") from None


def _count(value: str | None, what: str, high: int, low: int = 0) -> int | None:
    """``_int`` within ``low..high``: libvirt's own ranges, or a bound on what placing the
    device allocates (a controller's ports, its index)."""
    number = _int(value, what)
    if number is not None and not low <= number <= high:
        raise AddressError(f"{what}: {number} is out of range ({low} to {high})")
    return number




# the address types libvirt 9.0 reads (virDomainDeviceAddress, "none" aside: it refuses that)
ADDRESS_TYPES = frozenset({"pci", "drive", "virtio-serial", "ccid", "usb", "spapr-vio",
                           "virtio-s390", "ccw", "virtio-mmio", "isa", "dimm", "unassigned"})


def _address(element: etree._Element, who: str) -> tuple[Address | None, str | None]:
    """(our address, None) or (None, the foreign address type).  A missing or unknown type
    is refused here, as libvirt would refuse it at define time."""
    kind = element.get("type")
    if kind is None:
        raise AddressError(f"{who} <address>: no type given (libvirt needs one: "
                           f"{', '.join(sorted(ADDRESS_TYPES))})")
    where = f"{who} <address type='{kind}'>"
    if kind not in ADDRESS_TYPES:
        raise AddressError(f"{where}: unknown address type (libvirt knows "
                           f"{', '.join(sorted(ADDRESS_TYPES))})")
    if kind == "pci":
        multi = element.get("multifunction")
        if multi not in (None, "on", "off"):
            raise AddressError(f"{where}: multifunction {multi!r}: give on or off")
        return PciAddress(_count(element.get("bus", "0"), f"{where} bus", 0xFF) or 0,
                          _int(element.get("slot", "0"), where) or 0,
                          _int(element.get("function", "0"), where) or 0,
                          _count(element.get("domain", "0"), f"{where} domain", 0xFFFF) or 0,
                          None if multi is None else multi == "on"), None
    if kind == "drive":
        return DriveAddress(
            _count(element.get("controller", "0"), f"{where} controller",
                   MAX_CONTROLLER_INDEX) or 0,
            _count(element.get("bus", "0"), f"{where} bus", 0xFFFF) or 0,
            _count(element.get("target", "0"), f"{where} target", 0xFFFF) or 0,
            _count(element.get("unit", "0"), f"{where} unit", 0xFFFF) or 0), None
    if kind == "usb":
        port = element.get("port")
        path: tuple[int, ...] = ()
        if port:
            try:
                path = tuple(int(p) for p in port.split("."))
            except ValueError:
                raise AddressError(f"{where}: port {port!r} is not a port path") from None
        if not path:
            return None, None  # a bus without a port: libvirt picks the port
        return UsbAddress(_int(element.get("bus", "0"), where) or 0, path), None
    if kind == "virtio-serial":
        return VirtioSerialAddress(_int(element.get("controller", "0"), where) or 0,
                                   _int(element.get("port", "0"), where) or 0,
                                   _int(element.get("bus", "0"), where) or 0), None
    if kind == "ccid":
        return CcidAddress(_int(element.get("controller", "0"), where) or 0,
                           _int(element.get("slot", "0"), where) or 0), None
    if kind == "ccw":
        numbers = [_int(element.get(k), where) for k in ("cssid", "ssid", "devno")]
        if None in numbers:
            if any(n is not None for n in numbers):
                raise AddressError(f"{where}: give all of cssid, ssid and devno, or none")
            return None, kind   # libvirt (and the policy) picks the devno
        return CcwAddress(*numbers), None  # type: ignore[arg-type]
    if kind == "spapr-vio":
        reg = _int(element.get("reg"), where, 16)   # libvirt reads reg as hex, 0x or not
        return (SpaprVioAddress(reg), None) if reg is not None else (None, kind)
    return None, kind


def _attr(element: etree._Element | None, name: str) -> str | None:
    return None if element is None else element.get(name)


def read_devices(root: etree._Element) -> list[Device]:
    """The devices of a domain XML tree, with what addressing needs to know."""
    devices: list[Device] = []
    container = root.find("devices")
    if container is None:
        return devices
    counts: dict[str, int] = {}
    for element in container:
        if not isinstance(element.tag, str):
            continue
        kind = element.tag
        counts[kind] = counts.get(kind, 0) + 1
        child: dict[str, etree._Element] = {}   # the first child of each name (faster than
        for sub in element:                      # find(), which parses a path each time)
            if sub.tag not in child:
                child[sub.tag] = sub
        alias = _attr(child.get("alias"), "name")
        dev = Device(kind, name=alias or f"{kind}#{counts[kind]}", origin=element)
        options: dict[str, Any] = {}
        target = child.get("target")
        if kind == "disk":
            dev.bus = _attr(target, "bus")
            dev.target = _attr(target, "dev")
            dev.model = element.get("model")
            options["device"] = element.get("device", "disk")
        elif kind == "controller":
            dev.type = element.get("type")
            dev.index = _count(element.get("index"), f"{dev.name} index",
                               MAX_CONTROLLER_INDEX)
            dev.model = element.get("model")
            if element.get("ports") is not None:
                options["ports"] = _count(element.get("ports"), f"{dev.name} ports",
                                          MAX_PORTS, 1)
            model_name = _attr(child.get("model"), "name")
            if model_name:
                options["model_name"] = model_name
            if target is not None:
                for key in ("chassis", "port", "busNr", "chassisNr"):
                    if target.get(key) is not None:   # (libvirt's ranges: 0 or 1 to 255)
                        options[key] = _count(target.get(key), f"{dev.name} <target {key}>",
                                              255)
                if target.get("index") is not None:   # a pSeries PHB's target index
                    options["targetIndex"] = _int(target.get("index"), dev.name)
                if target.get("hotplug") is not None:
                    options["hotplug"] = target.get("hotplug")
                node = target.findtext("node")
                if node is not None:
                    options["numa_node"] = _int(node, dev.name)
            if child.get("master") is not None:
                options["master"] = True
        elif kind == "interface":
            dev.type = element.get("type")
            dev.model = _attr(child.get("model"), "type")
        elif kind == "hostdev":
            if element.get("mode", "subsystem") == "subsystem":
                dev.type = element.get("type")
            dev.model = element.get("model")
        elif kind in ("video",):
            model = child.get("model")
            dev.model = _attr(model, "type")
            if _attr(model, "primary") == "yes":
                options["primary"] = True
        elif kind in ("sound", "memballoon", "rng", "watchdog", "iommu", "vsock", "memory",
                      "shmem", "tpm", "panic"):
            dev.model = element.get("model")
        elif kind == "input":
            dev.type = element.get("type")
            dev.bus = element.get("bus")
            dev.model = element.get("model")
        elif kind in ("serial", "channel", "console", "parallel"):
            dev.target = _attr(target, "type")
            if kind == "serial" and target is not None:
                model = target.find("model")
                if model is not None and model.get("name"):
                    options["target_model"] = model.get("name")
        elif kind == "redirdev":
            dev.bus = element.get("bus")
        elif kind == "hub":
            dev.type = element.get("type")
        elif kind == "filesystem":
            dev.model = element.get("model")
            options["driver"] = _attr(child.get("driver"), "type")
        address = child.get("address")
        if address is not None:
            dev.address, foreign = _address(address, dev.name)
            if foreign is not None:
                options["foreign_address"] = foreign
                if foreign == "dimm" and address.get("slot") is not None:
                    options["dimm_slot"] = _count(address.get("slot"),
                                                  f"{dev.name} <address type='dimm' slot>",
                                                  MAX_MEMORY_SLOTS - 1)
        dev.options = options
        devices.append(dev)
    _primary_video_first(devices)
    return devices


def _primary_video_first(devices: list[Device]) -> None:
    """libvirt keeps the primary='yes' video first among videos."""
    videos = [i for i, d in enumerate(devices) if d.kind == "video"]
    primary = next((i for i in videos if devices[i].options.get("primary")), None)
    if primary is not None and videos and primary != videos[0]:
        dev = devices.pop(primary)
        devices.insert(videos[0], dev)


def _hex(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


def _write_address(element: etree._Element, address: Address | None, fresh: bool) -> None:
    if not fresh:
        for old in element.findall("address"):
            if old.get("type") in OURS:
                element.remove(old)
    if address is None:
        return
    if isinstance(address, PciAddress):
        attrs = {"type": "pci", "domain": _hex(address.domain, 4), "bus": _hex(address.bus, 2),
                 "slot": _hex(address.slot, 2), "function": f"0x{address.function:x}"}
        if address.multifunction is not None:
            attrs["multifunction"] = "on" if address.multifunction else "off"
    elif isinstance(address, DriveAddress):
        attrs = {"type": "drive", "controller": str(address.controller),
                 "bus": str(address.bus), "target": str(address.target),
                 "unit": str(address.unit)}
    elif isinstance(address, UsbAddress):
        attrs = {"type": "usb", "bus": str(address.bus),
                 "port": ".".join(map(str, address.port))}
    elif isinstance(address, VirtioSerialAddress):
        attrs = {"type": "virtio-serial", "controller": str(address.controller),
                 "bus": str(address.bus), "port": str(address.port)}
    elif isinstance(address, CcidAddress):
        attrs = {"type": "ccid", "controller": str(address.controller),
                 "slot": str(address.slot)}
    elif isinstance(address, CcwAddress):
        attrs = {"type": "ccw", "cssid": _hex(address.cssid, 0), "ssid": _hex(address.ssid, 0),
                 "devno": _hex(address.devno, 4)}
    else:
        attrs = {"type": "spapr-vio", "reg": _hex(address.reg, 8)}
    etree.SubElement(element, "address", attrs)


def _new_element(dev: Device, source: etree._Element | None = None) -> etree._Element:
    if dev.kind == "controller":
        element = etree.Element("controller", type=dev.type or "", index=str(dev.index))
        if dev.model is not None:
            element.set("model", dev.model)
    elif dev.kind == "memballoon":
        element = etree.Element("memballoon", model=dev.model or "virtio")
    elif dev.kind == "video":
        element = etree.Element("video")
        etree.SubElement(element, "model", type=dev.model or "vga")
    elif dev.kind == "hub":
        element = etree.Element("hub", type=dev.type or "usb")
    elif dev.kind == "input":
        element = etree.Element("input", type=dev.type or "mouse", bus=dev.bus or "usb")
    elif dev.kind in ("serial", "console") and source is not None:
        # libvirt's console/serial aliasing: the same character device under the other name
        element = copy.deepcopy(source)
        element.tag = dev.kind
        for child in list(element):
            if child.tag in ("target", "address", "alias"):
                element.remove(child)
        if dev.kind == "console":
            etree.SubElement(element, "target", type="serial")
    else:
        element = etree.Element(dev.kind)
    return element


def _write_controller(element: etree._Element, dev: Device) -> None:
    if dev.model is not None and element.get("model") in (None, "auto"):
        element.set("model", dev.model)   # libvirt writes the model it chose for 'auto'

    if element.get("index") is None and dev.index is not None:
        element.set("index", str(dev.index))
    options = dev.options
    if options.get("model_name") and element.find("model") is None:
        etree.SubElement(element, "model", name=options["model_name"])
    keys = [k for k in ("chassisNr", "chassis", "port", "busNr", "targetIndex")
            if options.get(k) is not None]
    if keys or options.get("numa_node") is not None:
        target = element.find("target")
        if target is None:
            target = etree.SubElement(element, "target")
        for key in keys:
            name = "index" if key == "targetIndex" else key
            if target.get(name) is None:
                value = options[key]
                target.set(name, _hex(value, 0) if key == "port" else str(value))
        if options.get("numa_node") is not None and target.find("node") is None:
            etree.SubElement(target, "node").text = str(options["numa_node"])


def write_devices(root: etree._Element, devices: list[Device]) -> None:
    """Write addresses (and controller settings) back; add the devices the policy added."""
    container = root.find("devices")
    if container is None:
        container = etree.SubElement(root, "devices")
    _order_videos(container, devices)
    inserter = _Inserter(container)
    for dev in devices:
        element = dev.origin
        fresh = element is None
        if fresh:
            source = None
            if dev.options.get("copy_of"):
                source = next((d.origin for d in devices if d.name == dev.options["copy_of"]),
                              None)
            element = dev.origin = _new_element(dev, source)
            inserter.insert(element, first=dev.kind == "console")
        if dev.kind == "controller":
            _write_controller(element, dev)
        old = None if fresh else element.find("address")
        if dev.options.get("write_foreign") and old is None:
            attrs = {"type": dev.options["foreign_address"]}
            if dev.options.get("dimm_slot") is not None:
                attrs["slot"] = str(dev.options["dimm_slot"])
            etree.SubElement(element, "address", attrs)
        elif (dev.address is not None or old is not None) and \
                dev.options.get("foreign_address") is None:
            _write_address(element, dev.address, fresh)


def _order_videos(container: etree._Element, devices: list[Device]) -> None:
    """Put the primary video first, as libvirt does."""
    wanted = [d.origin for d in devices if d.kind == "video" and d.origin is not None]
    present = container.findall("video")
    if wanted == present or sorted(map(id, wanted)) != sorted(map(id, present)):
        return
    marker = etree.Element("marker")
    present[0].addprevious(marker)
    for video in present:
        container.remove(video)
    for video in reversed(wanted):
        marker.addnext(video)
    container.remove(marker)


class _Inserter:
    """Puts new device elements after the last of their kind, else where libvirt's order of
    kinds puts them (remembering the last of each kind: no search per insertion)."""

    def __init__(self, container: etree._Element) -> None:
        self.container = container
        self.last: dict[str, etree._Element] = {}
        for child in container:
            if isinstance(child.tag, str):
                self.last[child.tag] = child

    def insert(self, element: etree._Element, first: bool = False) -> None:
        """After the last element of its kind (``first``: before the first one)."""
        tag = element.tag
        previous = self.last.get(tag)
        if first and previous is not None:
            self.container.find(tag).addprevious(element)
            return
        if previous is not None:
            previous.addnext(element)
        else:
            self._insert_by_order(element)
        self.last[tag] = element

    def _insert_by_order(self, element: etree._Element) -> None:
        rank = _ORDER.index(element.tag) if element.tag in _ORDER else len(_ORDER)
        for existing in self.container:
            if isinstance(existing.tag, str) and existing.tag in _ORDER and \
                    _ORDER.index(existing.tag) > rank:
                existing.addprevious(element)
                return
        self.container.append(element)
