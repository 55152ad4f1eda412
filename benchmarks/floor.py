"""The floor under the client-CPU targets: a bare asyncio client beside aiovirt and
libvirt-python, side by side, interleaved, against one private libvirtd.

    .venv/bin/python benchmarks/floor.py [--rounds N] [--calls N] [--transport unix|tls|both]
                                         [--loop asyncio|uvloop] [--pin] [--instructions] [--wake]
                                         [--output FILE]

``bare`` is the least a Python client on an asyncio loop can do per call: getLibVersion framed
by one ``struct.pack``, a future per serial, each call written at once, replies matched in
``data_received``; nothing checked, nothing bounded, no errors, events, keepalive or
reconnection.  Nobody should use it; it is here so that run.py's ratios against libvirt-python
can be read against what the language and the event loop cost whatever a library does.
Each round every contender makes ``--calls`` getLibVersion calls at concurrency 1, 16 and 64
(bare and aiovirt: that many tasks on one connection, on the same loop; libvirt-python: that
many threads on one shared connection and on a connection each, its better variant counted).
``--wake`` shows instead what the client's sleeping costs the daemon: at concurrency 16 over
each transport, two synchronous clients that keep 16 calls on the wire from one thread, one
sleeping in ``recv`` whenever no reply is there (``sleeper``, the least CPU a client can
spend) and one spinning on non-blocking reads instead (``spinner``), beside aiovirt and
libvirt-python, with libvirtd's own CPU per call: on 2 cores each wake-up of a sleeping
client is paid by the daemon too.
``--instructions`` (needs valgrind) also counts the user-space instructions per call of bare
and aiovirt at concurrency 16 with callgrind, which other load does not move: a child process
making 4000 calls minus one making 800, over 3200.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]
from common import callgrind_instructions
from run import (LINES, Meter, Round, Sample, add_loop_option, av_calls, best, best_cpu,
                 describe_machine,
                 describe_tree, in_thread, interleave, loop_in_use, lv_calls, median,
                 per_call_us, pin, run_on,
                 run_tasks, say, shares)

import aiovirt
from aiovirt.testing.daemon import PrivateDaemon
from aiovirt.testing.pki import loopback_tls

_HEADER = struct.Struct(">IIIiiii")   # length, program, version, procedure, type, serial, status
_FIELDS = struct.Struct(">I16xii")    # length ... serial, status
_HYPER = struct.Struct(">q")
_REMOTE, _OPEN, _LIB_VERSION = 0x20008086, 1, 157


class Bare(asyncio.Protocol):
    """The bare client: a future per serial, nothing else."""

    def __init__(self, tls: bool) -> None:
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.rest = b""
        self.status: asyncio.Future[None] | None = None
        self.serial = 0
        self.transport: Any = None
        self.tls = tls

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.status = asyncio.get_running_loop().create_future()
        if not self.tls:
            self.status.set_result(None)

    def data_received(self, data: bytes) -> None:
        assert self.status is not None
        if not self.status.done():   # libvirtd's byte after the TLS handshake: 1 is fine
            if data[:1] != b"\1":
                self.status.set_exception(ConnectionError(f"TLS status byte {data[:1]!r}"))
                return
            self.status.set_result(None)
            data = data[1:]
        if self.rest:
            data = self.rest + data
        pos, end, waiting = 0, len(data), self.waiting
        while end - pos >= 28:
            length, serial, status = _FIELDS.unpack_from(data, pos)
            if end - pos < length:
                break
            future = waiting.pop(serial)
            if status:
                future.set_exception(RuntimeError(f"call {serial} failed"))
            else:
                future.set_result(data[pos + 28:pos + length])
            pos += length
        self.rest = data[pos:]

    def call(self, procedure: int, body: bytes = b"") -> asyncio.Future[bytes]:
        self.serial = serial = self.serial + 1
        future = self.waiting[serial] = asyncio.get_running_loop().create_future()
        self.transport.write(_HEADER.pack(28 + len(body), _REMOTE, 1, procedure, 0, serial, 0)
                             + body)
        return future


async def bare_connect(address: str, transport: str, pki: Path | None) -> Bare:
    """A bare client connected to ``test:///default``: ``address`` is the UNIX socket's
    path, or the TLS port."""
    loop = asyncio.get_running_loop()
    if transport == "tls":
        assert pki is not None
        context = ssl.create_default_context(cafile=str(pki / "cacert.pem"))
        context.load_cert_chain(pki / "clientcert.pem", pki / "clientkey.pem")
        _, bare = await loop.create_connection(lambda: Bare(True), "127.0.0.1",
                                               int(address), ssl=context,
                                               server_hostname="localhost")
    else:
        _, bare = await loop.create_unix_connection(lambda: Bare(False), address)
    assert bare.status is not None
    await bare.status
    name = b"test:///default"
    await bare.call(_OPEN, struct.pack(">II", 1, len(name)) + name + bytes(-len(name) % 4)
                    + struct.pack(">I", 0))
    return bare


def bare_calls(bare: Bare, counts: list[int]) -> Any:
    async def work(i: int) -> None:
        call = bare.call
        for _ in range(counts[i]):
            _HYPER.unpack(await call(_LIB_VERSION))

    async def run(m: Meter) -> Sample:
        return await run_tasks(len(counts), work, m)
    return run


def pipelined_calls(where: str, pki: Path | None, calls: int, depth: int,
                    spin: bool) -> Round:
    """A synchronous client on its own socket (the UNIX socket at ``where``, or with ``pki``
    TLS to port ``where``) keeping ``depth`` getLibVersion calls on the wire, a new one
    written for each reply read; it sleeps in ``recv`` when no reply is there or, with
    ``spin``, polls with non-blocking reads instead."""
    def run(meter: Meter) -> Sample:
        if pki is None:
            sock: Any = socket.socket(socket.AF_UNIX)
            sock.connect(where)
        else:
            context = ssl.create_default_context(cafile=str(pki / "cacert.pem"))
            context.load_cert_chain(pki / "clientcert.pem", pki / "clientkey.pem")
            sock = context.wrap_socket(socket.create_connection(("127.0.0.1", int(where))),
                                       server_hostname="localhost")
            if sock.recv(1) != b"\1":   # libvirtd's status byte after the handshake
                raise ConnectionError("libvirtd refused the TLS session")
        with sock:
            name = b"test:///default"
            sock.sendall(_HEADER.pack(28 + 12 + len(name) + (-len(name) % 4), _REMOTE, 1,
                                      _OPEN, 0, 1, 0) + struct.pack(">II", 1, len(name))
                         + name + bytes(-len(name) % 4) + struct.pack(">I", 0))
            answer = sock.recv(1024)
            assert len(answer) >= 28 and _FIELDS.unpack_from(answer)[2] == 0, answer
            serial, sent, done, rest = 1, 0, 0, b""
            meter.start()
            first = []
            while sent < min(depth, calls):
                serial += 1
                sent += 1
                first.append(_HEADER.pack(28, _REMOTE, 1, _LIB_VERSION, 0, serial, 0))
            sock.sendall(b"".join(first))
            if spin:
                sock.setblocking(False)
            while done < calls:
                try:
                    data = sock.recv(1 << 16)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                if not data:
                    raise ConnectionError("libvirtd closed the socket")
                data = rest + data if rest else data
                pos, end, more = 0, len(data), []
                while end - pos >= 28:
                    length, _, status = _FIELDS.unpack_from(data, pos)
                    if end - pos < length:
                        break
                    if status:
                        raise RuntimeError("getLibVersion failed")
                    pos += length
                    done += 1
                    if sent < calls:
                        serial += 1
                        sent += 1
                        more.append(_HEADER.pack(28, _REMOTE, 1, _LIB_VERSION, 0, serial, 0))
                rest = data[pos:]
                if more:
                    payload = b"".join(more)
                    while payload:   # non-blocking while spinning: send what fits, retry
                        try:
                            payload = payload[sock.send(payload):]
                        except (BlockingIOError, ssl.SSLWantWriteError):
                            continue
            return meter.stop()
    return in_thread(run)


async def wake_case(transport: str, daemon: PrivateDaemon, uri: str, pki: Path | None,
                    meter: Meter, rounds: int, calls: int) -> None:
    conc = 16
    say(f"## {transport}: what the client's sleeping costs the daemon: getLibVersion, {conc} "
        f"calls on the wire, {calls} calls per round, {rounds} interleaved rounds")
    say("medians: calls/s, client CPU us/call, libvirtd CPU us/call")
    counts = shares(calls, conc)
    where = address(daemon, transport)
    async with aiovirt.connect(uri) as conn:
        shared = libvirt.open(uri)
        variants = {"libvirt-python (16 threads)": lv_calls([shared], "tiny", counts),
                    "aiovirt (16 tasks)": av_calls(conn, "tiny", counts),
                    "sleeper": pipelined_calls(where, pki, calls, conc, spin=False),
                    "spinner": pipelined_calls(where, pki, calls, conc, spin=True)}
        await interleave(1, variants, meter)   # warm-up, untimed
        res = await interleave(rounds, variants, meter)
        shared.close()
    for name, samples in res.items():
        say(f"{name:<28} {calls / median(samples):7.0f} "
            f"{statistics.median(s.cpu for s in samples) / calls * 1e6:7.1f} "
            f"{per_call_us(samples, calls, daemon=True):>7}")
    say()


async def case(transport: str, daemon: PrivateDaemon, uri: str, pki: Path | None,
               meter: Meter, rounds: int, calls: int) -> None:
    say(f"## {transport}: getLibVersion, {calls} calls per round, {rounds} interleaved rounds")
    say("calls/s best (median); client CPU us/call best (median); libvirt-python: the better "
        "of a shared connection and a connection per thread")
    say(f"{'conc':>4}  {'bare':>22}  {'aiovirt':>22}  {'libvirt-python':>22}   "
        f"CPU: aiovirt/bare  bare/lv  aiovirt/lv")
    bare = await bare_connect(address(daemon, transport), transport, pki)
    async with aiovirt.connect(uri) as conn:
        shared = libvirt.open(uri)
        for conc in (1, 16, 64):
            counts = shares(calls, conc)
            own = [libvirt.open(uri) for _ in range(conc)]
            variants = {"bare": bare_calls(bare, counts), "aiovirt": av_calls(conn, "tiny", counts),
                        "lv shared": lv_calls([shared], "tiny", counts),
                        "lv own": lv_calls(own, "tiny", counts)}
            await interleave(1, variants, meter)   # warm-up, untimed
            res = await interleave(rounds, variants, meter)
            for c in own:
                c.close()
            lv = min(("lv shared", "lv own"), key=lambda k: best_cpu(res[k]))

            def cell(key: str) -> str:
                s = res[key]
                cpu_med = median([Sample(x.cpu, 0.0, None) for x in s])
                return (f"{calls / best(s):6.0f} ({calls / median(s):5.0f}) "
                        f"{best_cpu(s) / calls * 1e6:4.1f} ({cpu_med / calls * 1e6:4.1f})")
            b, a, v = (best_cpu(res[k]) for k in ("bare", "aiovirt", lv))
            say(f"{conc:>4}  {cell('bare'):>22}  {cell('aiovirt'):>22}  {cell(lv):>22}   "
                f"{a / b:>15.2f}x  {b / v:>6.2f}x  {a / v:>9.2f}x")
        shared.close()
    bare.transport.close()
    say()


def address(daemon: PrivateDaemon, transport: str) -> str:
    return str(daemon.tls_port) if transport == "tls" else str(daemon.socket_path)


async def count_child(kind: str, transport: str, calls: int, address: str, uri: str,
                      pki: str) -> None:
    """Under callgrind (``--count-child``): ``calls`` getLibVersion calls by 16 tasks."""
    counts = shares(calls, 16)
    meter = Meter(None)
    if kind == "bare":
        bare = await bare_connect(address, transport, Path(pki) if pki else None)
        await bare_calls(bare, counts)(meter)
        bare.transport.close()
    else:
        async with aiovirt.connect(uri) as conn:
            await av_calls(conn, "tiny", counts)(meter)


def count_instructions(transport: str, daemon: PrivateDaemon, uri: str, pki: Path | None,
                       loop: str) -> dict[str, int]:
    """User-space instructions per call at concurrency 16, by contender (callgrind)."""
    per_call = {}
    for kind in ("bare", "aiovirt"):
        totals = [callgrind_instructions(
            [sys.executable, __file__, "--loop", loop, "--count-child", kind, transport,
             str(n), address(daemon, transport), uri, str(pki or "")]) for n in (800, 4000)]
        per_call[kind] = (totals[1] - totals[0]) // 3200
    return per_call


async def main(options: argparse.Namespace) -> None:
    transports = ("unix", "tls") if options.transport == "both" else (options.transport,)
    with tempfile.TemporaryDirectory(prefix="avf-") as work:
        config, pki = loopback_tls(work)
        with PrivateDaemon(Path(work) / "d", extra_config=config) as daemon:
            pinned = pin(daemon.pid) if options.pin else "not pinned"
            say(f"# floor: a bare asyncio client vs aiovirt {aiovirt.__version__} vs "
                f"libvirt-python, {time.strftime('%Y-%m-%d %H:%M %Z')}")
            say(f"# {describe_tree()}")
            say(f"# {describe_machine()}; a private libvirtd (max_client_requests 5), test "
                f"driver; bare and aiovirt on {loop_in_use()}'s loop; {pinned}")
            say()
            meter = Meter(daemon.pid)
            for transport in transports:
                uri = (daemon.uri(transport="tls") + f"?pkipath={pki}" if transport == "tls"
                       else daemon.uri())
                tls_pki = Path(pki) if transport == "tls" else None
                if options.wake:
                    await wake_case(transport, daemon, uri, tls_pki, meter, options.rounds,
                                    options.calls)
                    continue
                await case(transport, daemon, uri, tls_pki, meter, options.rounds,
                           options.calls)
                if options.instructions:
                    counted = await asyncio.to_thread(count_instructions, transport, daemon,
                                                      uri, tls_pki, options.loop)
                    say(f"## {transport}: user-space instructions per call at concurrency 16 "
                        "(callgrind, 4000 calls minus 800, over 3200)")
                    say(f"bare {counted['bare']:,}  aiovirt {counted['aiovirt']:,}  "
                        f"aiovirt/bare {counted['aiovirt'] / counted['bare']:.2f}x")
                    say()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--calls", type=int, default=8000, help="calls per round (8000)")
    parser.add_argument("--transport", choices=("unix", "tls", "both"), default="both")
    parser.add_argument("--pin", action="store_true", help="libvirtd on CPU 0, this process "
                        "on CPU 1")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--wake", action="store_true", help="instead: libvirtd's CPU per call "
                        "against a client that sleeps between replies and one that spins")
    parser.add_argument("--instructions", action="store_true", help="also count user-space "
                        "instructions per call at concurrency 16 (callgrind)")
    parser.add_argument("--count-child", nargs=6, help=argparse.SUPPRESS,
                        metavar=("KIND", "TRANSPORT", "CALLS", "ADDRESS", "URI", "PKI"))
    add_loop_option(parser)
    opts = parser.parse_args()
    if opts.count_child:
        kind, transport, calls, where, uri, pki = opts.count_child
        run_on(opts.loop, count_child(kind, transport, int(calls), where, uri, pki))
        raise SystemExit(0)
    try:
        run_on(opts.loop, main(opts))
    finally:
        if opts.output:
            Path(opts.output).write_text("\n".join(LINES) + "\n")
