"""``aiovirt vol upload|download`` and ``aiovirt console`` as real subprocesses against the
suite's libvirtd: a sparse file round trip through a `dir` pool, errors that name the object,
and a KVM guest's serial console carrying the SeaBIOS banner."""

from __future__ import annotations

import os
import select
import subprocess
import termios
import time
from pathlib import Path

import anyio
import pytest

import aiovirt
from tests.test_cli import AIOVIRT
from tests.test_streams import MiB, dir_pool, layout, new_volume, unique

ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
VIR_DOMAIN_START_PAUSED = 1


async def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run ``aiovirt ARGS...`` to its end, bounded by ``timeout``."""
    with anyio.fail_after(timeout):
        return await anyio.run_process([AIOVIRT, *args], check=False, env=ENV)


def sparse_file(path: Path) -> tuple[bytes, int]:
    """A file with data, a hole, data and a trailing hole; returns its bytes and size."""
    a, b = os.urandom(MiB), os.urandom(MiB + 4096)
    size = 5 * MiB + 4096 + MiB
    with open(path, "wb") as f:
        f.write(a)
        f.seek(3 * MiB)
        f.write(b)
        f.truncate(size)
    return a + bytes(2 * MiB) + b + bytes(size - 4 * MiB - 4096), size


async def test_sparse_upload_then_download_keeps_bytes_and_holes(daemon, tmp_path):
    source, back, dense = tmp_path / "source.img", tmp_path / "back.img", tmp_path / "dense.img"
    expected, size = sparse_file(source)
    want = layout(str(source))
    assert [kind for kind, *_ in want] == ["data", "hole", "data", "hole"]
    uri = daemon.uri("qemu", "/system")
    async with dir_pool(daemon, tmp_path) as (_, pool):
        vol = await new_volume(pool, size)
        done = await cli("vol", "upload", pool.name, vol.name, str(source), "--sparse",
                         "--progress", "-c", uri)
        assert done.returncode == 0, done.stderr
        assert b"100.0%" in done.stderr and b"MiB/s" in done.stderr   # the progress line
        path = await vol.path()
        assert Path(path).read_bytes() == expected
        assert layout(path) == want                  # the holes reached the volume as holes

        done = await cli("vol", "download", pool.name, vol.name, str(back), "--sparse",
                         "-c", uri)
        assert done.returncode == 0, done.stderr
        assert done.stderr == b""                    # no terminal, no --progress: quiet
        assert back.read_bytes() == expected
        assert layout(str(back)) == want             # and came back as holes

        # without --sparse the holes arrive as zeros and are written out
        done = await cli("vol", "download", pool.name, vol.name, str(dense), "-c", uri)
        assert done.returncode == 0, done.stderr
        assert dense.read_bytes() == expected
        assert layout(str(dense)) == [("data", 0, size)]


async def test_dense_upload_overwrites_the_volume(daemon, tmp_path):
    payload = os.urandom(2 * MiB + 777)
    (tmp_path / "f").write_bytes(payload)
    async with dir_pool(daemon, tmp_path) as (_, pool):
        vol = await new_volume(pool, len(payload))
        done = await cli("vol", "upload", pool.name, vol.name, str(tmp_path / "f"),
                         "-c", daemon.uri("qemu", "/system"))
        assert done.returncode == 0, done.stderr
        assert Path(await vol.path()).read_bytes() == payload


async def test_errors_name_the_missing_object(daemon, tmp_path):
    uri = daemon.uri("qemu", "/system")
    target = str(tmp_path / "out")
    done = await cli("vol", "download", "no-such-pool", "v", target, "-c", uri)
    assert done.returncode == 1
    assert b"no-such-pool" in done.stderr and b"Traceback" not in done.stderr
    async with dir_pool(daemon, tmp_path) as (_, pool):
        done = await cli("vol", "download", pool.name, "no-such-vol", target, "-c", uri)
        assert done.returncode == 1
        assert b"no volume 'no-such-vol'" in done.stderr and pool.name.encode() in done.stderr
        assert not os.path.exists(target)            # nothing created for a missing volume
        vol = await new_volume(pool, MiB)
        done = await cli("vol", "upload", pool.name, vol.name, str(tmp_path / "missing"),
                         "-c", uri)
        assert done.returncode == 1 and b"missing" in done.stderr
        big = tmp_path / "big"
        big.write_bytes(bytes(MiB + 1))
        done = await cli("vol", "upload", pool.name, vol.name, str(big), "-c", uri)
        assert done.returncode == 1 and b"do not fit" in done.stderr
    done = await cli("console", "no-such-guest", "-c", uri)
    assert done.returncode == 1 and b"no-such-guest" in done.stderr


def serial_guest_xml(name: str) -> str:
    """A diskless KVM guest whose BIOS talks on the serial port (SeaBIOS through sgabios)."""
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type>"
            "<bios useserial='yes'/></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            "<serial type='pty'/><console type='pty'/></devices></domain>")


async def read_until(receive, marker: bytes, timeout: float = 30) -> bytes:
    """Bytes from ``receive()`` until ``marker`` shows up (bounded)."""
    seen = b""
    with anyio.fail_after(timeout):
        while marker not in seen:
            seen += await receive()
    return seen


@pytest.mark.kvm
async def test_console_of_a_kvm_guest_shows_the_seabios_banner(daemon):
    uri = daemon.uri("qemu", "/system")
    name = unique("console")
    async with aiovirt.connect(uri) as conn:
        dom = await conn.define_xml(serial_guest_xml(name))
        try:
            # the library: started paused so the console is open before the BIOS speaks
            await dom.start(VIR_DOMAIN_START_PAUSED)
            stream = await dom.open_console()
            async with stream:
                await dom.resume()
                seen = await read_until(stream.receive, b"SeaBIOS")
                await stream.send(b"\r")             # the guest's side takes input
            assert b"SeaBIOS" in seen
            assert conn.is_alive

            # the CLI, stdin a pipe: a plain copy; stdin's end ends the session cleanly
            await dom.destroy()
            await dom.start(VIR_DOMAIN_START_PAUSED)
            process = await anyio.open_process([AIOVIRT, "console", name, "-c", uri],
                                               env=ENV)
            async with process:
                assert process.stdin and process.stdout and process.stderr
                with anyio.fail_after(20):           # it says so once the console is open
                    said = await read_until(process.stderr.receive, b"Connected to domain")
                assert name.encode() in said
                await dom.resume()
                out = await read_until(process.stdout.receive, b"SeaBIOS")
                assert b"SeaBIOS" in out
                await process.stdin.send(b"\r")
                await process.stdin.aclose()
                with anyio.fail_after(20):
                    assert await process.wait() == 0
        finally:
            if await dom.is_active():
                await dom.destroy()
            await dom.undefine()


def read_pty_until(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    """Bytes from the pty master ``fd`` until ``marker`` shows up (bounded)."""
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no {marker!r} within {timeout} s; got {seen[-300:]!r}")
        seen += os.read(fd, 65536)
    return seen


@pytest.mark.kvm
async def test_console_on_a_terminal_is_raw_and_ctrl_bracket_leaves(daemon):
    uri = daemon.uri("qemu", "/system")
    name = unique("tty")
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    async with aiovirt.connect(uri) as conn:
        dom = await conn.define_xml(serial_guest_xml(name))
        try:
            await dom.start(VIR_DOMAIN_START_PAUSED)
            process = subprocess.Popen([AIOVIRT, "console", name, "-c", uri], stdin=slave,
                                       stdout=slave, stderr=slave, env=ENV,
                                       start_new_session=True)
            try:
                said = await anyio.to_thread.run_sync(read_pty_until, master,
                                                      b"Escape character is ^]")
                assert f"Connected to domain {name}".encode() in said
                assert not termios.tcgetattr(slave)[3] & termios.ECHO   # raw mode
                await dom.resume()
                await anyio.to_thread.run_sync(read_pty_until, master, b"SeaBIOS")
                os.write(master, b"\x1d")                                 # Ctrl-]
                code = await anyio.to_thread.run_sync(lambda: process.wait(timeout=20))
                assert code == 0
                assert termios.tcgetattr(slave) == before                # restored
                assert await dom.is_active()                             # the guest runs on
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
        finally:
            os.close(master)
            os.close(slave)
            if await dom.is_active():
                await dom.destroy()
            await dom.undefine()


async def test_the_uri_defaults_to_libvirts_default_uri(daemon, tmp_path):
    """No ``-c``: the CLI takes LIBVIRT_DEFAULT_URI, as virsh does (here: a download of a
    missing volume, which fails on the daemon, not for want of a URI)."""
    env = {**ENV, "LIBVIRT_DEFAULT_URI": daemon.uri("qemu", "/system")}
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [AIOVIRT, "vol", "download", "no-such-pool", "v", str(tmp_path / "out")],
            check=False, env=env)
    assert done.returncode != 0
    assert b"no-such-pool" in done.stderr or b"storage pool" in done.stderr.lower(), done.stderr
    assert b"LIBVIRT_DEFAULT_URI" not in done.stderr
