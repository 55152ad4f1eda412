"""A small client for libvirt's admin protocol (``admin_protocol.x``) on the daemon's admin
UNIX socket: server limits and worker pool settings.

The admin program (0x06900690) has its own handshake, ``ADMIN_PROC_CONNECT_OPEN`` with no
authentication step (the socket's permissions, 0700 by default, are the access control), and
no events; calls go one at a time, which is all an admin query needs.  It cannot report
``max_client_requests``: see ``aiovirt.client.limits`` for that.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from types import EllipsisType, TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from ..checks import check_number
from ..errors import (CallTimeout, ConnectionClosed, ConnectionFailed, ProtocolError,
                      error_from_remote)
from ..protocol import admin, keepalive, virnet
from ..protocol.wire import CALL, ERROR, MESSAGE, OK, REPLY, FrameDecoder, encode_message
from ..protocol.xdr import ProcedureInfo, decode, encode
from .uri import ConnectionURI

__all__ = ["AdminClient", "ServerSettings", "admin_socket_for", "server_settings"]

DEFAULT_TIMEOUT = 5.0
_BROKEN = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_P = admin.PROCEDURES


def admin_socket_for(uri: ConnectionURI) -> str | None:
    """The admin socket of the daemon serving ``uri``: ``PREFIX-admin-sock`` beside its
    ``PREFIX-sock`` (or ``-sock-ro``), as ``virDaemonUnixSocketPaths`` names them; None for
    network transports and sockets not named that way."""
    path = uri.socket
    if path is None:
        return None
    directory, name = os.path.split(path)
    for suffix in ("-sock", "-sock-ro"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return os.path.join(directory, name[:-len(suffix)] + "-admin-sock")
    return None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """One daemon server's client limits and worker pool, as the admin API reports them
    (current counts are a snapshot)."""

    server: str
    max_clients: int            # nclients_max (max_clients in the daemon's config)
    max_unauth_clients: int     # nclients_unauth_max (max_anonymous_clients)
    min_workers: int            # minWorkers
    max_workers: int            # maxWorkers
    prio_workers: int           # prioWorkers
    clients: int                # nclients: connected now
    unauth_clients: int         # nclients_unauth: connected, not authenticated yet
    workers: int                # nWorkers: ordinary workers now
    free_workers: int           # freeWorkers: idle now
    job_queue_depth: int        # jobQueueDepth: calls waiting for a worker
    extra: dict[str, Any] = field(default_factory=dict)   # parameters a newer daemon adds


_LIMIT_NAMES = {"nclients_max": "max_clients", "nclients_unauth_max": "max_unauth_clients",
                "nclients": "clients", "nclients_unauth": "unauth_clients"}
_POOL_NAMES = {"minWorkers": "min_workers", "maxWorkers": "max_workers",
               "prioWorkers": "prio_workers", "nWorkers": "workers",
               "freeWorkers": "free_workers", "jobQueueDepth": "job_queue_depth"}


class AdminClient:
    """One open admin connection.  ``rpc`` has every admin procedure as a coroutine; each
    call waits at most ``timeout`` seconds, and a call cut short closes the connection."""

    def __init__(self, stream: anyio.abc.ByteStream, path: str, timeout: float | None) -> None:
        self.path = path
        self.timeout = timeout
        self.rpc = admin.AdminCalls(self.call)
        self._stream = stream
        self._frames = FrameDecoder()
        self._serial = 0
        self._lock = anyio.Lock()
        self._closed: str | None = None

    @classmethod
    async def connect(cls, path: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> Self:
        """Connect to the admin socket ``path`` and open the admin connection."""
        check_number("timeout", timeout, 0, math.inf, seconds=True)
        try:
            with anyio.fail_after(timeout):
                stream = await anyio.connect_unix(path)
        except TimeoutError:
            raise ConnectionFailed(f"cannot connect to admin socket {path}: no answer "
                                   f"within {timeout:g} s") from None
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to admin socket {path}: "
                                   f"{exc.strerror or exc}") from exc
        client = cls(stream, path, timeout)
        try:
            await client.rpc.connect_open()
        except BaseException:
            await client.aclose()
            raise
        return client

    async def call(self, procedure: ProcedureInfo, args: Any = None,
                   call_timeout: float | None | EllipsisType = ...) -> Any:
        """Send one admin call and return its decoded reply (``LibvirtError`` if refused)."""
        timeout = self.timeout if isinstance(call_timeout, EllipsisType) else call_timeout
        check_number("call_timeout", timeout, 0, math.inf, seconds=True)
        payload = encode(procedure.encode_args, args, procedure.name) \
            if procedure.encode_args is not None else b""
        async with self._lock:
            if self._closed is not None:
                raise ConnectionClosed(self._closed)
            self._serial += 1
            packet = encode_message(admin.PROGRAM, procedure.number, CALL, self._serial, OK,
                                    payload, admin.VERSION)
            try:
                with anyio.fail_after(timeout):
                    await self._stream.send(packet)
                    reply = await self._reply(self._serial)
            except TimeoutError:
                await self._close(f"admin socket {self.path}: {procedure.name} timed out")
                raise CallTimeout(f"{procedure.name}: no reply from admin socket {self.path} "
                                  f"within {timeout:g} s") from None
            except _BROKEN as exc:
                await self._close(f"admin socket {self.path}: connection lost: {exc}")
                raise ConnectionClosed(self._closed) from exc
            except BaseException:   # cancelled or malformed: the stream is out of step
                await self._close(f"admin socket {self.path}: a call was interrupted")
                raise
        if reply.status == ERROR:
            raise error_from_remote(decode(virnet._dec_MessageError, reply.payload,
                                           "remote_error"))
        if procedure.decode_ret is None:
            return None
        return decode(procedure.decode_ret, reply.payload, procedure.name + " reply")

    async def _reply(self, serial: int) -> Any:
        """Read until the reply to ``serial``, answering keepalive PINGs on the way."""
        while True:
            for message in self._frames.feed(await self._stream.receive(1 << 16)):
                if message.type == MESSAGE and message.program == keepalive.PROGRAM:
                    if message.procedure == keepalive.KEEPALIVE_PROC_PING:
                        await self._stream.send(encode_message(
                            keepalive.PROGRAM, keepalive.KEEPALIVE_PROC_PONG, MESSAGE, 0, OK))
                    continue
                if message.type != REPLY or message.program != admin.PROGRAM or \
                        message.serial != serial:
                    raise ProtocolError(f"admin socket: unexpected message type "
                                        f"{message.type}, program {message.program:#x}, "
                                        f"serial {message.serial} (waiting for {serial})")
                if message.status not in (OK, ERROR):
                    raise ProtocolError(f"admin reply with bad status {message.status}")
                return message

    async def server_settings(self, server: str = "libvirtd") -> ServerSettings:
        """Client limits and worker pool of the daemon's server ``server`` (named after the
        daemon: ``libvirtd``, ``virtqemud``...; ``admin`` is the admin server itself)."""
        srv = admin.AdminNonnullServer(server)
        limits = await self.rpc.server_get_client_limits(srv)
        pool = await self.rpc.server_get_threadpool_parameters(srv)
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for param in [*limits.params, *pool.params]:
            name = _LIMIT_NAMES.get(param.field) or _POOL_NAMES.get(param.field)
            (values if name else extra)[name or param.field] = param.value.value
        missing = sorted((set(_LIMIT_NAMES.values()) | set(_POOL_NAMES.values()))
                         - set(values))
        if missing:
            raise ProtocolError(f"admin server {server!r}: the daemon did not report "
                                f"{', '.join(missing)}")
        return ServerSettings(server=server, extra=extra, **values)

    async def _close(self, why: str) -> None:
        if self._closed is None:
            self._closed = why
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        await self._close(f"admin socket {self.path}: closed")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


async def server_settings(admin_socket: str, server: str = "libvirtd", *,
                          timeout: float = DEFAULT_TIMEOUT) -> ServerSettings:
    """Connect to ``admin_socket``, read ``server``'s settings and close, all within
    ``timeout`` seconds (``ConnectionFailed``, ``CallTimeout``, or ``LibvirtError`` from the
    daemon, e.g. for an unknown server)."""
    check_number("timeout", timeout, 0, math.inf, seconds=True, optional=False)
    try:
        with anyio.fail_after(timeout):
            async with await AdminClient.connect(admin_socket, timeout=None) as client:
                return await client.server_settings(server)
    except TimeoutError as exc:
        if isinstance(exc, CallTimeout):
            raise
        raise CallTimeout(f"admin socket {admin_socket}: no answer within {timeout:g} s "
                          "(a daemon that does not serve the admin protocol there?)") from None
