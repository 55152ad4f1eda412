"""Domains: the ``Domain`` handle and the connection's domain methods."""

from __future__ import annotations

import os
import uuid as _uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..client.events import DEFAULT_MAX_BUFFER, EventSubscription
from ..errors import NoSuchDomain, NoSuchMetadata, ProtocolError
from ..protocol import lxc, qemu, remote
from ..protocol.remote import ConnectGetAllDomainStatsArgs, NonnullDomain
from ..xml import metadata as metadata_codec
from .events import domain_event_maker
from .generated import DomainGenerated
from .handle import ApiBase, ApiConnection, UUIDHandle, enum_or_int, uuid_bytes
from . import streams as _streams
from .streams import Stream
from .typedparams import DOMAIN_STATS, INT, from_dict

__all__ = ["Domain", "DomainEvent", "DomainEventID", "DomainEventType", "DomainInfo",
           "DomainLifecycleEvent", "DomainMethods", "DomainState", "MetadataType"]


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


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """``virDomainGetInfo``: state, memory in KiB, vCPU count, CPU time in nanoseconds."""

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


VIR_MIGRATE_PEER2PEER = 2
# migration parameters that are not strings or unsigned long longs (libvirt-domain.h's
# VIR_MIGRATE_PARAM_*): the daemon checks each type strictly
_MIGRATE_PARAM_TYPES = dict.fromkeys(
    ["disks_port", "compression.mt.level", "compression.mt.threads",
     "compression.mt.dthreads", "auto_converge.initial", "auto_converge.increment",
     "parallel.connections"], INT)


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

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, flags: int = 0) -> None:
        """Boot a defined domain (one ``DOMAIN_CREATE_WITH_FLAGS`` call); updates ``id``."""
        ret = await self._conn.rpc.domain_create_with_flags(self._ref, flags)
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
        parameters (``VIR_MIGRATE_PARAM_*`` names) as a dict; one ``MIGRATE_PERFORM3_PARAMS``
        call, as libvirt sends to daemons that support migration parameters (all since 1.1)."""
        await self._conn.rpc.domain_migrate_perform3_params(
            self._ref, dconnuri, from_dict(params, _MIGRATE_PARAM_TYPES), b"", flags)

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
        await self._conn.rpc.domain_shutdown_flags(self._ref, flags)

    async def destroy(self, flags: int = 0) -> None:
        """Stop the domain at once (power off)."""
        await self._conn.rpc.domain_destroy_flags(self._ref, flags)
        self.id = -1

    async def reboot(self, flags: int = 0) -> None:
        await self._conn.rpc.domain_reboot(self._ref, flags)

    async def suspend(self) -> None:
        await self._conn.rpc.domain_suspend(self._ref)

    async def resume(self) -> None:
        await self._conn.rpc.domain_resume(self._ref)

    async def undefine(self, flags: int = 0) -> None:
        """Remove the persistent definition (a running domain becomes transient)."""
        await self._conn.rpc.domain_undefine_flags(self._ref, flags)

    # -- inspection ---------------------------------------------------------------------------
    async def xml(self, flags: int = 0) -> str:
        """The domain's XML description (``VIR_DOMAIN_XML_*`` flags)."""
        return (await self._conn.rpc.domain_get_xml_desc(self._ref, flags)).xml

    async def state(self) -> tuple[DomainState | int, int]:
        """(state, reason)."""
        ret = await self._conn.rpc.domain_get_state(self._ref, 0)
        return enum_or_int(DomainState, ret.state), ret.reason

    async def info(self) -> DomainInfo:
        ret = await self._conn.rpc.domain_get_info(self._ref)
        return DomainInfo(enum_or_int(DomainState, ret.state), ret.maxMem, ret.memory, ret.nrVirtCpu, ret.cpuTime)

    async def is_active(self) -> bool:
        return bool((await self._conn.rpc.domain_is_active(self._ref)).active)

    # -- metadata and devices -------------------------------------------------------------------
    async def set_metadata(self, metadata: str | None, *, type: MetadataType | int =
                           MetadataType.ELEMENT, key: str | None = None, uri: str | None = None,
                           flags: int = 0) -> None:
        """Set (or with None, remove) metadata: an XML element under namespace ``uri`` with
        prefix ``key``, or the title or description."""
        await self._conn.rpc.domain_set_metadata(self._ref, int(type), metadata, key, uri, flags)

    async def metadata(self, *, type: MetadataType | int = MetadataType.ELEMENT,
                       uri: str | None = None, flags: int = 0) -> str:
        """Read the metadata element for namespace ``uri`` (or the title or description)."""
        return (await self._conn.rpc.domain_get_metadata(self._ref, int(type), uri,
                                                          flags)).metadata

    async def write_metadata(self, value: Any, *, namespace: str, prefix: str = "app",
                             name: str = "data", flags: int = 0) -> None:
        """Store typed Python data (dict, list, str, int, float, bool, None, bytes) in the
        domain's ``<metadata>`` under ``namespace`` (see ``aiovirt.metadata``)."""
        # a bare element: libvirt puts it in ``namespace`` under ``prefix`` itself (and fails
        # if the element declares that prefix already)
        xml = metadata_codec.dumps(value, namespace=None, name=name)
        await self.set_metadata(xml, key=prefix, uri=namespace, flags=flags)

    async def read_metadata(self, *, namespace: str, default: Any = None,
                            flags: int = 0) -> Any:
        """The data ``write_metadata`` stored under ``namespace``, as Python values
        (``default`` when the domain has none there)."""
        try:
            xml = await self.metadata(uri=namespace, flags=flags)
        except NoSuchMetadata:
            return default
        return metadata_codec.loads(xml)

    async def attach_device(self, xml: str, flags: int = 0) -> None:
        """Attach a device (``VIR_DOMAIN_AFFECT_*`` flags; 0 means the live domain)."""
        await self._conn.rpc.domain_attach_device_flags(self._ref, xml, flags)

    async def detach_device(self, xml: str, flags: int = 0) -> None:
        await self._conn.rpc.domain_detach_device_flags(self._ref, xml, flags)

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
        return Domain(self, (await self.rpc.domain_define_xml_flags(xml, flags)).dom)

    async def create_xml(self, xml: str, flags: int = 0) -> Domain:
        """Create and start a transient domain."""
        return Domain(self, (await self.rpc.domain_create_xml(xml, flags)).dom)

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
        if sum(x is not None for x in (name, uuid, id)) != 1:
            raise TypeError("lookup_domain takes exactly one of name=, uuid= or id=")
        try:
            if name is not None:
                ref = (await self.rpc.domain_lookup_by_name(name)).dom
            elif uuid is not None:
                ref = (await self.rpc.domain_lookup_by_uuid(uuid_bytes(uuid))).dom
            else:
                ref = (await self.rpc.domain_lookup_by_id(int(id or 0))).dom
        except NoSuchDomain as exc:
            what = f"name {name!r}" if name is not None else \
                f"uuid {uuid}" if uuid is not None else f"id {id}"
            raise exc.with_context(f"no domain with {what}") from None
        return Domain(self, ref)

    async def list_domains(self, flags: int = 0) -> list[Domain]:
        """All domains (``VIR_CONNECT_LIST_DOMAINS_*`` flags filter them)."""
        ret = await self.rpc.connect_list_all_domains(1, flags)
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
                      max_buffer: int | None = DEFAULT_MAX_BUFFER) -> EventSubscription[Any]:
        """Subscribe to domain events of one kind (lifecycle by default), for all domains or
        one: each ID has its dataclass (``aiovirt.api.events.domain_event_types()``)."""
        event_id = int(event_id)

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

        key = (event_id, domain.uuid if domain is not None else None)
        return EventSubscription(self, "domain", key, register, deregister, convert,
                                 max_buffer=max_buffer)
