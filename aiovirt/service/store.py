"""Application profiles on disk: one ``NAME@VERSION.xml`` per profile in the store's
directory, written atomically, layered over the shipped (and system) profiles.

The current ``Library`` is rebuilt from disk after every change and swapped in whole, so a
composition or a job keeps the library it started with.  A profile is checked before it is
written (syntax, lint, that every profile still resolves), so a rejected one changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio

from ..compose import Library, Profile
from ..compose.errors import ComposeError, UnknownProfile
from ..compose.library import SYSTEM_DIR, shipped_dir
from ..compose.lint import lint
from ..compose.profile import load_profiles, parse_profiles
from ..errors import XMLInputError
from ..xml.safe import parse

__all__ = ["ProfileStore", "StoreError", "write_atomically"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_DECLARATION = re.compile(r"^\s*<\?xml\b[^>]*\?>")
_TEMP_SUFFIX = ".tmp"


class StoreError(Exception):
    """A store operation refused or failed: ``status`` is the HTTP status that fits (404,
    409, 422; 500 when the disk fails us)."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems or []


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a
    part: a temporary file in the same directory, fsynced, renamed over, then the directory
    fsynced so the rename survives a crash."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Stored:
    """An application profile and the file holding it (with how many profiles it holds)."""

    profile: Profile
    path: Path
    shares: int


class ProfileStore:
    """The profile library a service uses, and the directory of application profiles."""

    def __init__(self, directory: str | os.PathLike[str], *, system: bool = True) -> None:
        self.directory = Path(directory).expanduser().absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"profiles directory {self.directory} is not a directory")
        self.system = system
        self._lock = anyio.Lock()
        self._clean_temporaries()
        self.library, self._stored = self._load()

    # -- reading -----------------------------------------------------------------------------------
    def origin(self, profile: Profile) -> str:
        """Where a profile comes from: application, shipped, system or string."""
        source = Path(profile.source)
        if source.parent == self.directory:
            return "application"
        if source.parent == shipped_dir():
            return "shipped"
        if source.parent == SYSTEM_DIR:
            return "system"
        return "string"

    def stored(self, name: str) -> list[Profile]:
        """The application profiles (every version) named ``name``."""
        return [s.profile for (n, _), s in sorted(self._stored.items()) if n == name]

    def _base(self) -> Library:
        return Library.default(system=self.system, user=False)

    def _load(self, without: Iterable[Path] = ()) -> tuple[Library, dict[tuple[str, str],
                                                                       _Stored]]:
        """The library with the store's directory as the last source, and what it holds."""
        library = self._base()
        skip = set(without)
        stored: dict[tuple[str, str], _Stored] = {}
        files = sorted(self.directory.glob("*.xml")) if self.directory.is_dir() else []
        files = [f for f in files if f not in skip]
        if not skip:
            library.add_path(self.directory, missing_ok=True)
        else:   # the library as it would be without those files (to check a delete)
            for profile in (p for f in files for p in load_profiles(str(f))):
                library.add(profile)
        for file in files:
            profiles = load_profiles(str(file))
            for profile in profiles:
                stored[(profile.name, profile.version)] = _Stored(profile, file, len(profiles))
        return library, stored

    def _clean_temporaries(self) -> None:
        """Remove temporary files a crash left mid-write (never a finished profile)."""
        if self.directory.is_dir():
            for temp in self.directory.glob(f".*{_TEMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    temp.unlink()

    # -- changing ----------------------------------------------------------------------------------
    async def put(self, name: str, text: str) -> tuple[Profile, bool]:
        """Check the profile document ``text`` (one ``<profile name=NAME>``) and store it as
        ``NAME@VERSION.xml``; returns the profile and whether it is new (not a replacement).
        ``XMLInputError`` for XML that does not parse, ``StoreError`` for the rest."""
        _check_name(name)
        text = _DECLARATION.sub("", text, count=1)
        parse(text, source=f"profile {name}")   # XMLInputError (400) before profile errors
        async with self._lock:
            profile, path = self._check_put(name, text)
            created = not path.exists()
            try:
                old = await anyio.to_thread.run_sync(self._write, path, text.encode())
            except OSError as exc:
                raise StoreError(500, f"cannot write {path}: {exc.strerror or exc}") from None
            try:
                self.library, self._stored = self._load()
            except (ComposeError, XMLInputError):
                await anyio.to_thread.run_sync(self._restore, path, old)
                raise
            return profile, created

    def _check_put(self, name: str, text: str) -> tuple[Profile, Path]:
        try:
            profiles = parse_profiles(text, source=f"profile {name}")
        except XMLInputError as exc:
            raise StoreError(422, str(exc)) from None
        if len(profiles) != 1:
            raise StoreError(422, f"profile {name}: the document holds {len(profiles)} "
                                  "profiles; PUT one <profile> per name")
        profile = profiles[0]
        if profile.name != name:
            raise StoreError(422, f"the document is profile {profile.name!r}, but the URL "
                                  f"names {name!r}: they must be the same")
        path = self.directory / f"{profile.name}@{profile.version}.xml"
        self._check_not_shipped(name, "replace")
        held = self._stored.get((profile.name, profile.version))
        if held is not None and held.path != path:
            raise StoreError(409, f"profile {profile.id} is held in {held.path} (not written "
                                  "by this service): edit that file instead")
        candidate, _ = self._load()
        candidate.add_string(text, source=str(path))
        try:
            resolved = candidate.get(profile.id)
            problems = lint(resolved)
            for other in candidate.names():   # everything else must still resolve
                for version in candidate.versions(other):
                    candidate.get(f"{other}@{version}")
        except (ComposeError, XMLInputError) as exc:
            raise StoreError(422, f"profile {profile.id}: {exc}") from None
        if problems:
            raise StoreError(422, f"profile {profile.id} does not pass validation: "
                                  f"{problems[0]}", problems)
        return resolved, path

    def _write(self, path: Path, data: bytes) -> bytes | None:
        """Write one profile file (in a worker thread); returns what it replaced."""
        self.directory.mkdir(parents=True, exist_ok=True)
        old = path.read_bytes() if path.exists() else None
        write_atomically(path, data)
        return old

    def _restore(self, path: Path, old: bytes | None) -> None:
        """Undo ``_write`` (the library could not be rebuilt with the new file)."""
        if old is None:
            path.unlink()
            _fsync_dir(path.parent)
        else:
            write_atomically(path, old)

    async def delete(self, name: str, version: str | None = None) -> list[Profile]:
        """Remove application profile ``name`` (every version, or ``version``); returns what
        was removed.  Shipped and system profiles cannot be removed (409)."""
        async with self._lock:
            doomed = [s for (n, v), s in self._stored.items()
                      if n == name and (version is None or v == version)]
            if not doomed:
                self._check_not_shipped(name, "delete", version)
                what = f"profile {name!r}" if version is None else \
                    f"profile {name!r} version {version!r}"
                known = ", ".join(p.version for p in self.stored(name))
                raise StoreError(404, f"no application {what}" +
                                 (f" (stored versions: {known})" if known else ""))
            for item in doomed:
                if item.shares > 1:
                    raise StoreError(409, f"profile {item.profile.id} shares {item.path} with "
                                          "other profiles (not written by this service): "
                                          "edit that file instead")
            paths = [item.path for item in doomed]
            try:
                candidate, _ = self._load(without=paths)
                for other in candidate.names():
                    for each in candidate.versions(other):
                        candidate.get(f"{other}@{each}")
            except UnknownProfile as exc:
                raise StoreError(409, f"cannot delete {name}: another profile needs it: "
                                      f"{exc}") from None
            except ComposeError:
                pass   # only a missing profile blocks a delete; the rest shows when used
            try:
                await anyio.to_thread.run_sync(self._remove, paths)
            finally:   # also after a partial failure: the library shows what is on disk
                self.library, self._stored = self._load()
            return [item.profile for item in doomed]

    def _remove(self, paths: list[Path]) -> None:
        try:
            for path in paths:
                path.unlink()
        except OSError as exc:
            raise StoreError(500, f"cannot remove {exc.filename}: {exc.strerror or exc}"
                             ) from None
        finally:
            _fsync_dir(self.directory)

    def _check_not_shipped(self, name: str, action: str, version: str | None = None) -> None:
        """409 when ``name`` comes from outside the store (shipped or system)."""
        if name not in self.library:
            if action == "delete":
                raise StoreError(404, f"unknown profile {name!r}")
            return
        others = [p for p in _versions(self.library, name) if self.origin(p) != "application"]
        if version is not None:
            others = [p for p in others if p.version == version]
        if others:
            kind, where = self.origin(others[0]), others[0].source
            if action == "delete":
                raise StoreError(409, f"profile {name!r} is a {kind} profile ({where}): only "
                                      "application profiles (PUT /profiles/NAME) can be "
                                      "deleted")
            raise StoreError(409, f"profile {name!r} is a {kind} profile ({where}): an "
                                  "application profile cannot take its name; choose another")

def _versions(library: Library, name: str) -> list[Profile]:
    return [library.get(f"{name}@{v}") for v in library.versions(name)]


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise StoreError(422, f"{name!r} is not a profile name (letters, digits and ._+-, "
                              "starting with a letter or digit)")

