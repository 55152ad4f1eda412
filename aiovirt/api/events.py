"""Typed events of every family, and the connection's methods that subscribe to them.

Each domain event ID has its own frozen dataclass (``domain_event_types()``); networks,
storage pools, node devices and secrets have lifecycle events plus their second kind (pool
refresh, node device update, secret value change); QEMU monitor events and the
connection-closed event complete the set.  Iterators also yield the ``Dropped`` and ``Resync``
markers of ``aiovirt.client.events``.  ``domain_events`` and the lifecycle types
(``DomainLifecycleEvent``, ``DomainEventType``, ``DomainEventID``, ``DomainEvent``) live with
``Domain`` in api/domain.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from ..client.events import (CLOSE_CALLBACK_ID, DEFAULT_MAX_BUFFER, Dropped, EventSubscription,
                             Resync)
from ..errors import EncodeError
from .handle import ApiBase, enum_or_int, enum_value
from .network import Network
from .nodedev import NodeDevice
from .secret import Secret
from .storage import StoragePool
from .typedparams import to_dict

if TYPE_CHECKING:
    from .domain import Domain

__all__ = [
    "ConnectionCloseReason", "ConnectionClosedEvent", "DomainAgentLifecycleEvent",
    "DomainBalloonChangeEvent", "DomainBlockJobEvent",
    "DomainBlockThresholdEvent", "DomainControlErrorEvent", "DomainDeviceAddedEvent",
    "DomainDeviceRemovalFailedEvent", "DomainDeviceRemovedEvent", "DomainDiskChangeEvent",
    "DomainGraphicsEvent", "DomainIOErrorEvent", "DomainJobCompletedEvent",
    "DomainMemoryDeviceSizeChangeEvent", "DomainMemoryFailureEvent",
    "DomainMetadataChangeEvent", "DomainMigrationIterationEvent", "DomainPMSuspendEvent",
    "DomainPMWakeupEvent", "DomainRTCChangeEvent", "DomainRebootEvent", "DomainTrayChangeEvent",
    "DomainTunableEvent", "DomainWatchdogEvent", "Dropped", "EventMethods", "GraphicsAddress",
    "NetworkEventID", "NetworkEventType", "NetworkLifecycleEvent", "NodeDeviceEventID",
    "NodeDeviceEventType", "NodeDeviceLifecycleEvent", "NodeDeviceUpdateEvent",
    "QemuMonitorEvent", "Resync", "SecretEventID", "SecretEventType", "SecretLifecycleEvent",
    "SecretValueChangedEvent", "StoragePoolEventID", "StoragePoolEventType",
    "StoragePoolLifecycleEvent", "StoragePoolRefreshEvent", "convert_domain_event",
    "domain_event_types",
]


# -- domains --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DomainRebootEvent:
    """The guest rebooted."""

    domain: Domain


@dataclass(frozen=True, slots=True)
class DomainRTCChangeEvent:
    """The guest changed its RTC: ``offset`` seconds from the host's UTC."""

    domain: Domain
    offset: int


@dataclass(frozen=True, slots=True)
class DomainWatchdogEvent:
    """The guest's watchdog fired (``VIR_DOMAIN_EVENT_WATCHDOG_*`` action)."""

    domain: Domain
    action: int


@dataclass(frozen=True, slots=True)
class DomainIOErrorEvent:
    """A disk I/O error (IO_ERROR and IO_ERROR_REASON; ``reason`` None for the former)."""

    domain: Domain
    src_path: str
    dev_alias: str
    action: int
    reason: str | None


@dataclass(frozen=True, slots=True)
class GraphicsAddress:
    """One end of a graphics connection: address ``family`` (0 IPv4, 1 IPv6, 2 UNIX)."""

    family: int
    node: str
    service: str


@dataclass(frozen=True, slots=True)
class DomainGraphicsEvent:
    """A graphics client connected, authenticated or disconnected (``phase``)."""

    domain: Domain
    phase: int
    local: GraphicsAddress
    remote: GraphicsAddress
    auth_scheme: str
    subject: tuple[tuple[str, str], ...]   # (type, name) pairs


@dataclass(frozen=True, slots=True)
class DomainControlErrorEvent:
    """libvirt lost control of the domain (e.g. its monitor)."""

    domain: Domain


@dataclass(frozen=True, slots=True)
class DomainBlockJobEvent:
    """A block job changed state; ``disk`` is the path (BLOCK_JOB) or target (BLOCK_JOB_2)."""

    domain: Domain
    disk: str
    type: int
    status: int


@dataclass(frozen=True, slots=True)
class DomainDiskChangeEvent:
    """A disk's media changed (or went missing)."""

    domain: Domain
    old_src_path: str | None
    new_src_path: str | None
    dev_alias: str
    reason: int


@dataclass(frozen=True, slots=True)
class DomainTrayChangeEvent:
    """A removable device's tray opened or closed (``reason``)."""

    domain: Domain
    dev_alias: str
    reason: int


@dataclass(frozen=True, slots=True)
class DomainPMWakeupEvent:
    """The guest woke from a PM suspend."""

    domain: Domain
    reason: int


@dataclass(frozen=True, slots=True)
class DomainPMSuspendEvent:
    """The guest suspended to memory, or to disk when ``to_disk`` (PMSUSPEND_DISK)."""

    domain: Domain
    reason: int
    to_disk: bool


@dataclass(frozen=True, slots=True)
class DomainBalloonChangeEvent:
    """The balloon changed: ``actual`` KiB now."""

    domain: Domain
    actual: int


@dataclass(frozen=True, slots=True)
class DomainDeviceRemovedEvent:
    """A device was unplugged from the guest."""

    domain: Domain
    dev_alias: str


@dataclass(frozen=True, slots=True)
class DomainDeviceAddedEvent:
    """A device was plugged into the guest."""

    domain: Domain
    dev_alias: str


@dataclass(frozen=True, slots=True)
class DomainDeviceRemovalFailedEvent:
    """The guest refused to unplug a device."""

    domain: Domain
    dev_alias: str


@dataclass(frozen=True, slots=True)
class DomainTunableEvent:
    """Tunables changed: the typed parameters as a dict."""

    domain: Domain
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DomainAgentLifecycleEvent:
    """The guest agent connected or disconnected (``state``, ``reason``)."""

    domain: Domain
    state: int
    reason: int


@dataclass(frozen=True, slots=True)
class DomainMigrationIterationEvent:
    """A pre-copy migration pass began."""

    domain: Domain
    iteration: int


@dataclass(frozen=True, slots=True)
class DomainJobCompletedEvent:
    """A job finished: its statistics (typed parameters) as a dict."""

    domain: Domain
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DomainMetadataChangeEvent:
    """Metadata changed: ``type`` is a ``MetadataType`` value, ``nsuri`` the element's."""

    domain: Domain
    type: int
    nsuri: str | None


@dataclass(frozen=True, slots=True)
class DomainBlockThresholdEvent:
    """A disk's write threshold was crossed by ``excess`` bytes."""

    domain: Domain
    dev: str
    path: str | None
    threshold: int
    excess: int


@dataclass(frozen=True, slots=True)
class DomainMemoryFailureEvent:
    """A hardware memory error hit the guest (recipient, action, flags)."""

    domain: Domain
    recipient: int
    action: int
    flags: int


@dataclass(frozen=True, slots=True)
class DomainMemoryDeviceSizeChangeEvent:
    """A memory device (virtio-mem) changed size: ``size`` KiB."""

    domain: Domain
    alias: str
    size: int


def _graphics(d: Domain, m: Any) -> DomainGraphicsEvent:
    return DomainGraphicsEvent(
        d, m.phase, GraphicsAddress(m.local.family, m.local.node, m.local.service),
        GraphicsAddress(m.remote.family, m.remote.node, m.remote.service), m.authScheme,
        tuple((s.type, s.name) for s in m.subject))


@functools.cache
def domain_event_types() -> dict[int, tuple[type, Callable[[Any, Any, Any], Any]]]:
    """Event id -> (its dataclass, (domain, inner message, outer message) -> the event)."""
    from .domain import DomainEventID as _E   # domain.py imports this module
    from .domain import DomainEventType, DomainLifecycleEvent
    return {
        _E.LIFECYCLE: (DomainLifecycleEvent, lambda d, m, o: DomainLifecycleEvent(
            d, enum_or_int(DomainEventType, m.event), m.detail)),
        _E.REBOOT: (DomainRebootEvent, lambda d, m, o: DomainRebootEvent(d)),
        _E.RTC_CHANGE: (DomainRTCChangeEvent,
                        lambda d, m, o: DomainRTCChangeEvent(d, m.offset)),
        _E.WATCHDOG: (DomainWatchdogEvent, lambda d, m, o: DomainWatchdogEvent(d, m.action)),
        _E.IO_ERROR: (DomainIOErrorEvent, lambda d, m, o: DomainIOErrorEvent(
            d, m.srcPath, m.devAlias, m.action, None)),
        _E.IO_ERROR_REASON: (DomainIOErrorEvent, lambda d, m, o: DomainIOErrorEvent(
            d, m.srcPath, m.devAlias, m.action, m.reason)),
        _E.GRAPHICS: (DomainGraphicsEvent, lambda d, m, o: _graphics(d, m)),
        _E.CONTROL_ERROR: (DomainControlErrorEvent, lambda d, m, o: DomainControlErrorEvent(d)),
        _E.BLOCK_JOB: (DomainBlockJobEvent, lambda d, m, o: DomainBlockJobEvent(
            d, m.path, m.type, m.status)),
        _E.BLOCK_JOB_2: (DomainBlockJobEvent, lambda d, m, o: DomainBlockJobEvent(
            d, m.dst, m.type, m.status)),
        _E.DISK_CHANGE: (DomainDiskChangeEvent, lambda d, m, o: DomainDiskChangeEvent(
            d, m.oldSrcPath, m.newSrcPath, m.devAlias, m.reason)),
        _E.TRAY_CHANGE: (DomainTrayChangeEvent, lambda d, m, o: DomainTrayChangeEvent(
            d, m.devAlias, m.reason)),
        _E.PMWAKEUP: (DomainPMWakeupEvent, lambda d, m, o: DomainPMWakeupEvent(
            d, getattr(o, "reason", 0))),
        _E.PMSUSPEND: (DomainPMSuspendEvent, lambda d, m, o: DomainPMSuspendEvent(
            d, getattr(o, "reason", 0), False)),
        _E.PMSUSPEND_DISK: (DomainPMSuspendEvent, lambda d, m, o: DomainPMSuspendEvent(
            d, getattr(o, "reason", 0), True)),
        _E.BALLOON_CHANGE: (DomainBalloonChangeEvent, lambda d, m, o: DomainBalloonChangeEvent(
            d, m.actual)),
        _E.DEVICE_REMOVED: (DomainDeviceRemovedEvent, lambda d, m, o: DomainDeviceRemovedEvent(
            d, m.devAlias)),
        _E.DEVICE_ADDED: (DomainDeviceAddedEvent, lambda d, m, o: DomainDeviceAddedEvent(
            d, m.devAlias)),
        _E.DEVICE_REMOVAL_FAILED: (DomainDeviceRemovalFailedEvent,
                                   lambda d, m, o: DomainDeviceRemovalFailedEvent(d, m.devAlias)),
        _E.TUNABLE: (DomainTunableEvent, lambda d, m, o: DomainTunableEvent(d, to_dict(m.params))),
        _E.AGENT_LIFECYCLE: (DomainAgentLifecycleEvent, lambda d, m, o: DomainAgentLifecycleEvent(
            d, m.state, m.reason)),
        _E.MIGRATION_ITERATION: (DomainMigrationIterationEvent,
                                 lambda d, m, o: DomainMigrationIterationEvent(d, m.iteration)),
        _E.JOB_COMPLETED: (DomainJobCompletedEvent, lambda d, m, o: DomainJobCompletedEvent(
            d, to_dict(m.params))),
        _E.METADATA_CHANGE: (DomainMetadataChangeEvent, lambda d, m, o: DomainMetadataChangeEvent(
            d, m.type, m.nsuri)),
        _E.BLOCK_THRESHOLD: (DomainBlockThresholdEvent, lambda d, m, o: DomainBlockThresholdEvent(
            d, m.dev, m.path, m.threshold, m.excess)),
        _E.MEMORY_FAILURE: (DomainMemoryFailureEvent, lambda d, m, o: DomainMemoryFailureEvent(
            d, m.recipient, m.action, m.flags)),
        _E.MEMORY_DEVICE_SIZE_CHANGE: (
            DomainMemoryDeviceSizeChangeEvent,
            lambda d, m, o: DomainMemoryDeviceSizeChangeEvent(d, m.alias, m.size)),
    }


def convert_domain_event(event_id: int, domain: Domain, body: Any) -> Any:
    """The typed event for a decoded domain event message (``body``, with or without the
    callback wrapper); ``DomainEvent`` for an ID this table lacks."""
    return domain_event_maker(event_id)(domain, getattr(body, "msg", body), body)


def domain_event_maker(event_id: int) -> Callable[[Any, Any, Any], Any]:
    """(domain, inner message, outer message) -> the typed event of ``event_id``: looked up
    once per subscription, not per event."""
    entry = domain_event_types().get(event_id)
    if entry is not None:
        return entry[1]
    from .domain import DomainEvent, DomainEventID
    kind = enum_or_int(DomainEventID, event_id)
    return lambda d, m, o: DomainEvent(d, kind, m)


# -- networks, storage pools, node devices, secrets -------------------------------------------
class NetworkEventID(IntEnum):
    """``VIR_NETWORK_EVENT_ID_*`` (this protocol carries lifecycle events only)."""

    LIFECYCLE = 0


class NetworkEventType(IntEnum):
    """``VIR_NETWORK_EVENT_*``."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    STOPPED = 3


@dataclass(frozen=True, slots=True)
class NetworkLifecycleEvent:
    """A network was defined, undefined, started or stopped."""

    network: Network
    event: NetworkEventType | int
    detail: int


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


@dataclass(frozen=True, slots=True)
class StoragePoolLifecycleEvent:
    """A pool was defined, undefined, started, stopped, built or deleted."""

    pool: StoragePool
    event: StoragePoolEventType | int
    detail: int


@dataclass(frozen=True, slots=True)
class StoragePoolRefreshEvent:
    """A pool was refreshed."""

    pool: StoragePool


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


@dataclass(frozen=True, slots=True)
class NodeDeviceLifecycleEvent:
    """A node device was created, deleted, defined or undefined."""

    device: NodeDevice
    event: NodeDeviceEventType | int
    detail: int


@dataclass(frozen=True, slots=True)
class NodeDeviceUpdateEvent:
    """A node device's description changed."""

    device: NodeDevice


class SecretEventID(IntEnum):
    """``VIR_SECRET_EVENT_ID_*``."""

    LIFECYCLE = 0
    VALUE_CHANGED = 1


class SecretEventType(IntEnum):
    """``VIR_SECRET_EVENT_*``."""

    DEFINED = 0
    UNDEFINED = 1


@dataclass(frozen=True, slots=True)
class SecretLifecycleEvent:
    """A secret was defined or undefined."""

    secret: Secret
    event: SecretEventType | int
    detail: int


@dataclass(frozen=True, slots=True)
class SecretValueChangedEvent:
    """A secret's value was set."""

    secret: Secret


# -- QEMU monitor, connection closed ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QemuMonitorEvent:
    """A QMP event from a domain's monitor: its name, time and JSON ``details`` (or None)."""

    domain: Domain
    event: str
    seconds: int
    micros: int
    details: str | None


class ConnectionCloseReason(IntEnum):
    """``VIR_CONNECT_CLOSE_REASON_*``."""

    ERROR = 0
    EOF = 1
    KEEPALIVE = 2
    CLIENT = 3


@dataclass(frozen=True, slots=True)
class ConnectionClosedEvent:
    """The connection closed, and why (sent by the daemon, or seen by this client)."""

    reason: ConnectionCloseReason | int


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
