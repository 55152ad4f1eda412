"""Addressing one new device against a running (or saved) domain, for hot-plug.

    plugged = address_hotplug(live_xml, "<interface type='network'>…</interface>")
    plugged.xml        # the device with its address, ready for attach_device
    plugged.address    # PciAddress(bus=4, slot=0, ...)

The domain's devices keep their addresses (the policy reserves given addresses first: adding
a device never moves one).  What cannot be done to a running guest is refused with an
``AddressError`` naming the device and what it would have needed: a new controller (a
pcie-root-port, a virtio-serial or SCSI controller, a USB hub) when no free place is left,
which is why domains meant for hot-plug are addressed with a hotplug reserve
(``Tunables(hotplug_reserve=N)``): the free ports that reserve left are what hot-plug uses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from lxml import etree

from ..xml.safe import parse, strip_indentation, to_string
from . import place
from .domainxml import machine_of, read_devices, write_devices
from .model import Address, AddressError, Device, Tunables

__all__ = ["HotplugAddress", "address_hotplug"]

# domain XML elements that are not devices one can plug
_NOT_DEVICES = {"domain", "devices", "emulator", "metadata", "address", "alias"}


@dataclass
class HotplugAddress:
    """A new device addressed against a domain: its element (a detached copy) and where
    the policy put it (None for devices that take no address of ours)."""

    element: etree._Element
    device: Device

    @property
    def address(self) -> Address | None:
        return self.device.address

    @property
    def xml(self) -> str:
        return to_string(self.element)


def _tree(value: str | bytes | etree._Element, what: str) -> etree._Element:
    if isinstance(value, etree._Element):
        return strip_indentation(copy.deepcopy(value))
    return parse(value, source=what)


def _where(dev: Device) -> str:
    return f"{dev.label()} at {dev.address}" if dev.address is not None else dev.label()


def address_hotplug(domain: str | bytes | etree._Element,
                    device: str | bytes | etree._Element,
                    tunables: Tunables | None = None, *,
                    source: str = "<domain>") -> HotplugAddress:
    """Give ``device`` a free address in ``domain`` (live or inactive XML) without moving
    or adding anything; neither argument is changed.

    ``tunables``: its ``placement`` (pci/pcie) applies; ``hotplug_reserve`` is what the
    domain was addressed with, and the places it left free are the ones used here."""
    root = _tree(domain, source)
    if root.tag != "domain":
        raise AddressError(f"{source}: expected a <domain> document, found <{root.tag}>")
    new = _tree(device, "<device>")
    if new.tag in _NOT_DEVICES or not isinstance(new.tag, str):
        raise AddressError(f"<device>: expected one device element (<disk>, <interface>, "
                           f"<channel>...), found <{new.tag}>")
    container = root.find("devices")
    if container is None:
        container = etree.SubElement(root, "devices")
    existing = read_devices(root)   # kept alive: lxml proxies (and so ids) must not change
    before = {id(d.origin): d.address for d in existing}
    container.append(new)
    devices = read_devices(root)
    mine = next(d for d in devices if d.origin is new)
    who = mine.name if mine.name.startswith("ua-") else f"the new <{new.tag}>"
    placed = place(machine_of(root), devices, _without_reserve(tunables))
    extra = [d for d in placed if d.added]
    if extra:
        needs = ", ".join(f"<{d.kind}{f' type={d.type!r}' if d.type else ''}"
                          f"{f' model={d.model!r}' if d.model else ''}>" for d in extra)
        pci = all(d.kind == "controller" and d.type == "pci" for d in extra)
        hint = ("address the domain with a hotplug reserve to keep PCI places free" if pci
                else "add it to the domain's definition and restart, or plug it first")
        raise AddressError(f"{who}: no free place for it in the running domain; it "
                           f"would need {needs}, which this hot-plug does not add ({hint})")
    moved = [d for d in placed if d.origin is not new and id(d.origin) in before
             and before[id(d.origin)] is not None and before[id(d.origin)] != d.address]
    if moved:   # the policy keeps given addresses: this would be a bug, never a silent move
        raise AddressError(f"{who}: placing it would move "
                           f"{', '.join(_where(d) for d in moved)}")
    write_devices(root, placed)
    result = next(d for d in placed if d.origin is new)
    container.remove(new)
    new.tail = None
    return HotplugAddress(new, result)


def _without_reserve(tunables: Tunables | None) -> Tunables:
    """The caller's tunables, but no hotplug reserve: a hot-plug may use the reserved places."""
    given = tunables or Tunables()
    return Tunables(0, given.placement, given.multifunction)
