"""Event throughput: lifecycle events delivered to a consumer from a define/undefine storm on
the test driver's shared host, aiovirt ``conn.domain_events()`` vs libvirt-python with its
default event loop (``virEventRegisterDefaultImpl`` + a thread running
``virEventRunDefaultImpl``, ``domainEventRegisterAny``), interleaved rounds.

    .venv/bin/python benchmarks/events.py [--domains N] [--rounds N] [--workers N]
                                          [--batch-window S] [--loop asyncio|uvloop]
                                          [--output FILE]

The storm is the same for both: a separate process (this script with ``--produce``) that
defines and undefines N test domains on its own aiovirt connection, ``--workers`` at a time,
so 2N events (DEFINED, UNDEFINED).  The consumer (this process) counts the events of that
round's domains (it reads each event's domain name) until it has all 2N.  Throughput is the
events delivered between the first and the last one, per second; the consumer's CPU is this
process's CPU time (all threads) over the round, per event; the producer's is not counted.
``--loop``: the event loop aiovirt's consumer runs on (asyncio's own by default, or uvloop's:
``aiovirt[speed]``), in this process and in the backlog mode's consumer children.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiovirt
from aiovirt.client.channel import DEFAULT_EVENT_BATCH_WINDOW

DOMAIN = ("<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
          "<os><type>hvm</type></os></domain>")
LINES: list[str] = []
BATCH_WINDOW = float(os.environ.get("AIOVIRT_EVENT_BATCH_WINDOW", DEFAULT_EVENT_BATCH_WINDOW))
LOOP = "asyncio"   # the loop aiovirt runs on here and in the consumer children (``--loop``)


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


# -- the storm (a separate process) --------------------------------------------------------------

async def produce(uri: str, prefix: str, count: int, workers: int) -> None:
    async with aiovirt.connect(uri) as conn:
        async def worker(k: int) -> None:
            for i in range(k, count, workers):
                dom = await conn.define_xml(DOMAIN.format(name=f"{prefix}{i}"))
                await dom.undefine()
        await asyncio.gather(*(worker(k) for k in range(workers)))


# -- the consumers ----------------------------------------------------------------------------

@dataclass
class Result:
    events: int
    span: float          # first to last event, s
    lag: float           # the producer's exit to the last event, s (negative: before)
    cpu: float           # this process, s, over the round
    dropped: int

    @property
    def rate(self) -> float:
        return self.events / self.span if self.span > 0 else float("nan")


async def storm(uri: str, prefix: str, count: int, workers: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--produce", uri, prefix, str(count), str(workers))


async def round_aiovirt(conn: aiovirt.Connection, uri: str, count: int, workers: int) -> Result:
    prefix = f"ev{uuid.uuid4().hex[:6]}-"
    want = 2 * count
    seen = dropped = 0
    first = last = 0.0
    c0 = time.process_time()
    async with conn.domain_events() as events:
        proc = await storm(uri, prefix, count, workers)
        done_at: list[float] = []

        async def reap() -> None:
            await proc.wait()
            done_at.append(time.perf_counter())
        reaper = asyncio.create_task(reap())
        async for event in events:
            if isinstance(event, aiovirt.Dropped):
                dropped += event.count
                continue
            if event.domain.name.startswith(prefix):
                last = time.perf_counter()
                if not seen:
                    first = last
                seen += 1
                if seen + dropped >= want:
                    break
        await reaper
    cpu = time.process_time() - c0
    if proc.returncode:
        raise RuntimeError(f"the producer failed ({proc.returncode})")
    return Result(seen, last - first, last - done_at[0], cpu, dropped)


class LvConsumer:
    """libvirt-python with its default event loop, on a thread of its own."""

    def __init__(self, uri: str) -> None:
        import libvirt  # type: ignore[import-untyped]
        self.libvirt = libvirt
        libvirt.registerErrorHandler(lambda *_: None, None)
        libvirt.virEventRegisterDefaultImpl()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.conn = libvirt.open(uri)

    def _run(self) -> None:
        while True:
            self.libvirt.virEventRunDefaultImpl()

    async def round(self, uri: str, count: int, workers: int) -> Result:
        prefix = f"ev{uuid.uuid4().hex[:6]}-"
        want = 2 * count
        state = {"seen": 0, "first": 0.0, "last": 0.0}
        finished = threading.Event()

        def callback(_conn: Any, dom: Any, _event: int, _detail: int, _opaque: Any) -> None:
            if dom.name().startswith(prefix):
                now = time.perf_counter()
                if not state["seen"]:
                    state["first"] = now
                state["last"] = now
                state["seen"] += 1
                if state["seen"] >= want:
                    finished.set()

        c0 = time.process_time()
        cb = self.conn.domainEventRegisterAny(
            None, self.libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)
        try:
            proc = await storm(uri, prefix, count, workers)
            await proc.wait()
            done = time.perf_counter()
            if not await asyncio.to_thread(finished.wait, 120):
                raise RuntimeError(f"libvirt-python saw {state['seen']} of {want} events")
        finally:
            self.conn.domainEventDeregisterAny(cb)
        cpu = time.process_time() - c0
        if proc.returncode:
            raise RuntimeError(f"the producer failed ({proc.returncode})")
        return Result(int(state["seen"]), state["last"] - state["first"],
                      state["last"] - done, cpu, 0)


# -- backlog: the consumer in a child process, stopped during the storm ----------------------

async def consume_child(kind: str, uri: str, prefix: str, want: int) -> None:
    """A consumer process: says "ready" once subscribed, then counts ``want`` events of
    ``prefix`` and prints ``first last seen cpu dropped`` (CLOCK_MONOTONIC seconds)."""
    seen = dropped = 0
    first = last = 0.0
    if kind == "aiovirt":
        async with aiovirt.connect(uri, event_batch_window=BATCH_WINDOW) as conn, \
                conn.domain_events(max_buffer=None) as events:
            print("ready", flush=True)
            c0 = time.process_time()
            async for event in events:
                if isinstance(event, aiovirt.Dropped):
                    dropped += event.count
                    continue
                if event.domain.name.startswith(prefix):
                    last = time.perf_counter()
                    if not seen:
                        first = last
                    seen += 1
                    if seen + dropped >= want:
                        break
            cpu = time.process_time() - c0
    else:
        import libvirt  # type: ignore[import-untyped]
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)],
                         daemon=True).start()
        conn = libvirt.open(uri)
        finished = threading.Event()
        state = {"seen": 0, "first": 0.0, "last": 0.0}

        def callback(_conn: Any, dom: Any, _event: int, _detail: int, _opaque: Any) -> None:
            if dom.name().startswith(prefix):
                now = time.perf_counter()
                if not state["seen"]:
                    state["first"] = now
                state["last"] = now
                state["seen"] += 1
                if state["seen"] >= want:
                    finished.set()

        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)
        print("ready", flush=True)
        c0 = time.process_time()
        finished.wait(120)
        cpu = time.process_time() - c0
        seen, first, last = int(state["seen"]), state["first"], state["last"]
    print(f"{first} {last} {seen} {cpu} {dropped}", flush=True)


async def round_backlog(kind: str, uri: str, count: int, workers: int) -> Result:
    """Stop the consumer (SIGSTOP) while the storm runs, then let it go: the events wait in
    the socket and libvirtd's queue, and the drain rate is the consumer's own capacity."""
    prefix = f"eb{uuid.uuid4().hex[:6]}-"
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--consume", kind, uri, prefix, str(2 * count), LOOP,
        stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 60)
    if line.strip() != b"ready":
        raise RuntimeError(f"the {kind} consumer said {line!r}")
    os.kill(child.pid, signal.SIGSTOP)
    try:
        proc = await storm(uri, prefix, count, workers)
        await proc.wait()
        await asyncio.sleep(0.3)
    finally:
        released = time.perf_counter()
        os.kill(child.pid, signal.SIGCONT)
    out = (await asyncio.wait_for(child.stdout.readline(), 120)).split()
    await child.wait()
    last, seen, cpu, dropped = float(out[1]), int(out[2]), float(out[3]), int(out[4])
    # span: from the release to the last event (the whole backlog was waiting by then)
    return Result(seen, last - released, 0.0, cpu, dropped)


async def main(options: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import Disturbance, describe_machine, describe_tree, loop_in_use  # noqa: PLC0415

    from aiovirt.testing.daemon import PrivateDaemon
    count, rounds, workers = options.domains, options.rounds, options.workers
    with tempfile.TemporaryDirectory(prefix="avb-events-") as workdir, \
            PrivateDaemon(workdir) as daemon:
        uri = daemon.uri()
        lv = LvConsumer(uri)
        async with aiovirt.connect(uri, event_batch_window=BATCH_WINDOW) as conn:
            lib = await conn.get_lib_version()
            lvv = lv.libvirt.getVersion()
            say(f"# events: aiovirt {aiovirt.__version__} vs libvirt-python "
                f"{lvv // 1000000}.{lvv // 1000 % 1000}.{lvv % 1000} (default event loop "
                f"impl), {time.strftime('%Y-%m-%d %H:%M %Z')}")
            say(f"# {describe_tree()}")
            say(f"# {describe_machine()}; a private libvirtd {lib // 1000000}."
                f"{lib // 1000 % 1000}.{lib % 1000}, test driver (shared host)")
            say(f"# storm: a separate process defines+undefines {count} domains on its own "
                f"aiovirt connection, {workers} at a time: {2 * count} lifecycle events per "
                f"round; {rounds} interleaved rounds (rotating who goes first); aiovirt's "
                f"event_batch_window {BATCH_WINDOW * 1e3:g} ms; aiovirt on {loop_in_use()}'s "
                "loop")
            say()
            disturbance = Disturbance(daemon.pid)
            live: dict[str, list[Result]] = {"aiovirt": [], "libvirt-python": []}
            backlog: dict[str, list[Result]] = {"aiovirt": [], "libvirt-python": []}
            if options.mode in ("live", "both"):
                disturbance.start()
                for r in range(rounds):
                    order = ["aiovirt", "libvirt-python"][::-1 if r % 2 else 1]
                    for name in order:
                        if name == "aiovirt":
                            res = await round_aiovirt(conn, uri, count, workers)
                        else:
                            res = await lv.round(uri, count, workers)
                        live[name].append(res)
                        print(f"  live round {r + 1} {name}: {res.events} events, "
                              f"{res.rate:.0f}/s, lag {res.lag * 1e3:+.0f} ms, "
                              f"dropped {res.dropped}", flush=True)
                disturbance.stop("live")
            if options.mode in ("backlog", "both"):
                disturbance.start()
                for r in range(rounds):
                    order = ["aiovirt", "libvirt-python"][::-1 if r % 2 else 1]
                    for name in order:
                        res = await round_backlog(name, uri, count, workers)
                        backlog[name].append(res)
                        print(f"  backlog round {r + 1} {name}: {res.events} events, "
                              f"{res.rate:.0f}/s, dropped {res.dropped}", flush=True)
                disturbance.stop("backlog")
        if live["aiovirt"]:
            say("## live: the consumer reads while the storm runs (in this process)")
            report(live, count, lag=True)
            say("(lag: from the producer's exit to the last event delivered, median; CPU: the "
                "consumer process over the whole round, per event)")
            say()
        if backlog["aiovirt"]:
            say(f"## backlog: the consumer (a child process, aiovirt with max_buffer=None) is "
                f"SIGSTOPped during the storm, then released: events/s = the {2 * count} "
                "queued events / (last event - release)")
            report(backlog, count, lag=False)
            say("(CPU: the consumer process from subscribing to its last event, per event)")
            say()
        say("(other work on the machine, as a share of all its cores: "
            + ", ".join(disturbance.shares) + ")")


def report(results: dict[str, list[Result]], count: int, lag: bool) -> None:
    say(f"{'consumer':<16}{'events/s best':>14}{'median':>9}{'CPU us/event':>14}"
        + (f"{'lag ms':>8}" if lag else "") + f"{'dropped':>9}")
    best, med, cpus = {}, {}, {}
    for name, rs in results.items():
        best[name] = max(r.rate for r in rs)
        med[name] = statistics.median(r.rate for r in rs)
        cpu = cpus[name] = statistics.median(r.cpu / (2 * count) for r in rs) * 1e6
        lag_ms = statistics.median(r.lag for r in rs) * 1e3
        say(f"{name:<16}{best[name]:>14.0f}{med[name]:>9.0f}{cpu:>14.1f}"
            + (f"{lag_ms:>+8.0f}" if lag else "") + f"{sum(r.dropped for r in rs):>9}")
    ratio = best["aiovirt"] / best["libvirt-python"]
    say(f"aiovirt / libvirt-python: {ratio:.2f}x best "
        f"({med['aiovirt'] / med['libvirt-python']:.2f}x median); target >= 1.0x: "
        + ("met" if ratio >= 1.0 else "MISSED"))
    cpu_ratio = cpus["aiovirt"] / cpus["libvirt-python"]
    say(f"client CPU per event, aiovirt / libvirt-python: {cpu_ratio:.2f}x (medians); "
        "target <= 0.5x: " + ("met" if cpu_ratio <= 0.5 else "MISSED"))

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import add_loop_option, run_on  # noqa: E402

    if len(sys.argv) > 1 and sys.argv[1] == "--consume":
        kind, uri, prefix, want, loop = sys.argv[2:7]
        run_on(loop, consume_child(kind, uri, prefix, int(want)))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--produce":
        uri, prefix, count, workers = sys.argv[2:6]
        asyncio.run(produce(uri, prefix, int(count), int(workers)))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=5000, help="domains per storm (5000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--workers", type=int, default=16, help="producer concurrency (16)")
    parser.add_argument("--mode", choices=("live", "backlog", "both"), default="both")
    parser.add_argument("--batch-window", type=float, default=BATCH_WINDOW,
                        help="aiovirt's event_batch_window, seconds (default: the library's)")
    add_loop_option(parser)
    parser.add_argument("--output", help="also write the report to this file")
    opts = parser.parse_args()
    LOOP = opts.loop
    # the consumer child processes of the backlog mode read it from the environment
    os.environ["AIOVIRT_EVENT_BATCH_WINDOW"] = str(opts.batch_window)
    BATCH_WINDOW = opts.batch_window
    try:
        run_on(opts.loop, main(opts))
    finally:
        if opts.output:
            Path(opts.output).write_text("\n".join(LINES) + "\n")
