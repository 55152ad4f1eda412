"""The object API's streams: volume upload and download, screenshots, consoles, channels.

Each opens a ``Stream`` (``aiovirt.client.streams``) on a socket of its own when the
connection has lanes."""

from __future__ import annotations

from typing import Any

from ..client.streams import Hole, Stream, open_stream
from ..protocol import remote
from .typedparams import PARAM_MULTIPLE, PARAM_TYPES, from_dict

__all__ = ["Hole", "Stream", "VOL_DOWNLOAD_SPARSE_STREAM", "VOL_UPLOAD_SPARSE_STREAM",
           "migrate_prepare_tunnel", "open_channel", "open_console", "screenshot",
           "vol_download", "vol_upload"]

VOL_DOWNLOAD_SPARSE_STREAM = 1   # VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM
VOL_UPLOAD_SPARSE_STREAM = 1     # VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM
MIGRATE_TUNNELLED = 4            # VIR_MIGRATE_TUNNELLED: the daemon insists on it here
_P = remote.PROCEDURES


async def vol_download(conn: Any, vol: remote.NonnullStorageVol, offset: int, length: int,
                       sparse: bool, flags: int) -> Stream:
    """Open a download of ``length`` bytes (0: to the end) from ``offset``; a daemon that
    sends more fails the stream."""
    if sparse:
        flags |= VOL_DOWNLOAD_SPARSE_STREAM
    _, stream = await open_stream(
        conn, _P[remote.REMOTE_PROC_STORAGE_VOL_DOWNLOAD],
        remote.StorageVolDownloadArgs(vol, offset, length, flags), sparse=sparse,
        limit=length if type(length) is int and length > 0 else None)
    return stream


async def vol_upload(conn: Any, vol: remote.NonnullStorageVol, offset: int, length: int,
                     sparse: bool, flags: int) -> Stream:
    """Open an upload of ``length`` bytes (0: to the end) at ``offset``."""
    if sparse:
        flags |= VOL_UPLOAD_SPARSE_STREAM
    _, stream = await open_stream(
        conn, _P[remote.REMOTE_PROC_STORAGE_VOL_UPLOAD],
        remote.StorageVolUploadArgs(vol, offset, length, flags), sparse=sparse)
    return stream


async def screenshot(conn: Any, dom: remote.NonnullDomain, screen: int,
                     flags: int) -> tuple[str, Stream]:
    """Open a screenshot: its MIME type and the stream of the image."""
    reply, stream = await open_stream(conn, _P[remote.REMOTE_PROC_DOMAIN_SCREENSHOT],
                                      remote.DomainScreenshotArgs(dom, screen, flags))
    return reply.mime or "application/octet-stream", stream


async def open_console(conn: Any, dom: remote.NonnullDomain, dev: str | None,
                       flags: int) -> Stream:
    """Open a console (bidirectional)."""
    _, stream = await open_stream(conn, _P[remote.REMOTE_PROC_DOMAIN_OPEN_CONSOLE],
                                  remote.DomainOpenConsoleArgs(dom, dev, flags))
    return stream


async def open_channel(conn: Any, dom: remote.NonnullDomain, name: str | None,
                       flags: int) -> Stream:
    """Open a guest channel (bidirectional)."""
    _, stream = await open_stream(conn, _P[remote.REMOTE_PROC_DOMAIN_OPEN_CHANNEL],
                                  remote.DomainOpenChannelArgs(dom, name, flags))
    return stream


async def migrate_prepare_tunnel(conn: Any, params: dict[str, Any], cookie: bytes,
                                 flags: int) -> tuple[bytes, Stream]:
    """Prepare an incoming tunnelled migration on this (destination) host: the cookie for
    the source and a write ``Stream`` for the migration data
    (``DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS``).  ``aclose()`` before the end aborts it.
    ``cookie`` is the source's begin-phase cookie: libvirtd 9.0 crashes without one (a NULL
    dereference in its QEMU driver, seen here), so an empty one is refused before sending."""
    if not cookie:
        raise ValueError("migrate_prepare_tunnel needs the source's cookie (from "
                         "DOMAIN_MIGRATE_BEGIN3_PARAMS): libvirtd 9.0 crashes without one")
    typed = from_dict(params, PARAM_TYPES["virDomainMigrate3"],
                      PARAM_MULTIPLE["virDomainMigrate3"])
    reply, stream = await open_stream(
        conn, _P[remote.REMOTE_PROC_DOMAIN_MIGRATE_PREPARE_TUNNEL3_PARAMS],
        remote.DomainMigratePrepareTunnel3ParamsArgs(typed, cookie, flags | MIGRATE_TUNNELLED))
    return reply.cookie_out, stream
