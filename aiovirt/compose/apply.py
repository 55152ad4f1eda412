"""The actions' semantics: applying ``add`` / ``remove`` / ``default`` plans to a domain tree,
with ownership of every value so that priorities and hard constraints can be enforced, and a
record of every change for the explain report.

Actions apply to the document as it stands, the input's own elements and values included
(the libvirt-profiles design).  Whether an element may repeat under its parent comes from
libvirt's schema, resolved when the action was compiled (``plan.py``):

* ``add multiple='yes'`` appends ``count`` copies at the outermost element of the snippet that
  may repeat (there must be one); ancestors that may not repeat are found or created.
* ``add multiple='auto'`` (the default): an element that may repeat is left alone if one that
  already contains the snippet exists, filled in if one exists that lacks only values the
  snippet has, and appended otherwise; elements that may not repeat are adjusted, overriding
  values.
* ``add multiple='no'`` adjusts the first existing element of that tag (of the same ``type``
  and ``name`` where the snippet names them) instead of appending, overriding values; the
  other such elements that hold nothing the snippet does not set are removed (libvirt writes
  one ``<vcpusched>`` per vCPU back: recomposed, they become the snippet's one).
* ``remove`` deletes every element that contains the snippet (more attributes or children
  still match): the outermost element of the snippet that may repeat, or the snippet's leaves
  when nothing in it repeats.
* ``default`` only fills what is missing: attributes, text and children that may not repeat,
  in every element that agrees with the snippet's attributes; it never adds an element that
  may repeat and never overrides the input.

Every attribute, text and element written belongs to a *writer* (a profile action, or the
input document).  Between profiles, priorities arbitrate: a writer of higher priority may
override (a ``default`` too, over another profile's value), a hard value may not be
overridden, removed or re-added against a hard ``remove`` by another profile, and two writers
of equal priority that disagree clash (``ProfileConflict``): different values (two defaults
too, where the input's value stands), or a remove and what brings a match back, whatever the
order and the input; a soft default yields to an add of equal priority instead.  The input is no party to this:
its values are simply what the actions work on.  In *input-wins* mode (aiovirt 0.1's rules)
the input is a writer of priority ``input_priority`` instead: profiles below it keep their
hands off its values ("kept" in the report), and a hard value it contradicts is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from lxml import etree

from ..xml.safe import MAX_BYTES
from .errors import ComposeError, ProfileConflict
from .plan import TEXT, ActionPlan, Node

__all__ = ["Applier", "Change", "Writer"]

INPUT = "input"
_NONE: tuple[()] = ()


class _Every:
    def __contains__(self, item: object) -> bool:
        return True


_EVERY = _Every()
LOWEST = -(2 ** 63)  # the input's priority when actions apply to it (the default mode)


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
    ``old`` is the value (or, for a removed element, the element) before, ``new`` after;
    ``replaced`` says whose value ``old`` was: "input" for the input document's own, else
    the profile that wrote it (None for additions).
    """

    path: str
    what: str
    old: str | None
    new: str | None
    profile: str
    action: str
    note: str = ""
    replaced: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "what": self.what, "old": self.old, "new": self.new,
                "profile": self.profile, "action": self.action, "note": self.note,
                "replaced": self.replaced}

    def __str__(self) -> str:
        old = "(none)" if self.old is None else repr(self.old)
        new = "(none)" if self.new is None else repr(self.new)
        text = f"{self.profile} {self.action}: {self.what} {self.path}"
        if self.what in ("set", "kept"):
            text += f": {old} -> {new}"
        elif self.what == "added" and self.new:
            text += f" {self.new}"
        elif self.what == "removed" and self.old:
            text += f": was {self.old}"
        notes = [self.note] if self.note else []
        if self.replaced == INPUT and self.what in ("set", "removed"):
            notes.append("the input's")
        return text + (f" ({', '.join(notes)})" if notes else "")


def _short(element: etree._Element) -> str:
    """An element's start tag, for the report: ``<video type='qxl'>`` (``<vcpu>2</vcpu>``
    for one that holds only text)."""
    name = etree.QName(element).localname
    attrs = "".join(f" {k}='{v}'" for k, v in element.attrib.items())
    text = _text(element)
    return f"<{name}{attrs}>" if text is None else f"<{name}{attrs}>{text}</{name}>"


SHOWN = 240   # characters of an added or removed element the report shows


def _whole(element: etree._Element) -> str:
    """An element with its content, on one line, for an addition or removal in the report
    (cut at ``SHOWN`` characters, ending in "...")."""
    if element.nsmap:   # declarations in scope that it does not use: not shown
        element = element.__copy__()
        etree.cleanup_namespaces(element)
    text = etree.tostring(element, encoding="unicode", with_tail=False)
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."


def _text(element: etree._Element) -> str | None:
    text = element.text
    if text is None or len(element):
        return None
    text = text.strip()
    return text or None


class Applier:
    """Applies action plans to one domain tree, keeping ownership and the report.

    ``input_wins``: aiovirt 0.1's rules, the input as a writer of ``input_writer.priority``;
    otherwise the input's values belong to no one and every action may change them."""

    def __init__(self, root: etree._Element, input_writer: Writer,
                 input_wins: bool = False) -> None:
        self.root = root
        self.input = input_writer
        self.input_wins = input_wins
        self.owners: dict[tuple[etree._Element, str], list[Writer]] = {}
        self.created: dict[etree._Element, Writer] = {}
        self.removed: list[tuple[etree._Element, Node, Writer]] = []
        self.forbidden: list[tuple[tuple[Node, ...], Writer]] = []  # hard removes
        # soft removes at shared priorities, with what they left (kept by a higher owner):
        # an equal-priority profile that then brings a match back clashes with them
        self.ties: list[tuple[tuple[Node, ...], Writer, list[etree._Element]]] = []
        # the values defaults at shared priorities want, met or not: (writer, value)
        self.wishes: dict[tuple[etree._Element, str], list[tuple[Writer, str]]] = {}
        # priorities that more than one profile has: where a soft claim can still clash
        # (profiles apply in rising priority); None: assume every one
        self.shared: Container[int] = _EVERY
        self._notes: list[tuple[etree._Element, str, str, str | None,
                                str | etree._Element | None, Writer, str, str | None,
                                str | None]] = []
        # the notes whose path is worked out when the report is made, by element: a removal
        # fixes its elements' paths first (looking them up, not scanning every note)
        self._pathless: dict[etree._Element, list[int]] = {}

        # children by tag, per element looked into: lxml's iterchildren(tag) costs some
        # 7000 machine instructions a call, an element's tag some 1500; every change to the
        # tree goes through this class, which keeps the index right
        self._index: dict[etree._Element, dict[Any, list[etree._Element]]] = {}
        # about the bytes of XML added so far: a composition may add no more than a document
        # holds (each action is bounded on its own; many profiles together must be too)
        self._added = 0

    def same(self, parent: etree._Element, tag: str) -> list[etree._Element]:
        """``parent``'s children named ``tag``, in document order (do not modify)."""
        index = self._index.get(parent)
        if index is None:
            index = self._indexed(parent)
        return index.get(tag, _NONE)  # type: ignore[return-value]

    def first(self, parent: etree._Element, tag: str) -> etree._Element | None:
        """``parent``'s first child named ``tag``."""
        index = self._index.get(parent)
        if index is None:
            index = self._indexed(parent)
        found = index.get(tag)
        return found[0] if found else None

    def _indexed(self, parent: etree._Element) -> dict[Any, list[etree._Element]]:
        index: dict[Any, list[etree._Element]] = {}
        for child in parent:
            tag = child.tag
            found = index.get(tag)
            if found is None:
                index[tag] = [child]
            else:
                found.append(child)
        self._index[parent] = index
        return index

    def has(self, target: etree._Element, node: Node) -> bool:
        """Whether ``target`` contains everything ``node`` says (more is fine)."""
        if not _contains_attrs(target, node):
            return False
        if not node.children:
            return True
        used: list[etree._Element] = []
        for child in node.children:
            match = next((c for c in self.same(target, child.tag)
                          if c not in used and self.has(c, child)), None)
            if match is None:
                return False
            used.append(match)
        return True

    def fits(self, node: Node, target: etree._Element) -> bool:
        """Whether ``target`` can take ``node`` by filling only values it lacks."""
        if not _agrees(target, node):
            return False
        if node.text is not None:
            old_text = _text(target)
            if old_text is not None and old_text != node.text:
                return False
        for child in node.children:
            if child.repeats:
                continue  # another one can always be added
            existing = self.first(target, child.tag)
            if existing is not None and not self.fits(child, existing):
                return False
        return True

    def find(self, parent: etree._Element, node: Node) -> etree._Element | None:
        """The first element ``remove`` of ``node`` would delete under ``parent``, if any."""
        if node.repeats or not node.children:
            return next((e for e in self.same(parent, node.tag) if self.has(e, node)), None)
        for element in self.same(parent, node.tag):
            if _contains_attrs(element, node):
                for child in node.children:
                    found = self.find(element, child)
                    if found is not None:
                        return found
        return None

    def find_all(self, parent: etree._Element, node: Node) -> list[etree._Element]:
        """Every element ``remove`` of ``node`` would delete under ``parent``."""
        if node.repeats or not node.children:
            return [e for e in self.same(parent, node.tag) if self.has(e, node)]
        found: list[etree._Element] = []
        for element in self.same(parent, node.tag):
            if _contains_attrs(element, node):
                for child in node.children:
                    found += self.find_all(element, child)
        return found

    # -- entry point -----------------------------------------------------------------------
    def apply(self, plan: ActionPlan, writer: Writer, again: bool = False) -> None:
        """Apply one action's plan.

        ``again``: this profile was applied to this domain before (its record says so), so an
        ``add multiple='yes'`` only tops up to ``count`` copies instead of adding more."""
        kind, root = plan.kind, self.root
        if plan.root is not None:
            if kind == "remove":
                self._remove_attrs(plan.root, root, writer)
            else:
                self._merge_attrs(plan.root, root, writer, kind == "add")
        if kind == "add":
            multiple, count = plan.multiple, plan.count
            for part in plan.parts:
                if multiple == "yes" and not part.within:
                    raise ComposeError(
                        f"{writer.who}: <add multiple='yes'> at {writer.source}:"
                        f"{writer.line}: nothing in <{etree.QName(part.tag).localname}> may "
                        "repeat, so there is nothing to append")
                self._add(root, part, multiple, writer, count, again)
        elif kind == "remove":
            for part in plan.parts:
                self._remove(root, part, writer)
        else:
            for part in plan.parts:
                self._default(root, part, writer)
        if self.forbidden:
            self._check_forbidden(writer)
        if self.ties:
            self._check_ties(writer)
        if kind == "remove" and writer.hard and plan.parts:
            self.forbidden.append((plan.parts, writer))
        elif kind == "remove" and plan.parts and writer.priority in self.shared:
            left = [e for part in plan.parts for e in self.find_all(root, part)]
            self.ties.append((plan.parts, writer, left))

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

    def _contest(self, owner: Writer, writer: Writer,
                 describe: Callable[[], tuple[str, str]]) -> bool:
        """Whether ``writer`` prevails over ``owner``: the higher priority wins; a hard loser
        or a tie is a ``ProfileConflict`` naming both, the path and both values.
        ``describe()`` gives (what the writer wants, what the owner has), only for errors."""
        if owner.who == writer.who:
            return True  # a profile may refine its own earlier action
        if owner is self.input and not self.input_wins:
            return True  # the input is what actions work on, not a party
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
            # a soft default yields to an add: it only fills what nothing else says, so the
            # two do not disagree (whichever applied first, the add's value stands)
            if owner.action == "default" and writer.action.startswith("add"):
                return True
            if writer.action == "default" and not writer.hard and \
                    owner.action.startswith("add"):
                return False
            wants, has = describe()
            raise ProfileConflict(
                f"{owner.label} and {writer.label} clash at equal priority {writer.priority}: "
                f"one {has}, the other wants {wants}; give one of them a higher priority")
        return True

    def _may_change(self, element: etree._Element, key: str, writer: Writer,
                    old: str | None, new: str | None, owners: list[Writer]) -> bool:
        """Whether ``writer`` may replace the value at (element, key); raises on conflicts,
        returns False (after noting it) when a value of higher priority stays."""
        def describe() -> tuple[str, str]:
            where = self.path(element, key)
            return f"{where} = {new!r}", f"has {where} = {old!r}"

        for owner in owners:
            if not self._contest(owner, writer, describe):
                self._note(element, key, "kept", old, new, writer,
                           f"{owner.who} has priority {owner.priority}"
                           if owner.priority != writer.priority else
                           f"a default yields to {owner.who}'s add of equal priority")
                return False
        return True

    def _own(self, element: etree._Element, key: str, writer: Writer) -> None:
        """Record ``writer`` as an owner of a value it found already set as it wants it."""
        if not writer.hard and writer.priority not in self.shared:
            return  # only later writers of higher priority can come: they prevail anyway
        owners = self.owners.get((element, key))
        if owners is None:  # start from the implicit owner (the input or the creator)
            owners = self.owners[(element, key)] = list(self._owners(element, key))
        if writer not in owners:
            owners.append(writer)

    # -- primitive edits -------------------------------------------------------------------------
    def _set(self, element: etree._Element, name: str | None, key: str, value: str,
             writer: Writer, override: bool) -> None:
        """Set attribute ``name`` (ownership key "@name") or, with ``name`` None, the text of
        ``element`` to ``value``; without ``override`` (a default) only where it is missing,
        or (outside input-wins mode) where a profile of lower priority wrote it."""
        old = element.get(name) if name is not None else _text(element)
        if not override and writer.priority in self.shared:
            self._wish(element, key, value, writer)
        if old == value:
            self._own(element, key, writer)
            return
        replaced = None
        if old is not None:
            owners = self._owners(element, key)
            if not override and (self.input_wins or owners[0] is self.input):
                return  # a default never overrides the input
            if not self._may_change(element, key, writer, old, value, owners):
                return
            replaced = owners[0].who
        if name is None:
            element.text = value
        else:
            element.set(name, value)
        self.owners[(element, key)] = [writer]
        self._add_note((element, key, "set", old, value, writer, "", None, replaced))

    def _wish(self, element: etree._Element, key: str, value: str, writer: Writer) -> None:
        """Two defaults of equal priority that want different values clash whether or not
        the input already has a value (then neither writes, but they still disagree)."""
        wishes = self.wishes.setdefault((element, key), [])
        for other, wanted in wishes:
            if other.priority == writer.priority and other.who != writer.who and \
                    wanted != value:
                where = self.path(element, key)
                raise ProfileConflict(
                    f"{other.label} and {writer.label} clash at equal priority "
                    f"{writer.priority}: one wants {where} = {wanted!r}, the other "
                    f"{value!r}; give one of them a higher priority")
        wishes.append((writer, value))

    def _merge_attrs(self, node: Node, target: etree._Element, writer: Writer,
                     override: bool) -> None:
        for name, key, value in node.attrs:
            self._set(target, name, key, value, writer, override)
        if node.text is not None:
            self._set(target, None, TEXT, node.text, writer, override)

    def _remove_attrs(self, node: Node, target: etree._Element, writer: Writer) -> None:
        """``<remove><domain attr='value'/></remove>``: drop the root's matching attributes."""
        for name, key, value in node.attrs:
            if target.get(name) != value:
                continue
            owners = self._owners(target, key)
            if not self._may_change(target, key, writer, value, None, owners):
                continue
            del target.attrib[name]
            self.owners[(target, key)] = [writer]
            self._note(target, key, "set", value, None, writer, replaced=owners[0].who)

    def _append(self, parent: etree._Element, node: Node, writer: Writer,
                shell: bool = False) -> etree._Element:
        """Append a copy of ``node``'s element (``shell``: without its children)."""
        for removed_parent, removed, remover in self.removed:
            # removers ran earlier, so never with a higher priority: only hard or tie matter
            if removed_parent is parent and _contains(node.element, removed):
                self._contest(remover, writer, lambda: (
                    f"{_short(node.element)} added at {self.path(parent)}/"
                    f"{etree.QName(node.tag).localname}", "removed it"))
        size = node.size - sum(c.size for c in node.children) if shell else node.size
        self._added += size
        if self._added > MAX_BYTES:
            raise ComposeError(
                f"{writer.label} at {writer.source}:{writer.line}: with it the profiles add "
                f"more than {MAX_BYTES} bytes of XML to the domain, over the limit for a "
                "document")
        if shell:
            element = etree.SubElement(parent, node.tag, {n: v for n, _, v in node.attrs})
            element.text = node.text
        else:
            element = node.element.__copy__()  # lxml copies the whole subtree
            parent.append(element)
        index = self._index.get(parent)
        if index is not None:
            found = index.get(node.tag)
            if found is None:
                index[node.tag] = [element]
            else:
                found.append(element)
        if shell or not node.children:
            self._index[element] = {}
        self.created[element] = writer
        # the report shows what was added: the snippet's element whole, a shell's start tag
        self._add_note((element, "", "added", None, node if shell else node.element, writer,
                        "", None, None))
        return element

    # -- add -------------------------------------------------------------------------------------
    def _add(self, parent: etree._Element, node: Node, multiple: str, writer: Writer,
             count: int, again: bool) -> None:
        if node.repeats:
            if multiple == "auto":
                same = self.same(parent, node.tag)
                if same:
                    for candidate in same:
                        if self.has(candidate, node):  # already there: the writer shares it
                            self._claim(node, candidate, writer)
                            return
                    for candidate in same:
                        if self.fits(node, candidate):
                            self._adjust(node, candidate, multiple, writer, count, again, False)
                            return
                self._append(parent, node, writer)
            elif multiple == "yes":
                have = sum(1 for c in self.same(parent, node.tag) if self.has(c, node)) \
                    if again else 0
                for _ in range(count - have):
                    self._append(parent, node, writer)
            else:
                identity = node.identity
                targets = [c for c in self.same(parent, node.tag)
                           if all(c.get(k) == v for k, v in identity)]
                if targets:
                    self._adjust(node, targets[0], multiple, writer, count, again, True)
                    self._drop_duplicates(parent, targets[1:], node, writer)
                else:
                    self._append(parent, node, writer)
            return
        existing = self.first(parent, node.tag)
        if existing is not None:
            self._adjust(node, existing, multiple, writer, count, again, True)
        elif multiple == "yes" and node.within:
            # create the container, then the repeating part ``count`` times inside it
            self._adjust(node, self._append(parent, node, writer, shell=True),
                         multiple, writer, count, again, True)
        else:
            self._append(parent, node, writer)

    def _adjust(self, node: Node, target: etree._Element, multiple: str, writer: Writer,
                count: int, again: bool, override: bool) -> None:
        if node.attrs or node.text is not None:
            self._merge_attrs(node, target, writer, override)
        elif not node.children:
            self._own(target, "", writer)   # a bare <acpi/>: its presence is the value
        for child in node.children:
            self._add(target, child, multiple, writer, count, again)

    def _drop_duplicates(self, parent: etree._Element, others: list[etree._Element],
                         node: Node, writer: Writer) -> None:
        """``multiple='no'`` keeps one: the other elements it could have adjusted go when the
        snippet sets all they hold (libvirt's one ``<vcpusched>`` per vCPU)."""
        for other in others:
            if _covered(other, node):
                self._delete(parent, other, node, writer, forbid=False)

    def _claim(self, node: Node, target: etree._Element, writer: Writer) -> None:
        """``target`` already holds ``node``'s values: record ``writer`` as their owner too
        (so that a hard add stays enforced when it found its values already present); an
        element the snippet gives neither attributes, text nor children is owned itself."""
        for _, key, _ in node.attrs:
            self._own(target, key, writer)
        if node.text is not None:
            self._own(target, TEXT, writer)
        elif not node.attrs and not node.children:
            self._own(target, "", writer)
        for child in node.children:
            match = next((c for c in self.same(target, child.tag) if self.has(c, child)), None)
            if match is not None:
                self._claim(child, match, writer)

    # -- remove ----------------------------------------------------------------------------------
    def _remove(self, parent: etree._Element, node: Node, writer: Writer) -> None:
        if node.repeats or not node.children:
            for element in list(self.same(parent, node.tag)):
                if self.has(element, node):
                    self._delete(parent, element, node, writer)
            return
        for element in list(self.same(parent, node.tag)):
            if _contains_attrs(element, node):
                for child in node.children:
                    self._remove(element, child, writer)

    def _delete(self, parent: etree._Element, element: etree._Element, node: Node,
                writer: Writer, forbid: bool = True) -> None:
        """Remove ``element`` unless an owner of higher priority keeps it; ``forbid``: a
        profile adding a match back afterwards contests with ``writer`` (a remove's)."""
        def describe() -> tuple[str, str]:
            where = self.path(element)
            return f"{where} removed", f"has {where}"

        if self.owners or self.created or self.input_wins:  # else: all the input's
            for inner in element.iter(etree.Element):
                for key in ["", *("@" + a for a in inner.attrib)]:
                    for owner in self._owners(inner, key):
                        if not self._contest(owner, writer, describe):
                            self._note(element, "", "kept", element, None, writer,
                                       f"{owner.who} has priority {owner.priority}")
                            return
        replaced = self._owners(element, "")[0].who
        self._note(element, "", "removed", _whole(element), None, writer, replaced=replaced)
        for inner in element.iter(etree.Element):   # earlier notes on it: fix their paths now
            for index in self._pathless.pop(inner, ()):
                _, key, *rest, _, was = self._notes[index]
                self._notes[index] = (inner, key, *rest, self.path(inner, key), was)  # type: ignore
        parent.remove(element)
        self._index[parent][node.tag].remove(element)  # found through the index
        if forbid:
            self.removed.append((parent, node, writer))

    def _check_forbidden(self, writer: Writer) -> None:
        """A hard ``remove`` holds for the rest of the composition: what another profile
        brings back (adds, or makes match by changing values) is a conflict."""
        for parts, remover in self.forbidden:
            if remover.who == writer.who:
                continue
            for part in parts:
                found = self.find(self.root, part)
                if found is not None:
                    raise ProfileConflict(
                        f"{writer.label} puts back {self.path(found)} ({_short(found)}), but "
                        f"{remover.label} removes it as a hard constraint")

    def _check_ties(self, writer: Writer) -> None:
        """A soft ``remove`` and a profile of equal priority that brings a match back
        disagree, whether or not the remove found anything to delete."""
        for parts, remover, left in self.ties:
            if remover.who == writer.who or remover.priority != writer.priority:
                continue
            for part in parts:
                for found in self.find_all(self.root, part):
                    if found not in left:
                        raise ProfileConflict(
                            f"{remover.label} and {writer.label} clash at equal priority "
                            f"{writer.priority}: one removes {self.path(found)} "
                            f"({_short(found)}), the other puts it there; give one of them "
                            "a higher priority")

    # -- default ---------------------------------------------------------------------------------
    def _default(self, parent: etree._Element, node: Node, writer: Writer) -> None:
        if node.repeats:
            targets = [c for c in self.same(parent, node.tag) if _agrees(c, node)]
        else:
            existing = self.first(parent, node.tag)
            if existing is None:
                if not node.within:
                    # a missing element that may not repeat is a value to fill, and so is all
                    # of its content when none of it may repeat: one copy
                    self._append(parent, node, writer)
                    return
                # create it, then fill it from the snippet but without repeating elements
                existing = self._append(parent, node, writer, shell=True)
            targets = [existing]
        fill = bool(node.attrs) or node.text is not None
        bare = not fill and not node.children
        for target in targets:
            if fill:
                self._merge_attrs(node, target, writer, False)
            elif bare:
                self._own(target, "", writer)   # found present: a hard default holds it too
            for child in node.children:
                self._default(target, child, writer)

    # -- the report ------------------------------------------------------------------------------
    # Notes are cheap to take (no strings are made); the report is built when asked for.
    # An element as ``old`` stands for its start tag, taken now; an added element is shown
    # whole (the snippet's copy, which nothing changes); paths are taken now only for what
    # leaves the tree.
    def _note(self, element: etree._Element, key: str, what: str,
              old: str | etree._Element | None, new: str | etree._Element | None,
              writer: Writer, note: str = "", replaced: str | None = None) -> None:
        if isinstance(old, etree._Element):
            old = _short(old)
        path = self.path(element, key) if what == "removed" else None
        self._add_note((element, key, what, old, new, writer, note, path, replaced))

    def _add_note(self, entry: tuple[Any, ...]) -> None:
        if entry[7] is None:   # its path: later
            self._pathless.setdefault(entry[0], []).append(len(self._notes))
        self._notes.append(entry)  # type: ignore[arg-type]

    @property
    def changes(self) -> list[Change]:
        """The report so far; paths as the elements stand now (removed ones: as they stood)."""
        report = []
        for element, key, what, old, new, writer, note, path, replaced in self._notes:
            if path is None:
                path = self.path(element, key)
            if isinstance(new, etree._Element):
                new = _whole(new)
            elif isinstance(new, Node):
                new = _short(new.element)
            report.append(Change(path, what, old, new, writer.who, writer.action, note,
                                 replaced))
        return report

    # -- paths -----------------------------------------------------------------------------------
    def path(self, element: etree._Element, key: str = "") -> str:
        """An XPath naming ``element`` (and attribute or text ``key``) in the tree."""
        path = element.getroottree().getpath(element)
        if key == TEXT:
            return path + "/text()"
        return path + ("/" + key if key else "")


def _contains(target: etree._Element, node: Node) -> bool:
    """Whether ``target`` contains everything ``node`` says (more is fine)."""
    if target.tag != node.tag or not _contains_attrs(target, node):
        return False
    if not node.children:
        return True
    used: list[etree._Element] = []
    for child in node.children:
        match = next((c for c in target.iterchildren(child.tag)
                      if c not in used and _contains(c, child)), None)
        if match is None:
            return False
        used.append(match)
    return True


def _contains_attrs(target: etree._Element, node: Node) -> bool:
    for name, _, value in node.attrs:
        if target.get(name) != value:
            return False
    return node.text is None or node.text == _text(target)


def _covered(element: etree._Element, node: Node) -> bool:
    """Whether snippet ``node`` sets everything ``element`` holds (attributes, text and
    children, recursively): adjusted to ``node``, it would hold nothing of its own."""
    names = {name for name, _, _ in node.attrs}
    if any(name not in names for name in element.attrib):
        return False
    if node.text is None and _text(element) is not None:
        return False
    return all(any(c.tag == child.tag and _covered(child, c) for c in node.children)
               for child in element.iterchildren(etree.Element))


def _agrees(target: etree._Element, node: Node) -> bool:
    """For ``default``: no attribute of ``node`` has another value in ``target``."""
    for name, _, value in node.attrs:
        old = target.get(name)
        if old is not None and old != value:
            return False
    return True
