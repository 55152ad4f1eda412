"""The data addressing works on: machines, devices, addresses and tunables, as plain
records that travel as JSON.  No domain XML is needed (``domainxml.py`` converts).

The records are written out by hand (``__slots__``, ``__init__``) on a small base that gives
them a repr, equality and copying, instead of ``dataclasses``: ``aiovirt address`` loads this
module, and importing dataclasses (which imports ``inspect``) and generating the classes'
methods took a third of that command's start-up."""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import AiovirtError

__all__ = ["Address", "AddressError", "CcidAddress", "CcwAddress", "Device", "DriveAddress",
           "Machine", "PciAddress", "SpaprVioAddress", "Tunables", "UsbAddress",
           "VirtioSerialAddress", "address_from_dict", "device_from_dict"]


MAX_CONTROLLER_INDEX = 1023   # controllers of one type: far above what PCI slots can hold
MAX_PORTS = 1023              # a controller's ports= (USB: 15 at most in libvirt)
MAX_DEVICES = 8192            # devices of one guest: more than its PCI and drive addresses
                              # can hold, and a bound on what placing them costs


class AddressError(AiovirtError, ValueError):
    """An address request that cannot be met; the message names the device and why."""


class Record:
    """A record's fields are its ``__slots__``: they give its repr, its copies (``copy``,
    ``pickle``: the class called with the values in order) and, for ``ValueRecord``,
    equality."""

    __slots__ = ()
    _hidden: ClassVar[tuple[str, ...]] = ()   # fields left out of the repr

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__
                          if name not in self._hidden)
        return f"{type(self).__qualname__}({shown})"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), self._values()


class ValueRecord(Record):
    """A record equal to another of its class with equal fields (mutable: unhashable)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined, no-any-return]

    __hash__ = None  # type: ignore[assignment]


class FrozenRecord(ValueRecord):
    """An immutable ``ValueRecord``, hashable by its fields."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a {type(self).__name__}")

    def __hash__(self) -> int:
        return hash(self._values())


_init = object.__setattr__   # how a frozen record's __init__ sets its fields


class PciAddress(FrozenRecord):
    """A PCI address; ``multifunction`` is the function-0 device's ``multifunction='on'``."""

    __slots__ = ("bus", "slot", "function", "domain", "multifunction")
    bus: int
    slot: int
    function: int
    domain: int
    multifunction: bool | None

    def __init__(self, bus: int, slot: int, function: int = 0, domain: int = 0,
                 multifunction: bool | None = None) -> None:
        _init(self, "bus", bus)
        _init(self, "slot", slot)
        _init(self, "function", function)
        _init(self, "domain", domain)
        _init(self, "multifunction", multifunction)

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function}"

    def with_multifunction(self, value: bool | None) -> PciAddress:
        if self.domain == 0:
            return pci_address(self.bus, self.slot, self.function, value)
        return PciAddress(self.bus, self.slot, self.function, self.domain, value)


_new = object.__new__
_set_bus, _set_slot, _set_function, _set_domain, _set_multifunction = (
    PciAddress.__dict__[name].__set__  # type: ignore[attr-defined]
    for name in ("bus", "slot", "function", "domain", "multifunction"))


def pci_address(bus: int, slot: int, function: int = 0,
                multifunction: bool | None = None) -> PciAddress:
    """``PciAddress(bus, slot, function)`` in domain 0, built without the frozen record's
    ``__init__`` (which sets each field through ``object.__setattr__``): a third of the
    cost, for the placement's inner loops."""
    address = _new(PciAddress)
    _set_bus(address, bus)
    _set_slot(address, slot)
    _set_function(address, function)
    _set_domain(address, 0)
    _set_multifunction(address, multifunction)
    return address


class DriveAddress(FrozenRecord):
    """A disk's (or SCSI host device's) place on an IDE/SATA/SCSI/FDC controller."""

    __slots__ = ("controller", "bus", "target", "unit")
    controller: int
    bus: int
    target: int
    unit: int

    def __init__(self, controller: int, bus: int = 0, target: int = 0, unit: int = 0) -> None:
        _init(self, "controller", controller)
        _init(self, "bus", bus)
        _init(self, "target", target)
        _init(self, "unit", unit)

    def __str__(self) -> str:
        return f"drive {self.controller}:{self.bus}:{self.target}:{self.unit}"


class UsbAddress(FrozenRecord):
    """A USB port: controller index ``bus`` and the port path through hubs (1-based)."""

    __slots__ = ("bus", "port")
    bus: int
    port: tuple[int, ...]

    def __init__(self, bus: int, port: tuple[int, ...]) -> None:
        _init(self, "bus", bus)
        _init(self, "port", port)

    def __str__(self) -> str:
        return f"usb {self.bus}:{'.'.join(map(str, self.port))}"


class VirtioSerialAddress(FrozenRecord):
    """A port on a virtio-serial controller."""

    __slots__ = ("controller", "port", "bus")
    controller: int
    port: int
    bus: int

    def __init__(self, controller: int, port: int, bus: int = 0) -> None:
        _init(self, "controller", controller)
        _init(self, "port", port)
        _init(self, "bus", bus)

    def __str__(self) -> str:
        return f"virtio-serial {self.controller}:{self.bus}:{self.port}"


class CcidAddress(FrozenRecord):
    """A smartcard slot on a CCID controller."""

    __slots__ = ("controller", "slot")
    controller: int
    slot: int

    def __init__(self, controller: int, slot: int) -> None:
        _init(self, "controller", controller)
        _init(self, "slot", slot)

    def __str__(self) -> str:
        return f"ccid {self.controller}:{self.slot}"


class CcwAddress(FrozenRecord):
    """An s390 channel I/O device number (virtio-ccw devices sit in channel subsystem 0xfe)."""

    __slots__ = ("cssid", "ssid", "devno")
    cssid: int
    ssid: int
    devno: int

    def __init__(self, cssid: int, ssid: int, devno: int) -> None:
        _init(self, "cssid", cssid)
        _init(self, "ssid", ssid)
        _init(self, "devno", devno)

    def __str__(self) -> str:
        return f"ccw {self.cssid:x}.{self.ssid:x}.{self.devno:04x}"


class SpaprVioAddress(FrozenRecord):
    """A pSeries spapr-vio bus address (the device's ``reg``)."""

    __slots__ = ("reg",)
    reg: int

    def __init__(self, reg: int) -> None:
        _init(self, "reg", reg)

    def __str__(self) -> str:
        return f"spapr-vio {self.reg:#x}"


Address = (PciAddress | DriveAddress | UsbAddress | VirtioSerialAddress | CcidAddress |
           CcwAddress | SpaprVioAddress)

_ADDRESS_TYPES: dict[str, type] = {"pci": PciAddress, "drive": DriveAddress, "usb": UsbAddress,
                                   "virtio-serial": VirtioSerialAddress, "ccid": CcidAddress,
                                   "ccw": CcwAddress, "spapr-vio": SpaprVioAddress}
_TYPE_NAMES = {cls: name for name, cls in _ADDRESS_TYPES.items()}


def address_to_dict(address: Address) -> dict[str, Any]:
    """JSON-ready: the type name and every field that is set (``multifunction`` only when
    it says on or off)."""
    data = {"type": _TYPE_NAMES[type(address)],
            **{k: v for k in address.__slots__ if (v := getattr(address, k)) is not None}}
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


class Machine(ValueRecord):
    """The guest's architecture and machine type (``pc``, ``pc-q35-7.2``, ``virt``...);
    ``memory_slots``: ``<maxMemory slots='N'>``, DIMM slots for memory hotplug;
    ``numa_nodes``: guest NUMA cells, when known (for NUMA placement)."""

    __slots__ = ("arch", "machine", "memory_slots", "numa_nodes")
    arch: str
    machine: str
    memory_slots: int
    numa_nodes: int | None

    def __init__(self, arch: str = "x86_64", machine: str = "pc", memory_slots: int = 0,
                 numa_nodes: int | None = None) -> None:
        self.arch = arch
        self.machine = machine
        self.memory_slots = memory_slots
        self.numa_nodes = numa_nodes

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

    @property
    def is_pseries(self) -> bool:
        return self.arch in ("ppc64", "ppc64le") and (
            self.machine == "pseries" or self.machine.startswith("pseries-"))

    @property
    def is_s390_ccw(self) -> bool:
        return self.arch in ("s390x", "s390") and self.machine.startswith("s390-ccw-virtio")

    @property
    def is_riscv_virt(self) -> bool:
        return self.arch in ("riscv64", "riscv32") and (
            self.machine == "virt" or self.machine.startswith("virt-"))

    @property
    def is_microvm(self) -> bool:
        return self.is_x86 and self.machine == "microvm"

    @property
    def family(self) -> str:
        """The machine family addressing (and its agreement score) distinguishes: ``pc``,
        ``q35``, ``arm-virt``, ``pseries``, ``s390-ccw``, ``riscv-virt``, ``microvm``, else
        ``arch machine``."""
        for name, test in (("q35", self.is_q35), ("pc", self.is_i440fx),
                           ("arm-virt", self.is_arm_virt), ("pseries", self.is_pseries),
                           ("s390-ccw", self.is_s390_ccw), ("riscv-virt", self.is_riscv_virt),
                           ("microvm", self.is_microvm)):
            if test:
                return name
        return f"{self.arch} {self.machine}"


class Tunables(ValueRecord):
    """What the default, libvirt-compatible placement may be asked to do differently.

    ``hotplug_reserve``: free pcie-root-ports (q35, virt) or free slots (pc) to leave for
    later hotplug; ``multifunction``: "pack" puts devices of one ``function_group`` as
    functions of one slot; ``placement``: "pcie" or "pci" for every device that can take
    either (a device's own ``placement`` wins).
    """

    __slots__ = ("hotplug_reserve", "placement", "multifunction")
    hotplug_reserve: int
    placement: str | None
    multifunction: str

    def __init__(self, hotplug_reserve: int = 0, placement: str | None = None,
                 multifunction: str = "spread") -> None:
        self.hotplug_reserve = hotplug_reserve
        self.placement = placement
        self.multifunction = multifunction
        if self.hotplug_reserve < 0:
            raise AddressError(f"hotplug_reserve must be 0 or more, not {self.hotplug_reserve}")
        if self.placement not in (None, "pci", "pcie"):
            raise AddressError(f"placement {self.placement!r}: use 'pci' or 'pcie'")
        if self.multifunction not in ("spread", "pack"):
            raise AddressError(f"multifunction {self.multifunction!r}: use 'spread' or 'pack'")


class Device(Record):
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

    __slots__ = ("kind", "type", "model", "bus", "index", "target", "address", "options",
                 "placement", "hotpluggable", "numa_node", "function_group", "name", "added",
                 "origin")
    _hidden = ("origin",)
    kind: str
    type: str | None
    model: str | None
    bus: str | None
    index: int | None
    target: str | None
    address: Address | None
    options: dict[str, Any]
    placement: str | None
    hotpluggable: bool | None
    numa_node: int | None
    function_group: str | None
    name: str
    added: bool   # inserted by the placement (an implicit controller, the balloon...)
    origin: Any   # e.g. the XML element it came from

    def __init__(self, kind: str, type: str | None = None,  # noqa: A002 - the XML's name
                 model: str | None = None, bus: str | None = None, index: int | None = None,
                 target: str | None = None, address: Address | None = None,
                 options: dict[str, Any] | None = None, placement: str | None = None,
                 hotpluggable: bool | None = None, numa_node: int | None = None,
                 function_group: str | None = None, name: str = "", added: bool = False,
                 origin: Any = None) -> None:
        self.kind, self.type, self.model, self.bus = kind, type, model, bus
        self.index, self.target, self.address = index, target, address
        self.options = {} if options is None else options
        self.placement, self.hotpluggable, self.numa_node = placement, hotpluggable, numa_node
        self.function_group, self.name, self.added = function_group, name, added
        self.origin = origin

    def __str__(self) -> str:
        return self.label()

    def copy(self) -> Device:
        """A copy that shares nothing mutable with this one (``origin`` is shared)."""
        # field by field onto a bare object: twice as fast as a 15-argument __init__ call
        new = _new(Device)
        new.kind, new.type, new.model, new.bus = self.kind, self.type, self.model, self.bus
        new.index, new.target, new.address = self.index, self.target, self.address
        new.options, new.placement = dict(self.options), self.placement
        new.hotpluggable, new.numa_node = self.hotpluggable, self.numa_node
        new.function_group, new.name, new.added = self.function_group, self.name, self.added
        new.origin = self.origin
        return new

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
    if "kind" not in data:
        raise AddressError(f"device {data!r} has no 'kind'")
    if not _DEVICE_FIELDS.issuperset(data):
        unknown = data.keys() - _DEVICE_FIELDS
        raise AddressError(f"device {data.get('name') or data['kind']}: unknown fields "
                           f"{', '.join(sorted(unknown))}")
    get = data.get
    address = get("address")
    options = get("options")
    # field by field onto a bare object: several times cheaper than Device(**data)
    device = _new(Device)
    device.kind, device.type, device.model = data["kind"], get("type"), get("model")
    device.bus, device.index, device.target = get("bus"), get("index"), get("target")
    device.address = None if address is None else address_from_dict(address)
    device.options = {} if options is None else options
    device.placement, device.hotpluggable = get("placement"), get("hotpluggable")
    device.numa_node, device.function_group = get("numa_node"), get("function_group")
    device.name, device.added, device.origin = get("name", ""), get("added", False), None
    return device


_DEVICE_FIELDS = frozenset(("kind", "type", "model", "bus", "index", "target", "options",
                            "placement", "hotpluggable", "numa_node", "function_group", "name",
                            "added", "address"))
