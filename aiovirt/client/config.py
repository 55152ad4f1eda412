"""libvirt's client configuration: ``libvirt.conf`` (default URI, aliases) and ``auth.conf``.

Two small parsers on text (libvirt's ``virconf`` syntax; GLib's key files) and the rules
libvirt uses to find the files and read them:

* ``libvirt.conf``: ``/etc/libvirt/libvirt.conf`` for root, else
  ``$XDG_CONFIG_HOME/libvirt/libvirt.conf`` (default ``~/.config``).  ``uri_default`` is the
  URI when none is given (``LIBVIRT_DEFAULT_URI`` beats it); ``uri_aliases`` maps short
  names (``[a-zA-Z0-9_-]``) to URIs.
* ``auth.conf``: ``$LIBVIRT_AUTH_FILE``, else the URI's ``?authfile=``, else
  ``$XDG_CONFIG_HOME/libvirt/auth.conf``, else ``/etc/libvirt/auth.conf``.  A group
  ``[auth-libvirt-HOST]`` (or ``[auth-libvirt-default]``) names ``credentials=NAME``, and
  ``[credentials-NAME]`` holds ``username``, ``authname``, ``password``, ``realm``.

Tests point these elsewhere with the environment (``HOME``, ``XDG_CONFIG_HOME``,
``LIBVIRT_AUTH_FILE``, ``LIBVIRT_DEFAULT_URI``) or, as root, by setting ``SYSCONFDIR``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

from ..errors import InvalidURI

__all__ = ["AuthConf", "ConfSyntaxError", "LibvirtConf", "SYSCONFDIR", "auth_conf_candidates",
           "conf_uint",
           "find_auth_conf", "libvirt_conf_path", "load_libvirt_conf", "parse_conf",
           "parse_keyfile", "resolve_uri", "user_config_dir"]

SYSCONFDIR = "/etc"   # libvirt's compiled-in sysconfdir on Debian

ConfValue = Union[str, int, list["ConfValue"]]
_ALIAS = re.compile(r"^[A-Za-z0-9_-]+$")


class ConfSyntaxError(ValueError):
    """A configuration file that does not parse; the message starts with ``file:line``."""


# -- libvirt's conf syntax (virconf.c) ------------------------------------------------------------
_MAX_DEPTH = 64   # lists inside lists, at most


class _ConfParser:
    """``name = value`` statements separated by newlines or ``;``; values are ``"str"``,
    ``'str'``, ``\"\"\"multi-line\"\"\"``, integers, or lists ``[v, ...]``; ``#`` comments.
    Strings have no escapes (as in libvirt)."""

    def __init__(self, text: str, source: str) -> None:
        self.text, self.source, self.pos, self.line = text, source, 0, 1
        self.depth = 0   # lists open around the value being read

    def error(self, message: str) -> ConfSyntaxError:
        return ConfSyntaxError(f"{self.source}:{self.line}: {message}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_blanks(self, newlines: bool = False) -> None:
        while self.peek() in (" ", "\t") or (newlines and self.peek() in ("\n", "\r")):
            if self.peek() == "\n":
                self.line += 1
            self.pos += 1

    def skip_comment(self) -> None:
        end = self.text.find("\n", self.pos)   # (a file of comments: one call per line)
        self.pos = len(self.text) if end < 0 else end

    def parse(self) -> dict[str, ConfValue]:
        values: dict[str, ConfValue] = {}
        while True:
            self.skip_blanks(newlines=True)
            if not self.peek():
                return values
            if self.peek() == "#":
                self.skip_comment()
                continue
            name = self.name()
            self.skip_blanks()
            if self.peek() != "=":
                raise self.error(f"expecting '=' after {name!r}")
            self.pos += 1
            values.setdefault(name, self.value())   # the first setting counts
            self.skip_blanks()
            if self.peek() == "#":
                self.skip_comment()
            if self.peek() == ";":
                self.pos += 1
            elif self.peek() not in ("", "\n", "\r"):
                raise self.error(f"expecting a new line or ';' after the value of {name!r}")

    def name(self) -> str:
        start = self.pos
        if not (self.peek().isascii() and self.peek().isalpha()):
            raise self.error(f"expecting a name, found {self.peek()!r}")
        while self.peek() and (self.peek().isascii() and (self.peek().isalnum()
                                                           or self.peek() == "_")):
            self.pos += 1
        return self.text[start:self.pos]

    def value(self) -> ConfValue:
        self.skip_blanks()
        char = self.peek()
        if self.text.startswith('"""', self.pos):
            end = self.text.find('"""', self.pos + 3)
            if end < 0:
                raise self.error("unterminated \"\"\" string")
            value = self.text[self.pos + 3:end]
            self.line += value.count("\n")
            self.pos = end + 3
            return value
        if char in ('"', "'"):
            end = self.pos + 1
            while end < len(self.text) and self.text[end] not in (char, "\n"):
                end += 1
            if end >= len(self.text) or self.text[end] != char:
                raise self.error("unterminated string")
            value = self.text[self.pos + 1:end]
            self.pos = end + 1
            return value
        if char == "[":
            return self.list()
        if char and (char.isdigit() or char in "+-"):
            match = re.compile(r"[+-]?[0-9]+").match(self.text, self.pos)
            if match is None:
                raise self.error("unterminated number")
            if len(match.group()) > 20:   # libvirt's numbers are long longs
                raise self.error(f"number {match.group()[:24]}... is too long")
            self.pos = match.end()
            return int(match.group())
        raise self.error(f"expecting a value, found {char or 'the end of the file'!r}")

    def list(self) -> list[ConfValue]:
        self.pos += 1
        items: list[ConfValue] = []
        self.skip_blanks(newlines=True)
        while self.peek() != "]":
            if not self.peek():
                raise self.error("list is not closed with ]")
            if items:
                if self.peek() != ",":
                    raise self.error("expecting ',' between list items")
                self.pos += 1
                self.skip_blanks(newlines=True)
                if self.peek() == "]":
                    break
                if not self.peek():
                    raise self.error("list is not closed with ]")
            if self.peek() == "[":
                self.depth += 1
                if self.depth > _MAX_DEPTH:   # (libvirt nests lists; Python's stack would end)
                    raise self.error(f"lists nested more than {_MAX_DEPTH} deep")
                items.append(self.value())
                self.depth -= 1
            else:
                items.append(self.value())
            self.skip_blanks(newlines=True)
        self.pos += 1
        return items


def parse_conf(text: str, source: str = "<string>") -> dict[str, ConfValue]:
    """Parse libvirt's conf syntax (``libvirt.conf``, ``libvirtd.conf``...) into a dict;
    the first setting of a name counts, as in ``virConfGetValue`` (virconf.c appends entries
    and looks up from the start).  ``ConfSyntaxError`` names ``source:line``."""
    return _ConfParser(text, source).parse()


def conf_uint(values: dict[str, ConfValue], name: str, default: int) -> int:
    """The unsigned int setting ``name`` as ``virConfGetValueUInt`` reads it (``default``
    when absent); ``ConfSyntaxError`` when the daemon would reject the value."""
    value = values.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ConfSyntaxError(f"{name}: expected an unsigned integer, got {value!r}")
    return value


# -- GLib key files (auth.conf) -------------------------------------------------------------
_ESCAPES = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def _unescape(value: str, where: str) -> str:
    out, i = [], 0
    while i < len(value):
        char = value[i]
        if char == "\\":
            if i + 1 >= len(value) or value[i + 1] not in _ESCAPES:
                raise ConfSyntaxError(f"{where}: invalid escape in {value!r}")
            out.append(_ESCAPES[value[i + 1]])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def parse_keyfile(text: str, source: str = "<string>") -> dict[str, dict[str, str]]:
    """Parse a GLib key file (``[group]``, ``key=value``, ``#`` comment lines) into
    ``{group: {key: value}}``; values take GLib's escapes (``\\s``, ``\\n``, ``\\t``,
    ``\\\\``); localised keys (``key[fr]``) are skipped."""
    groups: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{source}:{number}"
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise ConfSyntaxError(f"{where}: malformed group header {line!r}")
            current = groups.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfSyntaxError(f"{where}: expecting 'key=value', found {line!r}")
        if current is None:
            raise ConfSyntaxError(f"{where}: {key!r} comes before any [group]")
        if "[" in key:
            continue
        current[key] = _unescape(value.strip(), where)
    return groups


# -- where the files are --------------------------------------------------------------------
def user_config_dir(env: Mapping[str, str] | None = None) -> str:
    """libvirt's per-user configuration directory: ``$XDG_CONFIG_HOME/libvirt``, else
    ``$HOME/.config/libvirt``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "libvirt")


def libvirt_conf_path(euid: int | None = None) -> str:
    """``/etc/libvirt/libvirt.conf`` for root, the user's ``libvirt.conf`` otherwise."""
    if (os.geteuid() if euid is None else euid) == 0:
        return os.path.join(SYSCONFDIR, "libvirt", "libvirt.conf")
    return os.path.join(user_config_dir(), "libvirt.conf")


@dataclass(frozen=True)
class LibvirtConf:
    """What ``libvirt.conf`` says about URIs; ``exists`` is False if there was no file."""

    path: str
    exists: bool = False
    values: dict[str, ConfValue] = field(default_factory=dict)

    @property
    def uri_default(self) -> str | None:
        value = self.values.get("uri_default")
        if value is None:
            return None
        if not isinstance(value, str):
            raise InvalidURI(f"{self.path}: uri_default must be a string, not {value!r}")
        return value or None

    @property
    def uri_aliases(self) -> dict[str, str]:
        """The aliases, each checked: ``name=uri`` with a name of ``[a-zA-Z0-9_-]``; the
        first definition of a name wins (libvirt takes the first match)."""
        value = self.values.get("uri_aliases")
        if value is None:
            return {}
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidURI(f"{self.path}: uri_aliases must be a list of strings")
        aliases: dict[str, str] = {}
        for entry in value:
            assert isinstance(entry, str)
            name, equals, uri = entry.partition("=")
            if not equals:
                raise InvalidURI(f"{self.path}: malformed uri_aliases entry {entry!r}, "
                                 "expected 'alias=uri://host/path'")
            if not _ALIAS.match(name):
                raise InvalidURI(f"{self.path}: malformed uri_aliases entry {entry!r}: "
                                 "aliases may only contain a-z, A-Z, 0-9, _ and -")
            aliases.setdefault(name, uri)
        return aliases


def load_libvirt_conf(path: str | None = None) -> LibvirtConf:
    """Read ``libvirt.conf`` (default: where libvirt looks); a missing file is empty, a
    malformed one raises ``InvalidURI`` naming the file and line."""
    path = path or libvirt_conf_path()
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        return LibvirtConf(path)
    except OSError as exc:
        raise InvalidURI(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidURI(f"cannot read {path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return LibvirtConf(path, True, parse_conf(text, path))
    except ConfSyntaxError as exc:
        raise InvalidURI(str(exc)) from None


def resolve_uri(uri: str | None, conf: LibvirtConf | None = None,
                env: Mapping[str, str] | None = None) -> str:
    """The URI to connect to, as libvirt picks it: ``uri``, else ``LIBVIRT_DEFAULT_URI``,
    else ``uri_default`` from libvirt.conf; then an alias of that name, if defined.
    ``InvalidURI`` says what was looked at when there is none."""
    env = os.environ if env is None else env
    conf = conf or load_libvirt_conf()
    if not uri:
        uri = env.get("LIBVIRT_DEFAULT_URI") or conf.uri_default
        if not uri:
            where = conf.path if conf.exists else f"{conf.path} (not found)"
            raise InvalidURI("no connection URI given: LIBVIRT_DEFAULT_URI is not set and "
                             f"{where} sets no uri_default")
    return conf.uri_aliases.get(uri, uri)


# -- auth.conf ------------------------------------------------------------------------------
def auth_conf_candidates(params: Mapping[str, str] | None = None,
                         env: Mapping[str, str] | None = None) -> list[tuple[str, bool]]:
    """Where libvirt looks for auth.conf, in order, as ``(path, explicit)``: an explicit
    path (``LIBVIRT_AUTH_FILE``, ``?authfile=``) is the only one and must be readable."""
    env = os.environ if env is None else env
    if env.get("LIBVIRT_AUTH_FILE"):
        return [(env["LIBVIRT_AUTH_FILE"], True)]
    if params and params.get("authfile"):
        return [(params["authfile"], True)]
    return [(os.path.join(user_config_dir(env), "auth.conf"), False),
            (os.path.join(SYSCONFDIR, "libvirt", "auth.conf"), False)]


@dataclass(frozen=True)
class AuthConf:
    """A parsed auth.conf; ``lookup`` finds one credential for a service and host."""

    path: str
    groups: dict[str, dict[str, str]]

    def lookup(self, service: str, host: str | None, credname: str) -> str | None:
        """``credname`` (``username``, ``authname``, ``password``, ``realm``) for ``host``
        (None: ``localhost``), falling back to ``[auth-SERVICE-default]``."""
        group = f"auth-{service}-{host or 'localhost'}"
        if group not in self.groups:
            group = f"auth-{service}-default"
            if group not in self.groups:
                return None
        name = self.groups[group].get("credentials")
        if name is None:
            raise ConfSyntaxError(f"{self.path}: group [{group}] has no 'credentials' item")
        credentials = self.groups.get(f"credentials-{name}")
        if credentials is None:
            raise ConfSyntaxError(f"{self.path}: group [credentials-{name}], named by "
                                  f"[{group}], is missing")
        return credentials.get(credname)


def find_auth_conf(params: Mapping[str, str] | None = None,
                   env: Mapping[str, str] | None = None) -> tuple[AuthConf | None, list[str]]:
    """The auth.conf libvirt would use (or None) and every path looked at.  An explicit
    file that cannot be read or parsed raises ``ConfSyntaxError``/``OSError`` naming it."""
    looked = []
    for path, explicit in auth_conf_candidates(params, env):
        looked.append(path)
        if not explicit and not os.access(path, os.R_OK):
            continue
        with open(path, encoding="utf-8") as file:
            try:
                text = file.read()
            except UnicodeDecodeError as exc:
                raise ConfSyntaxError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        return AuthConf(path, parse_keyfile(text, path)), looked
    return None, looked
