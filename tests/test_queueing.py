"""Queueing on a connection, against the suite's real libvirtd: calls that wait for a slot go
out in the order they were made, and quick calls spill onto a lane while the main socket is
full.

To hold a socket's slots for as long as a test needs, a call must stay in progress on the
daemon.  The test driver's ``domain_save`` writes the saved image with a plain ``open`` of the
target path: when that path is a FIFO nobody reads, the daemon's worker waits in ``open``
until the test opens the FIFO too.  That keeps a real call on the wire, on a real daemon, for
exactly as long as the test wants, with no sleeps.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

import aiovirt
from aiovirt.protocol import remote

SAVE = remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_SAVE]


def domain_xml(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
            "<os><type>hvm</type></os></domain>")


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll ``predicate`` at every loop pass until it holds; fail saying ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        await anyio.sleep(0.001)


@contextlib.contextmanager
def fifos(directory: Path, count: int) -> Iterator[tuple[list[str], Callable[[], None]]]:
    """``count`` FIFOs and a function that lets every save blocked on them go on.  Leaving
    the block lets them go too (a failing test must not leave daemon workers stuck)."""
    paths = []
    for n in range(count):
        path = directory / f"save-{n}.fifo"
        os.mkfifo(path)
        paths.append(str(path))
    readers: list[int] = []

    def release() -> None:
        # O_RDWR never blocks on a FIFO, and gives the daemon's open(O_WRONLY) its reader;
        # the saved image (a few hundred bytes) fits in the pipe's buffer
        while len(readers) < len(paths):
            readers.append(os.open(paths[len(readers)], os.O_RDWR | os.O_NONBLOCK))

    try:
        yield paths, release
    finally:
        release()
        # the daemon has written and closed by the time its save returned; the test waits for
        # that before leaving, but a failure may not have: keep the readers until then
        for fd in readers:
            os.close(fd)


async def test_queued_calls_go_out_and_complete_in_fifo_order(daemon, node_xml, tmp_path):
    """With one slot, held by a save, twelve calls queue behind it; once it returns they reach
    the daemon in the order they were made (the test driver numbers domains as it creates
    them) and their callers wake in that order."""
    uri = daemon.uri("test", node_xml)          # private state: these names are ours alone
    count = 12
    names = [f"fifo-{n:02d}-{uuid.uuid4().hex[:6]}" for n in range(count)]
    async with aiovirt.connect(uri, max_in_flight=1) as conn:
        main = conn.channels[0]
        vm1 = await conn.lookup_domain(name="node-vm1")       # running, in node.xml
        created: dict[int, aiovirt.Domain] = {}
        woke: list[int] = []

        async def create(n: int) -> None:
            created[n] = await conn.create_xml(domain_xml(names[n]))
            woke.append(n)

        with fifos(tmp_path, 1) as (paths, release), anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.call, SAVE, remote.DomainSaveArgs(vm1._ref, paths[0]))
                await wait_for(lambda: main.in_flight == 1, "the save is on the wire")
                for n in range(count):     # made in order 0..11, each queued behind the save
                    tg.start_soon(create, n)
                await anyio.wait_all_tasks_blocked()
                # the slot is held: nothing else went out, nothing came back
                assert main.in_flight == 1 and woke == [] and created == {}
                release()
            assert (await vm1.state())[0] == aiovirt.DomainState.SHUTOFF   # it was saved
        assert woke == list(range(count))
        ids = [created[n].id for n in range(count)]
        assert [created[n].name for n in range(count)] == names
        assert ids == sorted(ids) and len(set(ids)) == count, ids   # created in call order
        assert main.in_flight == 0


async def test_quick_calls_overflow_onto_a_lane_while_the_main_socket_is_full(daemon, tmp_path):
    """Five saves fill the main socket (five slots, the daemon's max_client_requests).  The
    first quick call after that waits in main's queue but has a lane opened for what comes
    next; quick calls then run on that lane and return while main is still full."""
    uri = daemon.uri("test", "/default")        # shared state: lanes see the same domains
    names = [f"spill-{n}-{uuid.uuid4().hex[:6]}" for n in range(5)]
    async with aiovirt.connect(uri) as setup:
        doms = [await setup.define_xml(domain_xml(name)) for name in names]
        try:
            for dom in doms:
                await dom.start()
            async with aiovirt.connect(uri) as conn:
                assert len(conn.channels) == 1 and conn.max_in_flight == 5
                main = conn.channels[0]
                results: dict[str, object] = {}

                async def save(n: int, path: str) -> None:
                    await conn.call(SAVE, remote.DomainSaveArgs(doms[n]._ref, path),
                                    lane=False)
                    results[f"save{n}"] = "saved"

                async def first_quick() -> None:
                    results["first"] = await conn.get_lib_version()

                with fifos(tmp_path, 5) as (paths, release), anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        for n, path in enumerate(paths):
                            tg.start_soon(save, n, path)
                        await wait_for(lambda: main.in_flight == 5,
                                       "five saves fill the main socket")
                        # no lane yet: this one queues on main, and a lane opens meanwhile
                        tg.start_soon(first_quick)
                        await wait_for(lambda: len(conn.channels) == 2,
                                       "a lane opened for quick calls")
                        lane = conn.channels[1]
                        assert lane.name != "main" and lane.in_flight == 0
                        # main is full and its daemon side is stuck: these can only come
                        # back through the lane
                        with anyio.fail_after(10):
                            version = await conn.get_lib_version()
                            test = await conn.lookup_domain(name="test")
                            async with anyio.create_task_group() as burst:
                                for _ in range(5):     # the lane's five slots, at once
                                    burst.start_soon(conn.get_lib_version)
                        assert version == 9000000 and test.name == "test"
                        assert main.in_flight == 5, "main must still be full"
                        assert "first" not in results and not any(
                            key.startswith("save") for key in results)
                        assert lane.in_flight == 0 and len(conn.channels) == 2
                        release()
                assert results == {"first": 9000000,
                                   **{f"save{n}": "saved" for n in range(5)}}
                assert main.in_flight == 0
            for dom in doms:   # saved: the test driver stops a guest it saves
                assert (await dom.state())[0] == aiovirt.DomainState.SHUTOFF
        finally:
            for dom in doms:
                if await dom.is_active():
                    await dom.destroy()
                await dom.undefine()
