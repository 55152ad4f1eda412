"""The peer daemon's ``max_client_requests``, read from the configuration it started with.

No RPC procedure, admin ones included, reports it (libvirt 9.0 keeps it in the listening
service, ``virnetserverservice.c``), so for a local UNIX socket we find the daemon process
(``SO_PEERCRED``), its config file (``-f``/``--config`` in its command line, else libvirt's
default for its name and privilege) and read the file through ``/proc/PID/root``, so a daemon
in another mount namespace is read as it sees its files.  Linux only; None whenever unsure.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import struct
from pathlib import Path

from .config import ConfSyntaxError, conf_uint, parse_conf

__all__ = ["DEFAULT_MAX_CLIENT_REQUESTS", "config_path", "read_max_client_requests"]

DEFAULT_MAX_CLIENT_REQUESTS = 5        # remote_daemon_config.c, daemonConfigNew
_DAEMON_NAME = re.compile(r"(libvirtd|virt[a-z]+d)")   # libvirtd, virtqemud, virtproxyd...
_PEERCRED = struct.Struct("3i")        # struct ucred: pid, uid, gid
# remote_daemon.c's getopt_long: options taking an argument, short and long
_SHORT_WITH_ARG = "fpt"
_LONG_OPTIONS = {"config": "f", "pid-file": "p", "timeout": "t", "verbose": "v",
                 "daemon": "d", "listen": "l", "version": "V", "help": "h"}


def read_max_client_requests(sock: socket.socket) -> int | None:
    """The ``max_client_requests`` of the daemon at the other end of ``sock`` (a connected
    UNIX socket); None if not a UNIX socket, not a libvirt daemon, or not readable by us."""
    try:
        if sock.family != socket.AF_UNIX:
            return None
        pid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                               _PEERCRED.size))[0]
        if pid <= 0:
            return None
        found = config_path(pid)
        if found is None:
            return None
        path, implicit = found
        try:
            # non-blocking, and a regular file only: the path comes from the peer's command
            # line, and a FIFO there would hold the event loop in open() or read() for ever
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as file:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode):
                    return None
                if _changed_since_start(status.st_mtime, pid):
                    return None   # edited after the daemon read it: not what it runs with
                text = file.read(1 << 20).decode("utf-8", "replace")
        except FileNotFoundError:
            # libvirt ignores a missing implicit file; an explicit one would not have started
            return DEFAULT_MAX_CLIENT_REQUESTS if implicit else None
        return conf_uint(parse_conf(text, path), "max_client_requests",
                         DEFAULT_MAX_CLIENT_REQUESTS)
    except (OSError, ValueError, ConfSyntaxError):
        return None


def config_path(pid: int) -> tuple[str, bool] | None:
    """Where daemon ``pid`` read its config, as a path we can open (under ``/proc/PID``), and
    whether it was implicit (libvirt's default, allowed to be missing); None if ``pid`` is not
    a libvirt daemon.  Raises OSError when its ``/proc`` entries cannot be read."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if not argv or not argv[0]:
        return None
    args = [os.fsdecode(a) for a in argv[:-1]] if argv[-1] == b"" else \
        [os.fsdecode(a) for a in argv]
    name = os.path.basename(args[0])
    if not _DAEMON_NAME.fullmatch(name):
        return None   # e.g. systemd, which listened for a socket-activated daemon
    explicit = _config_option(args[1:])
    if explicit is not None:
        if os.path.isabs(explicit):
            return f"/proc/{pid}/root{explicit}", False
        return f"/proc/{pid}/cwd/{explicit}", False
    if _effective_uid(pid) == 0:   # daemonConfigFilePath: SYSCONFDIR/libvirt/NAME.conf
        return f"/proc/{pid}/root/etc/libvirt/{name}.conf", True
    return f"/proc/{pid}/root{_user_config_dir(pid)}/libvirt/{name}.conf", True


def _config_option(args: list[str]) -> str | None:
    """The last ``-f FILE`` / ``--config FILE`` as GNU getopt_long reads the arguments."""
    found = None
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            matches = [n for n in _LONG_OPTIONS if n.startswith(key)] if key else []
            option = key if key in _LONG_OPTIONS else (matches[0] if len(matches) == 1 else "")
            if _LONG_OPTIONS.get(option) in tuple(_SHORT_WITH_ARG) and not eq:
                value = args[i] if i < len(args) else ""
                i += 1
            if option == "config":
                found = value
        elif arg.startswith("-") and len(arg) > 1:
            for pos, letter in enumerate(arg[1:], 1):
                if letter in _SHORT_WITH_ARG:
                    value = arg[pos + 1:]
                    if not value:
                        value = args[i] if i < len(args) else ""
                        i += 1
                    if letter == "f":
                        found = value
                    break
    return found


def _status_field(pid: int, key: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split()[1:]
    raise OSError(f"/proc/{pid}/status has no {key}")


def _effective_uid(pid: int) -> int:
    return int(_status_field(pid, "Uid")[1])   # real, effective, saved, filesystem


def _user_config_dir(pid: int) -> str:
    """glib's ``g_get_user_config_dir`` for the daemon: $XDG_CONFIG_HOME, else
    $HOME/.config, else the passwd entry's home/.config."""
    env = dict(item.split(b"=", 1) for item in
               Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    if env.get(b"XDG_CONFIG_HOME"):
        return os.fsdecode(env[b"XDG_CONFIG_HOME"])
    if env.get(b"HOME"):
        return os.fsdecode(env[b"HOME"]) + "/.config"
    import pwd  # noqa: PLC0415 - only for a daemon without HOME
    return pwd.getpwuid(_effective_uid(pid)).pw_dir + "/.config"


def _changed_since_start(mtime: float, pid: int) -> bool:
    """Whether a file was modified after process ``pid`` started (a second's slack)."""
    start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    started = boot + start_ticks / os.sysconf("SC_CLK_TCK")
    return mtime > started + 1
