"""The examples, run as real scripts against the suite's libvirtd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

import aiovirt
from aiovirt.provision import GuestSpec, provision, teardown

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def script(name: str, *args: str, cwd: Path | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


@pytest.fixture
async def held(daemon):
    """The shared test host, held open between the scripts' own connections."""
    uri = daemon.uri("test", "/default")
    conn = await aiovirt.connect(uri)
    try:
        yield uri, conn
    finally:
        await conn.close()


async def test_connect_define_and_compose_examples(held, daemon):
    uri, _ = held
    listed = await anyio.to_thread.run_sync(script, "connect_and_list.py", uri)
    assert listed.returncode == 0 and "test" in listed.stdout, listed.stderr
    started = await anyio.to_thread.run_sync(script, "define_and_start.py", uri, "3")
    assert started.returncode == 0, started.stderr
    composed = await anyio.to_thread.run_sync(script, "compose_and_define.py",
                                              daemon.uri("qemu", "/system"))
    assert composed.returncode == 0, composed.stderr


async def test_bulk_provision_example_over_two_hosts(held, tmp_path_factory):
    from aiovirt.daemon import PrivateDaemon

    uri, conn = held
    with PrivateDaemon(tmp_path_factory.mktemp("bulk")) as other:
        second = other.uri("test", "/default")
        async with aiovirt.connect(second):
            workdir = tmp_path_factory.mktemp("bulkrun")
            done = await anyio.to_thread.run_sync(
                lambda: script("bulk_provision.py", uri, second, "--count", "20", "--teardown",
                               cwd=workdir))
            assert done.returncode == 0, done.stdout + done.stderr
            assert "20/20 done: 20 started, 0 failed" in done.stdout
            assert "teardown: {'removed': 20}" in done.stdout
            report = json.loads((workdir / "bulk-report.json").read_text())
            assert sorted({g["host"] for g in report["guests"]}) == sorted([uri, second])
    assert not [d for d in await conn.list_domains() if d.name.startswith("bulk-")]


async def test_event_agent_restarts_a_labelled_guest(held):
    uri, conn = held
    name = f"agent-{uuid.uuid4().hex[:6]}"
    report = await provision(uri, GuestSpec(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
        "<os><type>hvm</type></os></domain>", labels={"restart": "always"}))
    assert report.ok
    agent = subprocess.Popen([sys.executable, str(EXAMPLES / "event_agent.py"), uri,
                              "--restarts", "1"], stdout=subprocess.PIPE, text=True,
                             env={**os.environ})
    try:
        assert agent.stdout is not None
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(agent.stdout.readline)
        assert line.startswith("watching")
        dom = await conn.lookup_domain(name=name)
        async with conn.domain_events(domain=dom) as events:
            await dom.destroy()       # the guest stops: the agent starts it again
            with anyio.fail_after(30):
                async for event in events:
                    if event.event == aiovirt.DomainEventType.STARTED:
                        break
        out, _ = await anyio.to_thread.run_sync(lambda: agent.communicate(timeout=30))
    finally:
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode == 0 and f"{name} stopped: restarted it" in out
    assert (await dom.state())[0] == aiovirt.DomainState.RUNNING
    await teardown(uri, report=report)
