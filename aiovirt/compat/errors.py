"""``libvirtError``: libvirt-python's exception, made from aiovirt's.

libvirt-python builds it from the thread's last libvirt error (a 9-tuple, ``err``); here it
is built from the ``aiovirt.LibvirtError`` the daemon sent (same fields), or from a
transport failure, reported as the C library reports one (``VIR_ERR_SYSTEM_ERROR`` from
``VIR_FROM_RPC``, ``str1`` "%s", ``int1`` the errno, ``int2`` -1).
"""

from __future__ import annotations

import errno as _errno
from typing import Any

from ..errors import (AiovirtError, AuthenticationError, CallTimeout, ConnectionClosed,
                      ConnectionFailed, EncodeError, InvalidURI, LibvirtError, ProtocolError,
                      XMLInputError)
from . import constants as C

__all__ = ["libvirtError", "from_exception", "last_error", "set_last_error"]

ErrTuple = tuple[int, int, str, int, Any, Any, Any, int, int]


class libvirtError(Exception):  # noqa: N801 - libvirt-python's name
    """libvirt-python's exception: ``err`` is (code, domain, message, level, str1, str2,
    str3, int1, int2), or None when no libvirt error stands behind it."""

    def __init__(self, defmsg: str, err: ErrTuple | None = None) -> None:
        Exception.__init__(self, err[2] if err is not None and err[2] else defmsg)
        self.err = err

    def _field(self, index: int) -> Any:
        return None if self.err is None else self.err[index]

    def get_error_code(self) -> int | None:
        return self._field(0)

    def get_error_domain(self) -> int | None:
        return self._field(1)

    def get_error_message(self) -> str | None:
        return self._field(2)

    def get_error_level(self) -> int | None:
        return self._field(3)

    def get_str1(self) -> str | None:
        return self._field(4)

    def get_str2(self) -> str | None:
        return self._field(5)

    def get_str3(self) -> str | None:
        return self._field(6)

    def get_int1(self) -> int | None:
        return self._field(7)

    def get_int2(self) -> int | None:
        return self._field(8)


def _system(message: str, domain: int, errno: int = 0) -> ErrTuple:
    return (C.VIR_ERR_SYSTEM_ERROR, domain, message, C.VIR_ERR_ERROR, "%s", message, None,
            errno, -1)


def error_tuple(exc: BaseException) -> ErrTuple:
    """What libvirt's C library would have recorded for ``exc``."""
    message = str(exc)
    if isinstance(exc, LibvirtError) and not exc.code:
        # a failure no error was recorded for (an in-band -1 reply): libvirt's
        # virDispatchError reports it as VIR_ERR_INTERNAL_ERROR, "the cause is unknown"
        return (C.VIR_ERR_INTERNAL_ERROR, exc.domain or C.VIR_FROM_NONE,
                "An error occurred, but the cause is unknown", C.VIR_ERR_ERROR, None, None,
                None, 0, 0)
    if isinstance(exc, LibvirtError):
        return (exc.code, exc.domain, exc.message, exc.level, exc.str1, exc.str2, exc.str3,
                exc.int1, exc.int2)
    if isinstance(exc, AuthenticationError):
        return (C.VIR_ERR_AUTH_FAILED, C.VIR_FROM_AUTH, message, C.VIR_ERR_ERROR,
                "authentication failed: %s", message, None, 0, 0)
    if isinstance(exc, ConnectionFailed):
        cause = exc.__cause__
        number = getattr(cause, "errno", None) or 0
        return _system(message, C.VIR_FROM_RPC, number)
    if isinstance(exc, CallTimeout):
        return (C.VIR_ERR_OPERATION_TIMEOUT, C.VIR_FROM_RPC, message, C.VIR_ERR_ERROR,
                "%s", message, None, 0, 0)
    if isinstance(exc, ConnectionClosed):
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, AiovirtError):
            # the loss itself, as the calls under way see it: libvirt reports the socket's
            # error ("Cannot recv data: ...", "End of file while reading data")
            return _system(message, C.VIR_FROM_RPC,
                           getattr(cause, "errno", None) or _errno.EIO)
        # a call on a connection already lost or closed: "client socket is closed"
        return (C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC, message, C.VIR_ERR_ERROR,
                "internal error: %s", message, None, 0, 0)
    if isinstance(exc, ProtocolError):
        return (C.VIR_ERR_RPC, C.VIR_FROM_RPC, message, C.VIR_ERR_ERROR, "%s", message, None,
                0, 0)
    if isinstance(exc, InvalidURI):
        return (C.VIR_ERR_INVALID_ARG, C.VIR_FROM_URI, message, C.VIR_ERR_ERROR, "%s",
                message, None, 0, 0)
    if isinstance(exc, XMLInputError):
        return (C.VIR_ERR_XML_ERROR, C.VIR_FROM_XML, message, C.VIR_ERR_ERROR, "%s", message,
                None, 0, 0)
    if isinstance(exc, (EncodeError, ValueError, OverflowError)):
        return (C.VIR_ERR_INVALID_ARG, C.VIR_FROM_NONE, message, C.VIR_ERR_ERROR, "%s",
                message, None, 0, 0)
    if isinstance(exc, OSError):
        return _system(message, C.VIR_FROM_RPC, exc.errno or _errno.EIO)
    return (C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_NONE, message, C.VIR_ERR_ERROR, "%s",
            message, None, 0, 0)


_last: list[ErrTuple | None] = [None]


def last_error() -> ErrTuple | None:
    return _last[0]


def set_last_error(err: ErrTuple | None) -> None:
    _last[0] = err


def from_exception(exc: BaseException) -> libvirtError:
    """The ``libvirtError`` for an aiovirt (or transport) exception; keeps it as __cause__."""
    if isinstance(exc, libvirtError):
        return exc
    err = error_tuple(exc)
    set_last_error(err)
    error = libvirtError(str(exc), err)
    error.__cause__ = exc
    return error


# exceptions the compat layer turns into libvirtError
TRANSLATED = (AiovirtError, OSError, EncodeError)
