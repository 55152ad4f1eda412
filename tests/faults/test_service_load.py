"""The service under load and against slow or greedy clients: composes do not stall other
requests, idle and trickling clients are closed within the client timeout, event streams
share one daemon connection per host and are capped, a stalled stream cannot hold up the
others, and running jobs are capped.  Real uvicorn, real sockets, the suite's libvirtd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from aiovirt.service import create_app
from aiovirt.service.events import EventHub
from tests.test_service import (TEST_GUEST, TINY_GUEST, holder, profiles_dir,  # noqa: F401
                                read_events, serving, test_uri, wait_for_job)

DOMAIN = ("<domain type='kvm'><name>load-{n}</name><devices>"
          "<disk type='file' device='disk'><source file='/var/lib/x-{n}.qcow2'/>"
          "<target dev='vda' bus='virtio'/></disk>"
          "<interface type='network'><source network='default'/></interface>"
          "</devices></domain>")
PROFILES = ["kvm-base", "virtio-linux", "guest-agent", "q35-hotplug"]


def port_of(client: httpx.AsyncClient) -> int:
    return client.base_url.port   # type: ignore[return-value]


async def raw_compose(port: int, n: int) -> tuple[int, dict]:
    """One POST /compose on its own connection, spoken raw (cheap for the test process)."""
    body = json.dumps({"domain": DOMAIN.format(n=n), "profiles": PROFILES,
                       "address": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /compose HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        reply = await reader.read()   # until the server closes
    finally:
        writer.close()
    head, _, payload = reply.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    return status, {"body": json.loads(payload), "headers": headers}


# -- composition off the event loop -------------------------------------------------------------

async def test_health_stays_fast_while_200_composes_are_in_flight(profiles_dir):
    app = create_app(profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        port = port_of(client)
        latencies: list[float] = []
        done = anyio.Event()

        async def probe() -> None:
            while not done.is_set():
                start = time.perf_counter()
                reply = await client.get("/health")
                latencies.append(time.perf_counter() - start)
                assert reply.status_code == 200

        async def load() -> list[tuple[int, dict]]:
            try:
                return await asyncio.gather(*(raw_compose(port, n) for n in range(200)))
            finally:
                done.set()

        with anyio.fail_after(60):
            probing = asyncio.ensure_future(probe())
            results = await load()
            await probing
    # every compose answered, each with its own domain: the threads did not mix them up
    assert [status for status, _ in results] == [200] * 200
    for n, (_, reply) in enumerate(results):
        assert f"<name>load-{n}</name>" in reply["body"]["xml"]
        assert {a["profile"] for a in reply["body"]["applied"]} >= \
            {"kvm-base@1.0", "virtio-linux@1.0", "guest-agent@1.0", "q35-hotplug@1.0"}
    assert len(latencies) >= 5
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)))]
    # generous (the machine is shared); on the event loop the composes held /health for
    # ~0.6 s at a time (benchmarks/service_load.py measures the real figure)
    assert p99 < 0.5, (p99, statistics.median(latencies))


async def test_a_full_work_queue_answers_503_with_retry_after(profiles_dir):
    app = create_app(profiles_dir=profiles_dir, system_profiles=False, workers=1,
                     work_queue=2)
    pool = app.service.pool
    release = threading.Event()
    async with serving(app) as client:
        port = port_of(client)
        # the one worker busy and two calls waiting: the queue is full
        held = [asyncio.ensure_future(pool.run(release.wait, 30)) for _ in range(3)]
        with anyio.fail_after(10):
            while (pool.running, pool.waiting) != (1, 2):
                await asyncio.sleep(0.01)
        status, reply = await raw_compose(port, 1)
        assert status == 503
        assert reply["headers"][b"retry-after"] == b"1"
        assert reply["body"] == {"error": "the server is busy: 2 requests wait for its 1 "
                                          "workers (aiovirt serve --work-queue); retry shortly"}
        address = await client.post("/address", json={"devices": []})
        assert address.status_code == 503
        assert (await client.get("/health")).json()["work"] == \
            {"workers": 1, "running": 1, "waiting": 2, "queue": 2}
        release.set()
        with anyio.fail_after(30):
            assert await asyncio.gather(*held) == [True] * 3
        status, reply = await raw_compose(port, 2)   # drained: composing again
        assert status == 200 and "<name>load-2</name>" in reply["body"]["xml"]


# -- slow and idle clients ----------------------------------------------------------------------

async def closed_after(port: int, chunks: list[bytes], every: float, limit: float
                       ) -> tuple[float, bytes]:
    """Connect, send ``chunks`` ``every`` seconds apart (then nothing), and read until the
    server closes: (seconds until it did, what it sent).  Fails after ``limit`` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    received = b""

    async def trickle() -> None:
        for chunk in chunks:
            try:
                writer.write(chunk)
                await writer.drain()
            except OSError:
                return
            await asyncio.sleep(every)   # pacing the trickle, not synchronisation

    sending = asyncio.ensure_future(trickle())
    try:
        with anyio.fail_after(limit):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    finally:
        sending.cancel()
        writer.close()
    return time.monotonic() - start, received


async def test_idle_and_trickling_clients_are_closed_within_the_timeout(profiles_dir):
    timeout = 1.0
    app = create_app(profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app, client_timeout=timeout) as client:
        port = port_of(client)
        head = [b"GET /health HTTP/1.1\r\n"] + [b"x-pad: %d\r\n" % i for i in range(100)]
        body_head = (b"POST /compose HTTP/1.1\r\nhost: t\r\ncontent-type: application/json"
                     b"\r\ncontent-length: 1000\r\n\r\n")
        complete = b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n"
        limit = timeout + 4
        silent, headers, body, idle = await asyncio.gather(
            closed_after(port, [], 0, limit),                          # sends nothing
            closed_after(port, head, 0.1, limit),                      # trickles its head
            closed_after(port, [body_head] + [b" " * 10] * 100, 0.1, limit),   # ... its body
            closed_after(port, [complete], 0, limit))                  # one request, then idle
        for seconds, _ in (silent, headers, body, idle):
            assert timeout * 0.9 <= seconds <= timeout + 2, seconds
        # those still in the head are told why (the body's request has started: just closed)
        for _, sent in (silent, headers):
            assert sent.startswith(b"HTTP/1.1 408 ")
            assert json.loads(sent.partition(b"\r\n\r\n")[2]) == \
                {"error": "the request did not arrive in time"}
        assert body[1] == b""
        assert idle[1].startswith(b"HTTP/1.1 200 ")   # answered, then closed when idle
        assert (await client.get("/health")).status_code == 200   # the rest is served


def statuses(sent: bytes) -> list[int]:
    """The statuses of the responses in what a connection received."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", sent)]


async def test_a_request_answered_before_its_body_gets_one_answer(profiles_dir):
    """A body over --max-body (by Content-Length, or found while reading chunks) is refused
    at once; the rest of it is read and dropped, and the connection then idles for the
    keep-alive timeout and closes silently.  The request's deadline, running since its first
    byte, outlived the answer: it sent an unrequested 408 on the idle connection, or cut a
    request pipelined after the body short of its own deadline."""
    timeout = 1.0
    app = create_app(profiles_dir=profiles_dir, system_profiles=False, max_body=1024)
    async with serving(app, client_timeout=timeout) as client:
        port = port_of(client)
        post = b"POST /compose HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        declared = post + b"content-length: 2000\r\n\r\n" + b" " * 500
        chunked = post + b"transfer-encoding: chunked\r\n\r\n7d0\r\n" + b" " * 2000 + b"\r\n"
        health = b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n"
        limit = 3 * timeout + 4
        cases = {   # what is sent, the pause between sends, the statuses received
            "drained": ([declared, b" " * 1500], 0.3, [413]),
            "chunked": ([chunked, b"0\r\n\r\n"], 0.3, [413]),
            "unsent": ([declared], 0.3, [413]),     # the rest of the body never comes
            "pipelined": ([declared, b" " * 1500 + health[:20], health[20:]], 0.6, [413, 200]),
            "answered": ([health], 0.3, [200]),      # a whole request, then idle
        }
        results = await asyncio.gather(*(closed_after(port, chunks, every, limit)
                                         for chunks, every, _ in cases.values()))
        for (name, (chunks, every, expected)), (seconds, sent) in zip(cases.items(),
                                                                      results):
            assert statuses(sent) == expected, (name, sent)
            assert sent.rstrip().endswith(b"}"), (name, sent)   # nothing after the last
            idle_from = every * (len(chunks) - 1)   # the last send
            assert idle_from + timeout * 0.9 <= seconds <= idle_from + timeout + 2, \
                (name, seconds)
        assert b"over this server's limit of 1024 bytes" in results[0][1]
        assert (await client.get("/health")).status_code == 200


async def upload_then_read(port: int, chunks: list[bytes], every: float) -> bytes:
    """Send ``chunks`` ``every`` seconds apart and only then read until the server closes,
    as a client that uploads a whole body before it reads; a reset fails the test."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(every)   # pacing the upload, not synchronisation
        with anyio.fail_after(10):
            return await reader.read()
    finally:
        writer.close()


async def read_while_sending(port: int, head: bytes, chunk: bytes, every: float,
                             limit: float) -> tuple[bytes, float]:
    """Send ``head``, then ``chunk`` every ``every`` seconds until a send fails, reading all
    the while: (what the server sent, seconds until a send failed: it had closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(head)
    reading = asyncio.ensure_future(reader.read())
    try:
        with anyio.fail_after(limit):
            with contextlib.suppress(ConnectionError):
                while True:
                    await asyncio.sleep(every)   # pacing the upload, not synchronisation
                    writer.write(chunk)
                    await writer.drain()
        closed = time.monotonic() - start
        return await reading, closed
    finally:
        reading.cancel()
        writer.close()


async def test_an_early_answer_to_a_closing_request_outlives_its_body(profiles_dir):
    """A request saying ``Connection: close`` answered 413 while its body still comes: the
    server closes by lingering, reading and dropping the rest until the client stops or the
    timeout ends; uvicorn closed at once, and the kernel's reset for the unread body
    destroyed the 413 before the client read it."""
    timeout = 2.0
    app = create_app(profiles_dir=profiles_dir, system_profiles=False, max_body=1024)
    async with serving(app, client_timeout=timeout) as client:
        port = port_of(client)
        head = (b"POST /compose HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: 1000000\r\n\r\n")
        chunk = b" " * 1000
        (uploaded, (answered, closed)) = await asyncio.gather(
            upload_then_read(port, [head] + [chunk] * 6, 0.1),    # all sent, then read
            read_while_sending(port, head, chunk, 0.1, timeout + 4))  # never stops sending
        for sent in (uploaded, answered):   # the whole 413, and nothing else
            head, _, body = sent.partition(b"\r\n\r\n")
            assert statuses(sent) == [413], sent
            assert int(re.search(rb"content-length: (\d+)", head)[1]) == len(body)
            assert "limit of 1024 bytes" in json.loads(body)["error"]
        assert timeout * 0.9 <= closed <= timeout + 2, closed   # the linger's deadline
        assert (await client.get("/health")).status_code == 200


async def test_a_client_that_stops_reading_is_dropped(profiles_dir):
    """A response far larger than the socket buffers, to a client that reads none of it:
    after the timeout the server drops the connection and what was left unsent."""
    timeout = 1.0
    app = create_app(profiles_dir=profiles_dir, system_profiles=False, max_body=16 << 20)
    big = "x" * (6 << 20)
    body = json.dumps({"domain": f"<domain><name>big</name><description>{big}"
                                 "</description></domain>", "validate": False}).encode()
    async with serving(app, client_timeout=timeout) as client:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port_of(client)))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"POST /compose HTTP/1.1\r\nhost: t\r\ncontent-type: application/json"
                     b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await asyncio.sleep(timeout + 2)   # the client stalls: reads nothing for a while
        received = 0
        with anyio.fail_after(20):
            try:
                while chunk := await reader.read(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
        writer.close()
        assert 0 < received < len(big)   # cut off: the rest was dropped, not kept for it
        assert (await client.get("/health")).status_code == 200


async def answer_to(port: int, data: bytes) -> tuple[float, bytes]:
    """Send ``data`` whole on a new connection, then read until the server closes: (seconds
    that took, what it sent).  A reset (the answer lost) fails the test."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    try:
        writer.write(data)
        await writer.drain()
        with anyio.fail_after(10):
            received = await reader.read()
    finally:
        writer.close()
    return time.monotonic() - start, received


async def test_oversized_request_heads_are_answered_then_closed(profiles_dir):
    """A head over the limit (64 KiB), whether a huge header, a huge request target or many
    headers, and whether or not it came in one read, gets 431 or 414 naming the limit, and
    the connection closes without a reset: what the client was still sending is drained."""
    app = create_app(profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        port = port_of(client)
        mb = 1 << 20
        heads = {
            "header": (431, b"GET /health HTTP/1.1\r\nhost: t\r\nx-big: %s\r\n\r\n" % (b"a" * mb)),
            "target": (414, b"GET /health?%s HTTP/1.1\r\nhost: t\r\n\r\n" % (b"a" * mb)),
            "many": (431, b"GET /health HTTP/1.1\r\nhost: t\r\n%s\r\n"
                     % b"".join(b"x-h%d: y\r\n" % i for i in range(mb // 12))),
            "one read": (431, b"GET /health HTTP/1.1\r\nhost: t\r\nx-big: %s\r\n\r\n"
                         % (b"a" * 100_000)),   # h11 alone takes a whole head of any size
        }
        answers = await asyncio.gather(*(answer_to(port, data) for _, data in heads.values()))
        for (status, _), (seconds, sent) in zip(heads.values(), answers):
            head, _, body = sent.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d " % status), sent[:200]
            assert b"connection: close" in head.lower()
            assert "limit of 65536 bytes" in json.loads(body)["error"]
            assert seconds < 5   # closed once the client stopped sending, not at a timeout
        fine = await client.get("/health", headers={"x-pad": "a" * 60_000})
        assert fine.status_code == 200   # under the limit: served, and the server unharmed


async def test_a_small_head_limit_is_kept_and_bad_requests_get_json(profiles_dir):
    app = create_app(profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app, max_head=4096) as client:
        refused = await client.get("/health", headers={"x-pad": "a" * 5000})
        assert refused.status_code == 431
        assert "limit of 4096 bytes" in refused.json()["error"]
        _, sent = await answer_to(port_of(client), b"GARBAGE\r\n\r\n")   # not HTTP at all
        head, _, body = sent.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"application/json" in head
        assert json.loads(body)["error"].startswith("invalid HTTP request: ")
        # a body that breaks HTTP's framing while the app waits for it: one answer, ours
        _, sent = await answer_to(port_of(client), (
            b"POST /compose HTTP/1.1\r\nhost: t\r\ncontent-type: application/xml\r\n"
            b"transfer-encoding: chunked\r\n\r\n5\r\n<doma\r\nZZZ\r\n"))
        head, _, body = sent.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and sent.count(b"HTTP/1.1") == 1
        assert "illegal chunk header" in json.loads(body)["error"]
        assert (await client.get("/health")).status_code == 200


async def test_an_event_stream_is_not_cut_by_the_client_timeout(profiles_dir, test_uri):
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False,
                     keepalive=1.5)
    async with serving(app, client_timeout=0.5) as client:
        async with client.stream("GET", "/events") as stream:
            lines = stream.aiter_lines()
            with anyio.fail_after(10):
                assert await anext(lines) == "event: ready"
                while await anext(lines) != ": keepalive":   # 1.5 s: past the timeout
                    pass


# -- event streams ------------------------------------------------------------------------------

def daemon_clients(daemon) -> set[str]:
    """The ids of the clients connected to the daemon's main server (virt-admin)."""
    admin = f"libvirtd:///system?socket={daemon.workdir}/libvirt-admin-sock"
    out = subprocess.run(["virt-admin", "-c", admin, "client-list", "libvirtd"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return {line.split()[0] for line in out.splitlines()[2:] if line.strip()}


@contextlib.asynccontextmanager
async def ready_stream(client: httpx.AsyncClient) -> AsyncIterator[AsyncIterator]:
    """An open event stream, past its ``ready`` event."""
    async with client.stream("GET", "/events") as stream:
        assert stream.status_code == 200, await stream.aread()
        events = read_events(stream.aiter_lines())
        with anyio.fail_after(20):
            assert (await anext(events))[0] == "ready"
        yield events


async def test_event_streams_share_one_daemon_connection(daemon, profiles_dir, test_uri,
                                                         holder):
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False)
    name = f"shared-{uuid.uuid4().hex[:6]}"
    async with serving(app) as client:
        before = daemon_clients(daemon)
        async with ready_stream(client) as first, ready_stream(client) as second:
            health = (await client.get("/health")).json()
            assert health["event_feeds"] == {test_uri: 2}
            assert health["event_streams"] == 2
            assert len(daemon_clients(daemon) - before) == 1   # one connection, not two
            dom = await holder.define_xml(TEST_GUEST.format(name=name))
            with anyio.fail_after(20):
                for events in (first, second):   # both see the event
                    async for kind, data in events:
                        if kind == "lifecycle" and data["name"] == name:
                            assert data["event"] == "defined"
                            break
            await dom.undefine()
        # both left: the feed and its connection go
        with anyio.fail_after(10):
            while (await client.get("/health")).json()["event_feeds"] or \
                    daemon_clients(daemon) - before:
                await asyncio.sleep(0.05)
        assert (await client.get("/health")).json()["event_streams"] == 0


async def test_event_streams_are_capped(profiles_dir, test_uri):
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False,
                     max_streams=2)
    async with serving(app) as client:
        async with ready_stream(client), ready_stream(client):
            refused = await client.get("/events")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "5"
            assert refused.json() == {"error": "the server is at its limit of 2 event streams "
                                               "(aiovirt serve --max-streams); retry later"}
        with anyio.fail_after(10):   # the places come back once the clients have left
            while (await client.get("/health")).json()["event_streams"]:
                await asyncio.sleep(0.02)
        async with ready_stream(client):
            pass


async def test_a_stalled_listener_does_not_hold_up_the_others(test_uri, holder):
    # a queue of 32: the socket is read in batches (event_batch_window), so the live reader
    # may be handed a burst of events in one go; 32 is well above one 5 ms batch here
    hub = EventHub(queue=32)
    names = [f"stall-{uuid.uuid4().hex[:6]}-{i}" for i in range(48)]
    seen: list[tuple[str, str]] = []
    async with hub.open():
        async with hub.listen([test_uri]) as (stalled, failed), \
                hub.listen([test_uri]) as (reader, _):
            assert failed == {}
            assert hub.listening() == {test_uri: 2}
            async def read() -> None:
                while len(seen) < 2 * len(names):
                    _, item = await reader.receive.receive()
                    data = json.loads(item.decode().split("data: ", 1)[1])
                    if data["name"] in names:
                        seen.append((data["name"], data["event"]))

            with anyio.fail_after(20):
                async with anyio.create_task_group() as group:
                    group.start_soon(read)
                    for name in names:   # 96 events: three times what the stalled one holds
                        dom = await holder.define_xml(TEST_GUEST.format(name=name))
                        await dom.undefine()
            assert seen == [(n, e) for n in names for e in ("defined", "undefined")]
            # the stalled one was cut after 32 waiting events; it holds no more than those
            assert stalled.fell_behind
            assert hub.listening() == {test_uri: 1}
            held = []
            while True:
                try:
                    held.append(stalled.receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            assert len(held) == 32


# -- jobs ---------------------------------------------------------------------------------------

async def test_running_jobs_are_capped(profiles_dir, test_uri, holder):
    prefix = f"cap-{uuid.uuid4().hex[:6]}"
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False,
                     max_jobs=1)
    spec = {"template": TINY_GUEST.format(name=prefix), "count": 1000, "address": False}
    async with serving(app) as client:
        first = await client.post("/jobs", json={"specs": [spec], "concurrency": 1})
        assert first.status_code == 202, first.text
        job_id = first.json()["id"]
        second = await client.post("/jobs", json={"specs": [dict(spec, name=prefix + "b{n}")]})
        assert second.status_code == 503
        assert second.headers["retry-after"] == "5"
        assert second.json() == {"error": "the server is at its limit of 1 running jobs "
                                          "(aiovirt serve --max-jobs); retry when one has "
                                          "finished"}
        assert [j["id"] for j in (await client.get("/jobs")).json()["jobs"]] == [job_id]
        assert (await client.post(f"/jobs/{job_id}/cancel")).status_code == 202
        assert (await wait_for_job(client, job_id))["state"] == "cancelled"
        third = await client.post("/jobs", json={"specs": [dict(spec, count=1)]})
        assert third.status_code == 202, third.text
        await wait_for_job(client, third.json()["id"])
        for done in (job_id, third.json()["id"]):
            assert (await client.delete(f"/jobs/{done}/guests")).status_code == 200
    assert not any(n.startswith(prefix) for n in {d.name for d in await holder.list_domains()})


async def health_during(client: httpx.AsyncClient, load: Any) -> tuple[Any, list[float]]:
    """``load``'s result, and the latencies of the GET /health probes made while it ran."""
    latencies: list[float] = []
    done = anyio.Event()

    async def probe() -> None:
        while not done.is_set():
            start = time.perf_counter()
            assert (await client.get("/health")).status_code == 200
            latencies.append(time.perf_counter() - start)

    probing = asyncio.ensure_future(probe())
    try:
        result = await load
    finally:
        done.set()
    await probing
    return result, latencies


async def test_health_stays_fast_while_large_job_reports_are_read(profiles_dir, test_uri,
                                                                   holder):
    # each GET /jobs/ID encoded the whole report, indented, on the event loop
    prefix = f"big-{uuid.uuid4().hex[:6]}"
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False)
    async with serving(app) as client:
        reply = await client.post("/jobs", json={"specs": [{
            "template": TINY_GUEST.format(name=prefix), "count": 3000, "address": False,
            "start": False}], "concurrency": 64})
        job_id = reply.json()["id"]
        assert (await wait_for_job(client, job_id))["report"]["counts"] == {"defined": 3000}
        with anyio.fail_after(120):
            replies, latencies = await health_during(client, asyncio.gather(
                *(client.get(f"/jobs/{job_id}") for _ in range(50))))
        assert {r.status_code for r in replies} == {200}
        assert max(latencies) < 0.5, (max(latencies), statistics.median(latencies))
        assert len({r.content for r in replies}) == 1 and b'\n  "' not in replies[0].content
        removed = await client.delete(f"/jobs/{job_id}/guests")
        assert removed.json()["counts"] == {"removed": 3000}
        # what a teardown adds shows: the kept body is not served stale
        assert (await client.get(f"/jobs/{job_id}")).json()["teardown"]["counts"] == \
            {"removed": 3000}


async def test_an_event_stream_read_at_full_speed_keeps_up_with_a_burst(profiles_dir,
                                                                        test_uri, holder):
    """A client reading as fast as it could was cut as "fell behind" in a burst (1378 of
    2000 events): the stream wrote one event per pass of the loop.  Now what is queued
    leaves in one write."""
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False,
                     stream_queue=128)
    prefix = f"burst-{uuid.uuid4().hex[:6]}"
    count = 800
    async with serving(app) as client, ready_stream(client) as events:
        async def burst() -> None:
            doms = await asyncio.gather(*(holder.define_xml(TEST_GUEST.format(
                name=f"{prefix}-{n}")) for n in range(count)))
            await asyncio.gather(*(dom.undefine() for dom in doms))

        seen = 0
        async with anyio.create_task_group() as group:
            group.start_soon(burst)
            with anyio.fail_after(60):
                async for kind, data in events:
                    assert kind == "lifecycle", data
                    seen += data["name"].startswith(prefix)
                    if seen == 2 * count:
                        break


async def test_health_stays_fast_while_job_specs_are_checked(profiles_dir, test_uri):
    """POST /jobs composed every spec on the event loop (16 large specs at once held /health
    for seconds); it now does so in the worker threads, as /compose does."""
    app = create_app(hosts=[test_uri], profiles_dir=profiles_dir, system_profiles=False,
                     max_body=2 << 20)
    nics = "".join(f"<interface type='network'><source network='n{i}'/></interface>"
                   for i in range(6000))
    body = {"specs": [{"template": f"<domain><devices>{nics}</devices></domain>",
                       "name": "big", "profiles": ["kvm-base", "virtio-linux"]},
                      {"template": "<domain/>", "name": "zz", "profiles": ["no-such"]}]}
    async with serving(app) as client:
        async def post() -> int:
            return (await client.post("/jobs", json=body, timeout=120)).status_code

        with anyio.fail_after(120):
            statuses, latencies = await health_during(
                client, asyncio.gather(*(post() for _ in range(16))))
    assert statuses == [422] * 16   # (the second spec names no profile: refused, after all)
    assert len(latencies) >= 5
    # (on the loop it held /health for seconds; 0.54 s was seen once on a loaded machine)
    assert max(latencies) < 1.0, (max(latencies), statistics.median(latencies))
