"""``aiovirt vol download|upload`` and ``aiovirt console``: the commands built on streams.

Volumes stream to and from a local file; with ``--sparse`` the file's holes travel as
``Hole`` values (found with ``SEEK_DATA``/``SEEK_HOLE`` on upload, skipped with a seek on
download).  ``console`` is a terminal session on a guest's console like ``virsh console``:
raw mode and the ``Ctrl-]`` escape when stdin is a terminal, a plain byte copy (ending at
stdin's end) otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TextIO

import anyio

from ..client.backend import run as run_loop
from ..errors import AiovirtError

__all__ = ["ESCAPE", "extents", "register"]

ESCAPE = b"\x1d"          # Ctrl-]
EXIT_INTERRUPTED = 130
_READ = 256 * 1024        # one stream packet's payload
MiB = 1 << 20


# -- progress ------------------------------------------------------------------------------
class Transfer:
    """A one-line progress report on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str, total: int, show: bool, out: TextIO = sys.stderr) -> None:
        self.label, self.total, self.show, self.out = label, total, show, out
        self.done = 0
        self.started = self._drawn = time.monotonic()

    def advance(self, n: int) -> None:
        """Count ``n`` more bytes (data or hole) and redraw if it is time."""
        self.done += n
        now = time.monotonic()
        if self.show and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        rate = self.done / max(now - self.started, 1e-6) / MiB
        pct = f"{100 * self.done / self.total:5.1f}%" if self.total else "     "
        print(f"\r{self.label}: {pct} {self.done / MiB:9.1f} / {self.total / MiB:.1f} MiB "
              f"{rate:8.1f} MiB/s", end=end, file=self.out, flush=True)

    def close(self) -> None:
        """The final line."""
        if self.show:
            self._draw(time.monotonic(), end="\n")


def _show_progress(options: argparse.Namespace) -> bool:
    if options.progress is not None:
        return bool(options.progress)
    return sys.stderr.isatty()


# -- volumes -------------------------------------------------------------------------------
def extents(fd: int, size: int) -> Iterator[tuple[bool, int, int]]:
    """``(is_data, start, end)`` runs of the file, from ``SEEK_DATA``/``SEEK_HOLE``."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            data = size                      # nothing but a hole to the end
        data = min(data, size)
        if data > pos:
            yield False, pos, data
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield True, data, hole
        pos = hole


@contextlib.asynccontextmanager
async def _volume(options: argparse.Namespace) -> AsyncIterator[Any]:
    """The connection's ``StorageVolume`` named on the command line."""
    from ..api.connection import connect

    async with connect(options.uri) as conn:
        pool = await conn.lookup_storage_pool(name=options.pool)
        yield await pool.lookup_volume(options.vol)


def _file_error(path: str, exc: OSError) -> AiovirtError:
    return AiovirtError(f"{path}: {exc.strerror or exc}")


async def _download(options: argparse.Namespace) -> None:
    from ..api.streams import Hole

    async with _volume(options) as vol:
        total = (await vol.info()).capacity
        try:
            fd = os.open(options.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise _file_error(options.file, exc) from None
        progress = Transfer(f"{options.vol} -> {options.file}", total,
                            _show_progress(options))
        try:
            async with await vol.download(sparse=options.sparse) as stream:
                pos = 0
                async for item in stream:
                    if isinstance(item, Hole):
                        pos = os.lseek(fd, item.length, os.SEEK_CUR)
                        progress.advance(item.length)
                        continue
                    view = memoryview(item)
                    while view:
                        view = view[os.write(fd, view):]
                    pos += len(item)
                    progress.advance(len(item))
            os.ftruncate(fd, pos)            # a trailing hole: the file still gets its size
        except OSError as exc:
            raise _file_error(options.file, exc) from None
        finally:
            os.close(fd)
            progress.close()


async def _upload(options: argparse.Namespace) -> None:
    from ..api.streams import Hole

    try:
        fd = os.open(options.file, os.O_RDONLY)
    except OSError as exc:
        raise _file_error(options.file, exc) from None
    try:
        size = os.fstat(fd).st_size
        async with _volume(options) as vol:
            capacity = (await vol.info()).capacity
            if size > capacity:
                raise AiovirtError(f"{options.file}: {size} bytes do not fit in volume "
                                   f"{options.vol!r} of pool {options.pool!r} "
                                   f"({capacity} bytes)")
            progress = Transfer(f"{options.file} -> {options.vol}", size,
                                _show_progress(options))
            runs = extents(fd, size) if options.sparse else iter([(True, 0, size)])
            try:
                async with await vol.upload(length=size, sparse=options.sparse) as stream:
                    for is_data, start, end in runs:
                        if not is_data:
                            await stream.send(Hole(end - start))
                            progress.advance(end - start)
                            continue
                        pos = start
                        while pos < end:
                            chunk = os.pread(fd, min(_READ, end - pos), pos)
                            if not chunk:
                                raise AiovirtError(f"{options.file}: shrank while "
                                                   "being read")
                            await stream.send(chunk)
                            pos += len(chunk)
                            progress.advance(len(chunk))
            finally:
                progress.close()
    except OSError as exc:
        raise _file_error(options.file, exc) from None
    finally:
        os.close(fd)


def _run(coro_fn: Any, options: argparse.Namespace) -> int:
    """Run a command's coroutine; Ctrl-C aborts it (streams are aborted on the daemon)."""
    try:
        run_loop(coro_fn(options))
    except KeyboardInterrupt:
        print("\naiovirt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


# -- console -------------------------------------------------------------------------------
@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode, restored however the block ends."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _stdin_chunks(fd: int) -> AsyncIterator[bytes]:
    """What arrives on ``fd``, without blocking the loop; ends at end of file."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    try:
        loop.add_reader(fd, ready.set)
    except (PermissionError, ValueError, OSError):   # a regular file, /dev/null: never blocks
        while data := os.read(fd, 64 * 1024):
            yield data
        return
    try:
        while True:
            await ready.wait()
            ready.clear()
            try:
                data = os.read(fd, 64 * 1024)
            except BlockingIOError:
                continue
            if not data:
                return
            yield data
    finally:
        loop.remove_reader(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def _console_session(options: argparse.Namespace, interactive: bool) -> str:
    """Copy between the console and stdin/stdout; returns why the session ended."""
    from ..api.connection import connect

    flags = 1 if options.force else 0       # VIR_DOMAIN_CONSOLE_FORCE
    async with connect(options.uri) as conn:
        dom = await conn.lookup_domain(name=options.name)
        stream = await dom.open_console(options.devname, flags)
        escape = "\r\nEscape character is ^] (Ctrl + ])" if interactive else ""
        print(f"Connected to domain {options.name}{escape}\r", file=sys.stderr, flush=True)
        reason = "the console closed"
        async with stream, anyio.create_task_group() as tg:
            async def keyboard() -> None:
                nonlocal reason
                async for data in _stdin_chunks(sys.stdin.fileno()):
                    if interactive and ESCAPE in data:
                        data = data[:data.index(ESCAPE)]
                        if data:
                            await stream.send(data)
                        reason = "escape"
                        break
                    await stream.send(data)
                else:
                    reason = "end of input"
                tg.cancel_scope.cancel()

            async def screen() -> None:
                out = sys.stdout.fileno()
                async for data in stream:
                    _write_all(out, data)   # type: ignore[arg-type]
                tg.cancel_scope.cancel()

            tg.start_soon(keyboard)
            tg.start_soon(screen)
            if not interactive:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, tg.cancel_scope.cancel)
        return reason


def _console(options: argparse.Namespace) -> int:
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    if interactive:
        with _raw_terminal(stdin):
            reason = run_loop(_console_session(options, True))
        print(file=sys.stderr)
        if reason == "the console closed":
            print("aiovirt: the console closed", file=sys.stderr)
        return 0
    run_loop(_console_session(options, False))
    return 0


# -- registration --------------------------------------------------------------------------
def _add_vol_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pool", metavar="POOL", help="the storage pool's name")
    parser.add_argument("vol", metavar="VOL", help="the volume's name in the pool")
    parser.add_argument("file", metavar="FILE", help="the local file")
    parser.add_argument("--uri", "-c", metavar="URI",
                        help="the host (default: LIBVIRT_DEFAULT_URI or libvirt.conf's "
                             "uri_default, as virsh)")
    parser.add_argument("--sparse", action="store_true",
                        help="keep holes: send/receive them as holes, not zeros")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress line on stderr (default: when it is a terminal)")


def register(commands: Any) -> None:
    """Add ``vol`` and ``console``."""
    vol = commands.add_parser("vol", help="copy storage volumes to and from files",
                              description="Stream a storage volume to or from a local file.")
    actions = vol.add_subparsers(dest="vol_command", required=True, metavar="ACTION")
    download = actions.add_parser(
        "download", help="copy a volume into FILE",
        description="Copy volume VOL of pool POOL into FILE (created or truncated).")
    _add_vol_arguments(download)
    download.set_defaults(run=lambda o: _run(_download, o))
    upload = actions.add_parser(
        "upload", help="copy FILE into a volume",
        description="Copy FILE into volume VOL of pool POOL, from its start.")
    _add_vol_arguments(upload)
    upload.set_defaults(run=lambda o: _run(_upload, o))

    console = commands.add_parser(
        "console", help="attach to a guest's console",
        description="A terminal session on a running guest's serial console, like "
                    "`virsh console`: Ctrl-] leaves it.  When stdin is not a terminal, "
                    "stdin is copied to the console and the console to stdout until "
                    "stdin ends.")
    console.add_argument("name", metavar="NAME", help="the domain's name")
    console.add_argument("--uri", "-c", metavar="URI",
                         help="the host (default: LIBVIRT_DEFAULT_URI or libvirt.conf's "
                              "uri_default, as virsh)")
    console.add_argument("--devname", metavar="DEV",
                         help="the console or serial device's alias (default: the first)")
    console.add_argument("--force", action="store_true",
                         help="take the console over from another session")
    console.set_defaults(run=_console)
