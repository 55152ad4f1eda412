"""Where profiles come from: the shipped library, system and user directories, application
paths and in-memory strings, in that order.

A later source overrides an earlier one by name: asking for ``name`` gives the newest version
that the *last* source defining ``name`` has.  Every version stays selectable by
``name@version`` (the last source holding that exact version wins).  Profiles that ``extends``
another are resolved here: the parent's parameters and actions come first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from .errors import ProfileSyntaxError, UnknownProfile
from .profile import (MAX_CHAIN, Profile, ProfileRef, check_placeholders, load_profiles, parse_profiles,
                      version_key)

__all__ = ["Library", "SYSTEM_DIR", "shipped_dir", "user_dir"]

SYSTEM_DIR = Path("/etc/aiovirt/profiles")


def shipped_dir() -> Path:
    """The profiles that ship with aiovirt (``profiles/`` in the source tree)."""
    packaged = resources.files("aiovirt") / "_profiles"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "profiles"


def user_dir() -> Path:
    """``$XDG_CONFIG_HOME/aiovirt/profiles`` (``~/.config/aiovirt/profiles``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return Path(base) / "aiovirt" / "profiles"


@dataclass(frozen=True, slots=True)
class _Entry:
    profile: Profile
    rank: int  # index of the source: later sources win


class Library:
    """A set of profiles from ordered sources; look them up with ``get``."""

    def __init__(self, profiles: Iterable[Profile] = (), *, sources: Sequence[str] = ()) -> None:
        self.sources = list(sources)
        self._by_name: dict[str, list[_Entry]] = {}
        self._resolved: dict[tuple[str, str], Profile] = {}
        self._auto: list[Profile] | None = None
        self._got: dict[object, Profile] = {}  # get()'s answers until the library changes
        # what callers work out from the profiles (composition's selections and parameter
        # values), kept until the library changes
        self.derived: dict[object, object] = {}
        for profile in profiles:
            self._insert(profile, 0)

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def default(cls, paths: Sequence[str | os.PathLike[str]] = (),
                strings: Sequence[str] = (), *, system: bool = True,
                user: bool = True) -> Library:
        """The shipped profiles, then ``/etc/aiovirt/profiles``, the user's directory,
        ``paths`` (files or directories) and ``strings`` (XML documents)."""
        library = cls()
        library.add_path(shipped_dir())
        if system:
            library.add_path(SYSTEM_DIR, missing_ok=True)
        if user:
            library.add_path(user_dir(), missing_ok=True)
        for path in paths:
            library.add_path(path)
        for text in strings:
            library.add_string(text)
        return library

    def add_path(self, path: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
        """Add a profile file, or every ``*.xml`` in a directory, as the next source."""
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("*.xml"))
        elif path.exists():
            files = [path]
        elif missing_ok:
            return
        else:
            raise ProfileSyntaxError("no such profile file or directory", source=str(path))
        rank = len(self.sources)
        self.sources.append(str(path))
        for file in files:
            for profile in load_profiles(str(file)):
                self._insert(profile, rank)

    def add_string(self, text: str, source: str = "<string>") -> list[Profile]:
        """Add profiles from an XML document (one ``<profile>`` or ``<profiles>``)."""
        rank = len(self.sources)
        self.sources.append(source)
        profiles = parse_profiles(text, source=source)
        for profile in profiles:
            self._insert(profile, rank)
        return profiles

    def add(self, profile: Profile) -> None:
        """Add one parsed profile as the next source."""
        rank = len(self.sources)
        self.sources.append(profile.source)
        self._insert(profile, rank)

    def _insert(self, profile: Profile, rank: int) -> None:
        entries = self._by_name.setdefault(profile.name, [])
        entries[:] = [e for e in entries if e.profile.version != profile.version]
        entries.append(_Entry(profile, rank))
        self._resolved.clear()
        self._got.clear()
        self.derived.clear()
        self._auto = None

    # -- lookup ------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def versions(self, name: str) -> list[str]:
        """Every version of ``name`` the library holds, oldest first."""
        return sorted((e.profile.version for e in self._by_name.get(name, [])),
                      key=version_key)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):  # type: ignore[no-untyped-def]
        """The current profile of every name (resolved), by name."""
        return iter([self.get(name) for name in self.names()])

    def __len__(self) -> int:
        return len(self._by_name)

    def auto_profiles(self) -> list[Profile]:
        """The current profiles marked ``auto='yes'`` (selected by their ``<match>``)."""
        if self._auto is None:
            self._auto = [p for p in self if p.auto]
        return self._auto

    def get(self, ref: str | ProfileRef) -> Profile:
        """The profile ``ref`` names (``NAME`` or ``NAME@VERSION``), with ``extends``
        resolved; ``UnknownProfile`` says what exists instead."""
        key = ref if isinstance(ref, str) else (ref.name, ref.version)
        cached = self._got.get(key)
        if cached is not None:
            return cached
        if isinstance(ref, str):
            ref = ProfileRef.parse(ref)
        profile = self._got[key] = self._resolve(self._find(ref), ())
        return profile

    def _find(self, ref: ProfileRef) -> Profile:
        """The profile ``ref`` names, ``extends`` not resolved."""
        entries = self._by_name.get(ref.name)
        if not entries:
            raise UnknownProfile(f"unknown profile {ref.name!r}"
                                 + _suggest(ref.name, self._by_name))
        if ref.version is None:
            top = max(e.rank for e in entries)
            return max((e for e in entries if e.rank == top),
                       key=lambda e: version_key(e.profile.version)).profile
        for entry in entries:
            if entry.profile.version == ref.version:
                return entry.profile
        raise UnknownProfile(f"profile {ref.name!r} has no version {ref.version!r} "
                             f"(available: {', '.join(self.versions(ref.name))})")

    def _resolve(self, profile: Profile, chain: tuple[str, ...]) -> Profile:
        """Merge a profile with the one it extends (recursively)."""
        if profile.extends is None:
            return profile
        key = (profile.name, profile.version)
        if key in self._resolved:
            return self._resolved[key]
        if profile.id in chain:
            raise ProfileSyntaxError(f"profile {profile.id} extends itself through "
                                     f"{' -> '.join(chain)}", source=profile.source,
                                     line=profile.line)
        if len(chain) >= MAX_CHAIN:
            raise ProfileSyntaxError(f"profile {profile.id}: profiles extending one another "
                                     f"more than {MAX_CHAIN} deep (from {chain[0]})",
                                     source=profile.source, line=profile.line)
        try:
            parent = self._find(profile.extends)
        except UnknownProfile as exc:
            raise UnknownProfile(f"profile {profile.id} ({profile.source}:{profile.line}) "
                                 f"extends {profile.extends}: {exc}") from None
        if parent.id == profile.id:   # (another version of its own name is fine)
            raise ProfileSyntaxError(f"profile {profile.id} extends itself",
                                     source=profile.source, line=profile.line)
        parent = self._resolve(parent, (*chain, profile.id))
        own = {p.name for p in profile.params}
        merged = replace(
            profile, extends=None,
            params=tuple(p for p in parent.params if p.name not in own) + profile.params,
            requires=parent.requires + profile.requires,
            conflicts=parent.conflicts + profile.conflicts,
            match=profile.match or parent.match,
            steps=parent.steps + profile.steps,
            namespaces={**parent.namespaces, **profile.namespaces},
            description=profile.description or parent.description,
            digest=_combine(parent.digest, profile.digest))
        check_placeholders(merged)
        self._resolved[key] = merged
        return merged


def _combine(*digests: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256("/".join(digests).encode()).hexdigest()[:32]


def _suggest(name: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else \
        f" (known: {', '.join(sorted(known)) or 'none'})"
