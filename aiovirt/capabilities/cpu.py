"""The host-model CPU of a capability set, offline: a common model and the intersection of
the hosts' host-model features.

libvirt's own baseline (``baseline_hypervisor_cpu``, see ``live``) knows every CPU model's
feature list (its cpu_map) and asks the hypervisor what it can run; offline we only have
each host's domcaps.  So the offline baseline:

* chooses, among the hosts' host-model CPU models, one that is the host-model or a usable
  custom model on at least K hosts (the one most hosts have as host-model, then the one
  usable on most); libvirt may choose an older or newer model with other features;
* requires the extra features at least K of those hosts require, and disables a feature when
  fewer than K of them have it (one that a host's own host-model disables);
* leaves out the features libvirt 9.0's cpu_map marks non-migratable (``invtsc``,
  ``xsaves``), as libvirt's baseline does with its MIGRATABLE flag;
* cannot see a feature that one host's model includes and another's lists as extra: it then
  counts as missing, so the offline result can lack features libvirt's would require.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from lxml import etree

from .tree import Gap

__all__ = ["HOST_MODEL", "NON_MIGRATABLE", "CpuChoice", "HostModel", "cpu_definition", "host_model",
           "offline_host_model", "set_host_model"]

HOST_MODEL = "cpu/mode[@name='host-model']"
NON_MIGRATABLE = frozenset({"invtsc", "xsaves"})   # migratable='no' in x86_features.xml


@dataclass(frozen=True)
class HostModel:
    """One host's host-model CPU as its domcaps give it."""

    model: str
    vendor: str | None
    required: tuple[str, ...]
    disabled: tuple[str, ...]


@dataclass(frozen=True)
class CpuChoice:
    """Where a set's host-model CPU came from (``offline`` or ``libvirt``), what it is, and
    what to know about how it was chosen."""

    source: str
    model: str | None
    required: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "model": self.model, "required": list(self.required),
                "disabled": list(self.disabled), "note": self.note}


def host_model(domcaps: etree._Element) -> HostModel | None:
    """The host-model CPU of one host's domcaps (None if it has none)."""
    mode = domcaps.find(HOST_MODEL)
    if mode is None or mode.get("supported") != "yes" or not mode.findtext("model"):
        return None
    features = mode.findall("feature")
    return HostModel(mode.findtext("model", "").strip(), mode.findtext("vendor"),
                     tuple(f.get("name", "") for f in features if f.get("policy") == "require"),
                     tuple(f.get("name", "") for f in features if f.get("policy") == "disable"))


def _usable(domcaps: etree._Element) -> set[str]:
    return {(m.text or "").strip() for m in domcaps.iterfind("cpu/mode[@name='custom']/model")
            if m.get("usable") == "yes"}


def cpu_definition(domcaps: etree._Element) -> str | None:
    """A host's host-model CPU as the ``<cpu>`` definition libvirt's baseline takes (what
    ``virsh hypervisor-cpu-baseline`` extracts from domcaps); None if it has none."""
    mode = domcaps.find(HOST_MODEL)
    if host_model(domcaps) is None or mode is None:
        return None
    cpu = etree.Element("cpu")
    for child in mode:
        cpu.append(etree.fromstring(etree.tostring(child)))
    return etree.tostring(cpu, encoding="unicode")


def set_host_model(domcaps: etree._Element, cpu: etree._Element | None) -> None:
    """Replace the host-model CPU of ``domcaps`` (in place) with the model, vendor and
    features of ``cpu`` (a ``<cpu>`` or ``<mode>``); None: the set has no host-model CPU."""
    mode = domcaps.find(HOST_MODEL)
    if mode is None:
        parent = domcaps.find("cpu")
        if parent is None:
            parent = etree.SubElement(domcaps, "cpu")
        mode = etree.SubElement(parent, "mode", name="host-model")
    for child in list(mode):
        mode.remove(child)
    mode.attrib.clear()
    mode.set("name", "host-model")
    if cpu is None or cpu.find("model") is None:
        mode.set("supported", "no")
        return
    mode.set("supported", "yes")
    model = etree.SubElement(mode, "model", fallback=cpu.find("model").get("fallback",
                                                                              "forbid"))
    model.text = (cpu.findtext("model") or "").strip()
    if cpu.findtext("vendor"):
        etree.SubElement(mode, "vendor").text = cpu.findtext("vendor")
    for feature in cpu.iterfind("feature"):
        etree.SubElement(mode, "feature", policy=feature.get("policy", "require"),
                         name=feature.get("name", ""))


def offline_host_model(domcaps: Sequence[etree._Element], names: Sequence[str],
                       min_hosts: int) -> tuple[etree._Element | None, CpuChoice, list[Gap]]:
    """The set's host-model CPU from the hosts' domcaps, without libvirt (see the module's
    docstring for how it differs from libvirt's baseline): a ``<mode>`` (None: no model
    fits K hosts), the choice, and the gaps."""
    k = min_hosts
    models = [host_model(d) for d in domcaps]
    usable = [_usable(d) for d in domcaps]
    gaps: list[Gap] = []

    def gap(path: str, missing: Sequence[int], present: int, kept: bool) -> None:
        if missing:
            gaps.append(Gap("domcaps", f"{HOST_MODEL}/{path}",
                            tuple(names[h] for h in missing), present, kept))

    def runs(model: str) -> list[int]:
        return [h for h, m in enumerate(models)
                if (m is not None and m.model == model) or model in usable[h]]

    own = Counter(m.model for m in models if m is not None)
    candidates = [m for m in own if len(runs(m)) >= k]
    if not candidates:
        for model in own:
            ran = runs(model)
            gap(f"model[.='{model}']", [h for h in range(len(models)) if h not in ran],
                len(ran), False)
        note = (f"offline: no host-model CPU model is usable on {k} of {len(models)} hosts "
                f"(host models: {', '.join(own) or 'none'})")
        return None, CpuChoice("offline", None, note=note), gaps
    chosen = max(candidates, key=lambda m: (own[m], len(runs(m))))   # first of the best
    hosts = runs(chosen)
    gap(f"model[.='{chosen}']", [h for h in range(len(models)) if h not in hosts],
        len(hosts), True)

    def has(h: int, feature: str) -> bool:
        m = models[h]
        return m is not None and feature in m.required

    def lacks(h: int, feature: str) -> bool:
        m = models[h]
        return h not in hosts or (m is not None and m.model == chosen and feature in m.disabled)

    required: list[str] = []
    for feature in dict.fromkeys(f for h in hosts if models[h] for f in models[h].required
                                 if f not in NON_MIGRATABLE):
        having = [h for h in hosts if has(h, feature)]
        gap(f"feature[@name='{feature}']", [h for h in hosts if h not in having],
            len(having), len(having) >= k)
        if len(having) >= k:
            required.append(feature)
    disabled: list[str] = []
    for feature in dict.fromkeys(f for h in hosts if models[h] for f in models[h].disabled):
        if feature in required:
            continue
        lacking = [h for h in hosts if lacks(h, feature)]
        available = len(hosts) - len(lacking)
        if available < k:
            disabled.append(feature)
        if available:
            gap(f"feature[@name='{feature}']", lacking, available, available >= k)
    vendors = Counter(models[h].vendor for h in hosts if models[h] and models[h].vendor)
    mode = etree.Element("mode", name="host-model", supported="yes")
    etree.SubElement(mode, "model", fallback="forbid").text = chosen
    if vendors:
        etree.SubElement(mode, "vendor").text = max(vendors, key=lambda v: vendors[v])
    for feature in required:
        etree.SubElement(mode, "feature", policy="require", name=feature)
    for feature in disabled:
        etree.SubElement(mode, "feature", policy="disable", name=feature)
    mixed = len(own) > 1
    note = (f"offline: model {chosen} (host-model of {own[chosen]}, usable on {len(hosts)} of "
            f"{len(models)} hosts); extra features required by at least {k} of them"
            + ("; hosts with another host-model may have more features than counted"
               if mixed else ""))
    return mode, CpuChoice("offline", chosen, tuple(required), tuple(disabled), note), gaps
