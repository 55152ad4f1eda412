"""Teardown touches only guests aiovirt made: a name pattern as wide as ``*`` leaves other
guests (defined directly, one of them running) alone and reports each as skipped, through the
library, ``aiovirt teardown`` and ``POST /teardown``; only an explicit ``include_foreign``
(library, ``--include-foreign``) takes them, and the service refuses it.  A report's guests
go only when their metadata names the report's run."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

import aiovirt
from aiovirt.provision import (GuestSpec, ProvisionError, Stage, TeardownReport, provision,
                               teardown)
from aiovirt.provision.teardown import FOREIGN
from aiovirt.service import create_app
from tests.test_cli import run
from tests.test_service import serving

GUEST = ("<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
         "<os><type>hvm</type></os>{extra}</domain>")
OTHER_METADATA = "<metadata><app:tag xmlns:app='urn:example:other'>mine</app:tag></metadata>"


def guest(name: str, extra: str = "") -> str:
    return GUEST.format(name=name, extra=extra)


async def define_foreign(conn: aiovirt.Connection, p: str) -> dict[str, aiovirt.Domain]:
    """Guests made without aiovirt: one running, one shut off, one with another app's
    metadata."""
    running = await conn.define_xml(guest(f"{p}-foreign-run"))
    await running.start()
    off = await conn.define_xml(guest(f"{p}-foreign-off"))
    tagged = await conn.define_xml(guest(f"{p}-foreign-tagged", OTHER_METADATA))
    assert await running.is_active() and not await off.is_active()
    return {d.name: d for d in (running, off, tagged)}


async def names(conn: aiovirt.Connection) -> set[str]:
    return {d.name for d in await conn.list_domains()}


def outcomes(result: TeardownReport) -> dict[str, tuple[str, str | None]]:
    """Each guest's outcome and the reason given (for skipped ones), as the JSON says."""
    return {g["name"]: (g["outcome"], g.get("reason")) for g in result.to_dict()["guests"]}


@pytest.fixture
async def private_host(daemon, node_xml) -> AsyncIterator[aiovirt.Connection]:
    """A test-driver host of this connection's own (node-vm1 runs, node-vm2 is shut off):
    ``*`` and ``include_foreign`` there cannot reach another test's guests."""
    conn = await aiovirt.connect(daemon.uri("test", node_xml))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def shared_host(daemon) -> AsyncIterator[tuple[str, aiovirt.Connection]]:
    """The shared test host, held open so that its state outlives a command or a request."""
    uri = daemon.uri("test", "/default")
    conn = await aiovirt.connect(uri)
    try:
        yield uri, conn
    finally:
        await conn.close()


async def test_star_removes_only_aiovirt_guests_and_reports_the_rest(private_host):
    conn = private_host
    p = f"t{uuid.uuid4().hex[:6]}"
    made = await provision(conn, GuestSpec(guest(p), count=3))
    assert made.counts() == {"started": 3}
    foreign = await define_foreign(conn, p)
    others = await names(conn) - {r.name for r in made.results}
    assert {"node-vm1", "node-vm2", *foreign} == others

    result = await teardown(conn, names="*")
    assert await names(conn) == others                     # every foreign guest survives
    assert await foreign[f"{p}-foreign-run"].is_active()  # and the running one still runs
    assert outcomes(result) == {**{r.name: ("removed", None) for r in made.results},
                                **{name: ("skipped", FOREIGN) for name in others}}
    assert result.ok and result.counts() == {"removed": 3, "skipped": len(others)}

    taken = await teardown(conn, names="*", include_foreign=True)   # asked for explicitly
    assert taken.ok and {r.name for r in taken.removals} == others
    assert taken.counts() == {"removed": len(others)} and await names(conn) == set()


async def test_include_foreign_widens_name_patterns_only(private_host):
    for kwargs in ({"run": "abc"}, {"labels": {"team": "x"}}, {"names": "*", "run": "abc"}):
        with pytest.raises(ProvisionError, match="include_foreign widens name patterns"):
            await teardown(private_host, include_foreign=True, **kwargs)
    assert "node-vm1" in await names(private_host)


async def test_a_report_takes_only_guests_its_run_made(private_host):
    conn = private_host
    p = f"t{uuid.uuid4().hex[:6]}"
    first = await provision(conn, GuestSpec(guest(p), count=3, start=False))
    assert first.counts() == {"defined": 3}
    # the guest named -1 is now someone else's; -2 was replaced by a later run
    await (await conn.lookup_domain(name=f"{p}-1")).undefine()
    impostor = await conn.define_xml(guest(f"{p}-1"))
    later = await provision(conn, GuestSpec(guest(p), name=f"{p}-2", start=False),
                            on_existing="replace")
    assert later.results[0].replaced and later.results[0].stage is Stage.DEFINED
    # a report whose define calls were out when the host went away knows names, not UUIDs
    for result in first.results:
        result.uuid, result.exists = None, None

    result = await teardown(conn, report=first)
    assert outcomes(result) == {
        f"{p}-1": ("skipped", FOREIGN),
        f"{p}-2": ("skipped", f"not made by run {first.run_id} (its metadata names run "
                              f"{later.run_id!r})"),
        f"{p}-3": ("removed", None)}
    left = {n for n in await names(conn) if n.startswith(p)}
    assert left == {f"{p}-1", f"{p}-2"}
    assert (await conn.lookup_domain(name=f"{p}-1")).uuid == impostor.uuid
    assert (await teardown(conn, report=later)).counts() == {"removed": 1}
    await impostor.undefine()


async def test_cli_star_skips_foreign_guests_unless_include_foreign(shared_host):
    uri, conn = shared_host
    p = f"t{uuid.uuid4().hex[:6]}"
    made = await provision(uri, GuestSpec(guest(p), count=2))
    assert made.counts() == {"started": 2}
    foreign = await define_foreign(conn, p)
    before = await names(conn) - {r.name for r in made.results}
    try:
        done = await anyio.to_thread.run_sync(lambda: run("teardown", "--uri", uri,
                                                          "--name", "*"))
        assert done.returncode == 0, done.stderr
        assert await names(conn) == before                  # nothing but aiovirt's went
        assert await foreign[f"{p}-foreign-run"].is_active()
        assert "2 removed" in done.stdout and f"{len(before)} skipped" in done.stdout
        for name in foreign:
            assert f"  {name} on {uri}: skipped: {FOREIGN}" in done.stdout.splitlines()

        mixed = await anyio.to_thread.run_sync(lambda: run(
            "teardown", "--uri", uri, "--name", "*", "--run", "abc", "--include-foreign"))
        assert mixed.returncode == 1 and "include_foreign widens" in mixed.stderr
        taken = await anyio.to_thread.run_sync(lambda: run(
            "teardown", "--uri", uri, "--name", f"{p}-foreign-*", "--include-foreign",
            "--json"))
        assert taken.returncode == 0, taken.stderr
        report = json.loads(taken.stdout)
        assert report["counts"] == {"removed": 3}
        assert {g["name"] for g in report["guests"]} == set(foreign)
        assert await names(conn) == before - set(foreign)
    finally:
        for dom in foreign.values():
            if dom.name in await names(conn):
                await teardown(conn, names=dom.name, include_foreign=True)


async def test_service_star_skips_foreign_guests_and_refuses_include_foreign(shared_host,
                                                                            tmp_path):
    uri, conn = shared_host
    p = f"t{uuid.uuid4().hex[:6]}"
    made = await provision(uri, GuestSpec(guest(p), count=2, labels={"by": "test"}))
    foreign = await define_foreign(conn, p)
    before = await names(conn) - {r.name for r in made.results}
    app = create_app(hosts=[uri], profiles_dir=tmp_path / "profiles", system_profiles=False)
    try:
        async with serving(app) as client:
            reply = await client.post("/teardown", json={"names": ["*"]})
            assert reply.status_code == 200, reply.text
            assert await names(conn) == before                  # only aiovirt's went
            assert await foreign[f"{p}-foreign-run"].is_active()
            body = reply.json()
            assert body["ok"] and body["counts"] == {"removed": 2, "skipped": len(before)}
            skipped = {g["name"]: g.get("reason") for g in body["guests"]
                       if g["outcome"] == "skipped"}
            assert skipped == {name: FOREIGN for name in before}

            refused = await client.post("/teardown", json={"names": ["*"],
                                                           "include_foreign": True})
            assert refused.status_code == 403, refused.text
            assert "removes only guests aiovirt made" in refused.json()["error"]
            wrong = await client.post("/teardown", json={"names": ["*"],
                                                         "include_foreign": "yes"})
            assert wrong.status_code == 422 and "include_foreign" in wrong.json()["error"]
            same = await client.post("/teardown", json={"names": ["*"],
                                                        "include_foreign": False})
            assert same.status_code == 200 and same.json()["counts"] == {
                "skipped": len(before)}
            assert await names(conn) == before
    finally:
        await teardown(conn, names=f"{p}-foreign-*", include_foreign=True)


async def test_replace_never_replaces_a_guest_aiovirt_did_not_make(daemon):
    """``on_existing='replace'`` undefines only aiovirt's own guests: a foreign domain of the
    same name, running, stays exactly as it was and the guest fails saying why."""
    uri = daemon.uri("test", "/default")
    name = f"foreign-{uuid.uuid4().hex[:6]}"
    async with aiovirt.connect(uri) as conn:
        foreign = await conn.define_xml(
            f"<domain type='test'><name>{name}</name><description>keep me</description>"
            "<memory unit='MiB'>8</memory><os><type>hvm</type></os></domain>")
        await foreign.start()
        try:
            report = await provision(uri, GuestSpec(
                "<domain type='test'><name>x</name><memory unit='MiB'>8</memory>"
                "<os><type>hvm</type></os></domain>", name=name), on_existing="replace")
            [result] = report.results
            assert result.stage is Stage.FAILED and not result.replaced
            assert "aiovirt did not make it" in result.error and result.failed_at == "define"
            still = await conn.lookup_domain(name=name)
            assert still.uuid == foreign.uuid
            assert (await still.state())[0] == aiovirt.DomainState.RUNNING
            assert "<description>keep me</description>" in await still.xml()
        finally:
            await foreign.destroy()
            await foreign.undefine()
