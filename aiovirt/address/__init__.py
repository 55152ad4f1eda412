"""Device addressing, offline: every controller and PCI/drive/USB/virtio-serial/CCID address
for a guest, the way libvirt would assign them (or tuned), without a daemon.

    from aiovirt.address import address_domain, place, Device, Machine, Tunables

    result = address_domain(open("guest.xml").read(), Tunables(hotplug_reserve=4))
    result.xml                        # the domain XML with controllers and addresses
    devices = place(Machine("x86_64", "q35"), [Device("interface", type="network",
                                                      model="virtio")])

``place`` works on plain ``Device`` lists (JSON in and out with ``Device.to_dict`` and
``device_from_dict``); ``address_domain`` reads and writes domain XML around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from ..xmlsafe import parse, strip_indentation, to_string
from .domainxml import machine_of, read_devices, write_devices
from .libvirt import LibvirtPlacement
from .model import (Address, AddressError, CcidAddress, Device, DriveAddress, Machine,
                    PciAddress, Tunables, UsbAddress, VirtioSerialAddress, address_from_dict,
                    device_from_dict)

__all__ = ["Address", "AddressError", "AddressedDomain", "CcidAddress", "Device",
           "DriveAddress", "Machine", "PciAddress", "Tunables", "UsbAddress",
           "VirtioSerialAddress", "address_domain", "address_from_dict", "device_from_dict",
           "place"]

POLICIES = ("libvirt",)


def place(machine: Machine, devices: list[Device], tunables: Tunables | None = None, *,
          policy: str = "libvirt") -> list[Device]:
    """Complete ``devices`` for ``machine``: add the controllers (and default devices) the
    policy needs and give every device that has none an address.  Given addresses are kept;
    an impossible request raises ``AddressError`` naming the device and why."""
    if policy not in POLICIES:
        raise AddressError(f"unknown addressing policy {policy!r} (known: "
                           f"{', '.join(POLICIES)})")
    return LibvirtPlacement(machine, devices, tunables or Tunables()).run()


@dataclass
class AddressedDomain:
    """A domain XML tree with its controllers and addresses filled in."""

    tree: etree._Element
    devices: list[Device] = field(default_factory=list)

    @property
    def xml(self) -> str:
        return to_string(self.tree)

    @property
    def added(self) -> list[Device]:
        """The devices the policy added (controllers, the balloon, hubs...)."""
        return [d for d in self.devices if d.added]


def address_domain(domain: str | bytes | etree._Element, tunables: Tunables | None = None,
                   *, policy: str = "libvirt", source: str = "<domain>") -> AddressedDomain:
    """Fill in controllers and addresses in a domain XML (a copy when given a tree)."""
    if isinstance(domain, etree._Element):
        import copy

        root = strip_indentation(copy.deepcopy(domain))
    else:
        root = parse(domain, source=source)
    if root.tag != "domain":
        raise AddressError(f"{source}: expected a <domain> document, found <{root.tag}>")
    devices = place(machine_of(root), read_devices(root), tunables, policy=policy)
    write_devices(root, devices)
    return AddressedDomain(root, devices)
