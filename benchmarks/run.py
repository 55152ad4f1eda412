"""aiovirt against libvirt-python, side by side, interleaved, against one libvirtd.

    .venv/bin/pip install -e '.[bench]'      # libvirt-python 9.0.0, built against libvirt-dev
    .venv/bin/python benchmarks/run.py [--quick] [--only CASE ...] [--rounds N]
                                       [--socket PATH [--daemon-pid PID]] [--output FILE]

By default it starts its own private libvirtd (``aiovirt.testing.daemon.PrivateDaemon``, default
settings: max_client_requests 5) and stops it at the end; ``--socket`` uses a running one.
Every case alternates the contenders round by round (rotating who goes first) and reports the
best and the median of each, and their ratio; the best figures are the ones compared with the
targets, the medians show the noise.  Besides wall time each round records this process's CPU
time (``time.process_time``: all threads) and, when the daemon's pid is known, libvirtd's CPU
time (the sum of its threads' ``schedstat``), which tells who is the bottleneck.

Cases: tiny, lookup, define, kvm, stats, cpu, memory, startup (see README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import libvirt  # type: ignore[import-untyped]

import aiovirt

libvirt.registerErrorHandler(lambda *_: None, None)  # keep libvirt-python quiet on stderr

HERE = Path(__file__).resolve().parent
NODE_XML = HERE / "node.xml"
CASES = ("tiny", "lookup", "define", "kvm", "stats", "cpu", "memory", "startup")

TEST_DOMAIN = ("<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
               "<os><type>hvm</type></os></domain>")
KVM_DOMAIN = ("<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory>"
              "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
              "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>")

LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


# -- the daemon -------------------------------------------------------------------------------

class ExternalDaemon:
    """A libvirtd somebody else runs (``--socket``); same ``uri()`` as PrivateDaemon."""

    def __init__(self, socket_path: str, pid: int | None) -> None:
        self.socket_path = socket_path
        self.pid = pid

    def uri(self, driver: str = "test", path: str = "/default", transport: str = "unix") -> str:
        assert transport == "unix"
        return f"{driver}+unix://{path}?socket={self.socket_path}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def daemon_cpu_ns(pid: int | None) -> int | None:
    """libvirtd's CPU time so far (ns), summed over its threads, or None if unknown."""
    if pid is None:
        return None
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total


# -- measuring ----------------------------------------------------------------------------------

@dataclass
class Sample:
    wall: float         # seconds
    cpu: float          # this process, seconds (all threads)
    daemon: float | None  # libvirtd, seconds


class Meter:
    """Wall, client CPU and daemon CPU between ``start()`` and ``stop()`` (any thread)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def start(self) -> None:
        self._d0 = daemon_cpu_ns(self.pid)
        self._c0 = time.process_time()
        self._t0 = time.perf_counter()

    def stop(self) -> Sample:
        wall = time.perf_counter() - self._t0
        cpu = time.process_time() - self._c0
        d1 = daemon_cpu_ns(self.pid)
        daemon = None if d1 is None or self._d0 is None else (d1 - self._d0) / 1e9
        return Sample(wall, cpu, daemon)


Round = Callable[[Meter], Awaitable[Any]]


async def interleave(rounds: int, variants: dict[str, Round], meter: Meter
                     ) -> dict[str, list[Any]]:
    """Run every variant once per round, rotating which goes first; their results by name."""
    names = list(variants)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            results[name].append(await variants[name](meter))
    return results


def in_thread(fn: Callable[[Meter], Any]) -> Round:
    """A libvirt-python round, run off the event loop so aiovirt's sockets keep answering
    the daemon's keepalive PINGs while it blocks."""
    async def run(meter: Meter) -> Any:
        return await asyncio.to_thread(fn, meter)
    return run


def run_threads(count: int, work: Callable[[int], None], meter: Meter) -> Sample:
    """``work(i)`` on ``count`` threads released together; measured from the release."""
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    meter.start()
    barrier.wait()
    for thread in threads:
        thread.join()
    sample = meter.stop()
    if errors:
        raise errors[0]
    return sample


async def run_tasks(count: int, work: Callable[[int], Awaitable[None]], meter: Meter) -> Sample:
    meter.start()
    await asyncio.gather(*(work(i) for i in range(count)))
    return meter.stop()


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal whole shares."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def best(samples: list[Sample]) -> float:
    return min(s.wall for s in samples)


def median(samples: list[Sample]) -> float:
    return statistics.median(s.wall for s in samples)


def best_cpu(samples: list[Sample]) -> float:
    """This process's CPU seconds in its cheapest round."""
    return min(s.cpu for s in samples)


# The targets of the tiny case, by concurrency: (throughput >= x, client CPU per call <= y)
# against libvirt-python's best variant (issue 15's).
CALL_TARGETS = {1: (1.0, 1.0), 16: (1.1, 0.6), 64: (1.1, 0.6)}


def per_call_us(samples: list[Sample], calls: int, daemon: bool = False) -> str:
    values = [(s.daemon if daemon else s.cpu) for s in samples]
    known = [v for v in values if v is not None]
    if len(known) < len(values):
        return "-"
    return f"{statistics.median(known) / calls * 1e6:.0f}"


# -- the summary ---------------------------------------------------------------------------------

@dataclass
class Verdict:
    case: str
    measure: str
    aiovirt: str
    libvirt_python: str
    ratio: float | None
    target: str
    met: bool | None


SUMMARY: list[Verdict] = []


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "MISSED")


def print_summary() -> None:
    say("## Summary: best rounds; ratio = aiovirt / libvirt-python (throughput: higher is "
        "better; time, CPU: lower is better)")
    say(f"{'case':<24} {'measure':<38} {'aiovirt':>12} {'libvirt-py':>12} {'ratio':>7}  "
        f"{'target':<10} result")
    for v in SUMMARY:
        ratio = "-" if v.ratio is None else f"{v.ratio:.2f}x"
        say(f"{v.case:<24} {v.measure:<38} {v.aiovirt:>12} {v.libvirt_python:>12} "
            f"{ratio:>7}  {v.target:<10} {verdict(v.met)}")
    say()


# -- 1, 2: tiny calls and lookups -------------------------------------------------------------

def av_calls(c: aiovirt.Connection, what: str, counts: list[int]) -> Round:
    """A round of ``len(counts)`` aiovirt tasks on ``c``, task i making ``counts[i]`` calls."""
    if what == "tiny":
        async def work(i: int) -> None:
            for _ in range(counts[i]):
                await c.get_lib_version()
    else:
        async def work(i: int) -> None:
            for _ in range(counts[i]):
                await c.lookup_domain(name="test")

    async def run(m: Meter) -> Sample:
        return await run_tasks(len(counts), work, m)
    return run


def lv_calls(conns: list[libvirt.virConnect], what: str, counts: list[int]) -> Round:
    """A round of ``len(counts)`` libvirt-python threads over ``conns`` (round robin)."""
    if what == "tiny":
        def work(i: int) -> None:
            c = conns[i % len(conns)]
            for _ in range(counts[i]):
                c.getLibVersion()
    else:
        def work(i: int) -> None:
            c = conns[i % len(conns)]
            for _ in range(counts[i]):
                c.lookupByName("test")
    return in_thread(lambda m: run_threads(len(counts), work, m))


async def case_calls(daemon: Any, meter: Meter, rounds: int, calls: int, what: str) -> None:
    """getLibVersion (``tiny``) or lookupByName('test') (``lookup``) at concurrency 1..64.

    aiovirt: N tasks on one connection (default: main socket + up to 4 lanes; and with
    lanes=0, one socket; and with pipeline_depth=5 too, never more calls on the socket than
    the daemon's max_client_requests).  libvirt-python: N threads on one shared connection,
    and N threads with a connection each."""
    uri = daemon.uri()
    title = "getLibVersion" if what == "tiny" else "lookupByName('test')"
    say(f"## {what}: {title}, {calls} calls per round, {rounds} interleaved rounds")
    cols = ("aiovirt", "aiovirt 1 socket", "lv shared conn", "lv conn/thread", "aiovirt depth=5")
    say("calls/s, best / median of the rounds; ratio = aiovirt / libvirt-python's best variant")
    say(f"{'conc':>4}  " + "  ".join(f"{c:>16}" for c in cols) + "  ratio best (median)")
    cpu_rows = []
    peak_av = peak_lv = 0.0
    async with aiovirt.connect(uri) as conn, aiovirt.connect(uri, lanes=0) as single, \
            aiovirt.connect(uri, lanes=0, pipeline_depth=5) as shallow:
        lv_shared = libvirt.open(uri)
        for conc in (1, 4, 16, 64):
            counts = shares(calls, conc)
            lv_own = [libvirt.open(uri) for _ in range(conc)]
            variants = {cols[0]: av_calls(conn, what, counts),
                        cols[1]: av_calls(single, what, counts),
                        cols[2]: lv_calls([lv_shared], what, counts),
                        cols[3]: lv_calls(lv_own, what, counts),
                        cols[4]: av_calls(shallow, what, counts)}
            await interleave(1, variants, meter)  # warm-up, untimed (opens aiovirt's lanes)
            res = await interleave(rounds, variants, meter)
            for c in lv_own:
                c.close()
            rate_best = {k: calls / best(v) for k, v in res.items()}
            rate_med = {k: calls / median(v) for k, v in res.items()}
            lv_best = max(rate_best[cols[2]], rate_best[cols[3]])
            lv_med = max(rate_med[cols[2]], rate_med[cols[3]])
            ratio = rate_best[cols[0]] / lv_best
            peak_av, peak_lv = max(peak_av, rate_best[cols[0]]), max(peak_lv, lv_best)
            cells = "  ".join(f"{f'{rate_best[k]:.0f} / {rate_med[k]:.0f}':>16}" for k in cols)
            say(f"{conc:>4}  {cells}  {ratio:5.2f}x ({rate_med[cols[0]] / lv_med:.2f}x)")
            cpu_rows.append(f"{conc:>4}  " + "  ".join(
                f"{f'{per_call_us(res[k], calls)} / {per_call_us(res[k], calls, True)}':>16}"
                for k in cols))
            thr_min, cpu_max = CALL_TARGETS.get(conc, (None, None)) if what == "tiny" \
                else (None, None)
            SUMMARY.append(Verdict(what, f"calls/s at concurrency {conc}",
                                   f"{rate_best[cols[0]]:.0f}", f"{lv_best:.0f}", ratio,
                                   f">= {thr_min}x" if thr_min else "-",
                                   ratio >= thr_min if thr_min else None))
            av_cpu = best_cpu(res[cols[0]]) / calls * 1e6
            lv_cpu = min(best_cpu(res[cols[2]]), best_cpu(res[cols[3]])) / calls * 1e6
            SUMMARY.append(Verdict(what, f"client CPU us/call at concurrency {conc}",
                                   f"{av_cpu:.1f}", f"{lv_cpu:.1f}", av_cpu / lv_cpu,
                                   f"<= {cpu_max}x" if cpu_max else "-",
                                   av_cpu / lv_cpu <= cpu_max if cpu_max else None))
        lv_shared.close()
    say("CPU us/call (median of the rounds): this process / libvirtd")
    say(f"{'conc':>4}  " + "  ".join(f"{c:>16}" for c in cols))
    for row in cpu_rows:
        say(row)
    ratio = peak_av / peak_lv
    say(f"peak: aiovirt {peak_av:.0f}/s, libvirt-python {peak_lv:.0f}/s (its best variant at any "
        f"concurrency): {ratio:.2f}x")
    SUMMARY.append(Verdict(what, "peak calls/s (any concurrency)", f"{peak_av:.0f}",
                           f"{peak_lv:.0f}", ratio, "-", None))
    say()


# -- 3: define + start ----------------------------------------------------------------------

async def case_define(daemon: Any, meter: Meter, rounds: int, count: int,
                      workers: int = 16) -> None:
    """define + start of ``count`` test-driver domains, each round on a fresh private host.

    aiovirt: ``workers`` tasks on one connection; libvirt-python: ``workers`` threads (a
    pool pulling from one queue) on one connection.  The URI names benchmarks/node.xml, so
    every connection gets its own empty host: nothing accumulates between rounds (and
    aiovirt keeps to one socket, since its lanes would not see that host)."""
    uri = daemon.uri(path=str(NODE_XML))
    say(f"## define: defineXML + create of {count} test-driver domains, {workers} workers, "
        f"one connection each, a fresh private host per round; {rounds} interleaved rounds")

    async def av(m: Meter) -> Sample:
        async with aiovirt.connect(uri) as conn:
            todo = iter(range(count))

            async def worker(_: int) -> None:
                for i in todo:
                    dom = await conn.define_xml(TEST_DOMAIN.format(name=f"d{i}"))
                    await dom.start()

            sample = await run_tasks(workers, worker, m)
            assert len(await conn.list_domains(1 | 16)) == count  # ACTIVE | PERSISTENT
            return sample

    def lv(m: Meter) -> Sample:
        conn = libvirt.open(uri)
        try:
            todo = iter(range(count))

            def worker(_: int) -> None:
                for i in todo:
                    conn.defineXML(TEST_DOMAIN.format(name=f"d{i}")).create()

            sample = run_threads(workers, worker, m)
            assert len(conn.listAllDomains(1 | 16)) == count
            return sample
        finally:
            conn.close()

    res = await interleave(rounds, {"aiovirt": av, "libvirt-python": in_thread(lv)}, meter)
    a, b = res["aiovirt"], res["libvirt-python"]
    for name, s in res.items():
        say(f"{name:<15} {best(s):.3f} s best, {median(s):.3f} s median "
            f"({count / best(s):.0f} domains/s); CPU us/domain client {per_call_us(s, count)}, "
            f"libvirtd {per_call_us(s, count, True)}")
    ratio = best(b) / best(a)
    say(f"aiovirt throughput / libvirt-python's: {ratio:.2f}x best, "
        f"{median(b) / median(a):.2f}x median")
    SUMMARY.append(Verdict("define", f"define+start {count}: domains/s", f"{count / best(a):.0f}",
                           f"{count / best(b):.0f}", ratio, "-", None))
    a_cpu, b_cpu = best_cpu(a) / count * 1e6, best_cpu(b) / count * 1e6
    SUMMARY.append(Verdict("define", "client CPU us/domain", f"{a_cpu:.0f}", f"{b_cpu:.0f}",
                           a_cpu / b_cpu, "<= 0.6x", a_cpu / b_cpu <= 0.6))
    say()


# -- 4: KVM guests ---------------------------------------------------------------------------

async def case_kvm(daemon: Any, meter: Meter, rounds: int, count: int = 16) -> None:
    """``count`` diskless KVM guests: define+start until all run, then destroy+undefine."""
    if not os.path.exists("/dev/kvm"):
        say("## kvm: skipped: /dev/kvm is missing on this machine")
        SUMMARY.append(Verdict("kvm", "skipped: no /dev/kvm", "-", "-", None, "<= 0.8x", None))
        say()
        return
    uri = daemon.uri("qemu", "/system")
    say(f"## kvm: {count} tiny diskless KVM guests (32 MiB, 1 vCPU): define+start until every "
        f"one is RUNNING, then destroy+undefine; {rounds} interleaved rounds")
    async with aiovirt.connect(uri) as conn:
        # warm-up, untimed: the QEMU driver probes capabilities and loads on first use
        dom = await conn.define_xml(KVM_DOMAIN.format(name=f"bench-warm-{uuid.uuid4().hex[:6]}"))
        await dom.start()
        await dom.destroy()
        await dom.undefine()

        async def av(m: Meter) -> tuple[Sample, Sample]:
            names = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(count)]
            doms: list[aiovirt.Domain] = [None] * count  # type: ignore[list-item]

            async def up(i: int) -> None:
                doms[i] = dom = await conn.define_xml(KVM_DOMAIN.format(name=names[i]))
                await dom.start()
                state, _ = await dom.state()
                assert state == aiovirt.DomainState.RUNNING, state

            async def down(i: int) -> None:
                await doms[i].destroy()
                await doms[i].undefine()

            return await run_tasks(count, up, m), await run_tasks(count, down, m)

        def lv(shared: bool) -> Round:
            def run(m: Meter) -> tuple[Sample, Sample]:
                conns = [libvirt.open(uri) for _ in range(1 if shared else count)]
                names = [f"bench-{uuid.uuid4().hex[:8]}" for _ in range(count)]
                doms: list[libvirt.virDomain] = [None] * count  # type: ignore[list-item]

                def up(i: int) -> None:
                    doms[i] = d = conns[i % len(conns)].defineXML(KVM_DOMAIN.format(name=names[i]))
                    d.create()
                    state = d.state()[0]
                    assert state == libvirt.VIR_DOMAIN_RUNNING, state

                def down(i: int) -> None:
                    doms[i].destroy()
                    doms[i].undefine()

                try:
                    return run_threads(count, up, m), run_threads(count, down, m)
                finally:
                    for c in conns:
                        c.close()
            return in_thread(run)

        variants = {"aiovirt, 1 connection": av,
                    f"libvirt-python, {count} threads, 1 shared conn": lv(True),
                    f"libvirt-python, {count} threads, {count} conns": lv(False)}
        try:
            res = await interleave(rounds, variants, meter)
        finally:  # a failed round must not leave guests behind
            for dom in await conn.list_domains():
                if dom.name.startswith("bench-"):
                    if dom.id > 0:
                        await dom.destroy()
                    await dom.undefine()
        sockets = len(conn.channels)
    for name, samples in res.items():
        ups, downs = [s[0] for s in samples], [s[1] for s in samples]
        say(f"{name:<42} up {best(ups):6.3f} s (median {median(ups):6.3f})   "
            f"teardown {best(downs):6.3f} s (median {median(downs):6.3f})")
    say(f"(aiovirt used {sockets} sockets: its main one and its lanes)")
    names = list(res)
    for label, k in (("up", 0), ("teardown", 1)):
        av_t = best([s[k] for s in res[names[0]]])
        for lv_name, tag in ((names[1], "1 shared conn"), (names[2], f"{count} conns")):
            lv_t = best([s[k] for s in res[lv_name]])
            target = label == "up" and tag == "1 shared conn"
            SUMMARY.append(Verdict("kvm", f"{label} time vs lv {tag}", f"{av_t:.3f}s",
                                   f"{lv_t:.3f}s", av_t / lv_t, "<= 0.8x" if target else "-",
                                   av_t / lv_t <= 0.8 if target else None))
        say(f"{label}: aiovirt takes {av_t / best([s[k] for s in res[names[1]]]):.2f}x the time "
            f"of libvirt-python on a shared connection, "
            f"{av_t / best([s[k] for s in res[names[2]]]):.2f}x of one with {count} connections")
    say()


# -- 5: all-domain stats ----------------------------------------------------------------------

async def case_stats(daemon: Any, meter: Meter, rounds: int, count: int) -> None:
    """One getAllDomainStats call over ``count`` running test-driver domains, each side."""
    uri = daemon.uri()
    say(f"## stats: getAllDomainStats (all groups) over {count} running test-driver domains "
        f"(shared test host), {rounds} interleaved rounds")
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    async with aiovirt.connect(uri) as conn:
        todo = iter(range(count))

        async def make(_: int) -> None:
            for i in todo:
                dom = await conn.define_xml(TEST_DOMAIN.format(name=f"{prefix}{i}"))
                await dom.start()

        started = time.perf_counter()
        await asyncio.gather(*(make(i) for i in range(32)))
        say(f"(setup: {count} domains defined and started in {time.perf_counter() - started:.1f}"
            " s)")
        lv = libvirt.open(uri)
        counts: dict[str, int] = {}
        try:
            async def av(m: Meter) -> Sample:
                m.start()
                stats = await conn.all_domain_stats()
                sample = m.stop()
                counts["aiovirt"] = len(stats)
                counts["values"] = sum(len(values) for _, values in stats)
                return sample

            def lv_round(m: Meter) -> Sample:
                m.start()
                stats = lv.getAllDomainStats()
                sample = m.stop()
                counts["libvirt-python"] = len(stats)
                return sample

            res = await interleave(rounds, {"aiovirt": av, "libvirt-python": in_thread(lv_round)},
                                   meter)
        finally:
            lv.close()
            for dom in await conn.list_domains():
                if dom.name.startswith(prefix):
                    await dom.destroy()
                    await dom.undefine()
    assert counts["aiovirt"] == counts["libvirt-python"] >= count, counts
    say(f"{counts['aiovirt']} records, {counts['values']} values in all")
    for name, s in res.items():
        say(f"{name:<15} {best(s):.3f} s best, {median(s):.3f} s median; CPU (median) client "
            f"{per_call_us(s, 1000)} ms, libvirtd {per_call_us(s, 1000, True)} ms")
    a, b = best(res["aiovirt"]), best(res["libvirt-python"])
    say(f"aiovirt takes {a / b:.2f}x libvirt-python's time "
        f"(median {median(res['aiovirt']) / median(res['libvirt-python']):.2f}x)")
    SUMMARY.append(Verdict("stats", f"getAllDomainStats x{count}: time", f"{a:.3f}s",
                           f"{b:.3f}s", a / b, "<= 1.25x", a / b <= 1.25))
    say()


# -- 6: client CPU per call ---------------------------------------------------------------------

async def case_cpu(daemon: Any, meter: Meter, rounds: int, calls: int, conc: int = 64) -> None:
    """Client CPU (this process, all threads) per getLibVersion at concurrency ``conc``."""
    uri = daemon.uri()
    say(f"## cpu: client CPU per getLibVersion, {calls} calls at concurrency {conc}, "
        f"{rounds} interleaved rounds")
    counts = shares(calls, conc)
    async with aiovirt.connect(uri) as conn:
        lv_shared = libvirt.open(uri)
        lv_own = [libvirt.open(uri) for _ in range(conc)]

        async def work(i: int) -> None:
            for _ in range(counts[i]):
                await conn.get_lib_version()

        async def av(m: Meter) -> Sample:
            return await run_tasks(conc, work, m)

        def lv(conns: list[libvirt.virConnect]) -> Round:
            def lv_work(i: int) -> None:
                c = conns[i % len(conns)]
                for _ in range(counts[i]):
                    c.getLibVersion()
            return in_thread(lambda m: run_threads(conc, lv_work, m))

        variants = {"aiovirt": av, "libvirt-python, shared conn": lv([lv_shared]),
                    f"libvirt-python, {conc} conns": lv(lv_own)}
        await interleave(1, variants, meter)  # warm-up
        res = await interleave(rounds, variants, meter)
        lv_shared.close()
        for c in lv_own:
            c.close()
    us = {k: [s.cpu / calls * 1e6 for s in v] for k, v in res.items()}
    for name, values in us.items():
        say(f"{name:<30} {min(values):5.1f} us/call best, {statistics.median(values):5.1f} "
            f"median  ({calls / best(res[name]):.0f} calls/s; libvirtd "
            f"{per_call_us(res[name], calls, True)} us/call)")
    a = min(us["aiovirt"])
    lv_best = min(min(v) for k, v in us.items() if k != "aiovirt")
    SUMMARY.append(Verdict("cpu", f"client CPU us/call at conc {conc}", f"{a:.1f}",
                           f"{lv_best:.1f}", a / lv_best, "<= 25 us", a <= 25))
    say()


# -- 7: memory ----------------------------------------------------------------------------------

MEMORY_PROBE = """
import asyncio, sys, time, aiovirt
def kib(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1])
async def main():
    async with aiovirt.connect(sys.argv[1]) as conn:
        await conn.get_lib_version()
        before = kib('VmRSS:')
        started = time.perf_counter()
        results = await asyncio.gather(*(conn.get_lib_version() for _ in range(int(sys.argv[2]))))
        took = time.perf_counter() - started
        assert len(results) == int(sys.argv[2])
        print(before, kib('VmHWM:'), kib('VmRSS:'), took, len(conn.channels))
asyncio.run(main())
"""


def case_memory(daemon: Any, calls: int = 10_000) -> None:
    """Added peak RSS with ``calls`` calls awaited at once on one connection (fresh process)."""
    say(f"## memory: {calls} getLibVersion calls awaited at once (asyncio.gather) on one "
        "connection, in a fresh process")
    # Import from compiled bytecode, as an installed package does: compiling aiovirt's large
    # generated modules from source (PYTHONDONTWRITEBYTECODE) leaves ~50 MB of freed memory
    # in the process, which the calls then reuse unseen, so the figure would read low.
    with tempfile.TemporaryDirectory(prefix="avb-pyc-") as cache:
        env = {**os.environ, "PYTHONPYCACHEPREFIX": cache}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([sys.executable, "-c", "import aiovirt"], env=env, check=True)
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, daemon.uri(), str(calls)],
                             env=env, check=True, capture_output=True, text=True).stdout.split()
    before, peak, after = (int(x) * 1024 / 1e6 for x in out[:3])  # kB -> MB (10^6 bytes)
    took, sockets = float(out[3]), int(out[4])
    added = peak - before
    say(f"RSS (MB, 10^6 bytes) {before:.1f} before, peak {peak:.1f}, {after:.1f} after: "
        f"+{added:.1f} MB at the peak ({added * 1e3 / calls:.1f} kB per pending call); "
        f"took {took:.2f} s on {sockets} sockets")
    SUMMARY.append(Verdict("memory", f"added peak RSS, {calls} pending", f"{added:.1f} MB", "-",
                           None, "<= 60 MB", added <= 60))
    say()


# -- 8: start-up -------------------------------------------------------------------------------

STARTUP_XML = ("<domain type='kvm'><name>start-up</name><memory>1048576</memory><vcpu>1</vcpu>"
               "<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
               "<disk type='file' device='disk'><source file='/x.img'/>"
               "<target dev='vda' bus='virtio'/></disk><interface type='network'>"
               "<source network='default'/><model type='virtio'/></interface>"
               "</devices></domain>")


def installed_copy(root: Path) -> Path:
    """A venv of its own under ``root`` with aiovirt installed as a wheel leaves it (the
    package's sources, compiled to bytecode, and pip's kind of console script); lxml is
    reached through a .pth line (the checkout's editable hook is not, so neither command
    pays for it).  Returns the venv's ``bin``."""
    import compileall
    import shutil

    import lxml

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    bin_dir = root / "bin"
    site = Path(subprocess.run([str(bin_dir / "python"), "-c", "import sysconfig; "
                                "print(sysconfig.get_path('purelib'))"], check=True,
                               capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(str(Path(lxml.__file__).parent.parent) + "\n")
    shutil.copytree(HERE.parent / "aiovirt", site / "aiovirt",
                    ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(str(site / "aiovirt"), quiet=1)
    script = bin_dir / "aiovirt"
    script.write_text(f"#!{bin_dir / 'python'}\nimport sys\nfrom aiovirt.cli import main\n"
                      "sys.exit(main())\n")
    script.chmod(0o755)
    return bin_dir


def case_startup(pairs: int = 20) -> None:
    """Wall time of ``aiovirt address FILE`` as installed, against ``python -c "import
    lxml.etree"`` (what any lxml program pays before its first line), in alternating pairs;
    also (no target) the import a client program pays, ``aiovirt.connect`` and the
    drop-in, against ``import libvirt`` (libvirt-python's C-backed module)."""
    say(f"## startup: `aiovirt address FILE` (a 2-device q35 domain) against "
        f"`python -c 'import lxml.etree'`, both from one venv with aiovirt installed as a "
        f"wheel installs it; {pairs} pairs after 2 unmeasured, alternating who goes first; "
        f"then the client's import against libvirt-python's, the same way")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="avb-start-") as tmp:
        bin_dir = installed_copy(Path(tmp) / "venv")
        xml = Path(tmp) / "domain.xml"
        xml.write_text(STARTUP_XML)
        python = str(bin_dir / "python")
        ours = [str(bin_dir / "aiovirt"), "address", str(xml)]
        out = subprocess.run(ours, env=env, check=True, capture_output=True, text=True).stdout
        assert "<address type=" in out, out   # it really addressed the domain

        def wall(command: list[str]) -> float:
            t0 = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - t0

        def paired(a: tuple[str, list[str]], b: tuple[str, list[str]]
                   ) -> tuple[list[float], list[float], float]:
            for _ in range(2):
                wall(a[1]), wall(b[1])
            walls: dict[str, list[float]] = {a[0]: [], b[0]: []}
            for i in range(pairs):
                for name, command in (a, b) if i % 2 == 0 else (b, a):
                    walls[name].append(wall(command))
            ratios = sorted(x / y for x, y in zip(walls[a[0]], walls[b[0]]))
            ratio = statistics.median(ratios)
            for name, values in walls.items():
                say(f"{name:<28} wall ms: min {min(values) * 1e3:.1f}, median "
                    f"{statistics.median(values) * 1e3:.1f}, max {max(values) * 1e3:.1f}")
            say(f"ratio per pair: median {ratio:.2f}x (min {ratios[0]:.2f}x, "
                f"max {ratios[-1]:.2f}x)")
            return walls[a[0]], walls[b[0]], ratio

        a, b, ratio = paired(("aiovirt address", ours),
                             ("import lxml.etree", [python, "-c", "import lxml.etree"]))
        SUMMARY.append(Verdict("startup", "aiovirt address / import lxml.etree",
                               f"{statistics.median(a) * 1e3:.1f} ms",
                               f"{statistics.median(b) * 1e3:.1f} ms", ratio, "<= 1.5x",
                               ratio <= 1.5))
        libvirt_python = ("import libvirt", [python, "-c", "import libvirt"])
        for name, code in (("aiovirt.connect", "import aiovirt; aiovirt.connect"),
                           ("import aiovirt.compat.libvirt",
                            "import aiovirt.compat.libvirt")):
            a, b, ratio = paired((name, [python, "-c", code]), libvirt_python)
            SUMMARY.append(Verdict("startup", f"{name} / import libvirt",
                                   f"{statistics.median(a) * 1e3:.1f} ms",
                                   f"{statistics.median(b) * 1e3:.1f} ms", ratio, "-", None))
    say()


# -- main -----------------------------------------------------------------------------------------

def machine_cpu() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


class Disturbance:
    """How busy the machine was with other work while a case ran: the machine's busy CPU
    minus this process (and its children) and libvirtd, as a share of all its cores."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.shares: list[str] = []

    def _own(self) -> float:
        t = os.times()
        daemon = daemon_cpu_ns(self.pid)
        return (t.user + t.system + t.children_user + t.children_system +
                (daemon or 0) / 1e9)

    def start(self) -> None:
        self._t0, self._own0, (self._busy0, self._steal0) = (
            time.perf_counter(), self._own(), machine_cpu())

    def stop(self, case: str) -> None:
        wall = time.perf_counter() - self._t0
        busy, steal = machine_cpu()
        capacity = wall * (os.cpu_count() or 1)
        other = max(0.0, (busy - self._busy0) - (self._own() - self._own0)) / capacity
        stolen = (steal - self._steal0) / capacity
        self.shares.append(f"{case} {other:.0%}" + (f" (+{stolen:.0%} stolen)" if stolen >= 0.005
                                                      else ""))


def describe_tree() -> str:
    """The aiovirt commit measured, and whether its working tree had changes."""
    try:
        commit = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain",
                                "--", "aiovirt"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "aiovirt (not a git checkout)"
    return f"aiovirt at {commit}" + (" + uncommitted changes in aiovirt/" if dirty else "")


def add_loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the event loop aiovirt runs on (uvloop: aiovirt[speed])")


def run_on(loop: str, main: Any) -> Any:
    """Run ``main`` on the chosen loop (libvirt-python's threads are not affected)."""
    if loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def pin(daemon_pid: int, daemon_cpu: int = 0, client_cpu: int = 1) -> str:
    """Every thread of libvirtd on one CPU, every thread of this process on another (threads
    started later inherit it), so the client's cost shows even on 2 cores."""
    for tid in os.listdir(f"/proc/{daemon_pid}/task"):
        os.sched_setaffinity(int(tid), {daemon_cpu})
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {client_cpu})
    return f"pinned: libvirtd on CPU {daemon_cpu}, the client on CPU {client_cpu}"


def loop_in_use() -> str:
    """"asyncio" or "uvloop": the module of the running loop."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def describe_machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, "
            f"Python {platform.python_version()}")


async def main(options: argparse.Namespace) -> None:
    quick = options.quick
    rounds = options.rounds or (2 if quick else 7)
    cases = options.only or list(CASES)
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")
    lv_version = libvirt.getVersion()
    lv_version_text = f"{lv_version // 1000000}.{lv_version // 1000 % 1000}.{lv_version % 1000}"
    with tempfile.TemporaryDirectory(prefix="avb-") as workdir:
        if options.socket:
            daemon: Any = ExternalDaemon(options.socket, options.daemon_pid)
            where = f"the libvirtd at {options.socket}"
        else:
            from aiovirt.testing.daemon import PrivateDaemon
            daemon = PrivateDaemon(workdir)
            where = "a private libvirtd (default settings: max_client_requests 5)"
        with daemon:
            meter = Meter(daemon.pid)
            pinned = pin(daemon.pid) if options.pin else "not pinned"
            async with aiovirt.connect(daemon.uri()) as conn:
                lib = await conn.get_lib_version()
            say(f"# aiovirt {aiovirt.__version__} vs libvirt-python {lv_version_text}, "
                f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
            say(f"# {describe_tree()}")
            say(f"# {describe_machine()}; {where}, libvirt "
                f"{lib // 1000000}.{lib // 1000 % 1000}.{lib % 1000}; "
                f"{'--quick, ' if quick else ''}{rounds} rounds per case unless it says "
                f"otherwise; aiovirt on {loop_in_use()}'s loop; {pinned}")
            say()
            started = time.perf_counter()
            disturbance = Disturbance(daemon.pid)
            runs: dict[str, Callable[[], Awaitable[None]]] = {
                "tiny": lambda: case_calls(daemon, meter, rounds, 2000 if quick else 8000,
                                           "tiny"),
                "lookup": lambda: case_calls(daemon, meter, rounds, 2000 if quick else 8000,
                                             "lookup"),
                "define": lambda: case_define(daemon, meter, rounds, 1000),
                "kvm": lambda: case_kvm(daemon, meter, options.rounds or (1 if quick else 3)),
                "stats": lambda: case_stats(daemon, meter, rounds, 1000 if quick else 5000),
                "cpu": lambda: case_cpu(daemon, meter, options.rounds or (2 if quick else 3),
                                        5000 if quick else 20000),
                "memory": lambda: asyncio.to_thread(case_memory, daemon),
                "startup": lambda: asyncio.to_thread(case_startup, 10 if quick else 20),
            }
            for case in CASES:
                if case in cases:
                    disturbance.start()
                    await runs[case]()
                    disturbance.stop(case)
            print_summary()
            say(f"(all cases took {time.perf_counter() - started:.0f} s)")
            say("(other work on the machine during each case, as a share of all its cores; "
                "in kvm it includes the guests: " + ", ".join(disturbance.shares) + ")")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller, faster cases")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per case")
    parser.add_argument("--only", nargs="+", metavar="CASE", help=f"only these: {', '.join(CASES)}")
    parser.add_argument("--socket", help="use the libvirtd listening on this UNIX socket "
                        "instead of starting a private one")
    parser.add_argument("--daemon-pid", type=int, help="with --socket: libvirtd's pid, to "
                        "measure its CPU time")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--pin", action="store_true", help="libvirtd on CPU 0, the client "
                        "(both libraries) on CPU 1, so the client's own cost shows")
    add_loop_option(parser)
    opts = parser.parse_args()
    try:
        run_on(opts.loop, main(opts))
    finally:
        if opts.output:
            Path(opts.output).write_text("\n".join(LINES) + "\n")
