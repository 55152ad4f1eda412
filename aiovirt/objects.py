"""The connection-level object API: host facts plus each object kind's methods."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .domain import DomainMethods

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["ConnectionObjects"]


class HostMethods:
    """Facts about the daemon and its host."""

    async def get_lib_version(self: Connection) -> int:
        """libvirt's version on the daemon as major * 1,000,000 + minor * 1,000 + micro."""
        return (await self.rpc.connect_get_lib_version()).lib_ver

    async def get_version(self: Connection) -> int:
        """The hypervisor's version, encoded like ``get_lib_version``."""
        return (await self.rpc.connect_get_version()).hv_ver

    async def hostname(self: Connection) -> str:
        return (await self.rpc.connect_get_hostname()).hostname

    async def capabilities(self: Connection) -> str:
        """The host capabilities XML."""
        return (await self.rpc.connect_get_capabilities()).capabilities

    async def domain_capabilities(self: Connection, *, emulator: str | None = None,
                                  arch: str | None = None, machine: str | None = None,
                                  virttype: str | None = None, flags: int = 0) -> str:
        """The domain capabilities XML for an emulator/arch/machine/virt type."""
        return (await self.rpc.connect_get_domain_capabilities(
            emulator, arch, machine, virttype, flags)).capabilities


class ConnectionObjects(HostMethods, DomainMethods):
    """Everything ``Connection`` offers above raw ``rpc`` calls."""
