"""The object API's streams: volume upload and download, screenshots, consoles, channels.

Each opens a ``Stream`` (``aiovirt.client.streams``) on a socket of its own when the
connection has lanes."""

from __future__ import annotations

from typing import Any

from ..client.streams import Hole, Stream, open_stream
from ..protocol import remote

__all__ = ["Hole", "Stream", "VOL_DOWNLOAD_SPARSE_STREAM", "VOL_UPLOAD_SPARSE_STREAM",
           "open_channel", "open_console", "screenshot", "vol_download", "vol_upload"]

VOL_DOWNLOAD_SPARSE_STREAM = 1   # VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM
VOL_UPLOAD_SPARSE_STREAM = 1     # VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM
_P = remote.PROCEDURES


async def vol_download(conn: Any, vol: remote.NonnullStorageVol, offset: int, length: int,
                       sparse: bool, flags: int) -> Stream:
    """Open a download of ``length`` bytes (0: to the end) from ``offset``."""
    if sparse:
        flags |= VOL_DOWNLOAD_SPARSE_STREAM
    _, stream = await open_stream(
        conn, _P[remote.REMOTE_PROC_STORAGE_VOL_DOWNLOAD],
        remote.StorageVolDownloadArgs(vol, offset, length, flags), sparse=sparse)
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
