"""Composition: choose profiles, resolve their parameters, apply them in order, validate, and
record what was applied in the domain's metadata.

Which profiles apply: those the caller names, those the domain lists in its own metadata
(``<aiovirt:use profile='NAME[@VERSION]' priority='N'>``), the ones they require, and every
``auto='yes'`` profile whose ``<match>`` matches the input.  They apply by priority, then name,
to the input document itself: priorities and hard constraints arbitrate between profiles, the
input's values are what they work on.  ``input_wins=True`` restores aiovirt 0.1's rules, where
the input is a writer of priority ``input_priority`` (99) that lower profiles leave alone.
Conditions (``<when>``) are evaluated when their turn comes, over the domain as composed so far
(in input-wins mode, as in 0.1, all of a profile's conditions before any of its actions);
a parameter's ``select=`` too, in both modes, so it sees what earlier profiles wrote (the
``<vcpu>`` kvm-base gives) and reads the same on the composed output.

Each profile is compiled once into a plan (``plan.py``); ``Composer`` keeps the settings of
many compositions (library, capabilities, mode) and ``compose_all`` runs a batch.

The applied set (name, version, digest and parameters of each profile) is written to
``<aiovirt:applied>`` in the metadata.  A later composition of that output pins the recorded
versions (``upgrade=True`` takes the newest and lists what moved in ``upgrades``), tops up
``multiple='yes'`` additions instead of repeating them, and so changes nothing.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from ..address import Device, Tunables, address_tree
from .aliases import assign_user_aliases
from ..capabilities import CapabilitySet
from ..xml.metadata import PROFILES_NAMESPACE
from ..xml.safe import parse, strip_indentation, to_string
from .apply import INPUT, LOWEST, Applier, Change, Writer, _contains
from .errors import (BadProfileReference, ComposeError, InvalidResult, ParameterError,
                     ProfileConflict, UnknownProfile)
from .library import Library
from .plan import (ActionPlan, Node, ProfilePlan, action_plan, profile_plan,
                   reads_only_variables, typed, variables_of)
from .profile import MAX_CHAIN, Action, Profile, ProfileRef, Step, When, parse_priority
from .schema import validator

__all__ = ["AppliedProfile", "Composer", "Composition", "NS", "Upgrade", "compose",
           "compose_many"]

NS = PROFILES_NAMESPACE
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
    aliased: list[str] = field(default_factory=list)   # user aliases given to devices
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

def _first(parent: etree._Element, tag: str) -> etree._Element | None:
    return next(parent.iterchildren(tag), None)  # (much cheaper than find: no paths)


def _our_metadata(root: etree._Element, first: Callable[[etree._Element, str],
                                                        etree._Element | None] = _first
                  ) -> etree._Element | None:
    """``<aiovirt:profiles>`` in the metadata; ``first``: a child lookup (an ``Applier``'s
    keeps an index of the children)."""
    metadata = first(root, "metadata")
    return None if metadata is None else first(metadata, _A + "profiles")


def _domain_requests(root: etree._Element) -> list[tuple[ProfileRef, dict[str, str]]]:
    ours = _our_metadata(root)
    if ours is None:
        return []
    requests = []
    for use in ours.findall(_A + "use"):
        text = use.get("profile", "")
        try:
            priority = parse_priority(use.get("priority")) if use.get("priority") else None
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
    recorded = {}
    for p in applied.findall(_A + "profile"):
        name = p.get("name")
        if not name or name in recorded:   # (read as a profile called "", or the last won)
            what = "has a <profile> without a name" if not name else f"names {name!r} twice"
            raise ComposeError(f"domain metadata line {p.sourceline}: <aiovirt:applied> "
                               f"{what}")
        recorded[name] = (p.get("version", ""), p.get("digest", ""),
                          {q.get("name", ""): q.get("value", "")
                           for q in p.findall(_A + "param")})
    return recorded


_Applied = tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...]
"""An applied set as the record keeps it: (name, version, digest, sorted parameters) each."""


def _record(root: etree._Element, applied: _Applied,
            first: Callable[[etree._Element, str], etree._Element | None] = _first) -> None:
    """Write ``<aiovirt:applied>`` into the domain's metadata (replacing an older one);
    ``first`` as for ``_our_metadata`` (the tree changes only after its last use)."""
    metadata = first(root, "metadata")
    if metadata is None:
        metadata = etree.SubElement(root, "metadata")
        ours = None
    else:
        ours = first(metadata, _A + "profiles")
    if ours is None:
        metadata.append(_record_element(applied).__copy__())
        return
    old = next(ours.iterchildren(_A + "applied"), None)
    if old is not None:
        ours.remove(old)
    ours.append(_record_element(applied)[0].__copy__())


@functools.lru_cache(maxsize=1024)
def _record_element(key: _Applied) -> etree._Element:
    """``<aiovirt:profiles><aiovirt:applied>`` for one applied set, built once (callers
    append a copy)."""
    ours = etree.Element(_A + "profiles", nsmap={"aiovirt": NS})
    record = etree.SubElement(ours, _A + "applied")
    digest = hashlib.sha256()
    for name, version, profile_digest, params in key:
        entry = etree.SubElement(record, _A + "profile", name=name, version=version,
                                 digest=profile_digest)
        digest.update(f"{name}@{version} {profile_digest}".encode())
        for param, value in params:
            etree.SubElement(entry, _A + "param", name=param, value=value)
            digest.update(f" {param}={value}".encode())
        digest.update(b"\n")
    record.set("digest", "sha256:" + digest.hexdigest()[:32])
    return ours


# -- composition --------------------------------------------------------------------------------

class _Composer:
    """One composition's view of its input: which profiles apply, their parameters, and the
    conditions over the domain, the capabilities and the parameters."""

    def __init__(self, library: Library, root: etree._Element, caps: etree._Element,
                 domcaps: etree._Element, upgrade: bool,
                 first: Callable[[etree._Element, str], etree._Element | None] = _first
                 ) -> None:
        self.library = library
        self.root = root
        self.caps = caps
        self.domcaps = domcaps
        self.upgrade = upgrade
        self.ours = _our_metadata(root, first)
        self.recorded = _recorded(root) if self.ours is not None else {}
        # profiles with a select= parameter: (values given, the domain's values), to work
        # their parameters out again when their turn comes
        self.late: dict[str, tuple[Mapping[str, str], dict[str, str]]] = {}
        # per profile: parameters given over the values the domain's <aiovirt:use> has
        self.overridden: dict[str, list[str]] = {}

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
        explicit: dict[str, int] = {}   # priorities the caller or the domain gave

        def take(ref: ProfileRef, reason: str, params: dict[str, str], depth: int = 0) -> None:
            if depth > MAX_CHAIN:   # (Python's own recursion limit would say it otherwise)
                raise ComposeError(f"{reason}: profiles requiring profiles more than "
                                   f"{MAX_CHAIN} deep")
            profile = self._lookup(ref)
            if profile.name in chosen:
                have = chosen[profile.name][0]
                if have.version != profile.version:
                    raise ProfileConflict(f"{have.id} ({chosen[profile.name][2]}) and "
                                          f"{profile.id} ({reason}) are both selected")
                if reason == "domain metadata":
                    merge(profile, ref, params)
                return
            priority = ref.priority if ref.priority is not None else profile.priority
            if ref.priority is not None:
                explicit[profile.name] = ref.priority
            chosen[profile.name] = (profile, priority, reason, params)
            for required in profile.requires:
                take(required, f"required by {profile.id}", {}, depth + 1)

        def merge(profile: Profile, ref: ProfileRef, params: dict[str, str]) -> None:
            """The domain's ``<aiovirt:use>`` of a profile already chosen (named by the
            caller, or required): its parameters and priority count too, the caller's own
            priority over the domain's (the reason says so); listed twice, it must agree."""
            _, priority, reason, had = chosen[profile.name]
            if "domain metadata" in reason and (had != params or
                                                ref.priority != explicit.get(profile.name)):
                raise ComposeError(f"domain metadata: <aiovirt:use> names {profile.name} "
                                   "twice, with different parameters or priorities")
            reason += ", domain metadata"
            if ref.priority is not None:
                if profile.name not in explicit:
                    priority = explicit[profile.name] = ref.priority
                elif explicit[profile.name] != ref.priority:
                    reason += (f" (priority {priority} as requested, not the domain's "
                               f"{ref.priority})")
            chosen[profile.name] = (profile, priority, reason, {**had, **params})

        for ref in requested:
            take(ref, "requested", {})
        if self.ours is not None:
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
        plan = profile_plan(profile)
        if not plan.match:
            return True
        for group in plan.match:
            if all(self._holds_test(plan, part) if isinstance(part, When)
                   else self._present(part) for part in group):
                return True
        return False

    def _holds_test(self, plan: ProfilePlan, test: When) -> bool:
        return self.holds(plan.profile, test, plan.match_variables)

    def _present(self, node: Node) -> bool:
        if node.tag == "domain":
            if any(self.root.get(name) != value for name, _, value in node.attrs):
                return False
            return all(self._present(child) for child in node.children)
        return any(_contains(child, node) for child in self.root.iterchildren(node.tag))

    # parameters ----------------------------------------------------------------------------
    def params(self, profile: Profile, given: Mapping[str, str],
               from_domain: dict[str, str]) -> dict[str, str]:
        values: dict[str, str] = {}
        for param in profile.params:
            scoped = f"{profile.name}.{param.name}"
            if scoped in given or param.name in given:
                value: str | None = given[scoped] if scoped in given else given[param.name]
                if param.name in from_domain and from_domain[param.name] != value:
                    self.overridden.setdefault(profile.name, []).append(
                        f"{param.name}={value} as given, not the domain's "
                        f"{from_domain[param.name]}")
            elif param.name in from_domain:
                value = from_domain[param.name]
            else:
                value = self._select(profile, param.name, param.select or "", values) \
                    if param.select is not None else None
                if not value:  # select found nothing: the plain default
                    value = param.default
            if value is None:
                raise ParameterError(f"profile {profile.id} needs parameter {param.name!r}"
                                     f"{': ' + param.description if param.description else ''}"
                                     f" (give it as {param.name}=VALUE)")
            values[param.name] = param.convert(value, profile.id)
        return values

    def _select(self, profile: Profile, name: str, expression: str,
                values: dict[str, str]) -> str:
        try:
            result = profile_plan(profile).selects[name](self.root, **self.variables(values))
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

    def variables(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**params, "domain": self.root, "caps": self.caps, "domcaps": self.domcaps}

    # conditions --------------------------------------------------------------------------------
    def run(self, profile: Profile, steps: tuple[_Do | _If, ...], params: dict[str, str],
            applier: Applier | list[_Do], again: bool,
            typed_params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Apply each action whose conditions hold, in document order (``applier`` a list:
        collect them instead); each condition is evaluated when its turn comes, over the
        domain as composed up to there.  Returns the typed parameters, once made, for the
        caller's next call."""
        for step in steps:
            if type(step) is _Do:
                if type(applier) is list:
                    applier.append(step)
                elif step.plan is None:
                    raise step.error  # type: ignore[misc]
                else:
                    applier.apply(step.plan, step.writer, again)  # type: ignore[union-attr]
                continue
            for test, _, inner in step.branches:  # type: ignore[union-attr]
                if test is not None:
                    if typed_params is None:
                        typed_params = typed(profile_plan(profile).types, params)
                    if not self.holds(profile, test, typed_params):
                        continue
                typed_params = self.run(profile, inner, params, applier, again, typed_params)
                break
        return typed_params

    def specialize(self, profile: Profile, steps: tuple[_Do | _If, ...],
                   params: dict[str, str]) -> tuple[_Do | _If, ...]:
        """``steps`` with every condition that reads only variables (capabilities,
        parameters) decided: what ``run`` is left to evaluate reads the domain.  A condition
        that fails to evaluate stays, to fail if and when it is reached."""
        typed_params = typed(profile_plan(profile).types, params)
        flat: list[_Do | _If] = []
        for step in steps:
            if type(step) is _Do:
                flat.append(step)
                continue
            branches: list[tuple[When | None, bool, tuple[_Do | _If, ...]]] = []
            for test, free, inner in step.branches:  # type: ignore[union-attr]
                inner = self.specialize(profile, inner, params)
                if test is not None and free:
                    try:
                        holds = self.holds(profile, test, typed_params)
                    except ComposeError:
                        branches.append((test, False, inner))
                        continue
                    if not holds:
                        continue  # never taken
                    test = None   # always taken (if reached)
                branches.append((test, False, inner))
                if test is None:
                    break
            if branches and branches[0][0] is None:
                flat.extend(branches[0][2])
            elif branches:
                flat.append(_If(tuple(branches)))
        return tuple(flat)

    def holds(self, profile: Profile, when: When, params: Mapping[str, Any]) -> bool:
        """Whether ``when``'s test is true; ``params``: the typed parameter values."""
        assert when.xpath is not None and when.test is not None
        variables = {}
        for name in variables_of(when.test):  # only these: lxml binds every one it gets
            if name in params:
                variables[name] = params[name]
            elif name in _SPECIAL:
                variables[name] = self.root if name == "domain" else \
                    self.caps if name == "caps" else self.domcaps
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


@dataclass(frozen=True, slots=True, eq=False)
class _Do:
    """A compiled action: its plan and its writer (or the error its parameters make)."""

    plan: ActionPlan | None
    writer: Writer
    error: ComposeError | None = None


@dataclass(frozen=True, slots=True, eq=False)
class _If:
    """A ``<when>`` (one branch) or ``<choose>``: (test or None for otherwise, whether the
    test reads only variables, the steps) of which the first that holds applies."""

    branches: tuple[tuple[When | None, bool, tuple[_Do | _If, ...]], ...]


@functools.lru_cache(maxsize=4096)
def _profile_steps(profile: Profile, priority: int, items: tuple[tuple[str, str], ...]
                   ) -> tuple[_Do | _If, ...]:
    """A profile's steps compiled for one priority and parameter values, once."""
    return _compile_steps(profile, profile.steps, priority, items)


def _compile_steps(profile: Profile, steps: Sequence[Step], priority: int,
                   items: tuple[tuple[str, str], ...]) -> tuple[_Do | _If, ...]:
    compiled: list[_Do | _If] = []
    for step in steps:
        if isinstance(step, Action):
            writer = Writer(profile.id, priority, step.describe(), step.hard, profile.source,
                            step.line)
            try:
                compiled.append(_Do(action_plan(step, items if step.templated else (),
                                                profile.id), writer))
            except ComposeError as exc:  # raised if and when the action is reached
                compiled.append(_Do(None, writer, exc))
        else:
            branches = (step,) if isinstance(step, When) else step.branches
            compiled.append(_If(tuple(
                (branch if branch.test is not None else None,
                 branch.test is not None and reads_only_variables(branch.test),
                 _compile_steps(profile, branch.steps, priority, items))
                for branch in branches)))
    return tuple(compiled)


def _copy(element: etree._Element) -> etree._Element:
    return copy.deepcopy(element)


def _as_tree(value: str | bytes | etree._Element | None, what: str,
             root_tag: str) -> etree._Element | None:
    if value is None:
        return None
    if isinstance(value, etree._Element):
        root = value
    elif isinstance(value, str | bytes):
        root = _parsed(value, what)
    else:
        raise ComposeError(f"{what}: expected XML text or an element, not "
                           f"{type(value).__name__} ({value!r:.60})")
    if root.tag != root_tag:
        raise ComposeError(f"{what}: expected <{root_tag}>, found <{root.tag}>")
    return root


@functools.lru_cache(maxsize=32)
def _parsed(text: str | bytes, what: str) -> etree._Element:
    """Capabilities documents parsed once per text: conditions only read them, and an
    application passes the same host's (domain) capabilities to many compositions."""
    return parse(text, source=what)


def compose(domain: str | bytes | etree._Element, profiles: Sequence[str | ProfileRef] = (),
            *, params: Mapping[str, str] | None = None,
            caps: str | bytes | etree._Element | CapabilitySet | None = None,
            domcaps: str | bytes | etree._Element | None = None,
            library: Library | None = None, validate: bool | None = None,
            upgrade: bool = False, input_wins: bool = False, input_priority: int | None = None,
            record: bool = True, address: Tunables | bool = False, aliases: bool = False,
            source: str = "<domain>") -> Composition:
    """Apply profiles to a (possibly partial) domain XML.

    ``profiles``: "NAME" or "NAME@VERSION" (or ``ProfileRef``); ``params``: "NAME=value"
    pairs as a dict, "PROFILE.NAME" for one profile only; ``caps``/``domcaps``: the host and
    domain capabilities XML for conditions (a ``CapabilitySet`` as ``caps`` gives both, as
    what all of a fleet's hosts can do); ``validate``: check the result against libvirt's
    schema (None: when the schema is installed).  Profiles act on the input's own values;
    ``input_wins=True`` keeps aiovirt 0.1's rules instead: the input is a writer of priority
    ``input_priority`` (default 99) that profiles below it do not override.  ``aliases=True``:
    give every device that lacks one a stable user alias (``ua-…``, after addressing), the
    identity ``aiovirt.metadata`` binds per-device data to (off by default: with no
    profiles, compose changes nothing).  Raises ``ComposeError``
    subclasses.
    """
    return Composer(library, caps=caps, domcaps=domcaps, validate=validate, upgrade=upgrade,
                    input_wins=input_wins, input_priority=input_priority, record=record,
                    address=address, aliases=aliases).compose(domain, profiles, params=params,
                                                              source=source)


def compose_many(domains: Iterable[str | bytes | etree._Element],
                 profiles: Sequence[str | ProfileRef] = (), *,
                 params: Mapping[str, str] | None = None, **settings: Any
                 ) -> list[Composition]:
    """``compose`` every domain with the same profiles, parameters and settings (the keyword
    arguments of ``Composer``): capabilities are parsed once, selections and plans shared."""
    return Composer(**settings).compose_all(domains, profiles, params=params)


_SPECIAL = ("domain", "caps", "domcaps")
# a profile ready to apply: profile, priority, why chosen, parameter values, the same as
# sorted pairs, its compiled steps
_Prepared = tuple[Profile, int, str, dict[str, str], tuple[tuple[str, str], ...],
                  "tuple[_Do | _If, ...]"]
_NOBODY = Writer(INPUT, LOWEST)  # the input when actions apply to it: owns nothing
_CACHE_LIMIT = 8192  # entries per kind of derived answer; a full table starts over


def _table(library: Library, kind: str) -> dict[Any, Any]:
    """The library's cache of one kind of derived answer (one table per kind, so that many
    answers of one kind do not push out the others)."""
    table = library.derived.get(kind)
    if table is None:
        table = library.derived[kind] = {}
    return table  # type: ignore[return-value]


def _keep(table: dict[Any, Any], key: object, value: object) -> None:
    if len(table) >= _CACHE_LIMIT:
        table.clear()
    table[key] = value


class Composer:
    """Settings shared by many compositions (the library, the host's capabilities, the
    mode) with what can be worked out once for all of them: parsed capabilities, profile
    selections, parameter values.  ``compose`` one domain, ``compose_all`` a batch.

    The keyword arguments mean what they mean for ``compose``."""

    def __init__(self, library: Library | None = None, *,
                 caps: str | bytes | etree._Element | CapabilitySet | None = None,
                 domcaps: str | bytes | etree._Element | None = None,
                 validate: bool | None = None, upgrade: bool = False,
                 input_wins: bool = False, input_priority: int | None = None,
                 record: bool = True, address: Tunables | bool = False,
                 aliases: bool = False) -> None:
        for name, value in (("upgrade", upgrade), ("input_wins", input_wins),
                            ("record", record), ("aliases", aliases)):
            if not isinstance(value, bool):
                raise ComposeError(f"{name} is True or False, not {value!r:.60}")
        if not isinstance(validate, bool | None):
            raise ComposeError(f"validate is True, False or None, not {validate!r:.60}")
        if not isinstance(address, bool | Tunables):
            raise ComposeError(f"address is True, False or a Tunables, not {address!r:.60}")
        if input_priority is not None and type(input_priority) is not int:
            raise ComposeError(f"input_priority is an int (a profile priority), not "
                               f"{input_priority!r:.60}")
        if input_priority is not None and not input_wins:
            raise ComposeError(f"input_priority={input_priority} only applies with "
                               "input_wins=True (by default profiles act on the input's values "
                               "and priorities order profiles among themselves)")
        if isinstance(caps, CapabilitySet):
            if domcaps is not None:
                raise ComposeError("caps is a CapabilitySet, which carries its own domcaps: "
                                   "do not pass domcaps as well")
            caps, domcaps = caps.caps, caps.domcaps
        self.library = library if library is not None else Library.default()
        self.caps = _as_tree(caps, "capabilities", "capabilities") \
            if caps is not None else _EMPTY_CAPS
        self.domcaps = _as_tree(domcaps, "domain capabilities", "domainCapabilities") \
            if domcaps is not None else _EMPTY_DOMCAPS
        self.upgrade = upgrade
        self.input_wins = input_wins
        self.input = Writer(INPUT, 99 if input_priority is None else input_priority) \
            if input_wins else _NOBODY
        self.record = record
        self.address = address
        self.aliases = aliases
        self.schema = validator()
        self.validate = bool(validate or (validate is None and self.schema is not None))
        if self.validate and self.schema is None:
            raise ComposeError("validation asked for, but libvirt's schema is not installed "
                               "(/usr/share/libvirt/schemas/domain.rng)")

    def compose_all(self, domains: Iterable[str | bytes | etree._Element],
                    profiles: Sequence[str | ProfileRef] = (), *,
                    params: Mapping[str, str] | None = None) -> list[Composition]:
        """Compose each domain with the same profiles and parameters; an error names the
        domain's position in the batch (``#N``, from 0)."""
        refs = _refs(profiles)
        results = []
        for index, domain in enumerate(domains):
            try:
                results.append(self.compose(domain, refs, params=params,
                                            source=f"<domain #{index}>"))
            except ComposeError as exc:
                exc.add_note(f"(domain #{index} of the batch)")
                raise
        return results

    def compose(self, domain: str | bytes | etree._Element,
                profiles: Sequence[str | ProfileRef] = (), *,
                params: Mapping[str, str] | None = None,
                source: str = "<domain>") -> Composition:
        """Apply profiles to one (possibly partial) domain XML; see ``compose``."""
        if isinstance(domain, etree._Element):
            root = strip_indentation(_copy(domain))
        else:
            root = parse(domain, source=source)
        if root.tag != "domain":
            raise ComposeError(f"{source}: expected a <domain> document, found <{root.tag}>")
        applier = Applier(root, self.input, self.input_wins)
        composer = _Composer(self.library, root, self.caps, self.domcaps, self.upgrade,
                             applier.first)
        result = Composition(root)
        prepared = self._prepare(composer, self._refs(profiles), params, result.skipped)
        applier.shared = _shared(prepared)
        specialized = _table(self.library, "steps")
        ran: list[_Prepared] = []
        for profile, priority, reason, values, items, steps in prepared:
            late = composer.late.get(profile.name)
            if late is not None:   # select= reads the domain as composed up to here
                values = composer.params(profile, *late)
                items = tuple(sorted(values.items()))
                steps = _profile_steps(profile, priority, items)
            ran.append((profile, priority, reason, values, items, steps))
            result.applied.append(AppliedProfile(profile, priority, dict(values), reason))
            again = profile.name in composer.recorded
            key = (steps, self.caps, self.domcaps)
            special = specialized.get(key)
            if special is None:
                special = composer.specialize(profile, steps, values)
                _keep(specialized, key, special)
            if self.input_wins:  # as in 0.1: every condition before any action
                found: list[_Do] = []
                composer.run(profile, special, values, found, again)  # type: ignore[arg-type]
                for do in found:
                    if do.plan is None:
                        raise do.error  # type: ignore[misc]
                    applier.apply(do.plan, do.writer, again)
            else:
                composer.run(profile, special, values, applier, again)  # type: ignore[arg-type]
        result._applier = applier
        result.upgrades = _upgrades(composer.recorded, result.applied)
        if self.record and result.applied:
            _record(root, tuple((p.name, p.version, p.digest, items)
                                for p, _, _, _, items, _ in ran), applier.first)
        if self.address is not False:
            result.addressed = address_tree(root, self.address
                                            if isinstance(self.address, Tunables) else None)
        if self.aliases:
            result.aliased = assign_user_aliases(root)
        if self.validate:
            assert self.schema is not None
            _validate(self.schema, result)
            result.validated = True
        return result

    def _refs(self, profiles: Sequence[str | ProfileRef]) -> tuple[ProfileRef, ...]:
        """The requested profiles as ``ProfileRef``s (the answer kept per request)."""
        if isinstance(profiles, str | ProfileRef):
            return _refs(profiles)   # raises
        table = _table(self.library, "refs")
        try:
            key = tuple(profiles)
            refs = table.get(key)
        except TypeError:  # something unhashable: let ProfileRef.parse say what is wrong
            return _refs(profiles)
        if refs is None:
            refs = _refs(profiles)
            _keep(table, key, refs)
        return refs  # type: ignore[no-any-return]

    def _prepare(self, composer: _Composer, refs: tuple[ProfileRef, ...],
                 params: Mapping[str, str] | None, skipped: list[tuple[str, str]]
                 ) -> list[_Prepared]:
        """The profiles to apply, in order, each with its parameter values and compiled
        steps; those whose ``<match>`` fails go to ``skipped``.  Worked out once per library,
        request and parameters when nothing in the domain can change it."""
        given = dict(params) if params else {}
        for name, value in given.items():
            if not isinstance(name, str):
                raise ParameterError(f"parameter names are text (NAME or PROFILE.NAME), not "
                                     f"{name!r:.60}")
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise ParameterError(f"parameter {name!r} must be given as text, not "
                                     f"{type(value).__name__} ({value!r:.60})")
        given_key = tuple(sorted(given.items())) if given else ()
        key = (refs, given_key, self.upgrade)
        table = _table(self.library, "prepared")
        cacheable = composer.ours is None and not self.library.auto_profiles()
        if cacheable:
            hit = table.get(key)
            if hit is not None:
                return hit  # type: ignore[no-any-return]
        selected = self._select(composer, refs, given, given_key)
        prepared = []
        for profile, priority, reason, from_domain in selected:  # before any change: inputs
            if profile.match:
                cacheable = False
                if reason != "matched" and not composer.matches(profile):
                    skipped.append((profile.id, "its <match> does not match the domain"))
                    continue
            if from_domain or profile_plan(profile).selects:
                cacheable = False
            if profile_plan(profile).selects:
                composer.late[profile.name] = (given, from_domain)
            values, items = self._params(composer, profile, given, given_key, from_domain)
            overridden = composer.overridden.pop(profile.name, None)
            if overridden:   # said, not lost: the domain's values the caller's replaced
                reason += f" ({'; '.join(overridden)})"
            prepared.append((profile, priority, reason, values, items,
                             _profile_steps(profile, priority, items)))
        if cacheable:
            _keep(table, key, prepared)
        return prepared

    def _select(self, composer: _Composer, refs: tuple[ProfileRef, ...],
                given: Mapping[str, str], given_key: tuple[tuple[str, str], ...]
                ) -> list[tuple[Profile, int, str, dict[str, str]]]:
        """The profiles that apply, checked against the parameters given.  When nothing in
        the domain can change the answer (no aiovirt metadata, no auto profiles), it is
        worked out once per library, request and parameters (for requests whose profiles
        have a ``<match>``: the rest is kept by ``_prepare``)."""
        table = _table(self.library, "select")
        key = (refs, given_key, self.upgrade)
        if composer.ours is None and not self.library.auto_profiles():
            hit = table.get(key)
            if hit is not None:
                return hit  # type: ignore[no-any-return]
        else:
            key = None  # type: ignore[assignment]
        selected = composer.select(refs)
        _check_given(given, [s[0] for s in selected])
        for profile, _, reason, recorded in selected:   # the domain's own <aiovirt:param>s
            for name in recorded:
                if profile.param(name) is None:
                    raise ParameterError(
                        f"{reason}: <aiovirt:param name={name!r}>: profile {profile.id} has "
                        f"no such parameter (it has: "
                        f"{', '.join(p.name for p in profile.params) or 'none'})")
        if key is not None:
            _keep(table, key, selected)
        return selected

    def _params(self, composer: _Composer, profile: Profile, given: Mapping[str, str],
                given_key: tuple[tuple[str, str], ...], from_domain: dict[str, str]
                ) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
        """A profile's parameter values, and the same as sorted pairs (the key of its action
        plans); worked out once per profile and parameters given unless the domain has a say
        (``select=`` or values in its metadata)."""
        cacheable = not from_domain and not profile_plan(profile).selects
        key = (profile, given_key)
        table = _table(self.library, "params")
        if cacheable:
            hit = table.get(key)
            if hit is not None:
                return hit  # type: ignore[no-any-return]
        values = composer.params(profile, given, from_domain)
        found = (values, tuple(sorted(values.items())))
        if cacheable:
            _keep(table, key, found)
        return found


def _shared(prepared: list[_Prepared]) -> frozenset[int]:
    """The priorities more than one of the profiles has."""
    seen: set[int] = set()
    shared = set()
    for _, priority, *_ in prepared:
        if priority in seen:
            shared.add(priority)
        seen.add(priority)
    return frozenset(shared)


def _refs(profiles: Sequence[str | ProfileRef]) -> tuple[ProfileRef, ...]:
    if isinstance(profiles, str | ProfileRef):   # one name where a list belongs: not letters
        raise BadProfileReference(f"profiles is a list of names; got the lone {profiles!r:.60}"
                                  f" (write [{str(profiles)!r:.60}])")
    return tuple(p if isinstance(p, ProfileRef) else ProfileRef.parse(p) for p in profiles)


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
