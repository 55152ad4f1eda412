"""Hot-plug snippets: the device XML to plug into a running guest, with a stable user alias
and an address that fits the live domain (nothing in it moves), from a device element or a
profile.

    devices = prepare_hotplug(live_xml, "<interface type='network'>…</interface>")
    devices = prepare_hotplug(live_xml, "guest-agent")          # a profile's new devices
    await dom.hotplug(HotplugRequest("guest-agent"))            # the same, done live

``prepare_hotplug`` is pure (the planner); ``Domain.hotplug`` is the runner: given a
``HotplugRequest`` it reads the live XML, calls the request with it and plugs the result.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lxml import etree

from ..address.hotplug import address_hotplug
from ..address.model import Tunables
from ..xml.safe import parse, strip_indentation, to_string
from .aliases import (ALIASABLE, AliasError, check_user_alias, device_aliases, set_alias,
                      user_alias)
from .composer import compose
from .errors import ComposeError
from .library import Library

__all__ = ["HotplugRequest", "prepare_hotplug"]


def _devices_of_profile(root: etree._Element, profile: str | bytes | etree._Element,
                        params: Mapping[str, str] | None,
                        library: Library | None) -> list[etree._Element]:
    """The devices a profile would add to ``root`` (which it may not otherwise change)."""
    if _is_xml(profile):
        # an inline profile: added to a copy, so the caller's library is left as it was
        library = Library(list(library)) if library is not None else Library.default()
        text = to_string(profile) if isinstance(profile, etree._Element) else profile
        added = library.add_string(text.decode() if isinstance(text, bytes) else text,
                                   "<hot-plug profile>")
        refs = [p.id for p in added]
    else:
        refs = [profile.decode() if isinstance(profile, bytes) else str(profile)]
    result = compose(root, refs, params=params, library=library, validate=False,
                     record=False)
    before = _device_texts(root)
    after = _device_texts(result.tree)
    gone = before - after
    if gone:
        raise ComposeError(f"profile {', '.join(refs)} changes or removes devices the running "
                           f"domain has ({', '.join(sorted(_tags(gone)))}); hot-plug can only "
                           "add devices")
    if _rest(root) != _rest(result.tree):
        raise ComposeError(f"profile {', '.join(refs)} changes more than devices; hot-plug can "
                           "only add devices (compose and redefine the domain instead)")
    wanted = after - before
    new = []
    for element in result.tree.iterfind("devices/*"):
        text = _text(element)
        if wanted[text] > 0:
            wanted[text] -= 1
            new.append(element)
    if not new:
        raise ComposeError(f"profile {', '.join(refs)} adds no device to this domain")
    return new


def _is_xml(value: str | bytes | etree._Element) -> bool:
    if isinstance(value, etree._Element):
        return True
    return value.lstrip()[:1] in ("<", b"<")


def _text(element: etree._Element) -> str:
    return etree.tostring(element, method="c14n").decode()


def _device_texts(root: etree._Element) -> Counter[str]:
    return Counter(_text(e) for e in root.iterfind("devices/*") if isinstance(e.tag, str))


def _tags(texts: Counter[str]) -> list[str]:
    return [text.split(">", 1)[0] + ">" for text in texts]


def _rest(root: etree._Element) -> str:
    """The domain without its devices and metadata, for comparison."""
    other = copy.deepcopy(root)
    for name in ("devices", "metadata"):
        for element in other.findall(name):
            other.remove(element)
    return _text(other)


def prepare_hotplug(domain: str | bytes | etree._Element,
                    device: str | bytes | etree._Element, *,
                    params: Mapping[str, str] | None = None,
                    library: Library | None = None,
                    tunables: Tunables | None = None,
                    source: str = "<domain>") -> list[etree._Element]:
    """The device elements to attach to ``domain`` (its live XML, or a saved one): ``device``
    is one device element, or a profile (name, ``NAME@VERSION`` or ``<profile>`` XML) whose
    added devices are taken.  Each gets a user alias (a given one is checked) and an address
    from ``address_hotplug``, later ones addressed after earlier ones."""
    if isinstance(domain, etree._Element):
        root = strip_indentation(copy.deepcopy(domain))
    else:
        root = parse(domain, source=source)
    if root.tag != "domain":
        raise ComposeError(f"{source}: expected a <domain> document, found <{root.tag}>")
    if not _is_xml(device):
        elements = _devices_of_profile(root, device, params, library)
    else:
        element = strip_indentation(copy.deepcopy(device)) if isinstance(
            device, etree._Element) else parse(device, source="<device>")
        elements = _devices_of_profile(root, element, params, library) \
            if element.tag in ("profile", "profiles") else [element]
    container = root.find("devices")
    if container is None:
        container = etree.SubElement(root, "devices")
    taken = set(device_aliases(root))
    prepared = []
    for element in elements:
        node = element.find("alias")
        alias = None if node is None else node.get("name")
        if alias is not None:
            check_user_alias(alias, f"<{element.tag}>")
            if alias in taken:
                raise AliasError(f"<{element.tag}>: alias {alias!r} is already used by a "
                                 "device of the domain")
            taken.add(alias)
        elif element.tag in ALIASABLE:
            ordinal = len(container.findall(element.tag))
            set_alias(element, user_alias(element, taken, ordinal))
        placed = address_hotplug(root, element, tunables, source=source).element
        container.append(copy.deepcopy(placed))   # later devices see this one's place
        prepared.append(placed)
    return prepared


@dataclass
class HotplugRequest:
    """A device or profile to hot-plug, for ``Domain.hotplug``: called with the domain's
    live XML, it returns the device XML to attach (``prepare_hotplug``)."""

    device: str | bytes | etree._Element
    params: Mapping[str, str] | None = None
    library: Library | None = None
    tunables: Tunables | None = None
    prepared: Sequence[etree._Element] = field(default=(), init=False)

    def __call__(self, domain_xml: str) -> list[str]:
        self.prepared = prepare_hotplug(domain_xml, self.device, params=self.params,
                                        library=self.library, tunables=self.tunables,
                                        source="<live domain>")
        return [to_string(e, pretty=False) for e in self.prepared]
