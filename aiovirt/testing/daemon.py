"""A private libvirtd: its own sockets, TCP on loopback, and (as root) its own QEMU state.

Tests, benchmarks and the demo start one with ``PrivateDaemon``::

    with PrivateDaemon() as daemon:
        daemon.virsh("list", "--all")                  # QEMU driver, qemu+unix:///system
        uri = daemon.uri("test")                        # test+unix:///default?socket=...

libvirtd runs as our child (``--listen``, not ``--daemon``), so ``pid`` is libvirtd itself and
``kill()`` really kills it.  As root it runs in a private mount namespace:

* tmpfs over ``/run/libvirt``, ``/var/lib/libvirt`` and ``/var/cache/libvirt``;
* ``WORKDIR/var-log-libvirt`` over ``/var/log/libvirt``, so guest logs
  (``guest_log_dir``) outlive the daemon;
* ``WORKDIR/etc-libvirt`` over ``/etc/libvirt``: the host's top-level ``*.conf`` files (not its
  domain, network or hook definitions) and a ``qemu.conf`` that runs QEMU as root with file
  logging and no security driver;
* a per-daemon directory in every cgroup hierarchy over that hierarchy's mount point, so
  libvirt's ``/machine/qemu-ID-NAME`` groups of two daemons never meet (without it, guests of
  the same id and name in two daemons share one cgroup);
* a shared QEMU capabilities cache (``qemu_caps_cache``), since probing the QEMU binaries
  takes 3-4 s each on a daemon's first QEMU call; libvirt checks each entry against the
  binaries' and its own ctimes, so sharing it is safe.  It also drops an entry whose host
  CPUID differs from the one the daemon read when its drivers started, and CPUID differs
  per CPU (the x2APIC id): so every daemon starts on the same CPU and gets the others
  once its drivers are up (else daemons on different CPUs probe again in turn).

So any number of private daemons run side by side without seeing each other or a system
daemon.  Nothing outlives the process that started one: ``stop()`` (also at exit) ends
libvirtd and its guests, and if that process is killed outright (no exit handler runs) a
watchdog shell ends them and removes our cgroup directories; a start also removes the
directories of daemons whose process is gone.  Not as root, the namespace is skipped: the test driver works, the QEMU driver is
libvirt's session mode.  Standard library only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Self

__all__ = ["DEFAULT_CAPS_CACHE", "DaemonError", "PrivateDaemon"]

# Directories whose contents belong to one daemon: tmpfs over each inside the namespace
# (/var/log/libvirt gets a directory of the workdir instead, see above).
STATE_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt")
LOG_DIR = "/var/log/libvirt"
CAPS_DIR = "/var/cache/libvirt/qemu/capabilities"
DEFAULT_CAPS_CACHE = "/var/cache/aiovirt/qemu-capabilities"
QEMU_SETTINGS = {  # QEMU as root, logs to files (no virtlogd), no SELinux/AppArmor labelling
    "user": '"root"', "group": '"root"', "stdio_handler": '"file"', "security_driver": '"none"',
}
SOCKET_NAMES = ("libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock")
_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes including the terminating NUL

_running: weakref.WeakSet[PrivateDaemon] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Do not leave daemons (and their guests) behind when the interpreter exits."""
    for daemon in list(_running):
        with contextlib.suppress(Exception):  # best effort at exit
            daemon.stop()


# The watchdog (``PrivateDaemon._watch``): $0 is libvirtd's pid, $@ our cgroup directories.
# Once its stdin ends: SIGTERM (and SIGCONT: a test may have stopped it) to libvirtd if that
# pid is still one, SIGKILL to the guests in our cgroups (cgroup v2's cgroup.kill), SIGKILL to
# libvirtd if it is still there after 10 s, then our cgroup directories removed, deepest
# first (a few tries while the guests die).
_WATCHDOG = """
read -r _
grep -qs libvirtd "/proc/$0/cmdline" && kill -TERM "$0" && kill -CONT "$0"
for group in "$@"; do echo 1 > "$group/cgroup.kill"; done 2>/dev/null
tries=0
while [ -d "/proc/$0" ] && [ $tries -lt 100 ]; do sleep 0.1; tries=$((tries + 1)); done
grep -qs libvirtd "/proc/$0/cmdline" && kill -KILL "$0"
for attempt in 1 2 3 4 5 6 7 8 9 10; do
    left=0
    for group in "$@"; do
        [ -d "$group" ] || continue
        find "$group" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "$group" ] && left=1
    done
    [ $left -eq 0 ] && break
    sleep 0.2
done
exit 0
"""


def _sweep_stale_groups(base: str) -> None:
    """Remove the empty cgroup directories a private daemon of a process that is gone left
    under ``base`` (``aiovirt-PID-*``: its run was killed before it could remove them)."""
    try:
        entries = os.listdir(base)
    except OSError:
        return
    for entry in entries:
        parts = entry.split("-")
        if len(parts) != 3 or parts[0] != "aiovirt" or not parts[1].isdigit() or \
                os.path.exists(f"/proc/{parts[1]}"):
            continue
        for dirpath, _, _ in sorted(os.walk(os.path.join(base, entry)),
                                    key=lambda walked: -len(walked[0])):
            with contextlib.suppress(OSError):   # busy (a guest still in it): left
                os.rmdir(dirpath)


class DaemonError(RuntimeError):
    """The private libvirtd failed (to start, or a virsh call); the message says why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _quote(value: str | int | Sequence[str]) -> str:
    """A value as libvirtd.conf writes it: numbers bare, strings quoted, lists bracketed."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_quote(item) for item in value) + "]"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _find_libvirtd(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if found is None:
        raise DaemonError(f"cannot find {name}: is libvirt-daemon installed? "
                          "(scripts/setup installs it)")
    return found


def _cgroup_bases() -> list[tuple[str, str]]:
    """(mount point, our own cgroup directory under it) for every cgroup hierarchy mounted."""
    own: dict[str, str] = {}  # "memory" / "cpu,cpuacct" / "name=systemd" / "" (v2) -> path
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, own_path = line.split(":", 2)
        own[controllers] = own_path
    bases = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        root, mount_point = fields[3], fields[4].replace("\\040", " ")
        fstype, superopts = fields[sep + 1], set(fields[sep + 3].split(","))
        path: str | None
        if fstype == "cgroup2":
            path = own.get("")
        elif fstype == "cgroup":
            path = next((p for c, p in own.items() if c and set(c.split(",")) <= superopts),
                        None)
        else:
            continue
        if path is None:
            continue
        if root != "/":  # a mount of part of the hierarchy: our group must lie inside it
            if path != root and not path.startswith(root + "/"):
                continue
            path = path[len(root):] or "/"
        bases.append((mount_point, os.path.normpath(mount_point + "/" + path)))
    return bases


class PrivateDaemon:
    """A libvirtd of our own: private sockets, TCP on loopback, and (as root) private state."""

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *,
                 tcp_port: int | None = None, max_client_requests: int = 5,
                 keepalive_interval: int = 5, keepalive_count: int = 5,
                 extra_config: Mapping[str, str | int | Sequence[str]] | None = None,
                 env: Mapping[str, str] | None = None,
                 libvirtd: str = "libvirtd",
                 qemu_caps_cache: str | os.PathLike[str] | None = DEFAULT_CAPS_CACHE,
                 cpus: Collection[int] | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aiovirt-libvirtd-")).resolve()
        self.tcp_port: int = tcp_port or _free_port()
        self.tls_port: int = _free_port()   # listens only with extra_config listen_tls=1
        self._env = dict(env or {})         # added to libvirtd's environment
        self.socket_path = str(self.workdir / "libvirt-sock")
        self.log_path = str(self.workdir / "libvirtd.log")
        self.guest_log_dir = str(self.workdir / "var-log-libvirt" / "qemu")
        self.pid: int | None = None
        self.namespaced = os.geteuid() == 0
        self._libvirtd = libvirtd
        self._caps_cache = None if qemu_caps_cache is None else Path(qemu_caps_cache)
        # libvirtd (and what it starts) runs on these CPUs only, for its whole life; None:
        # all of ours, after a start on the first of them (see the module docstring)
        self._cpus = sorted(cpus) if cpus is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._ns_fd: int | None = None       # pins the mount namespace while we scan it
        self._ns_id: str | None = None
        self._cgroups: list[str] = []        # host-side cgroup directories we made
        self._guests_at_kill: list[int] = []
        self._watchdog: subprocess.Popen[bytes] | None = None   # see _watch
        self._watchdog_fd: int | None = None
        self._config: dict[str, str | int | Sequence[str]] = {
            "unix_sock_dir": str(self.workdir), "listen_tcp": 1, "listen_tls": 0,
            "tcp_port": str(self.tcp_port), "tls_port": str(self.tls_port),
            "listen_addr": "127.0.0.1",
            "auth_unix_rw": "none", "auth_unix_ro": "none", "auth_tcp": "none",
            "max_client_requests": max_client_requests,
            "keepalive_interval": keepalive_interval, "keepalive_count": keepalive_count,
            "log_outputs": f"3:file:{self.log_path}",
            **(extra_config or {}),
        }

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<PrivateDaemon {self.socket_path} tcp={self.tcp_port} {state}>"

    @property
    def running(self) -> bool:
        """Whether the libvirtd process is alive."""
        return self._process is not None and self._process.poll() is None

    # -- lifetime -------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Self:
        """Start libvirtd; return once its read-write UNIX socket accepts connections (and,
        unless ``cpus`` pins it, once its drivers are up: see ``_spread``)."""
        if self._process is not None:
            if self.running:
                return self
            self.stop()  # killed or died: clear up before starting again
        longest = str(self.workdir / max(SOCKET_NAMES, key=len))
        if len(os.fsencode(longest)) > _UNIX_PATH_MAX:
            raise DaemonError(f"workdir {self.workdir} is too long for UNIX socket paths "
                              f"({longest} exceeds {_UNIX_PATH_MAX} bytes)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in SOCKET_NAMES:  # stale sockets of an earlier run would fool _accepts()
            Path(self.workdir, name).unlink(missing_ok=True)
        config = self.workdir / "libvirtd.conf"
        config.write_text("".join(f"{k} = {_quote(v)}\n" for k, v in self._config.items()))
        command = [_find_libvirtd(self._libvirtd), "--listen", "-f", str(config),
                   "-p", str(self.workdir / "libvirtd.pid")]
        if self.namespaced:
            command = self._namespaced(command)
        # Each daemon starts on one CPU, the same for all, so that the CPUID its QEMU driver
        # reads then matches the shared cache's probes (see ``cpus``); ``_spread`` gives it
        # back the CPUs it would have had.  taskset execs: the process we hold is libvirtd.
        allowed = os.sched_getaffinity(0)
        cpus = self._cpus if self._cpus is not None else [min(allowed)]
        command = ["taskset", "-c", ",".join(map(str, cpus)), *command]
        with open(self.workdir / "libvirtd.stderr", "wb") as stderr:
            try:
                self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                                 stdout=stderr, stderr=stderr,
                                                 start_new_session=True,
                                                 env={**os.environ, **self._env})
            except OSError as exc:
                self._remove_cgroups()
                raise DaemonError(f"cannot run {command[0]}: {exc}") from exc
        self.pid = self._process.pid
        _running.add(self)
        self._watch(self._process.pid)
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self._process.poll() is not None:
                status, log = self._process.returncode, self.log_tail()
                self.stop()
                raise DaemonError(f"libvirtd exited with status {status} before its socket "
                                  f"accepted connections\n{log}")
            if time.monotonic() > deadline:
                log = self.log_tail()
                self.stop()
                raise DaemonError(f"libvirtd did not open {self.socket_path} within "
                                  f"{timeout} s\n{log}")
            time.sleep(0.01)
        if self.namespaced:
            self._pin_namespace()
        if self._cpus is None:
            self._spread(allowed, deadline)
        return self

    def _spread(self, cpus: set[int], deadline: float) -> None:
        """Once the drivers are up (libvirtd answers a client only then), let every thread
        of the daemon run on ``cpus`` again."""
        assert self.pid is not None
        # a daemon that does not answer (its caller learns it from its first call), or no
        # virsh here: its threads get the CPUs back all the same
        with contextlib.suppress(DaemonError, OSError):
            self.virsh("uri", uri=self.uri(), timeout=max(1.0, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{self.pid}/task"):
                with contextlib.suppress(OSError):   # a thread that has just ended
                    os.sched_setaffinity(int(task), cpus)

    def _namespaced(self, command: list[str]) -> list[str]:
        """Wrap ``command`` to run in a private mount namespace with private libvirt state.

        ``unshare`` and ``sh`` both exec, so the process we hold is libvirtd itself.
        """
        etc = self.workdir / "etc-libvirt"
        etc.mkdir(exist_ok=True)
        host_etc = Path("/etc/libvirt")
        if host_etc.is_dir():  # top-level settings only: no host domains, networks or hooks
            for item in host_etc.iterdir():
                if item.is_file() and not (etc / item.name).exists():
                    shutil.copy2(item, etc / item.name)
        qemu_conf = etc / "qemu.conf"
        lines = [line for line in (qemu_conf.read_text().splitlines()
                                   if qemu_conf.exists() else [])
                 if line.split("=")[0].strip() not in QEMU_SETTINGS]
        lines += [f"{key} = {value}" for key, value in QEMU_SETTINGS.items()]
        qemu_conf.write_text("\n".join(lines) + "\n")
        logs = self.workdir / "var-log-libvirt"
        (logs / "qemu").mkdir(parents=True, exist_ok=True)

        q = shlex.quote
        steps = ["set -e"]
        steps += [f"mkdir -p {d}; mount -t tmpfs -o mode=0755 tmpfs {d}" for d in STATE_DIRS]
        steps.append(f"mkdir -p {LOG_DIR}; mount --bind {q(str(logs))} {LOG_DIR}")
        steps.append(f"mkdir -p /etc/libvirt; mount --bind {q(str(etc))} /etc/libvirt")
        if self._caps_cache is not None:
            try:
                self._caps_cache.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError:
                pass
            else:
                steps.append(f"mkdir -p {CAPS_DIR}; "
                             f"mount --bind {q(str(self._caps_cache))} {CAPS_DIR}")
        for mount_point, group in self._make_cgroups():
            steps.append(f"mount --bind {q(group)} {q(mount_point)}")
        steps.append('exec "$@"')
        return ["unshare", "--mount", "--propagation", "private",
                "sh", "-c", "\n".join(steps), "libvirtd", *command]

    def _make_cgroups(self) -> list[tuple[str, str]]:
        """A fresh directory under our own cgroup in each hierarchy (best effort)."""
        name = f"aiovirt-{os.getpid()}-{secrets.token_hex(3)}"
        made = []
        try:
            bases = _cgroup_bases()
        except (OSError, ValueError):
            return []
        for mount_point, base in bases:
            _sweep_stale_groups(base)
            group = os.path.join(base, name)
            try:
                os.mkdir(group)
            except OSError:
                continue
            try:
                if os.path.exists(os.path.join(group, "cpuset.cpus")):
                    self._fill_cpuset(base, group)
            except OSError:
                for leftover in (os.path.join(group, "machine"), group):
                    with contextlib.suppress(OSError):
                        os.rmdir(leftover)
                continue
            self._cgroups.append(group)
            made.append((mount_point, group))
        return made

    @staticmethod
    def _fill_cpuset(base: str, group: str) -> None:
        """A v1 cpuset group starts with no CPUs and no memory nodes, and a task cannot join
        it then (ENOSPC).  Give ours its parent's, have its children inherit them, and make
        libvirt's ``machine`` partition now: libvirt creating it while guests start
        concurrently left a guest's group empty now and then."""
        for knob in ("cpuset.cpus", "cpuset.mems"):
            Path(group, knob).write_text(Path(base, knob).read_text())
        Path(group, "cgroup.clone_children").write_text("1")
        machine = os.path.join(group, "machine")
        os.mkdir(machine)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if not Path(machine, knob).read_text().strip():
                Path(machine, knob).write_text(Path(group, knob).read_text())
        Path(machine, "cgroup.clone_children").write_text("1")

    def _pin_namespace(self) -> None:
        """Hold libvirtd's mount namespace open, so that its id cannot be reused by another
        namespace before ``stop()`` has ended every process left in it."""
        assert self.pid is not None
        try:
            fd = os.open(f"/proc/{self.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        ns_id = os.readlink(f"/proc/self/fd/{fd}")
        if ns_id == os.readlink("/proc/self/ns/mnt"):  # not a namespace of its own
            os.close(fd)
            return
        self._ns_fd, self._ns_id = fd, ns_id

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(self.socket_path)
            except OSError:
                return False
        return True

    def stop(self) -> None:
        """Stop libvirtd (SIGTERM, then SIGKILL after 10 s) and end every guest it left.

        Idempotent; also cleans up after ``kill()``.  Removes the workdir if we made it.
        """
        guests = self._guest_pids() + self._guests_at_kill
        process, self._process = self._process, None
        _running.discard(self)
        self._unwatch()
        if process is not None:
            if process.poll() is None:
                try:
                    os.kill(process.pid, signal.SIGCONT)  # a test may have stopped it
                except OSError:
                    pass
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._kill_leftovers(guests)
        self._guests_at_kill = []
        self._remove_cgroups()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _watch(self, pid: int) -> None:
        """Start the watchdog: a shell that waits for the end of a pipe only we hold, which
        the kernel closes when this process dies however it dies (SIGKILL, a crash: no exit
        handler runs), and then ends libvirtd (SIGTERM, if that pid is still a libvirtd) and
        the guests in our cgroups.  ``stop()`` ends the watchdog first.  Best effort: without
        ``sh`` there is none."""
        read_end, self._watchdog_fd = os.pipe()
        try:
            self._watchdog = subprocess.Popen(
                ["sh", "-c", _WATCHDOG, str(pid), *self._cgroups], stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)   # (not our Ctrl-C)
        except OSError:
            os.close(self._watchdog_fd)
            self._watchdog_fd = None
        finally:
            os.close(read_end)

    def _unwatch(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
        if self._watchdog_fd is not None:
            os.close(self._watchdog_fd)
            self._watchdog_fd = None

    def kill(self) -> None:
        """SIGKILL libvirtd now (tests use it to lose the daemon mid-call).

        Its guests keep running, as they would after a crash, until ``stop()``.
        """
        if self.running:
            assert self._process is not None
            self._guests_at_kill = self._guest_pids()
            # the whole process group (libvirtd's own session): a helper it has just forked
            # holds its listening socket until it execs or exits, and a killed daemon's socket
            # must refuse at once; guests run in sessions of their own and stay
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except OSError:
                self._process.kill()
            self._process.wait()

    def _guest_pids(self) -> list[int]:
        """PIDs of the QEMU processes this daemon started (from its private pid files)."""
        if self._ns_id is None or not self.running:
            return []
        pids = []
        for pidfile in Path(f"/proc/{self.pid}/root/run/libvirt/qemu").glob("*.pid"):
            if pidfile.name == "driver.pid":  # the driver's lock file holds libvirtd's pid
                continue
            try:
                pids.append(int(pidfile.read_text().strip()))
            except (OSError, ValueError):
                continue
        return pids

    def _kill_leftovers(self, guests: list[int]) -> None:
        """QEMU processes outlive libvirtd: end the ones it started (its pid files, our cgroups:
        each QEMU has a mount namespace of its own) and anything else left in its (pinned, so
        not reused) mount namespace, then release the namespace."""
        if self._ns_id is None:
            return
        victims = set(guests)
        for top in self._cgroups:
            for dirpath, _, files in os.walk(top):
                if "cgroup.procs" in files:
                    try:
                        victims.update(map(int, Path(dirpath, "cgroup.procs").read_text().split()))
                    except (OSError, ValueError):
                        continue
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "ns" / "mnt") == self._ns_id:
                        victims.add(int(entry.name))
                except OSError:
                    continue
        victims.discard(os.getpid())
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        while victims and time.monotonic() < deadline:
            victims = {pid for pid in victims if self._alive(pid)}
            if victims:
                time.sleep(0.01)
        if self._ns_fd is not None:
            os.close(self._ns_fd)
        self._ns_fd = self._ns_id = None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def _remove_cgroups(self) -> None:
        """Remove our cgroup directories, deepest first (libvirt's own ones included)."""
        deadline = time.monotonic() + 2
        while self._cgroups:
            left = []
            for top in self._cgroups:
                for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                    try:
                        os.rmdir(dirpath)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        left.append(top)
                        break
            self._cgroups = left
            if left:
                if time.monotonic() > deadline:  # still busy: leave them, they are harmless
                    self._cgroups = []
                    return
                time.sleep(0.02)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- use ------------------------------------------------------------------------------------
    def uri(self, driver: str = "test", path: str = "/default", transport: str = "unix") -> str:
        """A URI reaching ``driver`` on this daemon over ``transport`` ("unix", "tcp" or
        "tls"; TLS needs ``listen_tls=1`` and the key and certificates in ``extra_config``).

        ``uri()`` is the shared test-driver host, ``uri("qemu", "/system")`` the QEMU driver,
        ``uri(path="/abs/node.xml")`` a test-driver host with private per-connection state.
        """
        path = os.fspath(path)
        if transport == "unix":
            return f"{driver}+unix://{path}?socket={self.socket_path}"
        if transport == "tcp":
            return f"{driver}+tcp://127.0.0.1:{self.tcp_port}{path}"
        if transport == "tls":
            return f"{driver}+tls://localhost:{self.tls_port}{path}"
        raise ValueError(f"transport {transport!r}: use 'unix', 'tcp' or 'tls'")

    def virsh(self, *args: str, uri: str | None = None, check: bool = True,
              timeout: float = 60.0) -> str:
        """Run ``virsh -c URI args...`` (default: this daemon's QEMU driver); its stdout.

        With ``check`` (the default) a failure raises DaemonError carrying virsh's stderr.
        """
        command = ["virsh", "-c", uri or self.uri("qemu", "/system"), *args]
        try:
            result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DaemonError(f"{shlex.join(command)} took over {timeout} s") from None
        if check and result.returncode != 0:
            raise DaemonError(f"{shlex.join(command)} failed ({result.returncode}): "
                              f"{result.stderr.strip()}")
        return result.stdout

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of libvirtd's log and stderr, for error messages."""
        text = ""
        for name in (self.log_path, str(self.workdir / "libvirtd.stderr")):
            try:
                text += Path(name).read_text(errors="replace")
            except OSError:
                pass
        return "\n".join(text.splitlines()[-lines:])
