"""Streams against the suite's real libvirtd: volume upload and download (dense and sparse),
abort, backpressure, and a KVM guest's screenshot."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

import aiovirt
from aiovirt.api.streams import Hole
from aiovirt.client.streams import CHUNK, Stream

MiB = 1 << 20


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def dir_pool(daemon, tmp_path: Path) -> AsyncIterator[tuple[aiovirt.Connection,
                                                                  aiovirt.StoragePool]]:
    """A running `dir` pool in a tmp dir, defined, built and started through aiovirt."""
    assert "Name" in daemon.virsh("pool-list")   # the daemon has the storage driver
    target = tmp_path / "pool"
    name = unique("streams")
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        p = await conn.define_storage_pool(
            f"<pool type='dir'><name>{name}</name><target><path>{target}</path></target>"
            "</pool>")
        await p.build()
        await p.start()
        try:
            yield conn, p
        finally:
            for vol in await p.list_volumes():
                await vol.delete()
            await p.stop()
            await p.undefine()


async def new_volume(p: aiovirt.StoragePool, capacity: int) -> aiovirt.StorageVolume:
    return await p.create_volume(
        f"<volume><name>{unique('v')}.raw</name><capacity unit='bytes'>{capacity}</capacity>"
        "<allocation>0</allocation><target><format type='raw'/></target></volume>")


async def read_all(stream: Stream) -> list[bytes | Hole]:
    with anyio.fail_after(30):
        return [item async for item in stream]


def layout(path: str) -> list[tuple[str, int, int]]:
    """The file's data and hole extents, from SEEK_DATA / SEEK_HOLE."""
    size = os.path.getsize(path)
    extents: list[tuple[str, int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:   # ENXIO: only a hole up to the end
                data = size
            if data > pos:
                extents.append(("hole", pos, data))
            if data >= size:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            extents.append(("data", data, hole))
            pos = hole
    finally:
        os.close(fd)
    return extents


def merge(items: list[bytes | Hole]) -> list[tuple[str, int]]:
    """Consecutive chunks of one kind joined: (kind, length)."""
    out: list[tuple[str, int]] = []
    for item in items:
        kind, n = ("hole", item.length) if isinstance(item, Hole) else ("data", len(item))
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + n)
        else:
            out.append((kind, n))
    return out


async def test_dense_upload_then_download_gives_the_same_bytes(daemon, tmp_path):
    async with dir_pool(daemon, tmp_path) as (conn, p):
        payload = os.urandom(3 * MiB + 12345)        # several 256 KiB packets, a ragged end
        vol = await new_volume(p, len(payload))
        async with await vol.upload() as up:
            await up.send(payload)
        assert Path(await vol.path()).read_bytes() == payload
        down = await vol.download()
        chunks = await read_all(down)
        assert all(isinstance(c, bytes) and 0 < len(c) <= CHUNK for c in chunks)
        assert b"".join(chunks) == payload             # type: ignore[arg-type]
        # a ranged download
        async with await vol.download(offset=MiB, length=1000) as part:
            assert b"".join(await read_all(part)) == payload[MiB:MiB + 1000]  # type: ignore[arg-type]
        assert conn.is_alive


async def test_a_stream_used_the_wrong_way_round_says_so(daemon, tmp_path):
    """receive() on an upload used to wait for ever; send() on a download was taken, and
    the daemon then aborted the download."""
    async with dir_pool(daemon, tmp_path) as (conn, p):
        payload = os.urandom(1000)
        vol = await new_volume(p, len(payload))
        async with await vol.upload() as up:
            with anyio.fail_after(5), pytest.raises(aiovirt.UsageError,
                                                    match="storage_vol_upload: this stream "
                                                          "only sends"):
                await up.receive()
            with pytest.raises(TypeError, match="send\\(\\) takes bytes or a Hole, not str"):
                await up.send("text")   # type: ignore[arg-type]
            await up.send(payload)      # the upload goes on
        down = await vol.download()
        with pytest.raises(aiovirt.UsageError, match="storage_vol_download: this stream only "
                                                     "receives"):
            await down.send(b"abc")
        assert b"".join(await read_all(down)) == payload   # type: ignore[arg-type]
        assert conn.is_alive


async def test_closing_the_connection_closes_its_streams_sockets(daemon, tmp_path):
    """With lanes a stream has a socket of its own; close() used to leave it open (and the
    download readable) until the stream itself was closed."""
    async with dir_pool(daemon, tmp_path) as (_, p):
        vol = await new_volume(p, 4 * MiB)
        async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
            mine = await conn.lookup_volume(path=await vol.path())
            down = await mine.download()
            await down.receive()
            assert down.channel is not conn.channels[0]   # its own socket
            await conn.close()
            assert down.channel.closed is not None
            with anyio.fail_after(5), pytest.raises(aiovirt.ConnectionClosed):
                while True:
                    await down.receive()


async def test_sparse_upload_and_download_keep_the_holes(daemon, tmp_path):
    async with dir_pool(daemon, tmp_path) as (conn, p):
        a, b = os.urandom(MiB), os.urandom(MiB + 4096)
        plan: list[bytes | Hole] = [a, Hole(2 * MiB), b, Hole(MiB)]
        size = len(a) + 2 * MiB + len(b) + MiB
        vol = await new_volume(p, size)
        async with await vol.upload(sparse=True) as up:
            for item in plan:
                await up.send(item)
        path = await vol.path()
        assert os.path.getsize(path) == size
        assert layout(path) == [("data", 0, MiB), ("hole", MiB, 3 * MiB),
                                ("data", 3 * MiB, 4 * MiB + 4096), ("hole", 4 * MiB + 4096, size)]
        expected = a + bytes(2 * MiB) + b + bytes(MiB)
        assert Path(path).read_bytes() == expected

        items = await read_all(await vol.download(sparse=True))
        assert merge(items) == [("data", MiB), ("hole", 2 * MiB), ("data", MiB + 4096),
                                ("hole", MiB)]
        rebuilt = b"".join(bytes(i.length) if isinstance(i, Hole) else i for i in items)
        assert rebuilt == expected
        # without sparse=True the holes arrive as zeros
        assert b"".join(await read_all(await vol.download())) == expected  # type: ignore[arg-type]


async def test_a_ranged_sparse_download_counts_holes_in_its_length(daemon, tmp_path):
    """libvirtd holds a download to ``length`` holes included, which is what the stream's
    limit counts (more fails the stream: tests/faults/test_malformed_peer.py)."""
    async with dir_pool(daemon, tmp_path) as (conn, p):
        a = os.urandom(MiB)
        vol = await new_volume(p, 4 * MiB)
        async with await vol.upload(sparse=True) as up:
            for item in (a, Hole(2 * MiB), a):
                await up.send(item)
        async with await vol.download(offset=MiB // 2, length=2 * MiB, sparse=True) as part:
            items = await read_all(part)
            assert part.limit == 2 * MiB
        assert merge(items) == [("data", MiB // 2), ("hole", 3 * MiB // 2)]
        assert conn.is_alive


@pytest.mark.parametrize("lanes", [4, 0], ids=["own-socket", "main-socket"])
async def test_aborted_download_leaves_the_connection_usable(daemon, lanes, tmp_path):
    async with dir_pool(daemon, tmp_path) as (_, p):
        payload = os.urandom(16 * MiB)
        vol = await new_volume(p, len(payload))
        async with await vol.upload() as up:
            await up.send(payload)
        async with aiovirt.connect(daemon.uri("qemu", "/system"), lanes=lanes) as conn:
            handle = await (await conn.lookup_storage_pool(name=p.name)).lookup_volume(vol.name)
            stream = await handle.download()
            with anyio.fail_after(10):
                first = await stream.receive()
            assert first == payload[:len(first)]  # type: ignore[index]
            with anyio.fail_after(15):
                await stream.aclose()
            assert stream.serial not in stream.channel.protocol.streams
            with pytest.raises(aiovirt.StreamClosed, match="the stream is closed"):
                await stream.receive()
            with anyio.fail_after(10):                       # the next calls work
                assert (await handle.info()).capacity == len(payload)
                again = await handle.download(length=5000)
                assert b"".join(await read_all(again)) == payload[:5000]  # type: ignore[arg-type]
            assert conn.is_alive
            if lanes == 0:   # the same socket carried the stream and the calls after it
                assert stream.channel is conn._main and stream.channel.closed is None


async def test_cancelled_reader_aborts_and_exits_the_stream(daemon, tmp_path):
    async with dir_pool(daemon, tmp_path) as (conn, p):
        vol = await new_volume(p, 8 * MiB)
        async with await vol.upload() as up:
            await up.send(os.urandom(8 * MiB))
        stream = await vol.download()
        with anyio.move_on_after(0.2):
            async with stream:
                async for _ in stream:
                    await anyio.sleep_forever()     # the consumer stalls; the scope cancels it
        assert stream.channel.closed is not None      # the stream's own socket was released
        with anyio.fail_after(10):
            assert (await vol.info()).capacity == 8 * MiB


async def test_slow_consumer_is_bounded_by_backpressure(daemon, tmp_path):
    async with dir_pool(daemon, tmp_path) as (conn, p):
        payload = os.urandom(24 * MiB)
        vol = await new_volume(p, len(payload))
        async with await vol.upload() as up:
            await up.send(payload)
        stream = await vol.download()
        with anyio.fail_after(10):
            while not stream.channel.reading_paused:     # nobody reads: the channel must stop
                await anyio.sleep(0.01)
        assert stream._buffered <= stream.buffer_limit + CHUNK
        got = await read_all(stream)                       # then everything still arrives
        assert b"".join(got) == payload  # type: ignore[arg-type]
        assert not stream.channel.reading_paused


async def test_download_of_a_missing_volume_raises_and_frees_the_serial(daemon, tmp_path):
    async with dir_pool(daemon, tmp_path) as (conn, p):
        vol = await new_volume(p, MiB)
        await vol.delete()
        with pytest.raises(aiovirt.LibvirtError):
            await vol.download()
        with anyio.fail_after(10):
            assert await p.list_volumes() == []


def screenshot_guest_xml(name: str) -> str:
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            "<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>"
            "<video><model type='vga'/></video></devices></domain>")


@pytest.mark.kvm
async def test_screenshot_of_a_running_kvm_guest(daemon):
    name = unique("shot")
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(screenshot_guest_xml(name))
        try:
            await dom.start()
            mime, stream = await dom.screenshot()
            image = b"".join(await read_all(stream))  # type: ignore[arg-type]
            assert mime.startswith("image/")
            assert len(image) > 100
            if mime == "image/x-portable-pixmap":
                assert image.startswith(b"P6")
            elif mime == "image/png":
                assert image.startswith(b"\x89PNG")
        finally:
            if await dom.is_active():
                await dom.destroy()
            await dom.undefine()



def incoming_guest_xml(name: str) -> str:
    """A diskless TCG guest: enough for QEMU to start waiting for migration data."""
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>")


@asynccontextmanager
async def incoming_migration(daemon, tmp_path: Path, conn_b: aiovirt.Connection | None = None
                             ) -> AsyncIterator[tuple[str, str, bytes]]:
    """A running TCG guest on the suite's daemon (the source) and what a source daemon
    hands the destination: its name, its migratable XML and the begin-phase cookie."""
    name = unique("tunnel")
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as source:
        dom = await source.define_xml(incoming_guest_xml(name))
        try:
            await dom.start()
            begun = await source.rpc.domain_migrate_begin3_params(dom._ref, [], 2 | 4)
            yield name, begun.xml, begun.cookie_out
        finally:
            if await dom.is_active():
                await dom.destroy()
            await dom.undefine()


@pytest.fixture
def destination(tmp_path_factory):
    """A second private libvirtd: the destination host of a migration."""
    from aiovirt.testing.daemon import PrivateDaemon
    with PrivateDaemon(tmp_path_factory.mktemp("dest")) as dest:
        yield dest


async def test_tunnelled_migration_stream_is_opened_and_aborted(daemon, destination,
                                                                tmp_path):
    """The destination side of a tunnelled migration, as a peer-to-peer source daemon drives
    it: preparing starts an incoming guest that waits on our write stream; aborting the
    stream makes the destination tear that guest down, and the connection stays usable."""
    async with incoming_migration(daemon, tmp_path) as (name, xml, cookie), \
            aiovirt.connect(destination.uri("qemu", "/system")) as conn, \
            conn.domain_events() as events:
        cookie_out, stream = await conn.migrate_prepare_tunnel({"destination_xml": xml},
                                                               cookie, flags=2)
        assert isinstance(cookie_out, bytes)
        dom = await conn.lookup_domain(name=name)
        assert await dom.is_active()            # QEMU runs, waiting for our data
        await stream.aclose()                   # abort: the destination stops the guest
        with anyio.fail_after(30):
            async for event in events:
                if (isinstance(event, aiovirt.DomainLifecycleEvent)
                        and event.domain.name == name
                        and event.event == aiovirt.DomainEventType.STOPPED):
                    break
        assert name not in [d.name for d in await conn.list_domains()]
        assert destination.running


async def test_tunnelled_migration_refuses_garbage(daemon, destination, tmp_path):
    """Bytes that are not a migration stream: QEMU fails to load them and the stream's end
    raises the daemon's error instead of hanging; nothing is left on the destination."""
    async with incoming_migration(daemon, tmp_path) as (name, xml, cookie), \
            aiovirt.connect(destination.uri("qemu", "/system")) as conn:
        _, stream = await conn.migrate_prepare_tunnel({"destination_xml": xml}, cookie,
                                                      flags=2)
        with anyio.fail_after(60), pytest.raises(aiovirt.AiovirtError):
            for _ in range(64):
                await stream.send(os.urandom(64 * 1024))
            await stream.finish()
        with anyio.fail_after(30):
            while name in [d.name for d in await conn.list_domains()]:
                await anyio.sleep(0.1)     # polling the daemon's own state, bounded
        assert await conn.get_lib_version() > 0


async def test_tunnelled_migration_without_a_cookie_is_refused_locally(daemon):
    """libvirtd 9.0 crashes on a tunnel prepare with no cookie; we refuse it first."""
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        with pytest.raises(ValueError, match="cookie"):
            await conn.migrate_prepare_tunnel({"destination_xml": incoming_guest_xml("x")})
        assert daemon.running


def test_backpressure_under_trio(daemon, tmp_path):
    """The anyio transport (trio) bounds a stalled download too, and an upload's sends wait
    for the writer task instead of queueing without limit."""
    import trio

    async def main() -> None:
        async with dir_pool(daemon, tmp_path) as (conn, p):
            payload = os.urandom(24 * MiB)
            vol = await new_volume(p, len(payload))
            async with await vol.upload() as up:
                await up.send(payload)
                transport = up.channel.transport
                assert transport._unsent <= 2 * MiB + CHUNK    # drained, not all queued
            stream = await vol.download()
            with anyio.fail_after(10):
                while not stream.channel.reading_paused:
                    await anyio.sleep(0.01)
            assert stream._buffered <= stream.buffer_limit + (1 << 18)
            got = await read_all(stream)
            assert b"".join(got) == payload  # type: ignore[arg-type]

    trio.run(main)


async def test_a_stream_socket_takes_its_keepalive_task_with_it(daemon, tmp_path):
    """A stream's own socket, once closed, kept its keepalive task (and through it the
    closed channel) until the task's next tick: thousands of idle tasks under many streams."""
    async with dir_pool(daemon, tmp_path) as (conn, p):
        vol = await new_volume(p, MiB)
        for _ in range(5):
            async with await vol.download() as stream:
                await read_all(stream)
        with anyio.fail_after(2):   # the keepalive interval is 5 s: the old tasks stayed
            while any(task.get_name().endswith("stream keepalive")
                      for task in asyncio.all_tasks()):
                await anyio.sleep(0.01)
        assert conn.is_alive


@pytest.mark.parametrize("lanes", [4, 0], ids=["own-socket", "main-socket"])
async def test_a_stream_dropped_unclosed_is_aborted_and_its_socket_freed(daemon, lanes,
                                                                        tmp_path):
    """A stream cancelled or dropped outside ``async with`` kept its socket, a keepalive
    task and the daemon's stream until the connection closed: one more of each a stream."""
    async with dir_pool(daemon, tmp_path) as (_, p):
        vol = await new_volume(p, 4 * MiB)
        async with aiovirt.connect(daemon.uri("qemu", "/system"), lanes=lanes) as conn:
            mine = await conn.lookup_volume(path=await vol.path())
            channels = []
            for _ in range(5):
                down = await mine.download()
                await down.receive()            # its buffer fills: the socket pauses
                channels.append(down.channel)
                del down
            with anyio.fail_after(5):
                while any(c.closed is None for c in channels if c is not conn.channels[0]) \
                        or conn.channels[0].protocol.streams:
                    await anyio.sleep(0.01)
            assert not conn.channels[0].reading_paused
            assert not [t for t in asyncio.all_tasks()
                        if t.get_name().endswith("stream keepalive")]
            with anyio.fail_after(10):   # the connection and the volume serve on
                async with await mine.download() as down:
                    assert sum(map(len, await read_all(down))) == 4 * MiB
