"""Serving the app on uvicorn with bounded clients: what ``aiovirt serve`` and the tests run.

uvicorn bounds keep-alive idleness (``timeout_keep_alive``) but nothing else: a connection
that sends part of a request head, or a body byte by byte, or stops reading a response, is
held for ever.  ``GuardedH11Protocol`` adds the two missing deadlines to uvicorn's h11
protocol: a request (head and body) must arrive within ``client_timeout`` of the connection
opening or of its first byte, and a client that reads nothing of what is sent to it for
``client_timeout`` is dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import App

__all__ = ["DEFAULT_CLIENT_TIMEOUT", "GuardedH11Protocol", "Server", "guarded_protocol",
           "uvicorn_config"]

DEFAULT_CLIENT_TIMEOUT = 10.0
_READING = (h11.IDLE, h11.SEND_BODY)   # the client owes us a request head or body
_TIMEOUT_BODY = b'{"error": "the request did not arrive in time"}\n'
_TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\nconnection: close\r\n\r\n%s"
              % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for reading each request and for a client
    that stops reading (``client_timeout`` seconds; see ``guarded_protocol``)."""

    client_timeout: float = DEFAULT_CLIENT_TIMEOUT
    _read_timer: asyncio.TimerHandle | None = None
    _stall_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_reading()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_reading()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_reading()   # a pipelined request may now be under way

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._read_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._read_timer = self._stall_timer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.client_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _watch_reading(self) -> None:
        """Start the request's deadline when a request is due or partly read (unless
        uvicorn's keep-alive timer already bounds the wait); stop it once it is whole."""
        if self.transport.is_closing():
            return
        if self.conn.their_state not in _READING:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None
        elif self._read_timer is None and self.timeout_keep_alive_task is None:
            self._read_timer = self.loop.call_later(self.client_timeout, self._read_timeout)

    def _read_timeout(self) -> None:
        self._read_timer = None
        if self.transport.is_closing() or self.conn.their_state not in _READING:
            return
        if self.cycle is None or self.cycle.response_complete:   # still in the head: say so
            self.transport.write(_TIMED_OUT)
        self.transport.close()

    def _stalled(self) -> None:
        """The client has not read for ``client_timeout``: drop it, discarding what it has
        not taken (a plain close would wait for the buffer to drain)."""
        self._stall_timer = None
        self.transport.abort()


def guarded_protocol(client_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn's ``http=`` with its deadlines set to
    ``client_timeout`` seconds."""
    if not client_timeout > 0:
        raise ValueError("the client timeout must be more than 0 seconds")
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"client_timeout": float(client_timeout)})


def uvicorn_config(app: App, *, host: str = "127.0.0.1", port: int = 8080,
                   client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
                   max_connections: int | None = None, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for the app: h11 with the client deadlines, keep-alive idle
    bounded by the same timeout, the lifespan on, no websockets, no proxy headers;
    ``max_connections`` answers 503 beyond that many connections (uvicorn's
    ``limit_concurrency``)."""
    options.setdefault("log_level", "info")
    options.setdefault("timeout_graceful_shutdown", 5)
    return uvicorn.Config(app, host=host, port=port, lifespan="on",
                          http=guarded_protocol(client_timeout), ws="none",
                          proxy_headers=False, server_header=False,
                          timeout_keep_alive=client_timeout,  # type: ignore[arg-type]
                          limit_concurrency=max_connections, **options)


class Server(uvicorn.Server):
    """uvicorn's server that ends the app's event streams and stops its jobs as its shutdown
    begins (it would otherwise wait for every connection to drain first)."""

    async def shutdown(self, sockets: Any = None) -> None:
        app = self.config.app
        if isinstance(app, App):
            app.begin_shutdown()
        await super().shutdown(sockets)
