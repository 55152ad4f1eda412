"""Domains: the ``Domain`` handle and the connection's domain methods."""

from __future__ import annotations

import os
import secrets
import uuid as _uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from ..client.events import DEFAULT_MAX_BUFFER, Dropped, EventSubscription, Resync
from ..errors import (AiovirtError, ConnectionClosed, EncodeError, NoSuchDomain,
                      NoSuchMetadata, OperationInvalid, ProtocolError)
from ..protocol import lxc, qemu, remote
from ..protocol.remote import ConnectGetAllDomainStatsArgs, NonnullDomain
from ..protocol.wire import EventMessage, domain_lifecycle_fields, domain_lifecycle_type
from ..xml import DEVICES_NAMESPACE, DEVICES_PREFIX
from .subscriptions import domain_event_maker
from .generated import DomainGenerated
from .handle import ApiBase, ApiConnection, UUIDHandle, enum_or_int, enum_value, uuid_bytes
from . import streams as _streams
from .streams import Stream
from .typedparams import DOMAIN_STATS, PARAM_MULTIPLE, PARAM_TYPES, from_dict

if TYPE_CHECKING:
    from lxml import etree

__all__ = ["DeviceEventTimeout", "DeviceRemovalFailed", "Domain", "DomainEvent",
           "DomainEventID", "DomainEventType", "DomainInfo", "DomainLifecycleEvent",
           "DomainMethods", "DomainState", "MetadataType", "PluggedDevice"]


# The procedures called most (lifecycle, inspection, lookup): their methods send with
# ``start``, one coroutine frame less per call than ``rpc``; the others use ``rpc``.
_P = remote.PROCEDURES
_CREATE = _P[remote.REMOTE_PROC_DOMAIN_CREATE_WITH_FLAGS]
_SHUTDOWN = _P[remote.REMOTE_PROC_DOMAIN_SHUTDOWN_FLAGS]
_DESTROY = _P[remote.REMOTE_PROC_DOMAIN_DESTROY_FLAGS]
_UNDEFINE = _P[remote.REMOTE_PROC_DOMAIN_UNDEFINE_FLAGS]
_XML = _P[remote.REMOTE_PROC_DOMAIN_GET_XML_DESC]
_STATE = _P[remote.REMOTE_PROC_DOMAIN_GET_STATE]
_INFO = _P[remote.REMOTE_PROC_DOMAIN_GET_INFO]
_IS_ACTIVE = _P[remote.REMOTE_PROC_DOMAIN_IS_ACTIVE]
_DEFINE = _P[remote.REMOTE_PROC_DOMAIN_DEFINE_XML_FLAGS]
_CREATE_XML = _P[remote.REMOTE_PROC_DOMAIN_CREATE_XML]
_BY_NAME = _P[remote.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME]
_LIST = _P[remote.REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS]


class DomainState(IntEnum):
    """``VIR_DOMAIN_*`` states."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


class MetadataType(IntEnum):
    """Which metadata a domain call reads or writes (``VIR_DOMAIN_METADATA_*``)."""

    DESCRIPTION = 0
    TITLE = 1
    ELEMENT = 2


class DomainInfo(NamedTuple):
    """``virDomainGetInfo``: state, memory in KiB, vCPU count, CPU time in nanoseconds.

    A named tuple: it unpacks as libvirt-python's five-item list does, and it is the
    cheapest immutable record to make (a third of a frozen dataclass's cost)."""

    state: DomainState | int
    max_memory: int
    memory: int
    vcpus: int
    cpu_time: int


class DomainEventID(IntEnum):
    """Which domain events to subscribe to (``VIR_DOMAIN_EVENT_ID_*``)."""

    LIFECYCLE = 0
    REBOOT = 1
    RTC_CHANGE = 2
    WATCHDOG = 3
    IO_ERROR = 4
    GRAPHICS = 5
    IO_ERROR_REASON = 6
    CONTROL_ERROR = 7
    BLOCK_JOB = 8
    DISK_CHANGE = 9
    TRAY_CHANGE = 10
    PMWAKEUP = 11
    PMSUSPEND = 12
    BALLOON_CHANGE = 13
    PMSUSPEND_DISK = 14
    DEVICE_REMOVED = 15
    BLOCK_JOB_2 = 16
    TUNABLE = 17
    AGENT_LIFECYCLE = 18
    DEVICE_ADDED = 19
    MIGRATION_ITERATION = 20
    JOB_COMPLETED = 21
    DEVICE_REMOVAL_FAILED = 22
    METADATA_CHANGE = 23
    BLOCK_THRESHOLD = 24
    MEMORY_FAILURE = 25
    MEMORY_DEVICE_SIZE_CHANGE = 26


class DomainEventType(IntEnum):
    """What happened to a domain (``VIR_DOMAIN_EVENT_*``)."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8


@dataclass(frozen=True, slots=True)
class DomainLifecycleEvent:
    """A domain was defined, started, stopped...; ``detail`` is the event's detail code."""

    domain: Domain
    event: DomainEventType | int
    detail: int


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """A domain event of an ID this version does not know: ``body`` is the decoded message."""

    domain: Domain
    id: DomainEventID | int
    body: Any


@dataclass(frozen=True, slots=True)
class PluggedDevice:
    """A device ``Domain.hotplug`` plugged: its alias and its XML as the domain now shows
    it (address included)."""

    alias: str
    xml: str


class DeviceEventTimeout(AiovirtError, TimeoutError):
    """A hot-(un)plug was asked for, but QEMU did not report it done in time."""


class DeviceRemovalFailed(AiovirtError):
    """The guest refused to release a device (DEVICE_REMOVAL_FAILED)."""


_AFFECT_LIVE = 1      # VIR_DOMAIN_AFFECT_LIVE
_AFFECT_CONFIG = 2    # VIR_DOMAIN_AFFECT_CONFIG
_XML_INACTIVE = 2     # VIR_DOMAIN_XML_INACTIVE
_REMOVE = object()    # _change_device_metadata: forget the binding
# device elements libvirt gives no alias (so no DEVICE_ADDED either)
_UNALIASED = frozenset({"graphics", "audio", "lease", "redirfilter", "emulator"})


def _codec() -> ModuleType:
    """The metadata codec, loaded with lxml on first use: a client that never reads or
    writes XML through a domain does not pay for loading lxml."""
    from ..xml import metadata
    return metadata


def _xml() -> ModuleType:
    """The safe XML parser and serialiser (``aiovirt.xml.safe``), loaded on first use."""
    from ..xml import safe
    return safe


def _alias_of(element: etree._Element) -> str | None:
    node = element.find("alias")
    return None if node is None else node.get("name")


def _with_alias(element: etree._Element) -> etree._Element:
    """``element`` with a user alias: a random one when it has none (the event that says
    it was plugged names it; ``aiovirt.compose.hotplug`` gives stable ones)."""
    alias = _alias_of(element)
    if alias is not None and not _codec().is_user_alias(alias):
        raise _codec().UnknownDevice(
            f"<{element.tag}>: alias {alias!r} is not a user alias ('ua-' then letters, "
            "digits, '_' or '-'); libvirt would drop it")
    if element.tag not in _UNALIASED and alias is None:
        from lxml import etree
        etree.SubElement(element, "alias", name=f"ua-{element.tag}-{secrets.token_hex(4)}")
    return element


VIR_MIGRATE_PEER2PEER = 2


class Domain(UUIDHandle, DomainGenerated):
    """A handle on one domain.  ``name``, ``uuid`` (str) and ``id`` (-1 when inactive) are
    plain attributes, refreshed by calls that return the domain again (``start``)."""

    __slots__ = ("name", "id")
    _ref: NonnullDomain
    _repr_fields = ("name", "uuid", "id")

    def __init__(self, conn: ApiConnection, ref: NonnullDomain) -> None:
        self._conn = conn  # Handle.__init__ inlined: all_domain_stats makes thousands
        self._ref = ref
        self.name: str = ref.name
        self.id: int = ref.id

    def _update(self, ref: NonnullDomain) -> None:
        self._ref = ref
        self.id = ref.id

    def _no_id(self) -> None:
        """The domain stopped (destroyed, saved): no ID, here or sent with later calls."""
        self._update(replace(self._ref, id=-1))

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, flags: int = 0) -> None:
        """Boot a defined domain (one ``DOMAIN_CREATE_WITH_FLAGS`` call); updates ``id``."""
        ret = await self._conn.start(_CREATE, remote.DomainCreateWithFlagsArgs(self._ref, flags))
        self._update(ret.dom)

    async def start_with_files(self, files: Sequence[int], flags: int = 0) -> None:
        """Boot the domain handing it open file descriptors (``virDomainCreateWithFiles``;
        UNIX sockets only).  The descriptors stay the caller's; the daemon gets copies."""
        procedure = remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_CREATE_WITH_FILES]
        ret, _ = await self._conn.call_with_fds(
            procedure, remote.DomainCreateWithFilesArgs(self._ref, flags), files)
        self._update(ret.dom)

    async def open_graphics_fd(self, idx: int = 0, flags: int = 0) -> int:
        """A socket connected to the guest's graphics server ``idx`` (VNC or SPICE), as a new
        file descriptor that the caller owns and must close (UNIX sockets only)."""
        procedure = remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_OPEN_GRAPHICS_FD]
        _, fds = await self._conn.call_with_fds(
            procedure, remote.DomainOpenGraphicsFdArgs(self._ref, idx, flags))
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ProtocolError(f"domain_open_graphics_fd: the daemon sent {len(fds)} file "
                                "descriptors, expected 1")
        return fds[0]

    async def fd_associate(self, name: str, files: Sequence[int], flags: int = 0) -> None:
        """Associate open file descriptors with the domain under ``name`` for later use by
        the hypervisor (``virDomainFDAssociate``; UNIX sockets only).  The descriptors stay
        the caller's; the daemon gets copies."""
        procedure = remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_FD_ASSOCIATE]
        await self._conn.call_with_fds(
            procedure, remote.DomainFdAssociateArgs(self._ref, name, flags), files)

    async def open_graphics(self, idx: int, fd: int, flags: int = 0) -> None:
        """Connect the caller's socket ``fd`` to the guest's graphics server ``idx``
        (``virDomainOpenGraphics``; UNIX sockets only).  ``fd`` stays the caller's."""
        procedure = remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_OPEN_GRAPHICS]
        await self._conn.call_with_fds(
            procedure, remote.DomainOpenGraphicsArgs(self._ref, idx, flags), [fd])

    async def qemu_monitor_command_with_files(self, cmd: str, files: Sequence[int] = (),
                                              flags: int = 0) -> tuple[str, list[int]]:
        """Send a QEMU monitor command with file descriptors; the reply and the descriptors
        QEMU returned, which the caller owns (``virDomainQemuMonitorCommandWithFiles``)."""
        procedure = qemu.PROCEDURES[qemu.QEMU_PROC_DOMAIN_MONITOR_COMMAND_WITH_FILES]
        ret, fds = await self._conn.call_with_fds(
            procedure, qemu.QemuDomainMonitorCommandWithFilesArgs(self._ref, cmd, flags), files)
        return ret.result, fds

    async def lxc_open_namespace(self, flags: int = 0) -> list[int]:
        """File descriptors of the LXC container's namespaces, which the caller owns and
        must close (``virDomainLxcOpenNamespace``; a local LXC guest, UNIX sockets only)."""
        procedure = lxc.PROCEDURES[lxc.LXC_PROC_DOMAIN_OPEN_NAMESPACE]
        _, fds = await self._conn.call_with_fds(
            procedure, lxc.LxcDomainOpenNamespaceArgs(self._ref, flags))
        return fds

    # -- migration (the source side of peer-to-peer or hypervisor-direct migration) -------------
    async def migrate_to_uri3(self, dconnuri: str | None, params: dict[str, Any],
                              flags: int = 0) -> None:
        """Migrate the domain, this daemon driving it (``virDomainMigrateToURI3``):
        with ``VIR_MIGRATE_PEER2PEER`` to the daemon at ``dconnuri``, else directly by the
        hypervisor to ``params["migrate_uri"]``.  ``params`` are libvirt's migration
        parameters (``VIR_MIGRATE_PARAM_*`` names) as a dict, a list of values for those
        libvirt takes several times (``migrate_disks``, ``compression``); one
        ``MIGRATE_PERFORM3_PARAMS`` call, as libvirt sends to daemons that support migration
        parameters (all since 1.1)."""
        typed = from_dict(params, PARAM_TYPES["virDomainMigrateToURI3"],
                          PARAM_MULTIPLE["virDomainMigrateToURI3"])
        await self._conn.rpc.domain_migrate_perform3_params(self._ref, dconnuri, typed, b"",
                                                            flags)

    async def migrate_to_uri2(self, dconnuri: str | None = None, miguri: str | None = None,
                              dxml: str | None = None, flags: int = 0, dname: str | None = None,
                              bandwidth: int = 0) -> None:
        """``virDomainMigrateToURI2``: ``migrate_to_uri3`` with the parameters spelled out."""
        params: dict[str, Any] = {}
        for key, value in (("migrate_uri", miguri), ("destination_xml", dxml),
                           ("destination_name", dname)):
            if value is not None:
                params[key] = value
        if bandwidth:
            params["bandwidth"] = bandwidth
        await self.migrate_to_uri3(dconnuri, params, flags)

    async def migrate_to_uri(self, duri: str, flags: int = 0, dname: str | None = None,
                             bandwidth: int = 0) -> None:
        """``virDomainMigrateToURI``: ``duri`` is the destination daemon's URI with
        ``VIR_MIGRATE_PEER2PEER``, else the hypervisor's migration URI."""
        if flags & VIR_MIGRATE_PEER2PEER:
            await self.migrate_to_uri2(duri, None, None, flags, dname, bandwidth)
        else:
            await self.migrate_to_uri2(None, duri, None, flags, dname, bandwidth)

    async def shutdown(self, flags: int = 0) -> None:
        """Ask the guest to shut down (ACPI or agent); returns before it has stopped."""
        await self._conn.start(_SHUTDOWN, remote.DomainShutdownFlagsArgs(self._ref, flags))

    async def destroy(self, flags: int = 0) -> None:
        """Stop the domain at once (power off)."""
        await self._conn.start(_DESTROY, remote.DomainDestroyFlagsArgs(self._ref, flags))
        self._no_id()   # as libvirt's client after virDomainDestroy (its DestroyFlags keeps it)

    async def reboot(self, flags: int = 0) -> None:
        await self._conn.rpc.domain_reboot(self._ref, flags)

    async def suspend(self) -> None:
        await self._conn.rpc.domain_suspend(self._ref)

    async def resume(self) -> None:
        await self._conn.rpc.domain_resume(self._ref)

    async def undefine(self, flags: int = 0) -> None:
        """Remove the persistent definition (a running domain becomes transient)."""
        await self._conn.start(_UNDEFINE, remote.DomainUndefineFlagsArgs(self._ref, flags))

    async def rename(self, new_name: str | None, flags: int = 0) -> int:
        """Rename the (inactive) domain; the handle takes the new name, as libvirt's client
        renames its domain object (``virDomainRename``)."""
        retcode: int = (await self._conn.rpc.domain_rename(self._ref, new_name, flags)).retcode
        if retcode == 0 and new_name is not None:
            self.name = new_name
            self._ref = replace(self._ref, name=new_name)
        return retcode

    # -- inspection ---------------------------------------------------------------------------
    async def xml(self, flags: int = 0) -> str:
        """The domain's XML description (``VIR_DOMAIN_XML_*`` flags)."""
        return (await self._conn.start(_XML, remote.DomainGetXmlDescArgs(self._ref, flags))).xml

    async def state(self) -> tuple[DomainState | int, int]:
        """(state, reason)."""
        ret = await self._conn.start(_STATE, remote.DomainGetStateArgs(self._ref, 0))
        return enum_or_int(DomainState, ret.state), ret.reason

    async def info(self) -> DomainInfo:
        ret = await self._conn.start(_INFO, remote.DomainGetInfoArgs(self._ref))
        return DomainInfo(enum_or_int(DomainState, ret.state), ret.maxMem, ret.memory,
                          ret.nrVirtCpu, ret.cpuTime)

    async def is_active(self) -> bool:
        return bool((await self._conn.start(_IS_ACTIVE,
                                            remote.DomainIsActiveArgs(self._ref))).active)

    # -- metadata and devices -------------------------------------------------------------------
    async def set_metadata(self, metadata: str | None, *, type: MetadataType | int =
                           MetadataType.ELEMENT, key: str | None = None, uri: str | None = None,
                           flags: int = 0) -> None:
        """Set (or with None, remove) metadata: an XML element under namespace ``uri`` with
        prefix ``key``, or the title or description.  ``uri`` must be a valid namespace
        URI (``XMLInputError``): libvirt keeps one that is not, and the domain's XML would
        no longer parse."""
        if metadata is not None and uri is not None:
            _codec().check_namespace(uri)
        await self._conn.rpc.domain_set_metadata(
            self._ref, enum_value(MetadataType, type, "set_metadata: type"), metadata, key, uri,
            flags)

    async def metadata(self, *, type: MetadataType | int = MetadataType.ELEMENT,
                       uri: str | None = None, flags: int = 0) -> str:
        """Read the metadata element for namespace ``uri`` (or the title or description)."""
        return (await self._conn.rpc.domain_get_metadata(
            self._ref, enum_value(MetadataType, type, "metadata: type"), uri, flags)).metadata

    async def write_metadata(self, value: Any, *, namespace: str, prefix: str = "app",
                             name: str = "data", flags: int = 0) -> None:
        """Store typed Python data (dict, list, str, int, float, bool, None, bytes) in the
        domain's ``<metadata>`` under ``namespace`` (see ``aiovirt.metadata``)."""
        # a bare element: libvirt puts it in ``namespace`` under ``prefix`` itself (and fails
        # if the element declares that prefix already)
        xml = _codec().dumps(value, namespace=None, name=name)
        await self.set_metadata(xml, key=prefix, uri=namespace, flags=flags)

    async def read_metadata(self, *, namespace: str, default: Any = None,
                            flags: int = 0) -> Any:
        """The data ``write_metadata`` stored under ``namespace``, as Python values
        (``default`` when the domain has none there)."""
        try:
            xml = await self.metadata(uri=namespace, flags=flags)
        except NoSuchMetadata:
            return default
        return _codec().loads(xml)

    async def attach_device(self, xml: str, flags: int = 0) -> None:
        """Attach a device (``VIR_DOMAIN_AFFECT_*`` flags; 0 means the live domain)."""
        await self._conn.rpc.domain_attach_device_flags(self._ref, xml, flags)

    async def detach_device(self, xml: str, flags: int = 0) -> None:
        await self._conn.rpc.domain_detach_device_flags(self._ref, xml, flags)

    # -- device identity and hot-plug -----------------------------------------------------------
    async def _affect(self, persistent: bool | None) -> tuple[bool, bool]:
        """(live, config): what a device or metadata change should reach."""
        active = await self.is_active()
        if persistent is None:
            persistent = await self.is_persistent()
        return active, bool(persistent)

    async def _tree(self, inactive: bool = False) -> Any:
        return _xml().parse(await self.xml(_XML_INACTIVE if inactive else 0),
                            source=f"domain {self.name}")

    async def device_metadata(self, *, namespace: str = DEVICES_NAMESPACE,
                              flags: int = 0) -> dict[str, Any]:
        """Every device alias -> the data bound to it (``aiovirt.metadata.write_device``)."""
        try:
            xml = await self.metadata(uri=namespace, flags=flags)
        except NoSuchMetadata:
            return {}
        return _codec().devices_from_xml(xml)

    async def read_device_metadata(self, alias: str, default: Any = None, *,
                                   namespace: str = DEVICES_NAMESPACE,
                                   flags: int = 0) -> Any:
        """The data bound to the device ``alias`` (``default`` when none is)."""
        return (await self.device_metadata(namespace=namespace, flags=flags)).get(
            alias, default)

    async def write_device_metadata(self, alias: str, value: Any, *,
                                    namespace: str = DEVICES_NAMESPACE,
                                    prefix: str = DEVICES_PREFIX,
                                    check: bool = True) -> None:
        """Bind typed data to the device ``alias``, in the running domain and in its
        persistent definition (whichever exist).  ``check``: the device must exist
        (``UnknownDevice`` otherwise).  Read-modify-write: concurrent writers of one domain
        can lose each other's changes."""
        await self._change_device_metadata(alias, value, namespace, prefix, check)

    async def remove_device_metadata(self, alias: str, *,
                                     namespace: str = DEVICES_NAMESPACE
                                     ) -> bool:
        """Forget the data bound to ``alias``; whether there was any."""
        return await self._change_device_metadata(alias, _REMOVE, namespace,
                                                  DEVICES_PREFIX, False)

    async def _change_device_metadata(self, alias: str, value: Any, namespace: str,
                                      prefix: str, check: bool) -> bool:
        live, config = await self._affect(None)
        if check:
            tree = await self._tree()
            if _codec().find_device(tree, alias) is None:
                known = [a.get("name", "") for a in tree.iterfind("devices/*/alias")]
                raise _codec().UnknownDevice(
                    f"domain {self.name}: no device with alias {alias!r} (aliases: "
                    f"{', '.join(known) or 'none'})")
        changed = False
        for flag, wanted in ((_AFFECT_LIVE, live), (_AFFECT_CONFIG, config)):
            if not wanted:
                continue
            entries = await self.device_metadata(namespace=namespace, flags=flag)
            if value is _REMOVE:
                if alias not in entries:
                    continue
                del entries[alias]
            else:
                entries[alias] = value
            changed = True
            xml = _codec().devices_to_xml(entries) if entries else None
            await self.set_metadata(xml, key=prefix if xml else None,
                                    uri=namespace, flags=flag)
        return changed

    async def hotplug(self, device: str | Callable[[str], str | Sequence[str]], *,
                      persistent: bool | None = None,
                      timeout: float = 30.0) -> list[PluggedDevice]:
        """Plug devices into the domain and wait for QEMU's DEVICE_ADDED for each.

        ``device``: device XML (attached as it is; a device without an alias gets a random
        user alias), or a callable given the live XML that returns the device XML(s) to
        attach, such as ``aiovirt.compose.hotplug.HotplugRequest`` (stable alias, address
        chosen offline, profiles).  ``persistent`` (default: whether the domain is): also
        add it to the persistent definition.  A shut-off domain is changed in its definition
        only (no event).  ``timeout`` bounds each wait (``DeviceEventTimeout``)."""
        live, config = await self._affect(persistent)
        if not (live or config):
            raise OperationInvalid(f"domain {self.name} is not running and persistent=False "
                                   "was asked: nothing to plug the device into")
        flags = (_AFFECT_LIVE if live else 0) | (_AFFECT_CONFIG if config else 0)
        if callable(device):
            made = device(await self.xml())
            documents = [made] if isinstance(made, str) else list(made)
        else:
            documents = [device]
        elements = [_with_alias(_xml().parse(doc, source="<device>")) for doc in documents]
        plugged: list[str] = []
        try:
            if not live:
                for element in elements:
                    await self.attach_device(_xml().to_string(element, pretty=False), flags)
                    plugged.append(_alias_of(element) or "")
                return await self._plugged(plugged, inactive=True)
            async with self._conn.domain_events(  # type: ignore[attr-defined]
                    DomainEventID.DEVICE_ADDED, self) as added:
                for element in elements:
                    alias = _alias_of(element)
                    await self.attach_device(_xml().to_string(element, pretty=False), flags)
                    plugged.append(alias or "")
                    if alias is not None:   # devices libvirt gives no alias send no event
                        await self._wait_device(added, alias, timeout, "DEVICE_ADDED",
                                                present=True)
        except AiovirtError as exc:
            if plugged:
                exc.add_note(f"attached to {self.name} before this failed: "
                             f"{', '.join(plugged)}")
            raise
        return await self._plugged(plugged)

    async def _plugged(self, aliases: list[str], inactive: bool = False
                       ) -> list[PluggedDevice]:
        tree = await self._tree(inactive)
        result = []
        for alias in aliases:
            element = _codec().find_device(tree, alias) if alias else None
            result.append(PluggedDevice(alias, _xml().to_string(element) if element is not None
                                        else ""))
        return result

    async def _wait_device(self, events: EventSubscription[Any], alias: str, timeout: float,
                           what: str, *, present: bool,
                           failed: EventSubscription[Any] | None = None) -> None:
        """Wait for ``what`` about ``alias``; a lost event (``Dropped``, ``Resync``) is
        made up for by looking at the live XML."""
        outcome: list[str] = []

        async def watch(subscription: EventSubscription[Any], verdict: str,
                        scope: anyio.CancelScope) -> None:
            async for event in subscription:
                if isinstance(event, Dropped | Resync):
                    tree = await self._tree()
                    if (_codec().find_device(tree, alias) is not None) is present:
                        outcome.append("done")
                        scope.cancel()
                        return
                elif getattr(event, "dev_alias", None) == alias:
                    outcome.append(verdict)
                    scope.cancel()
                    return
            outcome.append("closed")   # the connection ended the subscription
            scope.cancel()

        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as group:
                group.start_soon(watch, events, "done", group.cancel_scope)
                if failed is not None:
                    group.start_soon(watch, failed, "failed", group.cancel_scope)
        if not outcome:
            hint = "" if present else (
                "; PCI devices leave only when the guest OS lets them go (ACPI or PCIe "
                "native hot-plug), a guest without one never does. The request stays pending")
            raise DeviceEventTimeout(f"domain {self.name}: no {what} event for {alias!r} "
                                     f"within {timeout:g} s{hint}")
        if outcome[0] == "closed":
            raise ConnectionClosed(f"domain {self.name}: the connection closed while waiting "
                                   f"for {what} of {alias!r}")
        if outcome[0] == "failed":
            raise DeviceRemovalFailed(f"domain {self.name}: the guest refused to release "
                                      f"{alias!r} (DEVICE_REMOVAL_FAILED)")

    async def unplug(self, alias: str, *, persistent: bool | None = None,
                     timeout: float = 30.0, keep_metadata: bool = False) -> None:
        """Unplug the device ``alias`` and wait for QEMU's DEVICE_REMOVED.

        From the running domain and, if it has the device, its persistent definition
        (``persistent=False``: the running domain only).  The data bound to the alias is
        forgotten unless ``keep_metadata``.  ``DeviceRemovalFailed`` when the guest refuses,
        ``DeviceEventTimeout`` when nothing happens in ``timeout`` s (a PCI device in a
        guest without an OS: the request stays pending, the device and its data stay in the
        running domain while libvirt has already taken it out of the definition);
        ``UnknownDevice`` for an alias the domain does not have."""
        live, persistent_domain = await self._affect(None)
        in_live = live and _codec().find_device(await self._tree(), alias) is not None
        in_config = persistent_domain and persistent is not False and \
            _codec().find_device(await self._tree(inactive=True), alias) is not None
        if not (in_live or in_config):
            tree = await self._tree(inactive=not live)
            known = [a.get("name", "") for a in tree.iterfind("devices/*/alias")]
            raise _codec().UnknownDevice(
                f"domain {self.name}: no device with alias {alias!r} (aliases: "
                f"{', '.join(known) or 'none'})")
        flags = (_AFFECT_LIVE if in_live else 0) | (_AFFECT_CONFIG if in_config else 0)
        if in_live:
            async with self._conn.domain_events(  # type: ignore[attr-defined]
                    DomainEventID.DEVICE_REMOVED, self) as removed, \
                    self._conn.domain_events(  # type: ignore[attr-defined]
                        DomainEventID.DEVICE_REMOVAL_FAILED, self) as refused:
                await self.detach_device_alias(alias, flags)
                await self._wait_device(removed, alias, timeout, "DEVICE_REMOVED",
                                        present=False, failed=refused)
        else:
            await self.detach_device_alias(alias, flags)
        if not keep_metadata:
            await self.remove_device_metadata(alias)

    # -- streams --------------------------------------------------------------------------
    async def screenshot(self, screen: int = 0, flags: int = 0) -> tuple[str, Stream]:
        """The MIME type and a ``Stream`` of a screenshot of ``screen``."""
        return await _streams.screenshot(self._conn, self._ref, screen, flags)

    async def open_console(self, dev: str | None = None, flags: int = 0) -> Stream:
        """A bidirectional ``Stream`` on console ``dev`` (None: the first one)."""
        return await _streams.open_console(self._conn, self._ref, dev, flags)

    async def open_channel(self, name: str | None, flags: int = 0) -> Stream:
        """A bidirectional ``Stream`` on the guest channel ``name``."""
        return await _streams.open_channel(self._conn, self._ref, name, flags)


class DomainMethods(ApiBase):
    """The connection's domain methods (mixed into ``Connection``)."""

    async def migrate_prepare_tunnel(self, params: dict[str, Any], cookie: bytes = b"", *,
                                     flags: int = 0) -> tuple[bytes, Stream]:
        """Make this host ready to receive a tunnelled migration: the cookie for the
        source and a write ``Stream`` to send the migration data into.  ``params`` are
        libvirt's migration parameters (``{"destination_xml": XML}`` at least); what a
        peer-to-peer source daemon does when it tunnels a migration to us."""
        return await _streams.migrate_prepare_tunnel(self, params, cookie, flags)

    async def define_xml(self, xml: str, flags: int = 0) -> Domain:
        """Define (or redefine) a persistent domain from its XML."""
        ret = await self.start(_DEFINE, remote.DomainDefineXmlFlagsArgs(xml, flags))
        return Domain(self, ret.dom)

    async def create_xml(self, xml: str, flags: int = 0) -> Domain:
        """Create and start a transient domain."""
        ret = await self.start(_CREATE_XML, remote.DomainCreateXmlArgs(xml, flags))
        return Domain(self, ret.dom)

    async def create_xml_with_files(self, xml: str, files: Sequence[int],
                                    flags: int = 0) -> Domain:
        """Create and start a transient domain handing it open file descriptors (UNIX
        sockets only); the descriptors stay the caller's."""
        procedure = remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_CREATE_XML_WITH_FILES]
        ret, _ = await self.call_with_fds(
            procedure, remote.DomainCreateXmlWithFilesArgs(xml, flags), files)
        return Domain(self, ret.dom)

    async def lookup_domain(self, *, name: str | None = None,
                            uuid: str | _uuid.UUID | None = None,
                            id: int | None = None) -> Domain:
        """Find a domain by exactly one of ``name``, ``uuid`` or ``id``."""
        if (name is not None) + (uuid is not None) + (id is not None) != 1:
            raise TypeError("lookup_domain takes exactly one of name=, uuid= or id=")
        try:
            if name is not None:
                ref = (await self.start(_BY_NAME, remote.DomainLookupByNameArgs(name))).dom
            elif uuid is not None:
                ref = (await self.rpc.domain_lookup_by_uuid(uuid_bytes(uuid))).dom
            else:
                if isinstance(id, bool) or not isinstance(id, int):
                    raise EncodeError(f"lookup_domain: id must be an int, not "
                                      f"{type(id).__name__} ({id!r:.60})")
                ref = (await self.rpc.domain_lookup_by_id(id)).dom
        except NoSuchDomain as exc:
            what = f"name {name!r}" if name is not None else \
                f"uuid {uuid}" if uuid is not None else f"id {id}"
            raise exc.with_context(f"no domain with {what}") from None
        return Domain(self, ref)

    async def list_domains(self, flags: int = 0) -> list[Domain]:
        """All domains (``VIR_CONNECT_LIST_DOMAINS_*`` flags filter them)."""
        ret = await self.start(_LIST, remote.ConnectListAllDomainsArgs(1, flags))
        return [Domain(self, ref) for ref in ret.domains]

    async def all_domain_stats(self, stats: int = 0,
                               flags: int = 0) -> list[tuple[Domain, dict[str, Any]]]:
        """Statistics of every domain (``VIR_DOMAIN_STATS_*`` groups; 0 means all)."""
        records = await self.call(DOMAIN_STATS,
                                  ConnectGetAllDomainStatsArgs([], stats, flags))
        return [(Domain(self, ref), values) for ref, values in records]

    async def domain_list_get_stats(self, domains: Sequence[Domain], stats: int = 0,
                                    flags: int = 0) -> list[tuple[Domain, dict[str, Any]]]:
        """Statistics of the given domains (``virDomainListGetStats``; ``VIR_DOMAIN_STATS_*``
        groups, 0 means all)."""
        records = await self.call(DOMAIN_STATS, ConnectGetAllDomainStatsArgs(
            [domain._ref for domain in domains], stats, flags))
        return [(Domain(self, ref), values) for ref, values in records]

    def domain_events(self, event_id: DomainEventID | int = DomainEventID.LIFECYCLE,
                      domain: Domain | None = None, *,
                      max_buffer: int | None = DEFAULT_MAX_BUFFER,
                      lifecycle: Collection[DomainEventType | int] | None = None
                      ) -> EventSubscription[Any]:
        """Subscribe to domain events of one kind (lifecycle by default), for all domains or
        one: each ID has its dataclass (``aiovirt.api.events.domain_event_types()``).
        ``lifecycle``: only these lifecycle event types (e.g. ``{DomainEventType.STARTED}``);
        the others are dropped as they arrive, before they are decoded or buffered."""
        event_id = enum_value(DomainEventID, event_id, "domain_events: event_id")
        if domain is not None and not isinstance(domain, Domain):
            raise EncodeError(f"domain_events: domain must be a Domain (or None for all), not "
                              f"{domain!r:.60}")
        accept: Callable[[EventMessage], bool] | None = None
        if lifecycle is not None:
            if isinstance(lifecycle, int | str) or not isinstance(lifecycle, Iterable):
                raise EncodeError(f"domain_events: lifecycle is a collection of event types "
                                  f"(e.g. {{DomainEventType.STARTED}}), not {lifecycle!r:.60}")
            if event_id != DomainEventID.LIFECYCLE:
                raise ValueError("lifecycle= selects lifecycle event types: it needs "
                                 f"event_id LIFECYCLE (0), not {event_id}")
            wanted = frozenset(enum_value(DomainEventType, t, "domain_events: lifecycle")
                               for t in lifecycle)

            def accept(message: EventMessage) -> bool:
                kind = domain_lifecycle_type(message)
                return kind is None or kind in wanted   # None: malformed, reported on read

        async def register() -> int:
            ret = await self.rpc.connect_domain_event_callback_register_any(
                event_id, domain._ref if domain is not None else None)
            return ret.callbackID

        async def deregister(callback_id: int) -> None:
            await self.rpc.connect_domain_event_callback_deregister_any(callback_id)

        make = domain_event_maker(event_id)

        def convert(body: Any) -> Any:
            inner = getattr(body, "msg", body)
            return make(Domain(self, inner.dom), inner, body)

        read: Callable[[EventMessage], Any] | None = None
        if event_id == DomainEventID.LIFECYCLE:
            # the event a provisioning run or an inventory watcher reads by the thousand:
            # made from the payload's fields, with no decoded records between
            kinds = DomainEventType._value2member_map_   # (``enum_or_int``, inline)

            def read(message: EventMessage) -> Any:
                fields = domain_lifecycle_fields(message)
                if fields is None:
                    return convert(message.body)   # a malformed body raises here
                name, uuid, id_, kind, detail = fields
                return DomainLifecycleEvent(
                    Domain(self, NonnullDomain(name, uuid, id_)),
                    kinds.get(kind, kind), detail)

        key = (event_id, domain.uuid if domain is not None else None)
        return EventSubscription(self, "domain", key, register, deregister, convert,
                                 max_buffer=max_buffer, accept=accept, read=read)
