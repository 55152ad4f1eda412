"""aiovirt.compat: libvirt-python's names on aiovirt, async and blocking, against the suite's
private libvirtd (test driver); results compared with the real libvirt-python when it is
installed."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

import aiovirt.compat.libvirt as libvirt
from aiovirt.compat import aio, constants
from aiovirt.compat.errors import libvirtError

ROOT = Path(__file__).resolve().parent.parent


def _real_libvirt():
    try:
        import libvirt as real  # the C bindings, if installed
    except ImportError:
        return None
    return None if getattr(real, "_AIOVIRT_COMPAT", False) else real


@pytest.fixture(scope="module")
def uri(daemon, tmp_path_factory):
    # a private test-driver host: other tests' changes to test:///default do not show here
    node = tmp_path_factory.mktemp("compat") / "node.xml"
    node.write_text((ROOT / "tests" / "data" / "node.xml").read_text())
    return daemon.uri(path=str(node))


@pytest.fixture(scope="module")
def shared_uri(daemon):
    return daemon.uri()


@pytest.fixture
def set_idle():
    """``set_idle(seconds)``: the drop-in's ``_IDLE`` for this test.  Restored afterwards, and
    the background thread woken: it waits ``_IDLE`` as it was when it began waiting (60 s
    here), and until it looks again nobody runs the private loop once callers are idle (no
    events, no keepalive for later tests)."""
    saved = libvirt._IDLE

    def set_(seconds: float) -> None:
        libvirt._IDLE = seconds

    yield set_
    libvirt._IDLE = saved
    with libvirt._cond:
        libvirt._cond.notify_all()


async def test_async_basics(shared_uri):
    conn = await aio.open(shared_uri)
    try:
        doms = await conn.listAllDomains(0)
        assert [type(d) for d in doms] == [aio.virDomain] * len(doms)
        dom = await conn.lookupByName("test")
        assert dom.name() == "test" and len(dom.UUIDString()) == 36 and dom.ID() > 0
        info = await dom.info()
        assert len(info) == 5 and all(isinstance(v, int) for v in info)
        assert (await dom.state())[0] == info[0]
        assert await dom.isActive() == 1
        assert "<domain" in await dom.XMLDesc(0)
        assert isinstance(await dom.memoryStats(), dict)
        assert "weight" in await dom.schedulerParameters()
        host = await conn.getInfo()
        assert isinstance(host[0], str) and len(host) == 8
        real = _real_libvirt()
        if real is not None:   # the same calls through libvirt's C library, same daemon
            rconn = real.open(shared_uri)
            try:
                rdom = rconn.lookupByName("test")
                assert rdom.info()[:4] == info[:4]
                assert rdom.state() == await dom.state()
                assert rconn.getInfo() == host
                assert rdom.UUIDString() == dom.UUIDString()
                assert rdom.schedulerParameters() == await dom.schedulerParameters()
                assert rdom.memoryStats().keys() == (await dom.memoryStats()).keys()
            finally:
                rconn.close()
    finally:
        await conn.close()


def test_blocking_from_16_threads(shared_uri):
    conn = libvirt.open(shared_uri)
    errors: list[BaseException] = []
    results: list[list[int]] = []

    def work() -> None:
        try:
            for _ in range(10):
                dom = conn.lookupByName("test")
                assert type(dom) is libvirt.virDomain
                results.append(dom.info())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    conn.close()
    assert not errors and len(results) == 160


def test_a_lone_caller_runs_the_loop_itself_and_the_background_takes_it_back(shared_uri):
    """With no other call under way the calling thread runs the private loop for its call
    (no hand-over to another thread); once callers are idle the background thread runs it
    again, so events, keepalive and timers go on without them."""
    import asyncio
    import time

    conn = libvirt.open(shared_uri)
    try:
        conn.getLibVersion()

        async def where() -> int:
            await asyncio.sleep(0)
            return threading.get_ident()

        assert libvirt._run(where()) == threading.get_ident()
        deadline = time.monotonic() + 10
        while libvirt._owner != libvirt._BACKGROUND:   # bounded: the idle hand-back
            assert time.monotonic() < deadline, "the background thread never took the loop"
            time.sleep(libvirt._IDLE)
        assert libvirt._run(where()) == threading.get_ident()   # asked back from it
        # a caller inside its own asyncio code hands its call over instead
        async def inside() -> int:
            return libvirt._run(where())   # blocking inside async code: still answered
        assert asyncio.run(inside()) != threading.get_ident()
        assert conn.getLibVersion() > 0
    finally:
        conn.close()


def test_callers_and_the_background_thread_share_the_loop_under_load(shared_uri):
    """16 threads, each call either running the loop or handed to whoever runs it, with the
    background thread stepping in between: every result arrives, nothing is left waiting."""
    conn = libvirt.open(shared_uri)
    version = conn.getLibVersion()
    errors: list[BaseException] = []
    counts = [0] * 16

    def work(i: int) -> None:
        try:
            for n in range(200):
                assert conn.getLibVersion() == version
                counts[i] += 1
                if n % 50 == 0:   # idle long enough for the background thread to take over
                    threading.Event().wait(libvirt._IDLE * 2)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not errors and counts == [200] * 16
        assert libvirt._handed == 0
    finally:
        conn.close()


def test_errors(shared_uri):
    conn = libvirt.open(shared_uri)
    try:
        with pytest.raises(libvirt.libvirtError) as caught:
            conn.lookupByName("no-such-domain")
        assert caught.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
        assert caught.value.get_error_domain() is not None
        assert libvirt.virGetLastError()[0] == libvirt.VIR_ERR_NO_DOMAIN
    finally:
        conn.close()
    with pytest.raises(libvirtError) as caught:
        libvirt.open("test+unix:///default?socket=/nonexistent/libvirt-sock")
    err = caught.value
    assert (err.get_error_code(), err.get_error_domain()) == (
        libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC)
    assert err.get_str1() == "%s" and err.get_int1() == 2 and err.get_int2() == -1


def test_events_run_on_the_callers_thread(uri):
    libvirt.virEventRegisterDefaultImpl()
    conn = libvirt.open(uri)
    dom = conn.lookupByName("node-vm1")
    if not dom.isActive():
        dom.create()
    got: list[tuple] = []

    def lifecycle(c, d, event, detail, opaque):
        got.append((threading.current_thread(), c is conn, d.name(), event, detail, opaque))

    callback_id = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                              lifecycle, "opaque")
    fired: list[int] = []
    timer = libvirt.virEventAddTimeout(10, lambda t, o: fired.append(o), 7)
    try:
        dom.destroy()
        while not got:
            libvirt.virEventRunDefaultImpl()
        assert got[0] == (threading.current_thread(), True, "node-vm1",
                          libvirt.VIR_DOMAIN_EVENT_STOPPED,
                          libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED, "opaque")
        dom.create()
        while len(got) < 2 or not fired:
            libvirt.virEventRunDefaultImpl()
        assert got[1][3] == libvirt.VIR_DOMAIN_EVENT_STARTED and fired[0] == 7
    finally:
        libvirt.virEventRemoveTimeout(timer)
        conn.domainEventDeregisterAny(callback_id)
        conn.close()


def test_constants_regenerate_byte_identical(tmp_path):
    api = Path("/usr/share/libvirt/api/libvirt-api.xml")
    if not api.exists():
        pytest.skip("libvirt's API description is missing (apt-get install libvirt-dev)")
    out = tmp_path / "constants.py"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-compat-constants"),
                    "--output", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == (ROOT / "aiovirt" / "compat" / "constants.py").read_bytes()
    real = _real_libvirt()
    if real is not None:
        missing = [n for n in dir(real) if n.startswith("VIR_") and not hasattr(constants, n)]
        assert not missing


class _EventLoop:
    """libvirt's event model for the blocking drop-in: a thread running
    virEventRunDefaultImpl() (callbacks run there) until the block ends."""

    def __enter__(self):
        libvirt.virEventRegisterDefaultImpl()
        self.stop = False

        def run():
            while not self.stop:
                libvirt.virEventRunDefaultImpl()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        timer = libvirt.virEventAddTimeout(0, lambda *a: None, None)   # wake it
        self.thread.join(5)
        libvirt.virEventRemoveTimeout(timer)


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_close_callback_fires_when_the_daemon_goes(tmp_path, how):
    """registerCloseCallback: called once, with VIR_CONNECT_CLOSE_REASON_EOF, when the
    daemon goes away (killed, or stopped), as libvirt-python's is; CLIENT on close()."""
    from aiovirt.testing.daemon import PrivateDaemon

    real = _real_libvirt()
    real_fired: list[int] = []
    if real is not None:
        real.virEventRegisterDefaultImpl()
        threading.Thread(target=lambda: [real.virEventRunDefaultImpl() for _ in iter(int, 1)],
                         daemon=True).start()
    with PrivateDaemon(tmp_path / "d") as daemon, _EventLoop():
        conn = libvirt.open(daemon.uri())
        fired: list[tuple[object, int, object]] = []
        got = threading.Event()
        conn.registerCloseCallback(lambda c, reason, opaque: (fired.append((c, reason, opaque)),
                                                              got.set()), "op")
        with pytest.raises(libvirtError):   # one per connection, as libvirt
            conn.registerCloseCallback(lambda *a: None, None)
        if real is not None:
            rconn = real.open(daemon.uri())
            real_got = threading.Event()
            rconn.registerCloseCallback(
                lambda c, reason, opaque: (real_fired.append(reason), real_got.set()), None)
        getattr(daemon, how)()
        assert got.wait(15), "the close callback did not fire"
        assert [(r, o) for _, r, o in fired] == [(libvirt.VIR_CONNECT_CLOSE_REASON_EOF, "op")]
        assert fired[0][0] is conn
        if real is not None:
            assert real_got.wait(15)
            assert real_fired == [real.VIR_CONNECT_CLOSE_REASON_EOF]
        conn.close()
        assert len(fired) == 1   # not again on close()


def test_close_callback_on_close_is_client(uri):
    with _EventLoop():
        _close_on_client(uri)


def _close_on_client(uri):
    conn = libvirt.open(uri)
    fired: list[int] = []
    conn.registerCloseCallback(lambda c, reason, opaque: fired.append(reason), None)
    conn.unregisterCloseCallback()
    with pytest.raises(libvirtError):
        conn.unregisterCloseCallback()
    conn.registerCloseCallback(lambda c, reason, opaque: fired.append(reason), None)
    conn.close()
    for _ in range(100):
        if fired:
            break
        threading.Event().wait(0.05)
    assert fired == [libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT]


def test_names_and_method_docs_regenerate_identical():
    """aiovirt/compat/names.py and docs/compat-methods.md are what scripts/gen-compat-names
    writes from the installed libvirt-python and rpc/libvirt_api_map.json."""
    if _real_libvirt() is None:
        pytest.skip("libvirt-python is not installed: the generator reads it")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-compat-names"),
                           "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_qemu_and_lxc_drop_ins(shared_uri):
    """libvirt_qemu / libvirt_lxc: every function libvirt-python's modules have; against
    the test driver they reach the daemon, which refuses them as it refuses libvirt-python."""
    import aiovirt.compat.libvirt_lxc as lxc
    import aiovirt.compat.libvirt_qemu as qemu
    from aiovirt.compat.names import MODULES

    for module, names in ((qemu, MODULES["libvirt_qemu"]), (lxc, MODULES["libvirt_lxc"])):
        assert not [n for n in names if not hasattr(module, n)]
    conn = libvirt.open(shared_uri)
    try:
        dom = conn.lookupByName("test")
        calls = [lambda: qemu.qemuMonitorCommand(dom, "{}", 0),
                 lambda: qemu.qemuAgentCommand(dom, "{}", 1, 0),
                 lambda: qemu.qemuAttach(conn, 1, 0),
                 lambda: lxc.lxcOpenNamespace(dom, 0),
                 lambda: lxc.lxcEnterCGroup(dom, 0)]
        codes = []
        for call in calls:
            with pytest.raises(libvirtError) as info:
                call()
            codes.append(info.value.get_error_code())
        real = _real_libvirt()
        if real is not None:   # the same refusals from libvirt-python
            import libvirt_lxc as real_lxc
            import libvirt_qemu as real_qemu
            real.registerErrorHandler(lambda ctx, err: None, None)
            rconn = real.open(shared_uri)
            rdom = rconn.lookupByName("test")
            real_calls = [lambda: real_qemu.qemuMonitorCommand(rdom, "{}", 0),
                          lambda: real_qemu.qemuAgentCommand(rdom, "{}", 1, 0),
                          lambda: real_qemu.qemuAttach(rconn, 1, 0),
                          lambda: real_lxc.lxcOpenNamespace(rdom, 0)]
            real_codes = []
            for call in real_calls:
                with pytest.raises(real.libvirtError) as info:
                    call()
                real_codes.append(info.value.get_error_code())
            del rdom, info   # (rdom keeps rconn's socket open past close(), and so does the
            # traceback of the last refusal, a cycle through this frame that only gc frees)
            rconn.close()
            assert codes[:4] == real_codes
        assert codes[4] == libvirt.VIR_ERR_NO_SUPPORT
        # QEMU monitor events: registering for the test driver is refused alike
        with pytest.raises(libvirtError):
            qemu.qemuMonitorEventRegister(conn, dom, None, lambda *a: None, None, 0)
    finally:
        conn.close()


# -- a lone caller reads its own reply (libvirt's shape) ----------------------------------------

def test_a_lone_caller_steps_its_call_without_a_pass_of_the_loop(shared_uri, monkeypatch, set_idle):
    """A caller alone owns the loop and steps its call's coroutine itself: the call is
    written and its reply read on its thread, the loop never runs for it (it did a pass a
    call before, which cost more than the rest of the call)."""
    conn = libvirt.open(shared_uri)
    try:
        version = conn.getLibVersion()
        set_idle(60.0)   # no pass for back-to-back calls
        runs: list[object] = []
        run_loop = libvirt._run_loop
        monkeypatch.setattr(libvirt, "_run_loop",
                            lambda loop, coro: (runs.append(coro), run_loop(loop, coro))[1])
        stepped = []
        drive = libvirt._drive
        monkeypatch.setattr(libvirt, "_drive",
                            lambda *a: (stepped.append(a[1]), drive(*a))[1])
        dom = conn.lookupByName("test")
        for _ in range(50):
            assert conn.getLibVersion() == version
            assert dom.info()[0] in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_SHUTOFF)
        assert len(stepped) == 101 and runs == []
    finally:
        conn.close()


def test_qemu_and_lxc_functions_are_stepped_by_a_lone_caller(shared_uri, monkeypatch, set_idle):
    """libvirt_qemu's and libvirt_lxc's functions take the lone caller's path too: no pass
    of the loop per call, and the daemon's answer (the test driver has no monitor, agent or
    namespaces) comes back as libvirt-python raises it."""
    from aiovirt.compat import libvirt_lxc as lxc
    from aiovirt.compat import libvirt_qemu as qemu

    conn = libvirt.open(shared_uri)
    try:
        dom = conn.lookupByName("test")
        conn.getLibVersion()
        set_idle(60.0)
        runs: list[object] = []
        run_loop = libvirt._run_loop
        monkeypatch.setattr(libvirt, "_run_loop",
                            lambda loop, coro: (runs.append(coro), run_loop(loop, coro))[1])
        stepped = []
        drive = libvirt._drive
        monkeypatch.setattr(libvirt, "_drive",
                            lambda *a: (stepped.append(a[1]), drive(*a))[1])
        for _ in range(3):
            with pytest.raises(libvirt.libvirtError) as monitor:
                qemu.qemuMonitorCommand(dom, '{"execute": "query-status"}', 0)
            with pytest.raises(libvirt.libvirtError) as agent:
                qemu.qemuAgentCommand(dom, '{"execute": "guest-ping"}', 5, 0)
        assert monitor.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
        assert agent.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
        assert len(stepped) == 6 and runs == []
        with pytest.raises(libvirt.libvirtError):   # FDs come back: the loop reads them
            lxc.lxcOpenNamespace(dom, 0)
        assert conn.getLibVersion() > 0
    finally:
        conn.close()


def test_a_stepped_call_runs_what_needs_the_loop_on_it(shared_uri, monkeypatch, set_idle):
    """Within a stepped method, a call that needs the running loop (a time limit; a slow
    procedure, which goes to a lane) runs on it, here; the method goes on stepped."""
    import uuid

    conn = libvirt.open(shared_uri)
    try:
        set_idle(60.0)
        on_loop: list[object] = []
        run_loop = libvirt._run_loop
        monkeypatch.setattr(libvirt, "_run_loop", lambda loop, coro: (
            on_loop.append(getattr(coro, "__name__", coro)), run_loop(loop, coro))[1])
        conn._a._c.call_timeout = 30.0
        assert conn.getLibVersion() > 0
        assert on_loop == ["_awaited"]
        conn._a._c.call_timeout = None
        on_loop.clear()
        xml = (f"<domain type='test'><name>stepped-{uuid.uuid4().hex[:8]}</name>"
               "<memory>8192</memory><os><type>hvm</type></os></domain>")
        dom = conn.defineXML(xml)
        try:
            assert dom.create() == 0       # DOMAIN_CREATE is slow: a lane, on the loop
            assert dom.isActive() == 1
            assert on_loop and set(on_loop) == {"_awaited"}
        finally:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    finally:
        conn.close()


def test_a_method_that_needs_the_loop_first_runs_there_from_then_on(shared_uri):
    """A method whose coroutine needs the running loop before it sends anything is run on
    the loop instead, and from then on at once (nothing was sent twice)."""
    import anyio

    conn = libvirt.open(shared_uri)
    sent: list[int] = []

    async def method(target):
        await anyio.lowlevel.checkpoint()   # needs the running loop (sniffio)
        sent.append(1)
        return await target.getLibVersion()

    call = libvirt._blocking("probe", method, libvirt._CONNECTION)
    try:
        assert call(conn) == conn.getLibVersion()
        assert call(conn) == conn.getLibVersion()
        assert sent == [1, 1]
    finally:
        conn.close()


def test_a_lone_caller_interrupted_while_reading_leaves_the_connection_usable(tmp_path):
    """Ctrl-C (here SIGALRM's handler) while a lone caller waits on a stopped daemon: the
    interruption gets through at once, the loop is let go, and once the daemon goes on the
    same connection answers."""
    import os
    import signal
    import time

    from aiovirt.testing.daemon import PrivateDaemon

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    with PrivateDaemon(tmp_path / "d") as daemon:
        conn = libvirt.open(daemon.uri())
        version = conn.getLibVersion()
        previous = signal.signal(signal.SIGALRM, interrupt)
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            start = time.monotonic()
            with pytest.raises(Interrupted):
                conn.getLibVersion()
            assert time.monotonic() - start < 5
            assert libvirt._owner != threading.get_ident()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            os.kill(daemon.pid, signal.SIGCONT)
        assert conn.getLibVersion() == version
        conn.close()


def test_a_lone_caller_learns_of_a_killed_daemon(tmp_path):
    """The daemon dies while a lone caller reads its reply: the call fails with a
    libvirtError at once (no hang), and so does the next."""
    import os
    import signal
    import time

    from aiovirt.testing.daemon import PrivateDaemon

    with PrivateDaemon(tmp_path / "d") as daemon:
        conn = libvirt.open(daemon.uri())
        conn.getLibVersion()
        os.kill(daemon.pid, signal.SIGSTOP)
        threading.Timer(0.3, lambda: os.kill(daemon.pid, signal.SIGKILL)).start()
        start = time.monotonic()
        with pytest.raises(libvirtError):
            conn.getLibVersion()
        assert time.monotonic() - start < 10
        with pytest.raises(libvirtError):
            conn.getLibVersion()
        conn.close()


def test_a_call_handed_over_while_a_lone_caller_reads_runs_at_once(tmp_path, monkeypatch):
    """While a lone caller reads its own reply (here from a stopped daemon: it waits), the
    loop does not run; another thread's call handed over meanwhile wakes it to run the loop,
    so that call is done at once, not after the reader's reply."""
    import asyncio
    import os
    import signal
    import time

    from aiovirt.testing.daemon import PrivateDaemon

    async def where() -> int:
        await asyncio.sleep(0)
        return threading.get_ident()

    monkeypatch.setattr(libvirt, "_SLICE", 60.0)   # the reader's own passes of the loop: late
    with PrivateDaemon(tmp_path / "d") as daemon:
        conn = libvirt.open(daemon.uri())
        version = conn.getLibVersion()
        reader_done = threading.Event()
        results: list[int] = []
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            reader = threading.Thread(target=lambda: (results.append(conn.getLibVersion()),
                                                      reader_done.set()))
            reader.start()
            deadline = time.monotonic() + 10
            while not libvirt._reader[0]:   # bounded: the reader owns the loop and reads
                assert time.monotonic() < deadline, "the lone caller never started reading"
                threading.Event().wait(0.01)
            handed: list[int] = []
            other = threading.Thread(target=lambda: handed.append(libvirt._run(where())))
            other.start()
            other.join(5)
            assert handed == [reader.ident]   # done at once, by the reader's loop
            assert not reader_done.is_set()
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        reader.join(15)
        other.join(15)
        assert results == [version]
        assert conn.getLibVersion() == version
        conn.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_lone_caller_reads_its_reply_on_either_loop(shared_uri, loop):
    """The lone caller's own reads work on asyncio's loop (a selector transport) as on
    uvloop's: in a process of its own (the loop is chosen at start), 200 calls from its
    main thread, every one stepped, no pass of the loop for any."""
    import os

    pytest.importorskip(loop)
    script = f"""
import asyncio, sys
import aiovirt.compat.libvirt as libvirt
libvirt._IDLE = 60.0
conn = libvirt.open({shared_uri!r})
version = conn.getLibVersion()
runs, stepped = [], []
run_loop, drive = libvirt._run_loop, libvirt._drive
libvirt._run_loop = lambda loop, coro: (runs.append(coro), run_loop(loop, coro))[1]
libvirt._drive = lambda *a: (stepped.append(1), drive(*a))[1]
assert all(conn.getLibVersion() == version for _ in range(200))
kind = type(libvirt._loop).__module__.split(".")[0]
print(kind, len(stepped), len(runs))
conn.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "AIOVIRT_LOOP": loop})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [loop, "200", "0"]


_SIGINT_SCRIPT = r"""
import collections, signal, sys, threading, time
import aiovirt.compat.libvirt as libvirt

uri, custom = sys.argv[1], sys.argv[2] == "custom"
if custom:   # the program's own handler, raising inside the loop
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, handler)
conn = libvirt.open(uri)
version = conn.getLibVersion()
stop = threading.Event()
errors = collections.Counter()
calls = collections.Counter()
main = collections.Counter()
sent = [0, 0]   # signals sent, of them while the main thread ran the loop for others


def worker(name):
    while not stop.is_set():
        try:
            assert conn.getLibVersion() == version
            calls[name] += 1
        except Exception as exc:
            errors[type(exc).__name__] += 1
            return


def ctrl_c():
    me = threading.main_thread().ident
    deadline = time.monotonic() + 30
    while sent[0] < 20 and time.monotonic() < deadline:
        seen = main["interrupted"]
        # when the main thread runs the loop with other threads' calls on it
        while not (libvirt._owner == me and libvirt._handed) and time.monotonic() < deadline:
            pass
        sent[1] += libvirt._owner == me and bool(libvirt._handed)
        signal.pthread_kill(me, signal.SIGINT)
        sent[0] += 1
        while main["interrupted"] == seen and time.monotonic() < deadline:
            time.sleep(0.001)
    stop.set()


workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(2)]
for t in workers:
    t.start()
threading.Thread(target=ctrl_c, daemon=True).start()
while True:
    try:
        if stop.is_set():
            break
        try:
            conn.getLibVersion()
            main["ok"] += 1
        except KeyboardInterrupt:
            main["interrupted"] += 1
        except Exception as exc:
            main[type(exc).__name__] += 1
            break   # (the loop was replaced: its connections are lost)
    except KeyboardInterrupt:
        main["interrupted"] += 1
signal.signal(signal.SIGINT, signal.SIG_IGN)
stop.set()
for t in workers:
    t.join(10)
try:
    after = conn.getLibVersion() == version
except libvirt.libvirtError:
    after = "lost"
fresh = libvirt.open(uri)
import json
print(json.dumps({"sent": sent[0], "while_running": sent[1] > 0,
                  "interrupted": main["interrupted"],
                  "errors": sorted(set(errors) | set(main) - {"ok", "interrupted"}),
                  "workers_called": min(calls.values()) > 0, "same": after,
                  "fresh": fresh.getLibVersion() == version}), flush=True)
"""


@pytest.mark.parametrize("handler", ["default", "custom"])
def test_ctrl_c_while_the_main_thread_runs_the_loop_for_others(shared_uri, handler):
    """Ctrl-C (SIGINT, sent to the main thread whenever it runs the private loop with other
    threads' calls on it), 20 times: with Python's default handler, the main thread gets
    KeyboardInterrupt each time, its call abandoned, and the other threads never notice;
    the loop and the connection go on.  The program's own handler likewise runs on the main
    thread once the loop is out.  In a process of its own (signals go to its main
    thread)."""
    import os

    done = subprocess.run([sys.executable, "-c", _SIGINT_SCRIPT, shared_uri, handler],
                          capture_output=True, text=True, timeout=90,
                          cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    import json

    seen = json.loads(done.stdout)
    assert seen["while_running"] and seen["fresh"], done.stdout + done.stderr
    # the program's own handler runs as Python's does: on the main thread, out of the loop
    # (raised inside it, it hit other threads' calls: RuntimeError, or a hang)
    assert seen == {"sent": 20, "while_running": True, "interrupted": 20, "errors": [],
                    "workers_called": True, "same": True, "fresh": True}, done.stderr


def test_a_forked_child_starts_afresh(shared_uri):
    """fork() while the drop-in is in use (its background thread holding the loop): the
    child's first call does not hang on the parent's loop state; it opens a connection of
    its own and calls; a connection opened before the fork fails with libvirtError without
    touching the parent's socket (the parent's calls go on)."""
    import os
    import signal
    import time

    conn = libvirt.open(shared_uri)
    version = conn.getLibVersion()
    deadline = time.monotonic() + 10
    while libvirt._owner != libvirt._BACKGROUND:   # bounded: it takes the loop after _IDLE
        assert time.monotonic() < deadline, "the background thread never took the loop"
        threading.Event().wait(0.01)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: report through the pipe, never return into pytest
        try:
            signal.alarm(20)
            os.close(read)
            seen = []
            try:
                conn.getLibVersion()
                seen.append("old-answered")
            except libvirt.libvirtError:
                seen.append("old-refused")
            child = libvirt.open(shared_uri)
            seen.append(str(child.getLibVersion() == version))
            child.close()
            os.write(write, " ".join(seen).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        reported = b""
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, f"the child hung: {reported!r}"
            if not select_readable(read, deadline - time.monotonic()):
                continue
            chunk = os.read(read, 1024)
            if not chunk:
                break
            reported += chunk
        assert reported.decode() == "old-refused True"
    finally:
        os.close(read)
        for _ in range(100):   # bounded: the child has ended or ends at its alarm
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            threading.Event().wait(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert conn.getLibVersion() == version
    conn.close()


def select_readable(fd: int, timeout: float) -> bool:
    import select
    return bool(select.select([fd], [], [], max(0.0, timeout))[0])


@pytest.fixture(scope="module")
def sasl_uri(tmp_path_factory):
    """A libvirtd of its own whose UNIX socket wants SASL SCRAM-SHA-256 (alice/secret)."""
    import os
    import shutil

    from aiovirt.testing.daemon import PrivateDaemon

    saslpasswd2 = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"
    if not os.path.exists(saslpasswd2) or not list(Path("/usr/lib").glob(
            "*/sasl2/libscram.so*")):
        pytest.skip("no saslpasswd2 or no SCRAM plugin (sasl2-bin, libsasl2-modules)")
    work = tmp_path_factory.mktemp("compat-sasl")
    sasl = work / "sasl"
    sasl.mkdir()
    (sasl / "libvirt.conf").write_text(
        f"mech_list: scram-sha-256\nsasldb_path: {sasl / 'db'}\n")
    subprocess.run([saslpasswd2, "-a", "libvirt", "-f", str(sasl / "db"), "-p", "alice"],
                   input=b"secret", check=True, timeout=20)
    with PrivateDaemon(work / "d", extra_config={"auth_unix_rw": "sasl"},
                       env={"SASL_CONF_PATH": str(sasl)}) as running:
        yield running.uri()


def _answer(creds, user="alice", password="secret"):
    for cred in creds:
        cred[4] = user if cred[0] == libvirt.VIR_CRED_AUTHNAME else password


def test_open_auth_callback_runs_off_the_loop(shared_uri, sasl_uri):
    """openAuth's callback does not run on the private loop: while it waits (a user typing),
    other threads' calls on other connections go on, and it may make libvirt calls itself,
    as with libvirt-python."""
    other = libvirt.open(shared_uri)
    version = other.getLibVersion()
    went_on = threading.Event()
    inside: dict[str, object] = {}

    def elsewhere() -> None:
        for _ in range(5):
            other.getLibVersion()
        went_on.set()

    def ask(creds, opaque):
        inside["opaque"] = opaque
        inside["call"] = other.getLibVersion()    # a call inside the callback
        worker = threading.Thread(target=elsewhere, daemon=True)
        worker.start()
        inside["others went on"] = went_on.wait(10)   # while the callback waits
        worker.join(10)
        _answer(creds)
        return 0

    conn = libvirt.openAuth(sasl_uri, [[libvirt.VIR_CRED_AUTHNAME,
                                        libvirt.VIR_CRED_PASSPHRASE], ask, "op"], 0)
    try:
        assert inside == {"opaque": "op", "call": version, "others went on": True}
        assert conn.getLibVersion() == version
    finally:
        conn.close()
        other.close()


@pytest.mark.parametrize("value", [b"secret", 42])
def test_open_auth_results_that_are_not_text_fail_as_libvirt_python(sasl_uri, value):
    """A credential answered with bytes or a number: libvirtError (authentication failed),
    as libvirt-python (it takes str only), not AttributeError."""
    def ask(creds, opaque):
        _answer(creds, password=value)
        return 0

    auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], ask, None]
    with pytest.raises(libvirtError):
        libvirt.openAuth(sasl_uri, auth, 0)
    real = _real_libvirt()
    if real is not None:
        with pytest.raises(real.libvirtError):
            real.openAuth(sasl_uri, auth, 0)


def test_stream_recv_all_and_send_all_as_libvirt_python(shared_uri):
    """recvAll: the handler gets the blocking stream it was called on, on the caller's
    thread (a call inside it works; while it waits, other threads' calls go on); a handler
    returning None is fine, a negative int fails (RuntimeError, stream aborted); the stream
    is not finished for the caller.  sendAll: a failing handler aborts the stream and its
    error is raised."""
    conn = libvirt.open(shared_uri)
    dom = conn.lookupByName("test")
    version = conn.getLibVersion()
    try:
        stream = conn.newStream(0)
        dom.screenshot(stream, 0)
        seen: list[object] = []
        went_on = threading.Event()

        def elsewhere() -> None:
            conn.getLibVersion()
            went_on.set()

        def sink(st, data, opaque):
            if not seen:
                seen.append(st is stream and threading.current_thread() is me)
                seen.append(conn.getLibVersion() == version)   # a call inside the handler
                worker = threading.Thread(target=elsewhere, daemon=True)
                worker.start()
                seen.append(went_on.wait(10))   # others' calls go on meanwhile
                worker.join(10)
            seen.append(len(data))
            # returns None: fine (libvirt-python checks for a negative int only)

        me = threading.current_thread()
        assert stream.recvAll(sink, None) is None
        assert seen[:3] == [True, True, True] and sum(seen[3:]) > 0
        stream.finish()

        stream = conn.newStream(0)
        dom.screenshot(stream, 0)
        with pytest.raises(RuntimeError, match="recvAll handler returned -1"):
            stream.recvAll(lambda st, data, opaque: -1, None)
        with pytest.raises(libvirtError):   # aborted
            stream.recv(10)

        class Stop(Exception):
            pass

        def source(st, nbytes, opaque):
            raise Stop

        stream = conn.newStream(0)
        dom.screenshot(stream, 0)
        with pytest.raises(Stop):
            stream.sendAll(source, None)
        with pytest.raises(libvirtError):   # aborted
            stream.recv(10)
    finally:
        conn.close()


def test_events_queued_before_a_deregistration_are_not_delivered_after_it(uri):
    """Events already queued for virEventRunDefaultImpl() when their callback is
    deregistered (here by the callback itself, at its first event) are skipped, as libvirt
    skips callbacks marked deleted."""
    import time

    libvirt.virEventRegisterDefaultImpl()
    conn = libvirt.open(uri)
    dom = conn.lookupByName("node-vm1")
    if not dom.isActive():
        dom.create()
    calls: list[int] = []

    def lifecycle(c, d, event, detail, opaque):
        calls.append(event)
        if len(calls) == 1:
            c.domainEventDeregisterAny(state["id"])

    state = {"id": conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                               lifecycle, None)}
    try:
        queued = libvirt._queue.qsize()
        for _ in range(3):
            dom.suspend()
            dom.resume()
        deadline = time.monotonic() + 10
        while libvirt._queue.qsize() < queued + 6:   # bounded: all six are queued
            assert time.monotonic() < deadline, "the events never came"
            threading.Event().wait(0.01)
        libvirt.virEventRunDefaultImpl()   # runs everything queued
        assert calls == [libvirt.VIR_DOMAIN_EVENT_SUSPENDED]
    finally:
        conn.close()


def test_legacy_domain_event_register_twice_is_one_registration(uri):
    """domainEventRegister(cb) twice: one registration, the opaque replaced (one call per
    event); domainEventDeregister(cb) ends it, and again is nothing, as libvirt-python."""
    import time

    conn = libvirt.open(uri)
    dom = conn.lookupByName("node-vm1")
    if not dom.isActive():
        dom.create()
    legacy: list[object] = []
    sentinel: list[int] = []

    def wait_for(what, count):
        deadline = time.monotonic() + 10
        while len(what) < count:   # bounded
            assert time.monotonic() < deadline, f"{len(what)} events of {count}"
            threading.Event().wait(0.01)

    with _EventLoop():
        conn.domainEventRegister(lambda c, d, event, detail, opaque: legacy.append(opaque),
                                 "first")
        cb = conn._a._legacy and next(iter(conn._a._legacy))
        conn.domainEventRegister(cb, "second")
        watch = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            lambda c, d, event, detail, opaque: sentinel.append(event), None)
        try:
            dom.suspend()
            wait_for(legacy, 1)
            wait_for(sentinel, 1)
            dom.resume()
            wait_for(sentinel, 2)
            wait_for(legacy, 2)
            assert legacy == ["second", "second"]
            conn.domainEventDeregister(cb)
            conn.domainEventDeregister(cb)   # nothing registered: nothing done
            dom.suspend()
            dom.resume()
            wait_for(sentinel, 4)
            assert legacy == ["second", "second"]
            assert len(conn._a._events) == 1   # the sentinel's only
        finally:
            conn.domainEventDeregisterAny(watch)
            conn.close()


def test_stream_recv_after_abort_fails_as_libvirt_python(shared_uri):
    """recv() after abort() raises libvirtError even with data read before the abort left
    unread (it returned that data); so does every later use: no anyio exception gets out."""
    conn = libvirt.open(shared_uri)
    try:
        stream = conn.newStream(0)
        conn.lookupByName("test").screenshot(stream, 0)
        assert len(stream.recv(100)) == 100   # the rest of the chunk stays buffered
        stream.abort()
        for use in (lambda: stream.recv(10**6), lambda: stream.recv(10),
                    lambda: stream.send(b"x"), stream.finish):
            with pytest.raises(libvirtError):
                use()
    finally:
        conn.close()


def test_bad_arguments_raise_what_libvirt_python_raises(shared_uri):
    # these raised ValueError ('badly formed hexadecimal UUID string', int()'s), EncodeError
    # and KeyError where libvirt-python raises libvirtError or TypeError
    import libvirt as real
    ours, theirs = libvirt.open(shared_uri), real.open(shared_uri)
    try:
        cases = [
            lambda c: c.lookupByUUIDString("not-a-uuid"),
            lambda c: c.networkLookupByUUIDString("zz"),
            lambda c: c.lookupByName("test").setSchedulerParameters({"weight": "x"}),
            lambda c: c.networkLookupByName("default").setAutostart("x"),
            lambda c: c.domainListGetStats(["test"]),
        ]
        for case in cases:
            kinds = []
            for conn, error in ((ours, libvirtError), (theirs, real.libvirtError)):
                with pytest.raises((error, TypeError)) as info:
                    case(conn)
                kinds.append("libvirtError" if isinstance(info.value, error) else "TypeError")
            assert kinds[0] == kinds[1], (kinds, info.value)
    finally:
        ours.close()
        theirs.close()


def test_event_handles_share_an_fd_and_a_removed_one_never_fires():
    # a READABLE and a WRITABLE watch on one fd: the READABLE one never fired (one asyncio
    # reader per fd, and each firing disarmed both); a watch removed after its fd became
    # ready was still called by the next virEventRunDefaultImpl()
    import socket
    import time
    libvirt.virEventRegisterDefaultImpl()
    first, second = socket.socketpair()
    first.setblocking(False)
    seen: list[str] = []
    removed_calls: list[tuple] = []
    try:
        gone = libvirt.virEventAddHandle(second.fileno(), libvirt.VIR_EVENT_HANDLE_WRITABLE,
                                         lambda *args: removed_calls.append(args), None)
        # its fd is writable at once; removed before anyone runs the loop
        deadline = time.monotonic() + 5
        while not getattr(libvirt, "_busy", True) and time.monotonic() < deadline:
            time.sleep(0.01)   # (the watch fired on the private loop: a callback is queued)
        libvirt.virEventRemoveHandle(gone)

        def on_read(watch, fd, events, opaque) -> None:
            seen.append("R")
            try:
                first.recv(100)
            except BlockingIOError:
                pass

        def on_write(watch, fd, events, opaque) -> None:
            seen.append("W")

        reader = libvirt.virEventAddHandle(first.fileno(), libvirt.VIR_EVENT_HANDLE_READABLE,
                                           on_read, None)
        writer = libvirt.virEventAddHandle(first.fileno(), libvirt.VIR_EVENT_HANDLE_WRITABLE,
                                           on_write, None)
        second.send(b"x")
        deadline = time.monotonic() + 10
        while "R" not in seen and time.monotonic() < deadline:
            timer = libvirt.virEventAddTimeout(20, lambda *args: None, None)
            libvirt.virEventRunDefaultImpl()
            libvirt.virEventRemoveTimeout(timer)
        assert "R" in seen and "W" in seen
        assert removed_calls == []
        libvirt.virEventRemoveHandle(reader)
        libvirt.virEventRemoveHandle(writer)
    finally:
        first.close()
        second.close()
