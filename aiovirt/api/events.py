"""Typed events of every family.

Each domain event ID has its own frozen dataclass (``domain_event_types()``); networks,
storage pools, node devices and secrets have lifecycle events plus their second kind (pool
refresh, node device update, secret value change); QEMU monitor events and the
connection-closed event complete the set.  Iterators also yield the ``Dropped`` and ``Resync``
markers of ``aiovirt.client.events``.  ``domain_events`` and the lifecycle types
(``DomainLifecycleEvent``, ``DomainEventType``, ``DomainEventID``, ``DomainEvent``) live with
``Domain`` in api/domain.py; the other families' subscribe methods and IDs in
api/subscriptions.py, which loads this module when a subscription first needs it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..client.events import Dropped, Resync
from .handle import enum_or_int
from .network import Network
from .nodedev import NodeDevice
from .secret import Secret
from .storage import StoragePool
from .subscriptions import (ConnectionCloseReason, EventMethods, NetworkEventID,
                            NetworkEventType, NodeDeviceEventID, NodeDeviceEventType,
                            SecretEventID, SecretEventType, StoragePoolEventID,
                            StoragePoolEventType, domain_event_maker)
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


# -- networks, storage pools, node devices, secrets -------------------------------------------
@dataclass(frozen=True, slots=True)
class NetworkLifecycleEvent:
    """A network was defined, undefined, started or stopped."""

    network: Network
    event: NetworkEventType | int
    detail: int


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


@dataclass(frozen=True, slots=True)
class ConnectionClosedEvent:
    """The connection closed, and why (sent by the daemon, or seen by this client)."""

    reason: ConnectionCloseReason | int
