"""One host's inputs to a merge: its name, its capabilities and its domain capabilities."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from ..errors import XMLInputError
from ..xml.safe import parse
from .errors import CapabilityError

__all__ = ["HostCaps", "as_tree"]

Source = str | bytes | etree._Element


def as_tree(value: Source, root_tag: str, where: str) -> etree._Element:
    """``value`` parsed (or taken) as a document whose root is ``root_tag``."""
    if isinstance(value, etree._Element):
        root = value
    elif isinstance(value, (str, bytes)):
        try:
            root = parse(value, source=where)
        except XMLInputError as exc:
            at = where if exc.line is None else f"{where}:{exc.line}"
            raise CapabilityError(f"{at}: malformed XML: {exc.reason}") from None
    else:
        raise CapabilityError(f"{where}: expected XML text or an element, not "
                              f"{type(value).__name__}")
    if root.tag != root_tag:
        raise CapabilityError(f"{where}: expected <{root_tag}>, found <{root.tag}>")
    return root


@dataclass(frozen=True)
class HostCaps:
    """What one host can do: ``caps`` (``virsh capabilities``) and ``domcaps`` (``virsh
    domcapabilities``), either of which may be missing; ``name`` labels it in reports."""

    name: str
    caps: etree._Element | None = None
    domcaps: etree._Element | None = None

    @classmethod
    def parse(cls, name: str, caps: Source | None = None,
              domcaps: Source | None = None) -> HostCaps:
        """A host from XML text (or elements), checked: errors name the host."""
        if caps is None and domcaps is None:
            raise CapabilityError(f"host {name!r}: give its capabilities, its domain "
                                  "capabilities or both")
        return cls(name,
                   None if caps is None else as_tree(caps, "capabilities",
                                                     f"host {name!r} capabilities"),
                   None if domcaps is None else as_tree(domcaps, "domainCapabilities",
                                                        f"host {name!r} domain capabilities"))

    @property
    def arch(self) -> str | None:
        """The host's architecture (from its caps, else its domcaps)."""
        if self.caps is not None and self.caps.findtext("host/cpu/arch"):
            return self.caps.findtext("host/cpu/arch")
        return self.domcaps.findtext("arch") if self.domcaps is not None else None
