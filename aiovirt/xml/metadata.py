"""Typed application data in a domain's ``<metadata>``: Python values to readable XML and back.

    xml = dumps({"owner": "ops", "replicas": 3, "tags": ["a", "b"]},
                namespace="https://example.org/app", prefix="app")
    # <app:data xmlns:app="https://example.org/app" type="dict">
    #   <owner>ops</owner> <replicas type="int">3</replicas> ...
    loads(xml) == {"owner": "ops", "replicas": 3, "tags": ["a", "b"]}

Values: ``dict`` (string keys), ``list``, ``str``, ``int``, ``float``, ``bool``, ``None`` and
``bytes``, nested freely; round trips are exact (types included; a ``bytearray`` comes back
as ``bytes``).  The outer element is in the application's namespace, its content unqualified.  A string is plain text
unless XML cannot hold it (control characters), then base64; a dict key becomes the element
name when it is a valid one, else an ``item`` element with a ``key`` attribute.

``read``/``write`` do the same on a domain XML tree; ``Domain.read_metadata`` and
``Domain.write_metadata`` on a live domain through libvirt's metadata calls.

Per-device data is bound to a device by its user alias (``ua-…``, see
``aiovirt.compose.aliases``), all devices in one element of ``DEVICES_NAMESPACE``:

    <metadata>
      <aiovirt-devices:devices xmlns:aiovirt-devices="https://aiovirt.org/xmlns/devices/1">
        <device alias="ua-disk-vda" type="dict"><volume>3f0c…</volume></device>
        <device alias="ua-net-default" type="dict"><displayNetwork>ops</displayNetwork></device>
      </aiovirt-devices:devices>
    </metadata>

``read_device``/``write_device``/``device_entries``/``remove_device``/``prune_devices`` work
on a domain tree; ``Domain.read_device_metadata`` and friends on a live domain.  Aliases are
the key because libvirt keeps user aliases through define, hotplug and migration and QEMU
uses them as device ids, while addresses and positions may change.
"""

from __future__ import annotations

import base64
import functools
import math
import re
from typing import Any

from lxml import etree

from ..errors import AiovirtError, XMLInputError
from . import DEVICES_NAMESPACE, DEVICES_PREFIX
from .safe import parse, to_string

__all__ = ["DEVICES_NAMESPACE", "DEVICES_PREFIX", "UnknownDevice", "check_namespace",
           "device_entries",
           "devices_from_xml", "devices_to_xml", "dumps", "find_device", "from_element",
           "is_user_alias", "loads", "prune_devices", "read", "read_device", "remove_device",
           "same", "to_element", "write", "write_device"]

PROFILES_NAMESPACE = "https://aiovirt.org/xmlns/profiles/1"   # composition's own records
# namespaces whose content is not one typed value: writing a value there would destroy them
RESERVED_NAMESPACES = frozenset({DEVICES_NAMESPACE, PROFILES_NAMESPACE})

_XML_TEXT = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")
_NCNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_MAX_DEPTH = 100
_HEX_BITS = 12000  # ints longer than this (about 3600 digits) go in hexadecimal: Python
                   # refuses to print or parse more than 4300 decimal digits by default


@functools.lru_cache(maxsize=256)   # an application writes under a few namespaces, often
def check_namespace(namespace: str) -> str:
    """``namespace`` if XML parsers accept it as a namespace name (libxml2, so lxml and
    aiovirt's own parsing, refuse a document declaring one that is not a URI reference);
    else ``XMLInputError``.  libvirt stores such a namespace without complaint, and the
    domain's XML could not be read back."""
    if not isinstance(namespace, str) or not namespace:
        raise XMLInputError(f"expected a URI, not {namespace!r:.60}", source="namespace")
    try:
        etree.fromstring(f"<x xmlns:p={_quoted(namespace)}/>".encode("utf-8", "replace"))
    except etree.XMLSyntaxError:
        raise XMLInputError(f"{namespace!r:.100} is not a valid URI (write spaces and other "
                            "reserved characters %-escaped)", source="namespace") from None
    return namespace


_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                               "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def _quoted(value: str) -> str:
    """``value`` as a double-quoted XML attribute value (xml.sax.saxutils' quoteattr, whose
    module imports urllib.request: 17 ms at start-up)."""
    return '"' + value.translate(_ATTR_ESCAPES) + '"'


def _name_ok(key: str) -> bool:
    return bool(_NCNAME.fullmatch(key)) and not key.lower().startswith("xml") and \
        key != "item"


def _text_ok(text: str) -> bool:
    return bool(_XML_TEXT.fullmatch(text))


def to_element(value: Any, *, namespace: str | None, prefix: str = "app",
               name: str = "data") -> etree._Element:
    """``value`` as an element ``{namespace}name`` (its content unqualified); ``TypeError``
    names what cannot be stored and where.  ``namespace=None`` gives a bare element, which
    is what ``virDomainSetMetadata`` wants (libvirt adds the namespace itself)."""
    if not isinstance(name, str) or not _name_ok(name):
        raise ValueError(f"{name!r} is not usable as an element name")
    if namespace is None:
        root = etree.Element(name)
    else:
        if namespace in RESERVED_NAMESPACES:
            raise ValueError(f"{namespace!r} is aiovirt's own (its records would be lost): "
                             "store application data under a namespace of yours")
        if not isinstance(prefix, str) or not _name_ok(prefix):
            raise ValueError(f"prefix {prefix!r} is not usable as a namespace prefix")
        root = etree.Element(f"{{{check_namespace(namespace)}}}{name}",
                             nsmap={prefix: namespace})
    _encode(root, value, "value", 0)
    return root


def _encode(element: etree._Element, value: Any, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        shown = where if len(where) <= 80 else f"{where[:80]}..."
        raise ValueError(f"{shown}: nested deeper than {_MAX_DEPTH} levels (a list or dict "
                         "that contains itself?)")
    if value is None:
        element.set("type", "null")
    elif isinstance(value, bool):
        element.set("type", "bool")
        element.text = "true" if value else "false"
    elif isinstance(value, int):
        element.set("type", "int")
        if value.bit_length() > _HEX_BITS:
            element.set("encoding", "hex")
            element.text = format(value, "x")
        else:
            element.text = str(value)
    elif isinstance(value, float):
        element.set("type", "float")
        element.text = repr(value)
    elif isinstance(value, str):
        if _text_ok(value):
            element.text = value
        else:
            element.set("type", "str")
            element.set("encoding", "base64")
            element.text = base64.b64encode(value.encode("utf-8", "surrogatepass")).decode()
    elif isinstance(value, bytes | bytearray):
        element.set("type", "bytes")
        element.text = base64.b64encode(value).decode()
    elif isinstance(value, list):
        element.set("type", "list")
        for index, item in enumerate(value):
            _encode(etree.SubElement(element, "item"), item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, dict):
        element.set("type", "dict")
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: dict keys must be str, not {type(key).__name__} "
                                f"({key!r})")
            if _name_ok(key):
                child = etree.SubElement(element, key)
            else:
                child = etree.SubElement(element, "item")
                if _text_ok(key):
                    child.set("key", key)
                else:
                    child.set("key64", base64.b64encode(
                        key.encode("utf-8", "surrogatepass")).decode())
            _encode(child, item, f"{where}[{key!r}]", depth + 1)
    else:
        raise TypeError(f"{where}: cannot store {type(value).__name__} ({value!r:.60}) in "
                        "metadata (dict, list, str, int, float, bool, None and bytes can be)")


def from_element(element: etree._Element) -> Any:
    """The value an element made by ``to_element`` holds (``ValueError`` if malformed)."""
    return _decode(element, etree.QName(element).localname)


def _decode(element: etree._Element, where: str) -> Any:
    kind = element.get("type", "str")
    children = [c for c in element if isinstance(c.tag, str)]
    if kind in ("list", "dict") and (element.text or "").strip():
        raise ValueError(f"metadata {where} (line {element.sourceline}): a {kind} holds "
                         f"elements, not text ({element.text.strip()!r:.40})")
    if kind == "list":
        return [_decode(child, f"{where}[{i}]") for i, child in enumerate(children)]
    if kind == "dict":
        result: dict[str, Any] = {}
        for child in children:
            key = _key(child, where)
            if key in result:   # the last would win without a word
                raise ValueError(f"metadata {where} (line {child.sourceline}): key {key!r} "
                                 "comes twice")
            result[key] = _decode(child, f"{where}.{key}")
        return result
    try:
        return _scalar(kind, element, bool(children))
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"metadata {where} (line {element.sourceline}): bad {kind}: "
                         f"{exc}") from None


def _scalar(kind: str, element: etree._Element, has_children: bool) -> Any:
    text = element.text or ""
    if kind == "str":
        if element.get("encoding") == "base64":
            return base64.b64decode(text, validate=True).decode("utf-8", "surrogatepass")
        if has_children:
            raise ValueError("a string holds no elements")
        return text
    if kind == "null":
        return None
    if kind == "bool":
        if text.strip() not in ("true", "false"):
            raise ValueError(f"{text!r} is not true or false")
        return text.strip() == "true"
    if kind == "int":
        return int(text.strip(), 16 if element.get("encoding") == "hex" else 10)
    if kind == "float":
        return float(text.strip())
    if kind == "bytes":
        return base64.b64decode(text.strip(), validate=True)
    raise ValueError(f"unknown type {kind!r}")


def _key(child: etree._Element, where: str) -> str:
    if child.get("key") is not None:
        return child.get("key", "")
    if child.get("key64") is not None:
        try:
            return base64.b64decode(child.get("key64", ""), validate=True).decode(
                "utf-8", "surrogatepass")
        except (ValueError, UnicodeError) as exc:
            raise ValueError(f"metadata {where} (line {child.sourceline}): bad key64 "
                             f"{child.get('key64')!r}: {exc}") from None
    return etree.QName(child).localname


def dumps(value: Any, *, namespace: str | None, prefix: str = "app", name: str = "data") -> str:
    """``value`` as an XML string for ``<metadata>`` (``namespace=None``: a bare element,
    for ``virDomainSetMetadata``)."""
    return to_string(to_element(value, namespace=namespace, prefix=prefix, name=name),
                     pretty=False)


def loads(text: str | bytes) -> Any:
    """The value in an XML string made by ``dumps`` (as libvirt hands it back, too)."""
    return from_element(parse(text, source="metadata"))


def read(domain: etree._Element, namespace: str, default: Any = None) -> Any:
    """The value stored under ``namespace`` in a domain XML tree's ``<metadata>``."""
    if not isinstance(domain, etree._Element):
        raise TypeError(f"read() takes a parsed domain (an lxml element: "
                        f"aiovirt.xml.safe.parse(text)), not {type(domain).__name__}")
    metadata = domain.find("metadata")
    if metadata is not None:
        for child in metadata:
            if isinstance(child.tag, str) and etree.QName(child).namespace == namespace:
                return from_element(child)
    return default


def write(domain: etree._Element, value: Any, *, namespace: str, prefix: str = "app",
          name: str = "data") -> None:
    """Store ``value`` under ``namespace`` in a domain XML tree (replacing what was there)."""
    element = to_element(value, namespace=namespace, prefix=prefix, name=name)
    metadata = domain.find("metadata")
    if metadata is None:
        metadata = etree.SubElement(domain, "metadata")
    for child in list(metadata):
        if isinstance(child.tag, str) and etree.QName(child).namespace == namespace:
            metadata.remove(child)
    metadata.append(element)


def same(a: Any, b: Any) -> bool:
    """Exact equality for metadata values: types must match, NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and
                                                      math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


# -- per-device metadata, keyed by user alias --------------------------------------------------
_USER_ALIAS = re.compile(r"ua-[A-Za-z0-9_-]*")


class UnknownDevice(AiovirtError, LookupError):
    """No device with that alias in the domain (or an alias that cannot name one)."""


def is_user_alias(alias: str | None) -> bool:
    """Whether libvirt keeps ``alias`` through define: ``ua-`` then only ``[A-Za-z0-9_-]``
    (libvirt 9.0's ``USER_ALIAS_CHARS``; other aliases are dropped silently)."""
    return alias is not None and bool(_USER_ALIAS.fullmatch(alias))


def find_device(domain: etree._Element, alias: str) -> etree._Element | None:
    """The device element of a domain tree whose ``<alias name>`` is ``alias``."""
    devices = domain.find("devices")
    if devices is None:
        return None
    for element in devices:
        if isinstance(element.tag, str):
            node = element.find("alias")
            if node is not None and node.get("name") == alias:
                return element
    return None


def _aliases(domain: etree._Element) -> list[str]:
    """Every device alias of a domain tree, in document order."""
    return [node.get("name", "") for node in domain.iterfind("devices/*/alias")]


def _check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not is_user_alias(alias):
        raise UnknownDevice(f"device metadata: {alias!r} is not a user alias (ua- followed by "
                            "letters, digits, '_' or '-'); only those survive define")


def _devices_element(domain: etree._Element, namespace: str) -> etree._Element | None:
    metadata = domain.find("metadata")
    if metadata is not None:
        for child in metadata:
            if isinstance(child.tag, str) and etree.QName(child).namespace == namespace:
                return child
    return None


def _entries(element: etree._Element | None) -> dict[str, etree._Element]:
    found: dict[str, etree._Element] = {}
    if element is None:
        return found
    for child in element:
        if isinstance(child.tag, str) and etree.QName(child).localname == "device":
            alias = child.get("alias")
            if alias is None:
                raise ValueError(f"device metadata (line {child.sourceline}): <device> "
                                 "without an alias attribute")
            found[alias] = child
    return found


def _entry(alias: str, value: Any) -> etree._Element:
    element = etree.Element("device", alias=alias)
    _encode(element, value, f"device {alias}", 0)
    return element


def devices_from_xml(text: str | bytes | etree._Element | None) -> dict[str, Any]:
    """alias -> value from a device-metadata element (as libvirt's metadata call returns it;
    None or empty gives ``{}``)."""
    if text is None or (not isinstance(text, etree._Element) and not text.strip()):
        return {}
    element = text if isinstance(text, etree._Element) else parse(text, source="metadata")
    return {alias: _decode(child, f"device {alias}")
            for alias, child in _entries(element).items()}


def devices_to_xml(entries: dict[str, Any], *, namespace: str | None = None,
                   prefix: str = DEVICES_PREFIX) -> str:
    """The device-metadata element for ``entries`` (alias -> value); ``namespace=None``
    gives the bare element ``virDomainSetMetadata`` wants."""
    for alias in entries:
        _check_alias(alias)
    if namespace is None:
        root = etree.Element("devices")
    else:
        root = etree.Element(f"{{{namespace}}}devices", nsmap={prefix: namespace})
    for alias, value in entries.items():
        root.append(_entry(alias, value))
    return to_string(root, pretty=False)


def read_device(domain: etree._Element, alias: str, default: Any = None, *,
                namespace: str = DEVICES_NAMESPACE) -> Any:
    """The value bound to the device ``alias`` in a domain tree (``default`` if none)."""
    entry = _entries(_devices_element(domain, namespace)).get(alias)
    return default if entry is None else _decode(entry, f"device {alias}")


def device_entries(domain: etree._Element, *,
                   namespace: str = DEVICES_NAMESPACE) -> dict[str, Any]:
    """Every alias -> value bound in a domain tree (also aliases whose device is gone)."""
    return devices_from_xml(_devices_element(domain, namespace))


def write_device(domain: etree._Element, alias: str, value: Any, *,
                 namespace: str = DEVICES_NAMESPACE, prefix: str = DEVICES_PREFIX,
                 check: bool = True) -> None:
    """Bind ``value`` to the device ``alias`` in a domain tree (replacing what was bound).

    ``check``: the domain must have a device with that alias (``UnknownDevice`` otherwise;
    turn it off to bind data before the device is plugged)."""
    _check_alias(alias)
    if check and find_device(domain, alias) is None:
        known = [a for a in _aliases(domain) if is_user_alias(a)]
        raise UnknownDevice(f"no device with alias {alias!r} in the domain (user aliases: "
                            f"{', '.join(known) or 'none'})")
    entry = _entry(alias, value)   # before any change: a bad value leaves the tree alone
    element = _devices_element(domain, namespace)
    if element is None:
        metadata = domain.find("metadata")
        if metadata is None:
            metadata = etree.SubElement(domain, "metadata")
        element = etree.SubElement(metadata, f"{{{namespace}}}devices",
                                   nsmap={prefix: namespace})
    old = _entries(element).get(alias)
    if old is not None:
        old.addnext(entry)
        element.remove(old)
    else:
        element.append(entry)


def remove_device(domain: etree._Element, alias: str, *,
                  namespace: str = DEVICES_NAMESPACE) -> bool:
    """Forget what is bound to ``alias`` in a domain tree; whether anything was."""
    element = _devices_element(domain, namespace)
    entry = _entries(element).get(alias)
    if entry is None or element is None:
        return False
    element.remove(entry)
    if not len(element):
        parent = element.getparent()
        if parent is not None:
            parent.remove(element)
    return True


def prune_devices(domain: etree._Element, *,
                  namespace: str = DEVICES_NAMESPACE) -> list[str]:
    """Forget the bindings of aliases no device of the tree has; the aliases forgotten."""
    gone = [alias for alias in _entries(_devices_element(domain, namespace))
            if find_device(domain, alias) is None]
    for alias in gone:
        remove_device(domain, alias, namespace=namespace)
    return gone
