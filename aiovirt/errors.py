"""The exceptions aiovirt raises, in one hierarchy.

Arranged by what the caller can do about it:

    AiovirtError
    ├── TransportError          the connection failed: retry, reconnect, or give up on the host
    │   ├── ConnectionFailed    could not be reached (the message names where we tried)
    │   ├── ConnectionClosed    lost, or closed; every pending call fails with it
    │   ├── CallTimeout         no reply in time: its effect on the daemon is unknown
    │   ├── ProtocolError       the peer broke the protocol (XdrError: a payload that does
    │   │                       not decode)
    │   ├── AuthenticationError the daemon wants what we cannot do, or refused us
    │   └── StreamBroken        the server ended a stream (aiovirt.client.streams)
    ├── LibvirtError            the daemon did the call and said no (NoSuchDomain, ...)
    ├── UsageError              an object used in a way it cannot serve (StreamClosed: a
    │                           stream used after it was closed)
    ├── EncodeError             the caller's own arguments cannot be encoded (a ValueError)
    ├── InvalidURI              (a ValueError)
    └── XMLInputError           malformed or unsafe XML given to us (a ValueError)

Callers never need ``except OSError``: socket failures arrive as ``TransportError``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AiovirtError", "AuthenticationError", "CallTimeout", "ConnectionClosed",
    "ConnectionFailed",
    "EncodeError", "InvalidURI", "LibvirtError", "TransportError",
    "NoSuchDomain", "NoSuchMetadata", "NoSuchNetwork", "NoSuchNodeDevice", "NoSuchSecret", "NoSuchStoragePool",
    "NoSuchStorageVolume", "OperationInvalid", "OperationFailed", "ProtocolError",
    "ArgumentUnsupported", "InvalidArgument", "NoSupport", "OperationTimeout", "XMLError",
    "ObjectExists", "UsageError", "XMLInputError", "error_from_remote",
]


class AiovirtError(Exception):
    """Base class of every aiovirt exception."""


class TransportError(AiovirtError):
    """The connection to the daemon failed: it could not be made, it was lost, or the peer
    broke the protocol.  The call may or may not have been carried out."""


class ConnectionFailed(TransportError):
    """The daemon could not be reached; the message names the socket or address tried."""


class ProtocolError(TransportError):
    """The peer broke the RPC protocol: a malformed, oversized or unexpected message."""


class ConnectionClosed(TransportError):
    """The connection is gone (closed by us, by the server, or lost); pending calls fail with it."""


class CallTimeout(TransportError, TimeoutError):
    """A call got no reply within its timeout.  Whether it took effect on the daemon is
    unknown; the connection stays usable (a late reply is read and dropped)."""


class UsageError(AiovirtError, RuntimeError):
    """An object used in a way it cannot serve (a second reader of one event subscription,
    reading an upload stream): the message says what to do instead.  Nothing was sent."""


class EncodeError(AiovirtError, ValueError):
    """Arguments that cannot be encoded for the call (a wrong type, a string or list over
    the protocol's limit): the caller's mistake, nothing was sent."""


class InvalidURI(AiovirtError, ValueError):
    """A connection URI libvirt would not accept; the message names the offending part."""


class XMLInputError(AiovirtError, ValueError):
    """XML given to aiovirt (a domain, a profile, capabilities, metadata) is malformed or
    unsafe; ``source``, ``line`` and the message say where and what."""

    def __init__(self, message: str, *, source: str = "<string>",
                 line: int | None = None) -> None:
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line
        self.reason = message


class AuthenticationError(TransportError):
    """The server asked for an authentication method we cannot perform, or it failed."""


class LibvirtError(AiovirtError):
    """An error reported by libvirtd, carrying its ``virErrorNumber`` and ``virErrorDomain``."""

    code: int
    domain: int
    message: str

    def __init__(self, message: str, code: int = 0, domain: int = 0, level: int = 2,
                 str1: str | None = None, str2: str | None = None, str3: str | None = None,
                 int1: int = 0, int2: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.domain = domain
        self.level = level
        self.str1, self.str2, self.str3 = str1, str2, str3
        self.int1, self.int2 = int1, int2

    def with_context(self, context: str) -> LibvirtError:
        """The same error with ``context`` (what was asked for) added to its message."""
        context = _cut(context)
        if context in self.message:
            return self
        return type(self)(f"{self.message}: {context}", self.code, self.domain, self.level,
                          self.str1, self.str2, self.str3, self.int1, self.int2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, domain={self.domain}, {self.message!r})"


# Subclasses keyed by virErrorNumber (libvirt's include/libvirt/virterror.h).
class InvalidArgument(LibvirtError):
    """VIR_ERR_INVALID_ARG (8): an argument the API rejects."""


class NoSupport(LibvirtError):
    """VIR_ERR_NO_SUPPORT (3): the driver does not support this call."""


class XMLError(LibvirtError):
    """VIR_ERR_XML_ERROR (27) / VIR_ERR_XML_DETAIL (35): the XML document was rejected."""


class OperationFailed(LibvirtError):
    """VIR_ERR_OPERATION_FAILED (9)."""


class OperationInvalid(LibvirtError):
    """VIR_ERR_OPERATION_INVALID (55): not allowed in the object's current state."""


class OperationTimeout(LibvirtError):
    """VIR_ERR_OPERATION_TIMEOUT (68)."""


class ArgumentUnsupported(LibvirtError):
    """VIR_ERR_ARGUMENT_UNSUPPORTED (74): a flag or argument this driver does not know."""


class ObjectExists(LibvirtError):
    """VIR_ERR_DOM_EXIST (28), NETWORK_EXIST (37), STORAGE_VOL_EXIST (90)."""


class NoSuchDomain(LibvirtError):
    """VIR_ERR_NO_DOMAIN (42)."""


class NoSuchNetwork(LibvirtError):
    """VIR_ERR_NO_NETWORK (43)."""


class NoSuchStoragePool(LibvirtError):
    """VIR_ERR_NO_STORAGE_POOL (49)."""


class NoSuchStorageVolume(LibvirtError):
    """VIR_ERR_NO_STORAGE_VOL (50)."""


class NoSuchNodeDevice(LibvirtError):
    """VIR_ERR_NO_NODE_DEVICE (53)."""


class NoSuchSecret(LibvirtError):
    """VIR_ERR_NO_SECRET (66)."""


class NoSuchMetadata(LibvirtError):
    """VIR_ERR_NO_DOMAIN_METADATA (80): the domain has no metadata for that namespace."""


_BY_CODE: dict[int, type[LibvirtError]] = {
    3: NoSupport, 8: InvalidArgument, 9: OperationFailed, 27: XMLError, 28: ObjectExists,
    35: XMLError, 37: ObjectExists, 42: NoSuchDomain, 43: NoSuchNetwork, 49: NoSuchStoragePool,
    50: NoSuchStorageVolume, 53: NoSuchNodeDevice, 55: OperationInvalid, 66: NoSuchSecret,
    68: OperationTimeout, 74: ArgumentUnsupported, 80: NoSuchMetadata, 90: ObjectExists,
}


MAX_MESSAGE = 2000   # characters of a message kept (the daemon echoes what it was given)


def _cut(text: str) -> str:
    """``text``, or its start and a note of what was left out when it is over
    ``MAX_MESSAGE`` (an argument of a megabyte echoed back is no message)."""
    if len(text) <= MAX_MESSAGE:
        return text
    return f"{text[:MAX_MESSAGE]}... ({len(text) - MAX_MESSAGE} more characters)"


def error_from_remote(err: Any) -> LibvirtError:
    """Build the right ``LibvirtError`` subclass from a decoded ``remote_error``."""
    cls = _BY_CODE.get(err.code, LibvirtError)
    message = _cut(err.message) if err.message is not None else \
        f"libvirt error code {err.code}"
    return cls(message, err.code, err.domain, err.level, err.str1, err.str2, err.str3,
               err.int1, err.int2)
