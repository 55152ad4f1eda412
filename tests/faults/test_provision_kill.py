"""A daemon SIGKILLed at each point of a provisioning run -- while the run connects, while it
composes, mid-defines, mid-starts, and once the start calls have returned -- through the
library and through ``aiovirt provision --report`` as a real process.

Each run must end with a report (never an exception) that gives every guest an outcome and
agrees with what the daemons have.  Guests are QEMU definitions, which libvirtd keeps on disk
(the private daemon's ``etc-libvirt``): after the kill the daemon is started again on the same
state and asked what exists, so the killed host is checked as exactly as the survivor.
Kill points come from the run's own progress (``on_change``, a call it makes, the events it
causes), never from timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiovirt
from aiovirt.testing.daemon import PrivateDaemon
from aiovirt.protocol import remote
from aiovirt.provision import GuestSpec, Provisioning, Stage
from tests.test_cli import AIOVIRT

pytestmark = pytest.mark.kvm

BARE = "<domain><name>{name}</name></domain>"
COUNT = 8             # spread over two hosts: 4 each
CONCURRENCY = 2       # per host: most of a host's guests are still queued at an early kill
RUN_BOUND = 90.0      # seconds a run may take at most, kill included


def spec(p: str) -> GuestSpec:
    return GuestSpec(BARE.format(name=p), ["kvm-base"], params={"kvm-base.memory": "32"},
                     count=COUNT)


def qemu(d: PrivateDaemon) -> str:
    return d.uri("qemu", "/system")


@pytest.fixture
def survivor(tmp_path_factory: pytest.TempPathFactory):
    """The host that stays up.  Its own for each test: stopping it ends its guests at once
    (destroying a QEMU guest through libvirtd takes about 2 s each)."""
    with PrivateDaemon(tmp_path_factory.mktemp("survivor")) as running:
        yield running


@pytest.fixture
def doomed(tmp_path_factory: pytest.TempPathFactory):
    """A host to kill; its workdir (and so its QEMU definitions) outlives the kill."""
    running = PrivateDaemon(tmp_path_factory.mktemp("doomed")).start()
    try:
        yield running
    finally:
        running.stop()    # continues a stopped daemon before ending it


async def names_on(conn: aiovirt.Connection, p: str) -> set[str]:
    return {d.name for d in await conn.list_domains() if d.name.startswith(p + "-")}


def queued_connections(d: PrivateDaemon) -> int:
    """Connections waiting in the accept queue of the daemon's read-write socket."""
    out = subprocess.run(["ss", "-xlnH"], capture_output=True, text=True, check=True,
                         timeout=10).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[4] == d.socket_path:
            return int(fields[2])
    raise AssertionError(f"{d.socket_path} is not listening")


async def kill_once_connecting(d: PrivateDaemon, baseline: int) -> None:
    """Wait (bounded) until a client has connected to the stopped daemon, then kill it:
    the client is then in its handshake, which can never complete."""
    with anyio.fail_after(30):
        while queued_connections(d) <= baseline:
            await anyio.sleep(0.01)
    d.kill()


class Tripwire:
    """Takes the place of a connection's ``rpc`` and ``start`` (what the object API sends
    with) and awaits ``before``/``after`` (given the procedure number) around each call: the
    run's own calls decide the moment of the kill."""

    def __init__(self, conn: aiovirt.Connection,
                 before: Callable[[int], Awaitable[None]] | None = None,
                 after: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.conn, self.before, self.after = conn, before, after
        self.send = conn.start
        conn.rpc = remote.RemoteCalls(self.call)
        conn.start = self.call  # type: ignore[method-assign]

    async def call(self, procedure: Any, args: Any = None, timeout: Any = ..., *,
                   lane: bool | None = None) -> Any:
        if self.before is not None:
            await self.before(procedure.number)
        try:
            return await self.send(procedure, args, timeout, lane=lane)
        finally:   # returned or raised: the call is over either way
            if self.after is not None:
                await self.after(procedure.number)


async def check(report: dict[str, Any], p: str, doomed: PrivateDaemon,
                survivor: PrivateDaemon, *, doomed_uri: str | None = None,
                states: tuple[str, ...] = ("lost", "unreachable")
                ) -> tuple[list[dict[str, Any]], set[str]]:
    """What every run must satisfy, whatever the kill point; returns the guests the report
    puts on the killed host and the names that host has once started again."""
    d_uri, s_uri = doomed_uri or qemu(doomed), qemu(survivor)
    guests = report["guests"]
    assert len(guests) == COUNT
    assert {g["name"] for g in guests} == {f"{p}-{n}" for n in range(1, COUNT + 1)}
    assert all(g["outcome"] is not None for g in guests), report
    assert report["counts"] == dict(Counter(g["outcome"] for g in guests))
    assert sum(report["counts"].values()) == COUNT
    assert set(report["counts"]) <= {"started", "failed"}, report["counts"]
    hosts = {h["uri"]: h for h in report["hosts"]}
    assert hosts[d_uri]["state"] in states and hosts[s_uri]["state"] == "ok"

    on_survivor = [g for g in guests if g["host"] == s_uri]
    on_doomed = [g for g in guests if g["host"] == d_uri]
    assert len(on_survivor) + len(on_doomed) == COUNT
    for g in on_survivor:          # a healthy host: each guest started and exists there
        assert g["outcome"] == "started" and g["exists"] is True, json.dumps(g)
        assert g["moved_from"] == [d_uri] if "moved_from" in g else True
    for g in on_doomed:            # started before the kill, or failed saying why
        assert g["outcome"] == "started" or ("lost" in g["error"] and g["outcome"] == "failed"
                                             and g["failed_at"] in ("define", "start")), g
        assert "moved_from" not in g
    async with aiovirt.connect(s_uri) as conn:
        assert await names_on(conn, p) == {g["name"] for g in on_survivor}
        for g in on_survivor:
            dom = await conn.lookup_domain(name=g["name"])
            assert dom.uuid == g["uuid"] and await dom.is_active()

    doomed.start()                 # the same definitions, read back from disk
    async with aiovirt.connect(qemu(doomed)) as conn:
        there = await names_on(conn, p)
        uuids = {d.name: d.uuid for d in await conn.list_domains()}
    said = {g["name"] for g in on_doomed if g["exists"] is True}
    maybe = {g["name"] for g in on_doomed if g["exists"] is None}
    assert said <= there <= said | maybe, (said, maybe, there)
    assert all(uuids[g["name"]] == g["uuid"] for g in on_doomed if g["name"] in said)
    return on_doomed, there


async def run_library(job: Provisioning) -> dict[str, Any]:
    """``run()`` returns a report: an exception of any kind fails the test."""
    with anyio.fail_after(RUN_BOUND):
        report = await job.run()
    assert all(r.final for r in report.results)
    return report.to_dict()


# -- the library --------------------------------------------------------------------------------

async def test_library_kill_while_connecting(doomed, survivor):
    p = f"kc{uuid.uuid4().hex[:6]}"
    os.kill(doomed.pid, signal.SIGSTOP)   # connections now queue, unanswered
    baseline = queued_connections(doomed)
    job = Provisioning([qemu(doomed), qemu(survivor)], spec(p), placement="spread",
                       concurrency=CONCURRENCY)
    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_once_connecting, doomed, baseline)
        report = await run_library(job)
    on_doomed, there = await check(report, p, doomed, survivor)
    assert report["hosts"][0]["state"] == "unreachable"
    assert on_doomed == [] and there == set() and report["ok"]


async def test_library_kill_while_composing(doomed, survivor):
    """The kill lands on the run's first domain-capabilities call to the doomed host, made
    while it composes the spec for that host: nothing has been defined anywhere yet."""
    p = f"kp{uuid.uuid4().hex[:6]}"
    conn = await aiovirt.connect(qemu(doomed))
    calls: list[int] = []

    async def before(number: int) -> None:
        calls.append(number)
        if number == remote.REMOTE_PROC_CONNECT_GET_DOMAIN_CAPABILITIES and doomed.running:
            doomed.kill()

    Tripwire(conn, before=before)
    try:
        job = Provisioning([conn, qemu(survivor)], spec(p), placement="spread",
                           concurrency=CONCURRENCY)
        report = await run_library(job)
        assert remote.REMOTE_PROC_CONNECT_GET_DOMAIN_CAPABILITIES in calls
        assert remote.REMOTE_PROC_DOMAIN_DEFINE_XML_FLAGS not in calls
        on_doomed, there = await check(report, p, doomed, survivor,
                                       doomed_uri=conn.uri.uri)
        # it died under the run: lost (the event stream noticed) or unreachable (learning)
        assert on_doomed == [] and there == set() and report["ok"]
    finally:
        await conn.close()


@pytest.mark.parametrize("point", ["defines", "starts"])
async def test_library_kill_mid_run(doomed, survivor, point):
    """``defines``: the kill comes as the doomed host's second guest is defined;
    ``starts``: as its first start call is about to go out."""
    p = f"k{point[0]}{uuid.uuid4().hex[:6]}"
    d_uri = qemu(doomed)
    at_kill: dict[str, Stage] = {}
    job: Provisioning

    def on_change(result) -> None:
        if result.host != d_uri or not doomed.running:
            return
        mine = [r for r in job.results if r.host == d_uri]
        if point == "defines":
            due = sum(r.stage is not Stage.PENDING and r.stage is not Stage.DEFINING
                      for r in mine) == 2
        else:
            due = result.stage is Stage.STARTING
        if due:
            at_kill.update({r.name: r.stage for r in mine})
            doomed.kill()

    job = Provisioning([d_uri, qemu(survivor)], spec(p), placement="spread",
                       concurrency=CONCURRENCY, on_change=on_change)
    report = await run_library(job)
    assert at_kill, "the kill point was never reached"
    on_doomed, there = await check(report, p, doomed, survivor)
    assert report["hosts"][0]["state"] == "lost" and not report["ok"]
    by_name = {g["name"]: g for g in report["guests"]}
    pending = {n for n, stage in at_kill.items() if stage is Stage.PENDING}
    assert pending, at_kill                       # queued there when it died...
    for name in pending:                          # ...so moved to the survivor
        g = by_name[name]
        assert g["moved_from"] == [d_uri] and g["outcome"] == "started", g
    for name, stage in at_kill.items():           # defined before the kill: still there
        if stage in (Stage.DEFINED, Stage.STARTING, Stage.STARTED):
            assert by_name[name]["exists"] is True and name in there
    if point == "starts":       # the guest whose start went out into the dead socket
        starting = [n for n, s in at_kill.items() if s is Stage.STARTING]
        assert any(by_name[n]["outcome"] == "failed" for n in starting)


async def test_library_kill_after_the_start_calls_returned(doomed, survivor):
    """The kill comes once every start call on the doomed host has returned: the run is
    waiting for (or has just had) their STARTED events.  Each of them exists."""
    p = f"ke{uuid.uuid4().hex[:6]}"
    conn = await aiovirt.connect(qemu(doomed))
    job: Provisioning
    returned = 0

    async def after(number: int) -> None:
        nonlocal returned
        if number == remote.REMOTE_PROC_DOMAIN_CREATE_WITH_FLAGS:
            returned += 1
            if returned == sum(r.host == conn.uri.uri for r in job.results):
                doomed.kill()

    Tripwire(conn, after=after)
    try:
        job = Provisioning([conn, qemu(survivor)], spec(p), placement="spread",
                           concurrency=CONCURRENCY)
        report = await run_library(job)
        assert not doomed.running and returned == COUNT // 2, report
        # the run may have had every STARTED event, and be done with that host, before it
        # notices the loss
        on_doomed, there = await check(report, p, doomed, survivor, doomed_uri=conn.uri.uri,
                                       states=("lost", "ok"))
        assert len(on_doomed) == COUNT // 2
        assert all(g["exists"] is True for g in on_doomed)
        assert there == {g["name"] for g in on_doomed}
    finally:
        await conn.close()


# -- the command ------------------------------------------------------------------------------

async def watch_and_kill(d: PrivateDaemon, event: aiovirt.DomainEventType, times: int,
                         p: str, ready: anyio.Event, seen: list[str]) -> None:
    """Kill ``d`` once it has announced ``event`` for ``times`` of the run's guests (their
    names go to ``seen``)."""
    with anyio.fail_after(RUN_BOUND):
        async with aiovirt.connect(qemu(d)) as conn, conn.domain_events() as events:
            ready.set()
            async for item in events:
                if item.event == event and item.domain.name.startswith(p + "-"):
                    seen.append(item.domain.name)
                    if len(seen) == times:
                        break
    d.kill()


def start_cli(tmp: Path, p: str, uris: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    template, report = tmp / f"{p}.xml", tmp / f"{p}.json"
    template.write_text(BARE.format(name=p))
    args = [AIOVIRT, "provision", *(a for uri in uris for a in ("--uri", uri)), "-n",
            str(COUNT), "-p", "kvm-base", "--param", "kvm-base.memory=32", "--placement",
            "spread", "--concurrency", str(CONCURRENCY), "--report", str(report),
            str(template)]
    with open(tmp / f"{p}.out", "wb") as out:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT)
    return process, report


async def finish_cli(process: subprocess.Popen[bytes], report: Path) -> dict[str, Any]:
    """The process ends within the bound, having written its report; the exit status says
    what the report says (0: every guest reached its goal, 1: some did not)."""
    deadline = time.monotonic() + RUN_BOUND
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError("aiovirt provision did not finish in time")
        await anyio.sleep(0.05)
    output = report.with_suffix(".out").read_text()
    assert "Traceback" not in output, output
    assert report.exists(), output
    data = json.loads(report.read_text())
    assert process.returncode == (0 if data["ok"] else 1), output
    return data


@pytest.mark.parametrize("point", ["connecting", "defines", "starts", "started"])
async def test_cli_kill(doomed, survivor, tmp_path, point):
    """``connecting``: the doomed daemon is stopped, and killed once the command's
    connection waits in its accept queue; ``defines``: killed at its second DEFINED event
    for the run; ``starts``: at its first STARTED event; ``started``: once every guest placed
    on it has started."""
    p = f"c{point[0]}{uuid.uuid4().hex[:6]}"
    uris = [qemu(doomed), qemu(survivor)]
    seen: list[str] = []
    async with anyio.create_task_group() as tg:
        if point == "connecting":
            os.kill(doomed.pid, signal.SIGSTOP)
            tg.start_soon(kill_once_connecting, doomed, queued_connections(doomed))
        else:
            ready = anyio.Event()
            kind, times = {"defines": (aiovirt.DomainEventType.DEFINED, 2),
                           "starts": (aiovirt.DomainEventType.STARTED, 1),
                           "started": (aiovirt.DomainEventType.STARTED, COUNT // 2)}[point]
            tg.start_soon(watch_and_kill, doomed, kind, times, p, ready, seen)
            with anyio.fail_after(30):
                await ready.wait()
        process, report_file = start_cli(tmp_path, p, uris)
        report = await finish_cli(process, report_file)
    assert not doomed.running
    # at the last STARTED event the run may be done with that host before it dies
    on_doomed, there = await check(report, p, doomed, survivor, states=(
        "lost", "unreachable", "ok") if point == "started" else ("lost", "unreachable"))
    if point == "connecting":
        assert report["hosts"][0]["state"] == "unreachable" and report["ok"]
        assert on_doomed == [] and there == set()
        return
    # the guests it announced before it died are there, and the report places them there:
    # defined (or, when the kill beat the define's reply, perhaps defined), or started
    by_name = {g["name"]: g for g in on_doomed}
    assert set(seen) <= there and set(seen) <= set(by_name)
    for name in seen:
        assert by_name[name]["exists"] is (True if point != "defines" else
                                           by_name[name]["exists"])
        assert by_name[name]["exists"] in (True, None)
    if point == "started":
        assert len(on_doomed) == COUNT // 2 and set(seen) == there == set(by_name)
