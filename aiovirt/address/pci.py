"""PCI buses, slots and functions: what plugs in where, and the next free place.

``PciSpace`` is the bookkeeping libvirt keeps for a domain's PCI topology: per bus, the
kinds of device it accepts (connect flags), its usable slots, and per slot the functions in
use.  In *growing* mode (libvirt's dry run) a request nothing can satisfy adds buses of the
right kind (a pcie-root-port, or a pci-bridge, with the bridges needed to reach it).
"""

from __future__ import annotations

from .model import AddressError, PciAddress, pci_address

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


_BUS_FLAGS: dict[tuple[str, bool], tuple[Flags, int, int]] = {}


class Bus:
    """One PCI bus: its model, what it accepts, and which functions of which slots are used
    (a bitmask per slot)."""

    __slots__ = ("model", "flags", "min_slot", "max_slot", "functions", "aggregate", "used")

    def __init__(self, model: str, flags: Flags, min_slot: int, max_slot: int) -> None:
        self.model = model
        self.flags = flags
        self.min_slot = min_slot
        self.max_slot = max_slot
        # indexed by slot, so sized to the last one (a port's one slot: a list of one)
        self.functions = [0] * (max_slot + 1)
        self.aggregate = [False] * (max_slot + 1)
        self.used = 0   # slots with at least one function in use (skips full buses fast)

    @classmethod
    def of(cls, model: str, hotplug: bool = True) -> Bus:
        known = _BUS_FLAGS.get((model, hotplug))
        if known is None:
            known = _BUS_FLAGS[(model, hotplug)] = bus_flags(model, hotplug)
        return cls(model, *known)

    def __repr__(self) -> str:
        return f"Bus({self.model!r}, slots {self.min_slot}-{self.max_slot}, used {self.used})"

    def reused(self, model: str, hotplug: bool = True) -> Bus:
        """This bus, emptied and made a ``model`` bus again (cheaper than a new one when the
        model is the same), or a new bus."""
        if model != self.model:
            return Bus.of(model, hotplug)
        known = _BUS_FLAGS.get((model, hotplug))
        if known is None:
            known = _BUS_FLAGS[(model, hotplug)] = bus_flags(model, hotplug)
        self.flags = known[0]
        if self.used:
            if self.max_slot:
                self.functions = [0] * (self.max_slot + 1)
                self.aggregate = [False] * (self.max_slot + 1)
            else:
                self.functions[0] = 0
                self.aggregate[0] = False
            self.used = 0
        return self

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
    """``compatible`` for automatic placement, without building an address."""
    if device & Connect.INTEGRATED:
        if bus_number != 0:
            return False
        bus |= Connect.AUTOASSIGN
    elif device & Connect.AUTOASSIGN and not bus & Connect.AUTOASSIGN:
        return False
    if device & Connect.HOTPLUGGABLE and not bus & Connect.HOTPLUGGABLE:
        return False
    return bool(device & bus & TYPES)


_PCIE_GROWS = Connect.PCIE_DEVICE | Connect.PCIE_SWITCH_UPSTREAM_PORT
# flags << 16 | bus flags << 2 | from config << 1 | on bus 0 -> ``compatible``'s answer
_COMPATIBLE: dict[int, bool] = {}

# device flags << 15 | bus flags << 1 | on bus 0 -> whether automatic placement may put it
# there (connect flags fit in 14 bits: the key stays a one-digit int)
_FITS: dict[int, bool] = {}


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
                 pcie_to_pci_bridge: bool = True, multiple_roots: bool = False) -> None:
        self.buses = buses
        self.growing = growing
        self.pcie_to_pci_bridge = pcie_to_pci_bridge
        self.multiple_roots = multiple_roots   # pSeries: grow by PCI host bridges
        # where the search for a (flags, function) starts: buses only fill up, so one that
        # had no room for it once never will again
        # keyed by the flags (and 1 + the function asked for, above bit 20): small ints
        self._cursor: dict[int, int] = {}

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
        number, slot = address.bus, address.slot
        if self.growing and number >= len(self.buses):
            self.grow(address, flags)
        bus = self.buses[number] if number < len(self.buses) else None
        if bus is None or address.domain or address.function > 7 or \
                not bus.min_slot <= slot <= bus.max_slot:
            self.validate(address, flags, from_config, who)   # raises, saying why
        assert bus is not None
        key = flags << 16 | bus.flags << 2 | from_config << 1 | (not number)
        ok = _COMPATIBLE.get(key)
        if ok is None:
            ok = _COMPATIBLE[key] = compatible(address, bus.flags, flags, from_config)
        if not ok:
            self.validate(address, flags, from_config, who)   # raises, saying why
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
                 ) -> tuple[int, int, int] | None:
        """(bus, slot, function) of the first place on bus ``number`` for ``flags``."""
        bus = self.buses[number]
        aggregate = flags & Connect.AGGREGATE_SLOT
        if bus.used > bus.max_slot - bus.min_slot and not aggregate:
            return None  # every slot has something in it
        # compatible(), inlined: this runs for every bus a search passes
        offered = bus.flags
        if flags & Connect.INTEGRATED:
            if number != 0:
                return None
            offered |= Connect.AUTOASSIGN
        elif flags & Connect.AUTOASSIGN and not offered & Connect.AUTOASSIGN:
            return None
        if flags & Connect.HOTPLUGGABLE and not offered & Connect.HOTPLUGGABLE:
            return None
        if not flags & offered & TYPES:
            return None
        functions = bus.functions
        wanted = function or 0
        for slot in range(bus.min_slot, bus.max_slot + 1):
            used = functions[slot]
            if not used:
                return number, slot, wanted
            if aggregate and used != 0xFF and bus.aggregate[slot]:
                if not used & (1 << wanted):
                    return number, slot, wanted
                if function is None:   # the lowest free function
                    return number, slot, (~used & (used + 1)).bit_length() - 1
        return None

    def _search(self, flags: Flags, who: object, function: int | None,
                buses: range | list[int] | None, exclude: set[int] | frozenset[int]
                ) -> tuple[int, int, int]:
        key = flags if function is None else flags | (function + 1) << 20
        everywhere = buses is None
        if buses is None:
            buses = range(self._cursor.get(key, 0), len(self.buses))
        remember = everywhere and not exclude
        for number in buses:
            if number in exclude:
                continue
            found = self._free_on(number, flags, function)
            if found is not None:
                if remember:
                    self._cursor[key] = number
                return found
        if self.growing and everywhere:
            number = self._grow(len(self.buses), flags, who)
            if not exclude:
                self._cursor[key] = number
            return number, self.buses[number].min_slot, function or 0
        raise AddressError(f"{who}: no free PCI slot for {_kind(flags)}")

    def next_free(self, flags: Flags, who: object = "device", function: int | None = None,
                  buses: range | list[int] | None = None,
                  exclude: set[int] | frozenset[int] = frozenset()) -> PciAddress:
        """The first slot (or, for aggregating devices, function) that takes ``flags``, on
        ``buses`` (default: all but ``exclude``); grows the topology in growing mode when no
        bus list was given, else ``AddressError``."""
        return pci_address(*self._search(flags, who, function, buses, exclude))

    def reserve_next(self, flags: Flags, who: object = "device", function: int | None = None,
                     exclude: set[int] | frozenset[int] = frozenset()) -> PciAddress:
        return pci_address(*self.take_next(flags, who, function, exclude))

    def take_next(self, flags: Flags, who: object = "device", function: int | None = None,
                  exclude: set[int] | frozenset[int] = frozenset()) -> tuple[int, int, int]:
        """``reserve_next`` without building an address: (bus, slot, function)."""
        if exclude:
            found = self._search(flags, who, function, None, exclude)
        else:   # _search, inlined for the common case: full buses skipped before a call
            key = flags if function is None else flags | (function + 1) << 20
            buses = self.buses
            aggregate = flags & Connect.AGGREGATE_SLOT
            found = None
            for number in range(self._cursor.get(key, 0), len(buses)):
                bus = buses[number]
                if bus.used > bus.max_slot - bus.min_slot and not aggregate:
                    continue
                found = self._free_on(number, flags, function)
                if found is not None:
                    break
            if found is None:
                if not self.growing:
                    raise AddressError(f"{who}: no free PCI slot for {_kind(flags)}")
                number = self._grow(len(buses), flags, who)
                found = number, self.buses[number].min_slot, function or 0
            self._cursor[key] = found[0]
        number, slot, fn = found
        bus = self.buses[number]   # found free and compatible: no checks needed
        if not bus.functions[slot]:
            if bus.min_slot <= slot <= bus.max_slot:
                bus.used += 1
            if flags & Connect.AGGREGATE_SLOT:
                bus.aggregate[slot] = True
        bus.functions[slot] |= 1 << fn
        return found

    def take_each(self, requests: list[Flags], who: list[object], record: bool = True
                  ) -> list[tuple[int, int, int]]:
        """``take_next`` for each of ``requests`` in turn (any function; ``who[i]`` names
        request ``i`` in errors): the placement's innermost loop, in one frame.  Returns
        the places taken, in order (nothing unless ``record``)."""
        buses = self.buses
        cursor = self._cursor
        fits = _FITS
        found_all: list[tuple[int, int, int]] = []
        append = found_all.append
        index, count = 0, len(requests)
        while index < count:
            flags = requests[index]
            key = flags
            aggregate = flags & Connect.AGGREGATE_SLOT
            fit_key = flags << 15
            found = None
            for number in range(cursor.get(key, 0), len(buses)):
                bus = buses[number]
                if bus.used > bus.max_slot - bus.min_slot and not aggregate:
                    continue
                ok = fits.get(fit_key | bus.flags << 1 | (not number))
                if ok is None:
                    ok = fits[fit_key | bus.flags << 1 | (not number)] = _fits(number, bus.flags,
                                                                               flags)
                if not ok:
                    continue
                functions = bus.functions
                if not bus.max_slot:   # a port: its one slot (most buses on PCIe machines)
                    used = functions[0]
                    if not used:
                        found = number, 0, 0
                        break
                    if aggregate and used != 0xFF and bus.aggregate[0]:
                        found = number, 0, (~used & (used + 1)).bit_length() - 1
                        break
                    continue
                for slot in range(bus.min_slot, bus.max_slot + 1):
                    used = functions[slot]
                    if not used:
                        found = number, slot, 0
                        break
                    if aggregate and used != 0xFF and bus.aggregate[slot]:
                        found = number, slot, (~used & (used + 1)).bit_length() - 1
                        break
                if found is not None:
                    break
            if found is None:
                if not self.growing:
                    raise AddressError(f"{who[index]}: no free PCI slot for {_kind(flags)}")
                number = self._grow(len(buses), flags, who[index])
                found = number, buses[number].min_slot, 0
            number, slot, fn = found
            bus = buses[number]
            if not bus.functions[slot]:   # (the slot is in range: it was searched for)
                bus.used += 1
                if aggregate:
                    bus.aggregate[slot] = True
            # a bus this filled has no room for the next request either: start past it
            cursor[key] = number + 1 if bus.used > bus.max_slot - bus.min_slot and \
                not aggregate else number
            used = bus.functions[slot] | 1 << fn
            if record:
                append(found)
            if aggregate:
                # the same request again (root ports come in runs): it would pass the same
                # buses and slots and stop at this slot's lowest free function
                while used != 0xFF and index + 1 < count and requests[index + 1] == flags:
                    index += 1
                    fn = (~used & (used + 1)).bit_length() - 1
                    used |= 1 << fn
                    if record:
                        append((number, slot, fn))
            bus.functions[slot] = used
            index += 1
        return found_all

    # -- growing --------------------------------------------------------------------------------
    def grow(self, address: PciAddress, flags: Flags) -> PciAddress:
        """Add buses so that ``address.bus`` exists and can take ``flags`` (libvirt's
        virDomainPCIAddressSetGrow); returns the address, moved when a bridge had to go
        first."""
        number = self._grow(address.bus, flags)
        if number == address.bus:
            return address
        return PciAddress(number, address.slot, address.function, address.domain)

    def _grow(self, number: int, flags: Flags, who: object = None) -> int:
        """``grow`` on a bus number: returns the bus the device is to use."""
        add = number - len(self.buses) + 1
        if add <= 0:
            return number
        if add == 1 and flags & _PCIE_GROWS and not flags & Connect.PCI_DEVICE:
            self.buses.append(Bus.of("pcie-root-port"))   # the common case: one more port
            return number
        need_dmi = need_pcie_bridge = False
        if flags & Connect.PCI_DEVICE and self.multiple_roots:
            model = "pci-root"
        elif flags & Connect.PCI_DEVICE:
            model = "pci-bridge"
            if not any(b.flags & Connect.PCI_BRIDGE for b in self.buses):
                if self.pcie_to_pci_bridge:
                    need_pcie_bridge = True
                else:
                    need_dmi = True
                if add == 1:
                    add += 1
                    number += 1
        elif flags & (Connect.PCIE_DEVICE | Connect.PCIE_SWITCH_UPSTREAM_PORT):
            model = "pcie-root-port"
        else:
            raise AddressError(f"{'' if who is None else f'{who}: '}no PCI slot for "
                               f"{_kind(flags)}, and such a controller is not added "
                               "automatically")
        new = [Bus.of(model) for _ in range(add)]
        if need_dmi:
            new[0] = Bus.of("dmi-to-pci-bridge")
        if need_pcie_bridge:
            port = Bus.of("pcie-root-port")
            port.flags = Connect.PCIE_TO_PCI_BRIDGE  # only the bridge may take it
            new[0] = port
            new[1] = Bus.of("pcie-to-pci-bridge")
        self.buses.extend(new)
        return number
