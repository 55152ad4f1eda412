"""libvirt-python's classes and method names on top of aiovirt, as coroutines.

``conn = await virConnect.open(uri)``, then ``await conn.lookupByName("test")``,
``await dom.info()``... with libvirt-python's names, arguments and return shapes.  Errors
are ``libvirtError``.  (``aiovirt.compat.libvirt`` is the blocking drop-in built on this.)

How a method is answered, in order:

1. a method written in the class below (local answers such as ``name()``/``UUIDString()``,
   events, streams, and results libvirt-python reshapes: ``conn.getInfo()``...);
2. ``ADAPTERS``: (procedure, argument adapter, result adapter) for calls whose wire shape
   differs from libvirt-python's (``memoryStats`` -> dict...);
3. the generic adaptation, driven by ``names.CLASSES`` (libvirt-python's method -> C
   function -> the aiovirt object-API method implementing it, ``calls``, and the remote
   procedure): when the C function has an aiovirt method on the object's own handle class
   (``Domain``, ``Network``... ``Connection`` for virConnect), that method is called on a
   handle made from the object's reference, so the client-side rules the object API applies
   hold (VIR_TYPED_PARAM_STRING_OKAY, two-call sizing, setters typed by their getters,
   in-band -1 failures, is_secure/is_encrypted from the transport); the caller's arguments
   are matched to its parameters by name, then by position.  Otherwise the raw procedure
   is called, its wire arguments filled from the object's own reference and the caller's
   arguments.  Either result becomes libvirt-python's shape: one value, or a list of the
   reply's fields, handles and references as compat objects, typed parameters as dicts,
   ``bool`` answers as int, ``None`` as 0.

A method without a procedure raises ``libvirtError`` (VIR_ERR_NO_SUPPORT) when called.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import itertools
import operator
import re
import urllib.parse
import uuid as _uuid
from collections.abc import Callable
from typing import Any

import anyio

from ..api.connection import Connection, connect
from ..api.handle import uuid_text
from ..api import typedparams as tp
from ..api.typedparams import from_dict, to_dict
from ..client.auth import Credential
from ..client.events import EventSubscription
from ..client.streams import Hole
from ..errors import EncodeError
from ..protocol import remote
from ..protocol.xdr import Record, plain_hint
from . import constants as C
from .errors import TRANSLATED, from_exception, libvirtError
from .names import CLASSES

__all__ = ["ADAPTERS", "virConnect", "virDomain", "virDomainCheckpoint", "virDomainSnapshot",
           "virInterface", "virNWFilter", "virNWFilterBinding", "virNetwork", "virNetworkPort",
           "virNodeDevice", "virSecret", "virStoragePool", "virStorageVol", "virStream",
           "open", "openReadOnly", "openAuth", "COMPAT_CLASSES"]

_LIST_MAX = 16384   # the smallest REMOTE_*_LIST_MAX: what legacy list calls ask for


# an argument of the wrong Python type, as the encoder says it (xdr.misfit: "procedure:
# field: expected int, not str (...)")
_WRONG_TYPE = re.compile(r"^(\w+): ([\w.\[\]]+): expected ([\w ]+), not (\w+) \(")
# the error domain of libvirt's functions, by their procedure's name (libvirt-domain.c...)
_PROCEDURE_DOMAINS = (("domain_snapshot_", C.VIR_FROM_DOMAIN_SNAPSHOT),
                      ("domain_checkpoint_", C.VIR_FROM_DOMAIN_CHECKPOINT),
                      ("domain_", C.VIR_FROM_DOMAIN), ("network_", C.VIR_FROM_NETWORK),
                      ("storage_", C.VIR_FROM_STORAGE), ("interface_", C.VIR_FROM_INTERFACE),
                      ("node_device_", C.VIR_FROM_NODEDEV), ("secret_", C.VIR_FROM_SECRET),
                      ("nwfilter_", C.VIR_FROM_NWFILTER))


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, EncodeError):
        wrong = _WRONG_TYPE.match(str(exc))
        if wrong is not None:
            procedure, field, expected, given = wrong.groups()
            if given != "NoneType" or expected != "str":
                return TypeError(str(exc))   # what libvirt-python's argument parsing raises
            # None for a string is C's NULL to libvirt-python: libvirt refuses it
            domain = next((d for prefix, d in _PROCEDURE_DOMAINS
                           if procedure.startswith(prefix)), C.VIR_FROM_NONE)
            message = f"invalid argument: {field} in {procedure} must not be NULL"
            from .errors import set_last_error
            error = libvirtError(message, (C.VIR_ERR_INVALID_ARG, domain, message,
                                           C.VIR_ERR_ERROR, None, None, None, 0, 0))
            set_last_error(error.err)
            return error
    return from_exception(exc) if isinstance(exc, TRANSLATED) else exc


def _no_support(what: str) -> libvirtError:
    message = f"this function is not supported by the connection driver: {what}"
    return libvirtError(message, (C.VIR_ERR_NO_SUPPORT, C.VIR_FROM_NONE, message,
                                  C.VIR_ERR_ERROR, "%s", what, None, 0, 0))


# -- the object classes -----------------------------------------------------------------------

class _Object:
    """A compat handle: its ``virConnect`` and its wire reference."""

    _ref_type: str = ""
    _ref_attr: str = ""           # the field name its reference has in argument structs

    def __init__(self, conn: virConnect, _obj: Any = None) -> None:
        self._conn = conn
        self._o = _obj

    def __repr__(self) -> str:
        return f"<aiovirt.compat.{type(self).__name__} {getattr(self._o, 'name', '')}>"

    def connect(self) -> virConnect:
        return self._conn

    def c_pointer(self) -> int:
        return id(self)


class _UUIDNamed(_Object):
    def name(self) -> str:
        return self._o.name  # type: ignore[no-any-return]

    def UUID(self) -> bytes:  # noqa: N802 - libvirt-python's names
        return bytes(self._o.uuid)

    def UUIDString(self) -> str:  # noqa: N802
        return uuid_text(self._o.uuid)


class virDomain(_UUIDNamed):  # noqa: N801
    _ref_type = "NonnullDomain"

    def ID(self) -> int:  # noqa: N802
        return self._o.id  # type: ignore[no-any-return]

    def _update(self, ret: Any) -> None:
        ref = getattr(ret, "dom", None)
        if isinstance(ref, remote.NonnullDomain):
            self._o = ref

    async def create(self) -> int:
        return await self.createWithFlags(0)

    async def createWithFlags(self, flags: int = 0) -> int:  # noqa: N802
        ret = await self._conn._call("domain_create_with_flags", self._o, flags)
        self._update(ret)
        return 0

    async def destroy(self) -> int:
        await self._conn._call("domain_destroy", self._o)
        self._o = dataclasses.replace(self._o, id=-1)
        return 0

    async def destroyFlags(self, flags: int = 0) -> int:  # noqa: N802
        """As libvirt's client: the object keeps its ID (only destroy(), save() and
        managedSave() set it to -1)."""
        await self._conn._call("domain_destroy_flags", self._o, flags)
        return 0

    async def createWithFiles(self, files: list[int], flags: int = 0) -> int:  # noqa: N802
        dom = handle(self)
        try:
            await dom.start_with_files(files, flags)
        except TRANSLATED as exc:
            raise _translate(exc) from None
        self._o = dom._ref   # the new ID, as createWithFlags
        return 0

    async def save(self, to: str) -> int:
        await self._conn._call("domain_save", self._o, to)
        self._o = dataclasses.replace(self._o, id=-1)
        return 0

    async def managedSave(self, flags: int = 0) -> int:  # noqa: N802
        await self._conn._call("domain_managed_save", self._o, flags)
        self._o = dataclasses.replace(self._o, id=-1)
        return 0

    async def rename(self, new_name: str, flags: int = 0) -> int:
        """The object takes the new name, as libvirt's client renames its own."""
        ret = await self._conn._call("domain_rename", self._o, new_name, flags)
        if ret.retcode == 0:
            self._o = dataclasses.replace(self._o, name=new_name)
        return ret.retcode  # type: ignore[no-any-return]

    async def schedulerType(self) -> tuple[str, int]:  # noqa: N802
        ret = await self._conn._call("domain_get_scheduler_type", self._o)
        return (ret.type, ret.nparams)

    # tuples where libvirt-python's bindings make them
    async def blockStats(self, path: str) -> tuple[int, ...]:  # noqa: N802
        """(rd_req, rd_bytes, wr_req, wr_bytes, errs)."""
        ret = await self._object_api("block_stats", path)
        return tuple(getattr(ret, name) for name in ret.__slots__)

    async def interfaceStats(self, path: str) -> tuple[int, ...]:  # noqa: N802
        """(rx_bytes, rx_packets, rx_errs, rx_drop, tx_bytes, tx_packets, tx_errs,
        tx_drop)."""
        ret = await self._object_api("interface_stats", path)
        return tuple(getattr(ret, name) for name in ret.__slots__)

    async def fsInfo(self, flags: int = 0) -> list[tuple[str, str, str, list[str]]]:  # noqa: N802
        """[(mountpoint, name, fstype, [device aliases])]."""
        return [(fs.mountpoint, fs.name, fs.fstype, list(fs.dev_aliases))
                for fs in await self._object_api("get_fs_info", flags)]

    async def schedulerParameters(self) -> dict[str, Any]:  # noqa: N802
        _, count = await self.schedulerType()
        ret = await self._conn._call("domain_get_scheduler_parameters", self._o, count)
        return to_dict(ret.params)

    async def schedulerParametersFlags(self, flags: int = 0) -> dict[str, Any]:  # noqa: N802
        _, count = await self.schedulerType()
        ret = await self._conn._call("domain_get_scheduler_parameters_flags", self._o,
                                     count, flags)
        return to_dict(ret.params)

    # typed-parameter setters: libvirt-python's binding types each value as the getter
    # reports it (_set_as_getter)
    async def setSchedulerParameters(self, params: dict[str, Any]) -> int:  # noqa: N802
        return await _set_as_getter(params, lambda: self._scheduler_types(None), lambda typed:
                                    self._conn._call("domain_set_scheduler_parameters",
                                                     self._o, typed))

    async def setSchedulerParametersFlags(self, params: dict[str, Any],  # noqa: N802
                                          flags: int = 0) -> int:
        return await _set_as_getter(params, lambda: self._scheduler_types(flags), lambda typed:
                                    self._conn._call("domain_set_scheduler_parameters_flags",
                                                     self._o, typed, flags))

    async def _scheduler_types(self, flags: int | None) -> dict[str, int]:
        _, count = await self.schedulerType()
        if not count:
            return {}
        ret = await (self._conn._call("domain_get_scheduler_parameters", self._o, count)
                     if flags is None else self._conn._call(
                         "domain_get_scheduler_parameters_flags", self._o, count, flags))
        return {p.field: p.value.type for p in ret.params}

    async def setBlkioParameters(self, params: dict[str, Any], flags: int = 0) -> int:  # noqa: N802
        return await _set_as_getter(
            params, lambda: handle(self)._typed_param_types_get_blkio_parameters(flags),
            lambda typed: self._conn._call("domain_set_blkio_parameters", self._o, typed,
                                           flags))

    async def setMemoryParameters(self, params: dict[str, Any], flags: int = 0) -> int:  # noqa: N802
        return await _set_as_getter(
            params, lambda: handle(self)._typed_param_types_get_memory_parameters(flags),
            lambda typed: self._conn._call("domain_set_memory_parameters", self._o, typed,
                                           flags))

    async def setNumaParameters(self, params: dict[str, Any], flags: int = 0) -> int:  # noqa: N802
        return await _set_as_getter(
            params, lambda: handle(self)._typed_param_types_get_numa_parameters(flags),
            lambda typed: self._conn._call("domain_set_numa_parameters", self._o, typed,
                                           flags))

    async def setInterfaceParameters(self, device: str, params: dict[str, Any],  # noqa: N802
                                     flags: int = 0) -> int:
        return await _set_as_getter(
            params, lambda: handle(self)._typed_param_types_get_interface_parameters(
                device, flags),
            lambda typed: self._conn._call("domain_set_interface_parameters", self._o,
                                           device, typed, flags))

    async def setBlockIoTune(self, disk: str, params: dict[str, Any],  # noqa: N802
                             flags: int = 0) -> int:
        return await _set_as_getter(
            params, lambda: handle(self)._typed_param_types_get_block_io_tune(disk, flags),
            lambda typed: self._conn._call("domain_set_block_io_tune", self._o, disk, typed,
                                           flags))

    async def setPerfEvents(self, params: dict[str, Any], flags: int = 0) -> int:  # noqa: N802
        return await _set_as_getter(
            params, lambda: handle(self)._typed_param_types_get_perf_events(flags),
            lambda typed: self._conn._call("domain_set_perf_events", self._o, typed, flags))

    async def memoryStats(self) -> dict[str, int]:  # noqa: N802
        ret = await self._conn._call("domain_memory_stats", self._o, 16, 0)
        return {_MEMORY_STAT_TAGS.get(s.tag, str(s.tag)): s.val for s in ret.stats}

    # the metadata type is an int to libvirt-python (aiovirt's also takes its name)
    async def setMetadata(self, type: int, metadata: str | None, key: str | None,  # noqa: N802,A002
                          uri: str | None, flags: int = 0) -> int:
        kind = _c_int(type, -(1 << 31), (1 << 31) - 1)
        try:
            await handle(self).set_metadata(metadata, type=kind, key=key, uri=uri, flags=flags)
        except TRANSLATED as exc:
            raise _translate(exc) from None
        return 0

    async def metadata(self, type: int, uri: str | None, flags: int = 0) -> str:  # noqa: A002
        kind = _c_int(type, -(1 << 31), (1 << 31) - 1)
        try:
            return await handle(self).metadata(type=kind, uri=uri, flags=flags)  # type: ignore[no-any-return]
        except TRANSLATED as exc:
            raise _translate(exc) from None

    async def revertToSnapshot(self, snap: virDomainSnapshot, flags: int = 0) -> int:  # noqa: N802
        snapshot = _object_arg(snap, virDomainSnapshot, C.VIR_ERR_INVALID_DOMAIN_SNAPSHOT,
                               C.VIR_FROM_DOMAIN_SNAPSHOT,
                               "Invalid domain snapshot: virDomainRevertToSnapshot")
        await self._conn._call("domain_revert_to_snapshot", snapshot._o, flags)
        return 0

    async def screenshot(self, stream: virStream, screen: int, flags: int = 0) -> str:
        mime, raw = await _open_stream(stream, "virDomainScreenshot",
                                       lambda: handle(self).screenshot(screen, flags))
        stream._s = raw
        return mime  # type: ignore[no-any-return]

    async def openConsole(self, dev_name: str | None, st: virStream,  # noqa: N802
                          flags: int = 0) -> int:
        st._s = await _open_stream(st, "virDomainOpenConsole",
                                   lambda: handle(self).open_console(dev_name, flags))
        return 0

    async def openChannel(self, name: str | None, st: virStream,  # noqa: N802
                          flags: int = 0) -> int:
        st._s = await _open_stream(st, "virDomainOpenChannel",
                                   lambda: handle(self).open_channel(name, flags))
        return 0

    async def interfaceAddresses(self, source: int, flags: int = 0  # noqa: N802
                                 ) -> dict[str, Any]:
        ret = await self._conn._call("domain_interface_addresses", self._o, source, flags)
        return {i.name: {"hwaddr": i.hwaddr, "addrs": [
            {"type": a.type, "addr": a.addr, "prefix": a.prefix} for a in i.addrs]}
            for i in ret.ifaces}

    async def _host_cpus(self) -> int:
        """How many CPUs the host has, as libvirt-python counts them for cpumaps
        (virNodeGetCPUMap; the node's info when that fails)."""
        try:
            return (await handle(self._conn).node_get_cpu_map(0, 0, 0)).ret  # type: ignore[no-any-return]
        except TRANSLATED:
            return (await self._conn.getInfo())[2]  # type: ignore[no-any-return]

    async def _cpumaps(self) -> tuple[int, int, int]:
        """(host CPUs, bytes per cpumap, the domain's vCPUs)."""
        try:
            cpus = await self._host_cpus()
            vcpus = (await handle(self).get_info()).nrVirtCpu
        except TRANSLATED as exc:
            raise _translate(exc) from None
        return cpus, (cpus + 7) // 8, vcpus

    async def vcpus(self) -> tuple[list[Any], list[Any]]:
        """([(number, state, cpuTime, cpu) per vCPU], [cpumap (tuple of bool) per vCPU])."""
        cpus, maplen, vcpus = await self._cpumaps()
        try:
            ret = await handle(self).get_vcpus(vcpus, maplen)
        except TRANSLATED as exc:
            raise _translate(exc) from None
        info = [(v.number, v.state, v.cpu_time, v.cpu) for v in ret.info]
        return (info, _split_cpumaps(ret.cpumaps, len(ret.info), maplen, cpus))

    async def vcpuPinInfo(self, flags: int = 0) -> list[tuple[bool, ...]]:  # noqa: N802
        cpus, maplen, vcpus = await self._cpumaps()
        try:
            ret = await handle(self).get_vcpu_pin_info(vcpus, maplen, flags)
        except TRANSLATED as exc:
            raise _translate(exc) from None
        return _split_cpumaps(ret.cpumaps, ret.num, maplen, cpus)

    async def emulatorPinInfo(self, flags: int = 0) -> tuple[bool, ...] | None:  # noqa: N802
        """The emulator's cpumap, or None when the domain has none (libvirt returns 0)."""
        try:
            cpus = await self._host_cpus()
            ret = await handle(self).get_emulator_pin_info((cpus + 7) // 8, flags)
        except TRANSLATED as exc:
            raise _translate(exc) from None
        if ret.ret == 0:
            return None
        return _split_cpumaps(ret.cpumaps, 1, (cpus + 7) // 8, cpus)[0]

    async def ioThreadInfo(self, flags: int = 0) -> list[tuple[int, list[bool]]]:  # noqa: N802
        """[(IOThread id, [pinned? per host CPU])]."""
        cpus = await self._host_cpus()
        threads = await self._object_api("get_io_thread_info", flags)
        return [(t.iothread_id, list(_split_cpumaps(t.cpumap, 1, len(t.cpumap), cpus)[0]))
                for t in threads]

    async def _cpumap(self, cpumap: Any) -> bytes:
        """libvirt-python's cpumap (a tuple, each item's truth for one host CPU) as the
        bytes libvirt takes: one bit per host CPU."""
        cpus = await self._host_cpus()
        if not isinstance(cpumap, tuple):
            raise TypeError("Unexpected type, tuple is required")
        raw = bytearray((cpus + 7) // 8)
        for cpu, used in enumerate(cpumap[:cpus]):
            if used:
                raw[cpu // 8] |= 1 << (cpu % 8)
        return bytes(raw)

    async def pinVcpu(self, vcpu: int, cpumap: tuple[bool, ...]) -> int:  # noqa: N802
        await self._object_api("pin_vcpu", vcpu, await self._cpumap(cpumap))
        return 0

    async def pinVcpuFlags(self, vcpu: int, cpumap: tuple[bool, ...],  # noqa: N802
                           flags: int = 0) -> int:
        await self._object_api("pin_vcpu_flags", vcpu, await self._cpumap(cpumap), flags)
        return 0

    async def pinEmulator(self, cpumap: tuple[bool, ...], flags: int = 0) -> int:  # noqa: N802
        await self._object_api("pin_emulator", await self._cpumap(cpumap), flags)
        return 0

    async def pinIOThread(self, iothread_val: int, cpumap: tuple[bool, ...],  # noqa: N802
                          flags: int = 0) -> int:
        await self._object_api("pin_io_thread", iothread_val, await self._cpumap(cpumap),
                               flags)
        return 0

    async def getCPUStats(self, total: bool, flags: int = 0) -> list[dict[str, Any]]:  # noqa: N802
        """[{totals}] when ``total``, else one dict per host CPU (in chunks of 128 CPUs, the
        protocol's limit, as libvirt-python asks)."""
        dom = handle(self)
        try:
            if total:
                return await dom.get_cpu_stats(-1, 1, flags)  # type: ignore[no-any-return]
            # how many CPUs (nparams 0, ncpus 0), then per chunk
            count = (await self._conn._c.rpc.domain_get_cpu_stats(
                self._o, 0, 0, 0, flags | _STRING_OKAY)).nparams
            stats: list[dict[str, Any]] = []
            for start in range(0, count, 128):
                chunk = await dom.get_cpu_stats(start, min(128, count - start), flags)
                stats.extend(chunk)
            return stats
        except TRANSLATED as exc:
            raise _translate(exc) from None

    async def diskErrors(self, flags: int = 0) -> dict[str, int]:  # noqa: N802
        """{disk: VIR_DOMAIN_DISK_ERROR_*} (count first, then the errors, as libvirt-python)."""
        dom = handle(self)
        try:
            count = (await dom.get_disk_errors(0, flags)).nerrors
            if not count:
                return {}
            ret = await dom.get_disk_errors(count, flags)
        except TRANSLATED as exc:
            raise _translate(exc) from None
        return {e.disk: e.error for e in ret.errors}

    async def getTime(self, flags: int = 0) -> dict[str, int]:  # noqa: N802
        ret = await self._object_api("get_time", flags)
        return {"seconds": ret.seconds, "nseconds": ret.nseconds}

    async def setTime(self, time: dict[str, int] | None = None, flags: int = 0) -> int:  # noqa: N802
        """``time`` {"seconds": s, "nseconds": ns} (nseconds optional), or None with a
        flag (VIR_DOMAIN_TIME_SYNC); LookupError and TypeError as libvirt-python's."""
        seconds = nseconds = 0
        if isinstance(time, dict):
            if "seconds" not in time:
                raise LookupError("Dictionary must contains 'seconds'")
            seconds = _c_int(time["seconds"], -(1 << 63), (1 << 63) - 1)
            if "nseconds" in time:
                nseconds = _c_int(time["nseconds"], 0, (1 << 32) - 1)
            elif len(time) > 1:
                raise LookupError("Dictionary contains unknown key")
        elif time is not None or not flags:
            raise TypeError("time must be a dictionary or None with flags set")
        await self._object_api("set_time", seconds, nseconds, flags)
        return 0

    # a list of strings, or anything else for none (libvirt-python passes NULL, 0: all of
    # the guest's filesystems, or no keys)
    async def fsFreeze(self, mountpoints: list[str] | None = None,  # noqa: N802
                       flags: int = 0) -> int:
        return await self._object_api("fs_freeze", _strings(mountpoints), flags)  # type: ignore[no-any-return]

    async def fsThaw(self, mountpoints: list[str] | None = None,  # noqa: N802
                     flags: int = 0) -> int:
        return await self._object_api("fs_thaw", _strings(mountpoints), flags)  # type: ignore[no-any-return]

    async def authorizedSSHKeysSet(self, user: str, keys: list[str] | None = None,  # noqa: N802
                                   flags: int = 0) -> int:
        if not isinstance(user, str):
            raise TypeError(f"user must be str, not {type(user).__name__}")
        await self._object_api("authorized_ssh_keys_set", user, _strings(keys), flags)
        return 0

    async def sendKey(self, codeset: int, holdtime: int, keycodes: list[int],  # noqa: N802
                      nkeycodes: int, flags: int = 0) -> int:
        """libvirt-python's checks: ``keycodes`` a list of ``nkeycodes`` (at most 16)
        codes, else libvirtError with no error behind it."""
        if not isinstance(keycodes, list) or nkeycodes != len(keycodes) or nkeycodes > 16:
            raise libvirtError("virDomainSendKey() failed")
        codes = [_c_int(code, 0, (1 << 32) - 1) for code in keycodes]
        await self._object_api("send_key", codeset, holdtime, codes, flags)
        return 0

    # typed parameters without a getter: typed as libvirt declares them (_params_hinted)
    async def blockCopy(self, disk: str, destxml: str,  # noqa: N802
                        params: dict[str, Any] | None = None, flags: int = 0) -> int:
        typed = [] if params is None else _params_hinted(params, "virDomainBlockCopy",
                                                         "block params")
        await self._conn._call("domain_block_copy", self._o, disk, destxml, typed, flags)
        return 0

    async def setIOThreadParams(self, iothread_val: int, params: dict[str, Any],  # noqa: N802
                                flags: int = 0) -> int:
        typed = _params_hinted(params, "virDomainSetIOThreadParams", "IOThread polling params")
        await self._conn._call("domain_set_iothread_params", self._o, iothread_val, typed,
                               flags)
        return 0

    async def setLaunchSecurityState(self, params: dict[str, Any],  # noqa: N802
                                     flags: int = 0) -> int:
        typed = _params_hinted(params, "virDomainSetLaunchSecurityState",
                               "Launch security state params")
        await self._conn._call("domain_set_launch_security_state", self._o, typed, flags)
        return 0

    async def saveParams(self, params: dict[str, Any], flags: int = 0) -> int:  # noqa: N802
        typed = _params_hinted(params, "virDomainSaveParams", "Save params")
        await self._conn._call("domain_save_params", self._o, typed, flags)
        return 0

    # -- migration: libvirt's client checks (virDomainMigrate*), then the object API ------
    async def migrate(self, dconn: virConnect, flags: int = 0, dname: str | None = None,
                      uri: str | None = None, bandwidth: int = 0) -> virDomain:
        return await self._migrate_managed("virDomainMigrate", dconn, None, flags, dname,
                                           uri, bandwidth)

    async def migrate2(self, dconn: virConnect, dxml: str | None = None, flags: int = 0,
                       dname: str | None = None, uri: str | None = None,
                       bandwidth: int = 0) -> virDomain:
        return await self._migrate_managed("virDomainMigrate2", dconn, dxml, flags, dname,
                                           uri, bandwidth)

    async def migrate3(self, dconn: virConnect, params: dict[str, Any],
                       flags: int = 0) -> virDomain:
        typed = _params_hinted(params, "virDomainMigrate3", "migration params")
        _migration_flag_checks(flags, parallel=False)
        if flags & C.VIR_MIGRATE_PEER2PEER:
            raise _domain_error(C.VIR_ERR_INVALID_ARG,
                                "use virDomainMigrateToURI3 for peer-to-peer migration")
        if flags & C.VIR_MIGRATE_TUNNELLED:
            raise _domain_error(C.VIR_ERR_INVALID_ARG, "cannot perform tunnelled migration "
                                "without using peer2peer flag")
        await self._offline_checks(flags, dconn)
        await self._change_protection_check(flags)
        if await _supports(self._conn, _MIGRATION_PARAMS) and await _supports(
                dconn, _MIGRATION_PARAMS):
            raise _client_driven("virDomainMigrate3")
        if any(p.field not in _MIGRATE_COMPAT_PARAMS for p in typed):
            raise _domain_error(C.VIR_ERR_ARGUMENT_UNSUPPORTED, "Migration APIs with "
                                "extensible parameters are not supported but extended "
                                "parameters were passed")
        dxml = next((p.value.value for p in typed if p.field == C.VIR_MIGRATE_PARAM_DEST_XML),
                    None)
        await self._client_driven_versions("virDomainMigrate3", dconn, dxml)
        raise AssertionError("unreachable")

    async def _migrate_managed(self, function: str, dconn: Any, dxml: str | None, flags: int,
                               dname: str | None, uri: str | None,
                               bandwidth: int) -> virDomain:
        """virDomainMigrate and virDomainMigrate2: peer to peer (the source's daemon
        migrates to ``dconn``'s URI), or driven by the client, which aiovirt does not do."""
        if not isinstance(dconn, virConnect):
            raise _domain_error(C.VIR_ERR_INVALID_CONN, function)
        _migration_flag_checks(flags)
        await self._offline_checks(flags, dconn)
        if flags & C.VIR_MIGRATE_PEER2PEER:
            if not await _supports(self._conn, _MIGRATION_P2P):
                raise _domain_error(C.VIR_ERR_NO_SUPPORT, function)
            dest = await dconn.getURI()
            if function == "virDomainMigrate":   # its uri is the destination daemon's
                dest, uri = uri or dest, None
            await self._migrate_unmanaged(dxml, flags, dname, dest, uri, bandwidth)
            return await dconn.lookupByName(dname or self.name())
        await self._change_protection_check(flags)
        if flags & C.VIR_MIGRATE_TUNNELLED:
            raise _domain_error(C.VIR_ERR_OPERATION_INVALID, "cannot perform tunnelled "
                                "migration without using peer2peer flag")
        await self._client_driven_versions(function, dconn, dxml)
        raise AssertionError("unreachable")

    async def _client_driven_versions(self, function: str, dconn: virConnect,
                                      dxml: str | None) -> None:
        """The migration protocol versions both daemons support (3, 2, 1): each one is
        driven by the client, which aiovirt does not implement; none: NO_SUPPORT."""
        for feature in (_MIGRATION_V3, _MIGRATION_V2, _MIGRATION_V1):
            if await _supports(self._conn, feature) and await _supports(dconn, feature):
                if dxml and feature != _MIGRATION_V3:
                    raise _domain_error(C.VIR_ERR_ARGUMENT_UNSUPPORTED, "Unable to change "
                                        "target guest XML during migration")
                raise _client_driven(function)
        raise _domain_error(C.VIR_ERR_NO_SUPPORT, function)

    async def migrateToURI(self, duri: str, flags: int = 0,  # noqa: N802
                           dname: str | None = None, bandwidth: int = 0) -> int:
        if duri is None:
            raise _domain_error(C.VIR_ERR_INVALID_ARG,
                                "duri in virDomainMigrateToURI must not be NULL")
        await self._unmanaged_checks(flags)
        peer = flags & C.VIR_MIGRATE_PEER2PEER
        await self._migrate_unmanaged(None, flags, dname, duri if peer else None,
                                      None if peer else duri, bandwidth)
        return 0

    async def migrateToURI2(self, dconnuri: str | None = None,  # noqa: N802
                            miguri: str | None = None, dxml: str | None = None,
                            flags: int = 0, dname: str | None = None,
                            bandwidth: int = 0) -> int:
        await self._unmanaged_checks(flags)
        await self._migrate_unmanaged(dxml, flags, dname,
                                      _dconnuri(dconnuri, flags, "virDomainMigrateToURI2"),
                                      miguri, bandwidth)
        return 0

    async def migrateToURI3(self, dconnuri: str | None, params: dict[str, Any],  # noqa: N802
                            flags: int = 0) -> int:
        typed = _params_hinted(params, "virDomainMigrateToURI3", "migration params")
        await self._unmanaged_checks(flags)
        await self._migrate_params(_dconnuri(dconnuri, flags, "virDomainMigrateToURI3"),
                                   typed, flags)
        return 0

    async def _unmanaged_checks(self, flags: int) -> None:
        """virDomainMigrateToURI*'s checks (virDomainMigrateUnmanagedCheckCompat)."""
        _migration_flag_checks(flags)
        if flags & C.VIR_MIGRATE_OFFLINE and not await _supports(self._conn,
                                                                   _MIGRATION_OFFLINE):
            raise _domain_error(C.VIR_ERR_ARGUMENT_UNSUPPORTED,
                                "offline migration is not supported by the source host")
        peer = flags & C.VIR_MIGRATE_PEER2PEER
        if not await _supports(self._conn, _MIGRATION_P2P if peer else _MIGRATION_DIRECT):
            raise _domain_error(C.VIR_ERR_ARGUMENT_UNSUPPORTED, f"{'p2p' if peer else 'direct'}"
                                " migration is not supported by the source host")

    async def _offline_checks(self, flags: int, dconn: virConnect) -> None:
        if flags & C.VIR_MIGRATE_OFFLINE:
            for conn, which in ((self._conn, "source"), (dconn, "destination")):
                if not await _supports(conn, _MIGRATION_OFFLINE):
                    raise _domain_error(C.VIR_ERR_ARGUMENT_UNSUPPORTED, "offline migration "
                                        f"is not supported by the {which} host")

    async def _change_protection_check(self, flags: int) -> None:
        if flags & C.VIR_MIGRATE_CHANGE_PROTECTION and not await _supports(
                self._conn, _CHANGE_PROTECTION):
            raise _domain_error(C.VIR_ERR_ARGUMENT_UNSUPPORTED,
                                "cannot enforce change protection")

    async def _migrate_unmanaged(self, dxml: str | None, flags: int, dname: str | None,
                                 dconnuri: str | None, miguri: str | None,
                                 bandwidth: int) -> None:
        params: dict[str, Any] = {}
        for name, value in ((C.VIR_MIGRATE_PARAM_URI, miguri),
                            (C.VIR_MIGRATE_PARAM_DEST_NAME, dname),
                            (C.VIR_MIGRATE_PARAM_DEST_XML, dxml)):
            if value is not None:
                params[name] = value
        params[C.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth
        await self._migrate_params(dconnuri, _params_hinted(params, "virDomainMigrateToURI3",
                                                             "migration params"), flags)

    async def _migrate_params(self, dconnuri: str | None, typed: list[Any],
                              flags: int) -> None:
        """One MIGRATE_PERFORM3_PARAMS, the source's daemon doing the rest
        (virDomainMigrateUnmanagedParams)."""
        if flags & C.VIR_MIGRATE_PEER2PEER and _is_local(dconnuri):
            raise _domain_error(C.VIR_ERR_INVALID_ARG,
                                "Attempt to migrate guest to the same host")
        await self._conn._call("domain_migrate_perform3_params", self._o, dconnuri, typed,
                               b"", flags)

    async def securityLabel(self) -> list[Any]:  # noqa: N802
        ret = await self._object_api("get_security_label")
        return [_c_string(ret.label), bool(ret.enforcing)]

    async def securityLabelList(self) -> list[list[Any]]:  # noqa: N802
        labels = await self._object_api("get_security_label_list")
        return [[_c_string(label.label), bool(label.enforcing)] for label in labels]

    async def _object_api(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(handle(self), method)(*args)
        except TRANSLATED as exc:
            raise _translate(exc) from None

    # libvirt-python returns None (raising nothing) when these fail: its wrappers do not
    # check the C binding's None
    async def guestVcpus(self, flags: int = 0) -> dict[str, Any] | None:  # noqa: N802
        return await _none_on_error(self._object_api("get_guest_vcpus", flags))

    async def migrateGetCompressionCache(self, flags: int = 0) -> int | None:  # noqa: N802
        return await _none_on_error(self._object_api("migrate_get_compression_cache", flags))

    async def migrateGetMaxDowntime(self, flags: int = 0) -> int | None:  # noqa: N802
        return await _none_on_error(self._object_api("migrate_get_max_downtime", flags))


_STRING_OKAY = 4   # VIR_TYPED_PARAM_STRING_OKAY


async def _none_on_error(coro: Any) -> Any:
    """libvirt-python's result for calls whose wrapper lets a failure through as None (the
    error is recorded as the last error all the same)."""
    from .errors import set_last_error
    try:
        return await coro
    except libvirtError as exc:
        set_last_error(exc.err)
        return None


def _c_int(value: Any, low: int, high: int) -> int:
    """An int argument as libvirt-python's C conversion takes it: TypeError for what is not
    an int, OverflowError out of the C type's range."""
    number = operator.index(value)
    if not low <= number <= high:
        raise OverflowError(f"{number} does not fit the C type ({low}..{high})")
    return number


def _strings(values: Any) -> list[str]:
    """libvirt-python's list of strings argument: a list (each item a str, else
    TypeError), anything else none at all."""
    if not isinstance(values, list):
        return []
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"expected str, not {type(value).__name__}")
    return values


def _c_string(raw: Any) -> str:
    """A fixed-size char array from the wire (NUL-padded bytes) as libvirt-python's str."""
    if isinstance(raw, (bytes, bytearray, list)):
        return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")
    return str(raw)


def _split_cpumaps(raw: bytes, count: int, maplen: int, cpus: int) -> list[tuple[bool, ...]]:
    """``count`` cpumaps of ``maplen`` bytes as libvirt-python's tuples of ``cpus`` bools."""
    raw = bytes(raw)
    return [tuple(bool(raw[i * maplen + cpu // 8] >> (cpu % 8) & 1) if
                  i * maplen + cpu // 8 < len(raw) else False for cpu in range(cpus))
            for i in range(count)]


_MEMORY_STAT_TAGS = {0: "swap_in", 1: "swap_out", 2: "major_fault", 3: "minor_fault",
                     4: "unused", 5: "available", 6: "actual", 7: "rss", 8: "usable",
                     9: "last_update", 10: "disk_caches", 11: "hugetlb_pgalloc",
                     12: "hugetlb_pgfail"}


class virNetwork(_UUIDNamed):  # noqa: N801
    _ref_type = "NonnullNetwork"


    async def portLookupByUUID(self, uuid: bytes) -> virNetworkPort:  # noqa: N802
        return await _lookup_by_uuid(self._conn, "network_port_lookup_by_uuid",
                                     "virNetworkPortLookupByUUID", uuid, self._o)

    async def DHCPLeases(self, mac: str | None = None, flags: int = 0  # noqa: N802
                         ) -> list[dict[str, Any]]:
        ret = await self._conn._call("network_get_dhcp_leases", self._o, mac, 1, flags)
        return [dataclasses.asdict(lease) for lease in ret.leases]


class virStoragePool(_UUIDNamed):  # noqa: N801
    _ref_type = "NonnullStoragePool"

    async def createXMLFrom(self, xmlDesc: str, clonevol: virStorageVol,  # noqa: N802,N803
                            flags: int = 0) -> virStorageVol:
        source = _object_arg(clonevol, virStorageVol, C.VIR_ERR_INVALID_STORAGE_VOL,
                             C.VIR_FROM_STORAGE,
                             "invalid storage volume pointer in virStorageVolCreateXMLFrom")
        try:
            vol = await handle(self).storage_vol_create_xml_from(xmlDesc, handle(source),
                                                                 flags)
        except TRANSLATED as exc:
            raise _translate(exc) from None
        return virStorageVol(self._conn, vol._ref)


class virSecret(_Object):  # noqa: N801
    _ref_type = "NonnullSecret"

    def UUID(self) -> bytes:  # noqa: N802
        return bytes(self._o.uuid)

    def UUIDString(self) -> str:  # noqa: N802
        return uuid_text(self._o.uuid)

    def usageType(self) -> int:  # noqa: N802
        return self._o.usageType  # type: ignore[no-any-return]

    def usageID(self) -> str:  # noqa: N802
        return self._o.usageID  # type: ignore[no-any-return]

    async def setValue(self, value: bytes | str, flags: int = 0) -> int:  # noqa: N802
        """``value`` bytes, or a str (its UTF-8), as libvirt-python takes it."""
        raw = value.encode() if isinstance(value, str) else value
        if raw is None:
            message = "invalid argument: value in virSecretSetValue must not be NULL"
            raise libvirtError(message, (C.VIR_ERR_INVALID_ARG, C.VIR_FROM_SECRET, message,
                                         C.VIR_ERR_ERROR, None, None, None, 0, 0))
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise TypeError(f"value must be bytes or str, not {type(value).__name__}")
        await self._conn._call("secret_set_value", self._o, bytes(raw), flags)
        return 0


class virNWFilter(_UUIDNamed):  # noqa: N801
    _ref_type = "NonnullNwfilter"


class virStorageVol(_Object):  # noqa: N801
    _ref_type = "NonnullStorageVol"

    def name(self) -> str:
        return self._o.name  # type: ignore[no-any-return]

    def key(self) -> str:
        return self._o.key  # type: ignore[no-any-return]

    async def upload(self, stream: virStream, offset: int, length: int,
                     flags: int = 0) -> int:
        stream._s = await _open_stream(stream, "virStorageVolUpload", lambda: handle(
            self).upload(offset, length, bool(flags & C.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM),
                         flags))
        return 0

    async def download(self, stream: virStream, offset: int, length: int,
                       flags: int = 0) -> int:
        stream._s = await _open_stream(stream, "virStorageVolDownload", lambda: handle(
            self).download(offset, length,
                           bool(flags & C.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM), flags))
        return 0


class virNodeDevice(_Object):  # noqa: N801
    _ref_type = "NonnullNodeDevice"

    def name(self) -> str:
        return self._o.name  # type: ignore[no-any-return]


class virInterface(_Object):  # noqa: N801
    _ref_type = "NonnullInterface"

    def name(self) -> str:
        return self._o.name  # type: ignore[no-any-return]

    def MACString(self) -> str:  # noqa: N802
        return self._o.mac  # type: ignore[no-any-return]


class virNWFilterBinding(_Object):  # noqa: N801
    _ref_type = "NonnullNwfilterBinding"

    def portDev(self) -> str:  # noqa: N802
        return self._o.portdev  # type: ignore[no-any-return]

    def filterName(self) -> str:  # noqa: N802
        return self._o.filtername  # type: ignore[no-any-return]


class _DomainChild(_Object):
    def getName(self) -> str:  # noqa: N802
        return self._o.name  # type: ignore[no-any-return]

    def domain(self) -> virDomain:
        return virDomain(self._conn, self._o.dom)

    getDomain = domain

    def getConnect(self) -> virConnect:  # noqa: N802
        return self._conn


class virDomainSnapshot(_DomainChild):  # noqa: N801
    _ref_type = "NonnullDomainSnapshot"


class virDomainCheckpoint(_DomainChild):  # noqa: N801
    _ref_type = "NonnullDomainCheckpoint"


class virNetworkPort(_Object):  # noqa: N801
    _ref_type = "NonnullNetworkPort"

    async def setParameters(self, params: dict[str, Any], flags: int = 0) -> int:  # noqa: N802
        return await _set_as_getter(
            params, lambda: handle(self)._typed_param_types_get_parameters(flags),
            lambda typed: self._conn._call("network_port_set_parameters", self._o, typed,
                                           flags), "Port has no settable attributes")

    def network(self) -> virNetwork:
        return virNetwork(self._conn, self._o.net)

    def UUID(self) -> bytes:  # noqa: N802
        return bytes(self._o.uuid)

    def UUIDString(self) -> str:  # noqa: N802
        return uuid_text(self._o.uuid)


class virStream:  # noqa: N801
    """A stream: bound to aiovirt's ``Stream`` by the call that opens it (``screenshot``,
    ``download``, ``upload``, ``openConsole``...)."""

    def __init__(self, conn: virConnect, flags: int = 0) -> None:
        self._conn = conn
        self._s: Any = None
        self._pending = b""
        self._hole = 0        # what is left of a hole of a sparse stream, not yet read
        self._ended = False   # aborted or finished: every use fails, as libvirt's

    def connect(self) -> virConnect:
        return self._conn

    def c_pointer(self) -> int:
        return id(self)

    def _stream(self, function: str) -> Any:
        if self._ended:
            raise _stream_closed()
        if self._s is None:   # libvirt's stream has no driver yet
            message = f"this function is not supported by the connection driver: {function}"
            raise libvirtError(message, (C.VIR_ERR_NO_SUPPORT, C.VIR_FROM_STREAMS, message,
                                         C.VIR_ERR_ERROR, None, None, None, 0, 0))
        return self._s

    async def _next(self, function: str) -> bool:
        """Read the next data or hole when none is pending; False at the end."""
        if self._ended or not (self._pending or self._hole):
            try:
                item = await self._stream(function).receive()
            except anyio.EndOfStream:
                return False
            except _STREAM_ERRORS as exc:
                raise _stream_error(exc) from None
            if isinstance(item, bytes):
                self._pending = item
            else:
                self._hole = item.length
        return True

    async def recv(self, nbytes: int) -> bytes:
        """Data, or zeros for a hole of a sparse stream (as libvirt's recv)."""
        return await self.recvFlags(nbytes)  # type: ignore[return-value]

    async def recvFlags(self, nbytes: int, flags: int = 0) -> bytes | int:  # noqa: N802
        """With VIR_STREAM_RECV_STOP_AT_HOLE, -3 at a hole (recvHole() says how long)."""
        if not await self._next("virStreamRecvFlags" if flags else "virStreamRecv"):
            return b""
        if self._hole:
            if flags & C.VIR_STREAM_RECV_STOP_AT_HOLE:
                return -3
            count = min(nbytes, self._hole)
            self._hole -= count
            return b"\0" * count
        data, self._pending = self._pending[:nbytes], self._pending[nbytes:]
        return data

    async def recvHole(self, flags: int = 0) -> int:  # noqa: N802
        """The length of the hole recvFlags stopped at (0 if none), as read."""
        stream = self._stream("virStreamRecvHole")
        if not getattr(stream, "sparse", False):
            raise _holes_unsupported()
        length, self._hole = self._hole, 0
        return length

    async def sendHole(self, length: int, flags: int = 0) -> int:  # noqa: N802
        stream = self._stream("virStreamSendHole")
        if not getattr(stream, "sparse", False):
            raise _holes_unsupported()
        try:
            await stream.send(Hole(length))
        except _STREAM_ERRORS as exc:
            raise _stream_error(exc) from None
        return 0

    async def send(self, data: bytes) -> int:
        try:
            await self._stream("virStreamSend").send(bytes(data))
        except _STREAM_ERRORS as exc:
            raise _stream_error(exc) from None
        return len(data)

    async def finish(self) -> int:
        try:
            stream = self._stream("virStreamFinish")
            if getattr(stream, "writable", False) or hasattr(stream, "finish"):
                await stream.finish()
        except _STREAM_ERRORS as exc:
            raise _stream_error(exc) from None
        self._ended = True
        return 0

    async def abort(self) -> int:
        if self._ended:
            raise _stream_closed()
        self._pending, self._hole = b"", 0   # what was read before is gone with it
        self._ended = self._s is not None
        if self._s is not None:
            try:
                await self._s.aclose()
            except _STREAM_ERRORS as exc:
                raise _stream_error(exc) from None
        return 0

    async def recvAll(self, handler: Callable[..., Any], opaque: Any) -> None:  # noqa: N802
        """libvirt-python's: ``handler(stream, data, opaque)`` per chunk until the end (a
        negative int from it fails); the stream aborted if the handler fails; not
        finished."""
        while True:
            data = await self.recv(_STREAM_BUF_SIZE)
            if not data:
                break
            try:
                ret = handler(self, data, opaque)
                if inspect.isawaitable(ret):
                    ret = await ret
                if isinstance(ret, int) and ret < 0:
                    raise RuntimeError(f"recvAll handler returned {ret}")
            except BaseException:
                try:
                    await self.abort()
                except Exception:   # noqa: BLE001 - the handler's error is the one raised
                    pass
                raise

    async def sendAll(self, handler: Callable[..., Any], opaque: Any) -> None:  # noqa: N802
        """libvirt-python's: send what ``handler(stream, nbytes, opaque)`` returns until it
        returns nothing; the stream aborted if the handler fails; not finished."""
        while True:
            try:
                data = handler(self, _STREAM_BUF_SIZE, opaque)
                if inspect.isawaitable(data):
                    data = await data
            except BaseException:
                try:
                    await self.abort()
                except Exception:   # noqa: BLE001 - the handler's error is the one raised
                    pass
                raise
            if not data:
                break
            await self.send(data)

    async def sparseRecvAll(self, handler: Callable[..., Any],  # noqa: N802
                            holeHandler: Callable[..., Any], opaque: Any) -> None:  # noqa: N803
        """libvirt-python's: ``handler(stream, data, opaque)`` per chunk of data,
        ``holeHandler(stream, length, opaque)`` per hole, until the end; a negative int from
        either aborts the stream (RuntimeError)."""
        while True:
            got = await self.recvFlags(_STREAM_BUF_SIZE, C.VIR_STREAM_RECV_STOP_AT_HOLE)
            if got == -3:
                length = await self.recvHole()
                ret = await _awaited(holeHandler(self, length, opaque))
                if isinstance(ret, int) and ret < 0:
                    await self.abort()
                    raise RuntimeError(f"holeHandler handler returned {ret}")
                continue
            if not got:
                break
            ret = await _awaited(handler(self, got, opaque))
            if isinstance(ret, int) and ret < 0:
                await self.abort()
                raise RuntimeError(f"sparseRecvAll handler returned {ret}")

    async def sparseSendAll(self, handler: Callable[..., Any],  # noqa: N802
                            holeHandler: Callable[..., Any],  # noqa: N803
                            skipHandler: Callable[..., Any], opaque: Any) -> None:  # noqa: N803
        """libvirt-python's: ``holeHandler(stream, opaque)`` says [in data?, section
        length]; a hole is sent and ``skipHandler(stream, length, opaque)`` skips it, data
        comes from ``handler(stream, nbytes, opaque)``, until it returns nothing."""
        while True:
            in_data, section = await _awaited(holeHandler(self, opaque))
            if not in_data and section > 0:
                if (await self.sendHole(section) < 0
                        or await _awaited(skipHandler(self, section, opaque)) < 0):
                    await self.abort()
                continue
            got = await _awaited(handler(self, min(_STREAM_BUF_SIZE, section), opaque))
            if isinstance(got, int) and got < 0:
                await self.abort()
                raise RuntimeError(f"sparseSendAll handler returned {got}")
            if not got:
                break
            await self.send(got)


async def _awaited(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


_STREAM_BUF_SIZE = 262144   # libvirt-python's virStorageVol.streamBufSize
# what a stream raises: aiovirt's errors, and anyio's for one used after its end
_STREAM_ERRORS = (*TRANSLATED, anyio.ClosedResourceError, anyio.BrokenResourceError)


def _object_arg(value: Any, cls: type, code: int, domain: int, message: str) -> Any:
    """An object argument as libvirt-python passes it: None is C's NULL, which libvirt
    refuses with ``code``/``domain``; anything but an object of ``cls`` has no ``_o``."""
    if value is None:
        raise libvirtError(message, (code, domain, message, C.VIR_ERR_ERROR, None, None, None,
                                     0, 0))
    if not isinstance(value, cls):
        raise AttributeError(f"'{type(value).__name__}' object has no attribute '_o'")
    return value


async def _open_stream(stream: Any, function: str, opening: Callable[[], Any]) -> Any:
    """What ``opening()`` returns (it opens aiovirt's stream for ``stream``, the caller's
    virStream, to take); None for the stream is libvirt's invalid stream pointer."""
    _object_arg(stream, virStream, C.VIR_ERR_INVALID_STREAM, C.VIR_FROM_STREAMS,
                f"invalid stream pointer in {function}")
    try:
        return await opening()
    except TRANSLATED as exc:
        raise _translate(exc) from None


def _holes_unsupported() -> libvirtError:
    message = "Requested operation is not valid: Holes are not supported with this stream"
    return libvirtError(message, (C.VIR_ERR_OPERATION_INVALID, C.VIR_FROM_RPC, message,
                                  C.VIR_ERR_ERROR, None, None, None, 0, 0))


def _stream_closed() -> libvirtError:
    """A stream used after its abort() or finish(), as libvirt's client says it."""
    message = "operation failed: stream is closed"
    return libvirtError(message, (C.VIR_ERR_OPERATION_FAILED, C.VIR_FROM_RPC, message,
                                  C.VIR_ERR_ERROR, None, None, None, 0, 0))


def _stream_error(exc: BaseException) -> libvirtError:
    if isinstance(exc, TRANSLATED):
        return from_exception(exc)  # type: ignore[return-value]
    message = f"the stream is closed: {exc}" if str(exc) else "the stream is closed"
    return libvirtError(message, (C.VIR_ERR_RPC, C.VIR_FROM_STREAMS, message, C.VIR_ERR_ERROR,
                                  None, None, None, 0, 0))


# -- the connection ---------------------------------------------------------------------------

# per event family: how many event ids libvirt-python's binding knows, its C function
_EVENT_IDS = {"domain": C.VIR_DOMAIN_EVENT_ID_LAST, "network": C.VIR_NETWORK_EVENT_ID_LAST,
              "storage_pool": C.VIR_STORAGE_POOL_EVENT_ID_LAST,
              "node_device": C.VIR_NODE_DEVICE_EVENT_ID_LAST,
              "secret": C.VIR_SECRET_EVENT_ID_LAST}
_EVENT_FUNCTIONS = {"domain": "virConnectDomainEventRegisterAny",
                    "network": "virConnectNetworkEventRegisterAny",
                    "storage_pool": "virConnectStoragePoolEventRegisterAny",
                    "node_device": "virConnectNodeDeviceEventRegisterAny",
                    "secret": "virConnectSecretEventRegisterAny"}

# per event family: (register procedure, deregister procedure)
_EVENT_FAMILIES = {
    "domain": ("connect_domain_event_callback_register_any",
               "connect_domain_event_callback_deregister_any"),
    "network": ("connect_network_event_register_any", "connect_network_event_deregister_any"),
    "storage_pool": ("connect_storage_pool_event_register_any",
                     "connect_storage_pool_event_deregister_any"),
    "node_device": ("connect_node_device_event_register_any",
                    "connect_node_device_event_deregister_any"),
    "secret": ("connect_secret_event_register_any", "connect_secret_event_deregister_any"),
}


class virConnect:  # noqa: N801
    """An open connection, with libvirt-python's ``virConnect`` methods as coroutines.

    Event callbacks are handed to ``dispatch(callback, args)``: by default called at once
    on the event loop (the blocking layer replaces it to run them where libvirt-python
    would)."""

    def __init__(self, conn: Connection, uri: str | None = None) -> None:
        self._c = conn
        self._uri = uri
        self._events: dict[int, tuple[EventSubscription[Any], asyncio.Task[None], Any]] = {}
        self._families: dict[int, str] = {}   # callback id -> its event family
        self._legacy: dict[Any, Any] = {}   # legacy callback -> opaque
        self._legacy_id: int | None = None  # their one subscription
        self._callback_ids = itertools.count()   # per connection, from 0, as libvirt's
        self.dispatch: Callable[[Callable[..., Any], tuple[Any, ...]], None] = _call_now
        self._close_callback: tuple[Callable[..., Any], Any] | None = None
        self._close_watch: tuple[EventSubscription[Any], asyncio.Task[None]] | None = None

    @classmethod
    async def open(cls, uri: str | None = None, *, readonly: bool = False,
                   auth: Any = None, **options: Any) -> virConnect:
        try:
            conn = await connect(uri or None, readonly=readonly, auth=auth, **options)
        except TRANSLATED as exc:
            raise _translate(exc) from None
        return cls(conn, uri)

    # -- calls ----------------------------------------------------------------------------
    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self._c.rpc, method)(*args)
        except TRANSLATED as exc:
            raise _translate(exc) from None

    async def _call_procedure(self, procedure: Any, args: Any) -> Any:
        try:
            return await self._c.call(procedure, args)
        except TRANSLATED as exc:
            raise _translate(exc) from None

    def c_pointer(self) -> int:
        return id(self)

    async def close(self) -> int:
        watch, self._close_watch = self._close_watch, None
        if watch is not None:   # closed here: the CLIENT reason below, not the watcher's
            watch[1].cancel()
        alive = self._c.is_alive
        alive = alive() if callable(alive) else alive
        for callback_id in list(self._events):
            await self._deregister(callback_id)
        await self._c.close()
        callback = self._close_callback
        if callback is not None and alive:   # once: not again after the connection was lost
            self.dispatch(callback[0], (self, C.VIR_CONNECT_CLOSE_REASON_CLIENT, callback[1]))
        return 0

    async def isAlive(self) -> int:  # noqa: N802
        alive = self._c.is_alive
        return int(alive() if callable(alive) else alive)

    async def getInfo(self) -> list[Any]:  # noqa: N802
        ret = await self._call("node_get_info")
        model = bytes(ret.model).split(b"\0", 1)[0].decode(errors="replace")
        return [model, ret.memory >> 10, ret.cpus, ret.mhz, ret.nodes, ret.sockets,
                ret.cores, ret.threads]

    async def allocPages(self, pages: dict[int, int], startCell: int = 0,  # noqa: N802,N803
                         cellCount: int = 0, flags: int = 0) -> int:  # noqa: N803
        """``pages`` {page size in KiB: count}."""
        if not pages:
            raise LookupError("Need non-empty dictionary to pages attribute")
        try:
            return await self._c.node_alloc_pages(  # type: ignore[no-any-return]
                [_c_int(size, 0, (1 << 32) - 1) for size in pages],
                [_c_int(count, 0, (1 << 64) - 1) for count in pages.values()],
                startCell, cellCount, flags)
        except TRANSLATED as exc:
            raise _translate(exc) from None

    async def setIdentity(self, params: dict[str, Any], flags: int = 0) -> int:  # noqa: N802
        typed = _params_hinted(params, "virConnectSetIdentity", "migration params")
        await self._call("connect_set_identity", typed, flags)
        return 0

    async def restoreParams(self, params: dict[str, Any], flags: int = 0) -> int:  # noqa: N802
        typed = _params_hinted(params, "virDomainRestoreParams", "Restore params")
        await self._call("domain_restore_params", typed, flags)
        return 0

    async def setMemoryParameters(self, params: dict[str, Any], flags: int = 0) -> int:  # noqa: N802
        return await _set_as_getter(
            params, lambda: self._c._typed_param_types_node_get_memory_parameters(flags),
            lambda typed: self._call("node_set_memory_parameters", typed, flags),
            "no settable attributes")

    async def getCellsFreeMemory(self, startCell: int, maxCells: int) -> list[int]:  # noqa: N802,N803
        ret = await self._call("node_get_cells_free_memory", startCell, maxCells)
        return list(ret.cells)

    async def getURI(self) -> str:  # noqa: N802
        """The URI this connection was opened with (libvirt answers it client-side: the
        client's URI, transport and socket included); the daemon's when none was given."""
        uri = getattr(getattr(self._c, "uri", None), "uri", None)
        if self._uri and uri:
            return str(uri)
        return (await self._call("connect_get_uri")).uri  # type: ignore[no-any-return]

    async def getCPUMap(self, flags: int = 0) -> tuple[int, list[bool], int]:  # noqa: N802
        """(CPUs, [online? per CPU], online CPUs)."""
        try:
            ret = await self._c.node_get_cpu_map(1, 1, flags)
        except TRANSLATED as exc:
            raise _translate(exc) from None
        return (ret.ret, list(_split_cpumaps(ret.cpumap, 1, (ret.ret + 7) // 8, ret.ret)[0]),
                ret.online)

    async def getSecurityModel(self) -> list[str]:  # noqa: N802
        try:
            ret = await self._c.node_get_security_model()
        except TRANSLATED as exc:
            raise _translate(exc) from None
        return [_c_string(ret.model), _c_string(ret.doi)]

    async def getAllDomainStats(self, stats: int = 0, flags: int = 0  # noqa: N802
                                ) -> list[tuple[virDomain, dict[str, Any]]]:
        try:
            records = await self._c.all_domain_stats(stats, flags)
        except TRANSLATED as exc:
            raise _translate(exc) from None
        return [(virDomain(self, dom._ref), values) for dom, values in records]

    async def domainListGetStats(self, doms: list[virDomain], stats: int = 0,  # noqa: N802
                                 flags: int = 0) -> list[tuple[virDomain, dict[str, Any]]]:
        if not all(isinstance(d, virDomain) for d in doms):
            message = "domain list contains non-domain elements"
            raise libvirtError(message, (C.VIR_ERR_INVALID_ARG, C.VIR_FROM_NONE, message,
                                         C.VIR_ERR_ERROR, None, None, None, 0, 0))
        try:
            records = await self._c.domain_list_get_stats([handle(d) for d in doms], stats,
                                                          flags)
        except TRANSLATED as exc:
            raise _translate(exc) from None
        return [(virDomain(self, dom._ref), values) for dom, values in records]

    async def registerCloseCallback(self, cb: Callable[..., Any], opaque: Any) -> int:  # noqa: N802
        """``cb(conn, reason, opaque)`` once when the connection closes: LOST (reason
        VIR_CONNECT_CLOSE_REASON_EOF when the daemon went away, KEEPALIVE when it stopped
        answering, ERROR otherwise; or the reason the daemon sends when its driver's
        connection closes: aiovirt's ``connection_closed_events``), or closed by ``close()``
        (CLIENT).  One callback per connection, as libvirt allows."""
        if self._close_callback is not None:
            message = "A close callback is already registered"
            raise libvirtError(message, (C.VIR_ERR_OPERATION_INVALID, C.VIR_FROM_REMOTE,
                                         message, C.VIR_ERR_ERROR, None, None, None, 0, 0))
        self._close_callback = (cb, opaque)
        if self._close_watch is None:
            sub = self._c.connection_closed_events(max_buffer=None)
            try:
                await sub.start()
            except TRANSLATED as exc:
                self._close_callback = None
                raise _translate(exc) from None

            async def watch() -> None:
                async for event in sub:
                    reason = getattr(event, "reason", None)
                    if reason is None:
                        continue   # Dropped / Resync markers
                    callback = self._close_callback
                    if callback is not None and self._close_watch is not None:
                        self._close_watch = None
                        self.dispatch(callback[0], (self, int(reason), callback[1]))
                    return

            self._close_watch = (sub, asyncio.get_running_loop().create_task(watch()))
        return 0

    async def unregisterCloseCallback(self) -> None:  # noqa: N802
        if self._close_callback is None:
            message = "A different callback was requested"
            raise libvirtError(message, (C.VIR_ERR_OPERATION_INVALID, C.VIR_FROM_REMOTE,
                                         message, C.VIR_ERR_ERROR, None, None, None, 0, 0))
        self._close_callback = None
        watch, self._close_watch = self._close_watch, None
        if watch is not None:
            watch[1].cancel()
            try:
                await watch[0].stop()
            except TRANSLATED:
                pass   # already gone with the connection

    async def virConnGetLastError(self) -> Any:  # noqa: N802
        """The last error this process recorded (libvirt's per-connection error: the
        compat layer keeps one, the last raised)."""
        from .errors import last_error
        return last_error()

    async def virConnResetLastError(self) -> None:  # noqa: N802
        from .errors import set_last_error
        set_last_error(None)

    async def setKeepAlive(self, interval: int, count: int) -> int:  # noqa: N802
        """From now on ping a quiet daemon every ``interval`` seconds, declaring it dead after
        ``count`` unanswered (``interval`` 0: no keepalive); 1 if the daemon has none."""
        if count < 0:
            message = "invalid argument: keepalive count must be >= 0"
            raise libvirtError(message, (C.VIR_ERR_INVALID_ARG, C.VIR_FROM_NONE, message,
                                         C.VIR_ERR_ERROR, None, None, None, 0, 0))
        return 0 if self._c.set_keepalive(interval, count) else 1

    async def newStream(self, flags: int = 0) -> virStream:  # noqa: N802
        return virStream(self, flags)

    async def listDomainsID(self) -> list[int]:  # noqa: N802
        return list((await self._call("connect_list_domains", _LIST_MAX)).ids)

    async def lookupByUUIDString(self, uuidstr: str) -> virDomain:  # noqa: N802
        return await self.lookupByUUID(_uuid_bytes(uuidstr, "virDomainLookupByUUIDString",
                                                   C.VIR_FROM_DOMAIN))

    async def networkLookupByUUIDString(self, uuidstr: str) -> virNetwork:  # noqa: N802
        return await self.networkLookupByUUID(_uuid_bytes(
            uuidstr, "virNetworkLookupByUUIDString", C.VIR_FROM_NETWORK))

    async def storagePoolLookupByUUIDString(self, uuidstr: str) -> virStoragePool:  # noqa: N802
        return await self.storagePoolLookupByUUID(_uuid_bytes(
            uuidstr, "virStoragePoolLookupByUUIDString", C.VIR_FROM_STORAGE))

    async def secretLookupByUUIDString(self, uuidstr: str) -> virSecret:  # noqa: N802
        return await self.secretLookupByUUID(_uuid_bytes(
            uuidstr, "virSecretLookupByUUIDString", C.VIR_FROM_SECRET))

    async def nwfilterLookupByUUIDString(self, uuidstr: str) -> virNWFilter:  # noqa: N802
        return await self.nwfilterLookupByUUID(_uuid_bytes(
            uuidstr, "virNWFilterLookupByUUIDString", C.VIR_FROM_NWFILTER))

    async def lookupByUUID(self, uuid: bytes) -> virDomain:  # noqa: N802
        return await _lookup_by_uuid(self, "domain_lookup_by_uuid", "virDomainLookupByUUID",
                                     uuid)

    async def networkLookupByUUID(self, uuid: bytes) -> virNetwork:  # noqa: N802
        return await _lookup_by_uuid(self, "network_lookup_by_uuid",
                                     "virNetworkLookupByUUID", uuid)

    async def storagePoolLookupByUUID(self, uuid: bytes) -> virStoragePool:  # noqa: N802
        return await _lookup_by_uuid(self, "storage_pool_lookup_by_uuid",
                                     "virStoragePoolLookupByUUID", uuid)

    async def secretLookupByUUID(self, uuid: bytes) -> virSecret:  # noqa: N802
        return await _lookup_by_uuid(self, "secret_lookup_by_uuid", "virSecretLookupByUUID",
                                     uuid)

    async def nwfilterLookupByUUID(self, uuid: bytes) -> virNWFilter:  # noqa: N802
        return await _lookup_by_uuid(self, "nwfilter_lookup_by_uuid",
                                     "virNWFilterLookupByUUID", uuid)

    # -- events ---------------------------------------------------------------------------
    async def _register(self, family: str, event_id: int, obj: Any, callback: Callable[..., Any],
                        opaque: Any) -> int:
        register_name, deregister_name = _EVENT_FAMILIES[family]
        if not 0 <= _c_int(event_id, -(1 << 31), (1 << 31) - 1) < _EVENT_IDS[family]:
            # libvirt-python's binding has no callback for it: it fails without calling
            raise libvirtError(f"{_EVENT_FUNCTIONS[family]}() failed")
        ref = obj._o if obj is not None else None
        rpc = self._c.rpc

        async def register() -> int:
            return (await getattr(rpc, register_name)(event_id, ref)).callbackID  # type: ignore[no-any-return]

        async def deregister(daemon_id: int) -> None:
            await getattr(rpc, deregister_name)(daemon_id)

        def convert(body: Any) -> Any:
            return body

        key = (event_id, bytes(getattr(ref, "uuid", b"")) or getattr(ref, "name", None)
               if ref is not None else None)
        sub = EventSubscription(self._c, family, (event_id, key), register, deregister,
                                convert, max_buffer=None)
        callback_id = await self._subscribe(sub, lambda body: _event_args(self, body),
                                            callback, opaque)
        self._families[callback_id] = family
        return callback_id

    async def _subscribe(self, sub: EventSubscription[Any], args_of: Callable[[Any], Any],
                         callback: Callable[..., Any], opaque: Any) -> int:
        """Start ``sub``; each event it yields calls ``callback(self, *args_of(event),
        opaque)`` through ``dispatch``.  Returns the callback id (per connection, from 0)."""
        # the id is taken first: libvirt's client takes it before asking the daemon, and a
        # registration the daemon refuses has used it up all the same
        callback_id = next(self._callback_ids)
        try:
            await sub.start()
        except TRANSLATED as exc:
            raise _translate(exc) from None
        events = self._events

        def deliver(*args: Any) -> Any:
            # an event queued before its deregistration is not delivered after it (libvirt
            # skips callbacks marked deleted): ids are never reused on a connection
            if callback_id in events:
                return callback(*args)
            return None

        async def pump() -> None:
            async for body in sub:
                if not dataclasses.is_dataclass(body):
                    continue   # Dropped / Resync markers
                self.dispatch(deliver, (self, *args_of(body), opaque))

        task = asyncio.get_running_loop().create_task(pump())
        self._events[callback_id] = (sub, task, callback)
        return callback_id

    async def _deregister(self, callback_id: int, family: str | None = None) -> None:
        """Drop callback ``callback_id``; ``family``: the family of the deregistering call,
        which libvirt's client then asks the daemon about: one of another family's
        callback is dropped all the same, and the daemon's refusal raised."""
        entry = self._events.pop(callback_id, None)
        if entry is None:
            message = f"could not find event callback {callback_id} for deletion"
            raise libvirtError(message, (C.VIR_ERR_INVALID_ARG, C.VIR_FROM_NONE, message,
                                         C.VIR_ERR_ERROR, None, None, None, 0, 0))
        sub, task, _ = entry
        task.cancel()
        try:
            await sub.stop()
        except TRANSLATED as exc:
            raise _translate(exc) from None
        registered = self._families.pop(callback_id, None)
        if family is not None and registered is not None and registered != family:
            message = (f"internal error: no {family.replace('_', ' ')} event callback with "
                       f"id {callback_id}")
            raise libvirtError(message, (C.VIR_ERR_INTERNAL_ERROR, C.VIR_FROM_RPC, message,
                                         C.VIR_ERR_ERROR, None, None, None, 0, 0))

    async def domainEventRegisterAny(self, dom: virDomain | None, eventID: int,  # noqa: N802,N803
                                     cb: Callable[..., Any], opaque: Any) -> int:
        return await self._register("domain", eventID, dom, cb, opaque)

    async def domainEventDeregisterAny(self, callbackID: int) -> None:  # noqa: N802,N803
        await self._deregister(callbackID, "domain")

    async def networkEventDeregisterAny(self, callbackID: int) -> None:  # noqa: N802,N803
        await self._deregister(callbackID, "network")

    async def storagePoolEventDeregisterAny(self, callbackID: int) -> None:  # noqa: N802,N803
        await self._deregister(callbackID, "storage_pool")

    async def nodeDeviceEventDeregisterAny(self, callbackID: int) -> None:  # noqa: N802,N803
        await self._deregister(callbackID, "node_device")

    async def secretEventDeregisterAny(self, callbackID: int) -> None:  # noqa: N802,N803
        await self._deregister(callbackID, "secret")

    async def domainEventRegister(self, cb: Callable[..., Any], opaque: Any) -> None:  # noqa: N802
        """libvirt-python's legacy registration: one lifecycle subscription for all the
        callbacks so registered, each once (registered again, its opaque is replaced)."""
        if self._legacy or self._legacy_id is not None:
            self._legacy[cb] = opaque
            return
        self._legacy[cb] = opaque
        try:
            self._legacy_id = await self._register(
                "domain", C.VIR_DOMAIN_EVENT_ID_LIFECYCLE, None, self._legacy_dispatch, None)
        except BaseException:
            self._legacy.pop(cb, None)
            raise

    def _legacy_dispatch(self, conn: Any, dom: Any, event: int, detail: int,
                         _opaque: Any) -> None:
        for cb, opaque in list(self._legacy.items()):
            cb(conn, dom, event, detail, opaque)

    async def domainEventDeregister(self, cb: Callable[..., Any]) -> None:  # noqa: N802
        """As libvirt-python: nothing when no callback is registered, KeyError for one
        that is not when others are; the subscription ends with the last."""
        if not self._legacy:
            return
        del self._legacy[cb]
        if not self._legacy and self._legacy_id is not None:
            callback_id, self._legacy_id = self._legacy_id, None
            await self._deregister(callback_id)

    async def networkEventRegisterAny(self, net: virNetwork | None, eventID: int,  # noqa: N802,N803
                                      cb: Callable[..., Any], opaque: Any) -> int:
        return await self._register("network", eventID, net, cb, opaque)

    async def storagePoolEventRegisterAny(self, pool: virStoragePool | None,  # noqa: N802
                                          eventID: int, cb: Callable[..., Any],  # noqa: N803
                                          opaque: Any) -> int:
        return await self._register("storage_pool", eventID, pool, cb, opaque)

    async def nodeDeviceEventRegisterAny(self, dev: virNodeDevice | None,  # noqa: N802
                                         eventID: int, cb: Callable[..., Any],  # noqa: N803
                                         opaque: Any) -> int:
        return await self._register("node_device", eventID, dev, cb, opaque)

    async def secretEventRegisterAny(self, secret: virSecret | None, eventID: int,  # noqa: N802,N803
                                     cb: Callable[..., Any], opaque: Any) -> int:
        return await self._register("secret", eventID, secret, cb, opaque)


    def _has_events(self) -> bool:
        return bool(self._events)


def _call_now(callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
    result = callback(*args)
    if inspect.isawaitable(result):
        asyncio.ensure_future(result)


def _event_args(conn: virConnect, body: Any) -> list[Any]:
    """An event message's fields as libvirt-python's callback receives them: the object,
    then the rest in wire order (callback id left out)."""
    inner = getattr(body, "msg", body)
    values = [getattr(inner, name) for name in inner.__slots__ if name != "callbackID"]
    return [_convert(conn, value) for value in values]


# -- references, arguments and results --------------------------------------------------------

COMPAT_CLASSES: dict[str, type] = {
    "virConnect": virConnect, "virDomain": virDomain, "virNetwork": virNetwork,
    "virNetworkPort": virNetworkPort, "virInterface": virInterface,
    "virStoragePool": virStoragePool, "virStorageVol": virStorageVol,
    "virNodeDevice": virNodeDevice, "virSecret": virSecret, "virNWFilter": virNWFilter,
    "virNWFilterBinding": virNWFilterBinding, "virDomainSnapshot": virDomainSnapshot,
    "virDomainCheckpoint": virDomainCheckpoint, "virStream": virStream,
}
_BY_REF = {cls._ref_type: cls for cls in COMPAT_CLASSES.values()
           if getattr(cls, "_ref_type", "")}


def _convert(conn: virConnect, value: Any) -> Any:
    """A decoded wire value as libvirt-python returns it."""
    if type(value) in _PLAIN:
        return value
    cls = _BY_REF.get(type(value).__name__)
    if cls is not None:
        return cls(conn, value)
    if isinstance(value, list):
        if value and isinstance(value[0], remote.TypedParam):
            return to_dict(value)
        return [_convert(conn, item) for item in value]
    if isinstance(value, Record):   # a wire struct: its fields in order, as a list
        return [_convert(conn, getattr(value, name)) for name in value.__slots__]
    return value


def _uuid_bytes(text: Any, function: str, domain: int) -> bytes:
    """A UUID string's 16 bytes; libvirtError as libvirt's client says it, from its
    ``domain`` (libvirt-python raises no ValueError here, TypeError for what is no str)."""
    if text is not None and not isinstance(text, str):
        raise TypeError(f"argument must be str or None, not {type(text).__name__}")
    try:
        return _uuid.UUID(text).bytes
    except (ValueError, TypeError):
        message = (f"uuidstr in {function} must not be NULL" if text is None else
                   f"uuidstr in {function} must be a valid UUID")
        raise libvirtError(message, (C.VIR_ERR_INVALID_ARG, domain, message, C.VIR_ERR_ERROR,
                                     None, None, None, 0, 0)) from None


async def _lookup_by_uuid(conn: virConnect, method: str, function: str, uuid: Any,
                          *before: Any) -> Any:
    """libvirt-python's lookups by raw UUID: 16 bytes (or characters); any other length
    fails with no libvirt error behind it, as its binding returns None without calling."""
    raw = uuid.encode() if isinstance(uuid, str) else uuid
    if raw is not None and not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TypeError(f"argument must be a bytes-like object, not {type(uuid).__name__}")
    if raw is None or len(raw) != 16:
        raise libvirtError(f"{function}() failed")
    return _result(conn, await conn._call(method, *before, bytes(raw)))


# -- migration ------------------------------------------------------------------------------

# libvirt's driver features (libvirt_internal.h) its client asks a daemon about
_MIGRATION_V1, _MIGRATION_V2, _MIGRATION_P2P, _MIGRATION_DIRECT, _MIGRATION_V3 = 1, 3, 4, 5, 6
_CHANGE_PROTECTION, _MIGRATION_OFFLINE, _MIGRATION_PARAMS = 7, 12, 13
# the parameters migration without extensible parameters carries
_MIGRATE_COMPAT_PARAMS = frozenset((C.VIR_MIGRATE_PARAM_URI, C.VIR_MIGRATE_PARAM_DEST_NAME,
                                    C.VIR_MIGRATE_PARAM_DEST_XML,
                                    C.VIR_MIGRATE_PARAM_BANDWIDTH))


async def _supports(conn: virConnect, feature: int) -> bool:
    return bool((await conn._call("connect_supports_feature", feature)).supported)


def _domain_error(code: int, message: str) -> libvirtError:
    """An error libvirt's client library reports itself (VIR_FROM_DOMAIN)."""
    if code == C.VIR_ERR_NO_SUPPORT:
        message = f"this function is not supported by the connection driver: {message}"
    error = libvirtError(message, (code, C.VIR_FROM_DOMAIN, message, C.VIR_ERR_ERROR, None,
                                   None, None, 0, 0))
    from .errors import set_last_error
    set_last_error(error.err)
    return error


def _client_driven(function: str) -> libvirtError:
    return _domain_error(C.VIR_ERR_NO_SUPPORT, f"{function} (migration driven by the client: "
                         "not implemented by aiovirt.compat; use VIR_MIGRATE_PEER2PEER or "
                         "migrateToURI3)")


def _exclusive(flags: int, *pair: tuple[int, str]) -> None:
    (one, one_name), (two, two_name) = pair
    if flags & one and flags & two:
        raise _domain_error(C.VIR_ERR_INVALID_ARG,
                            f"Flags '{one_name}' and '{two_name}' are mutually exclusive")


def _migration_flag_checks(flags: int, parallel: bool = True) -> None:
    _exclusive(flags, (C.VIR_MIGRATE_NON_SHARED_DISK, "VIR_MIGRATE_NON_SHARED_DISK"),
               (C.VIR_MIGRATE_NON_SHARED_INC, "VIR_MIGRATE_NON_SHARED_INC"))
    if parallel:
        _exclusive(flags, (C.VIR_MIGRATE_TUNNELLED, "VIR_MIGRATE_TUNNELLED"),
                   (C.VIR_MIGRATE_PARALLEL, "VIR_MIGRATE_PARALLEL"))
    if flags & C.VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES and not flags & (
            C.VIR_MIGRATE_NON_SHARED_DISK | C.VIR_MIGRATE_NON_SHARED_INC):
        raise _domain_error(C.VIR_ERR_INVALID_ARG, "Flag 'VIR_MIGRATE_NON_SHARED_DISK | "
                            "VIR_MIGRATE_NON_SHARED_INC' is required by flag "
                            "'VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES'")


def _dconnuri(dconnuri: str | None, flags: int, function: str) -> str | None:
    """The destination daemon's URI: required peer to peer, ignored otherwise."""
    if not flags & C.VIR_MIGRATE_PEER2PEER:
        return None
    if dconnuri is None:
        raise _domain_error(C.VIR_ERR_INVALID_ARG, f"dconnuri in {function} must not be NULL")
    return dconnuri


def _is_local(uri: str | None) -> bool:
    """libvirt's virDomainMigrateCheckNotLocal: a localhost server, or none and no UNIX
    socket."""
    parts = urllib.parse.urlsplit(uri or "")
    server = parts.hostname
    if server:
        return server.startswith("localhost")
    return "socket=" not in parts.query


# -- typed parameters, as libvirt-python's bindings make them ----------------------------------

def _typed_value(kind: int, value: Any) -> Any:
    """A value as libvirt-python converts it for a parameter of type ``kind`` (TypeError for
    the wrong kind of value, OverflowError out of range, a bool by its truth)."""
    if kind == tp.INT:
        return _c_int(value, -(1 << 31), (1 << 31) - 1)
    if kind == tp.UINT:
        return _c_int(value, 0, (1 << 32) - 1)
    if kind in (tp.LLONG, tp.ULLONG):
        if not isinstance(value, int):
            raise TypeError("an integer is required")
        return _c_int(value, *((-(1 << 63), (1 << 63) - 1) if kind == tp.LLONG else
                               (0, (1 << 64) - 1)))
    if kind == tp.DOUBLE:
        if isinstance(value, (str, bytes)):
            raise TypeError(f"must be real number, not {type(value).__name__}")
        return float(value)
    if kind == tp.BOOLEAN:
        return 1 if value else 0
    if kind == tp.STRING:
        if not isinstance(value, str):
            raise TypeError(f"bad argument type for a string: {type(value).__name__}")
        return value
    raise LookupError(f'Type value "{kind}" not recognized')


def _param_name(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"bad argument type for a parameter name: {type(key).__name__}")
    return key


async def _set_as_getter(values: Any, types_of: Callable[[], Any],
                         set_typed: Callable[[list[Any]], Any],
                         none: str = "Domain has no settable attributes") -> int:
    """libvirt-python's typed-parameter setters (setPyVirTypedParameter): LookupError for
    an empty dict, the getter's own failure, LookupError when it reports no parameter or
    not the one named, each value typed as the getter reports it."""
    if not isinstance(values, dict):
        raise TypeError(f"parameters must be a dict, not {type(values).__name__}")
    if not values:
        raise LookupError("Need non-empty dictionary to set attributes")
    try:
        types = await types_of()
    except TRANSLATED as exc:
        raise _translate(exc) from None
    if not types:
        raise LookupError(none)
    typed = []
    for key, value in values.items():
        kind = types.get(_param_name(key))
        if kind is None:
            raise LookupError(f'Attribute name "{key}" could not be recognized')
        typed.append(remote.TypedParam(key, remote.TypedParamValue(kind, _typed_value(
            kind, value))))
    await set_typed(typed)
    return 0


def _params_hinted(values: Any, function: str, what: str) -> list[Any]:
    """libvirt-python's typed parameters for calls without a getter
    (virPyDictToTypedParams): each value typed as libvirt declares it for ``function``
    (tp.PARAM_TYPES, libvirt-python's hint tables), else by its Python type (an int ULLONG, or
    LLONG below 0); a list or tuple gives any name once per item (tp.param_items)."""
    if not isinstance(values, dict):
        raise TypeError(f"{what} must be a dictionary")
    hints = tp.PARAM_TYPES[function]
    typed = []
    named = {_param_name(key): value for key, value in values.items()}
    for name, item in tp.param_items(named, None):
        kind = hints.get(name)
        if kind is None:
            kind = (tp.STRING if isinstance(item, str) else
                    tp.BOOLEAN if isinstance(item, bool) else
                    (tp.ULLONG if 0 <= item < 1 << 64 else tp.LLONG)
                    if isinstance(item, int) else
                    tp.DOUBLE if isinstance(item, float) else None)
            if kind is None:
                raise TypeError(f'Unknown type of "{name}" field')
        typed.append(remote.TypedParam(name, remote.TypedParamValue(
            kind, _typed_value(kind, item))))
    return typed


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


def _procedure(name: str) -> Any:
    number = getattr(remote, name, None)
    return None if number is None else remote.PROCEDURES.get(number)


def _typed_params(conn: virConnect, procedure: Any, values: dict[str, Any]) -> list[Any]:
    return from_dict(values, conn._types.get(procedure.name) if hasattr(conn, "_types")
                     else None)


def _fill_args(obj: Any, conn: virConnect, procedure: Any, spec: tuple[Any, ...],
               args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The procedure's argument struct from the object's reference and the caller's
    arguments (libvirt-python's parameters ``spec``)."""
    bound: dict[str, Any] = {}
    for index, param in enumerate(spec):
        name = param[0]
        if index < len(args):
            bound[name] = args[index]
        elif name in kwargs:
            bound[name] = kwargs[name]
        elif len(param) > 1:
            bound[name] = param[1]
        else:
            raise TypeError(f"missing argument {name!r}")
    by_norm = {_norm(name): name for name in bound}
    remaining = list(bound)
    values = []
    own = getattr(obj, "_ref_type", None)
    kinds = [plain_hint(str(f.type)) for f in dataclasses.fields(procedure.args)]
    by_name = obj is not None and own not in kinds and isinstance(obj, virNodeDevice)
    for field, kind in zip(dataclasses.fields(procedure.args), kinds):
        if own and kind == own and obj is not None:
            values.append(obj._o)
            continue
        if by_name and field.name == "name":   # node devices go by name alone
            values.append(obj._o.name)
            by_name = False
            continue
        if field.name in ("need_results",):
            values.append(1)
            continue
        if field.name.startswith("max") and _norm(field.name) not in by_norm:
            values.append(_LIST_MAX)
            continue
        if field.name == "nparams" and "nparams" not in by_norm:
            values.append(0)
            continue
        key = by_norm.get(_norm(field.name))
        if key is None or key not in remaining:
            key = remaining[0] if remaining else None
        if key is None:
            values.append(0 if kind == "int" else None)
            continue
        remaining.remove(key)
        value = bound[key]
        if isinstance(value, _Object):
            value = value._o
        elif isinstance(value, dict) and "TypedParam" in kind:
            value = from_dict(value)
        elif kind == "bytes" and isinstance(value, str) and len(value) == 36:
            value = _uuid.UUID(value).bytes
        elif kind == "int" and isinstance(value, bool):
            value = int(value)
        values.append(value)
    return procedure.args(*values)


def _result(conn: virConnect, ret: Any) -> Any:
    if ret is None:
        return 0
    fields = ret.__slots__   # a wire record's field names, in order
    if "params" in fields:
        return to_dict(ret.params)
    if "ret" in fields and len(fields) == 2:   # (list, count): the list
        return _convert(conn, getattr(ret, fields[0] if fields[1] == "ret" else fields[1]))
    if len(fields) == 1:
        return _convert(conn, getattr(ret, fields[0]))
    return [_convert(conn, getattr(ret, name)) for name in fields]


# -- the object API ---------------------------------------------------------------------------

def _handle_classes() -> dict[type, type]:
    from ..api.checkpoint import DomainCheckpoint
    from ..api.domain import Domain
    from ..api.interface import Interface
    from ..api.network import Network, NetworkPort
    from ..api.nodedev import NodeDevice
    from ..api.nwfilter import NWFilter, NWFilterBinding
    from ..api.secret import Secret
    from ..api.snapshot import DomainSnapshot
    from ..api.storage import StoragePool, StorageVolume
    return {virDomain: Domain, virNetwork: Network, virNetworkPort: NetworkPort,
            virInterface: Interface, virStoragePool: StoragePool,
            virStorageVol: StorageVolume, virNodeDevice: NodeDevice, virSecret: Secret,
            virNWFilter: NWFilter, virNWFilterBinding: NWFilterBinding,
            virDomainSnapshot: DomainSnapshot, virDomainCheckpoint: DomainCheckpoint}


_HANDLES: dict[type, type] = {}


def handle(obj: Any) -> Any:
    """The aiovirt object-API handle (or ``Connection``) for a compat object."""
    if isinstance(obj, virConnect):
        return obj._c
    if not _HANDLES:
        _HANDLES.update(_handle_classes())
    return _HANDLES[type(obj)](obj._conn._c, obj._o)


def _bind(spec: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The caller's arguments by libvirt-python's parameter names (defaults filled in)."""
    bound: dict[str, Any] = {}
    for index, param in enumerate(spec):
        name = param[0]
        if index < len(args):
            bound[name] = args[index]
        elif name in kwargs:
            bound[name] = kwargs[name]
        elif len(param) > 1:
            bound[name] = param[1]
        else:
            raise TypeError(f"missing argument {name!r}")
    if len(args) > len(spec):
        raise TypeError(f"takes {len(spec)} arguments, {len(args)} given")
    return bound


def _to_aiovirt(value: Any) -> Any:
    if isinstance(value, (_Object, virConnect)):
        return handle(value)
    if isinstance(value, list):
        return [_to_aiovirt(item) for item in value]
    return value


@functools.cache
def _signature(func: Callable[..., Any], bound: bool) -> tuple[list[inspect.Parameter], Any]:
    """A function's named parameters (without ``self`` for a method) and its return
    annotation, worked out once: ``inspect.signature`` costs more than a call."""
    signature = inspect.signature(func)
    params = [p for p in signature.parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return (params[1:] if bound else params), signature.return_annotation


def _call_plan(target: Callable[..., Any], keys: tuple[str, ...]
               ) -> tuple[tuple[tuple[str, str], ...] | None, bool]:
    """For an aiovirt method: which of libvirt-python's arguments (``keys``) becomes which of
    its parameters (None when they do not fit: the generic adapter then calls the raw
    procedure), and whether it returns None."""
    func = getattr(target, "__func__", None)
    if func is not None:
        return _argument_plan(func, True, keys), _signature(func, True)[1] in (None, "None")
    return _argument_plan(target, False, keys), _signature(target, False)[1] in (None, "None")


@functools.cache
def _argument_plan(func: Callable[..., Any], is_method: bool, keys: tuple[str, ...]
                   ) -> tuple[tuple[str, str], ...] | None:
    """Which of libvirt-python's arguments (``keys``, in order) becomes which parameter of
    ``func``, worked out once per method and argument names (it costs more than a call)."""
    params = _signature(func, is_method)[0]
    by_norm = {_norm(name): name for name in keys}
    remaining = list(keys)
    plan: list[tuple[str, str]] = []
    unmatched = []
    for param in params:
        key = by_norm.get(_norm(param.name))
        if key is not None and key in remaining:
            plan.append((key, param.name))
            remaining.remove(key)
        else:
            unmatched.append(param)
    if unmatched and len(unmatched) == len(remaining):
        plan.extend((key, param.name) for param, key in zip(unmatched, remaining))
        return tuple(plan)
    if remaining or any(p.default is inspect.Parameter.empty for p in unmatched):
        return None
    return tuple(plan)


_PLAIN = frozenset((int, str, float, bytes, type(None)))   # results returned as they are


def _reshape(conn: virConnect, value: Any, top: bool = True) -> Any:
    """An object-API result as libvirt-python returns it."""
    if type(value) in _PLAIN:
        return value
    from ..api.handle import Handle
    if isinstance(value, Handle):
        cls = _BY_REF.get(type(value._ref).__name__)
        return cls(conn, value._ref) if cls is not None else value
    if isinstance(value, bool):
        return int(value) if top else value
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], remote.TypedParam):
            return to_dict(list(value))
        return [_reshape(conn, item, False) for item in value]
    if isinstance(value, dict):
        return {k: _reshape(conn, v, False) for k, v in value.items()}
    if isinstance(value, Record):   # a wire struct
        if top and type(value).__module__ == remote.__name__:
            return _result(conn, value)
        return [_reshape(conn, getattr(value, name), False) for name in value.__slots__]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [_reshape(conn, getattr(value, f.name), False)
                for f in dataclasses.fields(value)]
    return value


def _generic(cls_name: str, method: str, entry: dict[str, Any]) -> Callable[..., Any]:
    procedures = [p for p in (_procedure(name) for name in entry["procedures"]) if p]
    adapter = ADAPTERS.get(f"{cls_name}.{method}")
    spec = entry["params"]
    calls = entry.get("calls")
    attr = calls.split(".", 1)[1] if calls else None   # the aiovirt method's name
    keys = tuple(param[0] for param in spec)
    plans: dict[Any, Any] = {}   # the aiovirt method's function -> _call_plan, made once

    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        conn = self if isinstance(self, virConnect) else self._conn
        if adapter is not None:
            return await adapter(self, conn, *args, **kwargs)
        if attr is not None:
            target = getattr(handle(self), attr)
            func = getattr(target, "__func__", target)
            found = plans.get(func)
            if found is None:
                found = plans[func] = _call_plan(target, keys)
            plan, returns_none = found
            bound = _bind(spec, args, kwargs) if spec or args or kwargs else {}
            if plan is not None:
                try:
                    result = await target(**{name: _to_aiovirt(bound[key])
                                             for key, name in plan})
                except TRANSLATED as exc:
                    raise _translate(exc) from None
                if result is None and returns_none:
                    return 0   # libvirt-python's 0 for success of an int-returning call
                return _reshape(conn, result)
        if not procedures or procedures[0].args is None and spec:
            raise _no_support(entry["c"] or f"{cls_name}.{method}")
        procedure = procedures[0]
        wire = None if procedure.args is None else _fill_args(
            None if isinstance(self, virConnect) else self, conn, procedure, spec, args,
            kwargs)
        ret = await conn._call_procedure(procedure, wire)
        if procedure.ret is not None and "nparams" in procedure.ret.__slots__ and getattr(
                ret, "nparams", 0) and not getattr(
                ret, "params", None) and wire is not None and hasattr(wire, "nparams"):
            # two-phase typed-parameter query: the first call only counted them
            wire = dataclasses.replace(wire, nparams=ret.nparams)
            ret = await conn._call_procedure(procedure, wire)
        return _result(conn, ret)

    call.__name__ = call.__qualname__ = method
    call.__doc__ = (f"libvirt-python's {cls_name}.{method} ({entry['c']}"
                    + (f": aiovirt's {calls}" if calls else
                       f": {', '.join(entry['procedures'])}" if entry["procedures"] else "")
                    + ").")
    call._aiovirt_generic = True  # type: ignore[attr-defined]
    return call


async def _block_info(dom: virDomain, conn: virConnect, path: str, flags: int = 0) -> list[int]:
    """[capacity, allocation, physical]: libvirt-python's order."""
    try:
        ret = await handle(dom).get_block_info(path, flags)
    except TRANSLATED as exc:
        raise _translate(exc) from None
    return [ret.capacity, ret.allocation, ret.physical]


async def _get_type(self: virConnect, conn: virConnect) -> str:
    return (await conn._call("connect_get_type")).type  # type: ignore[no-any-return]


# libvirt-python method -> adapter(self, conn, *args): calls whose shape the generic
# adaptation does not get right.  As the object API grows, entries here become one-line
# calls of it.
ADAPTERS: dict[str, Callable[..., Any]] = {
    "virDomain.blockInfo": _block_info,
    "virConnect.getType": _get_type,
}


def _install() -> None:
    for cls_name, methods in CLASSES.items():
        cls = COMPAT_CLASSES[cls_name]
        for method, entry in methods.items():
            if method in vars(cls) or any(method in vars(base) for base in cls.__mro__[1:-1]):
                continue
            if cls is virStream and method in ("recvAll", "sendAll"):
                continue
            setattr(cls, method, _generic(cls_name, method, entry))


_install()


# -- opening ----------------------------------------------------------------------------------

def auth_callback(auth: Any, in_thread: bool = False) -> Any:
    """libvirt-python's ``[credtypes, callback, opaque]`` as aiovirt's auth callback.
    ``in_thread``: the callback runs in a thread of its own while the loop goes on (the
    blocking drop-in's: a callback that waits for a user, or makes libvirt calls itself,
    must not hold the loop every connection shares)."""
    if auth is None or not auth or auth[1] is None:
        return None
    callback, opaque = auth[1], auth[2] if len(auth) > 2 else None

    def asked(credentials: list[Credential]) -> list[list[Any]]:
        return [[int(c.type), c.prompt, c.challenge, c.default, None] for c in credentials]

    def answered(creds: list[list[Any]], credentials: list[Credential], ret: Any) -> None:
        if isinstance(ret, int) and ret < 0:
            raise libvirtError("authentication callback failed")
        for cred, want in zip(creds, credentials):
            # libvirt-python takes str results only: anything else leaves it unanswered
            value = cred[4] if len(cred) > 4 else None
            want.result = value if isinstance(value, str) else None

    if not in_thread:
        def ask(credentials: list[Credential]) -> None:
            creds = asked(credentials)
            answered(creds, credentials, callback(creds, opaque))

        return ask

    async def ask_in_thread(credentials: list[Credential]) -> None:
        import threading
        creds = asked(credentials)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def settle(ret: Any, error: BaseException | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(ret)

        def run() -> None:
            try:
                ret, error = callback(creds, opaque), None
            except BaseException as exc:   # noqa: BLE001 - raised by the awaiting call
                ret, error = None, exc
            try:
                loop.call_soon_threadsafe(settle, ret, error)
            except RuntimeError:
                pass   # the loop is gone (interpreter exit)

        threading.Thread(target=run, name="aiovirt-compat-auth", daemon=True).start()
        answered(creds, credentials, await done)

    return ask_in_thread


async def open(name: str | None = None) -> virConnect:  # noqa: A001 - libvirt-python's name
    return await virConnect.open(name)


async def openReadOnly(name: str | None = None) -> virConnect:  # noqa: N802
    return await virConnect.open(name, readonly=True)


async def openAuth(uri: str | None, auth: Any, flags: int = 0,  # noqa: N802
                   *, _in_thread: bool = False) -> virConnect:
    return await virConnect.open(uri, readonly=bool(flags & C.VIR_CONNECT_RO),
                                 auth=auth_callback(auth, _in_thread))
