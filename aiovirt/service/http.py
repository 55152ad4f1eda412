"""Raw ASGI request and response helpers: size-limited bodies, JSON/XML input, JSON errors.

No framework: a ``Request`` wraps the ASGI scope and ``receive``; handlers return a
``Response`` (sent whole) or a ``StreamResponse`` (a producer that writes chunks).  Any
``HTTPError`` raised while handling becomes ``{"error": "..."}`` with its status.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["HTTPError", "Request", "Response", "StreamResponse", "Write", "error_response",
           "json_body", "json_response", "sse"]

Write = Callable[[bytes], Awaitable[None]]
JSON_TYPES = ("application/json",)
XML_TYPES = ("application/xml", "text/xml")


class HTTPError(Exception):
    """Ends a request with ``status`` and ``{"error": message, **extra}``."""

    def __init__(self, status: int, message: str, *, extra: Mapping[str, Any] | None = None,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = dict(extra or {})
        self.headers = list(headers)


@dataclass
class Response:
    """A complete response: status, body bytes and headers."""

    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class StreamResponse:
    """A response whose body ``produce(write)`` writes piece by piece until it returns; it
    is cancelled when the client disconnects, or when the server closes its streams (then
    ``farewell`` is the last chunk); ``release`` is called once the response is over,
    however it ended (to give back what the handler reserved for it)."""

    produce: Callable[[Write], Awaitable[None]]
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    farewell: bytes = b""
    release: Callable[[], None] | None = None


def json_body(data: Any, *, indent: int | None = 2) -> bytes:
    """``data`` as JSON bytes; ``indent=None`` for large bodies (about 3 times quicker to make:
    the indenting encoder is pure Python)."""
    return json.dumps(data, indent=indent, ensure_ascii=False).encode() + b"\n"


def json_response(data: Any, status: int = 200,
                  headers: Sequence[tuple[str, str]] = ()) -> Response:
    return Response(status, json_body(data), [("content-type", "application/json"), *headers])


def error_response(error: HTTPError) -> Response:
    return json_response({"error": error.message, **error.extra}, error.status, error.headers)


def sse(event: str, data: Any) -> bytes:
    """One server-sent event: ``event: NAME`` and its data as one line of JSON."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


class Request:
    """One HTTP request: method, path, query, headers; the body is read on demand, never
    more than ``max_body`` bytes of it."""

    def __init__(self, scope: Mapping[str, Any], receive: Callable[[], Awaitable[Any]],
                 max_body: int) -> None:
        self.scope = scope
        self.receive = receive
        self.max_body = max_body
        self.method: str = scope["method"].upper()
        self.path: str = scope["path"]
        self.query: list[tuple[str, str]] = parse_qsl(
            scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        self.headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self.params: dict[str, str] = {}   # filled from the route's {placeholders}
        self._body: bytes | None = None

    # -- the query string --------------------------------------------------------------------
    def arg(self, name: str, default: str | None = None) -> str | None:
        """The last value of query parameter ``name``."""
        values = self.args(name)
        return values[-1] if values else default

    def args(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def flag(self, name: str, default: bool | None = False) -> bool | None:
        """A yes/no query parameter (``?address=true``, ``?pack=1``)."""
        value = self.arg(name)
        if value is None:
            return default
        if value.lower() in ("", "1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise HTTPError(422, f"query parameter {name}={value!r}: expected true or false")

    def number(self, name: str, default: float | None = None, *, low: float = 0,
               high: float = math.inf) -> float | None:
        value = self.arg(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not low <= number <= high:
            raise HTTPError(422, f"query parameter {name}={value!r}: expected a number from "
                                 f"{low:g} to {high:g}")
        return number

    # -- the body --------------------------------------------------------------------------------
    @property
    def content_type(self) -> str:
        """The media type without parameters, lowercased ("" when absent)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def require_type(self, *types: str) -> str:
        """The content type, which must be one of ``types`` (415 otherwise)."""
        if self.content_type not in types:
            got = self.content_type or "no Content-Type"
            raise HTTPError(415, f"{self.method} {self.path} takes {' or '.join(types)} "
                                 f"(got {got})")
        return self.content_type

    async def body(self) -> bytes:
        """The whole body; 413 as soon as it passes ``max_body`` (by Content-Length or while
        reading), so an oversized body is never held."""
        if self._body is not None:
            return self._body
        declared = self.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HTTPError(400, f"Content-Length {declared!r} is not a number")
            if int(declared) > self.max_body:
                raise self._too_large(f"{declared} bytes")
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large(f"more than {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self._body = b"".join(chunks)
        return self._body

    def _too_large(self, what: str) -> HTTPError:
        return HTTPError(413, f"request body of {what} is over this server's limit of "
                              f"{self.max_body} bytes (aiovirt serve --max-body)")

    async def text(self) -> str:
        try:
            return (await self.body()).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HTTPError(400, f"request body is not UTF-8 (byte {exc.start})") from None

    async def json(self) -> Any:
        """The body as JSON (400 naming line and column when it is not)."""
        self.require_type(*JSON_TYPES)
        text = await self.text()
        try:
            return json.loads(text, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise HTTPError(400, f"request body is not JSON: line {exc.lineno} column "
                                 f"{exc.colno}: {exc.msg}") from None
        except ValueError as exc:
            raise HTTPError(400, f"request body is not JSON: {exc}") from None
        except RecursionError:
            raise HTTPError(400, "request body is not JSON this server accepts: nested too "
                                 "deeply") from None

    async def json_object(self) -> dict[str, Any]:
        data = await self.json()
        if not isinstance(data, dict):
            raise HTTPError(422, f"request body: expected a JSON object, not "
                                 f"{type(data).__name__}")
        return data
