"""libvirt connection URIs: ``driver[+transport]://[user@][host][:port]/path[?query]``.

``parse_uri`` checks a URI the way libvirt's remote driver reads it, says which part is wrong
when it is, and works out where to connect and the name to send to ``CONNECT_OPEN`` (the URI
without the transport, the host and the client-side query parameters).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlencode

from ..errors import InvalidURI

__all__ = ["ConnectionURI", "parse_uri", "SUPPORTED_TRANSPORTS"]

TRANSPORTS = ("unix", "tcp", "tls", "ssh", "libssh", "libssh2", "ext")
SUPPORTED_TRANSPORTS = ("unix", "tcp", "tls", "ssh", "libssh", "libssh2", "ext")
REMOTE_MODES = ("auto", "direct", "legacy")   # ?mode=: which daemon's socket (libvirt's)
DEFAULT_PORTS = {"tcp": 16509, "tls": 16514, "ssh": 22, "libssh": 22, "libssh2": 22}
# Query parameters the client consumes; they are not part of the name sent to the server.
CLIENT_PARAMS = {
    "name", "command", "socket", "auth", "netcat", "keyfile", "sshauth", "no_verify", "no_tty",
    "pkipath", "known_hosts", "known_hosts_verify", "mode", "proxy", "tls_priority", "tls",
    "rollback", "authfile", "no_sanity",
}

_URI = re.compile(r"^(?P<scheme>[^:/?#]*):(?://(?P<authority>[^/?#]*))?(?P<path>[^?#]*)"
                  r"(?:\?(?P<query>[^#]*))?(?:#.*)?$")
_DRIVER = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ConnectionURI:
    """A parsed connection URI and what follows from it."""

    uri: str
    driver: str
    transport: str
    user: str | None
    host: str | None
    port: int | None
    path: str
    params: dict[str, str] = field(default_factory=dict)
    # a read-only connection: tunnels reach the daemon's read-only socket (set by connect)
    readonly: bool = False

    @property
    def socket(self) -> str | None:
        """The UNIX socket to connect to (``?socket=`` or libvirt's default for the driver)."""
        if self.transport != "unix":
            return None
        return self.params.get("socket") or default_socket(self.driver, self.path,
                                                           self.params.get("mode"))

    def flag(self, name: str) -> bool:
        """A boolean URI parameter (``no_verify``, ``no_tty``...) read as libvirt reads it:
        an integer in strtol's syntax, true when not 0; absent is false."""
        value = self.params.get(name)
        if value is None:
            return False
        if not re.fullmatch(r"\s*[+-]?[0-9]{1,18}", value):
            raise InvalidURI(f"{self.uri!r}: {name}={value!r} is not an integer (0 or 1)")
        return int(value) != 0

    @property
    def address(self) -> tuple[str, int]:
        """Host and port for network transports."""
        return (self.host or "localhost", self.port or DEFAULT_PORTS.get(self.transport, 0))

    @property
    def remote_name(self) -> str:
        """The URI the daemon opens (the ``name`` sent with ``CONNECT_OPEN``)."""
        if "name" in self.params:
            return self.params["name"]
        if self.driver == "remote" and self.path in ("", "/"):
            return ""  # let the daemon pick its default driver
        extra = {k: v for k, v in self.params.items() if k not in CLIENT_PARAMS}
        query = ("?" + urlencode(extra, quote_via=quote, safe="/")) if extra else ""
        return f"{self.driver}://{self.path}{query}"


def default_socket(driver: str, path: str, mode: str | None = None) -> str:
    """libvirt's default socket: the driver's own daemon if it runs, else libvirtd's."""
    session = path == "/session"
    if session:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = os.path.join(runtime, "libvirt") if runtime else os.path.expanduser(
            "~/.cache/libvirt")
    else:
        base = "/run/libvirt"
    if mode != "legacy" and driver not in ("remote",):
        modular = os.path.join(base, f"virt{driver}d-sock")
        if mode == "direct" or os.path.exists(modular):
            return modular
    return os.path.join(base, "libvirt-sock")


def parse_query(query: str) -> dict[str, str]:
    """A URI's parameters as libvirt reads them (viruri.c): sections split at '&' (at ';'
    when there is no '&'), empty ones and "=value" skipped, "name" alone an empty value,
    %XX decoded and nothing else ('+' stays a plus); the last of a name counts."""
    params: dict[str, str] = {}
    while query:
        end = query.find("&")
        if end < 0:
            end = query.find(";")
        if end < 0:
            end = len(query)
        section, query = query[:end], query[end + 1:]
        name, eq, value = section.partition("=")
        if name:
            params[unquote(name)] = unquote(value)
    return params


def parse_uri(uri: str) -> ConnectionURI:
    """Parse and check a libvirt URI; ``InvalidURI`` names the part that is wrong."""
    if not isinstance(uri, str):
        raise InvalidURI(f"a connection URI is a str, not {type(uri).__name__} ({uri!r:.60})")
    if not uri.strip():
        raise InvalidURI("empty connection URI")
    match = _URI.match(uri)
    if match is None or not match.group("scheme"):
        raise InvalidURI(f"{uri!r}: missing 'driver://' scheme (e.g. 'qemu:///system')")
    if match.group("authority") is None:
        raise InvalidURI(f"{uri!r}: expected '//' after '{match.group('scheme')}:'")
    scheme = match.group("scheme")
    driver, plus, transport = scheme.partition("+")
    if not _DRIVER.match(driver):
        raise InvalidURI(f"{uri!r}: driver {driver!r} is not a valid driver name")
    if plus and transport not in TRANSPORTS:
        raise InvalidURI(f"{uri!r}: transport {transport!r} is not one of "
                         f"{', '.join(TRANSPORTS)}")
    authority = match.group("authority")
    user = host = None
    port = None
    if authority:
        userinfo, at, hostport = authority.rpartition("@")
        if at:
            user = userinfo or None
        if hostport.startswith("["):
            host_part, bracket, rest = hostport[1:].partition("]")
            if not bracket:
                raise InvalidURI(f"{uri!r}: unclosed '[' in host {hostport!r}")
            host, port_text = host_part, rest[1:] if rest.startswith(":") else rest
            if rest and not rest.startswith(":"):
                raise InvalidURI(f"{uri!r}: unexpected {rest!r} after host [{host}]")
        else:
            host, _, port_text = hostport.partition(":")
        host = host or None
        if host is not None and ":" not in host:   # (an IPv6 literal is not a name)
            try:
                host.encode("idna")
            except UnicodeError as exc:   # what dialing would raise: an empty or long label
                raise InvalidURI(f"{uri!r}: host {host!r:.80} is not a valid host name "
                                 f"({exc})") from None
        if port_text:
            if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
                raise InvalidURI(f"{uri!r}: port {port_text!r} is not a number from 1 to 65535")
            port = int(port_text)
    if not transport:
        transport = "tls" if host else "unix"
    params = parse_query(match.group("query") or "")
    for name, value in params.items():
        if "\0" in name or "\0" in value:   # (a path or command with one cannot be used)
            raise InvalidURI(f"{uri!r:.200}: parameter {name!r:.40} holds a NUL character")
    if params.get("mode", "auto") not in REMOTE_MODES:
        raise InvalidURI(f"{uri!r}: mode={params['mode']!r} is not one of "
                         f"{', '.join(REMOTE_MODES)}")
    path = match.group("path")
    if transport == "unix":
        if host:
            raise InvalidURI(f"{uri!r}: the unix transport takes no host, got {host!r}")
        socket = params.get("socket")
        if socket is not None and not os.path.isabs(socket):
            raise InvalidURI(f"{uri!r}: socket {socket!r} is not an absolute path")
    elif "socket" in params and transport not in ("ssh", "libssh", "libssh2"):
        raise InvalidURI(f"{uri!r}: 'socket' only applies to the unix and ssh transports")
    if path and not path.startswith("/"):
        raise InvalidURI(f"{uri!r}: path {path!r} must start with '/'")
    return ConnectionURI(uri, driver, transport, user, host, port, path, params)
