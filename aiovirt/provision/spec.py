"""What to provision: ``GuestSpec`` (a template, profiles, a count and a naming pattern) and
its expansion into named guests."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from lxml import etree

from ..address import Tunables
from ..errors import AiovirtError
from ..xml.safe import NOT_XML_CHAR, parse

__all__ = ["MAX_COUNT", "MAX_NAME_BYTES", "GuestSpec", "ProvisionError", "SpecError", "excerpt",
           "expand"]

# The QEMU driver keeps a guest's config in /etc/libvirt/qemu/NAME.xml (written as
# NAME.xml.new first), so a name fits a 255-byte file name: 247 bytes defined here, 248 did not.
MAX_NAME_BYTES = 247
MAX_COUNT = 100_000     # guests per spec: a bound on what expanding the names allocates
MAX_PATTERN = 1024      # characters in a name pattern (its expansion is checked, too)
MAX_LABELS = 1024       # labels per spec, and their sizes: they go into every guest's XML
MAX_LABEL_KEY = 256
MAX_LABEL_VALUE = 64 * 1024
ECHO = 100              # characters of a caller's input that an error message repeats


def excerpt(value: Any, limit: int = ECHO) -> str:
    """``repr(value)``, cut to about ``limit`` characters: what an error may echo of input."""
    try:
        text = repr(value)
    except ValueError:   # an int too long to print
        return f"<a number of {value.bit_length()} bits>"
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str) else len(text)
    return f"{text[:limit]}... ({size} characters)"


class ProvisionError(AiovirtError, ValueError):
    """A provisioning request that cannot be carried out as given (nothing was done)."""


class SpecError(ProvisionError):
    """One spec of a request is wrong: ``index`` says which (None: a spec on its own, not
    yet in a request), ``reason`` why."""

    def __init__(self, index: int | None, reason: str) -> None:
        super().__init__(reason if index is None else f"spec {index}: {reason}")
        self.index = index
        self.reason = reason


# The fields a name pattern may use, with the presentation types each takes.
_FIELDS = {"n": "bdoxX", "i": "bdoxX", "name": "s"}
# Python's format spec: [[fill]align][sign][#][0][width][grouping][.precision][type]
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?#?0?(?P<width>\d*)[_,]?"
                          r"(?:\.(?P<precision>\d+))?(?P<type>.?)\Z", re.DOTALL)


@dataclass
class GuestSpec:
    """One kind of guest, ``count`` times.

    ``template`` is domain XML, partial or complete; ``profiles`` ("NAME" or "NAME@VERSION")
    and ``params`` compose it (see ``aiovirt.compose``), then ``address`` (True, a
    ``Tunables`` or False) assigns controllers and addresses.  ``name`` is a pattern with
    ``{n}`` (``first``, ``first`` + 1, ...), ``{i}`` (0, 1, ...) and ``{name}`` (the
    template's name), with fill, alignment, width and an integer type allowed
    (``web-{n:03d}``, ``{n:x}``); by default the template's name for one guest,
    ``{name}-{n}`` for more.  Names are at most ``MAX_NAME_BYTES`` bytes, ``count`` at most
    ``MAX_COUNT``; a spec that breaks a rule raises ``SpecError``.  ``labels`` are stored in
    each guest's metadata (with the run's id), for ``teardown`` to find them by.
    ``start=False`` only defines.  ``migratable=True`` composes against what every
    reachable host of the run can do (their merged capabilities, with libvirt's baseline
    CPU) instead of the chosen host's, so that the guest can move between them.
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
    migratable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not self.template.strip():
            raise ProvisionError("a guest spec needs a domain XML template")
        if isinstance(self.profiles, str):
            self.profiles = (self.profiles,)
        if not isinstance(self.profiles, Iterable):
            raise ProvisionError(f"profiles {excerpt(self.profiles)}: give a list of profile "
                                 "names")
        self.profiles = tuple(self.profiles)
        for name in ("params", "labels"):
            if not isinstance(getattr(self, name), Mapping):
                raise ProvisionError(f"{name} {excerpt(getattr(self, name))}: give a mapping "
                                     "of names to strings")
        if not isinstance(self.start, bool):
            raise ProvisionError(f"start {excerpt(self.start)}: give True or False")
        if not isinstance(self.address, bool | Tunables):
            raise ProvisionError(f"address {excerpt(self.address)}: give True, False or "
                                 "Tunables")
        if len(self.labels) > MAX_LABELS:
            raise ProvisionError(f"{len(self.labels)} labels: at most {MAX_LABELS}")
        for key, value in self.labels.items():
            if isinstance(key, str) and not 0 < len(key) <= MAX_LABEL_KEY:
                raise ProvisionError(f"label {excerpt(key)}: a label's name has 1 to "
                                     f"{MAX_LABEL_KEY} characters")
            if isinstance(value, str) and len(value) > MAX_LABEL_VALUE:
                raise ProvisionError(f"label {excerpt(key)}: its value of {len(value)} "
                                     f"characters is over the limit of {MAX_LABEL_VALUE}")
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise SpecError(None, f"count {excerpt(self.count)}: give a whole number of at "
                                  "least 1")
        if self.count > MAX_COUNT:
            raise SpecError(None, f"count {excerpt(self.count)}: at most {MAX_COUNT} guests "
                                  "per spec")
        if not isinstance(self.first, int) or isinstance(self.first, bool) or self.first < 0:
            raise ProvisionError(f"first {excerpt(self.first)}: give a whole number of 0 or "
                                 "more")
        if self.name is not None:
            _check_pattern(self.name, self.count)
        if not isinstance(self.migratable, bool):
            raise ProvisionError(f"migratable {excerpt(self.migratable)}: give True or False")
        for key, value in {**self.params, **self.labels}.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ProvisionError(f"params and labels map names to strings: "
                                     f"{excerpt(key)}: {excerpt(value)}")

    def template_name(self) -> str | None:
        """The ``<name>`` the template gives, if any (a template that is no domain is a
        ``ProvisionError`` saying so)."""
        root = parse(self.template, source="template")
        if root.tag != "domain":
            raise ProvisionError(f"the template is not a domain: expected a <domain> document, "
                                 f"found <{str(root.tag)[:40]}>")
        return root.findtext("name")

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
            raise ProvisionError(f"name pattern {excerpt(pattern)} uses {{name}}, but the "
                                 "template has no <name>")
        names = []
        for i in range(self.count):   # each expansion is bounded: see _check_pattern
            try:
                name = pattern.format(n=self.first + i, i=i, name=base or "")
            except (ValueError, KeyError, IndexError) as exc:
                raise SpecError(None, f"name pattern {excerpt(pattern)}: {exc}") from None
            _check_name(name)
            names.append(name)
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
            data["address"] = {name: getattr(self.address, name)
                               for name in Tunables.__slots__}
        elif self.address is not True:
            data["address"] = False
        if not self.start:
            data["start"] = False
        if self.labels:
            data["labels"] = dict(self.labels)
        if self.migratable:
            data["migratable"] = True
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuestSpec:
        """A spec from JSON-like data (``to_dict``'s shape); unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ProvisionError(f"a guest spec is an object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            shown = ", ".join(excerpt(key, 40) for key in unknown[:5])
            raise ProvisionError(f"guest spec: unknown field{'s' if len(unknown) > 1 else ''} "
                                 f"{shown}{', ...' if len(unknown) > 5 else ''} (known: "
                                 f"{', '.join(sorted(known))})")
        values = dict(data)
        address = values.get("address", True)
        if isinstance(address, Mapping):
            try:
                values["address"] = Tunables(**address)
            except (TypeError, ValueError) as exc:   # AddressError is a ValueError
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
        for key in ("migratable", "start"):
            if not isinstance(values.get(key, False), bool):
                raise ProvisionError(f"guest spec: {key} is true or false")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ProvisionError(f"guest spec: {exc}") from None


def _check_pattern(pattern: Any, count: int) -> None:
    """Only the documented fields, no conversions, attributes or nested fields, and widths
    and precisions no larger than a name: so that expanding it allocates little."""
    if not isinstance(pattern, str):
        raise SpecError(None, f"name pattern: expected a string, not {type(pattern).__name__}")
    where = f"name pattern {excerpt(pattern)}"
    if len(pattern) > MAX_PATTERN:
        raise SpecError(None, f"{where}: too long ({len(pattern)} characters; a name is at "
                              f"most {MAX_NAME_BYTES} bytes)")
    try:
        parts = list(string.Formatter().parse(pattern))
    except ValueError as exc:   # unbalanced braces
        raise SpecError(None, f"{where}: {exc} (write {{{{ and }}}} for literal braces)"
                        ) from None
    used = set()
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        shown = "{" + (field_name if len(field_name) <= 30 else field_name[:30] + "...") + "}"
        if field_name not in _FIELDS:
            raise SpecError(None, f"{where}: unknown field {shown} (use {{n}}, {{i}} or "
                                  "{name}, without attributes or indexes)")
        if conversion is not None:
            raise SpecError(None, f"{where}: {{{field_name}!{conversion}}}: conversions are "
                                  "not supported")
        found = _FORMAT_SPEC.match(spec or "")
        if "{" in (spec or "") or found is None or \
                found["type"] not in ("", *_FIELDS[field_name]):
            raise SpecError(None, f"{where}: format spec {excerpt(spec, 30)} of {{{field_name}}}"
                                  f" is not supported (use fill, align, width"
                                  f"{', precision' if field_name == 'name' else ''} and a "
                                  f"type of {', '.join(_FIELDS[field_name])})")
        for part in ("width", "precision"):
            if found[part] and int(found[part]) > MAX_NAME_BYTES:
                raise SpecError(None, f"{where}: {part} {excerpt(int(found[part]), 20)} of "
                                      f"{{{field_name}}} is over {MAX_NAME_BYTES}, the longest "
                                      "name")
        used.add(field_name)
    if count > 1 and not used & {"n", "i"}:
        raise SpecError(None, f"{where} makes the same name for all {count} guests: put {{n}} "
                              "or {i} in it")


def _check_name(name: str) -> None:
    if not name or "/" in name or name != name.strip() or "\n" in name:
        raise SpecError(None, f"guest name {excerpt(name)}: libvirt needs a non-empty name "
                              "without '/', newlines or surrounding spaces")
    bad = NOT_XML_CHAR.search(name)
    if bad is not None:   # the domain's XML could not hold it: libvirt would refuse it
        raise SpecError(None, f"guest name {excerpt(name)}: character U+{ord(bad.group()):04X} "
                              "cannot be in XML")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise SpecError(None, f"guest name {excerpt(name)} is {size} bytes: libvirt's QEMU "
                              f"driver takes at most {MAX_NAME_BYTES}")


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
        try:
            names = spec.names()
        except SpecError as exc:
            raise SpecError(index, exc.reason) from None
        for name in names:
            if name in seen:
                where = "the same spec" if seen[name] == index else \
                    f"specs {seen[name]} and {index}"
                raise ProvisionError(f"guest name {excerpt(name)} comes twice (from {where})")
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
