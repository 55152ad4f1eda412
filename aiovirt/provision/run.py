"""The provisioning run: compose each spec for each host, place the guests, then define and
start them with bounded concurrency per host, completion taken from STARTED events.

One ``Provisioning`` is one run, and only its I/O: it connects, learns each host, carries out
the ``Plan``'s actions (``plan.py``) and feeds it what calls and events say.  The plan decides
placement, per-host queues and concurrency, host loss and re-placement, cancellation and
every guest's outcome in the ``Report``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid as _uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from lxml import etree

from ..address import Tunables
from ..api.connection import Connection, connect
from ..client.backend import asyncio_loop, current_asyncio_task
from ..api.domain import Domain, DomainEventType, DomainLifecycleEvent
from ..capabilities import CapabilityError, CapabilitySet, HostCaps, merge
from ..capabilities.live import baseline
from ..checks import check_count, check_number
from ..compose import Library, compose
from ..compose.errors import ComposeError
from ..errors import (AiovirtError, ArgumentUnsupported, ConnectionClosed, InvalidArgument,
                      LibvirtError, NoSuchDomain, NoSupport, XMLInputError)
from ..xml import metadata as metadata_codec
from ..xml.safe import parse, to_string
from .plan import ON_EXISTING, Action, Launch, Plan, RollBack, Size, Start
from .report import GuestResult, Report
from .spec import GuestSpec, ProvisionError, SpecError, expand, memory_and_vcpus

__all__ = ["NAMESPACE", "ON_EXISTING", "Provisioning", "provision", "undefine"]

NAMESPACE = "https://aiovirt.org/xmlns/provision/1"
MAX_CONCURRENCY = 10_000   # launches in progress per host
MAX_OVERCOMMIT = 1000.0    # times a host's free memory
# seconds a call out when a run (or a teardown) is cancelled still has to answer: it is
# shielded so that the report knows what exists, and its keepalive ends with the run
CANCEL_GRACE = 30.0
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
        except (InvalidArgument, ArgumentUnsupported, NoSupport):
            if flags == 0:   # libvirt refuses flags a driver does not know as invalid
                raise


# what a name needs escaped inside the XML (text or an attribute value, either quote)
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                          "'": "&apos;"})


@dataclass
class _Composed:
    """A spec composed for one host: the XML with a placeholder name, or why it failed."""

    text: str | None
    memory_kib: int = 0
    vcpus: int = 1
    error: str | None = None

    def for_name(self, name: str, placeholder: str) -> str:
        assert self.text is not None
        return self.text.replace(placeholder, name.translate(_ESCAPES))


class _Fleet:
    """What the hosts of a run can do, for its migratable specs: each host offers its
    capabilities (per spec) or is absent; once every host has, each migratable spec gets one
    merged set, made once."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.waiting = set(range(len(names)))
        self.offered: dict[int, dict[int, HostCaps | str]] = {}   # a string: why not
        self.ready = anyio.Event()
        self.sets: dict[int, CapabilitySet | str] = {}
        self.lock = anyio.Lock()

    def offer(self, host: int, per_spec: dict[int, HostCaps | str]) -> None:
        if host in self.waiting:
            self.offered[host] = per_spec
            self._arrived(host)

    def absent(self, host: int) -> None:
        self._arrived(host)

    def _arrived(self, host: int) -> None:
        self.waiting.discard(host)
        if not self.waiting:
            self.ready.set()

    def hosts(self, spec: int) -> list[HostCaps]:
        """The capabilities offered for ``spec``, in host order."""
        return [caps for _, offer in sorted(self.offered.items())
                if isinstance(caps := offer.get(spec), HostCaps)]

    def why_none(self, spec: int) -> str:
        """Why no host offered capabilities for ``spec``."""
        reasons = [r for _, offer in sorted(self.offered.items())
                   if isinstance(r := offer.get(spec), str)]
        return reasons[0] if reasons else "no host could give its capabilities"


class _Host:
    """One host's I/O side: its connection, capabilities, specs composed for it, STARTED
    waiters and the calls out on it (the plan holds its capacity, queue and state)."""

    def __init__(self, index: int, target: str | Connection) -> None:
        self.index = index
        self.target = target
        self.uri = target if isinstance(target, str) else target.uri.uri
        self.conn: Connection | None = target if isinstance(target, Connection) else None
        self.caps: str | None = None
        self.domcaps: dict[tuple[str | None, ...], str | None] = {}
        self.composed: dict[int, _Composed] = {}
        # STARTED awaited, by domain UUID: None until the event (True) or a waiter (an
        # Event, made only if the start call returns before the event came) is there
        self.waiters: dict[str, anyio.Event | bool | None] = {}
        self.lost = False
        self.error: str | None = None
        self.tasks: anyio.abc.TaskGroup | None = None   # where its guests' tasks run
        self.ready: deque[Launch] = deque()   # launches no task carries out yet
        self.workers = 0                      # tasks carrying out launches (_work)
        self.width = 1                        # at most this many (the plan's concurrency)
        self.over = anyio.Event()                       # lost, or the run is done
        self.events_scope: anyio.CancelScope | None = None
        self.calls: set[anyio.CancelScope] = set()   # shielded calls out on this host
        # once the run is cancelled: when its shielded calls are abandoned (``CANCEL_GRACE``)
        self.cancel_deadline: float | None = None
        # cancel scopes and events per guest, made with the running backend's own classes
        # (``Provisioning.run`` finds them): ``anyio.CancelScope()`` and ``anyio.Event()``
        # look the backend up on every call, half of what a scope costs
        self.new_scope: Callable[..., anyio.CancelScope] = anyio.CancelScope
        self.new_event: Callable[[], anyio.Event] = anyio.Event
        self.now: Callable[[], float] = anyio.current_time   # the clock their deadlines use


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

    Every decision is the ``Plan``'s (``self.plan``); this class only connects, learns the
    hosts, carries out the plan's actions and tells it what happened.
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
        check_count("concurrency", concurrency, 1, MAX_CONCURRENCY, error=ProvisionError)
        for name, value in (("connect_timeout", connect_timeout),
                            ("start_timeout", start_timeout)):
            check_number(name, value, 0, math.inf, seconds=True, optional=False,
                         error=ProvisionError)
        check_number("overcommit", overcommit, 0, MAX_OVERCOMMIT, optional=False,
                     error=ProvisionError)
        if not isinstance(rollback, bool):
            raise ProvisionError(f"rollback must be True or False, not {rollback!r:.60}")
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
        self._on_change = on_change
        self.run_id = run_id or _uuid.uuid4().hex[:12]
        self._hosts = [_Host(i, t) for i, t in enumerate(targets)]
        uris = [h.uri for h in self._hosts]
        self._fleet = _Fleet([u if uris.count(u) == 1 else f"{u}#{i}"
                              for i, u in enumerate(uris)])
        self.plan = Plan(self.guests, [h.uri for h in self._hosts],
                         start=[s.start for s in self.specs], placement=placement,
                         on_existing=on_existing, rollback=rollback, overcommit=overcommit,
                         run_id=self.run_id, on_change=on_change)
        self.results = self.plan.results
        self.progress = self.plan.progress
        self.report = self.plan.report
        self._placeholder = f"aiovirt-name-{_uuid.uuid4().hex}"
        self._scope: anyio.CancelScope | None = None
        self._hosts_done = False   # every host's task ended (the grace watcher then goes)
        self._task: asyncio.Task[Any] | None = None   # the task running run(), under asyncio
        self._cancelling = 0
        self._started_at = 0.0

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
        self.plan.cancel()
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> Report:
        """Carry out the run; returns the report (also when ``cancel()`` stopped it).  If the
        task running it is cancelled, the report is still completed (``self.report``) before
        the cancellation propagates."""
        self._started_at = time.monotonic()
        self._task = current_asyncio_task()
        # a task may carry cancellations its code caught and never undid: count from here
        self._cancelling = self._task.cancelling() if self._task is not None else 0
        new_scope, new_event = type(anyio.CancelScope()), type(anyio.Event())
        loop = asyncio_loop()   # under asyncio anyio's clock is the loop's
        now = loop.time if loop is not None else anyio.current_time
        for host in self._hosts:
            host.new_scope, host.new_event, host.now = new_scope, new_event, now
        try:
            with anyio.CancelScope() as self._scope:
                if self.plan.cancelled:
                    self._scope.cancel()
                async with anyio.create_task_group() as outer:
                    outer.start_soon(self._bound_when_cancelled, name="aiovirt cancel grace")
                    async with anyio.create_task_group() as tg:
                        for host in self._hosts:
                            tg.start_soon(self._run_host, host, name=f"aiovirt host {host.uri}")
                    self._hosts_done = True
                    outer.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            self.plan.cancel()
            raise
        finally:
            self.plan.finish()
            self.report.seconds = time.monotonic() - self._started_at
        return self.report

    async def _bound_when_cancelled(self) -> None:
        """Wait for the run's cancellation, then give the calls out (shielded: they finish,
        so that the report knows what exists) ``CANCEL_GRACE`` seconds more.  The run's own
        connections lose their keepalive with it, which would have judged a daemon that
        stopped answering: without a bound such a call would wait for ever."""
        try:
            await anyio.sleep_forever()
        finally:
            if not self._hosts_done:
                deadline = anyio.current_time() + CANCEL_GRACE
                for host in self._hosts:
                    host.cancel_deadline = deadline
                    for scope in host.calls:
                        scope.deadline = min(scope.deadline, deadline)

    def _stopping(self) -> bool:
        """Whether the run is being cancelled, by ``cancel()`` or by its caller's
        cancellation (then the plan is told at once), read without a pass of the loop: the
        guests' tasks ask it between steps.  Under asyncio a cancelled caller shows in its
        task's ``cancelling()``; elsewhere only ``cancel()`` and the run's own scope do, and a
        caller's cancellation reaches the guests at their next wait."""
        if self.plan.cancelled:
            return True
        task = self._task
        if task is not None:
            if task.cancelling() <= self._cancelling:
                return False
        elif self._scope is None or not self._scope.cancel_called:
            return False
        self.plan.cancel()
        return True

    @property
    def on_change(self) -> Callable[[GuestResult], None] | None:
        """Called with a guest's result each time it moves on (settable before ``run``)."""
        return self._on_change

    @on_change.setter
    def on_change(self, callback: Callable[[GuestResult], None] | None) -> None:
        self._on_change = self.plan.on_change = callback   # the plan calls it directly

    def _feed(self, actions: Sequence[Action]) -> None:
        """Carry out the plan's launches (the task carrying a guest carries out its
        ``Start`` and ``RollBack``); once every guest has its outcome, let the hosts go."""
        for action in actions:
            if type(action) is Launch:
                host = self._hosts[action.host]
                host.ready.append(action)
                # The plan launches a guest only when one of its ``width`` slots is free:
                # at full width a task whose guest just ended takes it (see ``_work``).
                if host.workers < host.width:
                    assert host.tasks is not None
                    host.workers += 1
                    host.tasks.start_soon(self._work, host, name=f"aiovirt guests {host.uri}")
        progress = self.progress
        if progress.done == progress.total:   # ``plan.done``, read at every step
            for host in self._hosts:
                host.over.set()
                _wake(host.waiters)
                if host.events_scope is not None:
                    host.events_scope.cancel()

    def _then(self, actions: Sequence[Action], kind: type[Start] | type[RollBack]) -> bool:
        """Feed ``actions`` on, except the one of ``kind`` (for the calling guest's task):
        whether there was one."""
        found = False
        rest: list[Action] = []
        for action in actions:
            if type(action) is kind:
                found = True
            else:
                rest.append(action)
        self._feed(rest)
        return found

    # -- hosts ----------------------------------------------------------------------------------
    async def _run_host(self, host: _Host) -> None:
        """One host's life in the run: connect (unless given a connection), watch its events,
        learn what placement needs, then run its guests' tasks until the run is done."""
        # A daemon that accepts but never answers (stopped, hung) would hold the whole run
        # at placement: connecting is bounded (the scope encloses the connection's own
        # task group, so it is lifted, not left, once connected).
        connecting = anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout)
        with connecting:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    if host.conn is None:
                        host.conn = await stack.enter_async_context(connect(str(host.target)))
                except AiovirtError as exc:
                    self._unreachable(host, exc)
                    return
                connecting.deadline = math.inf
                await self._serve_host(host)
        if connecting.cancelled_caught:
            self._unreachable(host, ConnectionClosed(
                f"no answer to the handshake within {self.connect_timeout:g} s"))

    async def _serve_host(self, host: _Host) -> None:
        """Watch a connected host's events, learn it, then host its guests' tasks until it is
        lost or the run is done."""
        async with anyio.create_task_group() as tg:
            host.tasks = tg
            try:
                await tg.start(self._watch_events, host)
                facts = await self._learn(host)
            except AiovirtError as exc:
                self._unreachable(host, exc)
                tg.cancel_scope.cancel()
                return
            host.width = facts["concurrency"]
            self._feed(self.plan.host_ready(host.index, **facts))
            await host.over.wait()
            if host.events_scope is not None:
                host.events_scope.cancel()

    def _unreachable(self, host: _Host, exc: BaseException) -> None:
        host.conn = None
        self._fleet.absent(host.index)
        self._feed(self.plan.host_unreachable(host.index, f"{type(exc).__name__}: {exc}"))

    def _lose(self, host: _Host, error: BaseException) -> None:
        """A host's connection died: abandon what is out on it; the plan fails those guests
        and moves the ones waiting there."""
        if host.lost:
            return
        host.lost = True
        host.error = f"{type(error).__name__}: {error}"
        self._fleet.absent(host.index)
        _wake(host.waiters)
        host.waiters.clear()
        for scope in host.calls:     # calls still out there will never be answered
            scope.cancel()
        if host.events_scope is not None:
            host.events_scope.cancel()
        host.over.set()
        self._feed(self.plan.host_lost(host.index, host.error))

    async def _learn(self, host: _Host) -> dict[str, Any]:
        """Read what placement and composition need: capacity, existing names,
        capabilities; compose every spec for the host.  Returns the facts for the plan."""
        conn = host.conn
        assert conn is not None
        info = await conn.node_info()
        # the test driver's free memory is a fixed figure (in the wrong unit): take its
        # host's total memory instead
        free_kib = info.memory if conn.uri.driver == "test" else \
            await conn.free_memory() // 1024
        hostname = await conn.hostname()
        names = {d.name for d in await conn.list_domains()}
        host.caps = await conn.capabilities()
        if any(spec.migratable for spec in self.specs):
            await self._offer(host)
        concurrency = self.concurrency or conn.max_in_flight * (1 + conn.lanes)
        sizes: dict[int, Size | str] = {}
        for index, spec in enumerate(self.specs):
            composed = host.composed[index] = await self._compose(host, index, spec)
            sizes[index] = Size(composed.memory_kib, composed.vcpus) \
                if composed.text is not None else composed.error or "not composed"
        return {"free_kib": free_kib, "cpus": info.cpus, "names": names, "sizes": sizes,
                "concurrency": concurrency, "hostname": hostname}

    async def _watch_events(self, host: _Host, *,
                            task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                            ) -> None:
        """Route each STARTED event to the guest waiting for it (until the run is done)."""
        conn = host.conn
        assert conn is not None
        subscribed = False
        with anyio.CancelScope() as host.events_scope:
            try:
                # read at once, every one kept: a dropped STARTED would time out its guest;
                # the other lifecycle events are dropped undecoded as they arrive
                async with conn.domain_events(max_buffer=None,
                                              lifecycle=(DomainEventType.STARTED,)) as events:
                    subscribed = True
                    task_status.started()
                    async for event in events:
                        if isinstance(event, DomainLifecycleEvent) and \
                                event.event == DomainEventType.STARTED:
                            uuid = event.domain.uuid
                            if uuid in host.waiters:
                                waiter = host.waiters[uuid]
                                if isinstance(waiter, anyio.Event):
                                    waiter.set()
                                else:
                                    host.waiters[uuid] = True
            except AiovirtError as exc:
                if not subscribed:
                    raise          # reaches tg.start: the host is unreachable
                # the stream broke, or leaving it did (deregistering on a dying socket)
                if not self.plan.done:
                    self._lose(host, exc)
                return
            if not self.plan.done:
                self._lose(host, ConnectionClosed("its event stream ended"))

    def _template(self, spec: GuestSpec) -> etree._Element:
        """The spec's template with the placeholder name."""
        root = parse(spec.template, source="template")
        name = root.find("name")
        if name is None:
            name = etree.SubElement(root, "name")
        name.text = self._placeholder
        if self.library is None:
            self.library = Library.default()
        return root

    async def _compose(self, host: _Host, index: int, spec: GuestSpec) -> _Composed:
        """Compose ``spec`` for ``host``: a first pass says which machine the result is for,
        whose domain capabilities then feed the real pass (a migratable spec: the fleet's
        merged capabilities instead of the host's)."""
        root = self._template(spec)
        library = self.library
        try:
            if spec.migratable:
                fleet = await self._fleet_set(host, index)
                if isinstance(fleet, str):
                    return _Composed(None, error=fleet)
                caps: str | CapabilitySet | None = fleet
                domcaps = None
            else:
                first = compose(root, spec.profiles, params=spec.params, caps=host.caps,
                                library=library, validate=False, record=False)
                caps, domcaps = host.caps, await self._domcaps(host, first.tree)
            result = compose(root, spec.profiles, params=spec.params, caps=caps,
                             domcaps=domcaps, library=library,
                             address=spec.address if isinstance(spec.address, Tunables)
                             else bool(spec.address))
        except ConnectionClosed:
            raise                   # the host died while learnt: it is unreachable
        except (ComposeError, AiovirtError) as exc:
            return _Composed(None, error=f"{type(exc).__name__}: {exc}")
        tree = result.tree
        labels = dict(spec.labels)
        metadata_codec.write(tree, {"run": self.run_id, "spec": index, "labels": labels},
                             namespace=NAMESPACE, prefix="aiovirt-provision", name="guest")
        memory, vcpus = memory_and_vcpus(tree)
        return _Composed(to_string(tree), memory, vcpus)

    async def _offer(self, host: _Host) -> None:
        """Offer this host's capabilities for each migratable spec to the fleet (the domain
        capabilities for the machine a first pass on its own caps chooses), then wait until
        every host has offered or is out of the run."""
        offer: dict[int, HostCaps | str] = {}
        for index, spec in enumerate(self.specs):
            if not spec.migratable:
                continue
            try:
                first = compose(self._template(spec), spec.profiles, params=spec.params,
                                caps=host.caps, library=self.library, validate=False,
                                record=False)
                offer[index] = HostCaps.parse(self._fleet.names[host.index], host.caps,
                                              await self._domcaps(host, first.tree))
            except ConnectionClosed:
                raise
            except (ComposeError, AiovirtError) as exc:
                offer[index] = f"{type(exc).__name__}: {exc}"
        self._fleet.offer(host.index, offer)
        await self._fleet.ready.wait()

    async def _fleet_set(self, host: _Host, index: int) -> CapabilitySet | str:
        """Spec ``index``'s merged set of every host that offered, with libvirt's baseline
        CPU asked of ``host`` (else the offline one); made once.  A string: why none."""
        fleet = self._fleet
        async with fleet.lock:
            if index in fleet.sets:
                return fleet.sets[index]
            try:
                capset = merge(fleet.hosts(index)) if fleet.hosts(index) else \
                    fleet.why_none(index)
            except CapabilityError as exc:
                capset = f"migratable: {exc}"
            if isinstance(capset, CapabilitySet) and capset.cpu.model is not None:
                assert host.conn is not None
                try:
                    capset = await baseline(host.conn, capset)
                except ConnectionClosed:
                    raise
                except (LibvirtError, CapabilityError) as exc:
                    self.report.notes.append(f"spec {index}: libvirt's baseline CPU failed "
                                             f"on {host.uri} ({exc}); the offline one is used")
            if isinstance(capset, CapabilitySet):
                left_out = sum(1 for g in capset.gaps if not g.kept)
                self.report.notes.append(
                    f"spec {index} is migratable: composed against what all "
                    f"{len(capset.hosts)} hosts can do ({', '.join(capset.names)}); "
                    f"host-model CPU {capset.cpu.model or 'none'} ({capset.cpu.source}); "
                    f"{left_out} capabilities only some hosts have were left out")
            fleet.sets[index] = capset
            return capset

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

    # -- the guests -----------------------------------------------------------------------------
    async def _work(self, host: _Host) -> None:
        """Carry out the host's ready launches one after another until none is left: a task
        per guest would cost more client CPU than the guest's own calls."""
        try:
            while host.ready:
                await self._launch(host, host.ready.popleft())
        finally:
            host.workers -= 1

    async def _launch(self, host: _Host, launch: Launch) -> None:
        """Carry out one ``Launch``: replace the namesake if asked, define, and start when
        the plan says so, telling the plan each step."""
        conn = host.conn
        assert conn is not None
        g = launch.guest
        guest = self.guests[g]
        composed = host.composed[guest.spec]
        began = time.monotonic()
        dom: Domain | None = None
        try:
            if self._stopping():   # a cancelled run launches no more
                return
            if launch.replace and not await self._replace_existing(host, g):
                return
            self._feed(self.plan.defining(g))
            # define and start under one shield: the run's cancellation is read in between
            # (``_stopping``), so that a defined guest is not started once it is cancelled
            with _CallOn(host):
                dom = await conn.define_xml(composed.for_name(guest.name, self._placeholder))
                uuid = dom.uuid
                self._stopping()   # (a cancelled run tells the plan now: it starts nothing)
                if not self._then(self.plan.defined(g, uuid), Start):
                    return                      # (cancelled: it stays defined)
                host.waiters[uuid] = None
                self._feed(self.plan.starting(g))
                await dom.start()
            self._feed(self.plan.start_returned(g))
            started = host.waiters.get(uuid)
            if started is None:   # (often it came while start() was out: no wait)
                started = host.waiters[uuid] = host.new_event()
                with host.new_scope(deadline=host.now() + self.start_timeout):
                    await started.wait()
            host.waiters.pop(uuid, None)
            if host.lost:
                return                          # the plan failed it with its host
            if started is True or isinstance(started, anyio.Event) and started.is_set():
                self._feed(self.plan.started(g))
            else:
                await self._roll_back(host, dom, g,
                                      self.plan.timed_out(g, self.start_timeout))
        except ConnectionClosed as exc:
            self._lose(host, exc)
        except LibvirtError as exc:
            await self._roll_back(host, dom, g, self.plan.failed(g, str(exc)))
        except AiovirtError as exc:   # a protocol error: the reply was not understood
            self._feed(self.plan.failed(g, f"{type(exc).__name__}: {exc}", certain=False))
        finally:
            self.results[g].seconds = time.monotonic() - began

    async def _roll_back(self, host: _Host, dom: Domain | None, g: int,
                         actions: Sequence[Action]) -> None:
        """Undefine ``dom`` if the plan's ``actions`` say so, and tell the plan how it went."""
        if not self._then(actions, RollBack):
            return
        assert dom is not None
        try:
            with _CallOn(host):
                await undefine(dom)
        except ConnectionClosed as exc:
            self._lose(host, exc)
        except AiovirtError as exc:
            self._feed(self.plan.rolled_back(g, str(exc)))
        else:
            self._feed(self.plan.rolled_back(g))

    async def _replace_existing(self, host: _Host, g: int) -> bool:
        """Undefine the guest already called like guest ``g`` so that ours takes its place.
        Only a guest aiovirt made (it carries provisioning metadata) is replaced: for any
        other the plan fails the guest, and False is returned."""
        assert host.conn is not None
        with _CallOn(host):
            try:
                dom = await host.conn.lookup_domain(name=self.guests[g].name)
                try:
                    ours = isinstance(await dom.read_metadata(namespace=NAMESPACE), dict)
                except XMLInputError:
                    ours = False
                if not ours:
                    self._feed(self.plan.not_ours(g))
                    return False
                await undefine(dom)
            except NoSuchDomain:
                pass
        self._feed(self.plan.replaced(g))
        return True


def _wake(waiters: dict[str, anyio.Event | bool | None]) -> None:
    """Wake every guest waiting for its STARTED event (the run is over, or the host lost)."""
    for waiter in waiters.values():
        if isinstance(waiter, anyio.Event):
            waiter.set()


class _CallOn:
    """Shield a call from the run's cancellation (it finishes, so that the report knows
    what exists), but not from its host's loss: then it is abandoned at once and raises
    ``ConnectionClosed``, whatever the connection is still waiting for."""

    __slots__ = ("host", "scope")

    def __init__(self, host: _Host) -> None:
        self.host = host
        # one scope does both: shielded from the run's cancellation, still cancelled by
        # ``scope.cancel()`` (its host's loss)
        self.scope = host.new_scope(shield=True)

    def __enter__(self) -> None:
        host, scope = self.host, self.scope
        if host.cancel_deadline is not None:   # the run is cancelled: a bounded call
            scope.deadline = host.cancel_deadline
        scope.__enter__()
        host.calls.add(scope)
        if host.lost:
            scope.cancel()

    def __exit__(self, *exc_info: Any) -> bool:
        host, scope = self.host, self.scope
        host.calls.discard(scope)
        swallowed = bool(scope.__exit__(*exc_info))
        if scope.cancelled_caught:
            if not host.lost:   # the grace after the run's cancellation ran out
                raise ConnectionClosed(f"host {host.uri}: no answer within {CANCEL_GRACE:g} s "
                                       "after the run was cancelled (whether the call took "
                                       "effect is unknown)")
            raise ConnectionClosed(f"host {host.uri} was lost: {host.error}")
        return swallowed


async def provision(hosts: str | Connection | Sequence[str | Connection],
                    specs: GuestSpec | Sequence[GuestSpec], **options: Any) -> Report:
    """Compose, place, define and start the guests ``specs`` describe on ``hosts``; returns
    the report (see ``Provisioning`` for the options)."""
    return await Provisioning(hosts, specs, **options).run()
