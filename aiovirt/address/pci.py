"""PCI buses, slots and functions: what plugs in where, and the next free place.

``PciSpace`` is the bookkeeping libvirt keeps for a domain's PCI topology: per bus, the
kinds of device it accepts (connect flags), its usable slots, and per slot the functions in
use.  In *growing* mode (libvirt's dry run) a request nothing can satisfy adds buses of the
right kind (a pcie-root-port, or a pci-bridge, with the bridges needed to reach it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import AddressError, PciAddress

__all__ = ["Bus", "Connect", "Flags", "PciSpace", "bus_flags", "controller_connect"]


class Connect:
    """What a device needs from a slot, and what a bus offers (libvirt's connect flags):
    plain int bits, since flag arithmetic is the placement's innermost loop."""

    AUTOASSIGN = 1 << 0
    HOTPLUGGABLE = 1 << 1
    INTEGRATED = 1 << 2
    AGGREGATE_SLOT = 1 << 3
    PCI_DEVICE = 1 << 4
    PCIE_DEVICE = 1 << 5
    PCIE_ROOT_PORT = 1 << 6
    PCIE_SWITCH_UPSTREAM_PORT = 1 << 7
    PCIE_SWITCH_DOWNSTREAM_PORT = 1 << 8
    DMI_TO_PCI_BRIDGE = 1 << 9
    PCI_EXPANDER_BUS = 1 << 10
    PCIE_EXPANDER_BUS = 1 << 11
    PCI_BRIDGE = 1 << 12
    PCIE_TO_PCI_BRIDGE = 1 << 13


Flags = int

TYPES = (Connect.PCI_DEVICE | Connect.PCIE_DEVICE | Connect.PCIE_ROOT_PORT |
         Connect.PCIE_SWITCH_UPSTREAM_PORT | Connect.PCIE_SWITCH_DOWNSTREAM_PORT |
         Connect.DMI_TO_PCI_BRIDGE | Connect.PCI_EXPANDER_BUS | Connect.PCIE_EXPANDER_BUS |
         Connect.PCI_BRIDGE | Connect.PCIE_TO_PCI_BRIDGE)
ENDPOINTS = Connect.PCI_DEVICE | Connect.PCIE_DEVICE
SLOT_LAST = 31

# model -> (what it accepts downstream, min slot, max slot); hotplug added when allowed
_BUSES: dict[str, tuple[Flags, int, int]] = {
    "pci-root": (Connect.AUTOASSIGN | Connect.PCI_DEVICE | Connect.PCI_BRIDGE |
                 Connect.PCI_EXPANDER_BUS, 1, SLOT_LAST),
    "pci-bridge": (Connect.AUTOASSIGN | Connect.PCI_DEVICE | Connect.PCI_BRIDGE, 1, SLOT_LAST),
    "pci-expander-bus": (Connect.AUTOASSIGN | Connect.PCI_DEVICE | Connect.PCI_BRIDGE, 0,
                         SLOT_LAST),
    "pcie-root": (Connect.PCIE_DEVICE | Connect.PCIE_ROOT_PORT | Connect.DMI_TO_PCI_BRIDGE |
                  Connect.PCIE_EXPANDER_BUS, 1, SLOT_LAST),
    "dmi-to-pci-bridge": (Connect.PCI_DEVICE | Connect.PCI_BRIDGE, 0, SLOT_LAST),
    "pcie-to-pci-bridge": (Connect.AUTOASSIGN | Connect.PCI_DEVICE | Connect.PCI_BRIDGE, 1,
                           SLOT_LAST),
    "pcie-root-port": (Connect.AUTOASSIGN | Connect.PCIE_DEVICE |
                       Connect.PCIE_SWITCH_UPSTREAM_PORT | Connect.PCIE_TO_PCI_BRIDGE, 0, 0),
    "pcie-switch-downstream-port": (Connect.AUTOASSIGN | Connect.PCIE_DEVICE |
                                    Connect.PCIE_SWITCH_UPSTREAM_PORT |
                                    Connect.PCIE_TO_PCI_BRIDGE, 0, 0),
    "pcie-switch-upstream-port": (Connect.PCIE_SWITCH_DOWNSTREAM_PORT, 0, SLOT_LAST),
    "pcie-expander-bus": (Connect.PCIE_ROOT_PORT | Connect.DMI_TO_PCI_BRIDGE, 0, SLOT_LAST),
}
_NO_HOTPLUG = {"pcie-root", "dmi-to-pci-bridge", "pcie-switch-upstream-port",
               "pcie-expander-bus"}

# what a PCI controller of each model needs from the bus it plugs into
_CONTROLLER_CONNECT: dict[str, Flags] = {
    "pci-root": 0, "pcie-root": 0,
    "pci-bridge": Connect.PCI_BRIDGE,
    "pci-expander-bus": Connect.PCI_EXPANDER_BUS,
    "pcie-expander-bus": Connect.PCIE_EXPANDER_BUS,
    "dmi-to-pci-bridge": Connect.DMI_TO_PCI_BRIDGE,
    "pcie-to-pci-bridge": Connect.PCIE_TO_PCI_BRIDGE,
    "pcie-root-port": Connect.PCIE_ROOT_PORT | Connect.AGGREGATE_SLOT,
    "pcie-switch-upstream-port": Connect.PCIE_SWITCH_UPSTREAM_PORT,
    "pcie-switch-downstream-port": Connect.PCIE_SWITCH_DOWNSTREAM_PORT,
}


def controller_connect(model: str) -> Flags:
    """The connect flags of a PCI controller of ``model`` (as a device on its parent bus)."""
    return _CONTROLLER_CONNECT.get(model, 0)


def bus_flags(model: str, hotplug: bool = True) -> tuple[Flags, int, int]:
    """(accepted connections, min slot, max slot) of a bus provided by ``model``."""
    try:
        flags, low, high = _BUSES[model]
    except KeyError:
        raise AddressError(f"unknown PCI controller model {model!r}") from None
    if hotplug and model not in _NO_HOTPLUG:
        flags |= Connect.HOTPLUGGABLE
    return flags, low, high


@dataclass
class Bus:
    """One PCI bus: its model, what it accepts, and which functions of which slots are used."""

    model: str
    flags: Flags
    min_slot: int
    max_slot: int
    functions: list[int] = field(default_factory=lambda: [0] * (SLOT_LAST + 1))
    aggregate: list[bool] = field(default_factory=lambda: [False] * (SLOT_LAST + 1))
    used: int = 0   # slots with at least one function in use (skips full buses fast)

    @classmethod
    def of(cls, model: str, hotplug: bool = True) -> Bus:
        flags, low, high = bus_flags(model, hotplug)
        return cls(model, flags, low, high)

    def fully_reserved(self) -> bool:
        return all(self.functions[s] for s in range(self.min_slot, self.max_slot + 1))

    def empty(self) -> bool:
        return not any(self.functions[s] for s in range(self.min_slot, self.max_slot + 1))

    def free_slots(self) -> int:
        return sum(1 for s in range(self.min_slot, self.max_slot + 1) if not self.functions[s])


def compatible(address: PciAddress, bus: Flags, device: Flags, from_config: bool) -> bool:
    """Whether a device with connect flags ``device`` may sit at ``address`` on a bus that
    accepts ``bus`` (libvirt's virDomainPCIAddressFlagsCompatible, without messages)."""
    if device & Connect.INTEGRATED:
        if address.bus != 0:
            return False
        bus |= Connect.AUTOASSIGN
    if from_config:
        if bus & ENDPOINTS:
            bus |= ENDPOINTS
        if device & Connect.PCI_BRIDGE:
            device |= Connect.PCI_DEVICE
    elif device & Connect.AUTOASSIGN and not bus & Connect.AUTOASSIGN:
        return False
    if device & Connect.HOTPLUGGABLE and not bus & Connect.HOTPLUGGABLE:
        return False
    return bool(device & bus & TYPES)


def _fits(bus_number: int, bus: Flags, device: Flags) -> bool:
    """``compatible`` for automatic placement, without building an address (hot path)."""
    if device & Connect.INTEGRATED:
        if bus_number != 0:
            return False
        bus |= Connect.AUTOASSIGN
    elif device & Connect.AUTOASSIGN and not bus & Connect.AUTOASSIGN:
        return False
    if device & Connect.HOTPLUGGABLE and not bus & Connect.HOTPLUGGABLE:
        return False
    return bool(device & bus & TYPES)


def _kind(flags: Flags) -> str:
    for flag, text in ((Connect.PCI_DEVICE, "a standard PCI device"),
                       (Connect.PCIE_DEVICE, "a PCI Express device"),
                       (Connect.PCIE_ROOT_PORT, "a pcie-root-port"),
                       (Connect.PCIE_SWITCH_UPSTREAM_PORT, "a pcie-switch-upstream-port"),
                       (Connect.PCIE_SWITCH_DOWNSTREAM_PORT, "a pcie-switch-downstream-port"),
                       (Connect.DMI_TO_PCI_BRIDGE, "a dmi-to-pci-bridge"),
                       (Connect.PCIE_TO_PCI_BRIDGE, "a pcie-to-pci-bridge"),
                       (Connect.PCI_EXPANDER_BUS, "a pci-expander-bus"),
                       (Connect.PCIE_EXPANDER_BUS, "a pcie-expander-bus"),
                       (Connect.PCI_BRIDGE, "a pci-bridge")):
        if flags & flag:
            return text
    return "a device"


class PciSpace:
    """The PCI buses of one domain (index = bus number) and their used functions.

    ``growing``: a request nothing can satisfy adds buses (libvirt's dry run), and
    ``reserve_next`` only reserves, it does not report an address."""

    def __init__(self, buses: list[Bus], *, growing: bool = False,
                 pcie_to_pci_bridge: bool = True) -> None:
        self.buses = buses
        self.growing = growing
        self.pcie_to_pci_bridge = pcie_to_pci_bridge
        # where the search for a (flags, function) starts: buses only fill up, so one that
        # had no room for it once never will again
        self._cursor: dict[tuple[int, int | None], int] = {}

    # -- reserving ---------------------------------------------------------------------------
    def validate(self, address: PciAddress, flags: Flags, from_config: bool,
                 who: object) -> None:
        if address.domain != 0:
            raise AddressError(f"{who}: PCI address {address}: only PCI domain 0 exists")
        if address.bus >= len(self.buses):
            raise AddressError(f"{who}: PCI address {address}: there is no bus "
                               f"{address.bus} (buses 0-{len(self.buses) - 1} exist)")
        bus = self.buses[address.bus]
        if not compatible(address, bus.flags, flags, from_config):
            if flags & Connect.INTEGRATED and address.bus != 0:
                raise AddressError(f"{who}: PCI address {address}: it must be an "
                                   "integrated device (bus 0)")
            if flags & Connect.HOTPLUGGABLE and not bus.flags & Connect.HOTPLUGGABLE:
                raise AddressError(f"{who}: PCI address {address}: it must be hot-pluggable, "
                                   f"but the {bus.model} of bus {address.bus} is not")
            raise AddressError(f"{who}: PCI address {address}: the {bus.model} of bus "
                               f"{address.bus} does not take {_kind(flags)}")
        if address.slot < bus.min_slot or address.slot > bus.max_slot:
            raise AddressError(f"{who}: PCI address {address}: slot {address.slot} is out of "
                               f"range for the {bus.model} of bus {address.bus} (slots "
                               f"{bus.min_slot}-{bus.max_slot})")
        if address.function > 7:
            raise AddressError(f"{who}: PCI address {address}: function must be 0-7")

    def reserve(self, address: PciAddress, flags: Flags, who: object = "device",
                from_config: bool = True) -> None:
        """Mark one function in use (``AddressError`` if it is taken or does not fit)."""
        if self.growing:
            self.grow(address, flags)
        self.validate(address, flags, from_config, who)
        bus = self.buses[address.bus]
        bit = 1 << address.function
        if bus.functions[address.slot] & bit:
            raise AddressError(f"{who}: PCI address {address} is already in use")
        if not bus.functions[address.slot]:
            if bus.min_slot <= address.slot <= bus.max_slot:
                bus.used += 1
            if flags & Connect.AGGREGATE_SLOT:
                bus.aggregate[address.slot] = True
        bus.functions[address.slot] |= bit

    def slot_in_use(self, address: PciAddress) -> bool:
        return bool(self.buses[address.bus].functions[address.slot])

    def release(self, address: PciAddress) -> None:
        bus = self.buses[address.bus]
        bus.functions[address.slot] &= ~(1 << address.function)
        if not bus.functions[address.slot] and bus.min_slot <= address.slot <= bus.max_slot:
            bus.used -= 1

    # -- searching ----------------------------------------------------------------------------
    def _free_on(self, number: int, flags: Flags, function: int | None
                 ) -> PciAddress | None:
        bus = self.buses[number]
        if bus.used > bus.max_slot - bus.min_slot and not flags & Connect.AGGREGATE_SLOT:
            return None  # every slot has something in it
        if not _fits(number, bus.flags, flags):
            return None
        for slot in range(bus.min_slot, bus.max_slot + 1):
            used = bus.functions[slot]
            if not used:
                return PciAddress(number, slot, function or 0)
            if flags & Connect.AGGREGATE_SLOT and bus.aggregate[slot]:
                wanted = function or 0
                if not used & (1 << wanted):
                    return PciAddress(number, slot, wanted)
                if function is None:
                    for free in range(8):
                        if not used & (1 << free):
                            return PciAddress(number, slot, free)
        return None

    def next_free(self, flags: Flags, who: object = "device", function: int | None = None,
                  buses: range | list[int] | None = None,
                  exclude: set[int] | frozenset[int] = frozenset()) -> PciAddress:
        """The first slot (or, for aggregating devices, function) that takes ``flags``, on
        ``buses`` (default: all but ``exclude``); grows the topology in growing mode when no
        bus list was given, else ``AddressError``."""
        start = self._cursor.get((flags, function), 0) if buses is None else 0
        for number in (buses if buses is not None else range(start, len(self.buses))):
            if number in exclude:
                continue
            found = self._free_on(number, flags, function)
            if found is not None:
                if buses is None and not exclude:
                    self._cursor[(flags, function)] = number
                return found
        if self.growing and buses is None:
            wanted = PciAddress(len(self.buses), 0, function or 0)
            wanted = self.grow(wanted, flags)
            if not exclude:
                self._cursor[(flags, function)] = wanted.bus
            return PciAddress(wanted.bus, self.buses[wanted.bus].min_slot, function or 0)
        raise AddressError(f"{who}: no free PCI slot for {_kind(flags)}")

    def reserve_next(self, flags: Flags, who: object = "device", function: int | None = None,
                     exclude: set[int] | frozenset[int] = frozenset()) -> PciAddress:
        address = self.next_free(flags, who, function, exclude=exclude)
        self._take(address, flags)   # found free and compatible: no checks needed
        return address

    def _take(self, address: PciAddress, flags: Flags) -> None:
        bus = self.buses[address.bus]
        if not bus.functions[address.slot]:
            if bus.min_slot <= address.slot <= bus.max_slot:
                bus.used += 1
            if flags & Connect.AGGREGATE_SLOT:
                bus.aggregate[address.slot] = True
        bus.functions[address.slot] |= 1 << address.function

    # -- growing --------------------------------------------------------------------------------
    def grow(self, address: PciAddress, flags: Flags) -> PciAddress:
        """Add buses so that ``address.bus`` exists and can take ``flags`` (libvirt's
        virDomainPCIAddressSetGrow); returns the address, moved when a bridge had to go
        first."""
        add = address.bus - len(self.buses) + 1
        if add <= 0:
            return address
        need_dmi = need_pcie_bridge = False
        if flags & Connect.PCI_DEVICE:
            model = "pci-bridge"
            if not any(b.flags & Connect.PCI_BRIDGE for b in self.buses):
                if self.pcie_to_pci_bridge:
                    need_pcie_bridge = True
                else:
                    need_dmi = True
                if add == 1:
                    add += 1
                    address = PciAddress(address.bus + 1, address.slot, address.function,
                                         address.domain)
        elif flags & (Connect.PCIE_DEVICE | Connect.PCIE_SWITCH_UPSTREAM_PORT):
            model = "pcie-root-port"
        else:
            raise AddressError(f"no PCI slot for {_kind(flags)}, and such a controller is "
                               "not added automatically")
        start = len(self.buses)
        new = [Bus.of(model) for _ in range(add)]
        if need_dmi:
            new[0] = Bus.of("dmi-to-pci-bridge")
        if need_pcie_bridge:
            port = Bus.of("pcie-root-port")
            port.flags = Connect.PCIE_TO_PCI_BRIDGE  # only the bridge may take it
            new[0] = port
            new[1] = Bus.of("pcie-to-pci-bridge")
        self.buses.extend(new)
        assert len(self.buses) == start + add
        return address
