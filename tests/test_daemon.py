"""The private libvirtd launcher itself, checked with virsh (no aiovirt client involved)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from aiovirt.testing.daemon import DEFAULT_CAPS_CACHE, DaemonError, PrivateDaemon

as_root = pytest.mark.skipif(os.geteuid() != 0,
                             reason="private QEMU state needs root (a mount namespace)")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def guest_xml(name: str, kind: str = "kvm") -> str:
    """A diskless 64 MiB guest: enough for QEMU to run, nothing to boot."""
    return (f"<domain type='{kind}'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>")


def define(daemon: PrivateDaemon, tmp_path: Path, name: str, kind: str = "kvm") -> None:
    xml = tmp_path / f"{name}.xml"
    xml.write_text(guest_xml(name, kind))
    daemon.virsh("define", str(xml))


def names(daemon: PrivateDaemon, uri: str | None = None) -> set[str]:
    return set(daemon.virsh("list", "--all", "--name", uri=uri).split())


def refuses(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(path)
        except ConnectionRefusedError:
            return True
    return False


def test_unix_socket_accepts(daemon):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(daemon.socket_path)
    assert daemon.running


def test_pid_is_libvirtd_itself(daemon):
    """No wrapper in between: signals and kill() reach libvirtd."""
    assert os.path.basename(os.readlink(f"/proc/{daemon.pid}/exe")) == "libvirtd"


def test_uris(daemon):
    sock = daemon.socket_path
    assert daemon.uri() == f"test+unix:///default?socket={sock}"
    assert daemon.uri("qemu", "/system") == f"qemu+unix:///system?socket={sock}"
    assert daemon.uri(transport="tcp") == f"test+tcp://127.0.0.1:{daemon.tcp_port}/default"
    assert daemon.uri(transport="tls") == f"test+tls://localhost:{daemon.tls_port}/default"
    with pytest.raises(ValueError):
        daemon.uri(transport="ssh")


def test_test_driver_default_host(daemon):
    assert "test" in names(daemon, daemon.uri())


def test_test_driver_over_tcp(daemon):
    assert "test" in names(daemon, daemon.uri(transport="tcp"))


def test_private_node_file(daemon, node_xml):
    uri = daemon.uri("test", node_xml)
    listing = daemon.virsh("list", "--all", uri=uri)
    states = {line.split()[1]: " ".join(line.split()[2:])
              for line in listing.splitlines()[2:] if line.strip()}
    assert states == {"node-vm1": "running", "node-vm2": "shut off"}
    assert "node-net" in daemon.virsh("net-list", "--all", "--name", uri=uri).split()
    assert "node-pool" in daemon.virsh("pool-list", "--all", "--name", uri=uri).split()
    # each connection gets its own copy: a change through one is gone for the next
    daemon.virsh("destroy", "node-vm1", uri=uri)
    assert daemon.virsh("domstate", "node-vm1", uri=uri).strip() == "running"


def test_qemu_driver_answers(daemon):
    assert "<capabilities>" in daemon.virsh("capabilities")


def test_virsh_failure_raises(daemon):
    with pytest.raises(DaemonError, match="no-such-domain"):
        daemon.virsh("domstate", "no-such-domain", uri=daemon.uri())
    assert daemon.virsh("domstate", "no-such-domain", uri=daemon.uri(), check=False).strip() == ""


def test_kill_makes_the_socket_refuse(tmp_path):
    with PrivateDaemon(tmp_path / "d") as other:
        pid = other.pid
        assert not refuses(other.socket_path)
        other.kill()
        assert not other.running
        assert not Path(f"/proc/{pid}").exists()
        assert refuses(other.socket_path)
        other.kill()  # harmless twice
    other.stop()  # and stop() after the with block too


def test_restart_after_kill(tmp_path):
    with PrivateDaemon(tmp_path / "d") as other:
        other.kill()
        other.start()
        assert "test" in names(other, other.uri())


_STARTER = """
import signal, sys
from aiovirt.testing.daemon import PrivateDaemon
daemon = PrivateDaemon(sys.argv[1]).start()
print(daemon.pid, flush=True)
signal.pause()
"""


def test_a_daemon_ends_when_the_process_that_started_it_is_killed(tmp_path):
    """A test run killed outright (SIGKILL: no exit handler, no ``stop()``) leaves no
    libvirtd behind: its watchdog sees the pipe only that process held close and ends it;
    while the process lives, and after ``stop()``, the watchdog does nothing."""
    import select
    import signal
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    with subprocess.Popen([sys.executable, "-c", _STARTER, str(tmp_path / "d")],
                          stdout=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": root}) as starter:
        try:
            assert starter.stdout is not None
            pid = int(starter.stdout.readline())
            daemon = os.pidfd_open(pid)
            try:
                assert select.select([daemon], [], [], 0)[0] == []   # alive while its owner is
                os.kill(pid, signal.SIGSTOP)   # (a stopped one used to ignore the watchdog's TERM)
                starter.send_signal(signal.SIGKILL)
                starter.wait()
                ended, _, _ = select.select([daemon], [], [], 30)
                assert ended, f"libvirtd {pid} still runs 30 s after its owner was killed"
            finally:
                os.close(daemon)
        finally:
            if starter.poll() is None:
                starter.kill()
    # the watchdog of a daemon stopped as usual is gone with it
    with PrivateDaemon(tmp_path / "e") as other:
        watchdog = other._watchdog
        assert watchdog is not None and watchdog.poll() is None
    assert watchdog.poll() is not None and other._watchdog is None


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroup directories need root")
def test_a_start_removes_cgroups_left_by_a_dead_run(tmp_path):
    """The cgroup directories of a daemon whose process died before removing them
    (``aiovirt-PID-*``, PID gone) are removed by the next start; a live process's are not."""
    import subprocess
    import sys

    from aiovirt.testing.daemon import _cgroup_bases

    bases = _cgroup_bases()
    if not bases:
        pytest.skip("no cgroup hierarchy of ours is writable here")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    base = bases[0][1]
    stale = Path(base, f"aiovirt-{gone}-{uuid.uuid4().hex[:6]}")
    live = Path(base, f"aiovirt-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    for made in (stale, live):
        try:
            (made / "machine").mkdir(parents=True)
        except OSError as exc:
            pytest.skip(f"cannot make a cgroup under {base}: {exc}")
    try:
        with PrivateDaemon(tmp_path / "d"):
            assert not stale.exists()
            assert live.is_dir()
    finally:
        for made in (stale, live):
            for leftover in (made / "machine", made):
                if leftover.exists():
                    leftover.rmdir()


def test_start_failure_reports_the_log(tmp_path):
    broken = PrivateDaemon(tmp_path / "d", extra_config={"max_workers": "many"})
    with pytest.raises(DaemonError, match="max_workers"):
        broken.start(timeout=10)
    assert not broken.running


def test_workdir_too_long_for_sockets(tmp_path):
    with pytest.raises(DaemonError, match="too long"):
        PrivateDaemon(tmp_path / ("x" * 120)).start()


@as_root
def test_second_daemon_has_its_own_qemu_state(daemon, tmp_path):
    name = unique("only-here")
    with PrivateDaemon(tmp_path / "d") as other:
        define(other, tmp_path, name, kind="qemu")  # defining needs no /dev/kvm
        try:
            assert name in names(other)
            assert name not in names(daemon)
            assert other.virsh("capabilities") and other.tcp_port != daemon.tcp_port
        finally:
            other.virsh("undefine", name)


@pytest.mark.kvm
def test_kvm_guest_lifecycle(daemon, tmp_path):
    name = unique("kvm")
    define(daemon, tmp_path, name)
    try:
        daemon.virsh("start", name)
        assert daemon.virsh("domstate", name).strip() == "running"
        daemon.virsh("destroy", name)
        assert daemon.virsh("domstate", name).strip() == "shut off"
    finally:
        daemon.virsh("destroy", name, check=False)
        daemon.virsh("undefine", name)
    assert name not in names(daemon)
    if daemon.namespaced:
        assert (Path(daemon.guest_log_dir) / f"{name}.log").exists()


@pytest.mark.kvm
@as_root
def test_same_guest_name_in_two_daemons(daemon, tmp_path):
    """Guests of the same name (and id) in two daemons neither meet nor disturb each other."""
    name = unique("twin")
    with PrivateDaemon(tmp_path / "d") as other:
        for each in (daemon, other):
            define(each, tmp_path, name)
            each.virsh("start", name)
        try:
            other.virsh("destroy", name)
            assert daemon.virsh("domstate", name).strip() == "running"
        finally:
            for each in (daemon, other):
                each.virsh("destroy", name, check=False)
                each.virsh("undefine", name)


@pytest.mark.kvm
@as_root
def test_stop_after_kill_ends_the_guests(tmp_path):
    """QEMU outlives a killed libvirtd, as after a crash; stop() then ends it."""
    name = unique("orphan")
    other = PrivateDaemon(tmp_path / "d").start()
    try:
        define(other, tmp_path, name)
        other.virsh("start", name)
        guest = int(Path(f"/proc/{other.pid}/root/run/libvirt/qemu/{name}.pid").read_text())
        other.kill()
        assert PrivateDaemon._alive(guest)
    finally:
        other.stop()
    assert not PrivateDaemon._alive(guest)


def test_cpus_pin_libvirtd_itself(tmp_path):
    cpu = max(os.sched_getaffinity(0))
    with PrivateDaemon(tmp_path / "d", cpus={cpu}) as pinned:
        assert pinned.pid is not None
        assert os.sched_getaffinity(pinned.pid) == {cpu}
        assert Path(f"/proc/{pinned.pid}/exe").resolve().name == "libvirtd"
        assert "Running hypervisor: QEMU" in pinned.virsh("version")


def test_threads_get_every_cpu_back_once_started(daemon):
    allowed = os.sched_getaffinity(0)
    tasks = os.listdir(f"/proc/{daemon.pid}/task")
    assert len(tasks) > 1
    assert all(os.sched_getaffinity(int(t)) == allowed for t in tasks)


@as_root
def test_daemons_keep_each_others_qemu_probes(tmp_path):
    """Every daemon reads the host's CPUID on the same CPU, so the shared capabilities cache
    one daemon probed is valid for the next (libvirt probes again, and rewrites the entry,
    when the CPUID it read at start-up differs from the prober's)."""
    if not Path(DEFAULT_CAPS_CACHE).is_dir():
        pytest.skip(f"no shared QEMU capabilities cache at {DEFAULT_CAPS_CACHE}")
    with PrivateDaemon(tmp_path / "a") as first:
        first.virsh("domcapabilities", "--virttype", "kvm")
    entries = {p: p.stat().st_mtime_ns for p in Path(DEFAULT_CAPS_CACHE).glob("*.xml")}
    assert entries
    with PrivateDaemon(tmp_path / "b") as second:
        second.virsh("domcapabilities", "--virttype", "kvm")
    assert {p: p.stat().st_mtime_ns for p in entries} == entries
