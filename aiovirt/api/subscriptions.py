"""The connection's methods that subscribe to the event families other than domains, and
the IDs and types those families use.

The typed events themselves (``aiovirt.api.events``: a frozen dataclass per kind) load when
the first subscription needs them, not with the client: making three dozen dataclasses is a
tenth of what importing the client costs.  ``domain_events`` lives with ``Domain``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from ..client.events import CLOSE_CALLBACK_ID, DEFAULT_MAX_BUFFER, EventSubscription
from ..errors import EncodeError
from .handle import ApiBase, enum_or_int, enum_value
from .network import Network
from .nodedev import NodeDevice
from .secret import Secret
from .storage import StoragePool

if TYPE_CHECKING:
    from .domain import Domain
    from .events import (ConnectionClosedEvent, NetworkLifecycleEvent,
                         NodeDeviceLifecycleEvent, NodeDeviceUpdateEvent, QemuMonitorEvent,
                         SecretLifecycleEvent, SecretValueChangedEvent,
                         StoragePoolLifecycleEvent, StoragePoolRefreshEvent)

__all__ = [
    "ConnectionCloseReason", "EventMethods", "NetworkEventID", "NetworkEventType",
    "NodeDeviceEventID", "NodeDeviceEventType", "SecretEventID", "SecretEventType",
    "StoragePoolEventID", "StoragePoolEventType", "domain_event_maker",
]


class NetworkEventID(IntEnum):
    """``VIR_NETWORK_EVENT_ID_*`` (this protocol carries lifecycle events only)."""

    LIFECYCLE = 0


class NetworkEventType(IntEnum):
    """``VIR_NETWORK_EVENT_*``."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    STOPPED = 3


class StoragePoolEventID(IntEnum):
    """``VIR_STORAGE_POOL_EVENT_ID_*``."""

    LIFECYCLE = 0
    REFRESH = 1


class StoragePoolEventType(IntEnum):
    """``VIR_STORAGE_POOL_EVENT_*``."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    STOPPED = 3
    CREATED = 4
    DELETED = 5


class NodeDeviceEventID(IntEnum):
    """``VIR_NODE_DEVICE_EVENT_ID_*``."""

    LIFECYCLE = 0
    UPDATE = 1


class NodeDeviceEventType(IntEnum):
    """``VIR_NODE_DEVICE_EVENT_*``."""

    CREATED = 0
    DELETED = 1
    DEFINED = 2
    UNDEFINED = 3


class SecretEventID(IntEnum):
    """``VIR_SECRET_EVENT_ID_*``."""

    LIFECYCLE = 0
    VALUE_CHANGED = 1


class SecretEventType(IntEnum):
    """``VIR_SECRET_EVENT_*``."""

    DEFINED = 0
    UNDEFINED = 1


class ConnectionCloseReason(IntEnum):
    """``VIR_CONNECT_CLOSE_REASON_*``."""

    ERROR = 0
    EOF = 1
    KEEPALIVE = 2
    CLIENT = 3


def domain_event_maker(event_id: int) -> Callable[[Any, Any, Any], Any]:
    """(domain, inner message, outer message) -> the typed event of ``event_id``: looked up
    once per subscription, not per event."""
    from .events import domain_event_types
    entry = domain_event_types().get(event_id)
    if entry is not None:
        return entry[1]
    from .domain import DomainEvent, DomainEventID
    kind = enum_or_int(DomainEventID, event_id)
    return lambda d, m, o: DomainEvent(d, kind, m)


_QEMU_MONITOR_EVENT_REGISTER_REGEX = 1
_QEMU_MONITOR_EVENT_REGISTER_NOCASE = 2


def _check_handle(method: str, name: str, value: object, kind: type) -> None:
    """``value`` is None or a ``kind`` handle; else an ``EncodeError`` naming it."""
    if value is not None and not isinstance(value, kind):
        raise EncodeError(f"{method}: {name} must be a {kind.__name__} (or None for all), "
                          f"not {value!r:.60}")


class EventMethods(ApiBase):
    """The subscribe methods for every family but domains (``domain_events`` is with
    ``Domain``).  Each takes ``max_buffer`` (see ``aiovirt.client.events``)."""

    def _object_events(self, family: str, event_id: int, handle: Any, key: Any,
                       register_any: Any, deregister_any: Any,
                       convert: Callable[[Any], Any],
                       max_buffer: int | None) -> EventSubscription[Any]:
        async def register() -> int:
            ret = await register_any(event_id, handle._ref if handle is not None else None)
            return ret.callbackID

        async def deregister(callback_id: int) -> None:
            await deregister_any(callback_id)

        return EventSubscription(self, family, (event_id, key), register,  # type: ignore[arg-type]
                                 deregister, convert, max_buffer=max_buffer)

    def network_events(self, network: Network | None = None, *,
                       max_buffer: int | None = DEFAULT_MAX_BUFFER
                       ) -> EventSubscription[NetworkLifecycleEvent]:
        """Network lifecycle events, of all networks or of ``network``."""
        _check_handle("network_events", "network", network, Network)
        from .events import NetworkLifecycleEvent

        def convert(m: Any) -> NetworkLifecycleEvent:
            return NetworkLifecycleEvent(Network(self, m.net),
                                         enum_or_int(NetworkEventType, m.event), m.detail)
        return self._object_events(
            "network", NetworkEventID.LIFECYCLE, network,
            network.uuid if network is not None else None,
            self.rpc.connect_network_event_register_any,
            self.rpc.connect_network_event_deregister_any, convert, max_buffer)

    def storage_pool_events(
            self, event_id: StoragePoolEventID | int = StoragePoolEventID.LIFECYCLE,
            pool: StoragePool | None = None, *, max_buffer: int | None = DEFAULT_MAX_BUFFER
    ) -> EventSubscription[StoragePoolLifecycleEvent | StoragePoolRefreshEvent]:
        """Storage pool lifecycle (or ``REFRESH``) events, of all pools or of ``pool``."""
        event_id = enum_value(StoragePoolEventID, event_id, "storage_pool_events: event_id")
        _check_handle("storage_pool_events", "pool", pool, StoragePool)
        from .events import StoragePoolLifecycleEvent, StoragePoolRefreshEvent

        def convert(m: Any) -> StoragePoolLifecycleEvent | StoragePoolRefreshEvent:
            if event_id == StoragePoolEventID.REFRESH:
                return StoragePoolRefreshEvent(StoragePool(self, m.pool))
            return StoragePoolLifecycleEvent(
                StoragePool(self, m.pool), enum_or_int(StoragePoolEventType, m.event), m.detail)
        return self._object_events(
            "storage_pool", event_id, pool, pool.uuid if pool is not None else None,
            self.rpc.connect_storage_pool_event_register_any,
            self.rpc.connect_storage_pool_event_deregister_any, convert, max_buffer)

    def node_device_events(
            self, event_id: NodeDeviceEventID | int = NodeDeviceEventID.LIFECYCLE,
            device: NodeDevice | None = None, *, max_buffer: int | None = DEFAULT_MAX_BUFFER
    ) -> EventSubscription[NodeDeviceLifecycleEvent | NodeDeviceUpdateEvent]:
        """Node device lifecycle (or ``UPDATE``) events, of all devices or of ``device``."""
        event_id = enum_value(NodeDeviceEventID, event_id, "node_device_events: event_id")
        _check_handle("node_device_events", "device", device, NodeDevice)
        from .events import NodeDeviceLifecycleEvent, NodeDeviceUpdateEvent

        def convert(m: Any) -> NodeDeviceLifecycleEvent | NodeDeviceUpdateEvent:
            if event_id == NodeDeviceEventID.UPDATE:
                return NodeDeviceUpdateEvent(NodeDevice(self, m.dev))
            return NodeDeviceLifecycleEvent(
                NodeDevice(self, m.dev), enum_or_int(NodeDeviceEventType, m.event), m.detail)
        return self._object_events(
            "node_device", event_id, device, device.name if device is not None else None,
            self.rpc.connect_node_device_event_register_any,
            self.rpc.connect_node_device_event_deregister_any, convert, max_buffer)

    def secret_events(
            self, event_id: SecretEventID | int = SecretEventID.LIFECYCLE,
            secret: Secret | None = None, *, max_buffer: int | None = DEFAULT_MAX_BUFFER
    ) -> EventSubscription[SecretLifecycleEvent | SecretValueChangedEvent]:
        """Secret lifecycle (or ``VALUE_CHANGED``) events, of all secrets or of ``secret``."""
        event_id = enum_value(SecretEventID, event_id, "secret_events: event_id")
        _check_handle("secret_events", "secret", secret, Secret)
        from .events import SecretLifecycleEvent, SecretValueChangedEvent

        def convert(m: Any) -> SecretLifecycleEvent | SecretValueChangedEvent:
            if event_id == SecretEventID.VALUE_CHANGED:
                return SecretValueChangedEvent(Secret(self, m.secret))
            return SecretLifecycleEvent(
                Secret(self, m.secret), enum_or_int(SecretEventType, m.event), m.detail)
        return self._object_events(
            "secret", event_id, secret, secret.uuid if secret is not None else None,
            self.rpc.connect_secret_event_register_any,
            self.rpc.connect_secret_event_deregister_any, convert, max_buffer)

    def qemu_monitor_events(self, domain: Domain | None = None, event: str | None = None, *,
                            regex: bool = False, nocase: bool = False,
                            max_buffer: int | None = DEFAULT_MAX_BUFFER
                            ) -> EventSubscription[QemuMonitorEvent]:
        """QMP events of QEMU domains (all, or ``domain``); ``event`` names the one event
        wanted (a regular expression with ``regex``, case-insensitive with ``nocase``)."""
        from .domain import Domain as _Domain   # domain.py imports this module
        from .events import QemuMonitorEvent
        flags = (_QEMU_MONITOR_EVENT_REGISTER_REGEX if regex else 0) | \
            (_QEMU_MONITOR_EVENT_REGISTER_NOCASE if nocase else 0)
        qemu_rpc = self.qemu_rpc  # type: ignore[attr-defined]

        async def register() -> int:
            ret = await qemu_rpc.connect_domain_monitor_event_register(
                domain._ref if domain is not None else None, event, flags)
            return ret.callbackID

        async def deregister(callback_id: int) -> None:
            await qemu_rpc.connect_domain_monitor_event_deregister(callback_id)

        def convert(m: Any) -> QemuMonitorEvent:
            return QemuMonitorEvent(_Domain(self, m.dom), m.event, m.seconds, m.micros,
                                    m.details)

        key = (domain.uuid if domain is not None else None, event, flags)
        return EventSubscription(self, "qemu_monitor", key, register,  # type: ignore[arg-type]
                                 deregister, convert, max_buffer=max_buffer)

    def connection_closed_events(self, *, max_buffer: int | None = DEFAULT_MAX_BUFFER
                                 ) -> EventSubscription[ConnectionClosedEvent]:
        """Why the connection closed: a ``ConnectionClosedEvent`` from the daemon (its
        driver's connection closed) or, when this client loses or closes the connection, a
        last one with the reason seen here; iteration then ends."""
        from .events import ConnectionClosedEvent
        async def register() -> int:
            await self.rpc.connect_register_close_callback()
            return CLOSE_CALLBACK_ID

        async def deregister(callback_id: int) -> None:
            await self.rpc.connect_unregister_close_callback()

        def convert(m: Any) -> ConnectionClosedEvent:
            return ConnectionClosedEvent(enum_or_int(ConnectionCloseReason, m.reason))

        def on_close() -> ConnectionClosedEvent:
            return ConnectionClosedEvent(self._close_reason())

        return EventSubscription(self, "connection_closed", (), register,  # type: ignore[arg-type]
                                 deregister, convert, max_buffer=max_buffer, on_close=on_close)

    def _close_reason(self) -> ConnectionCloseReason:
        """Why this client's connection ended: closed here, keepalive, EOF or an error."""
        if getattr(self, "_closed", False):
            return ConnectionCloseReason.CLIENT
        channels = getattr(self, "channels", [])
        text = str(channels[0].closed if channels else "")
        if "keepalive" in text:
            return ConnectionCloseReason.KEEPALIVE
        if "server closed the connection" in text:
            return ConnectionCloseReason.EOF
        return ConnectionCloseReason.ERROR
