"""The ASGI application: lifespan (owns the jobs' task group), bearer-token check, routing,
error bodies, and streaming responses that stop when the client goes away."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ..compose.library import user_dir
from .events import EventHub
from .handlers import Handlers
from .http import HTTPError, Request, Response, StreamResponse, error_response
from .inputs import HostPolicy
from .jobs import JobRegistry
from .limits import Gate, WorkPool
from .routing import Route, Router
from .store import ProfileStore

__all__ = ["App", "ServiceConfig", "Service", "check_token", "create_app", "routes"]

log = logging.getLogger("aiovirt.service")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_MAX_BODY = 1024 * 1024
_SECURITY_HEADERS = [("x-content-type-options", "nosniff"), ("cache-control", "no-store")]


@dataclass(frozen=True)
class ServiceConfig:
    """What a service is set up with (see ``create_app``)."""

    hosts: tuple[str, ...] = ()
    profiles_dir: Path = Path()
    token: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    system_profiles: bool = True
    allow_any_host: bool = False
    max_guests: int = 10_000
    keepalive: float = 15.0
    shutdown_timeout: float = 30.0
    keep_jobs: int = 100            # finished jobs kept; the earliest finished are dropped
    workers: int | None = None      # threads for composition and addressing (None: cores)
    work_queue: int = 256           # requests that may wait for one; more get 503
    max_streams: int = 100          # concurrent event streams; more get 503
    stream_queue: int = 1024        # events waiting for a stream's client before it is cut
    max_jobs: int = 16              # jobs running at once; more get 503


class Service:
    """The state the handlers share: configuration, profile store, jobs, the work pool,
    the event hub and the caps."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.store = ProfileStore(config.profiles_dir, system=config.system_profiles)
        self.jobs = JobRegistry(keep=config.keep_jobs,
                                shutdown_timeout=config.shutdown_timeout,
                                max_running=config.max_jobs)
        self.policy = HostPolicy(config.hosts, config.allow_any_host)
        self.pool = WorkPool(config.workers, config.work_queue)
        self.hub = EventHub(queue=config.stream_queue)
        self.streams = Gate(config.max_streams, "event streams", "--max-streams")


def routes(h: Handlers) -> list[Route]:
    """The routing table."""
    return [
        Route("GET", "/health", h.health, "the server's version, hosts and activity"),
        Route("GET", "/openapi.json", h.openapi, "the OpenAPI 3.1 document"),
        Route("GET", "/profiles", h.profiles_list, "list profiles"),
        Route("GET", "/profiles/{name}", h.profile_show, "show one profile"),
        Route("PUT", "/profiles/{name}", h.profile_put, "create or replace an application "
                                                         "profile"),
        Route("DELETE", "/profiles/{name}", h.profile_delete, "delete an application profile"),
        Route("POST", "/compose", h.compose, "compose a domain XML from profiles"),
        Route("POST", "/address", h.address, "assign controllers and addresses"),
        Route("GET", "/jobs", h.jobs_list, "list provisioning jobs"),
        Route("POST", "/jobs", h.jobs_create, "start a provisioning job"),
        Route("GET", "/jobs/{id}", h.job_get, "a job's state, progress and report"),
        Route("POST", "/jobs/{id}/cancel", h.job_cancel, "cancel a job"),
        Route("DELETE", "/jobs/{id}/guests", h.job_teardown, "tear down a job's guests"),
        Route("POST", "/teardown", h.teardown, "tear down guests by run, names or labels"),
        Route("GET", "/events", h.events, "domain lifecycle events (server-sent events)"),
    ]


def check_token(token: str) -> str:
    """A bearer token must be at least 16 visible ASCII characters (``ValueError``)."""
    if len(token) < 16 or not all(33 <= ord(c) < 127 for c in token):
        raise ValueError("the token must be at least 16 visible ASCII characters (no "
                         "spaces), e.g. from `openssl rand -hex 24`")
    return token


class App:
    """The ASGI 3 application (``http`` and ``lifespan`` scopes)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.router = Router(routes(Handlers(service)))
        self._token = service.config.token.encode() if service.config.token else None
        self._streams: set[anyio.CancelScope] = set()

    def close_streams(self) -> None:
        """End every open streaming response (each gets its farewell chunk), so that a
        server shutting down need not wait for event-stream clients to leave."""
        for scope in list(self._streams):
            scope.cancel()

    def begin_shutdown(self) -> None:
        """The server begins to stop: end the event streams and stop the jobs now (they
        launch nothing more), not once every connection has drained."""
        self.close_streams()
        self.service.jobs.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":   # not offered: refuse the handshake
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    # -- lifespan -------------------------------------------------------------------------------
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Jobs run in a task group that lives from startup to shutdown; shutdown cancels
        the running ones and waits for their reports."""
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        started = False
        try:
            async with self.service.jobs.open(), self.service.hub.open():
                await send({"type": "lifespan.startup.complete"})
                started = True
                while (await receive())["type"] != "lifespan.shutdown":
                    pass
        except Exception as exc:
            log.exception("the service's lifespan failed")
            await send({"type": f"lifespan.{'shutdown' if started else 'startup'}.failed",
                        "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    # -- requests -------------------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, self.service.config.max_body)
        try:
            self._authenticate(request)
            route = self.router.match(request)
            response = await route.handler(request)
        except HTTPError as exc:
            response = error_response(exc)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = error_response(HTTPError(500, f"internal error handling "
                                                     f"{request.method} {request.path} "
                                                     "(see the server's log)"))
        if isinstance(response, StreamResponse):
            try:
                await self._stream(request, send, response)
            finally:
                if response.release is not None:
                    response.release()
        else:
            await self._send(send, response)

    def _authenticate(self, request: Request) -> None:
        if self._token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HTTPError(401, "this server needs 'Authorization: Bearer TOKEN'",
                            headers=[("www-authenticate", 'Bearer realm="aiovirt"')])
        if not hmac.compare_digest(given.strip().encode("latin-1"), self._token):
            raise HTTPError(401, "wrong bearer token", headers=[
                ("www-authenticate", 'Bearer realm="aiovirt", error="invalid_token"')])

    @staticmethod
    def _headers(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
        return [(k.encode("latin-1"), v.encode("latin-1"))
                for k, v in [*headers, *_SECURITY_HEADERS]]

    async def _send(self, send: Send, response: Response) -> None:
        headers = [*response.headers, ("content-length", str(len(response.body)))]
        await send({"type": "http.response.start", "status": response.status,
                    "headers": self._headers(headers)})
        await send({"type": "http.response.body", "body": response.body})

    async def _stream(self, request: Request, send: Send, response: StreamResponse) -> None:
        """Send the head, then whatever the producer writes, until it returns or the client
        disconnects (which cancels it)."""
        await send({"type": "http.response.start", "status": response.status,
                    "headers": self._headers(response.headers)})
        gone = False

        async def write(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        with anyio.CancelScope() as closing:
            self._streams.add(closing)
            try:
                async with anyio.create_task_group() as group:
                    async def watch() -> None:
                        nonlocal gone
                        while (await request.receive())["type"] != "http.disconnect":
                            pass
                        gone = True
                        group.cancel_scope.cancel()

                    group.start_soon(watch)
                    try:
                        await response.produce(write)
                    except OSError:
                        gone = True
                    except Exception:
                        log.exception("stream %s %s failed", request.method, request.path)
                    group.cancel_scope.cancel()
            finally:
                self._streams.discard(closing)
        if not gone:
            last = response.farewell if closing.cancel_called else b""
            await send({"type": "http.response.body", "body": last, "more_body": False})

def create_app(*, hosts: Sequence[str] = (), profiles_dir: str | os.PathLike[str] | None = None,
               token: str | None = None, max_body: int = DEFAULT_MAX_BODY,
               system_profiles: bool = True, allow_any_host: bool = False,
               max_guests: int = 10_000, keepalive: float = 15.0,
               shutdown_timeout: float = 30.0, workers: int | None = None,
               work_queue: int = 256, max_streams: int = 100, stream_queue: int = 1024,
               max_jobs: int = 16, keep_jobs: int = 100) -> App:
    """The REST service as an ASGI app.

    ``hosts``: connection URIs that jobs and event streams use by default (and, unless
    ``allow_any_host``, the only ones requests may name).  ``profiles_dir``: where
    application profiles are stored (default ``~/.config/aiovirt/profiles``), layered over
    the shipped ones and, with ``system_profiles``, ``/etc/aiovirt/profiles``.  ``token``:
    every request must then carry ``Authorization: Bearer TOKEN``.  ``max_body``: bytes a
    request body may have (413 beyond).  Jobs and event streams need the ASGI lifespan
    (uvicorn runs it).  Limits, each answered with 503 and ``Retry-After`` when reached:
    ``workers`` threads compose and address (default: one per core) with at most
    ``work_queue`` requests waiting; ``max_streams`` event streams, each cut when
    ``stream_queue`` events wait for its client; ``max_jobs`` jobs running at once.
    ``keep_jobs`` (1 to 10,000): finished jobs kept for their reports, the earliest finished
    dropped first (``GET /jobs/ID`` and ``DELETE /jobs/ID/guests`` then say so in their 404).
    """
    if token is not None:
        check_token(token)
    if max_body < 1:
        raise ValueError("max_body must be at least 1 byte")
    config = ServiceConfig(hosts=tuple(hosts), profiles_dir=Path(profiles_dir or user_dir()),
                           token=token, max_body=max_body, system_profiles=system_profiles,
                           allow_any_host=allow_any_host, max_guests=max_guests,
                           keepalive=keepalive, shutdown_timeout=shutdown_timeout,
                           workers=workers, work_queue=work_queue, max_streams=max_streams,
                           stream_queue=stream_queue, max_jobs=max_jobs,
                           keep_jobs=keep_jobs)
    return App(Service(config))
