"""``CapabilitySet``: what at least K of N hosts can do, in libvirt's own XML shapes, and
``merge`` that makes one."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lxml import etree

from .cpu import HOST_MODEL, CpuChoice, offline_host_model, set_host_model
from .errors import CapabilityError
from .hosts import HostCaps, as_tree
from .tree import Gap, merge_documents

__all__ = ["CapabilitySet", "merge"]


@dataclass(frozen=True)
class CapabilitySet:
    """The merged capabilities of ``hosts``: ``caps`` (a ``<capabilities>``) and ``domcaps``
    (a ``<domainCapabilities>``), each None when the hosts gave none, so that profile
    conditions (``$caps/...``, ``$domcaps/...``) read them as one host's.  ``gaps`` say
    which hosts lack what; ``cpu`` where the host-model CPU came from."""

    hosts: tuple[HostCaps, ...]
    min_hosts: int
    caps: etree._Element | None
    domcaps: etree._Element | None
    gaps: tuple[Gap, ...] = ()
    cpu: CpuChoice = field(default_factory=lambda: CpuChoice("offline", None))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts)

    def excluded_by(self, *, kept_only: bool = True) -> dict[str, tuple[str, ...]]:
        """Each capability (``document:path``) some hosts lack → those hosts; by default
        only those in the set, i.e. that would exclude the hosts from a guest using them."""
        return {g.what: g.missing for g in self.gaps if g.kept or not kept_only}

    def exclusions(self) -> dict[str, list[str]]:
        """Each host → the capabilities of the set it lacks (hosts lacking none omitted)."""
        found: dict[str, list[str]] = {}
        for g in self.gaps:
            if g.kept:
                for host in g.missing:
                    found.setdefault(host, []).append(g.what)
        return {h: found[h] for h in self.names if h in found}

    def with_cpu(self, cpu: str | etree._Element, source: str = "libvirt",
                 note: str = "") -> CapabilitySet:
        """This set with its host-model CPU taken from ``cpu`` (a ``<cpu>`` such as
        libvirt's baseline returns)."""
        if self.domcaps is None:
            raise CapabilityError("the set has no domain capabilities to put a CPU in")
        element = cpu if isinstance(cpu, etree._Element) else as_tree(cpu, "cpu",
                                                                       f"{source} CPU")
        domcaps = copy.deepcopy(self.domcaps)
        set_host_model(domcaps, element)
        features = element.findall("feature")
        choice = CpuChoice(source, (element.findtext("model") or "").strip() or None,
                           tuple(f.get("name", "") for f in features
                                 if f.get("policy", "require") == "require"),
                           tuple(f.get("name", "") for f in features
                                 if f.get("policy") == "disable"), note)
        gaps = tuple(g for g in self.gaps if not g.path.startswith(HOST_MODEL))
        return replace(self, domcaps=domcaps, cpu=choice, gaps=gaps)

    def caps_xml(self) -> str | None:
        return None if self.caps is None else _pretty(self.caps)

    def domcaps_xml(self) -> str | None:
        return None if self.domcaps is None else _pretty(self.domcaps)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (the XML documents not included)."""
        return {"hosts": list(self.names), "min_hosts": self.min_hosts,
                "cpu": self.cpu.to_dict(), "gaps": [g.to_dict() for g in self.gaps],
                "exclusions": self.exclusions()}

    def report(self) -> str:
        """A readable account: the CPU choice, then each gap with the hosts it excludes."""
        lines = [f"{len(self.hosts)} hosts ({', '.join(self.names)}), kept what at least "
                 f"{self.min_hosts} have"]
        if self.domcaps is not None:
            lines.append(f"host-model CPU: {self.cpu.model or 'none'} ({self.cpu.source})"
                         + (f"; {self.cpu.note}" if self.cpu.note else ""))
        kept = [g for g in self.gaps if g.kept]
        dropped = [g for g in self.gaps if not g.kept]
        if kept:
            lines.append("in the set, but lacking on some hosts (using it excludes them):")
            lines += [f"  {g.what}: {', '.join(g.missing)}" for g in kept]
        if dropped:
            lines.append(f"left out (fewer than {self.min_hosts} hosts have it):")
            lines += [f"  {g.what}: only {g.present}, lacking on {', '.join(g.missing)}"
                      for g in dropped]
        if not self.gaps:
            lines.append("every host has everything in the set")
        return "\n".join(lines)


def _pretty(root: etree._Element) -> str:
    element = copy.deepcopy(root)
    etree.indent(element, space="  ")
    return etree.tostring(element, encoding="unicode") + "\n"


def _check_min_hosts(min_hosts: Any, count: int) -> int:
    if min_hosts is None:
        return count
    if not isinstance(min_hosts, int) or isinstance(min_hosts, bool):
        raise CapabilityError(f"min_hosts {min_hosts!r}: give a whole number")
    if not 1 <= min_hosts <= count:
        raise CapabilityError(f"min_hosts={min_hosts}: give a number from 1 to the number "
                              f"of hosts ({count})")
    return min_hosts


def _same(hosts: Sequence[HostCaps], what: str, value: Any) -> None:
    """All hosts must agree on ``what`` (``value(host)``): one set, one architecture."""
    seen: dict[str | None, list[str]] = {}
    for host in hosts:
        seen.setdefault(value(host), []).append(host.name)
    if None in seen:
        raise CapabilityError(f"host {seen[None][0]!r}: its {what} is not given")
    if len(seen) > 1:
        listed = "; ".join(f"{v} ({', '.join(n)})" for v, n in seen.items())
        raise CapabilityError(f"hosts differ in {what}: {listed}: a capability set covers "
                              "hosts of one kind (merge each kind apart)")


def merge(hosts: Sequence[HostCaps], min_hosts: int | None = None) -> CapabilitySet:
    """The capabilities at least ``min_hosts`` of ``hosts`` have (default: all of them),
    with an offline host-model CPU (``live.baseline`` asks libvirt for its own)."""
    hosts = tuple(hosts)
    if not hosts:
        raise CapabilityError("no hosts to merge")
    for index, host in enumerate(hosts):
        if not isinstance(host, HostCaps):
            raise CapabilityError(f"host {index}: expected a HostCaps, not "
                                  f"{type(host).__name__}")
    names = [h.name for h in hosts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CapabilityError(f"host names must differ: {', '.join(map(repr, twice))} "
                              "given more than once")
    k = _check_min_hosts(min_hosts, len(hosts))
    for document, attr in (("capabilities", "caps"), ("domain capabilities", "domcaps")):
        given = [h.name for h in hosts if getattr(h, attr) is not None]
        if given and len(given) != len(hosts):
            lacking = [h.name for h in hosts if getattr(h, attr) is None]
            raise CapabilityError(f"{document} given for {', '.join(given)} but not for "
                                  f"{', '.join(lacking)}: give them for every host or none")
    caps = domcaps = None
    gaps: list[Gap] = []
    cpu = CpuChoice("offline", None)
    if hosts[0].caps is not None:
        _same(hosts, "host architecture (capabilities host/cpu/arch)",
              lambda h: h.caps.findtext("host/cpu/arch"))
        caps, found = merge_documents([h.caps for h in hosts], names, k, "caps")
        gaps += found
    if hosts[0].domcaps is not None:
        _same(hosts, "guest architecture (domain capabilities arch)",
              lambda h: h.domcaps.findtext("arch"))
        _same(hosts, "virt type (domain capabilities domain)",
              lambda h: h.domcaps.findtext("domain"))
        domcaps, found = merge_documents([h.domcaps for h in hosts], names, k, "domcaps",
                                         frozenset({HOST_MODEL}))
        gaps += found
        if domcaps.find(HOST_MODEL) is not None:
            mode, cpu, found = offline_host_model([h.domcaps for h in hosts], names, k)
            set_host_model(domcaps, mode)
            gaps += found
    return CapabilitySet(hosts, k, caps, domcaps, tuple(gaps), cpu)
