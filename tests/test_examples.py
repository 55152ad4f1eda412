"""The examples, run as real scripts against the suite's libvirtd."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import anyio
import httpx
import pytest
from lxml import etree

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
    from aiovirt.testing.daemon import PrivateDaemon

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
            line = await anyio.to_thread.run_sync(agent.stdout.readline, abandon_on_cancel=True)
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


_TASK_DUMPER = """
import asyncio, runpy, signal, sys, traceback

def dump(signum, frame):
    print("SIGINT handler:", signal.getsignal(signal.SIGINT), file=sys.stderr)
    traceback.print_stack(frame, file=sys.stderr)
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:
        tasks = set()
    for task in tasks:
        print(f"-- {task!r} cancelling={task.cancelling()}", file=sys.stderr)
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    signal.raise_signal(signal.SIGUSR1)

signal.signal(signal.SIGUSR1, dump)
# A suite started in the background (`nohup ... &`, a non-interactive shell's job) runs with
# SIGINT ignored, and a child inherits that: Python then keeps ignoring it, asyncio.run
# installs no Ctrl-C handler, and the example rightly ignores Ctrl-C.  Run it as from a
# terminal instead.
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class Lines:
    """A process's stdout read line by line in a thread; ``next`` waits a bounded time."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=lambda: [self.queue.put(line) for line in stream],
                         daemon=True).start()

    async def next(self, timeout: float) -> str | None:
        try:
            return await anyio.to_thread.run_sync(self.queue.get, True, timeout)
        except queue.Empty:
            return None


async def test_watch_events_example_prints_each_lifecycle_event(held):
    uri, conn = held
    # the example as it is, run by a wrapper that makes Ctrl-C reach it as from a terminal
    # and prints its tasks' stacks on SIGUSR1 (what the test reports if it outlives Ctrl-C)
    watcher = subprocess.Popen([sys.executable, "-c", _TASK_DUMPER,
                                str(EXAMPLES / "watch_events.py"), uri],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = Lines(watcher)
        # it prints nothing until it has an event: start throwaway guests until one shows
        deadline = time.monotonic() + 30
        listening = False
        while not listening:
            assert time.monotonic() < deadline, "watch_events.py never printed an event"
            probe = await conn.create_xml(
                f"<domain type='test'><name>probe-{uuid.uuid4().hex[:6]}</name><memory "
                "unit='MiB'>8</memory><os><type>hvm</type></os></domain>")
            line = await lines.next(0.5)
            await probe.destroy()
            listening = line is not None
        name = f"watch-{uuid.uuid4().hex[:6]}"
        dom = await conn.define_xml(f"<domain type='test'><name>{name}</name><memory "
                                    "unit='MiB'>8</memory><os><type>hvm</type></os></domain>")
        await dom.start()
        await dom.suspend()
        await dom.resume()
        await dom.destroy()
        await dom.undefine()
        seen: list[str] = []
        while not seen or "undefined" not in seen[-1]:
            line = await lines.next(10)
            assert line is not None, f"the events stopped after {seen}"
            if line.startswith(f"{name}:"):
                seen.append(line.rstrip("\n"))
        watcher.send_signal(signal.SIGINT)             # Ctrl-C: it stops quietly
        try:
            _, err = await anyio.to_thread.run_sync(lambda: watcher.communicate(timeout=30))
        except subprocess.TimeoutExpired:
            watcher.send_signal(signal.SIGUSR1)   # say where it is stuck, then go
            try:
                _, err = await anyio.to_thread.run_sync(lambda: watcher.communicate(timeout=5))
            except subprocess.TimeoutExpired:
                watcher.kill()
                _, err = await anyio.to_thread.run_sync(lambda: watcher.communicate(timeout=5))
            pytest.fail(f"watch_events.py did not stop within 30 s of its Ctrl-C:\n{err}")
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    # libvirt's lifecycle events with their details: DEFINED_ADDED, STARTED_BOOTED,
    # SUSPENDED_PAUSED, RESUMED_UNPAUSED, STOPPED_DESTROYED, UNDEFINED_REMOVED
    assert seen == [f"{name}: defined (detail 0)", f"{name}: started (detail 0)",
                    f"{name}: suspended (detail 0)", f"{name}: resumed (detail 0)",
                    f"{name}: stopped (detail 1)", f"{name}: undefined (detail 0)"]
    assert watcher.returncode == 0 and "Traceback" not in err, err


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_rest_client_example_against_aiovirt_serve(held, tmp_path):
    uri, conn = held
    if shutil.which("curl") is None or shutil.which("jq") is None:
        pytest.fail("examples/rest_client.sh needs curl and jq: scripts/setup installs them")
    token = "example-token-0123456789abcdef"
    port = free_port()
    env = {**os.environ, "AIOVIRT_TOKEN": token}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "aiovirt"), "serve", "--uri", uri, "--port", str(port),
         "--profiles-dir", str(tmp_path / "profiles"), "--no-system-profiles",
         "--log-level", "warning"], env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            deadline = time.monotonic() + 30
            while True:              # until it answers (its startup takes a moment)
                assert server.poll() is None, server.stderr.read()
                assert time.monotonic() < deadline, "aiovirt serve did not come up in 30 s"
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await anyio.sleep(0.05)
        async with conn.domain_events() as events:
            done = await anyio.to_thread.run_sync(lambda: subprocess.run(
                ["bash", str(EXAMPLES / "rest_client.sh"), base], env=env,
                capture_output=True, text=True, timeout=120))
            assert done.returncode == 0, done.stdout + done.stderr
            # what the daemon saw: each guest started, then undefined by the teardown
            wanted = {f"rest-demo-{n}" for n in range(1, 6)}
            started, undefined = set(), set()
            with anyio.fail_after(10):
                async for event in events:
                    if event.domain.name in wanted:
                        if event.event == aiovirt.DomainEventType.STARTED:
                            started.add(event.domain.name)
                        elif event.event == aiovirt.DomainEventType.UNDEFINED:
                            undefined.add(event.domain.name)
                    if undefined == wanted:
                        break
        assert started == wanted
    finally:
        server.terminate()
        server.wait(30)
        server.stderr.close()
    sections = dict(part.split("\n", 1) for part in done.stdout.split("== ")[1:])
    assert json.loads(sections["the server"])["hosts"] == [uri]
    profiles = sections["profiles (name@version, priority, origin)"].splitlines()
    assert "kvm-base@1.0\t0\tshipped" in profiles and "q35-hotplug@1.0\t10\tshipped" in profiles
    composed = sections["compose a partial domain with kvm-base and guest-agent"]
    explain, xml = composed.split("--- the XML:\n")
    assert "applied kvm-base@1.0 (priority 0, requested) memory=512 vcpus=1" in explain
    domain = etree.fromstring(xml.encode())
    assert domain.findtext("name") == "demo" and domain.findtext("memory") == "512"
    assert domain.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    job = sections["start a job: 5 guests named rest-demo-1..5"].strip()
    assert job.startswith("job ") and len(job.split()) == 2
    polled = sections["poll it until it is no longer running"].splitlines()
    assert json.loads(polled[-1]) == {"state": "done",
                                      "progress": {"started": 5, "total": 5, "done": 5}}
    report = json.loads(sections["its report"])
    assert report["ok"] is True and report["counts"] == {"started": 5}
    assert [(g["name"], g["outcome"], g["host"]) for g in report["guests"]] == [
        (f"rest-demo-{n}", "started", uri) for n in range(1, 6)]
    assert json.loads(sections["tear its guests down"]) == {"ok": True,
                                                            "counts": {"removed": 5}}
    assert not [d for d in await conn.list_domains() if d.name.startswith("rest-demo-")]


async def test_event_agent_survives_a_daemon_restart(tmp_path):
    """The agent on a libvirtd that is stopped and started again: it reports the loss and the
    reconnection, re-lists, and still restarts a labelled guest defined after the restart."""
    from aiovirt.testing.daemon import PrivateDaemon

    own = PrivateDaemon(tmp_path / "d").start()
    agent = subprocess.Popen([sys.executable, str(EXAMPLES / "event_agent.py"), own.uri(),
                              "--restarts", "1"], stdout=subprocess.PIPE, text=True)
    lines = Lines(agent)
    seen: list[str] = []

    async def wait_for(text: str) -> None:
        """Until the agent has said ``text`` (in any order with what else it says)."""
        if any(text in line for line in seen):
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = await lines.next(deadline - time.monotonic())
            if line is None:
                break
            seen.append(line)
            if text in line:
                return
        raise AssertionError(f"the agent never said {text!r}; it said {seen}")

    try:
        await wait_for("watching")
        await anyio.to_thread.run_sync(own.stop)
        await wait_for(": lost")
        await anyio.to_thread.run_sync(own.start)
        await wait_for(": reconnected")
        await wait_for("back, re-listing")
        name = f"agent-{uuid.uuid4().hex[:6]}"
        async with aiovirt.connect(own.uri()) as conn:   # holds the test host's state
            report = await provision(own.uri(), GuestSpec(
                f"<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
                "<os><type>hvm</type></os></domain>", labels={"restart": "always"}))
            assert report.ok
            dom = await conn.lookup_domain(name=name)
            await dom.destroy()
            await wait_for(f"{name} stopped: restarted it")
            out, _ = await anyio.to_thread.run_sync(lambda: agent.communicate(timeout=30))
            assert agent.returncode == 0
            assert (await dom.state())[0] == aiovirt.DomainState.RUNNING
    finally:
        if agent.poll() is None:
            agent.kill()
        own.stop()
