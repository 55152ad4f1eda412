"""The data addressing works on: machines, devices, addresses and tunables, as plain
dataclasses that travel as JSON.  No domain XML is needed (``domainxml.py`` converts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import AiovirtError

__all__ = ["Address", "AddressError", "CcidAddress", "Device", "DriveAddress", "Machine",
           "PciAddress", "Tunables", "UsbAddress", "VirtioSerialAddress", "address_from_dict",
           "device_from_dict"]


class AddressError(AiovirtError, ValueError):
    """An address request that cannot be met; the message names the device and why."""


@dataclass(frozen=True, slots=True)
class PciAddress:
    """A PCI address; ``multifunction`` is the function-0 device's ``multifunction='on'``."""

    bus: int
    slot: int
    function: int = 0
    domain: int = 0
    multifunction: bool | None = None

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function}"

    def with_multifunction(self, value: bool | None) -> PciAddress:
        return PciAddress(self.bus, self.slot, self.function, self.domain, value)


@dataclass(frozen=True, slots=True)
class DriveAddress:
    """A disk's (or SCSI host device's) place on an IDE/SATA/SCSI/FDC controller."""

    controller: int
    bus: int = 0
    target: int = 0
    unit: int = 0

    def __str__(self) -> str:
        return f"drive {self.controller}:{self.bus}:{self.target}:{self.unit}"


@dataclass(frozen=True, slots=True)
class UsbAddress:
    """A USB port: controller index ``bus`` and the port path through hubs (1-based)."""

    bus: int
    port: tuple[int, ...]

    def __str__(self) -> str:
        return f"usb {self.bus}:{'.'.join(map(str, self.port))}"


@dataclass(frozen=True, slots=True)
class VirtioSerialAddress:
    """A port on a virtio-serial controller."""

    controller: int
    port: int
    bus: int = 0

    def __str__(self) -> str:
        return f"virtio-serial {self.controller}:{self.bus}:{self.port}"


@dataclass(frozen=True, slots=True)
class CcidAddress:
    """A smartcard slot on a CCID controller."""

    controller: int
    slot: int

    def __str__(self) -> str:
        return f"ccid {self.controller}:{self.slot}"


Address = PciAddress | DriveAddress | UsbAddress | VirtioSerialAddress | CcidAddress

_ADDRESS_TYPES: dict[str, type] = {"pci": PciAddress, "drive": DriveAddress, "usb": UsbAddress,
                                   "virtio-serial": VirtioSerialAddress, "ccid": CcidAddress}
_TYPE_NAMES = {cls: name for name, cls in _ADDRESS_TYPES.items()}


def address_to_dict(address: Address) -> dict[str, Any]:
    """JSON-ready: the type name and every field that is set (``multifunction`` only when
    it says on or off)."""
    data = {"type": _TYPE_NAMES[type(address)],
            **{k: v for k, v in asdict(address).items() if v is not None}}
    if isinstance(address, UsbAddress):
        data["port"] = list(address.port)
    return data


def address_from_dict(data: dict[str, Any]) -> Address:
    values = dict(data)
    kind = values.pop("type", None)
    cls = _ADDRESS_TYPES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise AddressError(f"unknown address type {kind!r} (known: "
                           f"{', '.join(_ADDRESS_TYPES)})")
    if cls is UsbAddress:
        values["port"] = tuple(values.get("port", ()))
    try:
        return cls(**values)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise AddressError(f"{kind} address {data!r}: {exc}") from None


@dataclass(slots=True)
class Machine:
    """The guest's architecture and machine type (``pc``, ``pc-q35-7.2``, ``virt``...)."""

    arch: str = "x86_64"
    machine: str = "pc"
    memory_slots: int = 0   # <maxMemory slots='N'>: DIMM slots for memory hotplug
    numa_nodes: int | None = None  # guest NUMA cells, when known (for NUMA placement)

    @property
    def is_q35(self) -> bool:
        return self.arch in ("x86_64", "i686") and (self.machine == "q35" or
                                                   self.machine.startswith("pc-q35-"))

    @property
    def is_i440fx(self) -> bool:
        return self.arch in ("x86_64", "i686") and (
            self.machine == "pc" or self.machine.startswith(("pc-0.", "pc-1.", "pc-i440fx-",
                                                             "rhel")))

    @property
    def is_arm_virt(self) -> bool:
        return self.arch in ("aarch64", "armv7l", "armv6l") and (
            self.machine == "virt" or self.machine.startswith("virt-"))

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "i686")


@dataclass(slots=True)
class Tunables:
    """What the default, libvirt-compatible placement may be asked to do differently.

    ``hotplug_reserve``: free pcie-root-ports (q35, virt) or free slots (pc) to leave for
    later hotplug; ``multifunction``: "pack" puts devices of one ``function_group`` as
    functions of one slot; ``placement``: "pcie" or "pci" for every device that can take
    either (a device's own ``placement`` wins).
    """

    hotplug_reserve: int = 0
    placement: str | None = None
    multifunction: str = "spread"

    def __post_init__(self) -> None:
        if self.hotplug_reserve < 0:
            raise AddressError(f"hotplug_reserve must be 0 or more, not {self.hotplug_reserve}")
        if self.placement not in (None, "pci", "pcie"):
            raise AddressError(f"placement {self.placement!r}: use 'pci' or 'pcie'")
        if self.multifunction not in ("spread", "pack"):
            raise AddressError(f"multifunction {self.multifunction!r}: use 'spread' or 'pack'")


@dataclass(eq=False, slots=True)
class Device:
    """One device of the guest.

    ``kind`` is the domain XML element (``disk``, ``interface``, ``controller``...); ``type``
    its type attribute (a controller's ``usb``, an interface's ``network``, a hostdev's
    subsystem); ``model`` and ``bus`` as in the XML; ``index`` a controller's; ``target`` a
    disk's target dev or a character device's target type; ``options`` other facts the
    placement reads (``device``: cdrom; ``ports``; ``chassis``...).  Tunables:
    ``placement`` ("pci"/"pcie"), ``hotpluggable``, ``numa_node`` (place the device behind
    an expander bus on that guest NUMA node), ``function_group`` (with multifunction
    packing, devices of one group share a slot).
    """

    kind: str
    type: str | None = None
    model: str | None = None
    bus: str | None = None
    index: int | None = None
    target: str | None = None
    address: Address | None = None
    options: dict[str, Any] = field(default_factory=dict)
    placement: str | None = None
    hotpluggable: bool | None = None
    numa_node: int | None = None
    function_group: str | None = None
    name: str = ""
    added: bool = False   # inserted by the placement (an implicit controller, the balloon...)
    origin: Any = field(default=None, repr=False)   # e.g. the XML element it came from

    def __str__(self) -> str:
        return self.label()

    def copy(self) -> Device:
        """A copy that shares nothing mutable with this one (``origin`` is shared)."""
        return Device(self.kind, self.type, self.model, self.bus, self.index, self.target,
                      self.address, dict(self.options), self.placement, self.hotpluggable,
                      self.numa_node, self.function_group, self.name, self.added, self.origin)

    def label(self) -> str:
        """How messages name the device: its name, else kind, type and index."""
        if self.name:
            return self.name
        parts = [self.kind]
        if self.type:
            parts.append(f"type={self.type}")
        if self.model:
            parts.append(f"model={self.model}")
        if self.index is not None:
            parts.append(f"index={self.index}")
        if self.target:
            parts.append(f"target={self.target}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for key in ("type", "model", "bus", "index", "target", "placement", "hotpluggable",
                    "numa_node", "function_group", "name"):
            value = getattr(self, key)
            if value is not None and value != "":
                data[key] = value
        if self.options:
            data["options"] = dict(self.options)
        if self.address is not None:
            data["address"] = address_to_dict(self.address)
        if self.added:
            data["added"] = True
        return data


def device_from_dict(data: dict[str, Any]) -> Device:
    """A ``Device`` from its JSON form (as ``Device.to_dict`` makes it)."""
    values = dict(data)
    if "kind" not in values:
        raise AddressError(f"device {data!r} has no 'kind'")
    address = values.pop("address", None)
    known = {"kind", "type", "model", "bus", "index", "target", "options", "placement",
             "hotpluggable", "numa_node", "function_group", "name", "added"}
    unknown = set(values) - known
    if unknown:
        raise AddressError(f"device {data.get('name') or data['kind']}: unknown fields "
                           f"{', '.join(sorted(unknown))}")
    device = Device(**values)
    if address is not None:
        device.address = address_from_dict(address)
    return device
