"""aiovirt: a pure-Python asyncio client for libvirt that speaks its RPC protocol itself.

The package is layered (see the README's Layout): ``protocol`` (generated codecs, the sans-IO
wire), ``client`` (sockets, channels, the RPC connection), ``api`` (the object API and
``Connection``), ``xml`` (safe parsing, typed metadata), then ``compose``, ``address``,
``provision``, ``service``, ``cli`` and ``testing``.  The names below load on first use, so
``import aiovirt.compose`` or ``aiovirt.address`` never loads the RPC client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (AiovirtError, ArgumentUnsupported, AuthenticationError, CallTimeout,
                     ConnectionClosed,
                     ConnectionFailed, EncodeError, InvalidArgument, InvalidURI, LibvirtError,
                     NoSuchDomain, NoSuchMetadata, NoSuchNetwork, NoSuchNodeDevice,
                     NoSuchSecret, NoSuchStoragePool, NoSuchStorageVolume, NoSupport,
                     ObjectExists, OperationFailed, OperationInvalid, OperationTimeout,
                     ProtocolError, TransportError, UsageError, XMLError, XMLInputError)

if TYPE_CHECKING:
    from .api.connection import Connection, connect
    from .api.domain import (Domain, DomainEvent, DomainEventID, DomainEventType, DomainInfo,
                             DomainLifecycleEvent, DomainState, MetadataType)
    from .api.host import NodeInfo
    from .api.checkpoint import DomainCheckpoint
    from .api.interface import Interface
    from .api.network import Network, NetworkPort
    from .api.nwfilter import NWFilter, NWFilterBinding
    from .api.snapshot import DomainSnapshot
    from .api.nodedev import NodeDevice
    from .api.secret import Secret, SecretUsageType
    from .api.storage import (StoragePool, StoragePoolInfo, StoragePoolState, StorageVolume,
                              StorageVolumeInfo, StorageVolumeType)
    from .client.connection import SLOW_PROCEDURES
    from .client.uri import ConnectionURI, parse_uri
    from .client.reconnect import ConnectionState, Reconnect, StateChange
    from .client.streams import Hole, Stream, StreamBroken, StreamClosed
    from .client.events import Dropped, Resync
    from .xml import metadata

# public name -> the module that defines it (loaded when the name is first used)
_LAZY = {
    "Connection": "api.connection", "connect": "api.connection",
    "Domain": "api.domain", "DomainEvent": "api.domain", "DomainEventID": "api.domain",
    "DomainEventType": "api.domain", "DomainInfo": "api.domain",
    "DomainLifecycleEvent": "api.domain", "DomainState": "api.domain",
    "MetadataType": "api.domain", "NodeInfo": "api.host", "Network": "api.network",
    "NodeDevice": "api.nodedev", "Secret": "api.secret", "SecretUsageType": "api.secret",
    "StoragePool": "api.storage", "StoragePoolInfo": "api.storage",
    "StoragePoolState": "api.storage", "StorageVolume": "api.storage",
    "StorageVolumeInfo": "api.storage", "StorageVolumeType": "api.storage",
    "SLOW_PROCEDURES": "client.connection", "ConnectionURI": "client.uri",
    "parse_uri": "client.uri", "metadata": "xml.metadata",
    "NetworkPort": "api.network", "DomainSnapshot": "api.snapshot",
    "DomainCheckpoint": "api.checkpoint", "Interface": "api.interface",
    "NWFilter": "api.nwfilter", "NWFilterBinding": "api.nwfilter",
}
# the event types of every family (aiovirt.api.events) and the subscription markers
_LAZY.update(dict.fromkeys([
    "ConnectionCloseReason", "ConnectionClosedEvent", "DomainAgentLifecycleEvent",
    "DomainBalloonChangeEvent", "DomainBlockJobEvent", "DomainBlockThresholdEvent",
    "DomainControlErrorEvent", "DomainDeviceAddedEvent", "DomainDeviceRemovalFailedEvent",
    "DomainDeviceRemovedEvent", "DomainDiskChangeEvent", "DomainGraphicsEvent",
    "DomainIOErrorEvent", "DomainJobCompletedEvent", "DomainMemoryDeviceSizeChangeEvent",
    "DomainMemoryFailureEvent", "DomainMetadataChangeEvent", "DomainMigrationIterationEvent",
    "DomainPMSuspendEvent", "DomainPMWakeupEvent", "DomainRTCChangeEvent", "DomainRebootEvent",
    "DomainTrayChangeEvent", "DomainTunableEvent", "DomainWatchdogEvent", "GraphicsAddress",
    "NetworkEventID", "NetworkEventType", "NetworkLifecycleEvent", "NodeDeviceEventID",
    "NodeDeviceEventType", "NodeDeviceLifecycleEvent", "NodeDeviceUpdateEvent",
    "QemuMonitorEvent", "SecretEventID", "SecretEventType", "SecretLifecycleEvent",
    "SecretValueChangedEvent", "StoragePoolEventID", "StoragePoolEventType",
    "StoragePoolLifecycleEvent", "StoragePoolRefreshEvent"], "api.events"))
_LAZY.update(dict.fromkeys(["Dropped", "Resync"], "client.events"))
_LAZY.update(dict.fromkeys(["ConnectionState", "Reconnect", "StateChange"], "client.reconnect"))
_LAZY.update(dict.fromkeys(["Hole", "Stream", "StreamBroken", "StreamClosed"],
                           "client.streams"))
_LAZY.update(dict.fromkeys(["DeviceEventTimeout", "DeviceRemovalFailed", "PluggedDevice"],
                           "api.domain"))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aiovirt' has no attribute {name!r}")
    loaded = importlib.import_module(f".{module}", __name__)
    value = loaded if name == "metadata" else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AiovirtError", "ArgumentUnsupported", "AuthenticationError", "CallTimeout", "Connection",
    "ConnectionClosed", "ConnectionFailed", "ConnectionURI", "Domain", "DomainEvent",
    "DomainEventID", "DomainEventType", "DomainInfo", "DomainLifecycleEvent", "DomainState",
    "EncodeError", "InvalidArgument", "InvalidURI", "LibvirtError", "MetadataType", "Network",
    "NoSuchDomain", "NoSuchMetadata", "NoSuchNetwork", "NoSuchNodeDevice", "NoSuchSecret",
    "NoSuchStoragePool", "NoSuchStorageVolume", "NoSupport", "NodeDevice", "NodeInfo",
    "ObjectExists", "OperationFailed", "OperationInvalid", "OperationTimeout",
    "ProtocolError", "SLOW_PROCEDURES", "Secret", "SecretUsageType", "StoragePool",
    "StoragePoolInfo", "StoragePoolState", "StorageVolume", "StorageVolumeInfo",
    "StorageVolumeType", "TransportError", "UsageError", "XMLError", "XMLInputError", "connect",
    "metadata", "parse_uri", *sorted(k for k, v in _LAZY.items() if "events" in v), "ConnectionState", "Reconnect", "StateChange", "Hole", "Stream",
    "StreamBroken", "StreamClosed",
    "DomainCheckpoint", "DomainSnapshot", "Interface", "NWFilter", "NWFilterBinding",
    "NetworkPort", "DeviceEventTimeout", "DeviceRemovalFailed", "PluggedDevice"]
__version__ = "0.1.0"
