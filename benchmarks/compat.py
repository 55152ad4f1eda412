"""aiovirt.compat (libvirt-python's names) against libvirt-python, and aiovirt's object API
against its raw layer, side by side, interleaved, against one private libvirtd.

    .venv/bin/python benchmarks/compat.py [--quick] [--only CASE ...] [--rounds N]
                                          [--calls N] [--domains N] [--instructions]
                                          [--output FILE]

One private libvirtd (``aiovirt.testing.daemon.PrivateDaemon``, default settings:
max_client_requests 5), test driver.  Every case alternates its contenders round by round,
rotating who goes first, with run.py's helpers (this script imports them); best and median
of each; per round the wall time, this process's CPU (``time.process_time``: all threads, so
the drop-in's private event-loop thread and libvirt-python's C library alike) and libvirtd's.

Cases:

* ``tiny``: getLibVersion from 16 threads sharing one connection: the blocking drop-in
  (``import aiovirt.compat.libvirt as libvirt``: one ``virConnect``) against libvirt-python
  (one ``virConnect``).  Also shown, no verdict: the same from 1 thread, and aiovirt's own
  async API (16 tasks on one connection), the drop-in minus its thread hop.  Target:
  throughput >= 0.8x libvirt-python's at 16 threads.  And, no verdict, 1 thread that is the
  main thread of a process of its own (a script's shape: there the drop-in's lone caller
  writes its call and reads its reply itself, no pass of its event loop), in child
  processes of this script, their own CPU.
* ``define``: defineXML + create of N test-driver domains (``--domains``, 1000) by 16 threads
  on one connection, a fresh private host (benchmarks/node.xml) per round, as run.py's
  ``define``: drop-in against libvirt-python (and aiovirt's async API, 16 tasks, no
  verdict).  Target >= 0.8x.
* ``api``: client CPU per call of aiovirt's object API (``await dom.info()``,
  ``await conn.list_all_domains()``...) against the same procedure called on the raw layer
  (``conn.rpc.<procedure>(wire args)``), on one aiovirt connection at concurrency 16 and 1;
  also shown (no verdict): the async compat layer ``aiovirt.compat.aio`` (libvirt-python's
  names as coroutines) on its own connection.  Target: object API <= 1.1x the raw layer's
  client CPU per call, per call kind (best rounds: the least CPU per call).  With
  ``--instructions`` (needs valgrind, ~2-4 min more) the verdicts are on instructions per
  call instead, which other load does not move (CPU time swings +-30 % on a busy 2-core VM;
  still shown): per kind, raw and object API, concurrency 16 and 1, callgrind counts this
  client's user-space instructions in a run of N calls (2000 at 16, 1000 at 1) and in one of
  none (each a fresh connection, lookup and 50 warm-up calls per task), forked two at a time
  from one ``compat.py --count-child`` under callgrind that imports aiovirt once; the
  difference over N is the cost per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import libvirt  # type: ignore[import-untyped]  # noqa: E402

import aiovirt  # noqa: E402
import aiovirt.compat.libvirt as dropin  # noqa: E402
from aiovirt.compat import aio as compat_aio  # noqa: E402
from aiovirt.testing.daemon import PrivateDaemon  # noqa: E402
from common import callgrind  # noqa: E402
from run import (LINES, NODE_XML, TEST_DOMAIN, Disturbance, Meter, Round,  # noqa: E402
                 Sample, Verdict, best, describe_machine, describe_tree, in_thread,
                 interleave, median, run_tasks, run_threads, say, shares, verdict)

CASES = ("tiny", "define", "api")
THREADS = 16
DROPIN_TARGET = 0.8      # drop-in throughput / libvirt-python's, at least
API_TARGET = 1.1         # object API client CPU per call / the raw layer's, at most

SUMMARY: list[Verdict] = []   # aiovirt = the contender, libvirt_python = its baseline

dropin.registerErrorHandler(lambda *_: None, None)


# -- reporting ----------------------------------------------------------------------------------

def cpu_us(samples: list[Sample], per: int, pick: Callable[[list[float]], float]) -> float:
    return pick([s.cpu for s in samples]) / per * 1e6


def daemon_us(samples: list[Sample], per: int) -> str:
    values = [s.daemon for s in samples]
    if any(v is None for v in values):
        return "-"
    return f"{statistics.median(v for v in values if v is not None) / per * 1e6:.0f}"


def table(res: dict[str, list[Sample]], per: int, unit: str, width: int = 34) -> None:
    say(f"{'variant':<{width}} {unit + 's/s best / median':>22} {'client CPU us/' + unit:>20} "
        f"{'libvirtd us':>11}")
    say(f"{'':<{width}} {'':>22} {'best / median':>20} {'median':>11}")
    for name, samples in res.items():
        rate = f"{per / best(samples):.0f} / {per / median(samples):.0f}"
        cpu = f"{cpu_us(samples, per, min):.1f} / {cpu_us(samples, per, statistics.median):.1f}"
        say(f"{name:<{width}} {rate:>22} {cpu:>20} {daemon_us(samples, per):>11}")


def compare(res: dict[str, list[Sample]], per: int, unit: str, a: str, b: str) -> tuple[float,
                                                                                     float]:
    """Say and return (throughput ratio, client CPU ratio) of ``a`` over ``b``, best rounds."""
    ratio = best(res[b]) / best(res[a])
    cpu = cpu_us(res[a], per, min) / cpu_us(res[b], per, min)
    say(f"{a} / {b}: throughput {ratio:.2f}x best ({median(res[b]) / median(res[a]):.2f}x "
        f"median); client CPU per {unit} {cpu:.2f}x (best rounds; median "
        f"{cpu_us(res[a], per, statistics.median) / cpu_us(res[b], per, statistics.median):.2f}x)")
    return ratio, cpu


def print_summary() -> None:
    say("## Summary: best rounds; ratio = contender / baseline (throughput: higher is better; "
        "CPU: lower is better)")
    say("## baseline: libvirt-python (tiny, define); the raw layer conn.rpc (api)")
    width = max([34] + [len(v.measure) for v in SUMMARY])
    say(f"{'case':<28} {'measure':<{width}} {'contender':>10} {'baseline':>10} {'ratio':>7}  "
        f"{'target':<9} result")
    for v in SUMMARY:
        ratio = "-" if v.ratio is None else f"{v.ratio:.2f}x"
        say(f"{v.case:<28} {v.measure:<{width}} {v.aiovirt:>10} {v.libvirt_python:>10} "
            f"{ratio:>7}  {v.target:<9} {verdict(v.met)}")
    say()


# -- 1: tiny calls from threads -------------------------------------------------------------------

def thread_calls(conn: Any, counts: list[int]) -> Round:
    """A round of ``len(counts)`` threads calling ``conn.getLibVersion()`` (either module's
    ``virConnect``): thread i makes ``counts[i]`` calls."""
    def work(i: int) -> None:
        for _ in range(counts[i]):
            conn.getLibVersion()
    return in_thread(lambda m: run_threads(len(counts), work, m))


def main_thread_calls(module: str, uri: str, calls: int) -> Round:
    """A round in a child process of this script that calls ``getLibVersion`` ``calls`` times
    from its main thread, as a script does (``module``: "drop-in" or "libvirt-python"); the
    child's wall time and CPU (all its threads) for the calls, after open and warm-up."""
    def run(meter: Meter) -> Sample:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()),
                               "--main-thread-child", module, uri, str(calls)],
                              capture_output=True, text=True, check=True,
                              env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
        wall, cpu = json.loads(done.stdout.splitlines()[-1])
        return Sample(wall, cpu, None)
    return in_thread(run)


def main_thread_child(module: str, uri: str, calls: int) -> None:
    """(``--main-thread-child``) the calls of ``main_thread_calls``; prints [wall, cpu]."""
    conn = (dropin if module == "drop-in" else libvirt).open(uri)
    for _ in range(200):
        conn.getLibVersion()
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        conn.getLibVersion()
    print(json.dumps([time.perf_counter() - started, time.process_time() - cpu]), flush=True)
    conn.close()


def bare_hops(loop: asyncio.AbstractEventLoop, counts: list[int]) -> Round:
    """The thread hop alone: threads each waiting for ``run_coroutine_threadsafe`` of a
    coroutine doing nothing on an idle event-loop thread (the drop-in's mechanism, no I/O)."""
    async def nothing() -> None:
        pass

    def work(i: int) -> None:
        for _ in range(counts[i]):
            asyncio.run_coroutine_threadsafe(nothing(), loop).result()
    return in_thread(lambda m: run_threads(len(counts), work, m))


def task_calls(conn: aiovirt.Connection, counts: list[int]) -> Round:
    async def work(i: int) -> None:
        for _ in range(counts[i]):
            await conn.get_lib_version()

    async def run(m: Meter) -> Sample:
        return await run_tasks(len(counts), work, m)
    return run


async def case_tiny(daemon: Any, meter: Meter, rounds: int, calls: int) -> None:
    uri = daemon.uri()
    say(f"## tiny: getLibVersion, {calls} calls per round (1 thread: {calls // 4}), "
        f"{rounds} interleaved rounds")
    say("drop-in = aiovirt.compat.libvirt, one virConnect shared by the threads; "
        "libvirt-python: one virConnect shared by the threads")
    say("also shown: aiovirt async = aiovirt's own API, tasks on one connection (the drop-in "
        "minus its thread hop); bare hop = the threads each waiting for "
        "run_coroutine_threadsafe(a coroutine doing nothing) on an idle loop thread of this "
        "script's (the hop alone, no call)")
    dl_conn = await asyncio.to_thread(dropin.open, uri)
    lv_conn = await asyncio.to_thread(libvirt.open, uri)
    hop_loop = asyncio.new_event_loop()
    hop_thread = threading.Thread(target=hop_loop.run_forever, name="bare-hop-loop",
                                  daemon=True)
    hop_thread.start()
    try:
        async with aiovirt.connect(uri) as conn:
            for conc, n in ((THREADS, calls), (1, calls // 4)):
                counts = shares(n, conc)
                names = (f"drop-in {conc} thr, 1 conn", f"libvirt-python {conc} thr, 1 conn",
                         f"aiovirt async {conc} tasks, 1 conn", f"bare hop {conc} thr (no call)")
                variants = {names[0]: thread_calls(dl_conn, counts),
                            names[1]: thread_calls(lv_conn, counts),
                            names[2]: task_calls(conn, counts),
                            names[3]: bare_hops(hop_loop, counts)}
                await interleave(1, variants, meter)   # warm-up, untimed (opens the lanes)
                res = await interleave(rounds, variants, meter)
                say(f"-- concurrency {conc}")
                table(res, n, "call")
                ratio, cpu = compare(res, n, "call", names[0], names[1])
                compare(res, n, "call", names[0], names[2])
                hop = cpu_us(res[names[0]], n, min) - cpu_us(res[names[2]], n, min)
                say(f"the thread hop costs {hop:.1f} us of client CPU per call (drop-in - "
                    f"aiovirt async, best rounds); alone (bare hop) "
                    f"{cpu_us(res[names[3]], n, min):.1f} us, at most "
                    f"{n / best(res[names[3]]):.0f} hops/s")
                target = conc == THREADS
                thr = "threads" if conc > 1 else "thread"
                SUMMARY.append(Verdict("tiny drop-in", f"calls/s, {conc} {thr}",
                                       f"{n / best(res[names[0]]):.0f}",
                                       f"{n / best(res[names[1]]):.0f}", ratio,
                                       f">= {DROPIN_TARGET}x" if target else "-",
                                       ratio >= DROPIN_TARGET if target else None))
                SUMMARY.append(Verdict("tiny drop-in", f"client CPU us/call, {conc} {thr}",
                                       f"{cpu_us(res[names[0]], n, min):.1f}",
                                       f"{cpu_us(res[names[1]], n, min):.1f}", cpu, "-", None))
            # 1 thread again, the main thread of a process of its own: a script's shape, where
            # the drop-in's lone caller writes its call and reads its reply itself
            n = calls // 4
            names = ("drop-in main thread", "libvirt-python main thread")
            variants = {names[0]: main_thread_calls("drop-in", uri, n),
                        names[1]: main_thread_calls("libvirt-python", uri, n)}
            res = await interleave(rounds, variants, meter)
            say("-- 1 thread, the main thread of a process of its own (a script's shape); "
                "client CPU = that process's")
            table(res, n, "call")
            ratio, cpu = compare(res, n, "call", names[0], names[1])
            SUMMARY.append(Verdict("tiny drop-in", "calls/s, main thread",
                                   f"{n / best(res[names[0]]):.0f}",
                                   f"{n / best(res[names[1]]):.0f}", ratio, "-", None))
            SUMMARY.append(Verdict("tiny drop-in", "client CPU us/call, main thread",
                                   f"{cpu_us(res[names[0]], n, min):.1f}",
                                   f"{cpu_us(res[names[1]], n, min):.1f}", cpu, "-", None))
            sockets = len(conn.channels)
    finally:
        hop_loop.call_soon_threadsafe(hop_loop.stop)
        await asyncio.to_thread(hop_thread.join)
        hop_loop.close()
        await asyncio.to_thread(dl_conn.close)
        await asyncio.to_thread(lv_conn.close)
    say(f"(aiovirt async used {sockets} sockets: its main one and its lanes; the drop-in "
        "opens its connection with the same defaults)")
    say()


# -- 2: define + start from threads ---------------------------------------------------------------

async def case_define(daemon: Any, meter: Meter, rounds: int, count: int) -> None:
    uri = daemon.uri(path=str(NODE_XML))
    workers = THREADS
    say(f"## define: defineXML + create of {count} test-driver domains, {workers} workers on "
        f"one connection, a fresh private host per round; {rounds} interleaved rounds")

    def threads(module: Any) -> Callable[[Meter], Sample]:
        def round_(m: Meter) -> Sample:
            conn = module.open(uri)
            try:
                todo = iter(range(count))

                def worker(_: int) -> None:
                    for i in todo:
                        conn.defineXML(TEST_DOMAIN.format(name=f"d{i}")).create()

                sample = run_threads(workers, worker, m)
                assert len(conn.listAllDomains(1 | 16)) == count   # ACTIVE | PERSISTENT
                return sample
            finally:
                conn.close()
        return round_

    async def av(m: Meter) -> Sample:
        async with aiovirt.connect(uri) as conn:
            todo = iter(range(count))

            async def worker(_: int) -> None:
                for i in todo:
                    dom = await conn.define_xml(TEST_DOMAIN.format(name=f"d{i}"))
                    await dom.start()

            sample = await run_tasks(workers, worker, m)
            assert len(await conn.list_domains(1 | 16)) == count
            return sample

    names = (f"drop-in {workers} thr, 1 conn", f"libvirt-python {workers} thr, 1 conn",
             f"aiovirt async {workers} tasks, 1 conn")
    res = await interleave(rounds, {names[0]: in_thread(threads(dropin)),
                                    names[1]: in_thread(threads(libvirt)), names[2]: av}, meter)
    table(res, count, "domain")
    ratio, cpu = compare(res, count, "domain", names[0], names[1])
    compare(res, count, "domain", names[0], names[2])
    hop = cpu_us(res[names[0]], count, min) - cpu_us(res[names[2]], count, min)
    say(f"the thread hops (2 calls per domain) cost {hop:.1f} us of client CPU per domain "
        "(drop-in - aiovirt async, best rounds)")
    SUMMARY.append(Verdict("define drop-in", f"define+start {count}: domains/s",
                           f"{count / best(res[names[0]]):.0f}",
                           f"{count / best(res[names[1]]):.0f}", ratio, f">= {DROPIN_TARGET}x",
                           ratio >= DROPIN_TARGET))
    SUMMARY.append(Verdict("define drop-in", "client CPU us/domain",
                           f"{cpu_us(res[names[0]], count, min):.1f}",
                           f"{cpu_us(res[names[1]], count, min):.1f}", cpu, "-", None))
    say()


# -- 3: the object API against the raw layer -------------------------------------------------------

Call = Callable[[], Awaitable[Any]]


def call_kinds(conn: aiovirt.Connection, dom: Any) -> list[tuple[str, str, Call, Call]]:
    """(kind, what, raw, object API) per call kind: the same procedure each."""
    rpc, ref = conn.rpc, dom._ref
    return [
        ("lib_version", "conn.get_lib_version() / rpc.connect_get_lib_version()",
         rpc.connect_get_lib_version, conn.get_lib_version),
        ("lookup", "conn.lookup_domain(name=) / rpc.domain_lookup_by_name(name)",
         lambda: rpc.domain_lookup_by_name("test"), lambda: conn.lookup_domain(name="test")),
        ("get_info", "dom.get_info() / rpc.domain_get_info(ref)",
         lambda: rpc.domain_get_info(ref), dom.get_info),
        ("info", "dom.info() (DomainInfo, enum state) / rpc.domain_get_info(ref)",
         lambda: rpc.domain_get_info(ref), dom.info),
        ("list_all_domains", "conn.list_all_domains() / rpc.connect_list_all_domains(1, 0)",
         lambda: rpc.connect_list_all_domains(1, 0), conn.list_all_domains),
        ("get_xml_desc", "dom.get_xml_desc() / rpc.domain_get_xml_desc(ref, 0)",
         lambda: rpc.domain_get_xml_desc(ref, 0), dom.get_xml_desc),
        ("get_scheduler_parameters", "dom.get_scheduler_parameters() (dict) / "
         "rpc.domain_get_scheduler_parameters(ref, 16) (wire list)",
         lambda: rpc.domain_get_scheduler_parameters(ref, 16), dom.get_scheduler_parameters),
    ]


def aio_kinds(cconn: Any, cdom: Any) -> dict[str, Call]:
    """compat.aio's call per kind of ``call_kinds``: libvirt-python's names."""
    return {"lib_version": cconn.getLibVersion, "lookup": lambda: cconn.lookupByName("test"),
            "get_info": cdom.info, "info": cdom.info, "list_all_domains": cconn.listAllDomains,
            "get_xml_desc": cdom.XMLDesc, "get_scheduler_parameters": cdom.schedulerParameters}


def api_round(conc: int, counts: list[int], fn: Call) -> Round:
    async def work(i: int) -> None:
        for _ in range(counts[i]):
            await fn()

    async def run(m: Meter) -> Sample:
        return await run_tasks(conc, work, m)
    return run


async def case_api(daemon: Any, meter: Meter, rounds: int, calls: int,
                   instructions: bool = False) -> None:
    uri = daemon.uri()
    say(f"## api: client CPU per call, aiovirt's object API against its raw layer "
        f"(conn.rpc, wire arguments), one aiovirt connection; {calls} calls per round at "
        f"concurrency 16, {calls // 4} at 1; {rounds} interleaved rounds"
        + ("; then instructions per call (--instructions: the verdicts)" if instructions
           else ""))
    say("compat.aio = aiovirt.compat.aio (libvirt-python's names, async) on its own "
        "connection, no verdict; its info() is the same for get_info and info, and its "
        "schedulerParameters() makes 2 calls (schedulerType first), as libvirt-python does")
    say("the host: test:///default, its one domain 'test' (list_all_domains returns 1 handle)")
    async with aiovirt.connect(uri) as conn:
        cconn = await compat_aio.open(uri)
        try:
            dom = await conn.lookup_domain(name="test")
            kinds = call_kinds(conn, dom)
            aio_calls = aio_kinds(cconn, await cconn.lookupByName("test"))
            for kind, what, _, _ in kinds:
                say(f"  {kind}: {what}")
            say()
            say(f"{'kind':<25} {'conc':>4} {'raw calls/s':>13} {'CPU us/call: raw':>17} "
                f"{'object':>11} {'compat.aio':>11} {'object/raw':>11} {'aio/raw':>8}")
            say(f"{'':<25} {'':>4} {'best':>13} {'best / median':>17} {'best / med':>11} "
                f"{'best / med':>11} {'best (med)':>11} {'best':>8}")
            for conc, n in ((16, calls), (1, calls // 4)):
                counts = shares(n, conc)
                for kind, _, raw, obj in kinds:
                    variants = {"raw": api_round(conc, counts, raw),
                                "object": api_round(conc, counts, obj),
                                "compat.aio": api_round(conc, counts, aio_calls[kind])}
                    await interleave(1, variants, meter)   # warm-up, untimed
                    res = await interleave(rounds, variants, meter)
                    us = {k: (cpu_us(v, n, min), cpu_us(v, n, statistics.median))
                          for k, v in res.items()}
                    ratio = us["object"][0] / us["raw"][0]
                    ratio_med = us["object"][1] / us["raw"][1]
                    cell = {k: f"{v[0]:.1f} / {v[1]:.1f}" for k, v in us.items()}
                    say(f"{kind:<25} {conc:>4} {n / best(res['raw']):>13.0f} "
                        f"{cell['raw']:>17} {cell['object']:>11} {cell['compat.aio']:>11} "
                        f"{f'{ratio:.2f}x ({ratio_med:.2f}x)':>11} "
                        f"{us['compat.aio'][0] / us['raw'][0]:>7.2f}x")
                    if not instructions:
                        SUMMARY.append(Verdict(f"api {kind}",
                                               f"object API CPU us/call, conc {conc}",
                                               f"{us['object'][0]:.1f}", f"{us['raw'][0]:.1f}",
                                               ratio, f"<= {API_TARGET}x", ratio <= API_TARGET))
        finally:
            await cconn.close()
    if instructions:
        say()
        await asyncio.to_thread(api_instructions, uri, [kind for kind, *_ in kinds])
    say()


# -- 3b: the same, in instructions per call (--instructions) ---------------------------------------

COUNT_CALLS = ((16, 2000), (1, 1000))   # (concurrency, calls) of a counted run
WARM_UP = 50                            # calls per task before the counted ones
VARIANTS = ("raw", "object")
Job = tuple[str, str, int, int]         # counted_run's kind, variant, concurrency, calls


async def counted_run(uri: str, kind: str, variant: str, conc: int, calls: int) -> None:
    """What callgrind counts: connect, look 'test' up, ``WARM_UP`` calls per task, then
    ``calls`` calls over ``conc`` tasks, of ``call_kinds``' ``variant`` callable of ``kind``."""
    async with aiovirt.connect(uri) as conn:
        dom = await conn.lookup_domain(name="test")
        raw, obj = next((raw, obj) for k, _, raw, obj in call_kinds(conn, dom) if k == kind)
        fn = raw if variant == "raw" else obj

        async def work(count: int) -> None:
            for _ in range(count):
                await fn()

        for counts in ([WARM_UP] * conc, shares(calls, conc)):
            await asyncio.gather(*(work(n) for n in counts))


def count_child(uri: str, jobs: list[Job]) -> None:
    """Under callgrind (``--count-child``): each job in a child forked from this process (so
    aiovirt is imported once, not per run), two at a time; prints ``[job index, pid]`` as each
    ends.  A child's callgrind total includes this process's count at the fork."""
    if not aiovirt.__file__ or not aiovirt.__file__.startswith(str(HERE.parent)):
        raise SystemExit(f"the counting child imported {aiovirt.__file__}, not {HERE.parent}")
    aiovirt.connect   # noqa: B018 -- the client's modules, imported before forking
    running: dict[int, int] = {}

    def reap() -> None:
        pid, status = os.wait()
        index = running.pop(pid)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"the counted run {jobs[index]} failed")
        print(json.dumps([index, pid]), flush=True)

    for index, job in enumerate(jobs):
        while len(running) >= 2:
            reap()
        pid = os.fork()
        if pid == 0:
            try:
                asyncio.run(counted_run(uri, *job))
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        running[pid] = index
    while running:
        reap()


def count_instructions(uri: str, kinds: list[str]) -> dict[tuple[str, int], dict[str, int]]:
    """Instructions per call by (kind, concurrency) and variant: a counted run of N calls
    minus a run of none, both forked by one ``--count-child`` under callgrind."""
    jobs = [(kind, variant, conc, n) for conc, calls in COUNT_CALLS for kind in kinds
            for variant in VARIANTS for n in (calls, 0)]
    root = str(HERE.parent)
    stdout, counts = callgrind([sys.executable, str(Path(__file__).resolve()), "--count-child",
                                uri, json.dumps(jobs)],
                               env=dict(os.environ, PYTHONPATH=root), cwd=root)
    total = {jobs[index]: counts[pid] for index, pid in map(json.loads, stdout.splitlines())}
    return {(kind, conc): {v: (total[kind, v, conc, calls] - total[kind, v, conc, 0]) // calls
                           for v in VARIANTS}
            for conc, calls in COUNT_CALLS for kind in kinds}


def api_instructions(uri: str, kinds: list[str]) -> None:
    """Say each kind's instructions per call, raw and object API, and add the api verdicts."""
    runs = ", ".join(f"{calls} calls at concurrency {conc}" for conc, calls in COUNT_CALLS)
    say(f"-- instructions per call (valgrind's callgrind: this client's user space, not the "
        f"kernel's nor libvirtd's): a run of N calls minus a run of none, each its own "
        f"connection, lookup and {WARM_UP} warm-up calls per task; N = {runs}")
    started = time.perf_counter()
    found = count_instructions(uri, kinds)
    say(f"{'kind':<25} {'conc':>4} {'raw instr/call':>15} {'object':>10} {'object/raw':>11}")
    for (kind, conc), per in found.items():
        ratio = per["object"] / per["raw"]
        say(f"{kind:<25} {conc:>4} {per['raw']:>15,} {per['object']:>10,} {ratio:>10.2f}x")
        SUMMARY.append(Verdict(f"api {kind}", f"object API instructions/call, conc {conc}",
                               f"{per['object']:,}", f"{per['raw']:,}", ratio,
                               f"<= {API_TARGET}x", ratio <= API_TARGET))
    say(f"(counting took {time.perf_counter() - started:.0f} s)")


# -- main -----------------------------------------------------------------------------------------

async def main(options: argparse.Namespace) -> None:
    quick = options.quick
    rounds = options.rounds or (2 if quick else 5)
    calls = options.calls or (2000 if quick else 8000)
    domains = options.domains or (200 if quick else 1000)
    cases = options.only or list(CASES)
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")
    lv_version = libvirt.getVersion()
    lv_text = f"{lv_version // 1000000}.{lv_version // 1000 % 1000}.{lv_version % 1000}"
    with tempfile.TemporaryDirectory(prefix="avc-") as workdir, PrivateDaemon(workdir) as daemon:
        meter = Meter(daemon.pid)
        async with aiovirt.connect(daemon.uri()) as conn:
            lib = await conn.get_lib_version()
        say(f"# compat: aiovirt {aiovirt.__version__} (aiovirt.compat.libvirt, the object API) "
            f"vs libvirt-python {lv_text}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
        say(f"# {describe_tree()}")
        say(f"# {describe_machine()}; a private libvirtd (default settings: max_client_requests "
            f"5), libvirt {lib // 1000000}.{lib // 1000 % 1000}.{lib % 1000}, test driver; "
            f"{'--quick, ' if quick else ''}{rounds} rounds per case")
        say("# client CPU = this process (time.process_time, all threads: the drop-in's "
            "private event-loop thread and libvirt-python's C library included)")
        say()
        started = time.perf_counter()
        disturbance = Disturbance(daemon.pid)
        runs: dict[str, Callable[[], Awaitable[None]]] = {
            "tiny": lambda: case_tiny(daemon, meter, rounds, calls),
            "define": lambda: case_define(daemon, meter, rounds, domains),
            "api": lambda: case_api(daemon, meter, rounds, calls // 2, options.instructions),
        }
        for case in CASES:
            if case in cases:
                disturbance.start()
                await runs[case]()
                disturbance.stop(case)
        print_summary()
        say(f"(all cases took {time.perf_counter() - started:.0f} s)")
        say("(other work on the machine during each case, as a share of all its cores: "
            + ", ".join(disturbance.shares) + ")")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller, faster cases (< 1 min)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per case (default 5)")
    parser.add_argument("--calls", type=int, help="calls per round in tiny at 16 threads "
                        "(8000; a quarter at 1 thread); api: half of it at concurrency 16, an "
                        "eighth at 1")
    parser.add_argument("--domains", type=int, help="domains defined+started per round (1000)")
    parser.add_argument("--only", nargs="+", metavar="CASE", help=f"only these: {', '.join(CASES)}")
    parser.add_argument("--instructions", action="store_true",
                        help="api: also count instructions per call under valgrind's callgrind "
                             "(raw and object API, concurrency 16 and 1; ~2-4 min, needs "
                             "valgrind) and give the verdicts on them, not on CPU time")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--count-child", nargs=2, metavar=("URI", "JOBS"), help=argparse.SUPPRESS)
    parser.add_argument("--main-thread-child", nargs=3, metavar=("MODULE", "URI", "CALLS"),
                        help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.main_thread_child:
        module, uri, calls = opts.main_thread_child
        main_thread_child(module, uri, int(calls))
        raise SystemExit(0)
    if opts.count_child:
        count_child(opts.count_child[0], json.loads(opts.count_child[1]))
        raise SystemExit(0)
    try:
        asyncio.run(main(opts))
    finally:
        if opts.output:
            Path(opts.output).write_text("\n".join(LINES) + "\n")
