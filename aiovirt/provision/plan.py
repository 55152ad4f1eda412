"""The decisions of a provisioning run, without I/O: a plan fed with facts returns actions.

``Plan`` owns what a run decides: placement, each host's capacity and queue, how many guests
are in progress per host, ``on_existing``, overcommit, rollback, host loss and re-placement,
cancellation and every guest's outcome (the ``Report``).  It never awaits, times or touches a
socket: the runner (``Provisioning``) tells it what happened (``host_ready``, ``defined``,
``started``, ``host_lost``...) and carries out the actions it gets back (``Launch``,
``Start``, ``RollBack``).  So every hard case is a plain unit test.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .placement import POLICIES, Capacity, choose
from .report import GuestResult, HostSummary, Progress, Report, Stage
from .spec import Guest, ProvisionError

__all__ = ["ON_EXISTING", "Action", "Launch", "Plan", "RollBack", "Size", "Start"]

ON_EXISTING = ("fail", "skip", "replace")


@dataclass(frozen=True)
class Size:
    """What one guest of a spec takes on a host, as composed for that host."""

    memory_kib: int
    vcpus: int = 1


@dataclass(frozen=True)
class Launch:
    """Define guest ``guest`` on host ``host`` (first undefining the namesake there when
    ``replace``); report ``defining``, then ``defined`` or a failure."""

    guest: int
    host: int
    replace: bool = False


@dataclass(frozen=True)
class Start:
    """Start the defined guest ``guest``; report ``starting``, ``start_returned``, then
    ``started``, ``timed_out`` or a failure."""

    guest: int


@dataclass(frozen=True)
class RollBack:
    """Undefine guest ``guest``, whose start failed; report ``rolled_back``."""

    guest: int


Action = Launch | Start | RollBack

_WAITING, _READY, _UNREACHABLE, _LOST = "waiting", "ready", "unreachable", "lost"


@dataclass
class _Host:
    """What the plan knows of one host."""

    summary: HostSummary
    state: str = _WAITING
    capacity: Capacity | None = None
    names: set[str] = field(default_factory=set)
    sizes: dict[int, Size | str] = field(default_factory=dict)
    concurrency: int = 1
    queue: deque[int] = field(default_factory=deque)
    running: set[int] = field(default_factory=set)      # launched, not yet final

    @property
    def usable(self) -> bool:
        return self.state == _READY


class Plan:
    """One run's decisions over ``guests`` and the hosts named ``hosts`` (by index).

    ``start[i]``: whether spec ``i``'s guests are started once defined.  ``overcommit``
    scales each host's free memory.  ``on_change`` is called with a guest's result each time
    it moves on.  Facts about guests already final are ignored, so late replies are harmless.
    """

    def __init__(self, guests: Sequence[Guest], hosts: Sequence[str], *,
                 start: Sequence[bool], placement: str = "capacity",
                 on_existing: str = "fail", rollback: bool = True, overcommit: float = 1.0,
                 run_id: str = "", on_change: Callable[[GuestResult], None] | None = None
                 ) -> None:
        if placement not in POLICIES:
            raise ProvisionError(f"unknown placement {placement!r} (known: "
                                 f"{', '.join(POLICIES)})")
        if on_existing not in ON_EXISTING:
            raise ProvisionError(f"on_existing={on_existing!r}: use one of "
                                 f"{', '.join(ON_EXISTING)}")
        if not overcommit > 0:
            raise ProvisionError(f"overcommit {overcommit!r}: give a ratio above 0")
        self.guests = list(guests)
        self.start = list(start)
        self.placement = placement
        self.on_existing = on_existing
        self.rollback = rollback
        self.overcommit = overcommit
        self.on_change = on_change
        self.results = [GuestResult(g.name, g.spec) for g in self.guests]
        self.progress = Progress(len(self.guests))
        self._hosts = [_Host(HostSummary(uri)) for uri in hosts]
        self.report = Report(run_id, self.results, [h.summary for h in self._hosts])
        self.cancelled = False
        self.placed = False
        self._host_of: dict[int, int] = {}          # guest -> host it is queued or runs on
        self._start_returned: set[int] = set()
        self._failing: dict[int, tuple[str, str]] = {}   # rolling back: where, why

    # -- questions --------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Every guest has its outcome."""
        return self.progress.done == self.progress.total

    def arrived(self, host: int) -> bool:
        """Whether ``host`` was reported ready, unreachable or lost."""
        return self._hosts[host].state != _WAITING

    def running(self, host: int) -> frozenset[int]:
        """The guests launched on ``host`` and not yet final."""
        return frozenset(self._hosts[host].running)

    def queued(self, host: int) -> tuple[int, ...]:
        """The guests placed on ``host`` that wait for a free slot there."""
        return tuple(self._hosts[host].queue)

    def capacity(self, host: int) -> Capacity | None:
        return self._hosts[host].capacity

    def host_of(self, guest: int) -> int | None:
        return self._host_of.get(guest)

    # -- facts about hosts --------------------------------------------------------------------
    def host_ready(self, host: int, *, free_kib: int, cpus: int, names: Iterable[str],
                   sizes: Mapping[int, Size | str], concurrency: int,
                   hostname: str | None = None) -> list[Action]:
        """``host`` is connected and learnt: its free memory, CPUs, existing domain names,
        each spec's size there (or why it did not compose) and its concurrency."""
        h = self._hosts[host]
        if h.state != _WAITING:
            return []
        if concurrency < 1:
            raise ProvisionError("concurrency must be at least 1")
        h.state = _READY
        h.capacity = Capacity(int(free_kib * self.overcommit), cpus)
        h.names = set(names)
        h.sizes = dict(sizes)
        h.concurrency = concurrency
        h.summary.free_memory_kib = free_kib
        h.summary.hostname = hostname
        h.summary.concurrency = concurrency
        return self._maybe_place()

    def host_unreachable(self, host: int, reason: str) -> list[Action]:
        """``host`` could not be connected to or learnt."""
        h = self._hosts[host]
        if h.state != _WAITING:
            return []
        h.state = _UNREACHABLE
        h.summary.state = "unreachable"
        h.summary.error = reason
        self.report.notes.append(f"host {h.summary.uri} is unreachable: {reason}")
        return self._maybe_place()

    def host_lost(self, host: int, reason: str) -> list[Action]:
        """``host``'s connection died: what was out there fails (its existence unknown if a
        define was out), what waited there moves to the other hosts."""
        h = self._hosts[host]
        if h.state == _WAITING:
            return self.host_unreachable(host, reason)
        if h.state != _READY:
            return []
        h.state = _LOST
        h.summary.state = "lost"
        h.summary.error = reason
        uri = h.summary.uri
        for guest in sorted(h.running):
            result = self.results[guest]
            if guest in self._failing:          # its rollback was out
                where, why = self._failing.pop(guest)
                self._fail(guest, where, f"{why}; rolling back failed too: host lost")
                continue
            if result.stage is Stage.DEFINING:
                result.exists = None            # the define may or may not have happened
            self._fail(guest, _step(result.stage), f"host {uri} lost: {reason}")
        moved = list(h.queue)
        h.queue.clear()
        if not moved:
            self.report.notes.append(f"host {uri} was lost: {reason}")
            return []
        actions: list[Action] = []
        targets: dict[str, int] = {}
        for guest in moved:
            self.results[guest].moved_from.append(uri)
            self._give_back(h, guest)
            del self._host_of[guest]
            if self.cancelled:
                continue                        # stays pending: cancelled at the end
            to = self._place(guest, actions)
            if to is not None:
                target = self._hosts[to].summary.uri
                targets[target] = targets.get(target, 0) + 1
        where = ", ".join(f"{n} to {t}" for t, n in targets.items()) or \
            "none could be placed elsewhere"
        self.report.notes.append(f"host {uri} was lost: {reason}; {len(moved)} guests not "
                                 f"yet launched there moved: {where}")
        return actions

    # -- facts about guests -------------------------------------------------------------------
    def replaced(self, guest: int) -> list[Action]:
        """The namesake of ``guest`` was undefined (or had gone) on its host."""
        if self._ignore(guest):
            return []
        self._hosts[self._host_of[guest]].names.discard(self.guests[guest].name)
        self.results[guest].replaced = True
        return []

    def not_ours(self, guest: int) -> list[Action]:
        """The namesake of ``guest`` carries no provisioning metadata: it is not replaced."""
        if self._ignore(guest):
            return []
        name, uri = self.guests[guest].name, self._uri(guest)
        return self._fail(guest, "define", f"a domain named {name!r} exists on {uri} and "
                          "aiovirt did not make it (no provisioning metadata): "
                          "on_existing='replace' replaces only aiovirt's guests")

    def defining(self, guest: int) -> list[Action]:
        """The define call for ``guest`` is going out."""
        if not self._ignore(guest):
            self._set(guest, Stage.DEFINING)
        return []

    def defined(self, guest: int, uuid: str) -> list[Action]:
        """``guest`` was defined with ``uuid``: start it, or it is done."""
        if self._ignore(guest):
            return []
        self.results[guest].uuid = uuid
        self._set(guest, Stage.DEFINED, False, True)
        if not self.start[self.guests[guest].spec] or self.cancelled:
            return self._set(guest, Stage.DEFINED, True)
        return [Start(guest)]

    def starting(self, guest: int) -> list[Action]:
        """The start call for ``guest`` is going out."""
        if not self._ignore(guest):
            self._set(guest, Stage.STARTING)
        return []

    def start_returned(self, guest: int) -> list[Action]:
        """The start call for ``guest`` returned; its STARTED event is awaited."""
        if not self._ignore(guest):
            self._start_returned.add(guest)
        return []

    def started(self, guest: int) -> list[Action]:
        """The STARTED event of ``guest`` arrived."""
        if self._ignore(guest):
            return []
        return self._set(guest, Stage.STARTED, True)

    def timed_out(self, guest: int, seconds: float) -> list[Action]:
        """No STARTED event for ``guest`` within ``seconds`` of its start call returning."""
        if self._ignore(guest):
            return []
        return self._start_failed(guest, "event", "its start call returned, but no STARTED "
                                  f"event came within {seconds:g} s")

    def failed(self, guest: int, why: str, *, certain: bool = True) -> list[Action]:
        """The call out for ``guest`` failed: ``certain`` when the daemon refused it (nothing
        happened), not when its reply was not understood (it may have happened)."""
        if self._ignore(guest):
            return []
        result = self.results[guest]
        if result.stage is Stage.STARTING:
            if certain:
                return self._start_failed(guest, "start", why)
            result.exists = True
        elif result.stage is Stage.DEFINING and not certain:
            result.exists = None
        return self._fail(guest, _step(result.stage), why)

    def rolled_back(self, guest: int, error: str | None = None) -> list[Action]:
        """The rollback of ``guest`` ended: undefined, or not because of ``error``."""
        if self._ignore(guest) or guest not in self._failing:
            return []
        where, why = self._failing.pop(guest)
        if error is not None:
            why += f"; rolling back failed too: {error}"
        else:
            self.results[guest].exists = False
            self.results[guest].rolled_back = True
        return self._fail(guest, where, why)

    # -- the run --------------------------------------------------------------------------------
    def cancel(self) -> list[Action]:
        """Launch and start nothing more; what is out may still report."""
        self.cancelled = True
        return []

    def finish(self) -> None:
        """The run is over: every guest gets its outcome.  Never launched: cancelled (but
        failed if its namesake was already replaced); defined and not started: defined;
        start call returned: started; anything else failed where it was (it may exist)."""
        for guest, result in enumerate(self.results):
            if result.final:
                continue
            if result.stage is Stage.PENDING and result.replaced:
                # its namesake is gone but it was never defined: say so, not "cancelled"
                result.exists = False
                self._fail(guest, "define", "the run ended after its namesake was replaced, "
                           "before it was defined")
            elif result.stage is Stage.PENDING:
                self._set(guest, Stage.CANCELLED, True)
            elif result.stage is Stage.DEFINED:
                self._set(guest, Stage.DEFINED, True)
            elif result.stage is Stage.STARTING and guest in self._start_returned \
                    and guest not in self._failing:
                self._set(guest, Stage.STARTED, True)
            else:
                if guest in self._failing:   # its rollback was out: it may still exist
                    where, why = self._failing.pop(guest)
                    result.exists = None
                    self._fail(guest, where, f"{why}; the run ended while rolling back")
                    continue
                if result.stage is Stage.DEFINING:   # the define was out: it may exist
                    result.exists = None
                self._fail(guest, _step(result.stage), "the run was cancelled here")
        for h in self._hosts:   # a host still being connected to when the run ended
            if h.state == _WAITING:
                h.state = _UNREACHABLE
                h.summary.state = "unreachable"
                h.summary.error = "the run ended while connecting to it"
        self.report.cancelled = self.cancelled

    # -- decisions ------------------------------------------------------------------------------
    def _maybe_place(self) -> list[Action]:
        """Once every host has arrived, place every guest (unless cancelled first)."""
        if self.placed or self.cancelled or any(h.state == _WAITING for h in self._hosts):
            return []
        self.placed = True
        actions: list[Action] = []
        if not any(h.usable for h in self._hosts):
            for guest in range(len(self.guests)):
                actions += self._fail(guest, "place", "no host could be reached")
            return actions
        for guest in range(len(self.guests)):
            if not self.results[guest].final:
                self._place(guest, actions)
        return actions

    def _place(self, guest: int, actions: list[Action]) -> int | None:
        """Choose a host for ``guest`` and queue it there (appending a ``Launch`` to
        ``actions`` if a slot is free); fail it when none fits.  Returns the host."""
        name = self.guests[guest].name
        spec = self.guests[guest].spec
        live = [i for i, h in enumerate(self._hosts) if h.state == _READY]   # (usable)
        if not live:
            actions += self._fail(guest, "place", "no host is left to take it")
            return None
        existing = next((i for i in live if name in self._hosts[i].names), None)
        if existing is not None:
            chosen = existing
            uri = self._hosts[chosen].summary.uri
            if self.on_existing == "skip":
                self.results[guest].host = uri
                actions += self._set(guest, Stage.SKIPPED, True, True)
                return None
            if self.on_existing == "fail":
                self.results[guest].host = uri
                actions += self._fail(guest, "define", f"a domain named {name!r} already "
                                      f"exists on {uri} (on_existing='fail')")
                return None
        else:
            size = None
            for i in live:
                size = self._hosts[i].sizes.get(spec)
                if type(size) is Size:
                    break
            else:
                size = None
            if size is None:
                errors = {s for i in live if isinstance(s := self._hosts[i].sizes.get(spec), str)
                          and s}
                actions += self._fail(guest, "compose", "; ".join(sorted(errors)) or
                                      "not composed")
                return None
            index = choose([h.capacity if h.state == _READY else None for h in self._hosts],
                           size.memory_kib, size.vcpus, self.placement)
            if index is None:
                free, most = max((h.capacity.free_kib, h.summary.uri) for h in self._hosts
                                 if h.usable and h.capacity is not None)
                actions += self._fail(guest, "place", f"no host has "
                                      f"{size.memory_kib // 1024} MiB free (most: {most}, "
                                      f"{free // 1024} MiB)")
                return None
            chosen = index
        h = self._hosts[chosen]
        self.results[guest].host = h.summary.uri
        mine = h.sizes.get(spec)
        if not isinstance(mine, Size):
            actions += self._fail(guest, "compose", mine or "not composed")
            return None
        assert h.capacity is not None
        h.capacity.take(mine.memory_kib, mine.vcpus)
        self._host_of[guest] = chosen
        h.queue.append(guest)
        actions += self._launch_next(chosen)
        return chosen

    def _launch_next(self, host: int) -> list[Action]:
        """Launch queued guests on ``host`` while it has free slots."""
        h = self._hosts[host]
        actions: list[Action] = []
        while h.queue and h.state == _READY and not self.cancelled and \
                len(h.running) < h.concurrency:
            guest = h.queue.popleft()
            h.running.add(guest)
            actions.append(Launch(guest, host, replace=self.guests[guest].name in h.names))
        return actions

    def _give_back(self, h: _Host, guest: int) -> None:
        size = h.sizes.get(self.guests[guest].spec)
        if h.capacity is not None and isinstance(size, Size):
            h.capacity.give_back(size.memory_kib, size.vcpus)

    def _start_failed(self, guest: int, where: str, why: str) -> list[Action]:
        self.results[guest].exists = True
        if self.rollback:
            self._failing[guest] = (where, why)
            return [RollBack(guest)]
        return self._fail(guest, where, why)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _ignore(self, guest: int) -> bool:
        """A fact about a guest that is final, or was never launched, changes nothing."""
        return self.results[guest].final or guest not in self._host_of or \
            guest not in self._hosts[self._host_of[guest]].running

    def _uri(self, guest: int) -> str:
        return self._hosts[self._host_of[guest]].summary.uri

    def _set(self, guest: int, stage: Stage, final: bool = False,
             exists: bool | None = None) -> list[Action]:
        """Move ``guest`` on; when final, free its slot and return the launches that
        follow.  (Called with positional arguments: on Python 3.11 keywords, or keyword-only
        parameters, take every call off the interpreter's quick path; four per guest.)"""
        result = self.results[guest]
        if result.final:
            return []
        self.progress.move(result.stage, stage, final)
        result.stage = stage
        result.final = final
        if exists is not None:
            result.exists = exists
        if self.on_change is not None:
            self.on_change(result)
        if not final or guest not in self._host_of:
            return []
        host = self._host_of[guest]
        self._hosts[host].running.discard(guest)
        return self._launch_next(host)

    def _fail(self, guest: int, where: str, why: str) -> list[Action]:
        result = self.results[guest]
        if result.final:
            return []
        result.error = why
        result.failed_at = where
        return self._set(guest, Stage.FAILED, True)


def _step(stage: Stage) -> str:
    """The step a guest at ``stage`` was taking (for ``GuestResult.failed_at``)."""
    return "start" if stage in (Stage.DEFINED, Stage.STARTING) else "define"
