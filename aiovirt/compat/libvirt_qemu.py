"""A blocking drop-in for libvirt-python's ``libvirt_qemu``: ``import
aiovirt.compat.libvirt_qemu as libvirt_qemu``.

QEMU-specific calls of the QEMU driver (the ``qemu`` RPC program), with libvirt-python's
names, arguments and results, on ``aiovirt.compat.libvirt`` objects:

* ``qemuMonitorCommand``, ``qemuAgentCommand``: aiovirt's ``Domain.qemu_monitor_command``
  / ``qemu_agent_command``;
* ``qemuMonitorCommandWithFiles``: ``Domain.qemu_monitor_command_with_files`` (descriptors
  passed over the UNIX socket; the ones QEMU returns are the caller's to close);
* ``qemuMonitorEventRegister`` / ``qemuMonitorEventDeregister``:
  ``Connection.qemu_monitor_events``; callbacks run where the blocking layer runs event
  callbacks (``virEventRunDefaultImpl``...);
* ``qemuAttach``: goes on the wire (QEMU_PROC_DOMAIN_ATTACH, ``Connection.domain_qemu_attach``)
  but libvirt's QEMU driver dropped attaching to external QEMU processes in 5.5, so a
  libvirtd of today answers VIR_ERR_NO_SUPPORT, as it does to libvirt-python.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import aio
from .errors import TRANSLATED, from_exception
from .libvirt import _run, _stepped, _unwrap, _wrap

__all__ = ["qemuAgentCommand", "qemuAttach", "qemuMonitorCommand",
           "qemuMonitorCommandWithFiles", "qemuMonitorEventDeregister",
           "qemuMonitorEventRegister"]

# virConnectDomainQemuMonitorEventRegisterFlags
VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_REGEX = 1
VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_NOCASE = 2

# virDomainQemuAgentCommandTimeoutValues
VIR_DOMAIN_QEMU_AGENT_COMMAND_BLOCK = -2
VIR_DOMAIN_QEMU_AGENT_COMMAND_MIN = -2
VIR_DOMAIN_QEMU_AGENT_COMMAND_DEFAULT = -1
VIR_DOMAIN_QEMU_AGENT_COMMAND_NOWAIT = 0
VIR_DOMAIN_QEMU_AGENT_COMMAND_SHUTDOWN = 60

# virDomainQemuMonitorCommandFlags
VIR_DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT = 0
VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP = 1


async def _call(coro: Any) -> Any:
    try:
        return await coro
    except TRANSLATED as exc:
        raise from_exception(exc) from None


# -- async forms (on aiovirt.compat.aio objects) ----------------------------------------------

async def monitor_command(domain: aio.virDomain, cmd: str, flags: int = 0) -> str:
    return await _call(aio.handle(domain).qemu_monitor_command(cmd, flags))  # type: ignore[no-any-return]


async def agent_command(domain: aio.virDomain, cmd: str, timeout: int, flags: int = 0) -> Any:
    return await _call(aio.handle(domain).qemu_agent_command(cmd, timeout, flags))


async def monitor_command_with_files(domain: aio.virDomain, cmd: str, files: list[int],
                                     flags: int = 0) -> tuple[str, list[int]]:
    result, fds = await _call(aio.handle(domain).qemu_monitor_command_with_files(
        cmd, list(files), flags))
    return result, list(fds)


async def attach(conn: aio.virConnect, pid_value: int, flags: int = 0) -> aio.virDomain:
    dom = await _call(conn._c.domain_qemu_attach(pid_value, flags))
    return aio.virDomain(conn, dom._ref)


async def monitor_event_register(conn: aio.virConnect, dom: aio.virDomain | None, event: str | None,
                                 cb: Callable[..., Any], opaque: Any, flags: int = 0) -> int:
    sub = conn._c.qemu_monitor_events(
        aio.handle(dom) if dom is not None else None, event,
        regex=bool(flags & VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_REGEX),
        nocase=bool(flags & VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_NOCASE),
        max_buffer=None)

    def args_of(ev: Any) -> tuple[Any, ...]:
        return (aio.virDomain(conn, ev.domain._ref), ev.event, ev.seconds, ev.micros,
                ev.details)

    return await conn._subscribe(sub, args_of, cb, opaque)


async def monitor_event_deregister(conn: aio.virConnect, callbackID: int) -> int:  # noqa: N803
    return await conn._deregister(callbackID)


# -- libvirt-python's functions (blocking) ----------------------------------------------------

def qemuMonitorCommand(domain: Any, cmd: str, flags: int) -> str:  # noqa: N802
    """Send an arbitrary monitor command through qemu monitor of domain."""
    target = _unwrap(domain)
    return _stepped(lambda: monitor_command(target, cmd, flags), target)  # type: ignore[no-any-return]


def qemuAgentCommand(domain: Any, cmd: str, timeout: int, flags: int) -> Any:  # noqa: N802
    """Send a Guest Agent command to domain."""
    target = _unwrap(domain)
    return _stepped(lambda: agent_command(target, cmd, timeout, flags), target)


def qemuMonitorCommandWithFiles(domain: Any, cmd: str, files: list[int] = [],  # noqa: B006,N802
                                flags: int = 0) -> tuple[str, list[int]]:
    """A monitor command passing descriptors ``files``: (output, descriptors returned)."""
    target = _unwrap(domain)
    return _stepped(lambda: monitor_command_with_files(target, cmd, files, flags),  # type: ignore[no-any-return]
                    target)


def qemuAttach(conn: Any, pid_value: int, flags: int) -> Any:  # noqa: N802
    """QEMU_PROC_DOMAIN_ATTACH: libvirtd's QEMU driver no longer implements it (removed in
    libvirt 5.5), so the daemon answers VIR_ERR_NO_SUPPORT."""
    return _wrap(_run(attach(_unwrap(conn), pid_value, flags)))


def qemuMonitorEventRegister(conn: Any, dom: Any, event: str | None,  # noqa: N802
                             cb: Callable[..., Any], opaque: Any, flags: int = 0) -> int:
    """Adds a qemu monitor event callback: ``cb(conn, dom, event, seconds, micros, details,
    opaque)``."""
    return _run(monitor_event_register(_unwrap(conn), _unwrap(dom), event, cb, opaque,  # type: ignore[no-any-return]
                                       flags))


def qemuMonitorEventDeregister(conn: Any, callbackID: int) -> None:  # noqa: N802,N803
    """Removes a qemu monitor event callback."""
    _run(monitor_event_deregister(_unwrap(conn), callbackID))
