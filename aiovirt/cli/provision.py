"""``aiovirt provision``, ``aiovirt teardown`` and ``aiovirt events``: the commands that talk
to hosts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from ..client.backend import run as run_loop
from ..errors import AiovirtError, ConnectionClosed
from .common import MAX_JSON, add_library_options, library, params, read
from .progress import ProgressLine, summary, teardown_summary

__all__ = ["register"]

EXIT_CANCELLED = 130


def _labels(pairs: list[str] | None) -> dict[str, str]:
    return params(pairs or (), "--label", "KEY=VALUE")


def _specs(options: argparse.Namespace) -> list[Any]:
    from ..address import Tunables
    from ..provision import GuestSpec, ProvisionError

    if options.specs:
        try:
            data = json.loads(read(options.specs, MAX_JSON))
        except json.JSONDecodeError as exc:
            raise AiovirtError(f"{options.specs}: not JSON: {exc}") from None
        items = data if isinstance(data, list) else [data]
        specs = []
        for n, item in enumerate(items):
            try:
                specs.append(GuestSpec.from_dict(item))
            except ProvisionError as exc:
                raise AiovirtError(f"{options.specs}: spec {n}: {exc}") from None
        return specs
    if not options.template:
        raise AiovirtError("give a TEMPLATE file (or --specs FILE)")
    address: Any = False if options.no_address else (
        Tunables(hotplug_reserve=options.reserve) if options.reserve else True)
    return [GuestSpec(read(options.template), options.profile or (),
                      params(options.param or ()), options.count, options.name,
                      address=address, start=not options.define_only,
                      labels=_labels(options.label))]


_GRACEFUL = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _graceful_interrupt(cancel: Any) -> Iterator[None]:
    """The first Ctrl-C (or SIGTERM, SIGHUP) cancels the run gracefully, so that its report
    is complete and written; a second one interrupts at once."""
    loop = asyncio.get_running_loop()
    pressed = False

    def on_signal(number: int) -> None:
        nonlocal pressed
        if pressed:
            for each in _GRACEFUL:
                loop.remove_signal_handler(each)
            signal.raise_signal(number)
            return
        pressed = True
        again = "Ctrl-C" if number == signal.SIGINT else signal.Signals(number).name
        print(f"\naiovirt: cancelling: no new guests; waiting for the calls in flight "
              f"({again} again to stop at once)", file=sys.stderr)
        cancel()

    try:
        for each in _GRACEFUL:
            loop.add_signal_handler(each, on_signal, each)
    except (NotImplementedError, RuntimeError):   # not the main thread
        yield
        return
    try:
        yield
    finally:
        for each in _GRACEFUL:
            loop.remove_signal_handler(each)


def _provision(options: argparse.Namespace) -> int:
    from ..provision import Provisioning

    specs = _specs(options)
    if options.report:
        _check_writable(options.report)
    try:
        job = Provisioning(options.uri, specs, placement=options.placement,
                           concurrency=options.concurrency, on_existing=options.on_existing,
                           rollback=not options.no_rollback,
                           start_timeout=options.start_timeout,
                           overcommit=options.overcommit, library=library(options),
                           connect_timeout=options.connect_timeout)
        job.check()   # an unknown profile or a bad parameter: refused before any host is touched
    except AiovirtError as exc:
        if options.specs:   # the specs' file is where to look
            raise AiovirtError(f"{options.specs}: {exc}") from None
        raise
    line = ProgressLine(job.progress, force=options.progress)
    job.on_change = line.update
    if not options.json:
        print(f"provisioning {len(job.guests)} guests on {len(options.uri)} host"
              f"{'s' if len(options.uri) > 1 else ''} (run {job.run_id})", file=sys.stderr)

    async def run() -> Any:
        with _graceful_interrupt(job.cancel):
            return await job.run()

    saved = True
    interrupted = False
    try:
        report = run_loop(run())
    except KeyboardInterrupt:   # a second Ctrl-C: the run ended at once, its report is done
        interrupted, report = True, job.report
    finally:
        if options.report:   # even when the run raised: its report is complete then too
            saved = _save_report(options.report, job.report.to_json() + "\n")
        line.close()
    if options.json:
        print(report.to_json())
    else:
        print(summary(report))
    if interrupted:
        print("aiovirt: interrupted: calls still out were abandoned (guests where they were "
              "may exist: see the report)", file=sys.stderr)
        return EXIT_CANCELLED
    if report.cancelled:
        return EXIT_CANCELLED
    return 0 if report.ok and saved else 1


def _check_writable(path: str) -> None:
    """Refuse a ``--report FILE`` that cannot be written before anything is made: the
    report is the record of what the run made."""
    target = Path(path)
    if target.is_dir():
        raise AiovirtError(f"--report {path}: is a directory")
    if not target.parent.is_dir():
        raise AiovirtError(f"--report {path}: no directory {target.parent}")
    if not os.access(target if target.exists() else target.parent, os.W_OK):
        raise AiovirtError(f"--report {path}: not writable")


def _save_report(path: str, text: str) -> bool:
    """Write the report; if that fails after all, say so and print it to stderr instead
    (what the run made must not be lost).  False if it could not be written."""
    try:
        Path(path).write_text(text)
    except OSError as exc:
        print(f"aiovirt: error: --report {path}: cannot write: {exc.strerror or exc}; the "
              "report follows", file=sys.stderr)
        print(text, end="", file=sys.stderr)
        return False
    return True


def _teardown(options: argparse.Namespace) -> int:
    from ..provision import Report, teardown

    report = None
    if options.report:
        try:
            report = Report.from_dict(json.loads(read(options.report, MAX_JSON)))
        except (json.JSONDecodeError, ValueError) as exc:
            raise AiovirtError(f"{options.report}: not a provisioning report: {exc}") from None
    result = run_loop(teardown(options.uri or None, names=options.name or None,
                                  run=options.run_id, labels=_labels(options.label),
                                  report=report, include_foreign=options.include_foreign,
                                  concurrency=options.concurrency,
                                  connect_timeout=options.connect_timeout))
    print(result.to_json() if options.json else teardown_summary(result))
    return 0 if result.ok else 1


def _events(options: argparse.Namespace) -> int:
    from ..api.connection import connect
    from ..api.domain import DomainEventType
    from ..client.events import Dropped

    seen = 0

    async def watch(uri: str, stop: anyio.Event) -> None:
        async with connect(uri) as conn:
            changes = conn.state_changes()
            async with conn.domain_events() as events:
                await show(uri, events, stop)
            # the events end with the connection: lost (unless the watch is over)
            reason = ""
            with contextlib.suppress(anyio.WouldBlock):
                while True:
                    reason = changes.receive_nowait().reason or reason
            changes.close()
            if not stop.is_set():
                raise ConnectionClosed(f"{uri}: the connection was lost" +
                                       (f": {reason}" if reason else ""))

    async def show(uri: str, events: Any, stop: anyio.Event) -> None:
        nonlocal seen
        print(f"watching {uri}", file=sys.stderr, flush=True)
        async for event in events:
            if isinstance(event, Dropped):
                print(f"{time.strftime('%H:%M:%S')}  {event.count} events lost (this "
                      f"command fell behind)  {uri}", file=sys.stderr, flush=True)
                continue
            kind = event.event.name.lower() if isinstance(event.event,
                                                          DomainEventType) \
                else str(event.event)
            if options.json:
                print(json.dumps({"time": time.time(), "host": uri,
                                  "name": event.domain.name, "uuid": event.domain.uuid,
                                  "event": kind, "detail": event.detail}), flush=True)
            else:
                print(f"{time.strftime('%H:%M:%S')}  {event.domain.name:<24} {kind:<12} "
                      f"detail {event.detail}  {uri}", flush=True)
            seen += 1
            if options.count and seen >= options.count:
                stop.set()

    async def main() -> None:
        stop = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                for uri in options.uri:
                    tg.start_soon(watch, uri, stop)
                with anyio.move_on_after(options.timeout or None):
                    await stop.wait()
                stop.set()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:   # a host's error as it is, for main() to say
            raise first_plain_error(group) from None

    try:
        run_loop(main())
    except KeyboardInterrupt:
        return 0
    return 0


def first_plain_error(group: BaseExceptionGroup) -> BaseException:
    """The error the CLI reports for a task group's: its first AiovirtError or broken pipe,
    else the group itself."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = first_plain_error(exc)
        if isinstance(exc, AiovirtError | BrokenPipeError):
            return exc
    return group


def register(commands: Any) -> None:
    """Add ``provision``, ``teardown`` and ``events``."""
    provision = commands.add_parser(
        "provision", help="compose, define and start guests on one host or a fleet",
        description="Compose guests from a domain XML template and profiles (then assign "
                    "addresses), place them on the hosts, define and start them with bounded "
                    "concurrency, and print what became of each. The first Ctrl-C stops "
                    "launching and reports what exists; exit status 0 when every guest "
                    "reached its goal, 1 when some failed, 130 when cancelled.")
    provision.add_argument("template", nargs="?", metavar="TEMPLATE|-",
                           help="a (partial) domain XML file ('-': stdin)")
    provision.add_argument("--uri", "-c", action="append", required=True, metavar="URI",
                           help="a host's libvirt URI (repeat for a fleet)")
    provision.add_argument("--count", "-n", type=int, default=1, help="how many guests")
    provision.add_argument("--name", metavar="PATTERN",
                           help="guest names: {n} counts from 1, {i} from 0, {name} is the "
                                "template's (default: {name}-{n})")
    provision.add_argument("--profile", "-p", action="append", metavar="NAME[@VER]",
                           help="compose with this profile (repeatable)")
    provision.add_argument("--param", action="append", metavar="K=V",
                           help="a profile parameter; PROFILE.K=V for one profile only")
    provision.add_argument("--label", action="append", metavar="K=V",
                           help="store a label in each guest's metadata (for teardown)")
    provision.add_argument("--specs", metavar="FILE",
                           help="guest specs as JSON (one object or a list) instead of a "
                                "template and the options above")
    provision.add_argument("--placement", choices=("capacity", "spread", "pack"),
                           default="capacity",
                           help="how guests go to hosts (default: most free memory first)")
    provision.add_argument("--overcommit", type=float, default=1.0, metavar="RATIO",
                           help="place guests on up to RATIO times a host's free memory "
                                "(default 1: no overcommit)")
    provision.add_argument("--concurrency", type=int, metavar="N",
                           help="guests in progress per host (default: sized to the "
                                "connection, 25)")
    provision.add_argument("--on-existing", choices=("fail", "skip", "replace"),
                           default="fail", help="what to do when a guest's name exists")
    provision.add_argument("--no-rollback", action="store_true",
                           help="leave guests that fail to start defined")
    provision.add_argument("--define-only", action="store_true", help="do not start them")
    provision.add_argument("--no-address", action="store_true",
                           help="leave addressing to libvirt")
    provision.add_argument("--reserve", type=int, default=0, metavar="N",
                           help="leave N free hotplug root ports per guest")
    provision.add_argument("--start-timeout", type=float, default=60.0, metavar="SECONDS",
                           help="how long to wait for a guest's STARTED event (default 60)")
    provision.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                           help="how long a host may take to connect before it counts as "
                                "unreachable (default 30)")
    provision.add_argument("--progress", action="store_true",
                           help="draw the progress line even when stderr is not a terminal")
    provision.add_argument("--json", action="store_true",
                           help="print the report as JSON (stdout) instead of the tables")
    provision.add_argument("--report", metavar="FILE",
                           help="also save the JSON report (for `aiovirt teardown --report`)")
    add_library_options(provision)
    provision.set_defaults(run=_provision)

    teardown = commands.add_parser(
        "teardown", help="stop and undefine guests a run made",
        description="Destroy and undefine the guests that match every filter given: name "
                    "patterns, a run id, labels, or a saved report. Without any filter "
                    "nothing is removed, and only guests aiovirt made (carrying its "
                    "provisioning metadata) are: others a pattern matches are listed as "
                    "skipped unless --include-foreign is given.")
    teardown.add_argument("--uri", "-c", action="append", metavar="URI",
                          help="a host (repeatable; default: the report's hosts)")
    teardown.add_argument("--name", action="append", metavar="PATTERN",
                          help="shell pattern for names (web-*), repeatable")
    teardown.add_argument("--run", dest="run_id", metavar="ID",
                          help="the run id provision printed")
    teardown.add_argument("--label", action="append", metavar="K=V",
                          help="only guests with this label (repeatable)")
    teardown.add_argument("--report", metavar="FILE",
                          help="a report saved by provision --report: what it made")
    teardown.add_argument("--include-foreign", action="store_true",
                          help="also remove guests aiovirt did not make that a --name "
                               "pattern matches (destroys them; with --name only)")
    teardown.add_argument("--concurrency", type=int, default=16, metavar="N",
                          help="calls under way at once per host (default: 16)")
    teardown.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                          help="how long a host may take to connect before it counts as "
                               "unreachable (default: 30)")
    teardown.add_argument("--json", action="store_true", help="print the result as JSON")
    teardown.set_defaults(run=_teardown)

    events = commands.add_parser(
        "events", help="stream domain lifecycle events from hosts",
        description="Print every domain lifecycle event (defined, started, stopped, ...) "
                    "from one or more hosts as it happens, until Ctrl-C.")
    events.add_argument("--uri", "-c", action="append", required=True, metavar="URI",
                        help="a host (repeatable)")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--count", type=int, default=0, metavar="N",
                        help="stop after N events")
    events.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                        help="stop after this long")
    events.set_defaults(run=_events)
