"""Virtual networks: the ``Network`` handle and the connection's network methods."""

from __future__ import annotations

import uuid as _uuid

from ..errors import NoSuchNetwork
from .generated import NetworkGenerated, NetworkPortGenerated
from .handle import ApiBase, ApiConnection, UUIDHandle, uuid_bytes
from ..protocol.remote import NonnullNetwork, NonnullNetworkPort

__all__ = ["Network", "NetworkMethods", "NetworkPort"]


class Network(UUIDHandle, NetworkGenerated):
    """A handle on one virtual network; ``name`` and ``uuid`` are plain attributes."""

    __slots__ = ("name",)
    _ref: NonnullNetwork
    _repr_fields = ("name", "uuid")

    def __init__(self, conn: ApiConnection, ref: NonnullNetwork) -> None:
        super().__init__(conn, ref)
        self.name = ref.name

    async def start(self) -> None:
        """Start (activate) a defined network."""
        await self._conn.rpc.network_create(self._ref)

    async def stop(self) -> None:
        """Stop the network (libvirt's ``destroy``); its definition stays."""
        await self._conn.rpc.network_destroy(self._ref)

    destroy = stop

    async def undefine(self) -> None:
        """Delete the persistent definition (a running network becomes transient; the test
        driver refuses instead)."""
        await self._conn.rpc.network_undefine(self._ref)

    delete = undefine

    async def xml(self, flags: int = 0) -> str:
        """The network's XML (``VIR_NETWORK_XML_INACTIVE`` = 1 gives the persistent one)."""
        return (await self._conn.rpc.network_get_xml_desc(self._ref, flags)).xml

    async def is_active(self) -> bool:
        return bool((await self._conn.rpc.network_is_active(self._ref)).active)

    async def bridge_name(self) -> str:
        return (await self._conn.rpc.network_get_bridge_name(self._ref)).name

    async def autostart(self) -> bool:
        """Whether the daemon starts this network when it starts."""
        return bool((await self._conn.rpc.network_get_autostart(self._ref)).autostart)

    async def set_autostart(self, enabled: bool) -> None:
        if not isinstance(enabled, int):   # (a bool is an int; "x" raised int()'s error)
            raise TypeError(f"set_autostart takes True or False, not {enabled!r:.40}")
        await self._conn.rpc.network_set_autostart(self._ref, int(enabled))


class NetworkPort(UUIDHandle, NetworkPortGenerated):
    """A handle on one port of a virtual network: ``uuid`` and ``network`` (its
    ``Network``)."""

    __slots__ = ("network",)
    _ref: NonnullNetworkPort
    _repr_fields = ("uuid", "network")

    def __init__(self, conn: ApiConnection, ref: NonnullNetworkPort) -> None:
        super().__init__(conn, ref)
        self.network = Network(conn, ref.net)


class NetworkMethods(ApiBase):
    """The connection's network methods (mixed into ``Connection``)."""

    async def define_network(self, xml: str, flags: int = 0) -> Network:
        """Define a persistent network from its XML (it starts inactive).  Without flags this
        uses ``NETWORK_DEFINE_XML``, which daemons older than libvirt 7.7 also know."""
        if flags:
            return Network(self, (await self.rpc.network_define_xml_flags(xml, flags)).net)
        return Network(self, (await self.rpc.network_define_xml(xml)).net)

    async def create_network(self, xml: str, flags: int = 0) -> Network:
        """Create and start a transient network (the flags call only when flags are given,
        for daemons older than libvirt 7.8)."""
        if flags:
            return Network(self, (await self.rpc.network_create_xml_flags(xml, flags)).net)
        return Network(self, (await self.rpc.network_create_xml(xml)).net)

    async def lookup_network(self, *, name: str | None = None,
                             uuid: str | _uuid.UUID | None = None) -> Network:
        """Find a network by exactly one of ``name`` or ``uuid``."""
        if (name is None) == (uuid is None):
            raise TypeError("lookup_network takes exactly one of name= or uuid=")
        try:
            if name is not None:
                ref = (await self.rpc.network_lookup_by_name(name)).net
            else:
                ref = (await self.rpc.network_lookup_by_uuid(uuid_bytes(uuid))).net  # type: ignore[arg-type]
        except NoSuchNetwork as exc:
            what = f"name {name!r}" if name is not None else f"uuid {uuid}"
            raise exc.with_context(f"no network with {what}") from None
        return Network(self, ref)

    async def list_networks(self, flags: int = 0) -> list[Network]:
        """All networks (``VIR_CONNECT_LIST_NETWORKS_*`` flags filter them)."""
        ret = await self.rpc.connect_list_all_networks(1, flags)
        return [Network(self, ref) for ref in ret.nets]
