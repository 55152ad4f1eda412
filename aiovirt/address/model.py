"""The data addressing works on: machines, devices, addresses and tunables, as plain
records that travel as JSON.  No domain XML is needed (``domainxml.py`` converts).

The records are written out by hand (``__slots__``, ``__init__``) on a small base that gives
them a repr, equality and copying, instead of ``dataclasses``: ``aiovirt address`` loads this
module, and importing dataclasses (which imports ``inspect``) and generating the classes'
methods took a third of that command's start-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ..errors import AiovirtError

__all__ = ["Address", "AddressError", "CcidAddress", "CcwAddress", "Device", "DriveAddress",
           "Machine", "PciAddress", "SpaprVioAddress", "Tunables", "UsbAddress",
           "VirtioSerialAddress", "address_from_dict", "check_address", "check_device",
           "check_tunable", "device_from_dict", "machine_from_dict", "tunables_from_dict"]


MAX_CONTROLLER_INDEX = 1023   # controllers of one type: far above what PCI slots can hold
MAX_PORTS = 1023              # a controller's ports= (USB: 15 at most in libvirt)
MAX_NUMA_NODES = 1024        # guest NUMA cells (QEMU takes 128 at most)
MAX_DEVICES = 8192            # devices of one guest: more than its PCI and drive addresses
                              # can hold, and a bound on what placing them costs
MAX_HOTPLUG_RESERVE = 1024    # more than 256 PCI buses hold; the work grows with it
MAX_MEMORY_SLOTS = 256        # <maxMemory slots>: QEMU's limit (ACPI_MAX_RAM_SLOTS; libvirt 9.0
                              # sets none, QEMU 7.2 refuses 257 on x86 and ARM, 33 on pSeries)
MAX_PSERIES_MEMORY_SLOTS = 32  # pSeries' own (QEMU's SPAPR_MAX_RAM_SLOTS)


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
        _init(self, "port", tuple(port) if isinstance(port, list) else port)   # (hashable)

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


# each address type's fields from JSON: (name, lowest, highest, required); libvirt's ranges,
# or (where the placement checks more) a bound on the number
_ADDRESS_FIELDS: dict[str, tuple[tuple[str, int, int, bool], ...]] = {
    "pci": (("bus", 0, 0xFF, True), ("slot", 0, 0xFF, True), ("function", 0, 0xFF, False),
            ("domain", 0, 0xFFFF, False)),
    "drive": (("controller", 0, MAX_CONTROLLER_INDEX, True), ("bus", 0, 0xFFFF, False),
              ("target", 0, 0xFFFF, False), ("unit", 0, 0xFFFF, False)),
    "usb": (("bus", 0, MAX_CONTROLLER_INDEX, True),),
    "virtio-serial": (("controller", 0, MAX_CONTROLLER_INDEX, True),
                      ("port", 0, MAX_PORTS, True), ("bus", 0, 0xFFFF, False)),
    "ccid": (("controller", 0, MAX_CONTROLLER_INDEX, True), ("slot", 0, 0xFF, True)),
    "ccw": (("cssid", 0, 0xFF, True), ("ssid", 0, 3, True), ("devno", 0, 0xFFFF, True)),
    "spapr-vio": (("reg", 0, 0xFFFFFFFF, True),),
}
_USB_DEPTH = 5   # a USB port path: a root port and up to four hubs


def _shown(value: Any) -> str:
    """``value`` for a message: its repr, cut to 60 characters."""
    if isinstance(value, int) and value.bit_length() > 200:   # (repr may refuse it)
        return f"an int of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _number_problem(value: Any, low: int, high: int) -> str | None:
    """What is wrong with ``value`` as a whole number from ``low`` to ``high`` (not a bool,
    not text), or None.  (The checks say what is wrong, and their callers where: the
    message is made only for an error.)"""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return None
    return f"expected a whole number from {low} to {high}, not {_shown(value)}"


def _text_problem(value: Any, choices: tuple[str, ...] = ()) -> str | None:
    if isinstance(value, str) and (not choices or value in choices):
        return None
    wanted = " or ".join(map(repr, choices)) if choices else "a string"
    return f"expected {wanted}, not {_shown(value)}"


def _flag_problem(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, not {_shown(value)}"


def _checked(value: Any, where: str, problem: str | None) -> Any:
    """``value`` when there is no ``problem``; else an ``AddressError`` naming ``where``."""
    if problem is not None:
        raise AddressError(f"{where}: {problem}")
    return value


def _number(value: Any, where: str, low: int, high: int) -> int:
    """``value`` if it is a whole number from ``low`` to ``high`` (not a bool, not text)."""
    return _checked(value, where, _number_problem(value, low, high))  # type: ignore[no-any-return]


def address_from_dict(data: dict[str, Any], where: str = "address") -> Address:
    """An address from its JSON form (``address_to_dict``'s), every field checked; an
    ``AddressError`` names ``where`` and the field that is wrong."""
    return check_address(_address_of(data, where), where)


def _address_of(data: Any, where: str) -> Address:
    """The address a JSON object describes, its shape checked (type, fields known and
    given), its values not yet (``check_address`` does)."""
    if not isinstance(data, dict):
        raise AddressError(f"{where}: expected an object, not {_shown(data)}")
    kind = data.get("type")
    cls = _ADDRESS_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise AddressError(f"{where}: unknown address type {_shown(kind)} (known: "
                           f"{', '.join(_ADDRESS_TYPES)})")
    where = f"{where} ({kind})"
    fields = _ADDRESS_FIELDS[kind]
    extra = {"pci": ("multifunction",), "usb": ("port",)}.get(kind, ())
    known = {"type", *(f[0] for f in fields), *extra}
    unknown = sorted(map(str, data.keys() - known))
    if unknown:
        raise AddressError(f"{where}: unknown fields {', '.join(unknown)[:200]} (known: "
                           f"{', '.join(sorted(known - {'type'}))})")
    values: dict[str, Any] = {name: data.get(name) for name in extra}
    for name, _low, _high, required in fields:
        if name in data:
            values[name] = data[name]
        elif required:
            raise AddressError(f"{where}: no {name} given")
    return cls(**values)  # type: ignore[no-any-return]


def check_address(address: Any, where: str = "address") -> Address:
    """``address`` if it is an address record whose every field has its type and range, for
    addresses from JSON and made in Python alike; else an ``AddressError`` naming ``where``
    and the field."""
    problem = _address_problem(address)
    if problem is not None:
        raise AddressError(f"{where}{problem}")
    return address  # type: ignore[no-any-return]


def _address_problem(address: Any) -> str | None:
    """What is wrong with ``address`` (``" (pci) slot: expected..."``), or None."""
    kind = _TYPE_NAMES.get(type(address))
    if kind is None:
        return (f": expected an address ({', '.join(cls.__name__ for cls in _TYPE_NAMES)}), "
                f"not {_shown(address)}")
    for name, low, high, _required in _ADDRESS_FIELDS[kind]:
        problem = _number_problem(getattr(address, name), low, high)
        if problem is not None:
            return f" ({kind}) {name}: {problem}"
    if kind == "pci" and address.multifunction is not None and \
            not isinstance(address.multifunction, bool):
        return (f" ({kind}) multifunction: expected true, false or null, not "
                f"{_shown(address.multifunction)}")
    if kind == "usb":
        port = address.port
        if not isinstance(port, tuple) or not 1 <= len(port) <= _USB_DEPTH:
            return (f" ({kind}) port: expected a list of 1 to {_USB_DEPTH} port numbers, not "
                    f"{_shown(port)}")
        for number in port:
            problem = _number_problem(number, 1, MAX_PORTS)
            if problem is not None:
                return f" ({kind}) port: {problem}"
    return None


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
        self.arch = _text(arch, "machine arch")
        self.machine = _text(machine, "machine machine")
        self.memory_slots = _number(memory_slots, "machine memory_slots", 0,
                                    self.max_memory_slots)
        self.numa_nodes = None if numa_nodes is None else \
            _number(numa_nodes, "machine numa_nodes", 0, MAX_NUMA_NODES)

    @property
    def max_memory_slots(self) -> int:
        """The most DIMM slots QEMU gives this machine (32 on pSeries, else 256)."""
        return MAX_PSERIES_MEMORY_SLOTS if self.is_pseries else MAX_MEMORY_SLOTS

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
        if not isinstance(hotplug_reserve, int) or isinstance(hotplug_reserve, bool) or \
                not 0 <= hotplug_reserve <= MAX_HOTPLUG_RESERVE:
            raise AddressError(f"hotplug_reserve must be a whole number from 0 to "
                               f"{MAX_HOTPLUG_RESERVE}, not {_shown(hotplug_reserve)}")
        if self.placement not in (None, "pci", "pcie"):
            raise AddressError(f"placement {_shown(self.placement)}: use 'pci' or 'pcie'")
        if self.multifunction not in ("spread", "pack"):
            raise AddressError(f"multifunction {_shown(self.multifunction)}: use 'spread' or "
                               "'pack'")


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


def _text(value: Any, where: str, choices: tuple[str, ...] = ()) -> str:
    return _checked(value, where, _text_problem(value, choices))  # type: ignore[no-any-return]


# what is wrong with each field of a device, or None (None is "not set" for all but kind
# and name): the one set of rules for devices from JSON and made in Python
_DEVICE_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "type": _text_problem, "model": _text_problem, "bus": _text_problem,
    "target": _text_problem, "function_group": _text_problem,
    "index": lambda v: _number_problem(v, 0, MAX_CONTROLLER_INDEX),
    "placement": lambda v: _text_problem(v, ("pci", "pcie")),
    "hotpluggable": _flag_problem,
    "numa_node": lambda v: _number_problem(v, 0, MAX_NUMA_NODES - 1),
}
TUNABLE_FIELDS = ("numa_node", "placement", "hotpluggable", "function_group")
# the options the placement reads (others are kept, unread)
_OPTION_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "ports": lambda v: _number_problem(v, 1, MAX_PORTS),
    **{key: lambda v: _number_problem(v, 0, 255)
       for key in ("chassis", "port", "busNr", "chassisNr")},
    "targetIndex": lambda v: _number_problem(v, 0, MAX_CONTROLLER_INDEX),
    "numa_node": lambda v: _number_problem(v, 0, MAX_NUMA_NODES - 1),
    "dimm_slot": lambda v: _number_problem(v, 0, MAX_MEMORY_SLOTS - 1),
    "hotplug": lambda v: _text_problem(v, ("on", "off")),
    "master": _flag_problem, "primary": _flag_problem, "write_foreign": _flag_problem,
    "device": _text_problem, "model_name": _text_problem, "target_model": _text_problem,
    "copy_of": _text_problem, "driver": _text_problem, "foreign_address": _text_problem,
}


def check_tunable(name: str, value: Any, who: str) -> Any:
    """``value`` if it suits the per-device tunable ``name`` (``TUNABLE_FIELDS``); an
    ``AddressError`` naming ``who`` and the field if not."""
    if name not in TUNABLE_FIELDS:
        raise AddressError(f"{who}: unknown tunable {_shown(name)} (known: "
                           f"{', '.join(TUNABLE_FIELDS)})")
    return None if value is None else \
        _checked(value, f"{who} {name}", _DEVICE_CHECKS[name](value))


def _check_identity(kind: Any, name: Any, where: str) -> None:
    """A device's kind is an element name and its name a string (errors name it by both)."""
    if not isinstance(kind, str) or not kind:
        raise AddressError(f"{where} kind: expected a device element name, not "
                           f"{_shown(kind)}")
    if not isinstance(name, str):
        raise AddressError(f"{where} ({kind}) name: expected a string, not {_shown(name)}")


def _who(device: Device, where: str) -> str:
    """How errors name a device: ``where`` and its name, else its kind."""
    return f"{where} {_shown(device.name) if device.name else device.kind}"


def check_device(device: Any, where: str = "device") -> Device:
    """``device`` if every field has the type and range placement relies on, for devices
    from JSON and made in Python alike; else an ``AddressError`` naming the device
    (``where``, its name or kind) and the field, so bad input never reaches the placement."""
    if not isinstance(device, Device):
        raise AddressError(f"{where}: expected a Device, not {_shown(device)}")
    _check_identity(device.kind, device.name, where)
    for field, problem_of in _DEVICE_CHECKS.items():
        value = getattr(device, field)
        if value is not None and (problem := problem_of(value)) is not None:
            raise AddressError(f"{_who(device, where)} {field}: {problem}")
    options = device.options
    if not isinstance(options, dict):
        raise AddressError(f"{_who(device, where)} options: expected an object, not "
                           f"{_shown(options)}")
    for key, value in options.items():
        problem_of = _OPTION_CHECKS.get(key)
        if problem_of is not None and value is not None and \
                (problem := problem_of(value)) is not None:
            raise AddressError(f"{_who(device, where)} options.{key}: {problem}")
    if device.address is not None and (problem := _address_problem(device.address)):
        raise AddressError(f"{_who(device, where)} address{problem}")
    if (problem := _flag_problem(device.added)) is not None:
        raise AddressError(f"{_who(device, where)} added: {problem}")
    return device


def device_from_dict(data: dict[str, Any], where: str = "device") -> Device:
    """A ``Device`` from its JSON form (as ``Device.to_dict`` makes it), every field's type
    and range checked (``check_device``): an ``AddressError`` names the device (``where``,
    its name or kind) and the field, so bad JSON never reaches the placement."""
    if not isinstance(data, dict):
        raise AddressError(f"{where}: expected an object, not {_shown(data)}")
    if "kind" not in data:
        raise AddressError(f"{where} {_shown(data)} has no 'kind'")
    get = data.get
    # field by field onto a bare object: several times cheaper than Device(**data)
    device = _new(Device)
    device.kind, device.name = data["kind"], get("name", "")
    _check_identity(device.kind, device.name, where)
    if not _DEVICE_FIELDS.issuperset(data):
        unknown = sorted(map(str, data.keys() - _DEVICE_FIELDS))
        raise AddressError(f"{_who(device, where)}: unknown fields "
                           f"{', '.join(unknown)[:200]}")
    options, address = get("options"), get("address")
    device.type, device.model = get("type"), get("model")
    device.bus, device.index, device.target = get("bus"), get("index"), get("target")
    device.address = None if address is None else \
        _address_of(address, f"{_who(device, where)} address")
    device.options = {} if options is None else dict(options) \
        if isinstance(options, dict) else options
    device.placement, device.hotpluggable = get("placement"), get("hotpluggable")
    device.numa_node, device.function_group = get("numa_node"), get("function_group")
    device.added, device.origin = get("added", False), None
    return check_device(device, where)


def machine_from_dict(data: Any, where: str = "machine") -> Machine:
    """A ``Machine`` from JSON (``{arch, machine, memory_slots, numa_nodes}``), checked."""
    if not isinstance(data, dict):
        raise AddressError(f"{where}: expected an object, not {_shown(data)}")
    known = ("arch", "machine", "memory_slots", "numa_nodes")
    unknown = sorted(map(str, data.keys() - set(known)))
    if unknown:
        raise AddressError(f"{where}: unknown fields {', '.join(unknown)[:200]} (known: "
                           f"{', '.join(known)})")
    return Machine(**data)   # which checks each field


def tunables_from_dict(data: Any, where: str = "tunables") -> Tunables:
    """``Tunables`` from JSON (``{hotplug_reserve, placement, multifunction}``), checked."""
    if not isinstance(data, dict):
        raise AddressError(f"{where}: expected an object, not {_shown(data)}")
    known = ("hotplug_reserve", "placement", "multifunction")
    unknown = sorted(map(str, data.keys() - set(known)))
    if unknown:
        raise AddressError(f"{where}: unknown fields {', '.join(unknown)[:200]} (known: "
                           f"{', '.join(known)})")
    try:
        return Tunables(**data)
    except AddressError as exc:
        raise AddressError(f"{where}: {exc}") from None


_DEVICE_FIELDS = frozenset(("kind", "type", "model", "bus", "index", "target", "options",
                            "placement", "hotpluggable", "numa_node", "function_group", "name",
                            "added", "address"))
