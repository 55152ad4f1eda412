"""Open the byte stream a connection URI points at (UNIX or TCP sockets, through anyio)."""

from __future__ import annotations

import anyio
import anyio.abc

from .errors import AiovirtError
from .uri import ConnectionURI

__all__ = ["ConnectionFailed", "open_stream"]


class ConnectionFailed(AiovirtError, OSError):
    """The daemon could not be reached; the message names the socket or address tried."""


async def open_stream(uri: ConnectionURI) -> anyio.abc.ByteStream:
    """Connect to the daemon for ``uri``; raises ``ConnectionFailed`` naming where."""
    if uri.transport == "unix":
        path = uri.socket
        try:
            return await anyio.connect_unix(path)
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to UNIX socket {path}: "
                                   f"{exc.strerror or exc}") from exc
    if uri.transport == "tcp":
        host, port = uri.address
        try:
            return await anyio.connect_tcp(host, port)
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {host}:{port}: {exc}") from exc
    raise ConnectionFailed(f"{uri.uri!r}: the {uri.transport} transport is not supported yet "
                           "(supported: unix, tcp)")
