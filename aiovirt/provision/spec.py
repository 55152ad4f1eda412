"""What to provision: ``GuestSpec`` (a template, profiles, a count and a naming pattern) and
its expansion into named guests."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from lxml import etree

from ..address import Tunables
from ..errors import AiovirtError
from ..xmlsafe import parse

__all__ = ["GuestSpec", "ProvisionError", "SpecError", "expand"]


class ProvisionError(AiovirtError, ValueError):
    """A provisioning request that cannot be carried out as given (nothing was done)."""


class SpecError(ProvisionError):
    """One spec of a request is wrong: ``index`` says which, ``reason`` why."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"spec {index}: {reason}")
        self.index = index
        self.reason = reason


_FIELDS = ("n", "i", "name")


@dataclass
class GuestSpec:
    """One kind of guest, ``count`` times.

    ``template`` is domain XML, partial or complete; ``profiles`` ("NAME" or "NAME@VERSION")
    and ``params`` compose it (see ``aiovirt.compose``), then ``address`` (True, a
    ``Tunables`` or False) assigns controllers and addresses.  ``name`` is a pattern with
    ``{n}`` (``first``, ``first`` + 1, ...), ``{i}`` (0, 1, ...) and ``{name}`` (the
    template's name), format specs allowed (``web-{n:03d}``); by default the template's name
    for one guest, ``{name}-{n}`` for more.  ``labels`` are stored in each guest's metadata
    (with the run's id), for ``teardown`` to find them by.  ``start=False`` only defines.
    """

    template: str
    profiles: Sequence[str] = ()
    params: Mapping[str, str] = field(default_factory=dict)
    count: int = 1
    name: str | None = None
    first: int = 1
    address: Tunables | bool = True
    start: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not self.template.strip():
            raise ProvisionError("a guest spec needs a domain XML template")
        if isinstance(self.profiles, str):
            self.profiles = (self.profiles,)
        self.profiles = tuple(self.profiles)
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise ProvisionError(f"count {self.count!r}: give a whole number of at least 1")
        if not isinstance(self.first, int) or isinstance(self.first, bool) or self.first < 0:
            raise ProvisionError(f"first {self.first!r}: give a whole number of 0 or more")
        if self.name is not None:
            _check_pattern(self.name, self.count)
        for key, value in {**self.params, **self.labels}.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ProvisionError(f"params and labels map names to strings: {key!r}: "
                                     f"{value!r}")

    def template_name(self) -> str | None:
        """The ``<name>`` the template gives, if any."""
        return parse(self.template, source="template").findtext("name")

    def names(self) -> list[str]:
        """The names of the guests this spec makes, in order."""
        base = self.template_name()
        pattern = self.name
        if pattern is None:
            if base is None:
                raise ProvisionError("the template has no <name>: give a name pattern "
                                     "(e.g. name='web-{n}')")
            pattern = base if self.count == 1 else "{name}-{n}"
        elif "{name" in pattern and base is None:
            raise ProvisionError(f"name pattern {pattern!r} uses {{name}}, but the template "
                                 "has no <name>")
        names = []
        for i in range(self.count):
            try:
                names.append(pattern.format(n=self.first + i, i=i, name=base or ""))
            except (ValueError, KeyError, IndexError) as exc:
                raise ProvisionError(f"name pattern {pattern!r}: {exc}") from None
        for name in names:
            _check_name(name)
        return names

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"template": self.template, "count": self.count}
        if self.profiles:
            data["profiles"] = list(self.profiles)
        if self.params:
            data["params"] = dict(self.params)
        if self.name is not None:
            data["name"] = self.name
        if self.first != 1:
            data["first"] = self.first
        if isinstance(self.address, Tunables):
            data["address"] = {f.name: getattr(self.address, f.name)
                               for f in fields(Tunables)}
        elif self.address is not True:
            data["address"] = False
        if not self.start:
            data["start"] = False
        if self.labels:
            data["labels"] = dict(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuestSpec:
        """A spec from JSON-like data (``to_dict``'s shape); unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ProvisionError(f"a guest spec is an object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProvisionError(f"guest spec: unknown field{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(map(repr, unknown))} (known: "
                                 f"{', '.join(sorted(known))})")
        values = dict(data)
        address = values.get("address", True)
        if isinstance(address, Mapping):
            try:
                values["address"] = Tunables(**address)
            except TypeError as exc:
                raise ProvisionError(f"guest spec: address: {exc}") from None
        elif not isinstance(address, bool):
            raise ProvisionError("guest spec: address is true, false or an object of tunables")
        for key in ("profiles",):
            if key in values and (isinstance(values[key], str) or
                                  not isinstance(values[key], Sequence)):
                raise ProvisionError(f"guest spec: {key} is a list of strings")
        for key in ("params", "labels"):
            if key in values and not isinstance(values[key], Mapping):
                raise ProvisionError(f"guest spec: {key} is an object of strings")
        for key in ("count", "first"):
            if key in values and (not isinstance(values[key], int) or
                                  isinstance(values[key], bool)):
                raise ProvisionError(f"guest spec: {key} is a whole number")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ProvisionError(f"guest spec: {exc}") from None


def _check_pattern(pattern: str, count: int) -> None:
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as exc:
        raise ProvisionError(f"name pattern {pattern!r}: {exc}") from None
    unknown = used - set(_FIELDS)
    if unknown:
        raise ProvisionError(f"name pattern {pattern!r}: unknown field "
                             f"{{{sorted(unknown)[0]}}} (use {{n}}, {{i}} or {{name}})")
    if count > 1 and not used & {"n", "i"}:
        raise ProvisionError(f"name pattern {pattern!r} makes the same name for all {count} "
                             "guests: put {n} or {i} in it")


def _check_name(name: str) -> None:
    if not name or "/" in name or name != name.strip() or "\n" in name:
        raise ProvisionError(f"guest name {name!r}: libvirt needs a non-empty name without "
                             "'/', newlines or surrounding spaces")


@dataclass(frozen=True, slots=True)
class Guest:
    """One guest to make: its name and the spec (by index) it comes from."""

    name: str
    spec: int


def expand(specs: Sequence[GuestSpec]) -> list[Guest]:
    """Every guest of every spec, in order; the same name twice is an error."""
    guests: list[Guest] = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(specs):
        for name in spec.names():
            if name in seen:
                where = "the same spec" if seen[name] == index else \
                    f"specs {seen[name]} and {index}"
                raise ProvisionError(f"guest name {name!r} comes twice (from {where})")
            seen[name] = index
            guests.append(Guest(name, index))
    return guests


def memory_and_vcpus(root: etree._Element) -> tuple[int, int]:
    """A domain's memory (KiB) and vCPU count, for placement (libvirt's defaults: 0 and 1)."""
    memory = root.find("memory")
    kib = 0
    if memory is not None and memory.text:
        kib = _kib(memory.text.strip(), memory.get("unit", "KiB"))
    vcpu = root.findtext("vcpu")
    try:
        vcpus = int(vcpu) if vcpu else 1
    except ValueError:
        vcpus = 1
    return kib, vcpus


_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2,
          "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4,
          "tib": 1024**4, "tb": 1000**4}


def _kib(value: str, unit: str) -> int:
    try:
        number = int(value)
    except ValueError:
        return 0
    return number * _UNITS.get(unit.lower(), 1024) // 1024
