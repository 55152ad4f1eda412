"""The profile format: parsing ``<profile>`` documents into immutable ``Profile`` objects.

A profile is a named, versioned set of actions on a domain XML::

    <profile name='guest-agent' version='1.0' priority='0'>
      <description>QEMU guest agent channel.</description>
      <param name='path' default=''>...</param>
      <requires profile='other'/>  <conflicts profile='other@2'/>
      <match><devices><graphics type='spice'/></devices></match>   (or <match test='XPATH'/>)
      <when test='$domcaps/...'> actions </when>
      <choose><when test='...'> actions </when><otherwise> actions </otherwise></choose>
      <add multiple='auto|yes|no' constraint='soft|hard' count='N'> snippet </add>
      <remove constraint='...'> snippet </remove>
      <default constraint='...'> snippet </default>
    </profile>

Snippets are the children of ``<domain>`` (``<devices>``, ``<features>``...); a single
``<domain>`` child instead addresses the root itself (its attributes).  ``${name}`` in
attribute values and text is replaced by the parameter's value.  The semantics of each action
live in ``apply.py``; this module only reads and checks the document.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from lxml import etree

from ..xml.safe import MAX_BYTES, NOT_XML_CHAR, parse, parse_file
from .errors import BadProfileReference, ParameterError, ProfileSyntaxError, XMLInputError

__all__ = ["Action", "Choose", "Param", "Profile", "ProfileRef", "Step", "When",
           "check_placeholders", "parse_profiles", "load_profiles", "version_key"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+~-]*$")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_-]*)\}")
_PARAM_TYPES = ("string", "int", "bool")
RESERVED_VARIABLES = ("domain", "caps", "domcaps")
MAX_COUNT = 4096   # copies one <add multiple='yes' count=> makes at most: a parameter or a
                   # profile cannot make composition allocate without bound


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for versions: numeric parts compare as numbers (1.10 > 1.9)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.split(r"[.+~-]", version))



MAX_PARAM_VALUE = 64 * 1024   # characters of one parameter value
MAX_PRIORITY = 10 ** 9
# an int parameter's range: libvirt's own integers (long long to unsigned long long); beyond
# it XPath, whose numbers are doubles, cannot take the value at all
MIN_INT_PARAM, MAX_INT_PARAM = -(2 ** 63), 2 ** 64 - 1
MAX_CHAIN = 64   # profiles extending (or requiring) one another, one after the other
_DIGITS = re.compile(r"[0-9]+")   # ASCII digits only: str.isdigit() takes "²" and "٣"
_INTEGER = re.compile(r"[+-]?[0-9]+")


def parse_priority(text: str) -> int:
    """A priority as profiles and ``<aiovirt:use>`` write it: an integer of ASCII digits
    within +-``MAX_PRIORITY``; ``ValueError`` saying so otherwise."""
    if not _INTEGER.fullmatch(text.strip()) or abs(int(text)) > MAX_PRIORITY:
        raise ValueError(f"priority must be an integer from -{MAX_PRIORITY} to "
                         f"{MAX_PRIORITY}, not {text!r:.40}")
    return int(text)

@dataclass(frozen=True, slots=True)
class ProfileRef:
    """A request for a profile: ``name``, optionally ``@version``, and a priority override."""

    name: str
    version: str | None = None
    priority: int | None = None

    @classmethod
    def parse(cls, text: str, priority: int | None = None) -> ProfileRef:
        return _parse_ref(cls, text, priority)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def _parse_ref(cls: type[ProfileRef], text: str, priority: int | None) -> ProfileRef:
    if not isinstance(text, str):
        raise BadProfileReference(f"a profile is named by text (NAME or NAME@VERSION) or a "
                                  f"ProfileRef, not {type(text).__name__} ({text!r:.60})")
    return _parse_text(cls, text, priority)


@functools.lru_cache(maxsize=1024)
def _parse_text(cls: type[ProfileRef], text: str, priority: int | None) -> ProfileRef:
    name, _, version = text.strip().partition("@")
    if not _NAME.match(name) or (version and not _VERSION.match(version)):
        raise BadProfileReference(f"{text!r:.100} is not a profile reference (NAME or "
                                  "NAME@VERSION)")
    return cls(name, version or None, priority)


@dataclass(frozen=True, slots=True)
class Param:
    """A profile parameter: used as ``${name}`` in snippets and ``$name`` in tests."""

    name: str
    default: str | None = None   # None and no select: the caller must give a value
    select: str | None = None    # an XPath whose string value is the default
    type: str = "string"
    description: str = ""

    def convert(self, value: str, profile: str) -> str:
        """Check ``value`` against the type; returns its canonical text (a Python int is
        taken as its text)."""
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        elif not isinstance(value, str):
            raise ParameterError(f"profile {profile}: parameter {self.name!r} must be given as "
                                 f"text, not {type(value).__name__} ({value!r:.60})")
        if len(value) > MAX_PARAM_VALUE:
            raise ParameterError(f"profile {profile}: parameter {self.name!r}: a value of "
                                 f"{len(value)} characters is over the limit of "
                                 f"{MAX_PARAM_VALUE}")
        bad = NOT_XML_CHAR.search(value)
        if bad is not None:
            raise ParameterError(f"profile {profile}: parameter {self.name!r}: character "
                                 f"U+{ord(bad.group()):04X} at position {bad.start()} cannot "
                                 "be in XML")
        if self.type == "int":
            try:
                number = int(value, 0)
            except ValueError:
                raise ParameterError(f"profile {profile}: parameter {self.name!r} must be an "
                                     f"integer, not {value!r:.60}") from None
            if not MIN_INT_PARAM <= number <= MAX_INT_PARAM:
                raise ParameterError(f"profile {profile}: parameter {self.name!r}: "
                                     f"{value!r:.60} is out of range (an int parameter is "
                                     f"from {MIN_INT_PARAM} to {MAX_INT_PARAM})")
            return str(number)
        if self.type == "bool":
            lowered = value.strip().lower()
            if lowered in ("yes", "true", "on", "1"):
                return "yes"
            if lowered in ("no", "false", "off", "0"):
                return "no"
            raise ParameterError(f"profile {profile}: parameter {self.name!r} must be yes or "
                                 f"no, not {value!r:.60}")
        return value


@dataclass(frozen=True, slots=True, eq=False)
class Action:
    """One ``<add>``, ``<remove>`` or ``<default>`` with its snippet (children of domain)."""

    kind: Literal["add", "remove", "default"]
    snippet: tuple[etree._Element, ...]
    multiple: Literal["auto", "yes", "no"] = "auto"
    constraint: Literal["soft", "hard"] = "soft"
    count: str = "1"
    line: int = 0
    templated: bool = False   # ``${...}`` occurs in the snippet or count

    @property
    def hard(self) -> bool:
        return self.constraint == "hard"

    def describe(self) -> str:
        if self.kind == "add" and self.multiple != "auto":
            return f"add multiple={self.multiple}"
        return self.kind


@dataclass(frozen=True, slots=True, eq=False)
class When:
    """Steps that apply when the XPath ``test`` is true (``test`` None: ``<otherwise>``)."""

    test: str | None
    steps: tuple[Step, ...]
    line: int = 0
    xpath: etree.XPath | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Choose:
    """The steps of the first ``When`` whose test holds."""

    branches: tuple[When, ...]
    line: int = 0


Step = Action | When | Choose


@dataclass(frozen=True, slots=True, eq=False)
class Profile:
    """A parsed profile.  ``digest`` identifies its exact content (sha256 of canonical XML)."""

    name: str
    version: str
    priority: int = 0
    description: str = ""
    auto: bool = False
    params: tuple[Param, ...] = ()
    requires: tuple[ProfileRef, ...] = ()
    conflicts: tuple[ProfileRef, ...] = ()
    extends: ProfileRef | None = None
    # any one group holds: all of its snippets are present / its test is true
    match: tuple[tuple[etree._Element | When, ...], ...] = ()
    steps: tuple[Step, ...] = ()
    namespaces: dict[str, str] = field(default_factory=dict)
    source: str = "<string>"
    line: int = 0
    digest: str = ""
    id: str = field(init=False)  # "name@version"

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.name}@{self.version}")

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def actions(self) -> Iterator[Action]:
        """Every action, inside conditions too (for checks and listings)."""
        def walk(steps: tuple[Step, ...]) -> Iterator[Action]:
            for step in steps:
                if isinstance(step, Action):
                    yield step
                elif isinstance(step, When):
                    yield from walk(step.steps)
                else:
                    for branch in step.branches:
                        yield from walk(branch.steps)
        return walk(self.steps)

    def __repr__(self) -> str:
        return f"<Profile {self.id} priority={self.priority} from {self.source}>"


# -- parsing -------------------------------------------------------------------------------------

class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: etree._Element | None, message: str) -> ProfileSyntaxError:
        return ProfileSyntaxError(message, source=self.source,
                                  line=node.sourceline if node is not None else None)

    def attr(self, node: etree._Element, name: str, choices: tuple[str, ...] | None = None,
             default: str | None = None) -> str | None:
        value = node.get(name, default)
        if value is not None and choices is not None and value not in choices:
            raise self.fail(node, f"<{_local(node)}> {name}={value!r}: expected one of "
                                  f"{', '.join(choices)}")
        return value

    def only(self, node: etree._Element, allowed: tuple[str, ...]) -> None:
        for name in node.attrib:
            if name not in allowed:
                raise self.fail(node, f"<{_local(node)}> has no attribute {name!r} "
                                      f"(known: {', '.join(allowed) or 'none'})")

    def ref(self, node: etree._Element, text: str | None) -> ProfileRef:
        if not text:
            raise self.fail(node, f"<{_local(node)}> needs profile='NAME[@VERSION]'")
        try:
            return ProfileRef.parse(text)
        except ValueError as exc:
            raise self.fail(node, str(exc)) from None

    def profile(self, node: etree._Element) -> Profile:
        if node.tag != "profile":
            namespace = etree.QName(node).namespace if isinstance(node.tag, str) else None
            raise self.fail(node, f"expected <profile>, found <{_local(node)}>" + (
                f" in namespace {namespace!r} (profiles are in no namespace: drop xmlns=)"
                if namespace else ""))
        self.only(node, ("name", "version", "priority", "auto", "extends"))
        name = node.get("name")
        if not name or not _NAME.match(name):
            raise self.fail(node, f"<profile> needs a name of letters, digits and ._+- "
                                  f"(got {name!r})")
        version = node.get("version", "0")
        if not _VERSION.match(version):
            raise self.fail(node, f"profile {name}: version {version!r} is not a version")
        try:
            priority = parse_priority(node.get("priority", "0"))
        except ValueError as exc:
            raise self.fail(node, f"profile {name}: {exc}") from None
        auto = self.attr(node, "auto", ("yes", "no"), "no") == "yes"
        extends = self.ref(node, node.get("extends")) if node.get("extends") else None
        description, params, requires, conflicts, match = "", [], [], [], []
        steps: list[Step] = []
        for child in node:
            tag = child.tag
            if tag == "description":
                description = " ".join((child.text or "").split())
            elif tag == "param":
                params.append(self.param(child, name))
            elif tag == "requires":
                self.only(child, ("profile",))
                requires.append(self.ref(child, child.get("profile")))
            elif tag == "conflicts":
                self.only(child, ("profile",))
                conflicts.append(self.ref(child, child.get("profile")))
            elif tag == "match":
                self.only(child, ("test",))
                group: tuple[etree._Element | When, ...] = self.snippet(child)
                test = child.get("test")
                if test is not None:
                    group += (When(test, (), child.sourceline or 0, self.xpath(child, test)),)
                if not group:
                    raise self.fail(child, "<match> is empty: give a snippet or test=")
                match.append(group)
            else:
                steps.append(self.step(child))
        if auto and not match:
            raise self.fail(node, f"profile {name}: auto='yes' needs a <match> to select on")
        seen: set[str] = set()
        for param in params:
            if param.name in seen:
                raise self.fail(node, f"profile {name}: parameter {param.name!r} is declared "
                                      "twice")
            seen.add(param.name)
        profile = Profile(name=name, version=version, priority=priority,
                          description=description, auto=auto, params=tuple(params),
                          requires=tuple(requires), conflicts=tuple(conflicts),
                          extends=extends, match=tuple(match), steps=tuple(steps),
                          namespaces={k: v for k, v in node.nsmap.items() if k},
                          source=self.source, line=node.sourceline or 0,
                          digest=_digest(node))
        if extends is None:  # else the parent's parameters count too: checked when resolved
            check_placeholders(profile)
        return profile

    def param(self, node: etree._Element, profile: str) -> Param:
        self.only(node, ("name", "default", "select", "type"))
        name = node.get("name", "")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", name):
            raise self.fail(node, f"profile {profile}: parameter name {name!r} is not a name")
        if name in RESERVED_VARIABLES:
            raise self.fail(node, f"profile {profile}: parameter name {name!r} is reserved "
                                  "for the condition variables $domain, $caps, $domcaps")
        kind = self.attr(node, "type", _PARAM_TYPES, "string") or "string"
        select = node.get("select")
        if select is not None:
            self.xpath(node, select)
        param = Param(name, node.get("default"), select, kind,
                      " ".join((node.text or "").split()))
        if param.default is not None:
            param.convert(param.default, profile)
        return param

    def step(self, node: etree._Element) -> Step:
        tag = node.tag
        if tag in ("add", "remove", "default", "defaults"):
            kind = "default" if tag == "defaults" else tag
            allowed = ("constraint", "multiple", "count", "type") if kind == "add" \
                else ("constraint", "type")
            self.only(node, allowed)
            constraint = self.attr(node, "constraint", ("soft", "hard"), "soft")
            # the design's own examples write type='hard': the same, under its other name
            spelled = self.attr(node, "type", ("soft", "hard"))
            if spelled is not None:
                if "constraint" in node.attrib and spelled != constraint:
                    raise self.fail(node, f"<{tag}> constraint={constraint!r} and "
                                          f"type={spelled!r} disagree (type= is another "
                                          "name for constraint=)")
                constraint = spelled
            multiple = self.attr(node, "multiple", ("auto", "yes", "no"), "auto")
            count = node.get("count", "1")
            if kind == "add" and "count" in node.attrib and multiple != "yes":
                raise self.fail(node, "count= needs multiple='yes'")
            if not PLACEHOLDER.search(count):
                if not _DIGITS.fullmatch(count) or int(count) < 1:
                    raise self.fail(node, f"count={count!r}: expected a positive integer")
                if int(count) > MAX_COUNT:
                    raise self.fail(node, f"count={count}: at most {MAX_COUNT}")
            snippet = self.snippet(node)
            if not snippet:
                raise self.fail(node, f"<{tag}> is empty: it needs the XML it acts on")
            templated = bool(PLACEHOLDER.search(count)) or any(
                _has_placeholder(element) for element in snippet)
            if not PLACEHOLDER.search(count):   # (a templated count is checked when filled)
                size = sum(len(etree.tostring(element)) for element in snippet) * int(count)
                if size > MAX_BYTES:
                    raise self.fail(node, f"<{tag}> adds {size} bytes of XML (count={count}), "
                                          f"over the limit of {MAX_BYTES} for a document")
            return Action(kind, snippet, multiple, constraint, count,  # type: ignore[arg-type]
                          node.sourceline or 0, templated)
        if tag == "when":
            self.only(node, ("test",))
            test = node.get("test")
            if not test:
                raise self.fail(node, "<when> needs test='XPATH'")
            return When(test, tuple(self.step(c) for c in node), node.sourceline or 0,
                        self.xpath(node, test))
        if tag == "choose":
            self.only(node, ())
            branches = []
            for child in node:
                if child.tag == "when":
                    branch = self.step(child)
                    assert isinstance(branch, When)
                    branches.append(branch)
                elif child.tag == "otherwise":
                    self.only(child, ())
                    branches.append(When(None, tuple(self.step(c) for c in child),
                                         child.sourceline or 0))
                else:
                    raise self.fail(child, f"<choose> holds <when> and <otherwise>, not "
                                           f"<{_local(child)}>")
            if not branches:
                raise self.fail(node, "<choose> is empty")
            if any(b.test is None for b in branches[:-1]):
                raise self.fail(node, "<otherwise> must come last in <choose>")
            return Choose(tuple(branches), node.sourceline or 0)
        raise self.fail(node, f"unknown element <{_local(node)}> in a profile (expected "
                              "description, param, requires, conflicts, match, add, remove, "
                              "default, when or choose)")

    def snippet(self, node: etree._Element) -> tuple[etree._Element, ...]:
        if node.text and node.text.strip():
            raise self.fail(node, f"text {node.text.strip()!r} directly in <{_local(node)}>: "
                                  "it holds elements of a domain XML")
        for child in node:
            if child.tail and child.tail.strip():
                raise self.fail(child, f"stray text {child.tail.strip()!r}")
        return tuple(node)

    def xpath(self, node: etree._Element, expression: str) -> etree.XPath:
        try:
            return etree.XPath(expression, namespaces={k: v for k, v in node.nsmap.items()
                                                       if k}, regexp=False,
                               smart_strings=False)
        except etree.XPathSyntaxError as exc:
            raise self.fail(node, f"bad XPath {expression!r}: {exc}") from None


def check_placeholders(profile: Profile) -> None:
    """Every ``${name}`` in the profile's actions must name one of its parameters."""
    declared = {p.name for p in profile.params}
    for action in profile.actions():
        for name in PLACEHOLDER.findall(action.count):
            if name not in declared:
                raise ProfileSyntaxError(f"profile {profile.name}: count=${{{name}}} names no "
                                         "declared <param>", source=profile.source,
                                         line=action.line)
        for root in action.snippet:
            for element in root.iter(etree.Element):
                for value in [*element.attrib.values(), element.text or ""]:
                    for name in PLACEHOLDER.findall(value):
                        if name not in declared:
                            raise ProfileSyntaxError(
                                f"profile {profile.name}: ${{{name}}} names no declared "
                                "<param>", source=profile.source, line=element.sourceline)


def _local(node: etree._Element) -> str:
    return etree.QName(node).localname if isinstance(node.tag, str) else "?"


def _has_placeholder(element: etree._Element) -> bool:
    for node in element.iter(etree.Element):
        if "${" in (node.text or "") or any("${" in v for v in node.attrib.values()):
            return True
    return False


def _digest(node: etree._Element) -> str:
    canonical = etree.tostring(node, method="c14n", exclusive=True, with_comments=False)
    return "sha256:" + hashlib.sha256(canonical).hexdigest()[:32]


def parse_profiles(text: str | bytes, *, source: str = "<string>") -> list[Profile]:
    """Parse a document holding one ``<profile>`` or a ``<profiles>`` list of them."""
    try:
        root = parse(text, source=source)
    except XMLInputError as exc:
        raise ProfileSyntaxError(exc.reason, source=exc.source, line=exc.line) from None
    return _read(root, source)


_LOADED: dict[tuple[str, int, int, int], list[Profile]] = {}


def load_profiles(path: str) -> list[Profile]:
    """Parse a profile file (``ProfileSyntaxError`` names the file and line).  A file read
    before and unchanged since (same inode, size and mtime) is not parsed again: profiles are
    immutable, and every ``Library.default()`` reads the same shipped files."""
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns) if stat else None
    if key is not None and key in _LOADED:
        return list(_LOADED[key])
    try:
        root = parse_file(path).getroot()
    except XMLInputError as exc:
        raise ProfileSyntaxError(exc.reason, source=exc.source, line=exc.line) from None
    profiles = _read(root, str(path))
    if key is not None:
        _LOADED[key] = profiles
    return list(profiles)


def _read(root: etree._Element, source: str) -> list[Profile]:
    reader = _Reader(source)
    if root.tag == "profiles":
        reader.only(root, ())
        profiles, lines = [], {}
        for child in root:
            profile = reader.profile(child)
            if profile.id in lines:   # the last one would have won without a word
                raise ProfileSyntaxError(f"profile {profile.id} comes twice (first at line "
                                         f"{lines[profile.id]})", source=source,
                                         line=profile.line)
            lines[profile.id] = profile.line
            profiles.append(profile)
        return profiles
    return [reader.profile(root)]
