"""Host devices: the ``NodeDevice`` handle and the connection's node-device methods."""

from __future__ import annotations

from ..errors import NoSuchNodeDevice
from .generated import NodeDeviceGenerated
from .handle import ApiBase, ApiConnection, Handle
from ..protocol.remote import NonnullNodeDevice

__all__ = ["NodeDevice", "NodeDeviceMethods"]


class NodeDevice(Handle, NodeDeviceGenerated):
    """A handle on one host device (PCI, USB, mediated, ...); ``name`` is its libvirt name."""

    __slots__ = ("name",)
    _ref: NonnullNodeDevice
    _repr_fields = ("name",)

    def __init__(self, conn: ApiConnection, ref: NonnullNodeDevice) -> None:
        super().__init__(conn, ref)
        self.name = ref.name

    def _key(self) -> str:
        return self._ref.name

    async def xml(self, flags: int = 0) -> str:
        """The device's XML (name, parent, driver and capabilities)."""
        return (await self._conn.rpc.node_device_get_xml_desc(self.name, flags)).xml

    async def parent(self) -> str | None:
        """The parent device's name (None for the root)."""
        return (await self._conn.rpc.node_device_get_parent(self.name)).parentName

    async def capabilities(self) -> list[str]:
        """Capability names such as ``pci``, ``net``, ``scsi_host``."""
        count = (await self._conn.rpc.node_device_num_of_caps(self.name)).num
        return (await self._conn.rpc.node_device_list_caps(self.name, count)).names

    async def start(self, flags: int = 0) -> None:
        """Start a defined (persistent, inactive) device."""
        await self._conn.rpc.node_device_create(self.name, flags)

    async def stop(self) -> None:
        """Stop the device (libvirt's ``destroy``): removes a created mediated/vHBA device."""
        await self._conn.rpc.node_device_destroy(self.name)

    destroy = stop

    async def undefine(self, flags: int = 0) -> None:
        """Delete a persistent device's definition (mediated devices)."""
        await self._conn.rpc.node_device_undefine(self.name, flags)

    async def is_active(self) -> bool:
        return bool((await self._conn.rpc.node_device_is_active(self.name)).active)


class NodeDeviceMethods(ApiBase):
    """The connection's node-device methods (mixed into ``Connection``)."""

    async def list_node_devices(self, flags: int = 0) -> list[NodeDevice]:
        """All host devices (``VIR_CONNECT_LIST_NODE_DEVICES_*`` flags filter them)."""
        ret = await self.rpc.connect_list_all_node_devices(1, flags)
        return [NodeDevice(self, ref) for ref in ret.devices]

    async def lookup_node_device(self, name: str) -> NodeDevice:
        """The device called ``name`` (such as ``pci_0000_00_02_0``)."""
        try:
            return NodeDevice(self, (await self.rpc.node_device_lookup_by_name(name)).dev)
        except NoSuchNodeDevice as exc:
            raise exc.with_context(f"no node device named {name!r}") from None

    async def create_node_device(self, xml: str, flags: int = 0) -> NodeDevice:
        """Create a transient device (a vHBA or mediated device) from its XML."""
        return NodeDevice(self, (await self.rpc.node_device_create_xml(xml, flags)).dev)

    async def define_node_device(self, xml: str, flags: int = 0) -> NodeDevice:
        """Define a persistent device (mediated devices) from its XML."""
        return NodeDevice(self, (await self.rpc.node_device_define_xml(xml, flags)).dev)
