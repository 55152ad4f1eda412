"""K-of-N merging of one kind of capabilities document, element by element, recording what
each host lacks.

Elements are matched across hosts by a key: their ``name``, ``type`` or ``id`` attribute,
else their text for leaves (``<value>qxl</value>``, ``<machine>pc-q35-7.2</machine>``), else
their tag.  An element stays if at least K hosts have it.  ``supported``/``support``/
``usable`` become ``yes`` only if K hosts say ``yes`` (a host that says ``no`` counts as
lacking what lies below); a maximum (``max``, ``maxCpus``, ``bits``) becomes the largest
value K hosts reach; other attributes take the most common value.  Facts about one machine
rather than what it can do (uuid, NUMA topology, caches, microcode, TSC counter) are left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from lxml import etree

__all__ = ["Gap", "merge_documents"]

FLAGS = ("supported", "support", "usable")          # yes/no: K hosts must say yes
GATES = ("supported", "support")                    # "no": nothing below it counts
MAXIMA = ("max", "maxCpus", "bits")                 # numbers: the largest K hosts reach
KEY_ATTRS = ("name", "type", "id")
# single values where hosts may differ and one must be chosen: (parent tag, tag)
PICK = {("domainCapabilities", "path"), ("domainCapabilities", "machine"),
        ("arch", "emulator")}
# facts about one machine, not capabilities: never merged (plain tag paths)
HOST_FACTS = {"host/uuid", "host/topology", "host/cache", "host/memory_bandwidth",
              "host/cpu/microcode", "host/cpu/signature", "host/cpu/counter",
              "host/cpu/topology"}


@dataclass(frozen=True)
class Gap:
    """Something some hosts have and others lack: ``path`` in ``document`` ("caps" or
    "domcaps"), the hosts ``missing`` it, how many have it, and whether the set ``kept`` it
    (a kept gap excludes its ``missing`` hosts from guests that rely on it)."""

    document: str
    path: str
    missing: tuple[str, ...]
    present: int
    kept: bool

    @property
    def what(self) -> str:
        return f"{self.document}:{self.path}"

    def to_dict(self) -> dict[str, object]:
        return {"document": self.document, "path": self.path, "missing": list(self.missing),
                "present": self.present, "kept": self.kept}


Key = tuple[str, ...]


def _version_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """Sort machine names so that pc-q35-7.2 < pc-q35-10.0 (and pc-q35-rhel9.2.0 sorts
    among them: numbers before words at each place, never compared with them)."""
    return tuple((0, int(p), "") if p.isascii() and p.isdigit() else (1, 0, p)
                 for p in text.replace("-", ".").split("."))


class _Merger:
    def __init__(self, names: Sequence[str], min_hosts: int, document: str,
                 placeholders: frozenset[str]) -> None:
        self.names = names
        self.k = min_hosts
        self.document = document
        self.placeholders = placeholders   # paths filled in by someone else (the CPU)
        self.gaps: list[Gap] = []

    def gap(self, path: str, missing: Sequence[int], present: int, kept: bool) -> None:
        if missing:
            self.gaps.append(Gap(self.document, path, tuple(self.names[h] for h in missing),
                                 present, kept))

    # -- keys and labels ----------------------------------------------------------------------
    @staticmethod
    def key(parent: etree._Element, child: etree._Element) -> Key:
        tag = child.tag
        if tag == "guest":
            arch = child.find("arch")
            return (tag, child.findtext("os_type") or "",
                    arch.get("name", "") if arch is not None else "")
        if tag == "secmodel":
            return (tag, child.findtext("model") or "")
        for attr in KEY_ATTRS:
            if attr in child.attrib:
                return (tag, "@" + attr, child.get(attr, ""))
        if tag == "pages" and "size" in child.attrib:
            return (tag, "@size", child.get("size", ""), child.get("unit", ""))
        text = (child.text or "").strip()
        if len(child) == 0 and text and (parent.tag, tag) not in PICK:
            return (tag, "=", text)
        return (tag,)

    @staticmethod
    def label(key: Key, nth: int) -> str:
        tag = key[0]
        if tag == "guest":
            step = f"guest[os_type='{key[1]}'][arch/@name='{key[2]}']"
        elif tag == "secmodel":
            step = f"secmodel[model='{key[1]}']"
        elif len(key) > 2 and key[1].startswith("@"):
            step = f"{tag}[{key[1]}='{key[2]}']"
        elif len(key) == 3 and key[1] == "=":
            step = f"{tag}[.='{key[2]}']"
        else:
            step = tag
        return step + (f"[{nth + 1}]" if nth else "")

    # -- merging ---------------------------------------------------------------------------------
    def merge(self, roots: Sequence[etree._Element]) -> etree._Element:
        out = etree.Element(roots[0].tag)
        self.fill(out, list(enumerate(roots)), "", "")
        return out

    def fill(self, out: etree._Element, have: list[tuple[int, etree._Element]], path: str,
             plain: str) -> None:
        """Give ``out`` the merged attributes and text of ``have`` (the hosts having this
        element, at least K of them), then merge their children."""
        enabled = self.attributes(out, have, path)
        self.text(out, have, path)
        self.children(out, enabled, path, plain)

    def attributes(self, out: etree._Element, have: list[tuple[int, etree._Element]],
                   path: str) -> list[tuple[int, etree._Element]]:
        enabled = have
        names: dict[str, None] = {}
        for _, element in have:
            names.update(dict.fromkeys(element.attrib))
        for attr in names:
            values = {h: element.get(attr) for h, element in have}
            if attr in FLAGS:
                yes = [h for h, v in values.items() if v == "yes"]
                out.set(attr, "yes" if len(yes) >= self.k else "no")
                if yes:
                    self.gap(f"{path}[@{attr}='yes']", [h for h in values if h not in yes],
                             len(yes), len(yes) >= self.k)
                if attr in GATES:
                    enabled = [(h, e) for h, e in enabled if values[h] == "yes"]
                continue
            numbers = [v for v in values.values() if v is not None]
            if attr in MAXIMA and numbers and all(v.isdigit() for v in numbers):
                ranked = sorted((int(v) for v in numbers), reverse=True)
                chosen = str(ranked[min(self.k, len(ranked)) - 1])
                out.set(attr, chosen)
                reach = [h for h, v in values.items() if v is not None and int(v) >= int(chosen)]
                self.gap(f"{path}/@{attr}>={chosen}", [h for h in values if h not in reach],
                         len(reach), True)
                continue
            counts = Counter(v for v in values.values() if v is not None)
            chosen = max(counts, key=lambda v: counts[v])   # first of the most common
            out.set(attr, chosen)
            self.gap(f"{path}/@{attr}='{chosen}'", [h for h, v in values.items() if v != chosen],
                     counts[chosen], True)
        return enabled

    def text(self, out: etree._Element, have: list[tuple[int, etree._Element]],
             path: str) -> None:
        texts = {h: (e.text or "").strip() for h, e in have if len(e) == 0}
        counts = Counter(t for t in texts.values() if t)
        if not counts:
            return
        if out.tag == "machine" and len(counts) > 1:    # the oldest of the most common
            top = max(counts.values())
            chosen = min((t for t in counts if counts[t] == top), key=_version_key)
        else:
            chosen = max(counts, key=lambda t: counts[t])
        out.text = chosen
        self.gap(f"{path}[.='{chosen}']" if len(counts) > 1 else path,
                 [h for h, t in texts.items() if t != chosen] if len(counts) > 1 else [],
                 counts[chosen], True)

    def children(self, out: etree._Element, enabled: list[tuple[int, etree._Element]],
                 path: str, plain: str) -> None:
        # the hosts' children merged in order: a linked list (slot -> next slot), so that a
        # new key goes in after the last one this host shares, in constant time (a list's
        # index() and insert() made many siblings quadratic)
        following: dict[tuple[Key, int] | None, tuple[Key, int] | None] = {None: None}
        groups: dict[tuple[Key, int], list[tuple[int, etree._Element]]] = {}
        for h, parent in enabled:
            seen: Counter[Key] = Counter()
            after: tuple[Key, int] | None = None   # this host's next new key goes after it
            for child in parent.iterchildren(etree.Element):
                key = self.key(parent, child)
                slot = (key, seen[key])
                seen[key] += 1
                if slot in groups:
                    groups[slot].append((h, child))
                else:
                    groups[slot] = [(h, child)]
                    following[slot] = following[after]
                    following[after] = slot
                after = slot
        order = []
        slot = following[None]
        while slot is not None:
            order.append(slot)
            slot = following[slot]
        for slot in order:
            key, nth = slot
            have = groups[slot]
            child_plain = f"{plain}/{key[0]}" if plain else key[0]
            if child_plain in HOST_FACTS:
                continue
            child_path = f"{path}/{self.label(key, nth)}" if path else self.label(key, nth)
            hosts = {h for h, _ in have}
            kept = len(have) >= self.k
            if child_path in self.placeholders:
                placeholder = etree.SubElement(out, key[0])
                if len(key) > 2 and key[1].startswith("@"):
                    placeholder.set(key[1][1:], key[2])
                continue
            self.gap(child_path, [h for h, _ in enabled if h not in hosts], len(have), kept)
            if kept:
                self.fill(etree.SubElement(out, key[0]), have, child_path, child_plain)


def merge_documents(roots: Sequence[etree._Element], names: Sequence[str], min_hosts: int,
                    document: str, placeholders: frozenset[str] = frozenset()
                    ) -> tuple[etree._Element, list[Gap]]:
    """Merge one document per host (``roots``, named by ``names``): the elements at least
    ``min_hosts`` of them have, and the gaps.  Elements at ``placeholders`` paths are left
    empty (but for their key attribute) for the caller to fill."""
    merger = _Merger(names, min_hosts, document, placeholders)
    return merger.merge(roots), merger.gaps
