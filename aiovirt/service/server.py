"""Serving the app on uvicorn with bounded clients: what ``aiovirt serve`` and the tests run.

uvicorn bounds keep-alive idleness (``timeout_keep_alive``) but nothing else: a connection
that sends part of a request head, or a body byte by byte, or stops reading a response, is
held for ever.  ``GuardedH11Protocol`` adds the two missing deadlines to uvicorn's h11
protocol: a request (head and body) must arrive within ``client_timeout`` of the connection
opening or of its first byte, and a client that reads nothing of what is sent to it for
``client_timeout`` is dropped.  Between requests only uvicorn's keep-alive timer runs (it
closes without a word); a request answered before its body arrived (413) has the rest of
the body read and dropped within its deadline, and gets no other answer (one that said
``Connection: close`` gets the lingering close below, where uvicorn closed at once).

It also bounds a request's head (request line and headers) at ``max_head`` bytes, however it
arrives (h11 checks only a head still incomplete, so one that came in a single read passed at
any size), and answers one over it with 414 or 431 before closing.  Every refusal of a bad
request is followed by a lingering close: what the client still sends is read and dropped
(for at most ``client_timeout``), since closing a socket with unread data makes the kernel
send a reset, which can destroy the answer before the client reads it.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import App
from .http import json_body

__all__ = ["DEFAULT_CLIENT_TIMEOUT", "DEFAULT_MAX_HEAD", "GuardedH11Protocol", "Server",
           "guarded_protocol", "uvicorn_config"]

DEFAULT_CLIENT_TIMEOUT = 10.0
DEFAULT_MAX_HEAD = 64 * 1024   # bytes of request line and headers
_REASON = 120                          # characters of h11's reason in a 400
_READING = (h11.IDLE, h11.SEND_BODY)   # the client owes us a request head or body


def _answer(status: int, message: str) -> bytes:
    """A whole JSON error response that closes the connection."""
    body = json_body({"error": message}, indent=None)
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, HTTPStatus(status).phrase.encode(),
                                                len(body), body))


_TIMED_OUT = _answer(408, "the request did not arrive in time")
_ANSWERED = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)   # our response is whole


class _AnsweredClose:
    """The transport as uvicorn's request cycle sees it: the same, but that closing it asks
    the protocol (``GuardedH11Protocol._close_answered``)."""

    def __init__(self, protocol: GuardedH11Protocol) -> None:
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol.transport, name)

    def close(self) -> None:
        self._protocol._close_answered()


def _head_size(request: h11.Request) -> int:
    """The bytes of a parsed request's head (as sent, but for optional whitespace)."""
    line = len(request.method) + len(request.target) + 12   # spaces, HTTP/1.1, CRLF
    return line + sum(len(name) + len(value) + 4 for name, value in request.headers) + 2


class HeadTooLarge(h11.RemoteProtocolError):
    """A request head over the limit: ``error_status_hint`` is 414 (the request line alone
    is over it) or 431."""


class _HeadLimitedConnection(h11.Connection):
    """h11's server side that refuses a request head over ``limit`` bytes even when the head
    arrived whole, keeps the error that ended the connection and counts the requests read
    to their end."""

    def __init__(self, limit: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=limit)
        self.limit = limit
        self.error: h11.RemoteProtocolError | None = None
        self.requests_read = 0

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:   # h11: an incomplete head over the limit
                pending = self.trailing_data[0]
                exc = HeadTooLarge(str(exc), error_status_hint=431 if b"\n" in pending
                                   else 414)
            self.error = exc
            raise exc from None
        if isinstance(event, h11.Request) and _head_size(event) > self.limit:
            too_long = len(event.target) + len(event.method) + 12 > self.limit
            self.error = HeadTooLarge("request head too large",
                                      error_status_hint=414 if too_long else 431)
            raise self.error
        if isinstance(event, h11.EndOfMessage):
            self.requests_read += 1
        return event


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for reading each request and for a client
    that stops reading (``client_timeout`` seconds), a bound on request heads (``max_head``
    bytes) and JSON refusals followed by a lingering close (see ``guarded_protocol``)."""

    client_timeout: float = DEFAULT_CLIENT_TIMEOUT
    max_head: int = DEFAULT_MAX_HEAD
    _read_timer: asyncio.TimerHandle | None = None
    _timed = 0   # requests read when the read timer started: it bounds the one after them
    _stall_timer: asyncio.TimerHandle | None = None
    _linger_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _HeadLimitedConnection(self.max_head)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_reading()

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is not None:   # refused: drop what is still coming
            return
        super().data_received(data)
        self._watch_reading()

    def send_400_response(self, msg: str) -> None:
        """Refuse a request h11 could not take (uvicorn calls this): 414 or 431 naming the
        limit for a head over ``max_head``, otherwise 400 with h11's reason; JSON either way."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:   # its body was malformed
            cycle.disconnected = True   # the app hears the client has gone; its sends drop
            cycle.message_event.set()
            if cycle.response_started:   # no place for our answer in the app's
                self.transport.close()
                return
        error = self.conn.error
        if isinstance(error, HeadTooLarge):
            what = ("request line" if error.error_status_hint == 414
                    else "request head (request line and headers)")
            self.transport.write(_answer(error.error_status_hint, f"the {what} is over this "
                                         f"server's limit of {self.max_head} bytes"))
        else:   # h11's reason, which may quote the request: cut short
            reason = f": {str(error)[:_REASON]}" if error is not None else ""
            self.transport.write(_answer(400, f"invalid HTTP request{reason}"))
        self._linger()

    def _linger(self) -> None:
        """Close once the client has stopped sending (or after ``client_timeout``): until
        then its data is read and dropped, so that no reset overtakes the answer."""
        for timer in (self._read_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._read_timer = self._stall_timer = None
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()   # reading may have been paused for a body's sake
        self._linger_timer = self.loop.call_later(self.client_timeout, self.transport.close)

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle   # a new request's cycle: it closes through _close_answered
        if cycle is not None and not isinstance(cycle.transport, _AnsweredClose):
            cycle.transport = _AnsweredClose(self)  # type: ignore[assignment]

    def _close_answered(self) -> None:
        """uvicorn's close after a response: a lingering one while the request's body is
        still coming (answered early, and it said ``Connection: close``)."""
        conn = self.conn
        if (conn.their_state is h11.SEND_BODY and conn.our_state in _ANSWERED
                and self._linger_timer is None and not self.transport.is_closing()):
            self._linger()
        else:
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._linger_timer is not None:   # closing: no keep-alive
            self._unset_keepalive_if_required()
        self._watch_reading()   # a pipelined request may now be under way

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._read_timer, self._stall_timer, self._linger_timer):
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
        """Start a request's deadline when the connection opens or the request's first byte
        arrives, and stop it once the request is whole (or was answered and its body has
        been read); between requests only the keep-alive timer runs."""
        if self.transport.is_closing():
            return
        conn = self.conn
        if self._read_timer is not None and (conn.their_state not in _READING
                                             or conn.requests_read != self._timed):
            self._read_timer.cancel()
            self._read_timer = None
        if (conn.their_state not in _READING or self._read_timer is not None
                or self.timeout_keep_alive_task is not None):
            return
        if self._idle():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)
        else:
            self._timed = conn.requests_read
            self._read_timer = self.loop.call_later(self.client_timeout, self._read_timeout)

    def _idle(self) -> bool:
        """Between requests: one was answered and read whole, nothing of the next is here
        (uvicorn arms no keep-alive timer when the body of a request answered early ends)."""
        return (self.cycle is not None and self.conn.their_state is h11.IDLE
                and not self.conn.trailing_data[0])

    def _read_timeout(self) -> None:
        """The request did not arrive in time: one still in its head is told so; the body
        of one the app waits for, or has answered, is just cut."""
        self._read_timer = None
        if self.transport.is_closing() or self.conn.their_state not in _READING:
            return
        if self.conn.their_state is h11.IDLE:   # a head is due or partly here: say so
            self.transport.write(_TIMED_OUT)
        self.transport.close()

    def _stalled(self) -> None:
        """The client has not read for ``client_timeout``: drop it, discarding what it has
        not taken (a plain close would wait for the buffer to drain)."""
        self._stall_timer = None
        self.transport.abort()


def guarded_protocol(client_timeout: float, max_head: int = DEFAULT_MAX_HEAD
                     ) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn's ``http=`` with its deadlines set to
    ``client_timeout`` seconds and request heads bounded at ``max_head`` bytes."""
    if not client_timeout > 0:
        raise ValueError("the client timeout must be more than 0 seconds")
    if not 1024 <= max_head <= 16 << 20:
        raise ValueError("the request head limit must be from 1 KiB to 16 MiB")
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"client_timeout": float(client_timeout), "max_head": int(max_head)})


def uvicorn_config(app: App, *, host: str = "127.0.0.1", port: int = 8080,
                   client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
                   max_connections: int | None = None, max_head: int = DEFAULT_MAX_HEAD,
                   **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for the app: h11 with the client deadlines and the head
    limit, keep-alive idle bounded by the same timeout, the lifespan on, no websockets, no
    proxy headers; ``max_connections`` answers 503 beyond that many connections (uvicorn's
    ``limit_concurrency``)."""
    options.setdefault("log_level", "info")
    options.setdefault("timeout_graceful_shutdown", 5)
    return uvicorn.Config(app, host=host, port=port, lifespan="on",
                          http=guarded_protocol(client_timeout, max_head), ws="none",
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
