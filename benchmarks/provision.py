"""Provisioning end to end: ``aiovirt.provision`` against libvirt-python thread pools that
define and start the same composed XML, side by side, interleaved round by round.

    .venv/bin/python benchmarks/provision.py [--quick] [--only CASE ...] [--rounds N]
                                             [--instructions] [--loop asyncio|uvloop]
                                             [--output FILE]

``--loop``: the event loop aiovirt runs on, asyncio's own (the default) or uvloop's
(``aiovirt[speed]``, what the CLI and the service pick up when installed); the counted
children use it too.  libvirt-python's threads are the same either way.

Cases (see README.md):

* ``e2e``: 1000 guests on one test-driver host.  aiovirt: one ``provision()`` call, timed
  whole (connect, learn the host, compose with three profiles, address offline, define,
  start, wait for every STARTED event).  libvirt-python: the same composed XML (composed once,
  untimed; each guest's name substituted), ``defineXML`` + ``create`` by a 16-thread pool on
  one shared connection, and on 16 connections (one per thread).  Targets: >= 1.5x the
  best's guests/s; client CPU per guest <= 1.0x the cheapest's (issue 15).  With
  ``--instructions`` (needs valgrind, ~2-3 min more) also client instructions per guest,
  which other load does not move (the CPU figure swings +-25 % on a busy 2-core VM), target
  <= 1.0x: after the timed rounds, on the same daemon, callgrind counts every thread of a
  ``provision.py --count-child`` process making 10 + 600 guests and of one making 10 + 100
  (aiovirt: one ``provision()`` call after a 10-guest one; libvirt-python: 16 threads on 16
  connections, ``defineXML`` + ``create``), two at a time; the difference over 500 is the
  cost per guest.  The parent removes the children's guests, untimed.
* ``kvm``: 16 diskless KVM guests on the QEMU driver until all are RUNNING, against 16 threads
  on 16 connections (target <= 1.0x its time) and on one shared connection.
* ``fleet``: 4 private libvirtds x 250 guests, ``placement="spread"``, against a 16-thread
  pool per daemon (one connection per daemon; and one per thread).

It starts its own libvirtds (``aiovirt.testing.daemon.PrivateDaemon``) and stops them, with whatever
guests they still hold, at the end.  Every round is checked (the report says all started,
the hosts really run that many guests) and cleaned up untimed, so each starts from the same
empty host.  Helpers (measuring, interleaving, the summary) come from ``run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import itertools
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]
from common import HERE, callgrind_instructions, machine_speed, yardstick_line
from lxml import etree
from run import (
    LINES,
    SUMMARY,
    Disturbance,
    Meter,
    Round,
    Sample,
    Verdict,
    best,
    daemon_cpu_ns,
    describe_machine,
    describe_tree,
    add_loop_option,
    in_thread,
    interleave,
    loop_in_use,
    median,
    per_call_us,
    print_summary,
    run_on,
    say,
)

import aiovirt
from aiovirt.xml import metadata
from aiovirt.compose import compose
from aiovirt.testing.daemon import PrivateDaemon
from aiovirt.errors import LibvirtError
from aiovirt.provision import NAMESPACE, GuestSpec, Report, provision, teardown

CASES = ("e2e", "kvm", "fleet")
THREADS = 16          # libvirt-python's pool, per host
OVERCOMMIT = 8        # the test driver says its host has 3 GiB: 1000 x 8 MiB need more
FLEET = 4             # daemons in the fleet case

TEST_TEMPLATE = ("<domain type='test'><name>bench</name><memory unit='MiB'>8</memory>"
                 "<os><type>hvm</type></os></domain>")
TEST_PROFILES = ("kvm-base", "virtio-linux", "guest-agent")
KVM_TEMPLATE = "<domain><name>k</name></domain>"
KVM_PROFILES = ("kvm-base",)
KVM_PARAMS = {"kvm-base.memory": "64"}

COUNT_KINDS = ("aiovirt", "libvirt-python")   # --instructions: who is counted in e2e
COUNT_GUESTS = 500    # instructions per guest: a run of COUNT_GUESTS + COUNT_BASE guests ...
COUNT_BASE = 100      # ... minus one of COUNT_BASE, over COUNT_GUESTS
COUNT_WARM_UP = 10    # guests made first in every counted run

ACTIVE = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE


class BenchError(RuntimeError):
    """A round did not do what it had to (the figures would mean nothing): stop."""


# -- measuring several daemons ---------------------------------------------------------------

class DaemonsMeter(Meter):
    """``run.Meter`` with the CPU time of several libvirtds summed (one for most cases)."""

    def __init__(self, pids: Sequence[int | None]) -> None:
        super().__init__(None)
        self.pids = list(pids)

    def _daemons(self) -> int:
        return sum(daemon_cpu_ns(pid) or 0 for pid in self.pids)

    def start(self) -> None:
        self._d_sum = self._daemons()
        super().start()

    def stop(self) -> Sample:
        sample = super().stop()
        sample.daemon = (self._daemons() - self._d_sum) / 1e9
        return sample


class Others(Disturbance):
    """``run.Disturbance`` counting every daemon of ours (the fleet's too) as our own."""

    def __init__(self) -> None:
        super().__init__(None)
        self.pids: list[int | None] = []

    def _own(self) -> float:
        t = os.times()
        return (t.user + t.system + t.children_user + t.children_system +
                sum(daemon_cpu_ns(pid) or 0 for pid in self.pids) / 1e9)


# -- the composed XML --------------------------------------------------------------------------

@dataclass(frozen=True)
class Composed:
    """Domain XML with a placeholder for the guest's name."""

    text: str
    placeholder: str

    def named(self, name: str) -> str:
        return self.text.replace(self.placeholder, name)


async def compose_for(conn: aiovirt.Connection, template: str, profiles: Sequence[str],
                      params: Mapping[str, str]) -> Composed:
    """The XML ``provision`` defines for each guest of this spec on ``conn``'s host, made
    once: the same two passes (the first says which machine, whose domain capabilities feed
    the second), the host's capabilities, offline addressing and provision's metadata."""
    placeholder = f"bench-name-{uuid.uuid4().hex}"
    root = etree.fromstring(template)
    root.find("name").text = placeholder
    caps = await conn.capabilities()
    first = compose(root, profiles, params=params, caps=caps, validate=False,
                    record=False).tree
    os_type = first.find("os/type")
    try:
        domcaps = await conn.domain_capabilities(
            emulator=first.findtext("devices/emulator"),
            arch=os_type.get("arch") if os_type is not None else None,
            machine=os_type.get("machine") if os_type is not None else None,
            virttype=first.get("type"))
    except LibvirtError:
        domcaps = None  # the test driver has none
    result = compose(root, profiles, params=params, caps=caps, domcaps=domcaps, address=True)
    metadata.write(result.tree, {"run": uuid.uuid4().hex[:12], "spec": 0, "labels": {}},
                   namespace=NAMESPACE, prefix="aiovirt-provision", name="guest")
    return Composed(result.xml, placeholder)


def normalised(xml: str) -> str:
    """Inactive domain XML without what differs between two guests of one spec: the name,
    the UUID and provision's run id."""
    root = etree.fromstring(xml)
    root.find("name").text = "NAME"
    for element in root.findall("uuid"):
        root.remove(element)
    for run in root.iterfind(f"metadata/{{{NAMESPACE}}}guest/run"):
        run.text = "RUN"
    return etree.tostring(root, encoding="unicode")


async def check_same_xml(uri: str, lv: libvirt.virConnect, spec: GuestSpec, xml: Composed,
                         options: Mapping[str, Any]) -> None:
    """Define one guest each way (not started) and compare what the daemon stored."""
    prefix = fresh_prefix("same")
    spec = GuestSpec(spec.template, spec.profiles, params=spec.params, count=1,
                     name=f"{prefix}av", start=False)
    report = await provision(uri, spec, **options)
    try:
        if not report.ok:
            raise BenchError(f"provision could not define one guest: {report.to_json()}")
        lv.defineXML(xml.named(f"{prefix}lv"))
        theirs = lv.lookupByName(f"{prefix}av").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        ours = lv.lookupByName(f"{prefix}lv").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        await teardown(uri, report=report)
        lv_remove([lv], prefix)
    a, b = normalised(theirs), normalised(ours)
    if a == b:
        say("verified: libvirt stores the same domain for both (inactive XML equal but for "
            "name, UUID and run id)")
    else:
        diff = difflib.unified_diff(a.split("><"), b.split("><"), "provision", "libvirt-python",
                                    lineterm="", n=1)
        say("WARNING: the domain libvirt-python defines differs from provision's:")
        for line in itertools.islice(diff, 40):
            say(f"  {line}")


# -- the two sides ------------------------------------------------------------------------------

def fresh_prefix(case: str) -> str:
    return f"pb-{case}-{uuid.uuid4().hex[:6]}-"


def run_pools(conns: Sequence[Sequence[libvirt.virConnect]], names: Sequence[Sequence[str]],
              work: Callable[[libvirt.virConnect, str], None],
              meter: Meter | None = None) -> Sample | None:
    """``work(conn, name)`` for every ``names[h]`` with a THREADS-thread pool per host h, its
    threads taking ``conns[h]`` round robin (one connection: shared; THREADS: one each).
    Timed (if ``meter``) from the pools' creation to the last call's return."""
    local = threading.local()

    def bind(host_conns: Sequence[libvirt.virConnect], counter: Iterator[int]) -> None:
        local.conn = host_conns[next(counter) % len(host_conns)]

    def call(name: str) -> None:
        work(local.conn, name)

    sample = None
    if meter is not None:
        meter.start()
    pools = [ThreadPoolExecutor(THREADS, initializer=bind, initargs=(c, itertools.count()))
             for c in conns]
    try:
        futures = [pools[h].submit(call, group[i])    # hosts take turns
                   for i in range(max(map(len, names), default=0))
                   for h, group in enumerate(names) if i < len(group)]
        for future in futures:
            future.result()
        if meter is not None:
            sample = meter.stop()
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
    return sample


def lv_count(conn: libvirt.virConnect, prefix: str) -> int:
    return sum(d.name().startswith(prefix) for d in conn.listAllDomains(ACTIVE))


def lv_remove(conns: Sequence[libvirt.virConnect], prefix: str) -> None:
    """Destroy and undefine every domain named ``prefix*``, over ``conns``."""
    names = [d.name() for d in conns[0].listAllDomains() if d.name().startswith(prefix)]

    def remove(conn: libvirt.virConnect, name: str) -> None:
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefine()

    run_pools([conns], [names], remove)


def lv_launch(xml: Composed) -> Callable[[libvirt.virConnect, str], None]:
    """libvirt-python's work per guest: defineXML + create of ``xml`` under the guest's name."""
    def make(conn: libvirt.virConnect, name: str) -> None:
        conn.defineXML(xml.named(name)).create()
    return make


def lv_variant(conns: Sequence[Sequence[libvirt.virConnect]], xml: Composed,
               expected: Sequence[int], case: str) -> Round:
    """A libvirt-python round: defineXML + create of ``expected[h]`` guests on host h."""
    def run(meter: Meter) -> Sample:
        prefix = fresh_prefix(case)
        names = [[f"{prefix}{h}-{i:04d}" for i in range(n)] for h, n in enumerate(expected)]
        try:
            sample = run_pools(conns, names, lv_launch(xml), meter)
            running = [lv_count(c[0], prefix) for c in conns]
            if running != list(expected):
                raise BenchError(f"{case}: libvirt-python round left {running} guests running "
                                 f"per host, not {list(expected)}")
        finally:
            for c in conns:
                lv_remove(c, prefix)
        assert sample is not None
        return sample
    return in_thread(run)


@dataclass
class Seen:
    """What aiovirt's rounds reported, for the case's text."""

    concurrency: list[int]
    per_host: list[int]


def av_variant(uris: Sequence[str], held: Sequence[aiovirt.Connection], spec: GuestSpec,
               expected: Sequence[int], options: Mapping[str, Any], case: str,
               seen: list[Seen]) -> Round:
    """An aiovirt round: one ``provision()`` call over ``uris``, timed whole."""
    async def run(meter: Meter) -> Sample:
        prefix = fresh_prefix(case)
        round_spec = GuestSpec(spec.template, spec.profiles, params=spec.params,
                               count=sum(expected), name=prefix + "{n:04d}")
        meter.start()
        report = await provision(uris[0] if len(uris) == 1 else list(uris), round_spec,
                                 **options)
        sample = meter.stop()
        try:
            check_report(report, sum(expected), case)
            hosts = Counter(r.host for r in report.results)
            per_host = [hosts[u] for u in uris]
            running = [sum(d.name.startswith(prefix) for d in await c.list_domains(ACTIVE))
                       for c in held]
            if per_host != list(expected) or running != list(expected):
                raise BenchError(f"{case}: provision placed {per_host} guests per host and "
                                 f"they run {running}, not {list(expected)}")
            seen.append(Seen([h.concurrency for h in report.hosts], per_host))
        finally:
            removed = await teardown(list(uris), report=report)
        if removed.counts() != {"removed": sum(expected)} or not removed.ok:
            raise BenchError(f"{case}: teardown did not remove all {sum(expected)}: "
                             f"{removed.counts()} {removed.unreachable}")
        return sample
    return run


def check_report(report: Report, count: int, case: str) -> None:
    counts = report.counts()
    if report.ok and counts == {"started": count}:
        return
    failed = "; ".join(f"{r.name} at {r.failed_at}: {r.error}" for r in report.failed()[:3])
    raise BenchError(f"{case}: provision did not start all {count} guests: {counts}"
                     + (f"; {failed}" if failed else "")
                     + (f"; notes: {' / '.join(report.notes)}" if report.notes else ""))


async def check_empty(held: Sequence[aiovirt.Connection], baseline: Sequence[set[str]],
                      case: str) -> None:
    """Every host holds what it held before the case (cleanup really cleaned up)."""
    for conn, before in zip(held, baseline):
        left = {d.name for d in await conn.list_domains()} - before
        if left:
            raise BenchError(f"{case}: {len(left)} guests left behind on {conn.uri.uri}, "
                             f"e.g. {sorted(left)[:3]}")


# -- reporting -------------------------------------------------------------------------------

def rate_table(res: Mapping[str, list[Sample]], count: int) -> None:
    width = max(map(len, res))
    say(f"{'':<{width}}  guests/s best / median   seconds best / median   CPU us/guest "
        "(median): this process, libvirtd")
    for name, samples in res.items():
        say(f"{name:<{width}}  {count / best(samples):8.0f} / {count / median(samples):<7.0f}"
            f"  {best(samples):10.3f} / {median(samples):<8.3f}  "
            f"{per_call_us(samples, count):>6}, {per_call_us(samples, count, True)}")
    say("(rounds, guests/s: " + "; ".join(
        f"{name} " + " ".join(f"{count / s.wall:.0f}" for s in samples)
        for name, samples in res.items()) + ")")


def time_table(res: Mapping[str, list[Sample]]) -> None:
    width = max(map(len, res))
    say(f"{'':<{width}}  seconds best / median   CPU s (median): this process, libvirtd")
    for name, samples in res.items():
        say(f"{name:<{width}}  {best(samples):8.3f} / {median(samples):<8.3f}  "
            f"{statistics.median(s.cpu for s in samples):8.3f}, "
            f"{statistics.median(s.daemon or 0 for s in samples):.3f}")
    say("(rounds, seconds: " + "; ".join(
        f"{name} " + " ".join(f"{s.wall:.2f}" for s in samples)
        for name, samples in res.items()) + ")")


def throughput_verdict(case: str, res: Mapping[str, list[Sample]], count: int,
                       target: float | None) -> None:
    """aiovirt (the first variant) against libvirt-python's best variant."""
    names = list(res)
    av, lvs = names[0], names[1:]
    lv_best = min(lvs, key=lambda n: best(res[n]))
    ratio = best(res[lv_best]) / best(res[av])
    ratio_median = min(median(res[n]) for n in lvs) / median(res[av])
    goal = "" if target is None else (f" (target >= {target:g}x: "
                                      f"{'met' if ratio >= target else 'MISSED'})")
    say(f"aiovirt / libvirt-python's best variant ({lv_best}): {ratio:.2f}x best, "
        f"{ratio_median:.2f}x median{goal}")
    SUMMARY.append(Verdict(case, f"{count} guests: guests/s vs lv best",
                           f"{count / best(res[av]):.0f}", f"{count / best(res[lv_best]):.0f}",
                           ratio, "-" if target is None else f">= {target:g}x",
                           None if target is None else ratio >= target))


def cpu_verdict(case: str, res: Mapping[str, list[Sample]], count: int, target: float) -> None:
    """aiovirt's client CPU per guest (the first variant: everything it does) against
    libvirt-python's cheapest variant (define + create alone), medians of the rounds."""
    names = list(res)
    av, lvs = names[0], names[1:]

    def per_guest(name: str) -> float:
        return statistics.median(s.cpu for s in res[name]) / count * 1e6

    lv_best = min(lvs, key=per_guest)
    ratio = per_guest(av) / per_guest(lv_best)
    say(f"client CPU per guest, aiovirt / libvirt-python's cheapest variant ({lv_best}): "
        f"{ratio:.2f}x (target <= {target:g}x: {'met' if ratio <= target else 'MISSED'})")
    SUMMARY.append(Verdict(case, f"{count} guests: client CPU us/guest",
                           f"{per_guest(av):.0f}", f"{per_guest(lv_best):.0f}", ratio,
                           f"<= {target:g}x", ratio <= target))


def instructions_verdict(case: str, per: Mapping[str, int], target: float, took: float) -> None:
    """aiovirt's client instructions per guest against libvirt-python's (``count_instructions``)."""
    av, lv = (per[kind] for kind in COUNT_KINDS)
    ratio = av / lv
    say(f"client instructions per guest (valgrind's callgrind: user space, every thread of the "
        f"client's process; not the kernel's nor libvirtd's): aiovirt provision {av:,}, "
        f"libvirt-python, {THREADS} threads, {THREADS} conns {lv:,}: {ratio:.2f}x (target "
        f"<= {target:g}x: {'met' if ratio <= target else 'MISSED'})")
    say(f"(a run of {COUNT_WARM_UP} + {COUNT_GUESTS + COUNT_BASE} guests minus one of "
        f"{COUNT_WARM_UP} + {COUNT_BASE}, over {COUNT_GUESTS}, each its own process on this "
        f"daemon; counting took {took:.0f} s)")
    SUMMARY.append(Verdict(case, f"{COUNT_GUESTS} guests: client instructions/guest",
                           f"{av:,}", f"{lv:,}", ratio, f"<= {target:g}x", ratio <= target))


# -- 1: e2e ---------------------------------------------------------------------------------

async def case_e2e(daemon: PrivateDaemon, rounds: int, count: int,
                   instructions: bool = False) -> None:
    uri = daemon.uri()
    meter = DaemonsMeter([daemon.pid])
    say(f"## e2e: {count} guests on one test-driver host: provision (compose + address + "
        f"define + start + STARTED events) vs libvirt-python define + create; {rounds} "
        "interleaved rounds")
    spec = GuestSpec(TEST_TEMPLATE, TEST_PROFILES)
    options = {"overcommit": OVERCOMMIT}
    async with aiovirt.connect(uri) as held:   # the shared test host lives while held
        baseline = [{d.name for d in await held.list_domains()}]
        xml = await compose_for(held, TEST_TEMPLATE, TEST_PROFILES, {})
        say(f"template {TEST_TEMPLATE}")
        say(f"profiles {', '.join(TEST_PROFILES)}; composed and addressed: {len(xml.text)} "
            f"chars; provision(uri, spec, overcommit={OVERCOMMIT}) timed whole; libvirt-python "
            f"gets that XML composed once, untimed, and {THREADS}-thread pools")
        lv_shared = libvirt.open(uri)
        lv_own = [libvirt.open(uri) for _ in range(THREADS)]
        seen: list[Seen] = []
        try:
            await check_same_xml(uri, lv_shared, spec, xml, options)

            def variants(n: int) -> dict[str, Round]:
                return {
                    "aiovirt provision": av_variant([uri], [held], spec, [n], options, "e2e",
                                                    seen),
                    f"libvirt-python, {THREADS} threads, 1 shared conn":
                        lv_variant([[lv_shared]], xml, [n], "e2e"),
                    f"libvirt-python, {THREADS} threads, {THREADS} conns":
                        lv_variant([lv_own], xml, [n], "e2e"),
                }
            await interleave(1, variants(min(count, 100)), meter)   # warm-up, untimed
            res = await interleave(rounds, variants(count), meter)
            await check_empty([held], baseline, "e2e")
            if instructions:
                started = time.perf_counter()
                counted = await asyncio.to_thread(count_instructions, uri, lv_own,
                                                  loop_in_use())
                took = time.perf_counter() - started
                await check_empty([held], baseline, "e2e")
        finally:
            for c in [lv_shared, *lv_own]:
                c.close()
    say(f"(provision ran {seen[-1].concurrency[0]} guests at a time on the host)")
    rate_table(res, count)
    throughput_verdict("e2e", res, count, 1.5)
    cpu_verdict("e2e", res, count, 1.0)
    if instructions:
        instructions_verdict("e2e", counted, 1.0, took)
    say()


# -- 1b: e2e in instructions per guest (--instructions) -------------------------------------

async def av_counted(uri: str, n: int, prefix: str) -> None:
    """What callgrind counts of aiovirt: ``COUNT_WARM_UP`` guests provisioned, then ``n`` by
    one ``provision()`` call, as in the timed rounds."""
    for count, name in ((COUNT_WARM_UP, prefix + "w{n:04d}"), (n, prefix + "{n:04d}")):
        spec = GuestSpec(TEST_TEMPLATE, TEST_PROFILES, count=count, name=name)
        check_report(await provision(uri, spec, overcommit=OVERCOMMIT), count, "e2e counted")


async def composed_e2e(uri: str) -> Composed:
    async with aiovirt.connect(uri) as conn:
        return await compose_for(conn, TEST_TEMPLATE, TEST_PROFILES, {})


def lv_counted(uri: str, n: int, prefix: str) -> None:
    """What callgrind counts of libvirt-python (its cheapest e2e variant): the XML composed as
    for the timed rounds, ``THREADS`` connections, then ``COUNT_WARM_UP`` guests and ``n``
    defined + created by a ``THREADS``-thread pool, one connection per thread."""
    launch = lv_launch(asyncio.run(composed_e2e(uri)))
    conns = [libvirt.open(uri) for _ in range(THREADS)]
    try:
        for names in ([f"{prefix}w{i:04d}" for i in range(COUNT_WARM_UP)],
                      [f"{prefix}{i:04d}" for i in range(n)]):
            run_pools([conns], [names], launch)
    finally:
        for c in conns:
            c.close()


def count_child(kind: str, n: int, prefix: str, uri: str, loop: str) -> None:
    """Under callgrind (``--count-child``): ``kind``'s counted run of ``n`` guests named
    ``prefix*`` on ``uri``, aiovirt's on ``loop``, left there for the parent to check and
    remove."""
    if not aiovirt.__file__ or not aiovirt.__file__.startswith(str(HERE.parent)):
        raise SystemExit(f"the counting child imported {aiovirt.__file__}, not {HERE.parent}")
    if kind == "aiovirt":
        run_on(loop, av_counted(uri, n, prefix))
    else:
        lv_counted(uri, n, prefix)


def count_instructions(uri: str, conns: Sequence[libvirt.virConnect], loop: str
                       ) -> dict[str, int]:
    """Client instructions per guest by kind (``COUNT_KINDS``): a ``--count-child`` run under
    callgrind with ``COUNT_GUESTS + COUNT_BASE`` guests minus one with ``COUNT_BASE``, over
    ``COUNT_GUESTS``; two runs at a time, each child's guests checked and removed (over
    ``conns``, untimed) once it ends."""
    root = str(HERE.parent)
    jobs = [(kind, n) for kind in COUNT_KINDS for n in (COUNT_GUESTS + COUNT_BASE, COUNT_BASE)]

    def count(job: tuple[str, int]) -> int:
        kind, n = job
        prefix = fresh_prefix("count")
        try:
            total = callgrind_instructions(
                [sys.executable, str(Path(__file__).resolve()), "--count-child", kind, str(n),
                 prefix, uri, loop], env=dict(os.environ, PYTHONPATH=root), cwd=root)
            made = lv_count(conns[0], prefix)
            if made != COUNT_WARM_UP + n:
                raise BenchError(f"e2e: the counted {kind} run left {made} guests running, "
                                 f"not {COUNT_WARM_UP + n}")
        finally:
            lv_remove(conns, prefix)
        return total

    with ThreadPoolExecutor(2) as pool:
        totals = dict(zip(jobs, pool.map(count, jobs)))
    return {kind: (totals[kind, COUNT_GUESTS + COUNT_BASE] - totals[kind, COUNT_BASE])
            // COUNT_GUESTS for kind in COUNT_KINDS}


# -- 2: KVM -----------------------------------------------------------------------------------

async def case_kvm(daemon: PrivateDaemon, rounds: int, count: int) -> None:
    if not os.path.exists("/dev/kvm"):
        say("## kvm: skipped: /dev/kvm is missing on this machine")
        SUMMARY.append(Verdict("kvm", "skipped: no /dev/kvm", "-", "-", None, "<= 1.0x", None))
        say()
        return
    uri = daemon.uri("qemu", "/system")
    meter = DaemonsMeter([daemon.pid])
    spec = GuestSpec(KVM_TEMPLATE, KVM_PROFILES, params=KVM_PARAMS)
    async with aiovirt.connect(uri) as held:
        lv_shared = libvirt.open(uri)
        lv_own = [libvirt.open(uri) for _ in range(count)]
        try:
            qemu = lv_shared.getVersion()
            say(f"## kvm: {count} diskless KVM guests (QEMU {qemu // 1000000}."
                f"{qemu // 1000 % 1000}.{qemu % 1000}) until all are RUNNING: provision vs "
                f"libvirt-python defineXML + create; {rounds} interleaved rounds")
            baseline = [{d.name for d in await held.list_domains()}]
            xml = await compose_for(held, KVM_TEMPLATE, KVM_PROFILES, KVM_PARAMS)
            say(f"template {KVM_TEMPLATE}; profiles {', '.join(KVM_PROFILES)}, params "
                f"{KVM_PARAMS}; composed and addressed: {len(xml.text)} chars; teardown "
                "(destroy + undefine) untimed")
            say("aiovirt: provision's time (its STARTED events); libvirt-python: until every "
                "create() returned (it returns once the guest runs)")
            seen: list[Seen] = []
            await check_same_xml(uri, lv_shared, spec, xml, {})

            def variants(n: int) -> dict[str, Round]:
                return {
                    "aiovirt provision": av_variant([uri], [held], spec, [n], {}, "kvm", seen),
                    f"libvirt-python, {count} threads, {count} conns":
                        lv_variant([lv_own], xml, [n], "kvm"),
                    f"libvirt-python, {count} threads, 1 shared conn":
                        lv_variant([[lv_shared]], xml, [n], "kvm"),
                }
            # warm-up, untimed: the QEMU driver's first guests pay for loading things
            await interleave(1, variants(1), meter)
            res = await interleave(rounds, variants(count), meter)
            await check_empty([held], baseline, "kvm")
        finally:
            for c in [lv_shared, *lv_own]:
                c.close()
    time_table(res)
    names = list(res)
    av_t = best(res[names[0]])
    for lv_name, target in ((names[1], 1.0), (names[2], None)):
        lv_t = best(res[lv_name])
        ratio = av_t / lv_t
        ratio_median = median(res[names[0]]) / median(res[lv_name])
        goal = "" if target is None else (f" (target <= {target:.1f}x: "
                                          f"{'met' if ratio <= target else 'MISSED'})")
        say(f"aiovirt takes {ratio:.2f}x the time of {lv_name} (median {ratio_median:.2f}x)"
            f"{goal}")
        tag = f"{count} conns" if target is not None else "shared conn"
        SUMMARY.append(Verdict("kvm", f"{count} up: time vs lv {tag}", f"{av_t:.3f}s",
                               f"{lv_t:.3f}s", ratio,
                               "-" if target is None else f"<= {target:.1f}x",
                               None if target is None else ratio <= target))
    say()


# -- 3: a fleet ----------------------------------------------------------------------------------

async def case_fleet(daemons: Sequence[PrivateDaemon], rounds: int, count: int) -> None:
    uris = [d.uri() for d in daemons]
    hosts = len(uris)
    each = count // hosts
    meter = DaemonsMeter([d.pid for d in daemons])
    say(f"## fleet: {hosts} private libvirtds x {each} guests (test driver), provision with "
        f"placement='spread' vs libvirt-python, a {THREADS}-thread pool per daemon; {rounds} "
        "interleaved rounds; CPU: all the daemons'")
    spec = GuestSpec(TEST_TEMPLATE, TEST_PROFILES)
    options = {"placement": "spread", "overcommit": OVERCOMMIT}
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(aiovirt.connect(u)) for u in uris]
        baseline = [{d.name for d in await c.list_domains()} for c in held]
        xml = await compose_for(held[0], TEST_TEMPLATE, TEST_PROFILES, {})
        lv_one = [libvirt.open(u) for u in uris]
        lv_many = [[libvirt.open(u) for _ in range(THREADS)] for u in uris]
        seen: list[Seen] = []
        try:
            def variants(n: int) -> dict[str, Round]:
                return {
                    "aiovirt provision": av_variant(uris, held, spec, [n] * hosts, options,
                                                    "fleet", seen),
                    f"libvirt-python, {hosts} x {THREADS} threads, 1 conn per daemon":
                        lv_variant([[c] for c in lv_one], xml, [n] * hosts, "fleet"),
                    f"libvirt-python, {hosts} x {THREADS} threads, 1 conn per thread":
                        lv_variant(lv_many, xml, [n] * hosts, "fleet"),
                }
            await interleave(1, variants(min(each, 25)), meter)   # warm-up, untimed
            res = await interleave(rounds, variants(each), meter)
            await check_empty(held, baseline, "fleet")
        finally:
            for c in [*lv_one, *itertools.chain.from_iterable(lv_many)]:
                c.close()
    say(f"guests per host, every aiovirt round: {' '.join(map(str, seen[-1].per_host))} "
        f"(provision ran {'/'.join(map(str, seen[-1].concurrency))} at a time per host)")
    rate_table(res, each * hosts)
    throughput_verdict("fleet", res, each * hosts, None)
    say()


# -- main -------------------------------------------------------------------------------------

async def main(options: argparse.Namespace) -> None:
    quick = options.quick
    cases = options.only or list(CASES)
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")
    rounds = options.rounds or (2 if quick else 5)
    kvm_rounds = options.rounds or (2 if quick else 3)
    count = 200 if quick else 1000
    kvm_count = 4 if quick else 16
    lv_version = libvirt.getVersion()
    yard_before = machine_speed()
    started = time.perf_counter()
    others = Others()
    with PrivateDaemon() as daemon:
        async with aiovirt.connect(daemon.uri()) as conn:
            lib = await conn.get_lib_version()
        say(f"# aiovirt {aiovirt.__version__} provision vs libvirt-python "
            f"{lv_version // 1000000}.{lv_version // 1000 % 1000}.{lv_version % 1000} thread "
            f"pools, {time.strftime('%Y-%m-%d %H:%M %Z')}")
        say(f"# {describe_tree()}")
        say(f"# {describe_machine()}; private libvirtds (default settings: "
            f"max_client_requests 5), libvirt {lib // 1000000}.{lib // 1000 % 1000}."
            f"{lib % 1000}; {'--quick, ' if quick else ''}{rounds} rounds per test-driver "
            f"case, {kvm_rounds} for kvm; aiovirt on {loop_in_use()}'s loop")
        say()
        runs = {
            "e2e": lambda: case_e2e(daemon, rounds, count, options.instructions),
            "kvm": lambda: case_kvm(daemon, kvm_rounds, kvm_count),
        }
        for case in CASES:
            if case not in cases:
                continue
            with contextlib.ExitStack() as stack:
                if case == "fleet":   # this one and 3 more
                    fleet = [daemon] + [stack.enter_context(PrivateDaemon())
                                        for _ in range(FLEET - 1)]
                    others.pids = [d.pid for d in fleet]
                    work = case_fleet(fleet, rounds, count)
                else:
                    others.pids = [daemon.pid]
                    work = runs[case]()
                others.start()
                await work
                others.stop(case)
    yard_after = machine_speed()
    print_summary()
    say(yardstick_line(yard_before, yard_after))
    say(f"(all cases took {time.perf_counter() - started:.0f} s)")
    say("(other work on the machine during each case, as a share of all its cores; in kvm it "
        "includes the guests: " + ", ".join(others.shares) + ")")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="200 guests, 4 KVM guests, 2 rounds per case")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per case")
    parser.add_argument("--only", nargs="+", metavar="CASE", help=f"only these: {', '.join(CASES)}")
    parser.add_argument("--instructions", action="store_true",
                        help=f"e2e: also count client instructions per guest under valgrind's "
                             f"callgrind, aiovirt's provision() and libvirt-python's {THREADS} "
                             f"threads on {THREADS} conns (a run of {COUNT_GUESTS + COUNT_BASE} "
                             f"guests minus one of {COUNT_BASE}; ~2-3 min more, needs valgrind), "
                             "with a verdict beside the CPU one")
    add_loop_option(parser)
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--count-child", nargs=5, metavar=("KIND", "N", "PREFIX", "URI", "LOOP"),
                        help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.count_child:
        kind, n, prefix, uri, loop = opts.count_child
        count_child(kind, int(n), prefix, uri, loop)
        raise SystemExit(0)
    try:
        run_on(opts.loop, main(opts))
    except BenchError as exc:
        say(f"error: {exc}")
        raise SystemExit(1) from None
    finally:
        if opts.output:
            Path(opts.output).write_text("\n".join(LINES) + "\n")
