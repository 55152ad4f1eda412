"""Faults under the blocking drop-in (``import aiovirt.compat.libvirt as libvirt``) with many
threads on one connection, against a real private libvirtd (test driver): the daemon killed
or stopped in the middle of a storm of calls from 16 threads (quick calls, slow ones that go to
a lane, an event loop thread with a lifecycle callback), and threads opening and closing
connections of their own beside a shared one.  Every wait is bounded."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import aiovirt.compat.libvirt as libvirt
from tests.faults.test_reconnect import domain_xml

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

THREADS = 16
BOUND = 15.0   # seconds any thread may take to end once the daemon is gone
# (code, domain) of calls on a connection whose daemon died, as libvirt reports them
# (aiovirt.compat.errors.error_tuple): a call under way sees the loss itself ("Cannot recv
# data: ...", a system error); a call made on the dead connection, "client socket is closed"
LOSS = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC)
LOST = (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC)


def wait_until(condition: Callable[[], bool], bound: float,
               what: str | Callable[[], str]) -> None:
    """Poll ``condition`` until it holds; fail after ``bound`` seconds, saying ``what``."""
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, \
            f"not within {bound} s: {what() if callable(what) else what}"
        time.sleep(0.01)


@dataclass
class Storm:
    """16 threads calling on one connection until told to stop or a call fails: each records
    how many calls it made and how it ended; one runs ``virEventRunDefaultImpl()`` and keeps
    the lifecycle events of the storm's own domains.  After a failure a calling thread waits
    (30 s at most) for ``resume``, then calls on ``conn`` again (which the test may have
    replaced)."""

    conn: Any
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    stop: threading.Event = field(default_factory=threading.Event)
    resume: threading.Event = field(default_factory=threading.Event)
    counts: Counter[str] = field(default_factory=Counter)
    busy: set[str] = field(default_factory=set)           # threads inside a call now
    ended: dict[str, BaseException | None] = field(default_factory=dict)
    resumed: dict[str, BaseException | None] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    events: list[tuple[str, int]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    cycles: list[str] = field(default_factory=list)        # domains that went full circle

    def start(self) -> None:
        self.version = self.conn.getLibVersion()
        libvirt.virEventRegisterDefaultImpl()
        self.watch(self.conn)
        workers: list[tuple[str, Callable[[], None]]] = []
        for i in range(4):
            workers.append((f"version-{i}", lambda: self._check(
                self.conn.getLibVersion() == self.version, "getLibVersion")))
            workers.append((f"info-{i}", lambda: self._check(
                len(self.conn.lookupByName("test").info()) == 5, "info")))
            workers.append((f"lifecycle-{i}", self._lifecycle_cycle))
        for i in range(3):
            workers.append((f"list-{i}", lambda: self._check(
                "test" in [d.name() for d in self.conn.listAllDomains()], "listAllDomains")))
        self.callers = [name for name, _ in workers]
        self.threads = [threading.Thread(target=self._run_events, name="events", daemon=True)]
        self.threads += [threading.Thread(target=self._loop, args=(name, body), name=name,
                                          daemon=True) for name, body in workers]
        assert len(self.threads) == THREADS
        for thread in self.threads:
            thread.start()

    def watch(self, conn: Any) -> None:
        """Register the lifecycle callback on ``conn``."""
        self.callback_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, self.tag)

    def _check(self, ok: bool, what: str) -> None:
        if not ok:
            self.wrong.append(what)

    def _lifecycle_cycle(self) -> None:
        name = f"dropin-{self.tag}-{uuid.uuid4().hex[:8]}"
        dom = self.conn.defineXML(domain_xml(name))
        self._check(dom.name() == name, "defineXML")
        self._check(dom.create() == 0, "create")           # slow: goes to a lane
        self._check(dom.isActive() == 1, "isActive")
        self._check(dom.destroy() == 0, "destroy")
        self._check(dom.undefine() == 0, "undefine")
        self.cycles.append(name)

    def _calls(self, name: str, body: Callable[[], None]) -> BaseException | None:
        try:
            while not self.stop.is_set():
                self.busy.add(name)
                body()
                self.busy.discard(name)
                self.counts[name] += 1
        except BaseException as exc:   # noqa: BLE001 - the test looks at what it was
            self.busy.discard(name)
            return exc
        return None

    def _loop(self, name: str, body: Callable[[], None]) -> None:
        self.ended[name] = outcome = self._calls(name, body)
        if outcome is not None and self.resume.wait(30):
            self.resumed[name] = self._calls(name, body)

    def _lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        if opaque == self.tag and dom.name().startswith(f"dropin-{self.tag}-"):
            self.events.append((dom.name(), event))

    def _run_events(self) -> None:
        # a timer, so that an iteration ends even when no event comes
        timer = libvirt.virEventAddTimeout(50, lambda *args: None, None)
        try:
            while not self.stop.is_set():
                libvirt.virEventRunDefaultImpl()
                self.counts["events"] += 1
        except BaseException as exc:   # noqa: BLE001 - reported by the test
            self.ended["events"] = exc
        else:
            self.ended["events"] = None
        finally:
            libvirt.virEventRemoveTimeout(timer)

    def under_way(self, calls: int = 5) -> None:
        """Wait (bounded) until every calling thread has made ``calls`` more calls."""
        base = Counter(self.counts)
        failed = self.resumed if self.resume.is_set() else self.ended
        wait_until(lambda: all(self.counts[n] >= base[n] + calls for n in self.callers)
                   or bool(failed), 10, "the storm is under way")
        assert not failed, failed

    def join(self, bound: float) -> None:
        """Stop, and join every thread within ``bound`` seconds in all."""
        self.stop.set()
        self.resume.set()   # (threads waiting for it: they find ``stop`` set)
        began = time.monotonic()
        for thread in self.threads:
            thread.join(max(0.0, began + bound - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        assert not stuck, f"threads still running after {bound} s: {stuck}"
        # no call is left counted as handed over, no thread as waiting for the loop
        assert (libvirt._handed, list(libvirt._waiting)) == (0, [])

    def lifecycle_events(self, bound: float) -> None:
        """Every domain that went full circle made DEFINED, STARTED, STOPPED, UNDEFINED, in
        that order, and nothing else came (bounded wait; the events thread has stopped)."""
        circle = [libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_STARTED,
                  libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED]
        expected = {name: circle for name in self.cycles}
        assert expected

        def seen() -> dict[str, list[int]]:
            got: dict[str, list[int]] = {}
            for name, event in list(self.events):
                if name.startswith(f"dropin-{self.tag}-"):   # (not a replaced tag's)
                    got.setdefault(name, []).append(event)
            return got

        deadline = time.monotonic() + bound
        while seen() != expected and time.monotonic() < deadline:
            timer = libvirt.virEventAddTimeout(20, lambda *args: None, None)
            libvirt.virEventRunDefaultImpl()
            libvirt.virEventRemoveTimeout(timer)
        assert seen() == expected


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_fds(uri: str) -> int:
    """How many file descriptors this process holds once the drop-in's private loop exists
    (its selector and wake-up pipes are made once, at the first call) and idles."""
    warm = libvirt.open(uri)
    warm.getLibVersion()
    assert warm.close() == 0
    wait_until(lambda: libvirt._owner in (None, libvirt._BACKGROUND), 5, "the loop idles")
    return fd_count()


@pytest.mark.parametrize("when", ["busy", "stalled"])
def test_a_daemon_killed_mid_storm_fails_every_thread_and_a_new_connection_works(
        own_daemon, when):
    """SIGKILL in the middle of a storm from 16 threads on one connection (busy: the daemon
    answering; stalled: stopped first, until all 15 callers wait in a call, slow calls on a
    lane included): every calling thread ends its call within BOUND with a libvirtError that
    names the lost connection (no hang, no other exception), the next call fails at once,
    close() returns at once; after a restart the same threads call on a new connection, and
    the same event thread gets its events (the private loop is still healthy)."""
    fds = settled_fds(own_daemon.uri())
    conn = libvirt.open(own_daemon.uri())
    storm = Storm(conn)
    storm.start()
    try:
        storm.under_way()
        assert own_daemon.pid is not None
        if when == "stalled":
            os.kill(own_daemon.pid, signal.SIGSTOP)
            wait_until(lambda: len(storm.busy) == len(storm.callers), 5,
                       "every caller waits in a call")
        own_daemon.kill()
        killed = time.monotonic()
        wait_until(lambda: len(storm.ended) == len(storm.callers), BOUND,
                   lambda: "every caller's call ends after the kill: stuck "
                           f"{sorted(set(storm.callers) - set(storm.ended))}")
        took = time.monotonic() - killed
        errors = dict(storm.ended)
        stray = {n: repr(e) for n, e in errors.items()
                 if not isinstance(e, libvirt.libvirtError)}
        assert not stray, stray
        codes = Counter((e.get_error_code(), e.get_error_domain()) for e in errors.values())
        assert set(codes) <= {LOSS, LOST}, codes
        if when == "stalled":   # every caller was in a call: each saw the loss itself
            assert codes[LOSS] >= 1, codes
        messages = {str(e) for e in errors.values()}
        assert all("connection lost" in m or "closed" in m for m in messages), messages
        assert not storm.wrong, storm.wrong
        assert took < BOUND

        # the dead connection: a call fails at once, as do objects from it; close() returns
        began = time.monotonic()
        with pytest.raises(libvirt.libvirtError) as later:
            conn.getLibVersion()
        assert (later.value.get_error_code(), later.value.get_error_domain()) == LOST
        with pytest.raises(libvirt.libvirtError):
            conn.listAllDomains()
        assert time.monotonic() - began < 1.0
        assert conn.isAlive() == 0
        began = time.monotonic()
        assert conn.close() == 0
        assert time.monotonic() - began < 2.0
        assert fd_count() == fds, "sockets of the dead connection left open"

        # a restarted daemon, a new connection: the same 15 threads call on it, the same
        # event thread runs its callbacks
        own_daemon.start()
        storm.conn = libvirt.open(own_daemon.uri())
        storm.tag = uuid.uuid4().hex[:6]   # its events only, from here on
        storm.cycles.clear()
        storm.watch(storm.conn)
        storm.resume.set()
        storm.under_way(3)
    finally:
        storm.join(BOUND)
    assert storm.ended["events"] is None
    assert storm.resumed == dict.fromkeys(storm.callers), storm.resumed
    assert not storm.wrong, storm.wrong
    storm.lifecycle_events(10)
    storm.conn.domainEventDeregisterAny(storm.callback_id)
    assert storm.conn.close() == 0


def test_a_daemon_stopped_mid_storm_loses_nothing(own_daemon):
    """SIGSTOP for 3 s in the middle of a storm, then SIGCONT: every thread goes on, every
    result is right, every lifecycle of the storm's domains produced its four events."""
    conn = libvirt.open(own_daemon.uri())
    storm = Storm(conn)
    storm.start()
    assert own_daemon.pid is not None
    try:
        storm.under_way()
        os.kill(own_daemon.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: len(storm.busy) == len(storm.callers), 5,
                       "every caller waits in a call")
            stalled = Counter(storm.counts)
            time.sleep(3)   # the fault itself: the daemon stays stopped this long
            # the event thread's timer still fires: the stalled calls hold up nothing else
            assert storm.counts["events"] - stalled["events"] > 10
            # (a reply the daemon wrote before it stopped may still come in: one call)
            late = {n: storm.counts[n] - stalled[n] for n in storm.callers}
            assert all(n <= 1 for n in late.values()), f"a stopped daemon answers? {late}"
        finally:
            os.kill(own_daemon.pid, signal.SIGCONT)
        storm.under_way(3)   # every thread calls again
    finally:
        storm.join(BOUND)
    assert all(exc is None for exc in storm.ended.values()), storm.ended
    assert not storm.wrong, storm.wrong
    storm.lifecycle_events(10)
    assert conn.lookupByName("test").info()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert not [d for d in conn.listAllDomains() if d.name().startswith("dropin-")]
    conn.domainEventDeregisterAny(storm.callback_id)
    assert conn.close() == 0


def test_threads_opening_and_closing_connections_beside_a_shared_one_leak_nothing(daemon):
    """16 threads each open a connection, call on it (a slow call too, which opens a lane)
    and close it, 5 times over, while 4 threads call on one shared connection: no error,
    and afterwards as many file descriptors and threads as before (not one socket left
    open: closing is done when close() returns, so no slack is allowed)."""
    uri = daemon.uri()
    before = settled_fds(uri)
    threads_before = threading.active_count()
    shared = libvirt.open(uri)
    version = shared.getLibVersion()
    errors: list[BaseException] = []
    done = threading.Event()
    cycles = [0] * THREADS     # one counter per thread: no lost updates
    shared_calls = [0] * 4
    tag = uuid.uuid4().hex[:6]

    def churn(i: int) -> None:
        try:
            for n in range(5):
                own = libvirt.open(uri)
                assert own.getLibVersion() == version
                assert "test" in [d.name() for d in own.listAllDomains()]
                if n % 2 == i % 2:   # half the connections make a slow call: a lane
                    dom = own.defineXML(domain_xml(f"churn-{tag}-{i}-{n}"))
                    assert dom.create() == 0
                    assert dom.destroy() == 0
                    assert dom.undefine() == 0
                assert own.close() == 0
                cycles[i] += 1
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    def share(i: int) -> None:
        try:
            while not done.is_set():
                assert shared.getLibVersion() == version
                assert len(shared.lookupByName("test").info()) == 5
                shared_calls[i] += 1
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    sharers = [threading.Thread(target=share, args=(i,), daemon=True) for i in range(4)]
    churners = [threading.Thread(target=churn, args=(i,), daemon=True)
                for i in range(THREADS)]
    began = time.monotonic()
    for thread in sharers + churners:
        thread.start()
    try:
        for thread in churners:
            thread.join(max(0.0, began + 30 - time.monotonic()))
    finally:
        done.set()
    for thread in sharers:
        thread.join(5)
    assert not [t for t in sharers + churners if t.is_alive()], "threads hang"
    assert not errors, errors
    assert cycles == [5] * THREADS and all(shared_calls)
    assert shared.close() == 0
    assert (libvirt._handed, list(libvirt._waiting)) == (0, [])
    assert fd_count() == before, sorted(os.listdir("/proc/self/fd"))
    assert threading.active_count() == threads_before


def unread_sockets(path: str) -> int:
    """Daemon-side sockets of the UNIX socket ``path`` with bytes waiting to be read."""
    out = subprocess.run(["ss", "-xnH"], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    return sum(1 for line in out.splitlines()
               if str(path) in line.split() and int(line.split()[2]) > 0)


def test_lost_calls_get_libvirts_error_codes(own_daemon):
    """The drop-in and libvirt-python side by side, each with a call waiting on a stopped
    daemon that is then killed: the call under way and the next one get the same error
    code and domain (and errno) from both."""
    real = pytest.importorskip("libvirt")
    real.registerErrorHandler(lambda ctx, err: None, None)
    conns = {"aiovirt": libvirt.open(own_daemon.uri()), "libvirt": real.open(own_daemon.uri())}
    seen: dict[str, tuple[int, int, int | None]] = {}

    def call(name: str) -> None:
        try:
            conns[name].getLibVersion()
        except (libvirt.libvirtError, real.libvirtError) as exc:
            seen[name] = (exc.get_error_code(), exc.get_error_domain(), exc.get_int1())

    try:
        assert own_daemon.pid is not None
        os.kill(own_daemon.pid, signal.SIGSTOP)
        threads = [threading.Thread(target=call, args=(name,)) for name in conns]
        for thread in threads:
            thread.start()
        # both calls written before the kill: the stopped daemon's sockets hold them unread
        wait_until(lambda: unread_sockets(own_daemon.socket_path) >= 2, 5,
                   "both calls waiting unread in the daemon's sockets")
        own_daemon.kill()
        for thread in threads:
            thread.join(BOUND)
        assert not any(t.is_alive() for t in threads)
        assert seen["aiovirt"][:2] == seen["libvirt"][:2] == LOSS, seen
        assert seen["aiovirt"][2] == seen["libvirt"][2], seen   # the socket's errno
        seen.clear()
        for name in conns:
            call(name)
        assert seen["aiovirt"][:2] == seen["libvirt"][:2] == LOST, seen
    finally:
        for conn in conns.values():
            with contextlib.suppress(Exception):
                conn.close()


def test_set_keepalive_judges_a_stopped_daemon(own_daemon):
    """``conn.setKeepAlive(interval, count)`` takes effect on an open drop-in connection: a
    daemon stopped past the new window fails the waiting call with a libvirtError, within
    bounds (the default window is 30 s)."""
    conn = libvirt.open(own_daemon.uri())
    try:
        assert conn.setKeepAlive(1, 1) == 0
        assert own_daemon.pid is not None
        os.kill(own_daemon.pid, signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(libvirt.libvirtError, match="keepalive"):
            conn.getLibVersion()
        assert time.monotonic() - began < 1 * (1 + 1) + 2.5
        with pytest.raises(libvirt.libvirtError):
            conn.setKeepAlive(1, -1)
    finally:
        os.kill(own_daemon.pid, signal.SIGCONT)
        conn.close()
