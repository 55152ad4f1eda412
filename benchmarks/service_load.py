"""The REST service under load: how long ``GET /health`` takes while composes pile up.

    .venv/bin/python benchmarks/service_load.py [--composes 200] [--bursts 5]
        [--tree DIR] [--serve-arg=--compose-workers=2 ...] [--output FILE]

Starts ``aiovirt serve`` in its own process (from ``--tree``, default this checkout, so an
older tree, e.g. ``git archive HEAD | tar -x -C /tmp/before``, can be measured the same
way), then fires ``--bursts`` bursts of ``--composes`` parallel ``POST /compose`` requests
(4 profiles, addressing and schema validation each) from this process.  A third process
asks ``/health`` every 20 ms over one keep-alive connection the whole time and records each
latency from when the request was due (so a stall counts for every request it delayed),
sharing no event loop or GIL with either side.
Reported: /health latency idle and under load (p50, p99, max), compose throughput, and the
statuses the composes got (503 when the server's compose queue is full).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOMAIN = ("<domain type='kvm'><name>load-{n}</name><devices>"
          "<disk type='file' device='disk'><source file='/var/lib/x-{n}.qcow2'/>"
          "<target dev='vda' bus='virtio'/></disk>"
          "<interface type='network'><source network='default'/></interface>"
          "</devices></domain>")
PROFILES = ["kvm-base", "virtio-linux", "guest-agent", "q35-hotplug"]
SERVE = "import sys; from aiovirt.cli import main; sys.exit(main(sys.argv[1:]))"


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "no samples"
    ms = [x * 1e3 for x in latencies]
    return (f"n={len(ms)} p50={statistics.median(ms):.1f} ms p99={percentile(ms, 0.99):.1f} "
            f"ms max={max(ms):.1f} ms")


# -- the prober (its own process) -----------------------------------------------------------------

def probe(port: int, interval: float = 0.02) -> None:
    """Ask /health every ``interval`` seconds until stdin says stop; print [(start,
    seconds, ok), ...].  Latency counts from when a request was due, not when it could be
    sent: a server stalled for 0.5 s delays every request due meanwhile, and counting only
    the one that was waiting would hide that (coordinated omission)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples = []
    print("ready", flush=True)
    due = time.perf_counter()
    while not select.select([sys.stdin], [], [], 0)[0]:
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        start = time.time()
        try:
            conn.request("GET", "/health")
            reply = conn.getresponse()
            reply.read()
            ok = reply.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        samples.append((start, time.perf_counter() - due, ok))
        due += interval
    print(json.dumps(samples), flush=True)


# -- the server and the load ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(tree: Path, port: int, profiles: str, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.Popen([sys.executable, "-c", SERVE, "serve", "--port", str(port),
                             "--profiles-dir", profiles, "--no-system-profiles",
                             "--log-level", "warning", *extra], env=env)


def wait_up(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise SystemExit("the server did not answer within 30 s")


async def burst(port: int, bodies: list[bytes]) -> list[int]:
    """Open one connection per body, then send every request at once and read the answers
    (spoken raw: httpx would cost this process more CPU than the server spends composing,
    and the requests would trickle in); returns the statuses, 0 where a connection failed."""
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return None

    async def answer(pair: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> int:
        if pair is None:
            return 0
        reader, writer = pair
        try:
            status = int((await reader.readline()).split()[1])
            await reader.read()   # until the server closes
            return status
        except (OSError, ValueError, IndexError):
            return 0
        finally:
            writer.close()

    pairs = await asyncio.gather(*(connect() for _ in bodies))
    for pair, body in zip(pairs, bodies):
        if pair is not None:
            pair[1].write(b"POST /compose HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: "
                          b"application/json\r\ncontent-length: %d\r\nconnection: close"
                          b"\r\n\r\n%s" % (len(body), body))
    return await asyncio.gather(*(answer(pair) for pair in pairs))


async def load(port: int, composes: int, bursts: int) -> tuple[list[tuple[float, float]],
                                                                Counter[int], float, int]:
    statuses: Counter[int] = Counter()
    windows = []
    busy = 0.0
    n = 0
    for _ in range(bursts):
        bodies = [json.dumps({"domain": DOMAIN.format(n=n + i), "profiles": PROFILES,
                              "address": True}).encode() for i in range(composes)]
        start = time.time()
        t0 = time.perf_counter()
        codes = await burst(port, bodies)
        busy += time.perf_counter() - t0
        windows.append((start, time.time()))
        statuses.update(codes)
        n += composes
        await asyncio.sleep(0.2)
    return windows, statuses, busy, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--composes", type=int, default=200)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--tree", type=Path, default=HERE.parent,
                        help="the source tree to run the server from (default: this one)")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="an extra argument for `aiovirt serve` (repeatable)")
    parser.add_argument("--output", help="also write the report here")
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.probe:
        probe(options.probe)
        return
    port = free_port()
    lines = [f"# tree {options.tree}, {os.cpu_count()} cores, {options.bursts} bursts of "
             f"{options.composes} parallel composes; serve args {options.serve_arg}"]
    with tempfile.TemporaryDirectory() as profiles:
        server = start_server(options.tree, port, profiles, options.serve_arg)
        try:
            wait_up(port, server)
            prober = subprocess.Popen([sys.executable, __file__, "--probe", str(port)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert prober.stdout is not None and prober.stdin is not None
            prober.stdout.readline()
            time.sleep(1.0)   # idle samples first
            windows, statuses, busy, sent = asyncio.run(load(port, options.composes,
                                                             options.bursts))
            prober.stdin.write("stop\n")
            prober.stdin.flush()
            samples = json.loads(prober.stdout.readline())
            prober.wait(10)
        finally:
            server.terminate()
            server.wait(30)
    loaded = [s for s in samples if any(a <= s[0] <= b for a, b in windows)]
    idle = [s for s in samples if s[0] < windows[0][0]]
    failed = sum(not s[2] for s in loaded)
    lines += [f"/health idle:       {summary([s[1] for s in idle])}",
              f"/health under load: {summary([s[1] for s in loaded])}"
              + (f" ({failed} failed)" if failed else ""),
              f"composes: {sent} in {busy:.2f} s ({sent / busy:.0f}/s); statuses "
              f"{dict(sorted(statuses.items()))}"]
    text = "\n".join(lines)
    print(text)
    if options.output:
        Path(options.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
