"""Device identity: a stable user alias (``<alias name='ua-…'/>``) for every device.

libvirt keeps an alias through define only when it is a *user alias*: it starts with ``ua-``
and holds nothing but ASCII letters, digits, ``_`` and ``-`` (libvirt 9.0,
``virDomainDeviceInfoParseXML``; anything else is dropped silently), and user aliases must
be unique in a domain (``non unique alias detected``).  QEMU then uses it as the device id,
so it names the device in the live XML, in DEVICE_ADDED/REMOVED events and in ``unplug``.

    added = assign_user_aliases(root)     # ["ua-disk-vda", "ua-net-52-54-00-0a-0b-0c", ...]

An alias is made from the device kind and the device's *natural key*, the facts libvirt
itself identifies the device by, not its position or its whole content: a disk's target
(``ua-disk-vda``), an interface's MAC address (else its source), a controller's type and
index (``ua-ctrl-pci-3``), a channel's target name (``ua-channel-org_qemu_guest_agent_0``).
So composing the same input again gives the same aliases, a profile that changes a model or
adds a device elsewhere does not rename anything, and an alias once given is never changed.
Two devices with one key get ``-2``, ``-3``... in document order; keys too long for a
readable alias are shortened with a hash of the whole key.

Devices libvirt gives no alias (``graphics``, ``audio``, ``lease``, ``emulator``,
``redirfilter``) are left alone; a console that only mirrors the first ``<serial>`` too
(libvirt replaces it by that serial, alias and all).  Built-in controllers (pcie-root,
pci-root, q35's SATA, i440fx's IDE) may carry a user alias: libvirt still uses QEMU's fixed
bus names for them (checked with libvirt 9.0 and QEMU 7.2), so run this after addressing
and the controllers addressing adds get aliases too.
"""

from __future__ import annotations

import hashlib
import re

from lxml import etree

from ..xml.metadata import is_user_alias
from .errors import ComposeError

__all__ = ["ALIASABLE", "USER_ALIAS_PREFIX", "AliasError", "assign_user_aliases",
           "check_user_alias", "device_aliases", "is_user_alias", "set_alias", "user_alias"]

USER_ALIAS_PREFIX = "ua-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_KEY = 40   # a natural key longer than this becomes a prefix and a hash

# device element -> the word in its alias; only these carry libvirt device info (an alias)
ALIASABLE = {
    "disk": "disk", "controller": "ctrl", "filesystem": "fs", "interface": "net",
    "input": "input", "sound": "sound", "hostdev": "hostdev", "video": "video",
    "watchdog": "watchdog", "memballoon": "balloon", "rng": "rng", "nvram": "nvram",
    "hub": "hub", "shmem": "shmem", "tpm": "tpm", "panic": "panic", "memory": "mem",
    "redirdev": "redir", "smartcard": "smartcard", "serial": "serial",
    "parallel": "parallel", "channel": "channel", "console": "console", "iommu": "iommu",
    "vsock": "vsock",
}


class AliasError(ComposeError, ValueError):
    """A device alias libvirt would drop or refuse (bad characters, used twice)."""


def check_user_alias(alias: str, where: str = "alias") -> str:
    """``alias`` if it is a valid user alias, else ``AliasError`` saying what is wrong."""
    if not alias.startswith(USER_ALIAS_PREFIX):
        raise AliasError(f"{where}: {alias!r} does not start with {USER_ALIAS_PREFIX!r} "
                         "(libvirt keeps only user aliases through define)")
    bad = sorted(set(_UNSAFE.findall(alias[len(USER_ALIAS_PREFIX):])))
    if bad:
        raise AliasError(f"{where}: {alias!r} holds {''.join(bad)!r}; a user alias may hold "
                         "only ASCII letters, digits, '_' and '-' (libvirt drops it otherwise)")
    return alias


def _slug(text: str) -> str:
    return _UNSAFE.sub("_", text.strip()).strip("_")


def _attr(element: etree._Element, path: str, name: str) -> str | None:
    found = element.find(path)
    return None if found is None else found.get(name)


def _natural_key(element: etree._Element, ordinal: int) -> list[str | None]:
    """The parts that identify ``element`` among devices of its kind (None: not known)."""
    kind = element.tag
    if kind == "disk":
        return [_attr(element, "target", "dev")]
    if kind == "interface":
        mac = _attr(element, "mac", "address")
        if mac:
            return [mac.lower()]
        source = element.find("source")
        if source is not None:
            for key in ("network", "bridge", "dev", "name", "portgroup"):
                if source.get(key):
                    return [source.get(key)]
        return [element.get("type")]
    if kind == "controller":
        return [element.get("type"), element.get("index")]
    if kind == "hostdev":
        source = element.find("source")
        parts: list[str | None] = [element.get("type")]
        if source is not None:
            address = source.find("address")
            if address is not None:
                parts += [address.get(k) for k in ("domain", "bus", "slot", "function",
                                                   "device", "uuid", "target", "unit")
                          if address.get(k) is not None]
            else:
                parts += [_attr(source, "vendor", "id"), _attr(source, "product", "id")]
        return parts
    if kind in ("serial", "parallel", "console"):
        port = _attr(element, "target", "port")
        return [port if port is not None else str(ordinal)]
    if kind == "channel":
        target = element.find("target")
        if target is None:
            return [str(ordinal)]
        return [target.get("name") or target.get("type"),
                None if target.get("name") else target.get("port")]
    if kind == "filesystem":
        return [_attr(element, "target", "dir")]
    if kind == "input":
        return [element.get("type"), element.get("bus")]
    if kind == "video":
        return [_attr(element, "model", "type")]
    if kind == "shmem":
        return [element.get("name")]
    if kind == "memory":
        return [element.get("model"), element.findtext("target/node")]
    if kind == "redirdev":
        return [element.get("bus"), element.get("type")]
    if kind == "smartcard":
        return [element.get("mode")]
    if kind == "hub":
        return [element.get("type")]
    return [element.get("model")]


def user_alias(element: etree._Element, taken: set[str], ordinal: int = 0) -> str:
    """The alias ``element`` would get, not in ``taken`` (which it is then added to)."""
    word = ALIASABLE.get(element.tag, _slug(element.tag) or "dev")
    key = "-".join(s for s in (_slug(p) for p in _natural_key(element, ordinal) if p) if s)
    if len(key) > _MAX_KEY:
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        key = f"{key[:_MAX_KEY - 9].rstrip('_-')}-{digest}"
    base = f"{USER_ALIAS_PREFIX}{word}-{key}" if key else f"{USER_ALIAS_PREFIX}{word}"
    alias, n = base, 1
    while alias in taken:
        n += 1
        alias = f"{base}-{n}"
    taken.add(alias)
    return alias


def _mirrors_serial(element: etree._Element, devices: etree._Element) -> bool:
    """A first console that libvirt replaces by the first serial (x86's compat console)."""
    if element.tag != "console" or devices.find("serial") is None:
        return False
    if devices.find("console") is not element:
        return False
    target = _attr(element, "target", "type")
    return target in (None, "serial")


def device_aliases(root: etree._Element) -> dict[str, etree._Element]:
    """Every device's alias in a domain tree (user aliases and libvirt's own), alias ->
    element; a user alias used twice raises ``AliasError`` (libvirt would refuse it)."""
    found: dict[str, etree._Element] = {}
    devices = root.find("devices")
    if devices is None:
        return found
    for element in devices:
        if not isinstance(element.tag, str):
            continue
        alias = _attr(element, "alias", "name")
        if alias is None:
            continue
        if alias in found and is_user_alias(alias) and not _mirrors_serial(element, devices):
            raise AliasError(f"<{element.tag}> (line {element.sourceline}): alias {alias!r} "
                             f"is used by <{found[alias].tag}> too (line "
                             f"{found[alias].sourceline}); libvirt refuses non-unique aliases")
        found.setdefault(alias, element)
    return found


def assign_user_aliases(root: etree._Element) -> list[str]:
    """Give every device of a ``<domain>`` tree that has no user alias one, in place; return
    the aliases added, in document order.

    Valid user aliases are kept as they are; an alias libvirt would drop (``ua-`` with other
    characters) raises ``AliasError``; a non-user alias (libvirt's own, e.g. ``net0`` from a
    live XML) is replaced, as libvirt would drop it on define.  Meant for definitions, not for
    a running domain's live XML (whose aliases QEMU already uses)."""
    if root.tag != "domain":
        raise AliasError(f"expected a <domain> document, found <{root.tag}>")
    devices = root.find("devices")
    if devices is None:
        return []
    wanting: list[tuple[etree._Element, int]] = []
    taken: set[str] = set()
    ordinals: dict[str, int] = {}
    for element in devices:
        if not isinstance(element.tag, str) or element.tag not in ALIASABLE:
            continue
        ordinal = ordinals.get(element.tag, 0)
        ordinals[element.tag] = ordinal + 1
        alias = _attr(element, "alias", "name")
        if alias is not None and alias.startswith(USER_ALIAS_PREFIX):
            check_user_alias(alias, f"<{element.tag}> (line {element.sourceline})")
            if alias in taken and not _mirrors_serial(element, devices):
                raise AliasError(f"<{element.tag}> (line {element.sourceline}): alias "
                                 f"{alias!r} is used twice; libvirt refuses non-unique "
                                 "aliases")
            taken.add(alias)
        elif not _mirrors_serial(element, devices):
            wanting.append((element, ordinal))
    added = []
    for element, ordinal in wanting:
        alias = user_alias(element, taken, ordinal)
        set_alias(element, alias)
        added.append(alias)
    return added


def set_alias(element: etree._Element, alias: str) -> None:
    """Make ``alias`` the device's only ``<alias>``; a new one goes before ``<address>``,
    where libvirt formats it (the schema takes either order: this keeps the XML familiar)."""
    node = element.find("alias")
    if node is None:
        node = etree.SubElement(element, "alias")
        address = element.find("address")
        if address is not None:
            address.addprevious(node)
    node.attrib.clear()
    node.set("name", alias)
