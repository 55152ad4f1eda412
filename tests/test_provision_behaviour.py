"""Provisioning behaviours against the suite's real libvirtd (the test driver, each run on a
private test host): the per-host concurrency limit, and completion by STARTED event with its
timeout.

A real daemon always sends a started guest's STARTED event, so to see what the run does when
one is late or never comes, these tests hold back that one event on the client: the
connection's event dispatch (``Connection._dispatch``, where every socket hands its events
over) is wrapped to keep STARTED events of chosen guests, and to hand them on when the test
says so.  Everything else (the daemon, the calls, the other events, the timing of the start
call) stays real.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import aiovirt
from aiovirt import Connection
from aiovirt.provision import GuestSpec, Provisioning, Stage
from aiovirt.protocol.wire import EventMessage


def template(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
            "<os><type>hvm</type></os></domain>")


def prefix() -> str:
    return f"b{uuid.uuid4().hex[:6]}"


def host_uri(daemon, tmp_path: Path) -> str:
    """A private test host (its own state for each connection) with no domains."""
    path = tmp_path / "host.xml"
    path.write_text("<node><cpu><mhz>2000</mhz><model>x86_64</model><active>4</active>"
                    "<nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>"
                    "</cpu><memory>8388608</memory></node>")
    return daemon.uri("test", str(path))


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        await anyio.sleep(0.001)


@pytest.mark.parametrize("limit", [1, 4])
async def test_guests_in_progress_never_exceed_the_host_concurrency_and_reach_it(
        daemon, tmp_path, limit):
    p = prefix()
    in_progress: set[str] = set()
    peak = 0
    seen: list[tuple[str, Stage]] = []

    def on_change(result) -> None:
        nonlocal peak
        seen.append((result.name, result.stage))
        if result.final:
            in_progress.discard(result.name)
        else:                       # defining, defined or starting: the host is busy with it
            in_progress.add(result.name)
        peak = max(peak, len(in_progress))

    with anyio.fail_after(60):
        report = await Provisioning(host_uri(daemon, tmp_path), GuestSpec(template(p), count=16),
                                    concurrency=limit, on_change=on_change).run()
    assert report.counts() == {"started": 16}
    assert report.hosts[0].concurrency == limit
    assert peak == limit, f"at most {peak} guests were in progress at once, limit {limit}"
    assert in_progress == set()
    # every guest went through its stages: defining, defined, starting, started
    for name in {f"{p}-{n}" for n in range(1, 17)}:
        assert [s for n, s in seen if n == name] == [
            Stage.DEFINING, Stage.DEFINED, Stage.STARTING, Stage.STARTED]


class HeldStarts:
    """Wraps ``Connection._dispatch``: STARTED events of ``names`` are kept, not delivered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, names: set[str]) -> None:
        self.names = names
        self.held: list[tuple[Connection, EventMessage]] = []
        self.original = Connection._dispatch
        monkeypatch.setattr(Connection, "_dispatch", self)   # raises if it was renamed

    def _dispatch(self, conn: Connection, message: EventMessage) -> None:
        msg = getattr(message.body, "msg", None)
        if (message.procedure.name == "domain_event_callback_lifecycle" and
                msg.event == aiovirt.DomainEventType.STARTED and msg.dom.name in self.names):
            self.held.append((conn, message))
            return
        self.original(conn, message)

    def __get__(self, conn: Connection, owner: type) -> Callable[[EventMessage], None]:
        return lambda message: self._dispatch(conn, message)

    def release(self) -> None:
        held, self.held = self.held, []
        for conn, message in held:
            self.original(conn, message)


async def test_a_guest_counts_as_started_only_when_its_started_event_arrives(
        daemon, tmp_path, monkeypatch):
    p = prefix()
    late, prompt = f"{p}-1", f"{p}-2"
    starts = HeldStarts(monkeypatch, {late})
    stages: dict[str, list[Stage]] = {late: [], prompt: []}
    async with aiovirt.connect(host_uri(daemon, tmp_path)) as conn:
        job = Provisioning(conn, GuestSpec(template(p), count=2), start_timeout=30,
                           on_change=lambda r: stages[r.name].append(r.stage))
        reports = []

        async def run() -> None:
            reports.append(await job.run())

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await wait_for(lambda: starts.held, f"{late}'s STARTED event came (held)")
                await wait_for(lambda: job.results[1].final, f"{prompt} is done")
                # the late guest's start call has returned (nothing is on the wire), and its
                # worker has gone as far as it can: it waits for the event
                await wait_for(lambda: conn.channels[0].in_flight == 0, "the start returned")
                await anyio.wait_all_tasks_blocked()
                assert job.results[1].stage is Stage.STARTED
                held = job.results[0]
                assert (held.stage, held.final) == (Stage.STARTING, False)
                dom = await conn.lookup_domain(name=late)
                assert (await dom.state())[0] == aiovirt.DomainState.RUNNING   # it runs...
                assert job.results[0].stage is Stage.STARTING          # ...but is not counted
                assert job.progress.done == 1
                starts.release()
        [report] = reports
    assert report.ok and report.counts() == {"started": 2}
    assert stages[late] == [Stage.DEFINING, Stage.DEFINED, Stage.STARTING, Stage.STARTED]
    assert stages[prompt] == [Stage.DEFINING, Stage.DEFINED, Stage.STARTING, Stage.STARTED]


@pytest.mark.parametrize("rollback", [True, False])
async def test_no_started_event_within_start_timeout_fails_the_guest(
        daemon, tmp_path, monkeypatch, rollback):
    p = prefix()
    silent, prompt = f"{p}-1", f"{p}-2"
    starts = HeldStarts(monkeypatch, {silent})
    async with aiovirt.connect(host_uri(daemon, tmp_path)) as conn:
        with anyio.fail_after(30):
            report = await Provisioning(conn, GuestSpec(template(p), count=2),
                                        start_timeout=0.5, rollback=rollback).run()
        assert len(starts.held) == 1      # the daemon did send it; the run never saw it
        failed, started = report.results
        assert (failed.name, failed.stage, failed.failed_at) == (silent, Stage.FAILED, "event")
        assert "no STARTED event came within 0.5 s" in failed.error
        assert failed.seconds is not None and failed.seconds >= 0.5
        assert (started.name, started.stage, started.error) == (prompt, Stage.STARTED, None)
        assert report.counts() == {"failed": 1, "started": 1} and not report.ok
        on_host = {d.name: d for d in await conn.list_domains()}
        if rollback:     # undefined again: it is gone, and the report says so
            assert (failed.rolled_back, failed.exists) == (True, False)
            assert set(on_host) == {prompt}
        else:            # left as it is: it exists (and runs), and the report says so
            assert (failed.rolled_back, failed.exists) == (False, True)
            assert set(on_host) == {silent, prompt}
            assert (await on_host[silent].state())[0] == aiovirt.DomainState.RUNNING
