"""The provisioning run: compose each spec for each host, place the guests, then define and
start them with bounded concurrency per host, completion taken from STARTED events.

One ``Provisioning`` is one run.  Each host gets a queue and ``concurrency`` workers; every
guest ends with an outcome in the ``Report``.  A host whose connection dies hands its
not-yet-launched guests to the others; a cancelled run launches nothing more, lets the calls
that are out finish, and reports what exists.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid as _uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import anyio
import anyio.abc
from lxml import etree

from .. import metadata as metadata_codec
from ..address import Tunables
from ..compose import Library, compose
from ..compose.errors import ComposeError
from ..connection import Connection, connect
from ..domain import Domain
from ..errors import (AiovirtError, ConnectionClosed, LibvirtError, NoSuchDomain,
                      XMLInputError)
from ..events import DomainEventType
from ..xmlsafe import parse, to_string
from .placement import POLICIES, Capacity, choose
from .report import GuestResult, HostSummary, Progress, Report, Stage
from .spec import Guest, GuestSpec, ProvisionError, SpecError, expand, memory_and_vcpus

__all__ = ["NAMESPACE", "ON_EXISTING", "Provisioning", "provision", "undefine"]

NAMESPACE = "https://aiovirt.org/xmlns/provision/1"
ON_EXISTING = ("fail", "skip", "replace")
# MANAGED_SAVE | SNAPSHOTS_METADATA | NVRAM | CHECKPOINTS_METADATA | TPM: a guest this
# library made leaves nothing behind; drivers that refuse a flag get the shorter lists
_UNDEFINE_FLAGS = (1 | 2 | 4 | 16 | 32, 1 | 2, 0)


async def undefine(dom: Domain) -> None:
    """Stop a domain if it runs and remove its definition with its saved state, snapshot
    and checkpoint metadata, NVRAM and TPM state (as far as the driver allows)."""
    with contextlib.suppress(LibvirtError):
        if await dom.is_active():
            await dom.destroy()
    for flags in _UNDEFINE_FLAGS:
        try:
            await dom.undefine(flags)
            return
        except LibvirtError as exc:
            if flags == 0 or "flag" not in str(exc).lower():
                raise


@dataclass
class _Composed:
    """A spec composed for one host: the XML with a placeholder name, or why it failed."""

    text: str | None
    memory_kib: int = 0
    vcpus: int = 1
    error: str | None = None

    def for_name(self, name: str, placeholder: str) -> str:
        assert self.text is not None
        return self.text.replace(placeholder, escape(name, {'"': "&quot;", "'": "&apos;"}))


class _Host:
    """One host of the run: its connection, capacity, queue and STARTED waiters."""

    def __init__(self, index: int, target: str | Connection) -> None:
        self.index = index
        self.target = target
        self.uri = target if isinstance(target, str) else target.uri.uri
        self.summary = HostSummary(self.uri)
        self.conn: Connection | None = target if isinstance(target, Connection) else None
        self.capacity: Capacity | None = None
        self.names: set[str] = set()
        self.caps: str | None = None
        self.domcaps: dict[tuple[str | None, ...], str | None] = {}
        self.composed: dict[int, _Composed] = {}
        self.waiters: dict[str, anyio.Event] = {}
        self.send, self.receive = anyio.create_memory_object_stream[Guest](math.inf)
        self.lost = False
        self.concurrency = 0
        self.events_scope: anyio.CancelScope | None = None
        self.calls: set[anyio.CancelScope] = set()   # shielded calls out on this host

    @property
    def usable(self) -> bool:
        return self.conn is not None and not self.lost


class Provisioning:
    """One provisioning run over one or more hosts.

    ``hosts``: URIs (opened and closed by the run) or open ``Connection``s.  ``placement``:
    ``capacity`` (most free memory first), ``spread`` or ``pack``.  ``concurrency``: guests
    in progress per host (default: the connection's calls in flight times its sockets, 25
    with the defaults).  ``on_existing``: ``fail``, ``skip`` or ``replace`` a guest whose
    name exists.  ``rollback``: undefine guests that fail to start.  ``start_timeout``:
    seconds to wait for a guest's STARTED event once its start call returned.
    ``overcommit``: place guests on up to this many times a host's free memory (1.0: none).
    ``connect_timeout``: seconds a host given by URI may take to connect and complete the
    handshake before it counts as unreachable (keepalive watches it from then on).
    ``on_change`` is called with a guest's result each time it moves on.
    """

    def __init__(self, hosts: str | Connection | Sequence[str | Connection],
                 specs: GuestSpec | Sequence[GuestSpec], *, placement: str = "capacity",
                 concurrency: int | None = None, on_existing: str = "fail",
                 rollback: bool = True, start_timeout: float = 60.0,
                 overcommit: float = 1.0, library: Library | None = None,
                 on_change: Callable[[GuestResult], None] | None = None,
                 run_id: str | None = None, connect_timeout: float = 30.0) -> None:
        targets = [hosts] if isinstance(hosts, (str, Connection)) else list(hosts)
        if not targets:
            raise ProvisionError("no hosts given")
        self.specs = [specs] if isinstance(specs, GuestSpec) else list(specs)
        if not self.specs:
            raise ProvisionError("no guest specs given")
        if placement not in POLICIES:
            raise ProvisionError(f"unknown placement {placement!r} (known: "
                                 f"{', '.join(POLICIES)})")
        if on_existing not in ON_EXISTING:
            raise ProvisionError(f"on_existing={on_existing!r}: use one of "
                                 f"{', '.join(ON_EXISTING)}")
        if concurrency is not None and concurrency < 1:
            raise ProvisionError("concurrency must be at least 1")
        if not overcommit > 0:
            raise ProvisionError(f"overcommit {overcommit!r}: give a ratio above 0")
        if not connect_timeout > 0:
            raise ProvisionError(f"connect_timeout {connect_timeout!r}: give seconds above 0")
        for index, spec in enumerate(self.specs):
            if spec.count > 1 and parse(spec.template, source=f"spec {index} template"
                                        ).find("uuid") is not None:
                raise ProvisionError(f"spec {index}: the template has a <uuid> but makes "
                                     f"{spec.count} guests: each needs its own (leave it out)")
        self.guests = expand(self.specs)
        self.placement = placement
        self.concurrency = concurrency
        self.on_existing = on_existing
        self.rollback = rollback
        self.start_timeout = start_timeout
        self.overcommit = overcommit
        self.connect_timeout = connect_timeout
        self.library = library
        self.on_change = on_change
        self.run_id = run_id or _uuid.uuid4().hex[:12]
        self._hosts = [_Host(i, t) for i, t in enumerate(targets)]
        self._placeholder = f"aiovirt-name-{_uuid.uuid4().hex}"
        self.results = [GuestResult(g.name, g.spec) for g in self.guests]
        self._by_name = {g.name: i for i, g in enumerate(self.guests)}
        self.progress = Progress(len(self.guests))
        self.report = Report(self.run_id, self.results, [h.summary for h in self._hosts])
        self._scope: anyio.CancelScope | None = None
        self._cancel_asked = False
        self._cancelled_from_outside = False
        self._started_at = 0.0
        self._arrivals: set[int] = set()
        self._ready: anyio.Event | None = None

    # -- control --------------------------------------------------------------------------------
    def check(self) -> None:
        """Compose every spec once offline (no host capabilities), to refuse a request with an
        unknown profile, a bad parameter or malformed XML before any host is touched;
        raises ``SpecError`` naming the spec."""
        if self.library is None:
            self.library = Library.default()
        for index, spec in enumerate(self.specs):
            try:
                compose(spec.template, spec.profiles, params=spec.params, library=self.library,
                        validate=False, record=False, source=f"spec {index} template")
            except (ComposeError, AiovirtError) as exc:
                raise SpecError(index, str(exc)) from None
            except ValueError as exc:   # a profile reference that is not one
                raise SpecError(index, f"profiles: {exc}") from None

    def cancel(self) -> None:
        """Launch nothing more; calls already out finish; ``run()`` then returns the report."""
        self._cancel_asked = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> Report:
        """Carry out the run; returns the report (also when ``cancel()`` stopped it).  If the
        task running it is cancelled, the report is still completed (``self.report``) before
        the cancellation propagates."""
        self._started_at = time.monotonic()
        self._ready = anyio.Event()
        try:
            with anyio.CancelScope() as self._scope:
                if self._cancel_asked:
                    self._scope.cancel()
                async with anyio.create_task_group() as tg:
                    for host in self._hosts:
                        tg.start_soon(self._run_host, host, name=f"aiovirt host {host.uri}")
                    await self._ready.wait()
                    if not any(h.usable for h in self._hosts):
                        for result in self.results:
                            self._fail(result, "place", "no host could be reached")
                    self._plan()
                    if self._all_done():
                        self._close_queues()
        except anyio.get_cancelled_exc_class():
            self._cancelled_from_outside = True
            raise
        finally:
            self._finish_report()
        return self.report

    # -- hosts ----------------------------------------------------------------------------------
    async def _run_host(self, host: _Host) -> None:
        """One host's life in the run: connect (unless given a connection), watch its events,
        learn what placement needs, then run its workers until the run is done."""
        # A daemon that accepts but never answers (stopped, hung) would hold the whole run
        # at placement: connecting is bounded (the scope encloses the connection's own
        # task group, so it is lifted, not left, once connected).
        connecting = anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout)
        try:
            with connecting:
                async with contextlib.AsyncExitStack() as stack:
                    try:
                        if host.conn is None:
                            host.conn = await stack.enter_async_context(
                                connect(str(host.target)))
                    except AiovirtError as exc:
                        self._unreachable(host, exc)
                        return
                    connecting.deadline = math.inf
                    await self._serve_host(host)
            if connecting.cancelled_caught:
                self._unreachable(host, ConnectionClosed(
                    f"no answer to the handshake within {self.connect_timeout:g} s"))
        finally:
            self._arrived(host)

    async def _serve_host(self, host: _Host) -> None:
        """Watch a connected host's events, learn it, then run its workers."""
        async with anyio.create_task_group() as tg:
            try:
                await tg.start(self._watch_events, host)
                await self._learn(host)
            except AiovirtError as exc:
                self._unreachable(host, exc)
                tg.cancel_scope.cancel()
                return
            self._arrived(host)
            for n in range(host.concurrency):
                tg.start_soon(self._worker, host, name=f"aiovirt worker {host.uri} {n}")

    def _arrived(self, host: _Host) -> None:
        """``host`` is ready or out of the running; placement starts once all are."""
        self._arrivals.add(host.index)
        if len(self._arrivals) == len(self._hosts):
            assert self._ready is not None
            self._ready.set()

    def _unreachable(self, host: _Host, exc: BaseException) -> None:
        host.conn = None
        host.summary.state = "unreachable"
        host.summary.error = f"{type(exc).__name__}: {exc}"
        self.report.notes.append(f"host {host.uri} is unreachable: {exc}")

    async def _learn(self, host: _Host) -> None:
        """Read what placement and composition need: capacity, existing names,
        capabilities; compose every spec for the host."""
        conn = host.conn
        assert conn is not None
        info = await conn.node_info()
        # the test driver's free memory is a fixed figure (in the wrong unit): take its
        # host's total memory instead
        free_kib = info.memory if conn.uri.driver == "test" else \
            await conn.free_memory() // 1024
        host.capacity = Capacity(int(free_kib * self.overcommit), info.cpus)
        host.summary.free_memory_kib = free_kib
        host.summary.hostname = await conn.hostname()
        host.names = {d.name for d in await conn.list_domains()}
        host.caps = await conn.capabilities()
        host.concurrency = self.concurrency or conn.max_in_flight * (1 + conn.lanes)
        host.summary.concurrency = host.concurrency
        for index, spec in enumerate(self.specs):
            host.composed[index] = await self._compose(host, index, spec)

    async def _watch_events(self, host: _Host, *,
                            task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                            ) -> None:
        """Route each STARTED event to the guest waiting for it (until the run is done)."""
        conn = host.conn
        assert conn is not None
        subscribed = False
        with anyio.CancelScope() as host.events_scope:
            try:
                async with conn.domain_events() as events:
                    subscribed = True
                    task_status.started()
                    async for event in events:
                        if event.event == DomainEventType.STARTED:
                            waiter = host.waiters.pop(event.domain.uuid, None)
                            if waiter is not None:
                                waiter.set()
            except AiovirtError as exc:
                if not subscribed:
                    raise          # reaches tg.start: the host is unreachable
                # the stream broke, or leaving it did (deregistering on a dying socket)
                if not host.lost and not self._all_done():
                    self._lose(host, exc)
                return
            if not host.lost and not self._all_done():
                self._lose(host, ConnectionClosed("its event stream ended"))

    async def _compose(self, host: _Host, index: int, spec: GuestSpec) -> _Composed:
        """Compose ``spec`` for ``host``: a first pass says which machine the result is for,
        whose domain capabilities then feed the real pass."""
        root = parse(spec.template, source="template")
        name = root.find("name")
        if name is None:
            name = etree.SubElement(root, "name")
        name.text = self._placeholder
        if self.library is None:
            self.library = Library.default()
        library = self.library
        try:
            first = compose(root, spec.profiles, params=spec.params, caps=host.caps,
                            library=library, validate=False, record=False)
            domcaps = await self._domcaps(host, first.tree)
            result = compose(root, spec.profiles, params=spec.params, caps=host.caps,
                             domcaps=domcaps, library=library,
                             address=spec.address if isinstance(spec.address, Tunables)
                             else bool(spec.address))
        except (ComposeError, AiovirtError) as exc:
            return _Composed(None, error=f"{type(exc).__name__}: {exc}")
        tree = result.tree
        labels = dict(spec.labels)
        metadata_codec.write(tree, {"run": self.run_id, "spec": index, "labels": labels},
                             namespace=NAMESPACE, prefix="aiovirt-provision", name="guest")
        memory, vcpus = memory_and_vcpus(tree)
        return _Composed(to_string(tree), memory, vcpus)

    async def _domcaps(self, host: _Host, tree: etree._Element) -> str | None:
        os_type = tree.find("os/type")
        key = (tree.get("type"), tree.findtext("devices/emulator"),
               os_type.get("arch") if os_type is not None else None,
               os_type.get("machine") if os_type is not None else None)
        if key not in host.domcaps:
            assert host.conn is not None
            virttype, emulator, arch, machine = key
            try:
                host.domcaps[key] = await host.conn.domain_capabilities(
                    emulator=emulator, arch=arch, machine=machine, virttype=virttype)
            except LibvirtError:
                host.domcaps[key] = None   # the driver has none (test), or not for this
        return host.domcaps[key]

    def _lose(self, host: _Host, error: BaseException) -> None:
        """A host's connection died: fail what was out on it, re-place what was not."""
        if host.lost:
            return
        host.lost = True
        host.summary.state = "lost"
        host.summary.error = f"{type(error).__name__}: {error}"
        for waiter in host.waiters.values():
            waiter.set()
        host.waiters.clear()
        for scope in host.calls:     # calls still out there will never be answered
            scope.cancel()
        moved: list[Guest] = []
        while True:
            try:
                moved.append(host.receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        host.send.close()
        if moved:
            self._replace(moved, host)
        else:
            self.report.notes.append(f"host {host.uri} was lost: {error}")

    def _replace(self, guests: list[Guest], lost: _Host) -> None:
        """Place guests taken off a lost host on the others (or fail them)."""
        targets: dict[str, int] = {}
        for guest in guests:
            result = self.results[self._by_name[guest.name]]
            result.moved_from.append(lost.uri)
            composed = lost.composed.get(guest.spec)
            if lost.capacity is not None and composed is not None:
                lost.capacity.give_back(composed.memory_kib, composed.vcpus)
            host = self._place(guest, result)
            if host is not None:
                targets[host.uri] = targets.get(host.uri, 0) + 1
        where = ", ".join(f"{n} to {uri}" for uri, n in targets.items()) or "none could be " \
            "placed elsewhere"
        self.report.notes.append(f"host {lost.uri} was lost: {lost.summary.error}; "
                                 f"{len(guests)} guests not yet launched there moved: {where}")

    # -- placement ------------------------------------------------------------------------------
    def _plan(self) -> None:
        for guest, result in zip(self.guests, self.results):
            if not result.final:
                self._place(guest, result)

    def _place(self, guest: Guest, result: GuestResult) -> _Host | None:
        """Choose a host for ``guest`` and queue it there; fail it when none fits."""
        live = [h for h in self._hosts if h.usable]
        if not live:
            self._fail(result, "place", "no host is left to take it")
            return None
        existing = [h for h in live if guest.name in h.names]
        if existing:
            host = existing[0]
            if self.on_existing == "skip":
                result.host = host.uri
                self._set(result, Stage.SKIPPED, final=True, exists=True)
                return None
            if self.on_existing == "fail":
                result.host = host.uri
                self._fail(result, "define", f"a domain named {guest.name!r} already exists "
                           f"on {host.uri} (on_existing='fail')")
                return None
            chosen: _Host | None = host   # replace it where it is
        else:
            sizes = [h.composed.get(guest.spec) if h.usable else None for h in self._hosts]
            size = next((s for s in sizes if s is not None and s.text is not None), None)
            if size is None:
                errors = {s.error for s in sizes if s is not None and s.error}
                self._fail(result, "compose", "; ".join(sorted(errors)) or "not composed")
                return None
            index = choose([h.capacity if h.usable else None for h in self._hosts],
                           size.memory_kib, size.vcpus, self.placement)
            if index is None:
                free, most = max((h.capacity.free_kib, h.uri) for h in live
                                 if h.capacity is not None)
                self._fail(result, "place", f"no host has {size.memory_kib // 1024} MiB free "
                           f"(most: {most}, {free // 1024} MiB)")
                return None
            chosen = self._hosts[index]
        assert chosen is not None and chosen.capacity is not None
        composed = chosen.composed[guest.spec]
        if composed.text is not None:
            chosen.capacity.take(composed.memory_kib, composed.vcpus)
        result.host = chosen.uri
        chosen.send.send_nowait(guest)
        return chosen

    # -- the guests -----------------------------------------------------------------------------
    async def _worker(self, host: _Host) -> None:
        async for guest in host.receive:
            result = self.results[self._by_name[guest.name]]
            if host.lost:
                self._replace([guest], host)
                continue
            await self._provision(host, guest, result)

    async def _provision(self, host: _Host, guest: Guest, result: GuestResult) -> None:
        conn = host.conn
        assert conn is not None
        spec = self.specs[guest.spec]
        composed = host.composed[guest.spec]
        if composed.text is None:
            self._fail(result, "compose", composed.error or "not composed")
            return
        began = time.monotonic()
        try:
            if guest.name in host.names:       # on_existing == "replace"
                if not await self._replace_existing(host, guest.name, result):
                    return
            self._set(result, Stage.DEFINING)
            with self._call_on(host):
                dom = await conn.define_xml(composed.for_name(guest.name, self._placeholder))
            result.uuid = dom.uuid
            self._set(result, Stage.DEFINED, exists=True)
            if not spec.start:
                self._set(result, Stage.DEFINED, final=True)
                return
            await anyio.lowlevel.checkpoint()   # a cancelled run stops here: it stays defined
            started = host.waiters[dom.uuid] = anyio.Event()
            self._set(result, Stage.STARTING)
            with self._call_on(host):
                await dom.start()
            with anyio.move_on_after(self.start_timeout):
                await started.wait()
            if host.lost:
                raise ConnectionClosed(f"host lost before {guest.name}'s STARTED event")
            if not started.is_set():
                host.waiters.pop(dom.uuid, None)
                await self._start_failed(host, dom, result, "event", "its start call "
                                         "returned, but no STARTED event came within "
                                         f"{self.start_timeout:g} s")
                return
            self._set(result, Stage.STARTED, final=True)
        except ConnectionClosed as exc:
            if result.stage is Stage.DEFINING:
                result.exists = None      # the define may or may not have happened
            self._fail(result, _step(result.stage), f"host {host.uri} lost: {exc}")
            self._lose(host, exc)
        except LibvirtError as exc:
            if result.stage is Stage.STARTING:
                await self._start_failed(host, dom, result, "start", str(exc))
            else:
                self._fail(result, _step(result.stage), str(exc))
        except AiovirtError as exc:   # a protocol error: the reply was not understood
            if result.stage in (Stage.DEFINING, Stage.STARTING):
                result.exists = None if result.stage is Stage.DEFINING else True
            self._fail(result, _step(result.stage), f"{type(exc).__name__}: {exc}")
        except anyio.get_cancelled_exc_class():
            if result.stage is Stage.STARTING and result.exists:
                self._set(result, Stage.STARTED, final=True)   # its start call returned
            elif result.stage is Stage.DEFINED:
                self._set(result, Stage.DEFINED, final=True)
            raise
        finally:
            result.seconds = time.monotonic() - began

    @contextlib.contextmanager
    def _call_on(self, host: _Host) -> Iterator[None]:
        """Shield a call from the run's cancellation (it finishes, so that the report knows
        what exists), but not from its host's loss: then it is abandoned at once and raises
        ``ConnectionClosed``, whatever the connection is still waiting for."""
        with anyio.CancelScope(shield=True):
            with anyio.CancelScope() as scope:
                host.calls.add(scope)
                if host.lost:
                    scope.cancel()
                try:
                    yield
                finally:
                    host.calls.discard(scope)
        if scope.cancelled_caught:
            raise ConnectionClosed(f"host {host.uri} was lost: {host.summary.error}")

    async def _replace_existing(self, host: _Host, name: str, result: GuestResult) -> bool:
        """Undefine the guest already called ``name`` so that ours takes its place.  Only a
        guest aiovirt made (it carries provisioning metadata) is replaced: for any other the
        guest fails, saying so, and False is returned."""
        assert host.conn is not None
        with self._call_on(host):
            try:
                dom = await host.conn.lookup_domain(name=name)
                try:
                    ours = isinstance(await dom.read_metadata(namespace=NAMESPACE), dict)
                except XMLInputError:
                    ours = False
                if not ours:
                    result.host = host.uri
                    self._fail(result, "define", f"a domain named {name!r} exists on "
                               f"{host.uri} and aiovirt did not make it (no provisioning "
                               "metadata): on_existing='replace' replaces only aiovirt's "
                               "guests")
                    return False
                await undefine(dom)
            except NoSuchDomain:
                pass
        host.names.discard(name)
        result.replaced = True
        return True

    async def _start_failed(self, host: _Host, dom: Domain, result: GuestResult, where: str,
                            error: str) -> None:
        if self.rollback:
            try:
                with self._call_on(host):
                    await undefine(dom)
            except AiovirtError as exc:
                error += f"; rolling back failed too: {exc}"
            else:
                result.exists = False
                result.rolled_back = True
        self._fail(result, where, error)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _set(self, result: GuestResult, stage: Stage, *, final: bool = False,
             exists: bool | None = None) -> None:
        if result.final:
            return
        self.progress.move(result.stage, stage, final=final)
        result.stage = stage
        result.final = final
        if exists is not None:
            result.exists = exists
        if self.on_change is not None:
            self.on_change(result)
        if final and self._all_done():
            self._close_queues()

    def _fail(self, result: GuestResult, where: str, error: str) -> None:
        if result.final:
            return
        result.error = error
        result.failed_at = where
        self._set(result, Stage.FAILED, final=True)

    def _all_done(self) -> bool:
        return self.progress.done == self.progress.total

    def _close_queues(self) -> None:
        """Everything has its outcome: let the workers and the event watchers end."""
        for host in self._hosts:
            host.send.close()
            for waiter in host.waiters.values():
                waiter.set()
            if host.events_scope is not None:
                host.events_scope.cancel()

    def _finish_report(self) -> None:
        for result in self.results:
            if not result.final:
                if result.stage is Stage.PENDING:
                    self._set(result, Stage.CANCELLED, final=True)
                else:   # mid-way when the run ended: say where, and that it exists
                    self._fail(result, _step(result.stage), "the run was cancelled here")
        self.report.cancelled = self._cancel_asked or self._cancelled_from_outside
        self.report.seconds = time.monotonic() - self._started_at


def _step(stage: Stage) -> str:
    """The step a guest at ``stage`` was taking (for ``GuestResult.failed_at``)."""
    return "start" if stage in (Stage.DEFINED, Stage.STARTING) else "define"


async def provision(hosts: str | Connection | Sequence[str | Connection],
                    specs: GuestSpec | Sequence[GuestSpec], **options: Any) -> Report:
    """Compose, place, define and start the guests ``specs`` describe on ``hosts``; returns
    the report (see ``Provisioning`` for the options)."""
    return await Provisioning(hosts, specs, **options).run()
