"""The actions' semantics: applying ``add`` / ``remove`` / ``default`` snippets to a domain tree,
with ownership of every value so that priorities and hard constraints can be enforced, and a
record of every change for the explain report.

Whether an element may repeat under its parent comes from libvirt's schema (``schema.py``):

* ``add multiple='yes'`` appends ``count`` copies at the outermost element of the snippet that
  may repeat (there must be one); ancestors that may not repeat are found or created.
* ``add multiple='auto'`` (the default): an element that may repeat is left alone if one that
  already contains the snippet exists, filled in if one exists that lacks only values the
  snippet has, and appended otherwise; elements that may not repeat are adjusted, overriding
  values.
* ``add multiple='no'`` adjusts the first existing element of that tag (of the same ``type``
  and ``name`` where the snippet names them) instead of appending, overriding values.
* ``remove`` deletes every element that contains the snippet: the outermost element of the
  snippet that may repeat, or the snippet's leaves when nothing in it repeats.
* ``default`` only fills what is missing: attributes, text and children that may not repeat,
  in every element that agrees with the snippet's attributes; it never adds an element that
  may repeat and never overrides.

Every attribute, text and element written belongs to a *writer* (a profile action, or the
input document).  Overriding a value is allowed for a writer of higher priority; a value of
higher priority is kept (a note in the report); a hard value may not be overridden at all,
and two writers of equal priority that disagree clash.  Both are ``ProfileConflict``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lxml import etree

from .errors import ComposeError, ProfileConflict
from .schema import Place, RepeatTable

__all__ = ["Applier", "Change", "Writer"]

INPUT = "input"
# With multiple='no', the element adjusted must agree on these where the snippet sets them:
# libvirt's discriminators (a controller's or channel's type, a timer's or feature's name).
_IDENTITY = ("type", "name")


@dataclass(frozen=True, slots=True, eq=False)
class Writer:
    """Who writes: ``who`` is "name@version" (or "input"), with the action's priority and
    constraint, and where in the profile the action is."""

    who: str
    priority: int
    action: str = INPUT
    hard: bool = False
    source: str = ""
    line: int = 0

    @property
    def label(self) -> str:
        return self.who if self.who == INPUT else f"{self.who} ({self.action})"


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the explain report.

    ``what``: "added" / "removed" (an element), "set" (an attribute or text), or "kept" (the
    writer's value was not applied because a value of higher priority was already there).
    """

    path: str
    what: str
    old: str | None
    new: str | None
    profile: str
    action: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "what": self.what, "old": self.old, "new": self.new,
                "profile": self.profile, "action": self.action, "note": self.note}

    def __str__(self) -> str:
        old = "(none)" if self.old is None else repr(self.old)
        new = "(none)" if self.new is None else repr(self.new)
        text = f"{self.profile} {self.action}: {self.what} {self.path}"
        if self.what in ("set", "kept"):
            text += f": {old} -> {new}"
        elif self.what == "added" and self.new:
            text += f" {self.new}"
        return text + (f" ({self.note})" if self.note else "")


def _short(element: etree._Element) -> str:
    """An element's start tag, for the report: ``<video type='qxl'>`` (``<vcpu>2</vcpu>``
    for one that holds only text)."""
    name = etree.QName(element).localname
    attrs = "".join(f" {k}='{v}'" for k, v in element.attrib.items())
    text = _text(element)
    return f"<{name}{attrs}>" if text is None else f"<{name}{attrs}>{text}</{name}>"


def _text(element: etree._Element) -> str | None:
    text = element.text
    if text is None or len(element):
        return None
    text = text.strip()
    return text or None


class Applier:
    """Applies actions to one domain tree, keeping ownership and the report."""

    def __init__(self, root: etree._Element, table: RepeatTable, input_writer: Writer) -> None:
        self.root = root
        self.table = table
        self.input = input_writer
        self.owners: dict[tuple[etree._Element, str], list[Writer]] = {}
        self.created: dict[etree._Element, Writer] = {}
        self.removed: list[tuple[etree._Element, etree._Element, Writer]] = []
        self._notes: list[tuple[etree._Element, str, str, str | None,
                                str | etree._Element | None, Writer, str, str | None]] = []
        self._places: dict[etree._Element, Place | None] = {root: table.root}

    # -- entry point -----------------------------------------------------------------------
    def apply(self, kind: str, multiple: str, snippet: tuple[etree._Element, ...],
              writer: Writer, count: int = 1, again: bool = False) -> None:
        """Apply one action's (parameter-substituted) snippet.

        ``again``: this profile was applied to this domain before (its record says so), so an
        ``add multiple='yes'`` only tops up to ``count`` copies instead of adding more."""
        for element in snippet:
            if element.tag == "domain":  # the root itself: its attributes, then its children
                self._merge_attrs(element, self.root, writer, override=kind == "add")
                parts = tuple(element)
            else:
                parts = (element,)
            for part in parts:
                if kind == "add":
                    if multiple == "yes" and not self._repeats_within(self.root, part):
                        raise ComposeError(
                            f"{writer.who}: <add multiple='yes'> at {writer.source}:"
                            f"{writer.line}: nothing in <{etree.QName(part).localname}> may "
                            "repeat, so there is nothing to append")
                    self._add(self.root, part, multiple, writer, count, again)
                elif kind == "remove":
                    self._remove(self.root, part, writer)
                else:
                    self._default(self.root, part, writer)

    # -- schema --------------------------------------------------------------------------------
    def place(self, element: etree._Element) -> Place | None:
        try:
            return self._places[element]
        except KeyError:
            pass
        parent = element.getparent()
        parent_place = self.place(parent) if parent is not None else None
        found = self.table.child(parent_place, element.tag) \
            if parent_place is not None else None
        place = found[1] if found else None
        self._places[element] = place
        return place

    def may_repeat(self, parent: etree._Element, tag: str) -> bool:
        place = self.place(parent)
        if place is None:
            return False
        found = self.table.child(place, tag)
        return found is not None and found[0]

    def _repeats_within(self, parent: etree._Element, snippet: etree._Element) -> bool:
        """Whether ``snippet`` (placed under ``parent``) holds an element that may repeat."""
        place = self.place(parent)
        todo = [(place, snippet)]
        while todo:
            place, node = todo.pop()
            found = self.table.child(place, node.tag) if place is not None else None
            if found is None:
                continue
            if found[0]:
                return True
            todo.extend((found[1], child) for child in node)
        return False

    # -- ownership -----------------------------------------------------------------------------
    def _owners(self, element: etree._Element, key: str) -> list[Writer]:
        owners = self.owners.get((element, key))
        if owners:
            return owners
        node: etree._Element | None = element
        while node is not None:
            creator = self.created.get(node)
            if creator is not None:
                return [creator]
            node = node.getparent()
        return [self.input]

    @staticmethod
    def _contest(owner: Writer, writer: Writer,
                 describe: Callable[[], tuple[str, str]]) -> bool:
        """Whether ``writer`` prevails over ``owner``: the higher priority wins; a hard loser
        or a tie is a ``ProfileConflict`` naming both, the path and both values.
        ``describe()`` gives (what the writer wants, what the owner has), only for errors."""
        if owner.who == writer.who:
            return True  # a profile may refine its own earlier action
        if owner.priority > writer.priority:
            if writer.hard:
                wants, has = describe()
                raise ProfileConflict(
                    f"{writer.label} requires {wants} (hard), but {owner.label} of higher "
                    f"priority ({owner.priority} > {writer.priority}) {has}")
            return False
        if owner.hard:
            wants, has = describe()
            raise ProfileConflict(f"{writer.label} wants {wants}, but {owner.label} {has} as "
                                  "a hard constraint")
        if owner.priority == writer.priority:
            wants, has = describe()
            raise ProfileConflict(
                f"{owner.label} and {writer.label} clash at equal priority {writer.priority}: "
                f"one {has}, the other wants {wants}; give one of them a higher priority")
        return True

    def _may_change(self, element: etree._Element, key: str, writer: Writer,
                    old: str | None, new: str | None) -> bool:
        """Whether ``writer`` may replace the value at (element, key); raises on conflicts,
        returns False (after noting it) when a value of higher priority stays."""
        def describe() -> tuple[str, str]:
            where = self.path(element, key)
            return f"{where} = {new!r}", f"has {where} = {old!r}"

        for owner in self._owners(element, key):
            if not self._contest(owner, writer, describe):
                self._note(element, key, "kept", old, new, writer,
                           f"{owner.who} has priority {owner.priority}")
                return False
        return True

    def _own(self, element: etree._Element, key: str, writer: Writer) -> None:
        owners = self.owners.get((element, key))
        if owners is None:  # start from the implicit owner (the input or the creator)
            owners = self.owners[(element, key)] = list(self._owners(element, key))
        if writer not in owners:
            owners.append(writer)

    # -- primitive edits -------------------------------------------------------------------------
    def _set(self, element: etree._Element, key: str, value: str, writer: Writer,
             override: bool) -> None:
        """Set attribute ``@name`` or ``#text`` of ``element`` to ``value``."""
        if key == "#text":
            old = _text(element)
        else:
            old = element.get(key[1:])
        if old == value:
            self._own(element, key, writer)
            return
        if old is not None:
            if not override or not self._may_change(element, key, writer, old, value):
                return
        if key == "#text":
            element.text = value
        else:
            element.set(key[1:], value)
        self.owners[(element, key)] = [writer]
        self._note(element, key, "set", old, value, writer)

    def _merge_attrs(self, snippet: etree._Element, target: etree._Element, writer: Writer,
                     override: bool) -> None:
        for name, value in snippet.attrib.items():
            self._set(target, "@" + name, value, writer, override)
        text = _text(snippet)
        if text is not None:
            self._set(target, "#text", text, writer, override)

    def _append(self, parent: etree._Element, snippet: etree._Element, writer: Writer,
                shell: bool = False) -> etree._Element:
        """Append a copy of ``snippet`` (``shell``: without its children)."""
        for removed_parent, removed, remover in self.removed:
            # removers ran earlier, so never with a higher priority: only hard or tie matter
            if removed_parent is parent and _contains(snippet, removed):
                self._contest(remover, writer, lambda: (
                    f"{_short(snippet)} added at {self.path(parent)}/"
                    f"{etree.QName(snippet).localname}", "removed it"))
        if shell:
            element = etree.SubElement(parent, snippet.tag, dict(snippet.attrib))
            element.text = _text(snippet)
        else:
            element = snippet.__copy__()  # lxml copies the whole subtree
            parent.append(element)
        self.created[element] = writer
        self._note(element, "", "added", None, snippet, writer)
        return element

    # -- add -------------------------------------------------------------------------------------
    def _add(self, parent: etree._Element, snippet: etree._Element, multiple: str,
             writer: Writer, count: int, again: bool) -> None:
        tag = snippet.tag
        same = list(parent.iterchildren(tag))
        if self.may_repeat(parent, tag):
            if multiple == "yes":
                have = sum(1 for c in same if _contains(c, snippet)) if again else 0
                for _ in range(count - have):
                    self._append(parent, snippet, writer)
                return
            if multiple == "no":
                candidates = [c for c in same if all(
                    snippet.get(key) is None or c.get(key) == snippet.get(key)
                    for key in _IDENTITY)]
                if candidates:
                    self._adjust(snippet, candidates[0], multiple, writer, count, again)
                else:
                    self._append(parent, snippet, writer)
                return
            present = next((c for c in same if _contains(c, snippet)), None)
            if present is not None:  # already there: the writer now shares its values
                self._claim(snippet, present, writer)
                return
            for candidate in same:
                if self._fits(snippet, candidate):
                    self._adjust(snippet, candidate, "auto", writer, count, again,
                                 override=False)
                    return
            self._append(parent, snippet, writer)
            return
        if same:
            self._adjust(snippet, same[0], multiple, writer, count, again)
        elif multiple == "yes" and self._repeats_within(parent, snippet):
            # create the container, then the repeating part ``count`` times inside it
            self._adjust(snippet, self._append(parent, snippet, writer, shell=True),
                         multiple, writer, count, again)
        else:
            self._append(parent, snippet, writer)

    def _adjust(self, snippet: etree._Element, target: etree._Element, multiple: str,
                writer: Writer, count: int, again: bool, override: bool = True) -> None:
        self._merge_attrs(snippet, target, writer, override)
        for child in snippet:
            self._add(target, child, multiple, writer, count, again)

    def _claim(self, snippet: etree._Element, target: etree._Element, writer: Writer) -> None:
        """``target`` already holds ``snippet``'s values: record ``writer`` as their owner too
        (so that a hard add stays enforced when it found its values already present)."""
        for name in snippet.attrib:
            self._own(target, "@" + name, writer)
        if _text(snippet) is not None:
            self._own(target, "#text", writer)
        for child in snippet:
            match = next((c for c in target if _contains(c, child)), None)
            if match is not None:
                self._claim(child, match, writer)

    def _fits(self, snippet: etree._Element, target: etree._Element) -> bool:
        """Whether ``target`` can take ``snippet`` by filling only values it lacks."""
        for name, value in snippet.attrib.items():
            old = target.get(name)
            if old is not None and old != value:
                return False
        text, old_text = _text(snippet), _text(target)
        if text is not None and old_text is not None and text != old_text:
            return False
        for child in snippet:
            if self.may_repeat(target, child.tag):
                continue  # another one can always be added
            existing = next(target.iterchildren(child.tag), None)
            if existing is not None and not self._fits(child, existing):
                return False
        return True

    # -- remove ----------------------------------------------------------------------------------
    def _remove(self, parent: etree._Element, snippet: etree._Element, writer: Writer) -> None:
        same = list(parent.iterchildren(snippet.tag))
        if self.may_repeat(parent, snippet.tag) or len(snippet) == 0:
            for element in same:
                if _contains(element, snippet):
                    self._delete(parent, element, snippet, writer)
            return
        for element in same:
            if _contains_attrs(element, snippet):
                for child in snippet:
                    self._remove(element, child, writer)

    def _delete(self, parent: etree._Element, element: etree._Element,
                snippet: etree._Element, writer: Writer) -> None:
        def describe() -> tuple[str, str]:
            where = self.path(element)
            return f"{where} removed", f"has {where}"

        for node in element.iter(etree.Element):
            for key in ["", *("@" + a for a in node.attrib)]:
                for owner in self._owners(node, key):
                    if not self._contest(owner, writer, describe):
                        self._note(element, "", "kept", element, None, writer,
                                   f"{owner.who} has priority {owner.priority}")
                        return
        self._note(element, "", "removed", element, None, writer)
        leaving = set(element.iter(etree.Element))
        for index, (node, key, *rest, path) in enumerate(self._notes):
            if path is None and node in leaving:  # earlier notes on it: fix their paths now
                self._notes[index] = (node, key, *rest, self.path(node, key))  # type: ignore
        parent.remove(element)
        self.removed.append((parent, snippet, writer))

    # -- default ---------------------------------------------------------------------------------
    def _default(self, parent: etree._Element, snippet: etree._Element, writer: Writer) -> None:
        same = list(parent.iterchildren(snippet.tag))
        if self.may_repeat(parent, snippet.tag):
            targets = [c for c in same if _agrees(c, snippet)]
        elif same:
            targets = same[:1]
        elif not self._repeats_within(parent, snippet):
            # a missing element that may not repeat is a value to fill, and so is all of its
            # content when none of it may repeat: one copy
            self._append(parent, snippet, writer)
            return
        else:  # create it, then fill it from the snippet but without repeating elements
            targets = [self._append(parent, snippet, writer, shell=True)]
        for target in targets:
            self._merge_attrs(snippet, target, writer, override=False)
            for child in snippet:
                self._default(target, child, writer)

    # -- the report ------------------------------------------------------------------------------
    # Notes are cheap to take (no strings are made); the report is built when asked for.
    # An element as ``old``/``new`` stands for its start tag, taken now; paths are taken now
    # only for what leaves the tree.
    def _note(self, element: etree._Element, key: str, what: str,
              old: str | etree._Element | None, new: str | etree._Element | None,
              writer: Writer, note: str = "") -> None:
        if isinstance(old, etree._Element):
            old = _short(old)
        path = self.path(element, key) if what == "removed" else None
        self._notes.append((element, key, what, old, new, writer, note, path))

    @property
    def changes(self) -> list[Change]:
        """The report so far; paths as the elements stand now (removed ones: as they stood)."""
        report = []
        for element, key, what, old, new, writer, note, path in self._notes:
            if path is None:
                path = self.path(element, key)
            if isinstance(new, etree._Element):
                new = _short(new)
            report.append(Change(path, what, old, new, writer.who, writer.action, note))
        return report

    # -- paths -----------------------------------------------------------------------------------
    def path(self, element: etree._Element, key: str = "") -> str:
        """An XPath naming ``element`` (and attribute or text ``key``) in the tree."""
        path = element.getroottree().getpath(element)
        if key == "#text":
            return path + "/text()"
        return path + ("/" + key if key else "")


def _contains(target: etree._Element, snippet: etree._Element) -> bool:
    """Whether ``target`` contains everything ``snippet`` says (more is fine)."""
    if target.tag != snippet.tag or not _contains_attrs(target, snippet):
        return False
    used: list[etree._Element] = []
    for child in snippet:
        match = next((c for c in target if c not in used and _contains(c, child)), None)
        if match is None:
            return False
        used.append(match)
    return True


def _contains_attrs(target: etree._Element, snippet: etree._Element) -> bool:
    attrib = target.attrib
    for name, value in snippet.attrib.items():
        if attrib.get(name) != value:
            return False
    text = _text(snippet)
    return text is None or text == _text(target)


def _agrees(target: etree._Element, snippet: etree._Element) -> bool:
    """For ``default``: no attribute of ``snippet`` has another value in ``target``."""
    attrib = target.attrib
    for name, value in snippet.attrib.items():
        old = attrib.get(name)
        if old is not None and old != value:
            return False
    return True


def iter_elements(snippet: tuple[etree._Element, ...]) -> Iterator[etree._Element]:
    for root in snippet:
        yield from root.iter(etree.Element)
