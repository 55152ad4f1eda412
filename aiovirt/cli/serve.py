"""``aiovirt serve``: run the REST service (``aiovirt.service``) on uvicorn.

It binds 127.0.0.1 by default.  Binding any other address needs a bearer token (``--token``
or, better since a command line is visible to other users, ``AIOVIRT_TOKEN``); without TLS
the token crosses the network in clear, so give ``--tls-cert``/``--tls-key`` or put a
TLS-terminating proxy in front.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import ssl
import sys
from typing import Any

from ..errors import AiovirtError

__all__ = ["check_bind", "is_loopback", "register"]

TOKEN_ENV = "AIOVIRT_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts; other names do not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse (``AiovirtError``) to serve on a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise AiovirtError(f"--host {host}: not a loopback address, so the service needs a "
                           f"bearer token: set {TOKEN_ENV} (or give --token)")


SWITCH_INTERVAL = 0.0005   # seconds; Python's default is 0.005
MAX_KEEP = 10_000   # aiovirt.service.jobs.MAX_KEEP (not imported: that loads the service)


def _serve(options: argparse.Namespace) -> int:
    from ..service import create_app

    token = options.token or os.environ.get(TOKEN_ENV) or None
    check_bind(options.host, token)
    if bool(options.tls_cert) != bool(options.tls_key):
        raise AiovirtError("--tls-cert and --tls-key go together")
    try:
        app = create_app(hosts=options.uri or (), profiles_dir=options.profiles_dir,
                         token=token, max_body=options.max_body,
                         system_profiles=not options.no_system_profiles,
                         allow_any_host=options.allow_any_host, workers=options.workers,
                         work_queue=options.work_queue, max_streams=options.max_streams,
                         stream_queue=options.stream_queue, max_jobs=options.max_jobs,
                         keep_jobs=options.keep_jobs)
    except ValueError as exc:
        raise AiovirtError(str(exc)) from None
    try:
        from ..service.server import Server, uvicorn_config
    except ImportError:
        raise AiovirtError("aiovirt serve needs uvicorn: pip install 'aiovirt[serve]'"
                           ) from None
    _check_tls(options.tls_cert, options.tls_key)
    if not is_loopback(options.host) and not options.tls_cert:
        print(f"aiovirt: warning: serving plain HTTP on {options.host}: the bearer token "
              "crosses the network in clear (give --tls-cert/--tls-key or use a TLS proxy)",
              file=sys.stderr)
    config = uvicorn_config(app, host=options.host, port=options.port,
                            client_timeout=options.client_timeout,
                            max_connections=options.max_connections,
                            log_level=options.log_level, ssl_certfile=options.tls_cert,
                            ssl_keyfile=options.tls_key)
    # Composes run in worker threads; the event loop's thread then waits for the GIL up to
    # the switch interval (5 ms) at each hand-over.  This process serves requests and
    # nothing else, so a shorter interval keeps quick requests quick under load.
    sys.setswitchinterval(SWITCH_INTERVAL)
    server = Server(config)
    server.run()
    return 0 if server.started else 1


def _number(kind: type[int] | type[float], low: float, what: str,
            high: float | None = None) -> Any:
    """An argparse type: a number of ``kind`` of at least ``low`` and, if given, at most
    ``high`` (``what`` it counts)."""
    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what}") from None
        if value < low or value != value:
            raise argparse.ArgumentTypeError(f"give at least {low:g} ({what})")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"give at most {high:g} ({what})")
        return value
    return convert


_size = _number(int, 1, "bytes")


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value}: a port is from 0 to 65535")
    return value


def _check_tls(cert: str | None, key: str | None) -> None:
    """Load the certificate and key as the server will, so that a missing or unusable file
    is one error line naming it, not uvicorn's traceback at start-up."""
    if cert is None and key is None:
        return
    if cert is None:
        raise AiovirtError("--tls-key needs --tls-cert")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        files = cert if key is None else f"{cert} / {key}"
        raise AiovirtError(f"--tls-cert/--tls-key {files}: cannot use them: "
                           f"{exc.strerror or exc}") from None


def register(commands: Any) -> None:
    """Add ``aiovirt serve`` to the parser's subcommands."""
    serve = commands.add_parser(
        "serve", help="run the REST service (profiles, compose, address, provisioning "
                      "jobs, events)",
        description="Serve the REST API (OpenAPI document at /openapi.json) with uvicorn. "
                    "Binds 127.0.0.1 unless told otherwise; any other address needs a "
                    f"bearer token ({TOKEN_ENV} or --token).")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind "
                                                            "(default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    serve.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' (prefer "
                                       f"the {TOKEN_ENV} environment variable)")
    serve.add_argument("--uri", action="append", metavar="URI",
                       help="a libvirt host for jobs and events (repeatable); requests may "
                            "only name these unless --allow-any-host")
    serve.add_argument("--allow-any-host", action="store_true",
                       help="let requests name hosts other than the --uri ones (not "
                            "ext URIs, nor ones with parameters naming local programs or "
                            "files: command=, keyfile=...)")
    serve.add_argument("--profiles-dir", metavar="DIR",
                       help="where application profiles are stored (default "
                            "~/.config/aiovirt/profiles)")
    serve.add_argument("--no-system-profiles", action="store_true",
                       help="ignore /etc/aiovirt/profiles")
    serve.add_argument("--max-body", type=_size, default=1024 * 1024, metavar="BYTES",
                       help="largest request body accepted (default 1 MiB; 413 beyond)")
    serve.add_argument("--client-timeout", type=_number(float, 0.1, "seconds"), default=10.0,
                       metavar="SECONDS", help="close a connection that takes longer to "
                       "send a request (head and body), idles longer between requests, or "
                       "reads nothing of a response for longer (default 10)")
    serve.add_argument("--max-connections", type=_number(int, 1, "connections"),
                       default=1000, metavar="N", help="answer 503 beyond N open connections "
                       "(default 1000)")
    serve.add_argument("--workers", type=_number(int, 1, "threads"), metavar="N",
                       help="threads that compose and address (default: one per core)")
    serve.add_argument("--work-queue", type=_number(int, 0, "requests"), default=256,
                       metavar="N", help="compose/address requests that may wait for a "
                       "worker; more get 503 (default 256)")
    serve.add_argument("--max-streams", type=_number(int, 1, "streams"), default=100,
                       metavar="N", help="concurrent event streams (GET /events); more get "
                       "503 (default 100)")
    serve.add_argument("--stream-queue", type=_number(int, 1, "events"), default=1024,
                       metavar="N", help="events that may wait for a slow event-stream "
                       "client before its stream is cut (default 1024)")
    serve.add_argument("--max-jobs", type=_number(int, 1, "jobs"), default=16, metavar="N",
                       help="provisioning jobs running at once; more get 503 (default 16)")
    serve.add_argument("--keep-jobs", type=_number(int, 1, "jobs", high=MAX_KEEP),
                       default=100, metavar="N", help="finished jobs kept for their "
                       "reports, the earliest finished dropped first (default 100, at most "
                       f"{MAX_KEEP})")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate")
    serve.add_argument("--tls-key", metavar="FILE", help="... and this private key")
    serve.add_argument("--log-level", default="info",
                       choices=("critical", "error", "warning", "info", "debug"))
    serve.set_defaults(run=_serve)
