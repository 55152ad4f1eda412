"""What a provisioning run did: an outcome per guest, the hosts' fates, and what exists."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .spec import ProvisionError

__all__ = ["GuestResult", "HostSummary", "Outcome", "Progress", "Report", "Stage"]


class Stage(StrEnum):
    """Where a guest is now; the last four are final outcomes, with ``defined`` and
    ``started`` (a guest that stops at definition is final too)."""

    PENDING = "pending"        # waiting for a host's worker
    DEFINING = "defining"
    DEFINED = "defined"
    STARTING = "starting"      # the start call is out, or its STARTED event awaited
    STARTED = "started"
    FAILED = "failed"
    SKIPPED = "skipped"        # it existed already and on_existing="skip"
    CANCELLED = "cancelled"    # never launched: the run was cancelled first


Outcome = Stage   # the final stages: started, defined, failed, skipped, cancelled


@dataclass
class GuestResult:
    """One guest: where it went, how far it got, and whether it exists now.

    ``exists`` is True, False, or None when it cannot be known (its host was lost while a
    call for it was out).  ``error`` says why a guest failed (``stage`` where: compose,
    place, define, start, event...).  ``moved_from`` lists hosts it was taken off when they
    were lost before it was launched there.
    """

    name: str
    spec: int
    host: str | None = None
    stage: Stage = Stage.PENDING
    final: bool = False
    uuid: str | None = None
    exists: bool | None = False
    error: str | None = None
    failed_at: str | None = None
    rolled_back: bool = False
    replaced: bool = False
    moved_from: list[str] = field(default_factory=list)
    seconds: float | None = None

    @property
    def outcome(self) -> Stage | None:
        """The final stage, or None while the guest is still on its way."""
        return self.stage if self.final else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "spec": self.spec, "host": self.host,
                                "outcome": str(self.stage) if self.final else None,
                                "stage": str(self.stage), "exists": self.exists,
                                "uuid": self.uuid}
        if self.error is not None:
            data["error"] = self.error
            data["failed_at"] = self.failed_at
        if self.rolled_back:
            data["rolled_back"] = True
        if self.replaced:
            data["replaced"] = True
        if self.moved_from:
            data["moved_from"] = list(self.moved_from)
        if self.seconds is not None:
            data["seconds"] = round(self.seconds, 4)
        return data


@dataclass
class HostSummary:
    """One host of the run: ``state`` is ``ok``, ``unreachable`` (never connected) or
    ``lost`` (its connection died during the run); ``error`` says why."""

    uri: str
    state: str = "ok"
    error: str | None = None
    hostname: str | None = None
    concurrency: int = 0
    free_memory_kib: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"uri": self.uri, "state": self.state, "hostname": self.hostname,
                "concurrency": self.concurrency, "free_memory_kib": self.free_memory_kib}
        if self.error is not None:
            data["error"] = self.error
        return data


class Progress:
    """Live counts: guests per stage, and how many are done (have their outcome)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.counts: Counter[Stage] = Counter({Stage.PENDING: total})

    def move(self, old: Stage, new: Stage, final: bool) -> None:
        self.counts[old] -= 1
        self.counts[new] += 1
        self.done += final

    def to_dict(self) -> dict[str, int]:
        data = {str(stage): self.counts[stage] for stage in Stage if self.counts[stage]}
        data["total"] = self.total
        data["done"] = self.done
        return data


@dataclass
class Report:
    """The account of a run: every guest's result, every host's fate, and notes on what the
    run had to do on its own (guests moved off a lost host...)."""

    run_id: str
    results: list[GuestResult]
    hosts: list[HostSummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """How many guests ended in each outcome (``pending`` etc. while running)."""
        return dict(Counter(str(r.stage) for r in self.results))

    @property
    def ok(self) -> bool:
        """Every guest reached what was asked (started, or defined with start=False), or was
        skipped as existing; nothing failed or was cancelled."""
        return all(r.final and r.stage not in (Stage.FAILED, Stage.CANCELLED)
                   for r in self.results)

    def failed(self) -> list[GuestResult]:
        return [r for r in self.results if r.stage is Stage.FAILED]

    def existing(self) -> list[GuestResult]:
        """Guests that exist because of this run (or may: ``exists`` unknown)."""
        return [r for r in self.results if r.exists is not False and r.stage is not
                Stage.SKIPPED]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "ok": self.ok, "cancelled": self.cancelled,
                "seconds": round(self.seconds, 3), "counts": self.counts(),
                "hosts": [h.to_dict() for h in self.hosts], "notes": list(self.notes),
                "guests": [r.to_dict() for r in self.results]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """A report read back (e.g. for ``teardown(report=...)``); a field of the wrong shape
        is a ``ProvisionError`` naming it (``guests[3].host: ...``)."""
        data = _shaped(data, dict, "the report", "an object")
        results = []
        for i, g in enumerate(_shaped(data.get("guests", []), list, "guests", "a list")):
            where = f"guests[{i}]"
            g = _shaped(g, dict, where, "an object")
            try:
                stage = Stage(g.get("stage", "pending"))
            except ValueError:
                raise ProvisionError(f"{where}.stage: {g.get('stage')!r:.60} is not a stage "
                                     f"({', '.join(s.value for s in Stage)})") from None
            results.append(GuestResult(
                name=_shaped(g.get("name"), str, f"{where}.name", "a string"),
                spec=_shaped(g.get("spec", 0), int, f"{where}.spec", "an integer"),
                host=_shaped(g.get("host"), str | None, f"{where}.host", "a string or null"),
                stage=stage, final=g.get("outcome") is not None,
                uuid=_shaped(g.get("uuid"), str | None, f"{where}.uuid", "a string or null"),
                exists=_shaped(g.get("exists", False), bool | None, f"{where}.exists",
                               "true, false or null"),
                error=_shaped(g.get("error"), str | None, f"{where}.error", "a string or null"),
                failed_at=g.get("failed_at"), rolled_back=bool(g.get("rolled_back", False)),
                replaced=bool(g.get("replaced", False)),
                moved_from=list(_shaped(g.get("moved_from", []), list, f"{where}.moved_from",
                                        "a list")),
                seconds=g.get("seconds")))
        hosts = []
        for i, h in enumerate(_shaped(data.get("hosts", []), list, "hosts", "a list")):
            h = _shaped(h, dict, f"hosts[{i}]", "an object")
            hosts.append(HostSummary(_shaped(h.get("uri"), str, f"hosts[{i}].uri", "a string"),
                                     h.get("state", "ok"), h.get("error"), h.get("hostname"),
                                     h.get("concurrency", 0), h.get("free_memory_kib")))
        return cls(_shaped(data.get("run_id", ""), str, "run_id", "a string"), results, hosts,
                   list(_shaped(data.get("notes", []), list, "notes", "a list")),
                   bool(data.get("cancelled", False)), float(data.get("seconds", 0.0)))


def _shaped(value: Any, kind: Any, where: str, expected: str) -> Any:
    """``value`` if it is of ``kind`` (a bool is no integer here), else a ``ProvisionError``
    naming ``where``."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProvisionError(f"{where}: expected {expected}, not {value!r:.60}")
    return value
