"""Teardown: stop and undefine the guests a run made, found by name pattern, by the run id
and labels in their metadata, or from a run's report.  Only guests carrying aiovirt's
provisioning metadata are touched unless the caller asks for others by name."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..api.connection import Connection, connect
from ..api.domain import Domain
from ..checks import check_count, check_number
from ..errors import AiovirtError, LibvirtError, NoSuchDomain
from .report import Report, Stage
from . import run as _run
from .run import NAMESPACE, undefine
from .spec import ProvisionError, excerpt

__all__ = ["FOREIGN", "Removal", "TeardownReport", "teardown"]

FOREIGN = "not made by aiovirt (no provisioning metadata)"


@dataclass
class Removal:
    """One guest: ``outcome`` is ``removed``, ``not found`` (already gone), ``skipped`` (left
    alone; ``reason`` says why) or ``failed`` (``error`` says why)."""

    name: str
    host: str
    outcome: str
    uuid: str | None = None
    error: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "host": self.host, "outcome": self.outcome,
                "uuid": self.uuid}
        if self.error is not None:
            data["error"] = self.error
        if self.reason is not None:
            data["reason"] = self.reason
        return data


@dataclass
class TeardownReport:
    removals: list[Removal] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)   # host -> why

    def counts(self) -> dict[str, int]:
        return dict(Counter(r.outcome for r in self.removals))

    @property
    def ok(self) -> bool:
        return not self.unreachable and all(r.outcome != "failed" for r in self.removals)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "counts": self.counts(), "unreachable": dict(self.unreachable),
                "guests": [r.to_dict() for r in self.removals]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _mismatch(value: Any, run: str | None, labels: Mapping[str, str]) -> str | None:
    """Why provisioning metadata ``value`` fails the run and label filters (None: it passes)."""
    if not isinstance(value, dict):
        return FOREIGN if value is None else "its provisioning metadata is not aiovirt's shape"
    if run is not None and value.get("run") != run:
        return f"not made by run {run} (its metadata names run {excerpt(value.get('run'))})"
    have = value.get("labels") or {}
    if not isinstance(have, dict) or any(have.get(k) != v for k, v in labels.items()):
        return "its labels do not match"
    return None


async def teardown(hosts: str | Connection | Sequence[str | Connection] | None = None, *,
                   names: str | Sequence[str] | None = None, run: str | None = None,
                   labels: Mapping[str, str] | None = None, report: Report | None = None,
                   include_foreign: bool = False, concurrency: int = 16,
                   on_change: Callable[[Removal], None] | None = None,
                   connect_timeout: float = 30.0) -> TeardownReport:
    """Destroy and undefine guests on ``hosts`` that match every filter given: ``names``
    (shell patterns, ``web-*``), ``run`` (a run id) and ``labels`` (as stored by
    ``provision``), or the guests ``report`` says exist (found by UUID or by name, and
    removed only when their metadata names the report's run).  ``hosts`` defaults to the
    report's hosts.  Asking for no filter at all is an error: this never removes every guest
    by accident.

    Only guests carrying aiovirt's provisioning metadata are removed: one a name pattern
    matches without it is reported ``skipped`` (``FOREIGN``), unless ``include_foreign``
    (name patterns only: run, labels and reports choose by that metadata).

    ``concurrency``: calls under way at once per host.  ``connect_timeout``: seconds a host
    given by URI may take to connect before it counts as unreachable.  A host the report
    names but ``hosts`` leaves out is reported unreachable: its guests stay, unhandled."""
    check_count("concurrency", concurrency, 1, 10_000, optional=False, error=ProvisionError)
    check_number("connect_timeout", connect_timeout, 0, math.inf, seconds=True,
                 optional=False, error=ProvisionError)
    if names is None and run is None and not labels and report is None:
        raise ProvisionError("teardown needs names, run, labels or a report to choose guests")
    if include_foreign and (run is not None or labels or report is not None):
        raise ProvisionError("include_foreign widens name patterns only: run, labels and "
                             "reports choose guests by aiovirt's metadata")
    patterns = [names] if isinstance(names, str) else list(names or [])
    wanted_labels = dict(labels or {})
    by_host: dict[str, list[tuple[str, str | None]]] = {}
    if report is not None:
        for result in report.results:
            if result.host and result.exists is not False and result.stage is not \
                    Stage.SKIPPED:
                by_host.setdefault(result.host, []).append((result.name, result.uuid))
        run = run if run is not None else report.run_id
    if hosts is None:
        if report is None:
            raise ProvisionError("teardown needs hosts (or a report naming them)")
        targets: list[str | Connection] = list(by_host)
    else:
        given = [hosts] if isinstance(hosts, (str, Connection)) else list(hosts)
        targets, seen = [], set()
        for target in given:   # a host given twice is visited once
            uri = target if isinstance(target, str) else target.uri.uri
            if uri not in seen:
                seen.add(uri)
                targets.append(target)
    out = TeardownReport()
    visited = {t if isinstance(t, str) else t.uri.uri for t in targets}
    for host in by_host:
        if host not in visited:
            out.unreachable[host] = ("the report's guests there were not handled: this host "
                                     "was not among the hosts given (give it as the report "
                                     "spells it)")
    gate = anyio.Semaphore(concurrency)
    # removals out (shielded: each finishes, so that the report is true); once the teardown
    # is cancelled they get run.CANCEL_GRACE seconds more (our connections' keepalive ends with it)
    shields: set[anyio.CancelScope] = set()
    grace: list[float] = []   # the deadline, once cancelled

    def record(removal: Removal) -> None:
        out.removals.append(removal)
        if on_change is not None:
            on_change(removal)

    async def remove(uri: str, dom: Domain) -> None:
        async with gate:
            shield = anyio.CancelScope(shield=True, deadline=grace[0] if grace else math.inf)
            shields.add(shield)
            try:
                with shield:
                    await undefine(dom)
                if shield.cancelled_caught:
                    record(Removal(dom.name, uri, "failed", dom.uuid,
                                   f"no answer within {_run.CANCEL_GRACE:g} s after the teardown "
                                   "was cancelled: whether it was removed is unknown"))
                    return
            except NoSuchDomain:
                record(Removal(dom.name, uri, "not found", dom.uuid))
            except (LibvirtError, AiovirtError) as exc:
                record(Removal(dom.name, uri, "failed", dom.uuid, str(exc)))
            else:
                record(Removal(dom.name, uri, "removed", dom.uuid))
            finally:
                shields.discard(shield)

    by_name_only = run is None and not wanted_labels

    async def may_go(uri: str, dom: Domain) -> bool:
        """Whether ``dom``'s metadata lets it go; says why not when the caller named it
        (by pattern alone, or in a report) rather than choosing by run or labels."""
        try:
            async with gate:
                value = await dom.read_metadata(namespace=NAMESPACE)
            why = _mismatch(value, run, wanted_labels)
        except NoSuchDomain:
            if report is not None:
                record(Removal(dom.name, uri, "not found", dom.uuid))
            return False
        except ValueError as exc:   # malformed XML or values in aiovirt's namespace
            why = f"its provisioning metadata is malformed: {exc}"
        except (LibvirtError, AiovirtError) as exc:   # never remove a guest blindly
            record(Removal(dom.name, uri, "failed", dom.uuid,
                           f"could not read its provisioning metadata: {exc}"))
            return False
        if why is not None and (report is not None or by_name_only):
            record(Removal(dom.name, uri, "skipped", dom.uuid, reason=why))
        return why is None

    async def on_host(target: str | Connection) -> None:
        async with contextlib.AsyncExitStack() as stack:   # a connection we open is ours
            await choose_and_remove(target, stack)

    async def choose_and_remove(target: str | Connection,
                                stack: contextlib.AsyncExitStack) -> None:
        uri = target if isinstance(target, str) else target.uri.uri
        try:
            conn = target if isinstance(target, Connection) else \
                await stack.enter_async_context(connect(target,
                                                        connect_timeout=connect_timeout))
            candidates = await conn.list_domains()
        except AiovirtError as exc:
            out.unreachable[uri] = f"{type(exc).__name__}: {exc}"
            return
        if report is not None:
            listed = by_host.get(uri, [])
            uuids = {u for _, u in listed if u}
            by_name = {n for n, u in listed if not u}
            found = [d for d in candidates if d.uuid in uuids or d.name in by_name]
            for name, uuid in listed:
                if not any(d.uuid == uuid or (not uuid and d.name == name) for d in found):
                    record(Removal(name, uri, "not found", uuid))
            candidates = found
        if patterns:
            candidates = [d for d in candidates
                          if any(fnmatch.fnmatchcase(d.name, p) for p in patterns)]
        if not include_foreign:   # every candidate's metadata decides
            verdicts: dict[str, bool] = {}

            async def check(dom: Domain) -> None:
                verdicts[dom.uuid] = await may_go(uri, dom)

            async with anyio.create_task_group() as tg:
                for dom in candidates:
                    tg.start_soon(check, dom)
            candidates = [d for d in candidates if verdicts.get(d.uuid)]
        async with anyio.create_task_group() as tg:
            for dom in candidates:
                tg.start_soon(remove, uri, dom)

    done = False

    async def bound_when_cancelled() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            if not done:
                grace.append(anyio.current_time() + _run.CANCEL_GRACE)
                for shield in shields:
                    shield.deadline = min(shield.deadline, grace[0])

    async with anyio.create_task_group() as outer:
        outer.start_soon(bound_when_cancelled, name="aiovirt cancel grace")
        async with anyio.create_task_group() as tg:
            for target in targets:
                tg.start_soon(on_host, target)
        done = True
        outer.cancel_scope.cancel()
    return out
