"""Composition: choose profiles, resolve their parameters, apply them in order, validate, and
record what was applied in the domain's metadata.

Which profiles apply: those the caller names, those the domain lists in its own metadata
(``<aiovirt:use profile='NAME[@VERSION]' priority='N'>``), the ones they require, and every
``auto='yes'`` profile whose ``<match>`` matches the input.  They apply by priority, then name;
the input document itself counts as a writer of priority ``input_priority`` (99).

The applied set (name, version, digest and parameters of each profile) is written to
``<aiovirt:applied>`` in the metadata.  A later composition of that output pins the recorded
versions (``upgrade=True`` takes the newest and lists what moved in ``upgrades``), tops up
``multiple='yes'`` additions instead of repeating them, and so changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from ..address import Device, Tunables, address_tree
from ..xml.safe import parse, strip_indentation, to_string
from .apply import INPUT, Applier, Change, Writer, _contains
from .errors import ComposeError, InvalidResult, ParameterError, ProfileConflict, UnknownProfile
from .library import Library
from .profile import PLACEHOLDER, Action, Choose, Profile, ProfileRef, Step, When
from .schema import repeat_table, validator

__all__ = ["AppliedProfile", "Composition", "NS", "Upgrade", "compose"]

NS = "https://aiovirt.org/xmlns/profiles/1"
_A = f"{{{NS}}}"
_EMPTY_CAPS = etree.Element("capabilities")
_EMPTY_DOMCAPS = etree.Element("domainCapabilities")


@dataclass(frozen=True, slots=True)
class AppliedProfile:
    """A profile that took part: its id, the priority it ran at, its parameter values and
    why it was chosen ("requested", "domain metadata", "required by X", "matched")."""

    profile: Profile
    priority: int
    params: dict[str, str]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.id, "name": self.profile.name,
                "version": self.profile.version, "digest": self.profile.digest,
                "priority": self.priority, "params": self.params, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A profile whose recorded version, content or parameters differ from this run's."""

    name: str
    old_version: str | None
    new_version: str | None
    old_digest: str | None
    new_digest: str | None

    def __str__(self) -> str:
        if self.new_version is None:
            return f"{self.name}@{self.old_version} no longer applies"
        if self.old_version is None:
            return f"{self.name}@{self.new_version} newly applied"
        if self.old_version != self.new_version:
            return f"{self.name}: {self.old_version} -> {self.new_version}"
        return f"{self.name}@{self.new_version}: content or parameters changed"


@dataclass
class Composition:
    """The result: the composed domain and the account of how it came about."""

    tree: etree._Element
    applied: list[AppliedProfile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    upgrades: list[Upgrade] = field(default_factory=list)
    validated: bool = False
    addressed: list[Device] | None = None   # the devices, when addressing ran
    _applier: Applier | None = field(default=None, repr=False)
    _report: list[Change] | None = field(default=None, repr=False)

    @property
    def report(self) -> list[Change]:
        """Every change and every value kept, in order (built on first use)."""
        if self._report is None:
            self._report = self._applier.changes if self._applier is not None else []
        return self._report

    @property
    def xml(self) -> str:
        """The composed domain XML, indented."""
        return to_string(self.tree, strip=False)  # parsed input + parsed snippets: no blanks

    @property
    def changes(self) -> list[Change]:
        """What changed (the report without the values that were kept)."""
        return [c for c in self.report if c.what != "kept"]

    def explain(self) -> str:
        """The report as text: which profile@version and action changed each node."""
        lines = []
        for item in self.applied:
            params = " ".join(f"{k}={v}" for k, v in item.params.items())
            lines.append(f"applied {item.profile.id} (priority {item.priority}, "
                         f"{item.reason}){' ' + params if params else ''}")
        lines += [f"skipped {name}: {why}" for name, why in self.skipped]
        lines += [f"upgrade {u}" for u in self.upgrades]
        lines += [str(change) for change in self.report]
        if not self.report:
            lines.append("no changes")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"applied": [a.to_dict() for a in self.applied],
                "skipped": [{"profile": n, "reason": r} for n, r in self.skipped],
                "upgrades": [{"name": u.name, "old_version": u.old_version,
                              "new_version": u.new_version, "old_digest": u.old_digest,
                              "new_digest": u.new_digest} for u in self.upgrades],
                "changes": [c.to_dict() for c in self.report],
                "validated": self.validated}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# -- the aiovirt metadata element -------------------------------------------------------------

def _our_metadata(root: etree._Element) -> etree._Element | None:
    metadata = root.find("metadata")
    return None if metadata is None else metadata.find(_A + "profiles")


def _domain_requests(root: etree._Element) -> list[tuple[ProfileRef, dict[str, str]]]:
    ours = _our_metadata(root)
    if ours is None:
        return []
    requests = []
    for use in ours.findall(_A + "use"):
        text = use.get("profile", "")
        try:
            priority = int(use.get("priority")) if use.get("priority") else None
            ref = ProfileRef.parse(text, priority)
        except ValueError as exc:
            raise ComposeError(f"domain metadata line {use.sourceline}: <aiovirt:use "
                               f"profile={text!r} priority={use.get('priority')!r}>: "
                               f"{exc}") from None
        params = {p.get("name", ""): p.get("value", "") for p in use.findall(_A + "param")}
        requests.append((ref, params))
    return requests


def _recorded(root: etree._Element) -> dict[str, tuple[str, str, dict[str, str]]]:
    """name -> (version, digest, params) from ``<aiovirt:applied>``."""
    ours = _our_metadata(root)
    applied = None if ours is None else ours.find(_A + "applied")
    if applied is None:
        return {}
    return {p.get("name", ""): (p.get("version", ""), p.get("digest", ""),
                                {q.get("name", ""): q.get("value", "")
                                 for q in p.findall(_A + "param")})
            for p in applied.findall(_A + "profile")}


def _record(root: etree._Element, applied: list[AppliedProfile]) -> None:
    metadata = root.find("metadata")
    if metadata is None:
        metadata = etree.SubElement(root, "metadata")
    ours = metadata.find(_A + "profiles")
    if ours is None:
        ours = etree.SubElement(metadata, _A + "profiles", nsmap={"aiovirt": NS})
    old = ours.find(_A + "applied")
    if old is not None:
        ours.remove(old)
    record = etree.SubElement(ours, _A + "applied")
    digest = hashlib.sha256()
    for item in applied:
        profile = item.profile
        entry = etree.SubElement(record, _A + "profile", name=profile.name,
                                 version=profile.version, digest=profile.digest)
        digest.update(f"{profile.id} {profile.digest}".encode())
        for name, value in sorted(item.params.items()):
            etree.SubElement(entry, _A + "param", name=name, value=value)
            digest.update(f" {name}={value}".encode())
        digest.update(b"\n")
    record.set("digest", "sha256:" + digest.hexdigest()[:32])


# -- composition --------------------------------------------------------------------------------

class _Composer:
    def __init__(self, library: Library, root: etree._Element, caps: etree._Element | None,
                 domcaps: etree._Element | None, upgrade: bool) -> None:
        self.library = library
        self.root = root
        self.caps = caps if caps is not None else _EMPTY_CAPS
        self.domcaps = domcaps if domcaps is not None else _EMPTY_DOMCAPS
        self.upgrade = upgrade
        self.recorded = _recorded(root)

    # selection ----------------------------------------------------------------------------
    def _lookup(self, ref: ProfileRef) -> Profile:
        if ref.version is None and not self.upgrade and ref.name in self.recorded:
            version = self.recorded[ref.name][0]
            if version in self.library.versions(ref.name):
                return self.library.get(ProfileRef(ref.name, version))
            if ref.name in self.library:
                raise UnknownProfile(
                    f"the domain was composed with {ref.name}@{version}, which the library no "
                    f"longer has (it has {', '.join(self.library.versions(ref.name))}); "
                    "compose with upgrade=True (--upgrade) to move to the newest")
        return self.library.get(ref)

    def select(self, requested: Sequence[ProfileRef]
               ) -> list[tuple[Profile, int, str, dict[str, str]]]:
        chosen: dict[str, tuple[Profile, int, str, dict[str, str]]] = {}

        def take(ref: ProfileRef, reason: str, params: dict[str, str]) -> None:
            profile = self._lookup(ref)
            if profile.name in chosen:
                have = chosen[profile.name][0]
                if have.version != profile.version:
                    raise ProfileConflict(f"{have.id} ({chosen[profile.name][2]}) and "
                                          f"{profile.id} ({reason}) are both selected")
                return
            priority = ref.priority if ref.priority is not None else profile.priority
            chosen[profile.name] = (profile, priority, reason, params)
            for required in profile.requires:
                take(required, f"required by {profile.id}", {})

        for ref in requested:
            take(ref, "requested", {})
        for ref, params in _domain_requests(self.root):
            take(ref, "domain metadata", params)
        for profile in self.library.auto_profiles():
            if profile.name not in chosen and self.matches(profile):
                take(ProfileRef(profile.name, profile.version), "matched", {})
        for profile, _, reason, _ in chosen.values():
            for ref in profile.conflicts:
                other = chosen.get(ref.name)
                if other is not None and (ref.version is None or
                                          other[0].version == ref.version):
                    raise ProfileConflict(f"{profile.id} ({reason}) conflicts with "
                                          f"{other[0].id} ({other[2]})")
        return sorted(chosen.values(), key=lambda c: (c[1], c[0].name))

    def matches(self, profile: Profile) -> bool:
        """Whether any ``<match>`` of the profile holds for the input (no match: yes)."""
        if not profile.match:
            return True
        for group in profile.match:
            if all(self._holds_test(profile, part) if isinstance(part, When)
                   else self._present(part) for part in group):
                return True
        return False

    def _holds_test(self, profile: Profile, test: When) -> bool:
        defaults = {p.name: p.default for p in profile.params if p.default is not None}
        return self.holds(profile, test, self.variables(_typed(profile, defaults)))

    def _present(self, snippet: etree._Element) -> bool:
        if snippet.tag == "domain":
            if any(self.root.get(k) != v for k, v in snippet.attrib.items()):
                return False
            return all(self._present(child) for child in snippet)
        return any(_contains(child, snippet) for child in self.root)

    # parameters ----------------------------------------------------------------------------
    def params(self, profile: Profile, given: Mapping[str, str],
               from_domain: dict[str, str]) -> dict[str, str]:
        values: dict[str, str] = {}
        for param in profile.params:
            scoped = f"{profile.name}.{param.name}"
            if scoped in given:
                value: str | None = given[scoped]
            elif param.name in given:
                value = given[param.name]
            elif param.name in from_domain:
                value = from_domain[param.name]
            else:
                value = self._select(profile, param.select, values) \
                    if param.select is not None else None
                if not value:  # select found nothing: the plain default
                    value = param.default
            if value is None:
                raise ParameterError(f"profile {profile.id} needs parameter {param.name!r}"
                                     f"{': ' + param.description if param.description else ''}"
                                     f" (give it as {param.name}=VALUE)")
            values[param.name] = param.convert(value, profile.id)
        return values

    def _select(self, profile: Profile, expression: str, values: dict[str, str]) -> str:
        try:
            result = etree.XPath(expression, namespaces=profile.namespaces, regexp=False,
                                 smart_strings=False)(self.root, **self.variables(values))
        except etree.XPathError as exc:
            raise ComposeError(f"profile {profile.id}: parameter select {expression!r}: "
                               f"{exc}") from None
        if isinstance(result, list):
            if not result:
                return ""
            first = result[0]
            return first if isinstance(first, str) else "".join(first.itertext())
        if isinstance(result, bool):
            return "yes" if result else "no"
        if isinstance(result, float) and result.is_integer():
            return str(int(result))
        return str(result)

    def variables(self, params: Mapping[str, str]) -> dict[str, Any]:
        return {**params, "domain": self.root, "caps": self.caps, "domcaps": self.domcaps}

    # applying ----------------------------------------------------------------------------------
    def steps(self, profile: Profile, steps: Sequence[Step], params: dict[str, str],
              variables: dict[str, Any] | None = None) -> list[Action]:
        """The actions whose conditions hold, in document order."""
        actions: list[Action] = []
        for step in steps:
            if isinstance(step, Action):
                actions.append(step)
                continue
            if variables is None:
                variables = self.variables(_typed(profile, params))
            if isinstance(step, When):
                if self.holds(profile, step, variables):
                    actions += self.steps(profile, step.steps, params, variables)
            elif isinstance(step, Choose):
                for branch in step.branches:
                    if branch.test is None or self.holds(profile, branch, variables):
                        actions += self.steps(profile, branch.steps, params, variables)
                        break
        return actions

    def holds(self, profile: Profile, when: When, variables: dict[str, Any]) -> bool:
        assert when.xpath is not None
        try:
            result = when.xpath(self.root, **variables)
        except etree.XPathError as exc:
            raise ComposeError(f"profile {profile.id} ({profile.source}:{when.line}): "
                               f"<when test={when.test!r}>: {exc}") from None
        if isinstance(result, list):
            return bool(result)
        if isinstance(result, float):
            return result == result and result != 0.0
        return bool(result)


def _typed(profile: Profile, params: dict[str, str]) -> dict[str, Any]:
    """Parameter values as XPath sees them: numbers for ints, booleans for bools."""
    typed: dict[str, Any] = {}
    for name, value in params.items():
        param = profile.param(name)
        kind = param.type if param is not None else "string"
        typed[name] = int(value) if kind == "int" else (value == "yes") if kind == "bool" \
            else value
    return typed


def _substitute(action: Action, params: dict[str, str], profile: Profile
                ) -> tuple[tuple[etree._Element, ...], int]:
    """The action's snippet and count with ``${...}`` filled in (shared, never modified:
    the applier copies what it inserts)."""
    if not action.templated:
        return action.snippet, int(action.count)
    return _substituted(action, tuple(sorted(params.items())), profile.id)


@functools.lru_cache(maxsize=4096)
def _substituted(action: Action, items: tuple[tuple[str, str], ...], profile_id: str
                 ) -> tuple[tuple[etree._Element, ...], int]:
    params = dict(items)

    def fill(text: str) -> str:
        return PLACEHOLDER.sub(lambda m: params[m.group(1)], text)

    snippet = []
    for root in action.snippet:
        root = _copy(root)
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
    return tuple(snippet), count


@functools.lru_cache(maxsize=4096)
def _writer(action: Action, profile_id: str, source: str, priority: int) -> Writer:
    """The (immutable) writer for one action at one priority, made once."""
    return Writer(profile_id, priority, action.describe(), action.hard, source, action.line)


def _copy(element: etree._Element) -> etree._Element:
    import copy

    return copy.deepcopy(element)


def _as_tree(value: str | bytes | etree._Element | None, what: str,
             root_tag: str) -> etree._Element | None:
    if value is None:
        return None
    if isinstance(value, etree._Element):
        root = value
    else:
        root = parse(value, source=what)
    if root.tag != root_tag:
        raise ComposeError(f"{what}: expected <{root_tag}>, found <{root.tag}>")
    return root


def compose(domain: str | bytes | etree._Element, profiles: Sequence[str | ProfileRef] = (),
            *, params: Mapping[str, str] | None = None,
            caps: str | bytes | etree._Element | None = None,
            domcaps: str | bytes | etree._Element | None = None,
            library: Library | None = None, validate: bool | None = None,
            upgrade: bool = False, input_priority: int = 99, record: bool = True,
            address: Tunables | bool = False, source: str = "<domain>") -> Composition:
    """Apply profiles to a (possibly partial) domain XML.

    ``profiles``: "NAME" or "NAME@VERSION" (or ``ProfileRef``); ``params``: "NAME=value"
    pairs as a dict, "PROFILE.NAME" for one profile only; ``caps``/``domcaps``: the host and
    domain capabilities XML for conditions; ``validate``: check the result against libvirt's
    schema (None: when the schema is installed).  Raises ``ComposeError`` subclasses.
    """
    if isinstance(domain, etree._Element):
        root = strip_indentation(_copy(domain))
    else:
        root = parse(domain, source=source)
    if root.tag != "domain":
        raise ComposeError(f"{source}: expected a <domain> document, found <{root.tag}>")
    library = library if library is not None else Library.default()
    composer = _Composer(library, root, _as_tree(caps, "capabilities", "capabilities"),
                         _as_tree(domcaps, "domain capabilities", "domainCapabilities"),
                         upgrade)
    refs = [p if isinstance(p, ProfileRef) else ProfileRef.parse(p) for p in profiles]
    selected = composer.select(refs)
    given = dict(params or {})
    _check_given(given, [s[0] for s in selected])

    result = Composition(root)
    applier = Applier(root, repeat_table(), Writer(INPUT, input_priority))
    prepared = []
    for profile, priority, reason, from_domain in selected:  # before any change: inputs only
        if reason != "matched" and not composer.matches(profile):
            result.skipped.append((profile.id, "its <match> does not match the domain"))
            continue
        prepared.append((profile, priority, reason,
                         composer.params(profile, given, from_domain)))
    for profile, priority, reason, values in prepared:
        result.applied.append(AppliedProfile(profile, priority, values, reason))
        again = profile.name in composer.recorded
        for action in composer.steps(profile, profile.steps, values):
            snippet, count = _substitute(action, values, profile)
            writer = _writer(action, profile.id, profile.source, priority)
            applier.apply(action.kind, action.multiple, snippet, writer, count, again)
    result._applier = applier
    result.upgrades = _upgrades(composer.recorded, result.applied)
    if record and result.applied:
        _record(root, result.applied)
    if address is not False:
        result.addressed = address_tree(root, address if isinstance(address, Tunables)
                                        else None)
    schema = validator()
    if validate or (validate is None and schema is not None):
        if schema is None:
            raise ComposeError("validation asked for, but libvirt's schema is not installed "
                               "(/usr/share/libvirt/schemas/domain.rng)")
        _validate(schema, result)
        result.validated = True
    return result


def _check_given(given: Mapping[str, str], profiles: Sequence[Profile]) -> None:
    by_name = {p.name: p for p in profiles}
    for key in given:
        scope, _, name = key.rpartition(".")
        if scope and scope in by_name:
            if by_name[scope].param(name) is None:
                raise ParameterError(f"profile {by_name[scope].id} has no parameter {name!r} "
                                     f"(it has: {', '.join(p.name for p in by_name[scope].params) or 'none'})")
            continue
        if not any(p.param(key) is not None for p in profiles):
            declared = sorted({f"{p.name}.{q.name}" for p in profiles for q in p.params})
            raise ParameterError(f"no selected profile has a parameter {key!r} "
                                 f"(declared: {', '.join(declared) or 'none'})")


def _upgrades(recorded: dict[str, tuple[str, str, dict[str, str]]],
              applied: list[AppliedProfile]) -> list[Upgrade]:
    if not recorded:
        return []
    upgrades = []
    now = {a.profile.name: a for a in applied}
    for name in sorted(set(recorded) | set(now)):
        old = recorded.get(name)
        new = now.get(name)
        if old is not None and new is not None and old[0] == new.profile.version and \
                old[1] == new.profile.digest and old[2] == new.params:
            continue
        upgrades.append(Upgrade(name, old[0] if old else None,
                                new.profile.version if new else None,
                                old[1] if old else None, new.profile.digest if new else None))
    return upgrades


def _validate(schema: etree.RelaxNG, result: Composition) -> None:
    if schema.validate(result.tree):
        return
    # find out what is wrong on a copy with line numbers
    reparsed = parse(to_string(result.tree), source="composed domain")
    schema.validate(reparsed)
    raw = [(error.path or "?", error.message) for error in schema.error_log]
    culprits = _culprits(schema, reparsed) or raw
    violations = []
    for path, message in culprits:
        responsible = sorted({c.profile for c in result.changes
                              if _related(c.path, path)}) or [INPUT]
        violations.append((", ".join(responsible), path, message))
    lines = [f"{who}: {path}: {message}" for who, path, message in violations]
    raise InvalidResult("the composed domain does not validate against libvirt's schema:\n  "
                        + "\n  ".join(lines), violations)


_SKELETON = ("name", "memory", "os")


def _culprits(schema: etree.RelaxNG, root: etree._Element) -> list[tuple[str, str]]:
    """Which elements make ``root`` invalid, found by validating each top-level element and
    each device alone in an otherwise minimal domain (libxml2's own messages for libvirt's
    interleaved content rarely say more than "Extra element devices")."""
    tree = root.getroottree()

    def alone(element: etree._Element, devices: bool) -> bool:
        probe = etree.Element("domain", dict(root.attrib))
        for tag, default in (("name", "probe"), ("memory", "1"), ("os", None)):
            if element.tag != tag or devices:
                if tag == "os":
                    etree.SubElement(etree.SubElement(probe, "os"), "type").text = "hvm"
                else:
                    etree.SubElement(probe, tag).text = default
        if devices:
            etree.SubElement(probe, "devices").append(_copy(element))
        else:
            probe.append(_copy(element))
        return bool(schema.validate(probe))

    found = []
    for child in root:
        if child.tag == "devices":
            for device in child:
                if not alone(device, True):
                    found.append((tree.getpath(device),
                                  f"libvirt's schema does not accept this {_start(device)}"))
        elif not alone(child, False):
            found.append((tree.getpath(child),
                          f"libvirt's schema does not accept this {_start(child)}"))
    return found


def _start(element: etree._Element) -> str:
    attrs = "".join(f" {k}='{v}'" for k, v in element.attrib.items())
    return f"<{etree.QName(element).localname}{attrs}>"


def _related(change_path: str, path: str) -> bool:
    a, b = _plain(change_path), _plain(path)
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _plain(path: str) -> str:
    """Drop ``/@attr`` and ``/text()`` from a report path, for comparing element paths."""
    parts = [p for p in path.split("/") if p and not p.startswith("@") and p != "text()"]
    return "/" + "/".join(parts)
