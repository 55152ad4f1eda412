"""A host that stops answering (SIGSTOP) while a run or a teardown is cancelled, and a CLI
run ended by SIGTERM: every run ends, and its report says what may exist.

Cancelling a run also cancels its connections' keepalive, which would have judged a daemon
that stopped answering; the calls out are shielded (so that the report knows what exists)
and waited for ever.  They now get ``CANCEL_GRACE`` seconds (shortened here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import anyio
import pytest

import aiovirt
import aiovirt.provision.run as run_module
from aiovirt.provision import GuestSpec, Provisioning, Stage, teardown
from aiovirt.testing.daemon import PrivateDaemon
from tests.test_cli import AIOVIRT

TEMPLATE = ("<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
            "<os><type>hvm</type></os></domain>")
GRACE = 2.0


@pytest.fixture
def stoppable(tmp_path_factory):
    """A daemon of the test's own, continued (if stopped) and ended afterwards."""
    running = PrivateDaemon(tmp_path_factory.mktemp("stoppable")).start()
    try:
        yield running
    finally:
        running.stop()   # (continues a stopped daemon first)


@pytest.fixture
def short_grace(monkeypatch):
    monkeypatch.setattr(run_module, "CANCEL_GRACE", GRACE)


@pytest.mark.parametrize("keepalive", [(5.0, 5), None], ids=["keepalive", "no-keepalive"])
async def test_a_cancelled_run_ends_though_its_host_stopped_answering(stoppable, short_grace,
                                                                      keepalive):
    p = f"stop{uuid.uuid4().hex[:6]}"
    stopped: list[int] = []

    def on_change(result) -> None:
        if result.stage is Stage.DEFINING and not stopped:
            os.kill(stoppable.pid, signal.SIGSTOP)   # the define now goes to a hung daemon
            stopped.append(1)

    conn = await aiovirt.connect(stoppable.uri("test"), keepalive=keepalive)
    try:
        job = Provisioning(conn, GuestSpec(TEMPLATE.format(name=p), count=4, name=p + "-{n}"),
                           concurrency=1, on_change=on_change)
        async with anyio.create_task_group() as tg:
            tg.start_soon(job.run)
            with anyio.fail_after(10):
                while not stopped:
                    await anyio.sleep(0.01)
            job.cancel()
            began = time.monotonic()
            with anyio.fail_after(GRACE + 10):   # (it waited for ever)
                while job.report.seconds is None or not job.report.cancelled:
                    await anyio.sleep(0.05)
        assert time.monotonic() - began < GRACE + 10
        [defining] = [r for r in job.report.results if r.stage is Stage.FAILED]
        assert defining.exists is None   # the define may have happened
        assert job.report.counts() == {"failed": 1, "cancelled": 3}
    finally:
        os.kill(stoppable.pid, signal.SIGCONT)
        with anyio.fail_after(30):
            await conn.close()


async def test_a_cancelled_teardown_ends_though_its_host_stopped_answering(stoppable,
                                                                           short_grace):
    uri = stoppable.uri("test")
    p = f"td{uuid.uuid4().hex[:6]}"
    holder = await aiovirt.connect(uri, keepalive=None)   # (test:///default lives while
    for n in range(20):                                   # a connection to it does)
        await holder.define_xml(TEMPLATE.format(name=f"{p}-{n}"))
    removed = []

    def on_change(removal) -> None:
        removed.append(removal)
        if len(removed) == 3:
            os.kill(stoppable.pid, signal.SIGSTOP)

    began = time.monotonic()
    with anyio.move_on_after(3) as scope:   # cancelled while its host is stopped
        await teardown(uri, names=f"{p}-*", include_foreign=True, concurrency=1,
                       on_change=on_change)
    assert scope.cancelled_caught, [r.outcome for r in removed]
    assert time.monotonic() - began < 3 + GRACE + 10, "the teardown outlived its grace"
    os.kill(stoppable.pid, signal.SIGCONT)
    with anyio.fail_after(30):
        await holder.close()


def test_sigterm_to_the_cli_cancels_the_run_and_writes_its_report(stoppable, tmp_path):
    uri = stoppable.uri("test")
    p = f"term{uuid.uuid4().hex[:6]}"
    template, report = tmp_path / "t.xml", tmp_path / "report.json"
    template.write_text(TEMPLATE.format(name=p))
    proc = subprocess.Popen([AIOVIRT, "provision", "--uri", uri, "-n", "3000",
                             "--concurrency", "2", "--progress", "--report", str(report),
                             str(template)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        seen = ""
        deadline = time.monotonic() + 60
        while " started" not in seen and time.monotonic() < deadline:
            seen += proc.stderr.read(64)
        proc.send_signal(signal.SIGTERM)   # it used to end the process: no report
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    data = json.loads(report.read_text())
    assert data["cancelled"] is True
    made = sum(1 for g in data["guests"] if g["exists"] is not False)
    assert made >= 1
    assert "SIGTERM again to stop at once" in err
