"""Storage: ``StoragePool`` and ``StorageVolume`` handles and the connection's pool methods."""

from __future__ import annotations

import uuid as _uuid
from enum import IntEnum
from typing import NamedTuple

from ..errors import NoSuchStoragePool, NoSuchStorageVolume
from .generated import StoragePoolGenerated, StorageVolumeGenerated
from .handle import ApiBase, ApiConnection, Handle, UUIDHandle, enum_or_int, uuid_bytes
from . import streams as _streams
from .streams import Stream
from ..protocol.remote import NonnullStoragePool, NonnullStorageVol

__all__ = ["StorageMethods", "StoragePool", "StoragePoolInfo", "StoragePoolState",
           "StorageVolume", "StorageVolumeInfo", "StorageVolumeType"]


class StoragePoolState(IntEnum):
    """``VIR_STORAGE_POOL_*`` states."""

    INACTIVE = 0
    BUILDING = 1
    RUNNING = 2
    DEGRADED = 3
    INACCESSIBLE = 4


class StorageVolumeType(IntEnum):
    """``VIR_STORAGE_VOL_*`` types."""

    FILE = 0
    BLOCK = 1
    DIR = 2
    NETWORK = 3
    NETDIR = 4
    PLOOP = 5


class StoragePoolInfo(NamedTuple):
    """``virStoragePoolGetInfo``: the pool's state and its sizes in bytes (a named tuple:
    it unpacks as libvirt-python's four-item list does)."""

    state: StoragePoolState | int
    capacity: int
    allocation: int
    available: int


class StorageVolumeInfo(NamedTuple):
    """``virStorageVolGetInfo``: the volume's type and its sizes in bytes (a named tuple:
    it unpacks as libvirt-python's three-item list does)."""

    type: StorageVolumeType | int
    capacity: int
    allocation: int


class StoragePool(UUIDHandle, StoragePoolGenerated):
    """A handle on one storage pool; ``name`` and ``uuid`` are plain attributes."""

    __slots__ = ("name",)
    _ref: NonnullStoragePool
    _repr_fields = ("name", "uuid")

    def __init__(self, conn: ApiConnection, ref: NonnullStoragePool) -> None:
        super().__init__(conn, ref)
        self.name = ref.name

    async def start(self, flags: int = 0) -> None:
        """Start (activate) a defined pool."""
        await self._conn.rpc.storage_pool_create(self._ref, flags)

    async def stop(self) -> None:
        """Stop the pool (libvirt's ``destroy``); its definition and data stay."""
        await self._conn.rpc.storage_pool_destroy(self._ref)

    destroy = stop

    async def build(self, flags: int = 0) -> None:
        """Create the pool's underlying storage (a directory, a filesystem...)."""
        await self._conn.rpc.storage_pool_build(self._ref, flags)

    async def delete(self, flags: int = 0) -> None:
        """Delete the pool's underlying storage (the opposite of ``build``)."""
        await self._conn.rpc.storage_pool_delete(self._ref, flags)

    async def undefine(self) -> None:
        """Delete the persistent definition (the pool must be stopped)."""
        await self._conn.rpc.storage_pool_undefine(self._ref)

    async def refresh(self, flags: int = 0) -> None:
        """Rescan the pool's storage for volumes created or removed behind libvirt's back."""
        await self._conn.rpc.storage_pool_refresh(self._ref, flags)

    async def xml(self, flags: int = 0) -> str:
        """The pool's XML (``VIR_STORAGE_XML_INACTIVE`` = 1 gives the persistent one)."""
        return (await self._conn.rpc.storage_pool_get_xml_desc(self._ref, flags)).xml

    async def info(self) -> StoragePoolInfo:
        ret = await self._conn.rpc.storage_pool_get_info(self._ref)
        return StoragePoolInfo(enum_or_int(StoragePoolState, ret.state), ret.capacity,
                               ret.allocation, ret.available)

    async def is_active(self) -> bool:
        return bool((await self._conn.rpc.storage_pool_is_active(self._ref)).active)

    async def autostart(self) -> bool:
        """Whether the daemon starts this pool when it starts."""
        return bool((await self._conn.rpc.storage_pool_get_autostart(self._ref)).autostart)

    async def set_autostart(self, enabled: bool) -> None:
        if not isinstance(enabled, int):   # (a bool is an int; "x" raised int()'s error)
            raise TypeError(f"set_autostart takes True or False, not {enabled!r:.40}")
        await self._conn.rpc.storage_pool_set_autostart(self._ref, int(enabled))

    async def create_volume(self, xml: str, flags: int = 0) -> StorageVolume:
        """Create a volume in this pool from its XML."""
        return StorageVolume(self._conn,
                             (await self._conn.rpc.storage_vol_create_xml(self._ref, xml,
                                                                          flags)).vol)

    async def lookup_volume(self, name: str) -> StorageVolume:
        """The volume called ``name`` in this pool."""
        try:
            ret = await self._conn.rpc.storage_vol_lookup_by_name(self._ref, name)
        except NoSuchStorageVolume as exc:
            raise exc.with_context(f"no volume {name!r} in pool {self.name!r}") from None
        return StorageVolume(self._conn, ret.vol)

    async def list_volumes(self) -> list[StorageVolume]:
        """Every volume in this (running) pool."""
        ret = await self._conn.rpc.storage_pool_list_all_volumes(self._ref, 1, 0)
        return [StorageVolume(self._conn, ref) for ref in ret.vols]


class StorageVolume(Handle, StorageVolumeGenerated):
    """A handle on one volume: ``name``, ``key`` and ``pool`` (the pool's name)."""

    __slots__ = ("name", "key", "pool")
    _ref: NonnullStorageVol
    _repr_fields = ("pool", "name")

    def __init__(self, conn: ApiConnection, ref: NonnullStorageVol) -> None:
        super().__init__(conn, ref)
        self.name = ref.name
        self.key = ref.key
        self.pool = ref.pool

    def _key(self) -> str:
        return self._ref.key

    async def xml(self, flags: int = 0) -> str:
        return (await self._conn.rpc.storage_vol_get_xml_desc(self._ref, flags)).xml

    async def path(self) -> str:
        """Where the volume lives on the host (a file or device path, or a URL)."""
        return (await self._conn.rpc.storage_vol_get_path(self._ref)).name

    async def info(self) -> StorageVolumeInfo:
        ret = await self._conn.rpc.storage_vol_get_info(self._ref)
        return StorageVolumeInfo(enum_or_int(StorageVolumeType, ret.type), ret.capacity, ret.allocation)

    async def delete(self, flags: int = 0) -> None:
        """Remove the volume and its data."""
        await self._conn.rpc.storage_vol_delete(self._ref, flags)

    async def wipe(self, flags: int = 0) -> None:
        """Overwrite the volume's data with zeros (the test driver cannot)."""
        await self._conn.rpc.storage_vol_wipe(self._ref, flags)

    async def resize(self, capacity: int, flags: int = 0) -> None:
        """Change the capacity to ``capacity`` bytes (the test driver cannot)."""
        await self._conn.rpc.storage_vol_resize(self._ref, capacity, flags)

    # -- streams --------------------------------------------------------------------------
    async def download(self, offset: int = 0, length: int = 0, sparse: bool = False,
                       flags: int = 0) -> Stream:
        """A ``Stream`` of the volume's bytes (``length`` 0: to the end); with ``sparse``
        it also yields ``Hole`` values."""
        return await _streams.vol_download(self._conn, self._ref, offset, length, sparse,
                                           flags)

    async def upload(self, offset: int = 0, length: int = 0, sparse: bool = False,
                     flags: int = 0) -> Stream:
        """A ``Stream`` writing the volume; ``finish()`` (or leaving ``async with``) commits
        it.  With ``sparse`` it accepts ``Hole`` values."""
        return await _streams.vol_upload(self._conn, self._ref, offset, length, sparse,
                                         flags)


class StorageMethods(ApiBase):
    """The connection's storage methods (mixed into ``Connection``)."""

    async def define_storage_pool(self, xml: str, flags: int = 0) -> StoragePool:
        """Define a persistent pool from its XML (it starts inactive)."""
        return StoragePool(self, (await self.rpc.storage_pool_define_xml(xml, flags)).pool)

    async def create_storage_pool(self, xml: str, flags: int = 0) -> StoragePool:
        """Create and start a transient pool."""
        return StoragePool(self, (await self.rpc.storage_pool_create_xml(xml, flags)).pool)

    async def lookup_storage_pool(self, *, name: str | None = None,
                                  uuid: str | _uuid.UUID | None = None) -> StoragePool:
        """Find a pool by exactly one of ``name`` or ``uuid``."""
        if (name is None) == (uuid is None):
            raise TypeError("lookup_storage_pool takes exactly one of name= or uuid=")
        try:
            if name is not None:
                ref = (await self.rpc.storage_pool_lookup_by_name(name)).pool
            else:
                ref = (await self.rpc.storage_pool_lookup_by_uuid(
                    uuid_bytes(uuid))).pool  # type: ignore[arg-type]
        except NoSuchStoragePool as exc:
            what = f"name {name!r}" if name is not None else f"uuid {uuid}"
            raise exc.with_context(f"no storage pool with {what}") from None
        return StoragePool(self, ref)

    async def list_storage_pools(self, flags: int = 0) -> list[StoragePool]:
        """All pools (``VIR_CONNECT_LIST_STORAGE_POOLS_*`` flags filter them)."""
        ret = await self.rpc.connect_list_all_storage_pools(1, flags)
        return [StoragePool(self, ref) for ref in ret.pools]

    async def lookup_volume(self, *, path: str | None = None,
                            key: str | None = None) -> StorageVolume:
        """Find a volume in any pool by exactly one of ``path`` or ``key``."""
        if (path is None) == (key is None):
            raise TypeError("lookup_volume takes exactly one of path= or key=")
        try:
            if path is not None:
                ref = (await self.rpc.storage_vol_lookup_by_path(path)).vol
            else:
                ref = (await self.rpc.storage_vol_lookup_by_key(key)).vol  # type: ignore[arg-type]
        except NoSuchStorageVolume as exc:
            what = f"path {path!r}" if path is not None else f"key {key!r}"
            raise exc.with_context(f"no volume with {what}") from None
        return StorageVolume(self, ref)
