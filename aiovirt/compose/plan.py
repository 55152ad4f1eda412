"""Profiles compiled once into plans, so that composing a domain only walks prepared data.

A snippet element becomes a ``Node``: its tag, attributes, text and children read out of lxml
once, with what libvirt's schema says about it where it stands (may it repeat under its
parent; may anything in it repeat) resolved ahead.  An action with its parameter values
becomes an ``ActionPlan``; a profile becomes a ``ProfilePlan`` (parameter types, the typed
defaults its ``<match test=>`` sees, its ``<match>`` snippets and compiled ``select=``
expressions).  Plans are immutable and cached: one per action and parameter values, one per
profile, for the life of the process (profiles themselves are immutable).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lxml import etree

from ..xml.safe import MAX_BYTES
from .errors import ParameterError
from .profile import MAX_COUNT, PLACEHOLDER, Action, Profile, When
from .schema import Place, RepeatTable, repeat_table

__all__ = ["ActionPlan", "Node", "ProfilePlan", "TEXT", "action_plan", "compile_node",
           "profile_plan", "typed"]

TEXT = "#text"  # the ownership key of an element's text (attributes are "@name")
# With multiple='no', the element adjusted must agree on these where the snippet sets them:
# libvirt's discriminators (a controller's or channel's type, a timer's or feature's name).
_IDENTITY = ("type", "name")


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """One snippet element, ready to apply.

    ``attrs``: (name, ownership key "@name", value); ``text``: its text when it has no
    children; ``repeats``: the schema lets it occur more than once under its parent;
    ``within``: it or an element below it may repeat; ``identity``: the ``type``/``name``
    it sets; ``element``: the snippet element itself, copied when the node is added whole;
    ``size``: about the bytes of XML it adds (its children's included), for the budget of
    one composition."""

    tag: str
    attrs: tuple[tuple[str, str, str], ...]
    text: str | None
    children: tuple[Node, ...]
    repeats: bool
    within: bool
    identity: tuple[tuple[str, str], ...]
    element: etree._Element
    size: int


def _text(element: etree._Element) -> str | None:
    text = element.text
    if text is None or len(element):
        return None
    text = text.strip()
    return text or None


def compile_node(element: etree._Element, parent: Place | None,
                 table: RepeatTable) -> Node:
    """``element`` (standing under an element at schema place ``parent``) as a ``Node``; a
    ``<domain>`` element stands for the root itself."""
    if element.tag == "domain":
        repeats, place = False, table.root
    else:
        found = table.child(parent, element.tag) if parent is not None else None
        repeats, place = (found[0], found[1]) if found is not None else (False, None)
    children = tuple(compile_node(child, place, table) for child in element
                     if isinstance(child.tag, str))
    attrs = tuple((name, "@" + name, value) for name, value in element.attrib.items())
    identity = tuple((key, element.get(key)) for key in _IDENTITY
                     if element.get(key) is not None)
    text = _text(element)
    size = (2 * len(element.tag) + 5 + len(text or "")
            + sum(len(name) + len(value) + 4 for name, _, value in attrs)
            + sum(child.size for child in children))
    return Node(element.tag, attrs, text, children, repeats,
                repeats or any(c.within for c in children), identity, element, size)


@dataclass(frozen=True, slots=True, eq=False)
class ActionPlan:
    """An action with its parameters filled in: ``root`` holds the attributes of a
    ``<domain>`` snippet (None when there is none), ``parts`` the elements below ``<domain>``."""

    action: Action
    root: Node | None
    parts: tuple[Node, ...]
    count: int
    kind: str = ""       # the action's, at hand
    multiple: str = ""


@functools.lru_cache(maxsize=8192)
def action_plan(action: Action, items: tuple[tuple[str, str], ...], profile_id: str
                ) -> ActionPlan:
    """The plan of ``action`` with parameter values ``items`` (sorted name/value pairs; only
    consulted when the action holds ``${...}``)."""
    table = repeat_table()
    snippet, count = _substituted(action, items, profile_id) if action.templated \
        else (action.snippet, int(action.count))
    root = None
    parts: list[Node] = []
    for element in snippet:
        node = compile_node(element, table.root, table)
        if element.tag == "domain":
            root = node if node.attrs or node.text is not None else root
            parts.extend(node.children)
        else:
            parts.append(node)
    return ActionPlan(action, root, tuple(parts), count, action.kind, action.multiple)


def _substituted(action: Action, items: tuple[tuple[str, str], ...], profile_id: str
                 ) -> tuple[tuple[etree._Element, ...], int]:
    """The action's snippet and count with ``${...}`` filled in (new elements, the action's
    own are left alone)."""
    params = dict(items)

    def fill(text: str) -> str:
        return PLACEHOLDER.sub(lambda m: params[m.group(1)], text)

    snippet = []
    for root in action.snippet:
        root = copy.deepcopy(root)
        for element in root.iter(etree.Element):
            for key, value in element.attrib.items():
                if "${" in value:
                    element.set(key, fill(value))
            if element.text and "${" in element.text:
                element.text = fill(element.text)
        snippet.append(root)
    try:
        count = int(fill(action.count))
    except ValueError:
        raise ParameterError(f"profile {profile_id} line {action.line}: count="
                             f"{fill(action.count)!r} is not an integer") from None
    if count < 0:
        raise ParameterError(f"profile {profile_id} line {action.line}: count={count} is "
                             "negative")
    if count > MAX_COUNT:
        raise ParameterError(f"profile {profile_id} line {action.line}: count={count} is "
                             f"more than {MAX_COUNT}")
    size = sum(len(etree.tostring(root)) for root in snippet) * max(count, 1)
    if size > MAX_BYTES:   # checked before the copies are made: they would take the memory
        raise ParameterError(f"profile {profile_id} line {action.line}: with these parameters "
                             f"it adds {size} bytes of XML, over the limit of {MAX_BYTES} for "
                             "a document")
    return tuple(snippet), count


@dataclass(frozen=True, slots=True, eq=False)
class ProfilePlan:
    """What composition needs of a profile besides its actions, looked up once."""

    profile: Profile
    types: Mapping[str, str]                          # parameter name -> string/int/bool
    match_variables: Mapping[str, Any]                # typed defaults, for <match test=>
    match: tuple[tuple[Node | When, ...], ...]        # each group: snippets and tests
    selects: Mapping[str, etree.XPath]                # parameter name -> select= compiled


@functools.lru_cache(maxsize=2048)
def profile_plan(profile: Profile) -> ProfilePlan:
    """The plan of ``profile`` (cached: profiles are immutable)."""
    table = repeat_table()
    types = {p.name: p.type for p in profile.params}
    defaults = {p.name: p.default for p in profile.params if p.default is not None}
    match = tuple(tuple(part if isinstance(part, When) else
                        compile_node(part, table.root, table) for part in group)
                  for group in profile.match)
    selects = {p.name: etree.XPath(p.select, namespaces=profile.namespaces, regexp=False,
                                   smart_strings=False)
               for p in profile.params if p.select is not None}
    return ProfilePlan(profile, types, typed(types, defaults), match, selects)


def typed(types: Mapping[str, str], params: Mapping[str, str]) -> dict[str, Any]:
    """Parameter values as XPath sees them: numbers for ints, booleans for bools."""
    result: dict[str, Any] = {}
    for name, value in params.items():
        kind = types.get(name, "string")
        result[name] = int(value) if kind == "int" else (value == "yes") if kind == "bool" \
            else value
    return result


# -- conditions that do not read the domain ------------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:
    (?P<literal>"[^"]*"|'[^']*')
  | (?P<number>\d+(?:\.\d*)?|\.\d+)
  | (?P<var>\$[A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?)
  | (?P<op>//|::|\.\.|!=|<=|>=|[/.@=<>|+\-,()\[\]*])
  | (?P<name>[A-Za-z_][\w.\-]*(?::(?:[A-Za-z_][\w.\-]*|\*))?)
  )""", re.VERBOSE)
_NODE_TYPES = {"node", "text", "comment", "processing-instruction"}
# functions that read the context node when called without arguments, or always
_CONTEXT_FUNCTIONS = {"string", "number", "name", "local-name", "namespace-uri",
                      "normalize-space", "string-length", "position", "last"}
_ALWAYS_CONTEXT = {"id", "lang"}
# after these (or at the start), '*' and names are node tests, '/' starts an absolute path
_BEFORE_TEST = (None, "lparen", "open", "comma", "operator", "slash", "axis")


_VARIABLE = re.compile(r"\$([A-Za-z_][\w.\-]*)")


@functools.lru_cache(maxsize=4096)
def variables_of(expression: str) -> tuple[str, ...]:
    """The variables an XPath expression names (a few more if ``$`` occurs in literals):
    the ones worth passing, since lxml binds every variable it is given."""
    return tuple(dict.fromkeys(_VARIABLE.findall(expression)))


@functools.lru_cache(maxsize=4096)
def reads_only_variables(expression: str) -> bool:
    """Whether an XPath 1.0 expression's value depends only on its variables (``$caps``,
    ``$domcaps``, parameters), not on the context node (the domain) nor ``$domain``: then
    its value may be reused for another domain with the same variables.  Conservative: an
    expression it cannot read counts as reading the domain.

    Outside predicates, any location path that does not start at a variable reads the
    context, and so do ``id()``, ``lang()`` and the functions that default to the context
    node; inside a predicate of a variable's path, paths are relative to that variable's
    nodes, which is fine."""
    tokens: list[tuple[str, str]] = []
    position, end = 0, len(expression.rstrip())
    while position < end:
        found = _TOKEN.match(expression, position)
        if found is None or found.end() == position:
            return False
        kind = found.lastgroup or ""
        tokens.append((kind, found.group(kind)))
        position = found.end()
    depth = 0  # predicates open
    role: str | None = None  # of the previous token
    text = ""
    for index, (kind, token) in enumerate(tokens):
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        test_here = role in _BEFORE_TEST or text == "@"
        continues = role in ("slash", "axis") or text == "@"
        if kind == "var":
            if token == "$domain":
                return False
            role = "var"
        elif kind in ("literal", "number"):
            role = "value"
        elif token == "[":
            depth, role = depth + 1, "open"
        elif token == "]":
            depth, role = depth - 1, "close"
            if depth < 0:
                return False
        elif token in ("(", ")", ",", "::"):
            role = {"(": "lparen", ")": "rparen", ",": "comma", "::": "axis"}[token]
        elif token in ("/", "//"):
            if role in _BEFORE_TEST and depth == 0:
                return False  # an absolute path: the domain's document
            role = "slash"
        elif token in (".", "..", "@") or (token == "*" and test_here) or (
                kind == "name" and test_here and (following != "(" or token in _NODE_TYPES)):
            if not continues and depth == 0:
                return False  # a relative path: from the context node
            role = "step"
        elif kind == "name" and following == "(":
            if depth == 0 and (token in _ALWAYS_CONTEXT or (
                    token in _CONTEXT_FUNCTIONS and index + 2 < len(tokens)
                    and tokens[index + 2][1] == ")")):
                return False
            role = "func"
        else:  # '*' multiplying, and/or/mod/div, comparisons, '|', '+', '-'
            role = "operator"
        text = token
    return depth == 0
