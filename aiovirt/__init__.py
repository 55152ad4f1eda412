"""aiovirt: a pure-Python asyncio client for libvirt that speaks its RPC protocol itself."""

from .connection import SLOW_PROCEDURES, Connection, connect
from .domain import Domain, DomainInfo, DomainState, MetadataType
from .errors import (AiovirtError, ArgumentUnsupported, AuthenticationError, ConnectionClosed,
                     InvalidArgument, InvalidURI, LibvirtError, NoSuchDomain, NoSuchMetadata,
                     NoSuchNetwork,
                     NoSuchNodeDevice, NoSuchSecret, NoSuchStoragePool, NoSuchStorageVolume,
                     NoSupport, ObjectExists, OperationFailed, OperationInvalid,
                     OperationTimeout, ProtocolError, XMLError, XMLInputError)
from .events import DomainEvent, DomainEventID, DomainEventType, DomainLifecycleEvent
from .network import Network
from .nodedev import NodeDevice
from .objects import NodeInfo
from .secret import Secret, SecretUsageType
from .storage import (StoragePool, StoragePoolInfo, StoragePoolState, StorageVolume,
                      StorageVolumeInfo, StorageVolumeType)
from .transport import ConnectionFailed
from .uri import ConnectionURI, parse_uri

__all__ = [
    "AiovirtError", "ArgumentUnsupported", "AuthenticationError", "Connection",
    "ConnectionClosed", "ConnectionFailed", "ConnectionURI", "Domain", "DomainEvent",
    "DomainEventID", "DomainEventType", "DomainInfo", "DomainLifecycleEvent", "DomainState",
    "InvalidArgument", "InvalidURI", "LibvirtError", "MetadataType", "Network", "NodeDevice",
    "NoSuchDomain", "NoSuchMetadata",
    "NoSuchNetwork", "NoSuchNodeDevice", "NoSuchSecret", "NoSuchStoragePool",
    "NoSuchStorageVolume", "NoSupport", "NodeInfo", "ObjectExists", "OperationFailed", "OperationInvalid",
    "OperationTimeout", "ProtocolError", "SLOW_PROCEDURES", "Secret", "SecretUsageType",
    "StoragePool", "StoragePoolInfo", "StoragePoolState", "StorageVolume", "StorageVolumeInfo",
    "StorageVolumeType", "XMLError", "XMLInputError", "connect", "parse_uri",
]
__version__ = "0.1.0"
