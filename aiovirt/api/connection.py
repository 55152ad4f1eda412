"""``Connection``: the RPC connection with the object API on top, and ``connect`` for it."""

from __future__ import annotations

from ..client.connection import RpcConnection
from ..client.connection import connect as _connect_rpc
from .host import ConnectionObjects

__all__ = ["Connection", "connect"]


class Connection(RpcConnection, ConnectionObjects):
    """An open connection to a libvirt daemon.

    ``rpc`` reaches every REMOTE procedure as a typed coroutine (``qemu_rpc`` and ``lxc_rpc``
    the QEMU and LXC ones); the rest is the object API (``define_xml``, ``list_domains``,
    ``domain_events``...).  Made by joining ``RpcConnection`` (calls, lanes, events, lifetime)
    with ``ConnectionObjects``; neither knows the other."""


class connect(_connect_rpc[Connection]):  # noqa: N801 - reads as a function
    __doc__ = _connect_rpc.__doc__
    connection_class = Connection
