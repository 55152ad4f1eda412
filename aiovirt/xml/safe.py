"""Parsing XML that comes from outside, safely, with errors that say where.

Every XML document aiovirt reads (domains, profiles, capabilities, metadata, schemas) goes
through here: no DTDs, no entity expansion, no network access (so no XXE and no billion
laughs), comments and processing instructions dropped, and indentation-only text removed so
that output can be pretty-printed afresh.  Errors are ``XMLInputError`` naming the source
and line.
"""

from __future__ import annotations

import os
import re

from lxml import etree

from ..errors import XMLInputError

__all__ = ["NOT_XML_CHAR", "XMLInputError", "parse", "parse_file", "strip_indentation",
           "to_string"]

_DECLARATION = re.compile(r"^\s*<\?xml\b[^>]*\?>")
MAX_BYTES = 16 * 1024 * 1024  # libvirt's own limit for a domain XML is 10 MB
# a character XML 1.0 cannot hold (lxml refuses it without saying where it came from)
NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True, collect_ids=False)


_PARSER = _parser()


def _check(tree: etree._ElementTree, source: str) -> None:
    info = tree.docinfo
    if info.doctype or info.internalDTD is not None:
        raise XMLInputError("a DOCTYPE is not accepted (no DTDs or entities)", source=source,
                            line=1)


def strip_indentation(root: etree._Element) -> etree._Element:
    """Remove whitespace-only text around child elements (indentation), in place.

    Text of elements without children is left alone: there whitespace may be data."""
    for element in root.iter(etree.Element):
        if len(element):
            if element.text is not None and not element.text.strip():
                element.text = None
            for child in element:
                if child.tail is not None and not child.tail.strip():
                    child.tail = None
    return root


def parse(text: str | bytes, *, source: str = "<string>") -> etree._Element:
    """Parse one XML document from a string; returns its root element."""
    if not isinstance(text, str | bytes):
        raise XMLInputError(f"expected XML text (str or bytes), not {type(text).__name__} "
                            f"({text!r:.60})", source=source)
    if isinstance(text, str):
        # the text is already decoded: an encoding its declaration names no longer applies
        text = _DECLARATION.sub("", text, count=1)
    try:
        data = text.encode("utf-8") if isinstance(text, str) else text
    except UnicodeEncodeError as exc:   # lone surrogates: undecodable bytes read leniently
        line = text.count("\n", 0, exc.start) + 1
        raise XMLInputError(f"not UTF-8 text (character {exc.start} is the lone surrogate "
                            f"{text[exc.start]!r}: undecodable input read leniently)",
                            source=source, line=line) from None
    if len(data) > MAX_BYTES:
        raise XMLInputError(f"document of {len(data)} bytes exceeds the limit of {MAX_BYTES}",
                            source=source)
    if not data.strip():
        raise XMLInputError("empty document", source=source)
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        line = exc.position[0] if exc.position else exc.lineno
        raise XMLInputError(str(exc.msg or exc).split(" (line")[0], source=source,
                            line=line) from None
    _check(root.getroottree(), source)
    return strip_indentation(root)


def parse_file(path: str | os.PathLike[str]) -> etree._ElementTree:
    """Parse an XML file (the error names the file and line)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_BYTES + 1)   # no more: a huge or endless file is refused
    except OSError as exc:
        raise XMLInputError(f"cannot read: {exc.strerror or exc}", source=path) from None
    if len(data) > MAX_BYTES:
        raise XMLInputError(f"more than {MAX_BYTES} bytes: over the limit for a document",
                            source=path)
    root = parse(data, source=path)
    return root.getroottree()


def to_string(root: etree._Element, *, pretty: bool = True, strip: bool = True) -> str:
    """Serialise an element as text (UTF-8, no XML declaration), indented by default.

    ``strip=False`` skips removing old indentation first, for trees known to have none
    (built from ``parse`` output)."""
    if pretty and strip:
        root = strip_indentation(root)
    return etree.tostring(root, encoding="unicode", pretty_print=pretty)
