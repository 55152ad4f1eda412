"""``aiovirt provision``, ``teardown``, ``events`` and ``demo`` as real processes against the
suite's libvirtd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import anyio
import pytest

import aiovirt
from tests.test_cli import AIOVIRT, run

TEMPLATE = ("<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
            "<os><type>hvm</type></os></domain>")


@pytest.fixture
async def test_host(daemon):
    """The shared test host, held open so that its state outlives each command."""
    uri = daemon.uri("test", "/default")
    conn = await aiovirt.connect(uri)    # detached: fixtures set up and tear down in two tasks
    try:
        yield uri, conn
    finally:
        await conn.close()


async def names(conn: aiovirt.Connection, prefix: str) -> set[str]:
    return {d.name for d in await conn.list_domains() if d.name.startswith(prefix)}


async def test_provision_then_teardown_by_report_label_and_name(test_host, tmp_path):
    uri, conn = test_host
    p = f"c{uuid.uuid4().hex[:6]}"
    template = tmp_path / "t.xml"
    template.write_text(TEMPLATE.format(name=p))
    report_file = tmp_path / "report.json"
    done = await anyio.to_thread.run_sync(lambda: run(
        "provision", "--uri", uri, "-n", "12", "-p", "kvm-base", "-p", "virtio-linux",
        "--label", "team=red", "--report", str(report_file), str(template)))
    assert done.returncode == 0, done.stderr
    assert "all" in done.stdout and " 12" in done.stdout and "started" in done.stdout
    report = json.loads(report_file.read_text())
    assert report["counts"] == {"started": 12} and report["ok"]
    assert await names(conn, p) == {f"{p}-{n}" for n in range(1, 13)}

    again = await anyio.to_thread.run_sync(lambda: run(
        "provision", "--uri", uri, "-n", "13", "--json", "--on-existing", "fail",
        str(template)))
    assert again.returncode == 1                     # 12 of them exist: those fail
    counts = json.loads(again.stdout)["counts"]
    assert counts == {"failed": 12, "started": 1}

    by_label = await anyio.to_thread.run_sync(lambda: run(
        "teardown", "--uri", uri, "--label", "team=red", "--name", f"{p}-1?", "--json"))
    assert by_label.returncode == 0, by_label.stderr
    assert json.loads(by_label.stdout)["counts"] == {"removed": 3}    # -10, -11, -12
    by_report = await anyio.to_thread.run_sync(lambda: run(
        "teardown", "--report", str(report_file)))
    assert by_report.returncode == 0 and "9 removed" in by_report.stdout
    assert "3 not found" in by_report.stdout
    assert await names(conn, p) == {f"{p}-13"}
    rest = await anyio.to_thread.run_sync(lambda: run("teardown", "--uri", uri, "--name",
                                                      f"{p}-*"))
    assert "1 removed" in rest.stdout and await names(conn, p) == set()


def test_provision_errors_are_one_clear_line(daemon, tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<domain><name>x</name>")
    done = run("provision", "--uri", daemon.uri(), "-n", "2", str(bad))
    assert done.returncode == 1
    assert done.stderr.startswith("aiovirt: error: ") and "bad.xml" not in done.stdout
    assert "line 1" in done.stderr
    good = tmp_path / "good.xml"
    good.write_text(TEMPLATE.format(name="x"))
    unknown = run("provision", "--uri", "test+unix:///default?socket=/nonexistent", "-p",
                  "no-such-profile", str(good))     # refused before any host is tried
    assert unknown.returncode == 1
    assert "spec 0: " in unknown.stderr and "no-such-profile" in unknown.stderr
    nothing = run("teardown", "--uri", daemon.uri())
    assert nothing.returncode == 1 and "needs names, run, labels or a report" in nothing.stderr


async def test_ctrl_c_cancels_and_reports_what_exists(test_host, tmp_path):
    uri, conn = test_host
    p = f"c{uuid.uuid4().hex[:6]}"
    template = tmp_path / "t.xml"
    template.write_text(TEMPLATE.format(name=p))
    report_file = tmp_path / "report.json"
    process = subprocess.Popen(
        [AIOVIRT, "provision", "--uri", uri, "-n", "3000", "--concurrency", "2",
         "--progress", "--report", str(report_file), str(template)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    try:
        # the progress line shows guests coming up: then interrupt, as a user would
        assert process.stderr is not None
        buffer = ""
        with anyio.fail_after(60):
            while " started" not in buffer:
                chunk = await anyio.to_thread.run_sync(process.stderr.read, 64)
                assert chunk, "the command ended before starting any guest"
                buffer += chunk
        process.send_signal(signal.SIGINT)
        out, err = await anyio.to_thread.run_sync(lambda: process.communicate(timeout=60))
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "cancelling: no new guests" in err and "(cancelled)" in out
    report = json.loads(report_file.read_text())
    assert report["cancelled"] and report["counts"]["cancelled"] > 0
    said = {g["name"] for g in report["guests"] if g["exists"]}
    assert said and await names(conn, p) == said     # the report is exact
    removed = await anyio.to_thread.run_sync(lambda: run("teardown", "--report",
                                                         str(report_file)))
    assert removed.returncode == 0 and await names(conn, p) == set()


async def test_events_streams_lifecycle_events(test_host):
    uri, conn = test_host
    name = f"c{uuid.uuid4().hex[:6]}"
    process = subprocess.Popen([AIOVIRT, "events", "--uri", uri, "--json", "--count", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    try:
        assert process.stderr is not None
        with anyio.fail_after(30):    # it says when it watches: then make events
            line = await anyio.to_thread.run_sync(process.stderr.readline)
        assert line.startswith("watching ")
        dom = await conn.define_xml(TEMPLATE.format(name=name))
        await dom.start()
        out, _ = await anyio.to_thread.run_sync(lambda: process.communicate(timeout=30))
    finally:
        if process.poll() is None:
            process.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["name"], e["event"]) for e in events] == [(name, "defined"), (name, "started")]
    assert events[0]["host"] == uri and events[0]["uuid"] == dom.uuid
    await dom.destroy()
    await dom.undefine()


@pytest.mark.parametrize("driver", ["test", "kvm"])
def test_demo_runs_to_completion(driver):
    if driver == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no /dev/kvm on this machine: the demo's KVM guests cannot start")
    args = ["demo", "-n", "3"] + (["--test-driver"] if driver == "test" else [])
    done = subprocess.run([AIOVIRT, *args], capture_output=True, text=True, timeout=240,
                          env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("KVM guests" in done.stdout) is (driver == "kvm")
    assert done.stdout.count(" started\n") >= 3 and "3 removed" in done.stdout
    assert "left behind: nothing" in done.stdout


def test_every_command_has_useful_help():
    for command in ("provision", "teardown", "events", "demo"):
        done = run(command, "--help")
        assert done.returncode == 0 and len(done.stdout) > 400, command
        assert "--uri" in done.stdout


def test_events_says_when_a_host_is_lost_or_unreachable(tmp_path):
    """``aiovirt events`` waited for ever, silently, once its daemon died; an unreachable
    host printed an ExceptionGroup traceback.  Each is now one error line and exit 1."""
    from aiovirt.testing.daemon import PrivateDaemon

    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    with PrivateDaemon(tmp_path / "d") as own:
        uri = own.uri("test")
        process = subprocess.Popen([AIOVIRT, "events", "--uri", uri], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert process.stderr is not None
            assert process.stderr.readline().startswith("watching ")
            own.kill()
            _, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 1
    assert err.startswith(f"aiovirt: error: {uri}: the connection was lost"), err
    assert "Traceback" not in err
    refused = subprocess.run([AIOVIRT, "events", "--uri", "qemu+tcp://127.0.0.1:1/system"],
                             capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 1 and refused.stderr.startswith("aiovirt: error: ")
    assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["compose", "address"])
def test_ctrl_c_while_reading_stdin_is_no_traceback(command):
    if os.uname().machine != "x86_64":
        pytest.skip("reads /proc/PID/syscall with x86-64's syscall numbers")
    with subprocess.Popen([AIOVIRT, command, "-"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}) as process:
        try:
            syscall = Path(f"/proc/{process.pid}/syscall")
            deadline = time.monotonic() + 30
            # wait until it blocks in read(0, ...) (x86-64: syscall 0, first argument 0)
            while syscall.read_text().split()[:2] != ["0", "0x0"]:
                assert time.monotonic() < deadline, "it never read its stdin"
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130 and "Traceback" not in err, err
