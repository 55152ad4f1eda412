"""Device addressing, offline: every controller and PCI/drive/USB/virtio-serial/CCID (and
s390 CCW, pSeries spapr-vio) address for a guest, the way libvirt would assign them (or
tuned), without a daemon.

    from aiovirt.address import address_domain, place, Device, Machine, Tunables

    result = address_domain(open("guest.xml").read(), Tunables(hotplug_reserve=4))
    result.xml                        # the domain XML with controllers and addresses
    devices = place(Machine("x86_64", "q35"), [Device("interface", type="network",
                                                      model="virtio")])

``place`` works on plain ``Device`` lists (JSON in and out with ``Device.to_dict`` and
``device_from_dict``); ``address_domain`` reads and writes domain XML around it.
"""

from __future__ import annotations


from lxml import etree

from ..xml.safe import parse, strip_indentation, to_string
from .domainxml import machine_of, read_devices, write_devices
from .libvirt import LibvirtPlacement
from .model import (
    MAX_DEVICES,
    Address,
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
    ValueRecord,
    VirtioSerialAddress,
    _shown,
    address_from_dict,
    check_address,
    check_device,
    check_tunable,
    device_from_dict,
    machine_from_dict,
    tunables_from_dict,
)

__all__ = ["Address", "AddressError", "AddressedDomain", "CcidAddress", "CcwAddress",
           "Device", "DriveAddress", "Machine", "PciAddress", "SpaprVioAddress", "Tunables",
           "UsbAddress", "VirtioSerialAddress", "address_domain", "address_from_dict",
           "address_tree", "check_address", "check_device", "device_from_dict",
           "machine_from_dict", "place", "tunables_from_dict"]

POLICIES = ("libvirt",)


def place(machine: Machine, devices: list[Device], tunables: Tunables | None = None, *,
          policy: str = "libvirt") -> list[Device]:
    """Complete ``devices`` for ``machine``: add the controllers (and default devices) the
    policy needs and give every device that has none an address.  Given addresses are kept;
    an impossible request raises ``AddressError`` naming the device and why.

    Returns new ``Device`` objects, the given ones first (possibly reordered as libvirt
    orders controllers and disks); ``devices`` and its objects are left as they were, also
    when placement fails.  Every device is checked as JSON input is (``check_device``):
    ``devices[N]`` in an error is its position in ``devices``."""
    if policy not in POLICIES:
        raise AddressError(f"unknown addressing policy {policy!r} (known: "
                           f"{', '.join(POLICIES)})")
    if not isinstance(machine, Machine):
        raise AddressError(f"machine: expected a Machine, not {_shown(machine)}")
    if tunables is not None and not isinstance(tunables, Tunables):
        raise AddressError(f"tunables: expected Tunables, not {_shown(tunables)}")
    if len(devices) > MAX_DEVICES:
        raise AddressError(f"{len(devices)} devices: more than the {MAX_DEVICES} one guest "
                           "can be given addresses for")
    copies = [check_device(d, f"devices[{i}]").copy() for i, d in enumerate(devices)]
    return LibvirtPlacement(machine, copies, tunables or Tunables()).run()


class AddressedDomain(ValueRecord):
    """A domain XML tree with its controllers and addresses filled in."""

    __slots__ = ("tree", "devices")
    tree: etree._Element
    devices: list[Device]

    def __init__(self, tree: etree._Element, devices: list[Device] | None = None) -> None:
        self.tree = tree
        self.devices = [] if devices is None else devices

    @property
    def xml(self) -> str:
        return to_string(self.tree)

    @property
    def added(self) -> list[Device]:
        """The devices the policy added (controllers, the balloon, hubs...)."""
        return [d for d in self.devices if d.added]


def address_tree(root: etree._Element, tunables: Tunables | None = None, *,
                 policy: str = "libvirt",
                 device_tunables: dict[str, dict[str, object]] | None = None) -> list[Device]:
    """Fill in controllers and addresses in a domain XML tree, in place.

    ``device_tunables`` maps device names (a ``ua-`` alias, else ``kind#n``) to tunables:
    ``{"ua-net1": {"numa_node": 1, "placement": "pcie", "hotpluggable": False,
    "function_group": "a"}}``."""
    if root.tag != "domain":
        raise AddressError(f"expected a <domain> document, found <{root.tag}>")
    devices = read_devices(root)
    if device_tunables:
        by_name = {d.name: d for d in devices}
        for name, values in device_tunables.items():
            device = by_name.get(name)
            if device is None:
                raise AddressError(f"no device named {name!r} (devices: "
                                   f"{', '.join(sorted(by_name)) or 'none'})")
            for key, value in values.items():
                setattr(device, key, check_tunable(key, value, name))
    devices = place(machine_of(root), devices, tunables, policy=policy)
    write_devices(root, devices)
    return devices


def address_domain(domain: str | bytes | etree._Element, tunables: Tunables | None = None,
                   *, policy: str = "libvirt", source: str = "<domain>",
                   device_tunables: dict[str, dict[str, object]] | None = None
                   ) -> AddressedDomain:
    """Fill in controllers and addresses in a domain XML (a copy when given a tree)."""
    if isinstance(domain, etree._Element):
        import copy

        root = strip_indentation(copy.deepcopy(domain))
    else:
        root = parse(domain, source=source)
    if root.tag != "domain":
        raise AddressError(f"{source}: expected a <domain> document, found <{root.tag}>")
    devices = address_tree(root, tunables, policy=policy, device_tunables=device_tunables)
    return AddressedDomain(root, devices)
