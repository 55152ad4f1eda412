"""Volume download and upload, dense and sparse: aiovirt vs libvirt-python's stream API vs
virsh vol-download / vol-upload, interleaved, against one private libvirtd (QEMU driver, a
``dir`` pool in a tmp dir).

    .venv/bin/python benchmarks/streams.py [--size MiB] [--rounds N] [--only MODE ...]
                                           [--output FILE]

Modes: download-dense, download-sparse, upload-dense, upload-sparse.  The sparse file is
4 MiB extents, every other one a hole (50% holes).  Each round checks the result: the
SHA-256 of the bytes, and for sparse modes that the holes survived (allocated blocks).
Client CPU: this process's CPU time (all threads) for aiovirt and libvirt-python; for virsh
its CPU as a child (``RUSAGE_CHILDREN``).  libvirtd's CPU is shown too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]

import aiovirt
from aiovirt.api.streams import Hole
from aiovirt.client.streams import CHUNK

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Disturbance, daemon_cpu_ns, describe_machine, describe_tree  # noqa: E402

MiB = 1 << 20
EXTENT = 4 * MiB
MODES = ("download-dense", "download-sparse", "upload-dense", "upload-sparse")
CLIENTS = ("aiovirt", "libvirt-python", "virsh")
LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


@dataclass
class Sample:
    wall: float
    cpu: float          # the client's CPU, seconds
    daemon: float       # libvirtd's, seconds


# -- files ----------------------------------------------------------------------------------

def make_file(paths: list[Path], size: int, sparse: bool) -> str:
    """Write the same content to every path: random data, or (sparse) 4 MiB random extents
    alternating with 4 MiB holes; returns its SHA-256."""
    h = hashlib.sha256()
    fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for p in paths]
    try:
        pos, i = 0, 0
        while pos < size:
            n = min(EXTENT, size - pos)
            if sparse and i % 2 == 1:
                h.update(bytes(n))
                for fd in fds:
                    os.lseek(fd, n, os.SEEK_CUR)
            else:
                block = os.urandom(n)
                h.update(block)
                for fd in fds:
                    os.write(fd, block)
            pos += n
            i += 1
        for fd in fds:
            os.ftruncate(fd, size)
    finally:
        for fd in fds:
            os.close(fd)
    return h.hexdigest()


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def check(path: str | Path, size: int, digest: str, sparse: bool) -> None:
    st = os.stat(path)
    if st.st_size != size:
        raise AssertionError(f"{path}: {st.st_size} bytes, expected {size}")
    if sha256(path) != digest:
        raise AssertionError(f"{path}: wrong content")
    allocated = st.st_blocks * 512
    if sparse and allocated > size * 0.6:
        raise AssertionError(f"{path}: {allocated} bytes allocated, the holes were lost")


def sections(fd: int, size: int) -> list[tuple[bool, int, int]]:
    """(is_data, start, end) of the file, from SEEK_DATA / SEEK_HOLE."""
    out, pos = [], 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            data = size
        if data > pos:
            out.append((False, pos, data))
        if data >= size:
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        out.append((True, data, hole))
        pos = hole
    os.lseek(fd, 0, os.SEEK_SET)
    return out


# -- the clients ------------------------------------------------------------------------------

async def aiovirt_download(vol: aiovirt.StorageVolume, dest: Path, sparse: bool) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        async with await vol.download(sparse=sparse) as stream:
            async for item in stream:
                if type(item) is bytes:
                    os.write(fd, item)
                else:
                    assert isinstance(item, Hole)
                    os.lseek(fd, item.length, os.SEEK_CUR)
        os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))
    finally:
        os.close(fd)


async def aiovirt_upload(vol: aiovirt.StorageVolume, src: Path, sparse: bool) -> None:
    fd = os.open(src, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        async with await vol.upload(sparse=sparse) as stream:
            for is_data, start, end in (sections(fd, size) if sparse else [(True, 0, size)]):
                if not is_data:
                    await stream.send(Hole(end - start))
                    continue
                os.lseek(fd, start, os.SEEK_SET)
                left = end - start
                while left > 0:
                    block = os.read(fd, min(CHUNK, left))
                    if not block:
                        break
                    await stream.send(block)
                    left -= len(block)
    finally:
        os.close(fd)


def lv_download(conn: Any, pool: str, volname: str, dest: Path, sparse: bool) -> None:
    vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(volname)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        stream = conn.newStream()
        if sparse:
            vol.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)

            def hole(_stream: Any, length: int, fd: int) -> None:
                os.ftruncate(fd, os.lseek(fd, length, os.SEEK_CUR))

            stream.sparseRecvAll(lambda _s, buf, fd: os.write(fd, buf), hole, fd)
        else:
            vol.download(stream, 0, 0, 0)
            stream.recvAll(lambda _s, buf, fd: os.write(fd, buf), fd)
        stream.finish()
    finally:
        os.close(fd)


def lv_upload(conn: Any, pool: str, volname: str, src: Path, sparse: bool) -> None:
    vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(volname)
    fd = os.open(src, os.O_RDONLY)
    try:
        stream = conn.newStream()
        if sparse:
            vol.upload(stream, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            size = os.fstat(fd).st_size

            def in_data(_stream: Any, fd: int) -> list[Any]:
                # as libvirt-python's examples/sparsestream.py
                cur = os.lseek(fd, 0, os.SEEK_CUR)
                if cur >= size:
                    return [True, 0]
                try:
                    data = os.lseek(fd, cur, os.SEEK_DATA)
                except OSError:
                    data = size
                if data > cur:
                    os.lseek(fd, cur, os.SEEK_SET)
                    return [False, data - cur]
                hole = os.lseek(fd, cur, os.SEEK_HOLE)
                os.lseek(fd, cur, os.SEEK_SET)
                return [True, hole - cur]

            stream.sparseSendAll(lambda _s, n, fd: os.read(fd, n), in_data,
                                 lambda _s, n, fd: os.lseek(fd, n, os.SEEK_CUR), fd)
        else:
            vol.upload(stream, 0, 0, 0)
            stream.sendAll(lambda _s, n, fd: os.read(fd, n), fd)
        stream.finish()
    finally:
        os.close(fd)


def virsh(uri: str, *args: str) -> None:
    subprocess.run(["virsh", "-q", "-c", uri, *args], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# -- main -----------------------------------------------------------------------------------

def mib_s(size: int, wall: float) -> float:
    return size / MiB / wall


async def main(options: argparse.Namespace) -> None:
    size = options.size * MiB
    rounds = options.rounds
    modes = options.only or list(MODES)
    from aiovirt.testing.daemon import PrivateDaemon
    with tempfile.TemporaryDirectory(prefix="avb-streams-", dir=options.dir) as workdir, \
            PrivateDaemon(Path(workdir) / "daemon") as daemon:
        work = Path(workdir)
        uri = daemon.uri("qemu", "/system")
        target = work / "pool"
        local = work / "local"
        local.mkdir()
        pool_name = "bench"
        async with aiovirt.connect(uri) as conn:
            p = await conn.define_storage_pool(
                f"<pool type='dir'><name>{pool_name}</name><target><path>{target}</path>"
                "</target></pool>")
            await p.build()
            await p.start()
            t0 = time.perf_counter()
            digests = {
                False: make_file([local / "src-dense", target / "src-dense.raw"], size, False),
                True: make_file([local / "src-sparse", target / "src-sparse.raw"], size, True),
            }
            await p.refresh()
            lconn = libvirt.open(uri)
            lib = await conn.get_lib_version()
            lv = libvirt.getVersion()
            say(f"# streams: aiovirt {aiovirt.__version__} vs libvirt-python "
                f"{lv // 1000000}.{lv // 1000 % 1000}.{lv % 1000} vs virsh, "
                f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
            say(f"# {describe_tree()}")
            say(f"# {describe_machine()}; a private libvirtd {lib // 1000000}."
                f"{lib // 1000 % 1000}.{lib % 1000}, QEMU driver, dir pool on {options.dir or tempfile.gettempdir()}")
            say(f"# volume {options.size} MiB; sparse = 4 MiB extents, every other one a hole; "
                f"{rounds} interleaved rounds (rotating who goes first); files made in "
                f"{time.perf_counter() - t0:.1f} s")
            say()
            summary: list[str] = []
            disturbance = Disturbance(daemon.pid)
            for mode in modes:
                direction, kind = mode.split("-")
                sparse = kind == "sparse"
                src_vol = f"src-{kind}.raw"
                results: dict[str, list[Sample]] = {c: [] for c in CLIENTS}
                disturbance.start()
                for r in range(rounds):
                    order = CLIENTS[r % 3:] + CLIENTS[:r % 3]
                    for client in order:
                        dest = local / f"out-{client}"
                        up_name = f"up-{client}.raw"
                        if direction == "upload":   # a fresh, empty target volume
                            for v in await p.list_volumes():
                                if v.name == up_name:
                                    await v.delete()
                            up_vol = await p.create_volume(
                                f"<volume><name>{up_name}</name><capacity unit='bytes'>{size}"
                                "</capacity><allocation>0</allocation><target><format "
                                "type='raw'/></target></volume>")
                            up_path = await up_vol.path()
                        await asyncio.sleep(0)
                        d0 = daemon_cpu_ns(daemon.pid) or 0
                        if client == "virsh":
                            c0 = children_cpu()
                        else:
                            c0 = time.process_time()
                        t0 = time.perf_counter()
                        if client == "aiovirt":
                            if direction == "download":
                                vol = await p.lookup_volume(src_vol)
                                await aiovirt_download(vol, dest, sparse)
                            else:
                                await aiovirt_upload(up_vol, local / f"src-{kind}", sparse)
                        elif client == "libvirt-python":
                            if direction == "download":
                                await asyncio.to_thread(lv_download, lconn, pool_name, src_vol,
                                                        dest, sparse)
                            else:
                                await asyncio.to_thread(lv_upload, lconn, pool_name, up_name,
                                                        local / f"src-{kind}", sparse)
                        else:
                            extra = ["--sparse"] if sparse else []
                            if direction == "download":
                                await asyncio.to_thread(virsh, uri, "vol-download", "--pool",
                                                        pool_name, src_vol, str(dest), *extra)
                            else:
                                await asyncio.to_thread(virsh, uri, "vol-upload", "--pool",
                                                        pool_name, up_name,
                                                        str(local / f"src-{kind}"), *extra)
                        wall = time.perf_counter() - t0
                        cpu = (children_cpu() if client == "virsh" else time.process_time()) - c0
                        dcpu = ((daemon_cpu_ns(daemon.pid) or 0) - d0) / 1e9
                        results[client].append(Sample(wall, cpu, dcpu))
                        out = dest if direction == "download" else up_path
                        check(out, size, digests[sparse], sparse)
                        if direction == "download":
                            dest.unlink()
                        else:
                            await up_vol.delete()
                disturbance.stop(mode)
                say(f"## {mode}: {options.size} MiB, {rounds} interleaved rounds, content "
                    "checked every round (SHA-256" + (", holes kept" if sparse else "") + ")")
                say(f"{'client':<16}{'MiB/s best':>11}{'median':>9}{'client CPU ms/MiB':>19}"
                    f"{'libvirtd ms/MiB':>17}")
                best: dict[str, float] = {}
                med: dict[str, float] = {}
                for client in CLIENTS:
                    ss = results[client]
                    best[client] = mib_s(size, min(s.wall for s in ss))
                    med[client] = mib_s(size, statistics.median(s.wall for s in ss))
                    cpu = statistics.median(s.cpu for s in ss) / (size / MiB) * 1e3
                    dcpu = statistics.median(s.daemon for s in ss) / (size / MiB) * 1e3
                    say(f"{client:<16}{best[client]:>11.0f}{med[client]:>9.0f}{cpu:>19.2f}"
                        f"{dcpu:>17.2f}")
                r_lv = best["aiovirt"] / best["libvirt-python"]
                r_vs = best["aiovirt"] / best["virsh"]
                say(f"aiovirt / libvirt-python: {r_lv:.2f}x best ("
                    f"{med['aiovirt'] / med['libvirt-python']:.2f}x median); aiovirt / virsh: "
                    f"{r_vs:.2f}x best ({med['aiovirt'] / med['virsh']:.2f}x median)")
                say()
                summary.append(f"{mode:<17}{r_lv:>8.2f}x{r_vs:>9.2f}x   "
                               + ("met" if min(r_lv, r_vs) >= 0.9 else "MISSED"))
            lconn.close()
            for v in await p.list_volumes():
                await v.delete()
            await p.stop()
            await p.undefine()
        say("## Summary: throughput ratio, best rounds (target >= 0.9x of both)")
        say(f"{'mode':<17}{'vs lv-py':>9}{'vs virsh':>10}")
        for line in summary:
            say(line)
        say("(other work on the machine during each mode, as a share of all its cores: "
            + ", ".join(disturbance.shares) + ")")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="volume size in MiB (1024)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--only", nargs="+", metavar="MODE", choices=MODES)
    parser.add_argument("--dir", help="where the pool and local files go (default: $TMPDIR)")
    parser.add_argument("--output", help="also write the report to this file")
    opts = parser.parse_args()
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        asyncio.run(main(opts))
    finally:
        if opts.output:
            Path(opts.output).write_text("\n".join(LINES) + "\n")
