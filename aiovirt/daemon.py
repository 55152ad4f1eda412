"""A private libvirtd: its own sockets, TCP on loopback, and (as root) its own QEMU state.

Tests, benchmarks and the demo start one with ``PrivateDaemon``.  As root, libvirtd runs in a
private mount namespace with tmpfs over libvirt's state directories and a private
``/etc/libvirt``, so it neither sees nor disturbs a system daemon or another private one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["DaemonError", "PrivateDaemon"]

# Directories whose contents belong to one daemon; tmpfs over each inside the namespace.
STATE_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")
QEMU_SETTINGS = {  # QEMU as root, logs to files (no virtlogd), no SELinux/AppArmor labelling
    "user": '"root"', "group": '"root"', "stdio_handler": '"file"', "security_driver": '"none"',
}


class DaemonError(RuntimeError):
    """The private libvirtd did not start; the message ends with the tail of its log."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _quote(value: str | int) -> str:
    return str(value) if isinstance(value, int) else '"' + value.replace('"', '\\"') + '"'


class PrivateDaemon:
    """A libvirtd of our own: private sockets, TCP on loopback, and (as root) private state."""

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *,
                 tcp_port: int | None = None, max_client_requests: int = 5,
                 keepalive_interval: int = 5, keepalive_count: int = 5,
                 extra_config: Mapping[str, str | int] | None = None,
                 libvirtd: str = "libvirtd") -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aiovirt-libvirtd-")).resolve()
        self.tcp_port = tcp_port or _free_port()
        self.socket_path = str(self.workdir / "libvirt-sock")
        self.log_path = str(self.workdir / "libvirtd.log")
        self.pid: int | None = None
        self._libvirtd = libvirtd
        self._process: subprocess.Popen[bytes] | None = None
        self._namespace: str | None = None
        self._guests_at_kill: list[int] = []
        self._config = {
            "unix_sock_dir": str(self.workdir), "listen_tcp": 1, "listen_tls": 0,
            "tcp_port": str(self.tcp_port), "listen_addr": "127.0.0.1",
            "auth_unix_rw": "none", "auth_unix_ro": "none", "auth_tcp": "none",
            "max_client_requests": max_client_requests,
            "keepalive_interval": keepalive_interval, "keepalive_count": keepalive_count,
            "log_outputs": f"3:file:{self.log_path}",
            **(extra_config or {}),
        }

    # -- lifetime -------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> PrivateDaemon:
        """Start libvirtd and return once its UNIX socket accepts connections."""
        if self._process is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "libvirtd.conf"
        config.write_text("".join(f"{k} = {_quote(v)}\n" for k, v in self._config.items()))
        command = [self._libvirtd, "--listen", "-f", str(config),
                   "-p", str(self.workdir / "libvirtd.pid")]
        if os.geteuid() == 0:
            command = self._namespaced(command)
        stderr = open(self.workdir / "libvirtd.stderr", "wb")
        try:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                             stdout=stderr, stderr=stderr,
                                             start_new_session=True)
        except FileNotFoundError as exc:
            raise DaemonError(f"cannot run {command[0]}: {exc}; is libvirt-daemon "
                              "installed (scripts/setup installs it)?") from None
        finally:
            stderr.close()
        self.pid = self._process.pid
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self._process.poll() is not None:
                raise DaemonError(f"libvirtd exited with status {self._process.returncode}"
                                  f"\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise DaemonError(f"libvirtd did not open {self.socket_path} within "
                                  f"{timeout} s\n{self.log_tail()}")
            time.sleep(0.02)
        try:
            self._namespace = os.readlink(f"/proc/{self.pid}/ns/mnt")
        except OSError:
            self._namespace = None
        return self

    def _namespaced(self, command: list[str]) -> list[str]:
        """Run ``command`` in a private mount namespace with private libvirt state."""
        etc = self.workdir / "etc-libvirt"
        if not etc.exists():
            if Path("/etc/libvirt").is_dir():
                shutil.copytree("/etc/libvirt", etc, symlinks=True)
            else:
                etc.mkdir()
        qemu_conf = etc / "qemu.conf"
        lines = [line for line in (qemu_conf.read_text().splitlines()
                                   if qemu_conf.exists() else [])
                 if line.split("=")[0].strip() not in QEMU_SETTINGS]
        lines += [f"{key} = {value}" for key, value in QEMU_SETTINGS.items()]
        qemu_conf.write_text("\n".join(lines) + "\n")
        mounts = "; ".join(f"mkdir -p {d} && mount -t tmpfs tmpfs {d}" for d in STATE_DIRS)
        script = (f"set -e; {mounts}; mkdir -p /etc/libvirt && mount --bind '{etc}' "
                  f"/etc/libvirt; exec \"$@\"")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                "libvirtd", *command]

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(self.socket_path)
            except OSError:
                return False
        return True

    def stop(self) -> None:
        """Stop libvirtd (SIGTERM, then SIGKILL) and any guest it left running."""
        process, self._process = self._process, None
        if process is not None:
            guests = self._guest_pids() + self._guests_at_kill
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)  # a test may have stopped it
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            self._kill_leftovers(guests)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL libvirtd now (tests use it to lose the daemon mid-call)."""
        if self._process is not None and self._process.poll() is None:
            self._guests_at_kill = self._guest_pids()
            self._process.kill()
            self._process.wait()

    def _guest_pids(self) -> list[int]:
        """PIDs of the QEMU processes this daemon started (from its private pid files)."""
        if self.pid is None:
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
        """QEMU processes outlive libvirtd: end the ones it started, and anything else left
        in its mount namespace."""
        for pid in guests:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self._namespace is None:
            return
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "mnt") == self._namespace:
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue

    def __enter__(self) -> PrivateDaemon:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- use ------------------------------------------------------------------------------------
    def uri(self, driver: str = "test", path: str = "/default", transport: str = "unix") -> str:
        """A URI reaching ``driver`` on this daemon over ``transport`` (unix or tcp)."""
        path = str(path)
        if transport == "unix":
            return f"{driver}+unix://{path}?socket={self.socket_path}"
        if transport == "tcp":
            return f"{driver}+tcp://127.0.0.1:{self.tcp_port}{path}"
        raise ValueError(f"transport {transport!r}: use 'unix' or 'tcp'")

    def virsh(self, *args: str, uri: str | None = None, check: bool = True) -> str:
        """Run ``virsh -c URI args...`` (default: this daemon's QEMU driver); its stdout."""
        result = subprocess.run(["virsh", "-c", uri or self.uri("qemu", "/system"), *args],
                                capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise DaemonError(f"virsh {' '.join(args)} failed: {result.stderr.strip()}")
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
