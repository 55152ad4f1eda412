"""Which host takes which guest: by free capacity, spread evenly, or packed (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["POLICIES", "Capacity", "choose"]

POLICIES = ("capacity", "spread", "pack")


@dataclass
class Capacity:
    """What a host can still take: its free memory (KiB, as the daemon reported it at the
    start, less what this run placed there), its CPUs and the vCPUs this run placed."""

    free_kib: int
    cpus: int
    vcpus: int = 0
    guests: int = 0

    def fits(self, memory_kib: int) -> bool:
        return memory_kib <= self.free_kib

    def take(self, memory_kib: int, vcpus: int) -> None:
        self.free_kib -= memory_kib
        self.vcpus += vcpus
        self.guests += 1

    def give_back(self, memory_kib: int, vcpus: int) -> None:
        self.free_kib += memory_kib
        self.vcpus -= vcpus
        self.guests -= 1


def choose(hosts: Sequence[Capacity | None], memory_kib: int, vcpus: int,
           policy: str) -> int | None:
    """The index of the host for a guest of ``memory_kib`` and ``vcpus`` (None entries are
    hosts out of the running), or None when none has the memory free.

    ``capacity``: the most free memory, then the fewest vCPUs per CPU; ``spread``: the
    fewest guests from this run, then host order; ``pack``: the first host in order that
    fits.  The caller records the choice with ``Capacity.take``.
    """
    fitting = [(i, h) for i, h in enumerate(hosts)
               if h is not None and memory_kib <= h.free_kib]   # (h.fits, inline)
    if not fitting:
        return None
    if len(fitting) == 1 and policy in POLICIES:   # every policy picks the only one
        return fitting[0][0]
    if policy == "pack":
        return fitting[0][0]
    if policy == "spread":
        return min(fitting, key=lambda item: (item[1].guests, item[0]))[0]
    if policy == "capacity":
        return min(fitting, key=lambda item: (-item[1].free_kib,
                                              item[1].vcpus / max(item[1].cpus, 1),
                                              item[0]))[0]
    raise ValueError(f"unknown placement policy {policy!r} (known: {', '.join(POLICIES)})")
