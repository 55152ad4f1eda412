"""The connection-level object API: host facts plus each object kind's methods."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import remote
from .domain import DomainMethods
from .subscriptions import EventMethods
from .generated import ConnectionGenerated
from .handle import ApiBase
from .network import NetworkMethods
from .nodedev import NodeDeviceMethods
from .secret import SecretMethods
from .storage import StorageMethods

__all__ = ["ConnectionObjects", "HostMethods", "NodeInfo"]

# the host getters send with ``start`` (no ``conn.rpc`` coroutine in between: these are
# the calls agents poll)
_P = remote.PROCEDURES
_LIB_VERSION = _P[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION]
_VERSION = _P[remote.REMOTE_PROC_CONNECT_GET_VERSION]
_HOSTNAME = _P[remote.REMOTE_PROC_CONNECT_GET_HOSTNAME]
_NODE_INFO = _P[remote.REMOTE_PROC_NODE_GET_INFO]
_FREE_MEMORY = _P[remote.REMOTE_PROC_NODE_GET_FREE_MEMORY]
_CAPABILITIES = _P[remote.REMOTE_PROC_CONNECT_GET_CAPABILITIES]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """``virNodeGetInfo``: the host's CPU model, memory (KiB), CPUs and their layout."""

    model: str
    memory: int
    cpus: int
    mhz: int
    nodes: int
    sockets: int
    cores: int
    threads: int


class HostMethods(ApiBase):
    """Facts about the daemon and its host."""

    async def get_lib_version(self) -> int:
        """libvirt's version on the daemon as major * 1,000,000 + minor * 1,000 + micro."""
        return (await self.start(_LIB_VERSION)).lib_ver

    async def get_version(self) -> int:
        """The hypervisor's version, encoded like ``get_lib_version``."""
        return (await self.start(_VERSION)).hv_ver

    async def hostname(self) -> str:
        return (await self.start(_HOSTNAME)).hostname

    async def node_info(self) -> NodeInfo:
        ret = await self.start(_NODE_INFO)
        model = bytes(ret.model).split(b"\0", 1)[0].decode(errors="replace")
        return NodeInfo(model, ret.memory, ret.cpus, ret.mhz, ret.nodes, ret.sockets,
                        ret.cores, ret.threads)

    async def free_memory(self) -> int:
        """The host's free memory, in bytes."""
        return (await self.start(_FREE_MEMORY)).freeMem

    async def capabilities(self) -> str:
        """The host capabilities XML."""
        return (await self.start(_CAPABILITIES)).capabilities

    async def domain_capabilities(self, *, emulator: str | None = None,
                                  arch: str | None = None, machine: str | None = None,
                                  virttype: str | None = None, flags: int = 0) -> str:
        """The domain capabilities XML for an emulator/arch/machine/virt type."""
        return (await self.rpc.connect_get_domain_capabilities(
            emulator, arch, machine, virttype, flags)).capabilities


class ConnectionObjects(HostMethods, DomainMethods, NetworkMethods, StorageMethods,
                        NodeDeviceMethods, SecretMethods, EventMethods, ConnectionGenerated):
    """Everything ``Connection`` offers above raw ``rpc`` calls: the hand-written methods
    first, then one generated method per remote libvirt function (aiovirt/api/generated.py)."""
