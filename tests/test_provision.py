"""Provisioning against real daemons (the test driver): one host, a fleet of private
libvirtd daemons, a host killed mid-run, cancellation, teardown; and the pure parts (specs,
placement) on their own."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import anyio
import pytest

import aiovirt
from aiovirt.testing.daemon import PrivateDaemon
from aiovirt.provision import (NAMESPACE, Capacity, GuestSpec, Provisioning, ProvisionError,
                               SpecError, Stage, choose, provision, teardown)

TEMPLATE = ("<domain type='test'><name>{name}</name><memory unit='MiB'>{mib}</memory>"
            "<os><type>hvm</type></os></domain>")


def template(name: str = "guest", mib: int = 8) -> str:
    return TEMPLATE.format(name=name, mib=mib)


def prefix() -> str:
    return f"p{uuid.uuid4().hex[:6]}"


async def names_on(conn: aiovirt.Connection, start: str) -> set[str]:
    return {d.name for d in await conn.list_domains() if d.name.startswith(start)}


def node_file(tmp_path: Path, name: str, memory_kib: int) -> str:
    """A test-driver host with ``memory_kib`` of memory and no domains."""
    path = tmp_path / f"{name}.xml"
    path.write_text(f"<node><cpu><mhz>2000</mhz><model>x86_64</model><active>4</active>"
                    f"<nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>"
                    f"</cpu><memory>{memory_kib}</memory></node>")
    return str(path)


# -- specs and placement, pure ----------------------------------------------------------------

def test_spec_names_patterns_and_errors():
    assert GuestSpec(template("web"), count=3).names() == ["web-1", "web-2", "web-3"]
    assert GuestSpec(template("web"), count=2, name="db-{n:03d}", first=9).names() == \
        ["db-009", "db-010"]
    assert GuestSpec(template("web")).names() == ["web"]
    with pytest.raises(ProvisionError, match=r"same name for all 2 guests: put \{n\}"):
        GuestSpec(template(), count=2, name="fixed")
    with pytest.raises(ProvisionError, match=r"unknown field \{x\}"):
        GuestSpec(template(), name="a-{x}")
    with pytest.raises(ProvisionError, match="count 0"):
        GuestSpec(template(), count=0)
    with pytest.raises(ProvisionError, match="has no <name>: give a name pattern"):
        GuestSpec("<domain type='test'/>", count=2).names()
    with pytest.raises(aiovirt.XMLInputError, match="line 1"):
        GuestSpec("<domain>", count=2).names()


def test_spec_from_dict_round_trip_and_errors():
    spec = GuestSpec.from_dict({"template": template(), "profiles": ["kvm-base"], "count": 2,
                                "name": "x-{i}", "labels": {"team": "a"},
                                "address": {"hotplug_reserve": 2}})
    assert GuestSpec.from_dict(spec.to_dict()) == spec
    assert spec.address.hotplug_reserve == 2
    with pytest.raises(ProvisionError, match="unknown field 'colour'"):
        GuestSpec.from_dict({"template": template(), "colour": "red"})
    with pytest.raises(ProvisionError, match="profiles is a list of strings"):
        GuestSpec.from_dict({"template": template(), "profiles": "kvm-base"})
    with pytest.raises(ProvisionError, match="count is a whole number"):
        GuestSpec.from_dict({"template": template(), "count": "3"})


def test_run_refuses_bad_requests_before_doing_anything():
    with pytest.raises(ProvisionError, match="'web-1' comes twice"):
        Provisioning("test:///default", [GuestSpec(template("web"), count=2),
                                         GuestSpec(template("web"), name="web-1")])
    with pytest.raises(ProvisionError, match="has a <uuid> but makes 2 guests"):
        Provisioning("test:///default", GuestSpec(
            "<domain type='test'><name>u</name><uuid>6f5d1d8e-5b5e-4b8a-9c34-1b2a3c4d5e6f"
            "</uuid></domain>", count=2))
    with pytest.raises(ProvisionError, match="unknown placement 'random'"):
        Provisioning("test:///default", GuestSpec(template()), placement="random")
    with pytest.raises(ProvisionError, match="on_existing='keep'"):
        Provisioning("test:///default", GuestSpec(template()), on_existing="keep")


def test_check_refuses_a_bad_spec_before_any_host_is_touched():
    job = Provisioning("test+unix:///default?socket=/nonexistent", [
        GuestSpec(template("a")), GuestSpec(template("b"), ["no-such-profile"])])
    with pytest.raises(SpecError, match="spec 1: .*no-such-profile") as caught:
        job.check()
    assert caught.value.index == 1
    bad_param = Provisioning("test:///default", GuestSpec(template(), ["kvm-base"],
                                                          params={"kvm-base.memory": "lots"}))
    with pytest.raises(SpecError, match="spec 0: .*memory"):
        bad_param.check()


def test_placement_policies():
    def hosts() -> list[Capacity]:
        return [Capacity(4 << 20, 4), Capacity(8 << 20, 4), Capacity(2 << 20, 4)]

    def run(policy: str, count: int, mib: int = 1024) -> list[int | None]:
        caps, chosen = hosts(), []
        for _ in range(count):
            index = choose(caps, mib * 1024, 1, policy)
            chosen.append(index)
            if index is not None:
                caps[index].take(mib * 1024, 1)
        return chosen

    assert run("capacity", 6) == [1, 1, 1, 1, 0, 1]      # most free first, ties by order
    assert run("spread", 6) == [0, 1, 2, 0, 1, 2]
    assert run("pack", 6) == [0, 0, 0, 0, 1, 1]
    assert run("pack", 15)[-1] is None                   # 14 GiB in all: the 15th fits nowhere
    assert choose([None, Capacity(1 << 20, 1)], 1024, 1, "spread") == 1   # None: out


# -- one host ---------------------------------------------------------------------------------

async def test_provision_one_host_then_existing_policies_and_teardown(daemon):
    uri = daemon.uri("test", "/default")
    p = prefix()
    async with aiovirt.connect(uri) as conn:     # holds the shared test host open
        stages: list[tuple[str, str]] = []
        spec = GuestSpec(template(p), count=30, labels={"team": "blue"})
        report = await provision(uri, spec, on_change=lambda r: stages.append((r.name,
                                                                               str(r.stage))))
        assert report.ok and report.counts() == {"started": 30}
        assert await names_on(conn, p) == {f"{p}-{n}" for n in range(1, 31)}
        for result in report.results:
            dom = await conn.lookup_domain(name=result.name)
            assert dom.uuid == result.uuid and result.exists and result.host == uri
            assert (await dom.state())[0] == aiovirt.DomainState.RUNNING
        mine = [s for name, s in stages if name == f"{p}-7"]
        assert mine == ["defining", "defined", "starting", "started"]
        value = await (await conn.lookup_domain(name=f"{p}-1")).read_metadata(
            namespace=NAMESPACE)
        assert value == {"run": report.run_id, "spec": 0, "labels": {"team": "blue"}}

        again = GuestSpec(template(p), count=32)          # 30 exist, 2 are new
        skipped = await provision(uri, again, on_existing="skip")
        assert Counter(skipped.counts()) == Counter({"skipped": 30, "started": 2})
        failed = await provision(uri, GuestSpec(template(p), count=2), on_existing="fail")
        assert failed.counts() == {"failed": 2} and not failed.ok
        assert "already exists" in failed.results[0].error and not failed.results[0].exists
        replaced = await provision(uri, GuestSpec(template(p), count=1, name=f"{p}-1"),
                                   on_existing="replace")
        assert replaced.results[0].replaced and replaced.results[0].stage is Stage.STARTED
        assert (await conn.lookup_domain(name=f"{p}-1")).uuid == replaced.results[0].uuid

        removed = await teardown(uri, names=f"{p}-3?")    # 30..32: by name pattern
        assert sorted(r.name for r in removed.removals) == [f"{p}-30", f"{p}-31", f"{p}-32"]
        removed = await teardown(uri, labels={"team": "blue"}, names=f"{p}-*")
        assert removed.counts() == {"removed": 28}        # -1 was replaced: not labelled now
        removed = await teardown(uri, report=replaced)
        assert removed.ok and removed.counts() == {"removed": 1}
        assert await names_on(conn, p) == set()
        again_removed = await teardown(uri, report=replaced)
        assert again_removed.counts() == {"not found": 1}


async def test_compose_failure_and_define_only(daemon):
    uri = daemon.uri("test", "/default")
    p = prefix()
    async with aiovirt.connect(uri) as conn:
        report = await provision(uri, [
            GuestSpec(template(p), count=2, name=p + "-bad-{n}", profiles=["no-such-profile"]),
            GuestSpec(template(p), count=2, name=p + "-def-{n}", start=False)])
        bad, defined = report.results[:2], report.results[2:]
        assert all(r.stage is Stage.FAILED and r.failed_at == "compose" and
                   "no-such-profile" in r.error and r.exists is False for r in bad)
        assert all(r.stage is Stage.DEFINED and r.final and r.exists for r in defined)
        assert await names_on(conn, p) == {f"{p}-def-1", f"{p}-def-2"}
        for name in (f"{p}-def-1", f"{p}-def-2"):
            assert not await (await conn.lookup_domain(name=name)).is_active()
        await teardown(uri, report=report)
        assert await names_on(conn, p) == set()


async def test_teardown_refuses_to_choose_everything(daemon):
    with pytest.raises(ProvisionError, match="needs names, run, labels or a report"):
        await teardown(daemon.uri("test", "/default"))


async def test_guests_are_carried_by_at_most_one_task_per_slot(daemon):
    """The run does not pay a task per guest: at most ``concurrency`` tasks carry a host's
    guests, each taking the next launch when its guest is done."""
    import asyncio

    uri = daemon.uri("test", "/default")
    p = prefix()
    seen: set[asyncio.Task] = set()

    def on_change(result) -> None:
        seen.update(t for t in asyncio.all_tasks() if t.get_name().startswith("aiovirt guests"))

    report = await Provisioning(uri, GuestSpec(template(p), count=60), concurrency=4,
                                on_change=on_change).run()
    assert report.ok and report.counts() == {"started": 60}
    assert 1 <= len(seen) <= 4
    await teardown(uri, report=report)


# -- cancellation -----------------------------------------------------------------------------

async def exists_as_reported(conn: aiovirt.Connection, report, p: str) -> None:
    """The report is accurate: what it says exists is there, and nothing else is."""
    said = {r.name for r in report.results if r.exists}
    assert all(r.exists is not None for r in report.results)
    assert await names_on(conn, p) == said


async def test_cancel_stops_launching_and_reports_what_exists(daemon):
    uri = daemon.uri("test", "/default")
    p = prefix()
    async with aiovirt.connect(uri) as conn:
        job: Provisioning

        def on_change(result) -> None:
            if result.stage is Stage.STARTED and job.progress.counts[Stage.STARTED] == 10:
                job.cancel()

        job = Provisioning(uri, GuestSpec(template(p), count=200), concurrency=4,
                           on_change=on_change)
        report = await job.run()
        counts = report.counts()
        assert report.cancelled and not report.ok
        assert counts["started"] >= 10 and counts["cancelled"] > 100
        assert set(counts) <= {"started", "defined", "cancelled"}
        await exists_as_reported(conn, report, p)
        await teardown(uri, report=report)
        assert await names_on(conn, p) == set()


async def test_task_cancellation_still_completes_the_report(daemon):
    uri = daemon.uri("test", "/default")
    p = prefix()
    async with aiovirt.connect(uri) as conn:
        scope = anyio.CancelScope()

        def on_change(result) -> None:
            if job.progress.counts[Stage.STARTED] == 5:
                scope.cancel()

        job = Provisioning(uri, GuestSpec(template(p), count=100), concurrency=3,
                           on_change=on_change)
        with scope:
            await job.run()
        assert scope.cancelled_caught
        report = job.report
        assert report.cancelled and all(r.final for r in report.results)
        assert report.counts()["cancelled"] > 50
        await exists_as_reported(conn, report, p)
        await teardown(uri, report=report)


async def test_a_caller_cancelled_while_a_define_is_out_starts_nothing_more(daemon):
    """The caller's cancellation lands while guest 0's define call is out (shielded): the
    define finishes and is reported, that guest is not started, nothing else launches."""
    uri = daemon.uri("test", "/default")
    p = prefix()
    async with aiovirt.connect(uri) as conn:
        scope = anyio.CancelScope()

        def on_change(result) -> None:
            if result is job.results[0] and result.stage is Stage.DEFINING:
                scope.cancel()

        job = Provisioning(uri, GuestSpec(template(p), count=20), concurrency=1,
                           on_change=on_change)
        with scope:
            await job.run()
        assert scope.cancelled_caught
        report = job.report
        first = report.results[0]
        assert (first.stage, first.exists, first.final) == (Stage.DEFINED, True, True)
        assert report.cancelled and report.counts() == {"defined": 1, "cancelled": 19}
        await exists_as_reported(conn, report, p)
        dom = await conn.lookup_domain(name=first.name)
        assert not await dom.is_active()
        await teardown(uri, report=report)


async def test_a_cancellation_the_caller_swallowed_earlier_does_not_stop_a_run(daemon):
    """asyncio counts cancellations a task caught and never undid (``cancelling()``): a run
    in such a task is not mistaken for a cancelled one."""
    import asyncio

    uri = daemon.uri("test", "/default")
    p = prefix()
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        pass                       # swallowed without uncancel(): cancelling() stays 1
    assert task.cancelling() == 1
    try:
        report = await Provisioning(uri, GuestSpec(template(p), count=6), concurrency=2).run()
        assert report.ok and report.counts() == {"started": 6}
        await teardown(uri, report=report)
    finally:
        task.uncancel()


# -- a fleet ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    """Three more private libvirtd daemons (each its own sockets and state)."""
    daemons = [PrivateDaemon(tmp_path_factory.mktemp(f"fleet{i}")).start() for i in range(3)]
    yield daemons
    for d in daemons:
        d.stop()


async def test_fleet_spread_and_pack_over_three_daemons(fleet):
    uris = [d.uri("test", "/default") for d in fleet]
    p = prefix()
    conns = [await aiovirt.connect(u) for u in uris]   # hold the shared hosts open
    try:
        report = await provision(uris, GuestSpec(template(p), count=30), placement="spread")
        assert report.ok and Counter(r.host for r in report.results) == \
            {u: 10 for u in uris}
        for conn, uri in zip(conns, uris):
            assert await names_on(conn, p) == {r.name for r in report.results if r.host == uri}
        # pack: 1 GiB guests on test hosts of 3 GiB (the default test host): 3 per host
        big = await provision(uris, GuestSpec(template(p + "-big", 1024), count=10),
                              placement="pack")
        assert [r.host for r in big.results[:9]] == [uris[0]] * 3 + [uris[1]] * 3 + \
            [uris[2]] * 3
        last = big.results[9]
        assert last.stage is Stage.FAILED and last.failed_at == "place"
        assert "no host has 1024 MiB free" in last.error and last.exists is False
        for report_ in (report, big):
            assert (await teardown(uris, report=report_)).ok
        for conn in conns:
            assert await names_on(conn, p) == set()
    finally:
        for conn in conns:
            await conn.close()


async def test_capacity_placement_follows_free_memory(tmp_path, daemon):
    small = node_file(tmp_path, "small", 4 << 20)
    large = node_file(tmp_path, "large", 8 << 20)
    # a node file gives each connection a private host: pass the connections themselves
    async with aiovirt.connect(daemon.uri("test", small)) as a, \
            aiovirt.connect(daemon.uri("test", large)) as b:
        report = await provision([a, b], GuestSpec(template("cap", 1024), count=6))
        assert [r.host for r in report.results] == [b.uri.uri] * 4 + [a.uri.uri, b.uri.uri]
        assert report.ok
        assert len(await names_on(a, "cap")) == 1 and len(await names_on(b, "cap")) == 5


async def test_memory_overcommit(tmp_path, daemon):
    host = node_file(tmp_path, "host", 3 << 20)            # 3 GiB
    async with aiovirt.connect(daemon.uri("test", host)) as conn:
        spec = GuestSpec(template("oc", 1024), count=4)
        strict = await provision(conn, spec)
        assert strict.counts() == {"started": 3, "failed": 1}
        assert strict.results[3].failed_at == "place"
        await teardown(conn, report=strict)
        loose = await provision(conn, spec, overcommit=1.5)
        assert loose.ok and len(await names_on(conn, "oc")) == 4
    with pytest.raises(ProvisionError, match="overcommit must be a number more than 0"):
        Provisioning("test:///default", spec, overcommit=0)


async def test_unreachable_host_is_reported_and_skipped(daemon, tmp_path):
    uri = daemon.uri("test", "/default")
    nowhere = f"test+unix:///default?socket={tmp_path}/no-such-socket"
    p = prefix()
    async with aiovirt.connect(uri) as conn:
        report = await provision([nowhere, uri], GuestSpec(template(p), count=4),
                                 placement="spread")
        assert report.ok and {r.host for r in report.results} == {uri}
        assert report.hosts[0].state == "unreachable" and "no-such-socket" in \
            report.hosts[0].error
        assert any("unreachable" in note for note in report.notes)
        assert len(await names_on(conn, p)) == 4
        await teardown(uri, report=report)
    alone = await provision(nowhere, GuestSpec(template(p), count=2))
    assert alone.counts() == {"failed": 2} and not alone.ok
    assert all(r.error == "no host could be reached" and r.exists is False
               for r in alone.results)


async def test_a_host_killed_mid_run_hands_its_guests_to_the_others(tmp_path_factory, daemon):
    doomed = PrivateDaemon(tmp_path_factory.mktemp("doomed")).start()
    try:
        uris = [doomed.uri("test", "/default"), daemon.uri("test", "/default")]
        p = prefix()
        holder = await aiovirt.connect(uris[0])
        survivor = await aiovirt.connect(uris[1])
        try:
            def on_change(result) -> None:
                if result.host == uris[0] and result.stage is Stage.STARTED and \
                        doomed.running:
                    doomed.kill()    # the first guest up on it: its daemon dies

            report = await provision(uris, GuestSpec(template(p), count=40),
                                     placement="spread", concurrency=2,
                                     on_change=on_change)
            assert all(r.final for r in report.results)
            assert report.hosts[0].state == "lost"
            moved = [r for r in report.results if r.moved_from]
            assert moved and all(r.moved_from == [uris[0]] and r.host == uris[1]
                                 for r in moved)
            assert all(r.stage is Stage.STARTED for r in moved)
            assert any("moved" in note and uris[1] in note for note in report.notes)
            lost = [r for r in report.results if r.host == uris[0]]
            # the guest that started before the kill, and those in flight, stay on the lost
            # host: started, or failed saying the host was lost (existence maybe unknown)
            assert any(r.stage is Stage.STARTED for r in lost)
            for r in lost:
                assert r.stage is Stage.STARTED or (r.stage is Stage.FAILED and
                                                    "lost" in r.error)
            on_survivor = {r.name for r in report.results if r.host == uris[1]}
            assert await names_on(survivor, p) == on_survivor
            assert len(on_survivor) + len(lost) == 40
            removed = await teardown(uris[1], report=report)
            assert removed.counts() == {"removed": len(on_survivor)}
        finally:
            await survivor.close()
            await holder.close()
    finally:
        doomed.stop()


def test_spec_rejects_names_libvirt_cannot_take():
    with pytest.raises(ProvisionError, match="without '/'"):
        GuestSpec(template(), name="a/{n}", count=2).names()
