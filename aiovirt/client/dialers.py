"""How a connection gets its bytes: one dialer per URI transport, in one table.

A dialer connects to the daemon a ``ConnectionURI`` names and returns a ``Transport``: under
asyncio (unless ``native`` is False) one driven by protocol callbacks, otherwise one over an
anyio byte stream.  Failures are ``ConnectionFailed`` naming where it tried.  New transports
(TLS, SSH, a command) add a row to ``DIALERS``; ``register_dialer`` adds one from outside,
and ``connect(uri, dialer=...)`` replaces the table for one connection
(``aiovirt.testing.fakepeer.memory_dialer`` serves a fake daemon in memory that way).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import anyio.abc

from ..errors import ConnectionFailed
from .backend import asyncio_loop
from .transport import AnyioTransport, AsyncioTransport, Spawn, Transport
from .uri import ConnectionURI

__all__ = ["DIALERS", "Dialer", "dial", "dial_socket", "register_dialer"]


class Dialer(Protocol):
    async def __call__(self, uri: ConnectionURI, spawn: Spawn, native: bool) -> Transport:
        """Connect for ``uri``; raise ``ConnectionFailed`` naming where it tried."""


def _failed(where: str, exc: OSError) -> ConnectionFailed:
    error = ConnectionFailed(f"cannot connect to {where}: {exc.strerror or exc}")
    error.__cause__ = exc
    return error


async def dial_unix(uri: ConnectionURI, spawn: Spawn, native: bool) -> Transport:
    """The daemon's UNIX socket (``?socket=`` or the driver's default path)."""
    path = str(uri.socket)
    try:
        loop = asyncio_loop() if native else None
        if loop is not None:
            _, protocol = await loop.create_unix_connection(AsyncioTransport, path)
            return protocol
        return AnyioTransport(await anyio.connect_unix(path), spawn)
    except OSError as exc:
        raise _failed(f"UNIX socket {path}", exc) from exc


async def dial_tcp(uri: ConnectionURI, spawn: Spawn, native: bool) -> Transport:
    """Plain TCP to the daemon's ``listen_tcp`` port."""
    host, port = uri.address
    try:
        loop = asyncio_loop() if native else None
        if loop is not None:
            _, protocol = await loop.create_connection(AsyncioTransport, host, port)
            return protocol
        return AnyioTransport(await anyio.connect_tcp(host, port), spawn)
    except OSError as exc:
        raise _failed(f"{host}:{port}", exc) from exc


async def dial_socket(sock: socket.socket, spawn: Spawn, native: bool) -> Transport:
    """A transport over a socket already connected (a ``socketpair`` end, for instance)."""
    sock.setblocking(False)
    loop = asyncio_loop() if native else None
    if loop is not None:
        if sock.family == socket.AF_UNIX:
            _, protocol = await loop.create_unix_connection(AsyncioTransport, sock=sock)
        else:
            _, protocol = await loop.create_connection(AsyncioTransport, sock=sock)
        return protocol
    stream: anyio.abc.ByteStream
    if sock.family == socket.AF_UNIX:
        stream = await anyio.abc.UNIXSocketStream.from_socket(sock)
    else:
        stream = await anyio.abc.SocketStream.from_socket(sock)
    return AnyioTransport(stream, spawn)


def _lazy(module: str, name: str) -> Dialer:
    """A dialer defined in a module of its own, imported on first use (TLS and SSH need
    ``ssl`` and ``subprocess``, which a local connection never does)."""
    async def dialer(uri: ConnectionURI, spawn: Spawn, native: bool) -> Transport:
        import importlib  # noqa: PLC0415
        real: Dialer = getattr(importlib.import_module(module, __package__), name)
        return await real(uri, spawn, native)
    dialer.__name__ = dialer.__qualname__ = name
    return dialer


DIALERS: dict[str, Dialer] = {
    "unix": dial_unix, "tcp": dial_tcp,
    "tls": _lazy(".tls", "dial_tls"),
    "ssh": _lazy(".ssh", "dial_ssh"), "libssh": _lazy(".ssh", "dial_ssh"),
    "libssh2": _lazy(".ssh", "dial_ssh"), "ext": _lazy(".ssh", "dial_ext"),
}


def register_dialer(transport: str, dialer: Dialer | Callable[..., Awaitable[Transport]]
                    ) -> None:
    """Make ``dialer`` serve URIs whose transport is ``transport`` (``driver+NAME://``)."""
    DIALERS[transport] = dialer  # type: ignore[assignment]


async def dial(uri: ConnectionURI, spawn: Spawn, native: bool = True) -> Transport:
    """Connect for ``uri`` with the dialer of its transport.  ``native`` uses asyncio's
    protocol callbacks when running on asyncio; False forces anyio's generic streams."""
    dialer = DIALERS.get(uri.transport)
    if dialer is None:
        raise ConnectionFailed(f"{uri.uri!r}: the {uri.transport} transport is not supported "
                               f"yet (supported: {', '.join(sorted(DIALERS))})")
    return await dialer(uri, spawn, native)
