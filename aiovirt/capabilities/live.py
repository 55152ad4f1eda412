"""The live half of capability sets: read hosts' capabilities over connections and ask
libvirt for the baseline CPU.  It takes any object with aiovirt's ``Connection`` methods and
imports nothing of the client, so the rest of the package stays offline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .capset import CapabilitySet, merge
from .cpu import cpu_definition
from .errors import CapabilityError
from .hosts import HostCaps

__all__ = ["BASELINE_MIGRATABLE", "baseline", "gather", "host_caps", "merge_live"]

BASELINE_MIGRATABLE = 2   # VIR_CONNECT_BASELINE_CPU_MIGRATABLE: leave out invtsc and kin


class CapsSource(Protocol):
    """What this module uses of a connection."""

    async def capabilities(self) -> str: ...

    async def domain_capabilities(self, *, emulator: str | None = None,
                                  arch: str | None = None, machine: str | None = None,
                                  virttype: str | None = None, flags: int = 0) -> str: ...

    async def baseline_hypervisor_cpu(self, emulator: str | None, arch: str | None,
                                      machine: str | None, virttype: str | None,
                                      xml_cpus: list[str], flags: int = 0) -> str: ...


async def host_caps(conn: CapsSource, name: str, *, emulator: str | None = None,
                    arch: str | None = None, machine: str | None = None,
                    virttype: str | None = None) -> HostCaps:
    """One host's capabilities and domain capabilities (for the given emulator, arch,
    machine and virt type), read over ``conn``."""
    return HostCaps.parse(name, await conn.capabilities(),
                          await conn.domain_capabilities(emulator=emulator, arch=arch,
                                                         machine=machine, virttype=virttype))


async def baseline(conn: CapsSource, capset: CapabilitySet, *,
                   flags: int = BASELINE_MIGRATABLE) -> CapabilitySet:
    """``capset`` with libvirt's own baseline of its hosts' host-model CPUs
    (``virConnectBaselineHypervisorCPU`` on ``conn``, for the set's emulator, arch, machine
    and virt type) as its host-model CPU.  It covers every host of the set, whatever its
    ``min_hosts``: libvirt's baseline has no K-of-N."""
    domcaps = capset.domcaps
    if domcaps is None:
        raise CapabilityError("a baseline CPU needs domain capabilities: the set has none")
    cpus = []
    for host in capset.hosts:
        assert host.domcaps is not None
        definition = cpu_definition(host.domcaps)
        if definition is None:
            raise CapabilityError(f"host {host.name!r} has no host-model CPU to baseline")
        cpus.append(definition)
    result = await conn.baseline_hypervisor_cpu(
        domcaps.findtext("path"), domcaps.findtext("arch"), domcaps.findtext("machine"),
        domcaps.findtext("domain"), cpus, flags)
    return capset.with_cpu(result, "libvirt",
                           f"libvirt's baseline of the host-model CPUs of all "
                           f"{len(cpus)} hosts")


async def gather(conns: Sequence[CapsSource], names: Sequence[str] | None = None,
                 **domcaps_args: str | None) -> list[HostCaps]:
    """Each connection's host capabilities, named by ``names`` (default host0, host1...)."""
    names = list(names) if names is not None else [f"host{i}" for i in range(len(conns))]
    if len(names) != len(conns):
        raise CapabilityError(f"{len(names)} names for {len(conns)} connections")
    return [await host_caps(c, n, **domcaps_args) for c, n in zip(conns, names)]


async def merge_live(conns: Sequence[CapsSource], min_hosts: int | None = None, *,
                     names: Sequence[str] | None = None,
                     **domcaps_args: str | None) -> CapabilitySet:
    """Merge what ``conns`` can do, with libvirt's baseline CPU (asked of the first)."""
    if not conns:
        raise CapabilityError("no connections to merge")
    capset = merge(await gather(conns, names, **domcaps_args), min_hosts)
    return await baseline(conns[0], capset)
