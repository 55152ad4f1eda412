"""Checking profiles against libvirt's domain schema before they are used.

``lint(profile)`` finds what would go wrong only later, or silently: snippet elements the
schema does not allow where they stand (usually a typo), and ``add multiple='yes'`` snippets
with nothing that may repeat.  ``aiovirt profiles validate`` reports these with file and line.
"""

from __future__ import annotations

from collections.abc import Iterator

from lxml import etree

from .profile import Profile, When
from .schema import Place, RepeatTable, repeat_table

__all__ = ["lint"]


def lint(profile: Profile, table: RepeatTable | None = None) -> list[str]:
    """Problems found in ``profile``, each as "SOURCE:LINE: message"."""
    table = table or repeat_table()
    problems: list[str] = []
    for action in profile.actions():
        problems += _unknown(profile, action.snippet, table)
        if action.kind == "add" and action.multiple == "yes" and \
                not any(_repeats(table, table.root, root) for root in action.snippet):
            problems.append(f"{profile.source}:{action.line}: <add multiple='yes'>: nothing "
                            "in the snippet may repeat, so it can never append")
    for group in profile.match:
        problems += _unknown(profile, tuple(p for p in group if not isinstance(p, When)),
                             table)
    return problems


def _unknown(profile: Profile, snippet: tuple[etree._Element, ...],
             table: RepeatTable) -> list[str]:
    problems = []
    for place, element, parent in _walk(table, snippet):
        if place is None:
            problems.append(f"{profile.source}:{element.sourceline}: <{_name(element)}> is not "
                            f"allowed in <{parent}> by libvirt's domain schema")
    return problems


def _walk(table: RepeatTable, snippet: tuple[etree._Element, ...]
          ) -> Iterator[tuple[Place | None, etree._Element, str]]:
    todo: list[tuple[Place, etree._Element, str]] = []
    for root in snippet:
        if root.tag == "domain":
            todo += [(table.root, child, "domain") for child in root]
        else:
            todo.append((table.root, root, "domain"))
    while todo:
        place, element, parent = todo.pop(0)
        found = table.child(place, element.tag)
        yield (found[1] if found else None), element, parent
        if found is not None:
            todo += [(found[1], child, _name(element)) for child in element]


def _repeats(table: RepeatTable, place: Place, element: etree._Element) -> bool:
    if element.tag == "domain":
        return any(_repeats(table, place, child) for child in element)
    found = table.child(place, element.tag)
    if found is None:
        return False
    return found[0] or any(_repeats(table, found[1], child) for child in element)


def _name(element: etree._Element) -> str:
    return etree.QName(element).localname
