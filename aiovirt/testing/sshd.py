"""A private OpenSSH server on a loopback port, for tests of the ssh transport.

``PrivateSSHD`` generates a host key and a user key in its own directory, authorises the user
key, writes its own ``sshd_config`` and runs ``sshd -D -e -f CONFIG`` as our child; leaving the
``with`` block kills and reaps it.  Public-key login only (no passwords, no PAM), so a client
never blocks on a prompt.  ``binds`` runs it in a private mount namespace with directories
bind-mounted (e.g. a private libvirtd's socket directory over ``/run/libvirt``, so that
``virt-ssh-helper`` in its sessions finds that daemon); that needs root.

The user's ``~/.ssh`` is never touched: clients pass ``keyfile`` and ``known_hosts`` (both in
the server's directory).  Standard library only.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Self
from urllib.parse import quote

from .daemon import _free_port
from .server import ServerProcess, process_table

__all__ = ["PrivateSSHD", "SSHDError", "ssh_children"]


class SSHDError(RuntimeError):
    """The private sshd could not start; the message carries its output."""


def ssh_children() -> set[int]:
    """This process's child processes named ssh (zombies included), read from /proc: what a
    test checks to see that a connection left no tunnel behind."""
    me = os.getpid()
    return {pid for pid, (parent, name) in process_table().items()
            if parent == me and name == "ssh"}


def _find(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if found is None:
        raise SSHDError(f"cannot find {name}: is openssh-server installed?")
    return found


def keygen(path: str | os.PathLike[str], comment: str = "aiovirt-test") -> Path:
    """A new passphrase-less ed25519 key pair at ``path`` (and ``path.pub``)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run([_find("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=30)
    return path


class PrivateSSHD(ServerProcess):
    """An sshd of our own on ``127.0.0.1:port`` that lets ``user`` in with ``user_key``."""

    name = "sshd"
    Error = SSHDError

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *,
                 port: int | None = None, binds: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aiovirt-sshd-")).resolve()
        self.port = port or _free_port()
        self.host = "127.0.0.1"
        self.binds = dict(binds or {})          # source directory -> mount point
        self.host_key = self.workdir / "host_key"
        self.user_key = self.workdir / "user_key"
        self.known_hosts = self.workdir / "known_hosts"
        self.config = self.workdir / "sshd_config"
        self.log_path = self.workdir / "sshd.log"

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        keygen(self.host_key, "aiovirt-test-host")
        keygen(self.user_key, "aiovirt-test-user")
        (self.workdir / "authorized_keys").write_text(Path(f"{self.user_key}.pub").read_text())
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        settings = {
            "Port": self.port, "ListenAddress": self.host, "HostKey": self.host_key,
            "PidFile": self.workdir / "sshd.pid",
            "AuthorizedKeysFile": self.workdir / "authorized_keys",
            "PermitRootLogin": "prohibit-password", "PubkeyAuthentication": "yes",
            "PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no",
            "UsePAM": "no", "StrictModes": "no", "PrintMotd": "no", "PrintLastLog": "no",
            "UseDNS": "no", "X11Forwarding": "no", "LogLevel": "VERBOSE",
            "AcceptEnv": "none", "MaxStartups": "100",
        }
        self.config.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))

    def _command(self) -> list[str]:
        sshd = [_find("sshd"), "-D", "-e", "-f", str(self.config)]   # sshd wants a full path
        if not self.binds:
            return sshd
        q = shlex.quote
        steps = [f"mount --bind {q(source)} {q(target)}" for source, target in self.binds.items()]
        script = " && ".join([*steps, "exec " + " ".join(q(part) for part in sshd)])
        return [_find("unshare"), "--mount", "--propagation", "private", "sh", "-c", script]

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as probe:
                probe.settimeout(2)
                return probe.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def start(self, timeout: float = 15.0) -> Self:
        """Write keys and config, start sshd; return once its port accepts connections."""
        if self.running:
            return self
        self._write_files()
        self.log_path.unlink(missing_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # its privilege-separation dir
        self._spawn(timeout, f"{self.host}:{self.port}")
        return self

    def uri(self, driver: str = "test", path: str = "/default", user: str = "root",
            transport: str = "ssh", **params: str) -> str:
        """A URI through this server: our key and known_hosts, no tty prompts, plus
        ``params``."""
        query = {"keyfile": str(self.user_key), "known_hosts": str(self.known_hosts),
                 "no_tty": "1", **params}
        text = "&".join(f"{key}={quote(value, safe='/:,')}" for key, value in query.items())
        return f"{driver}+{transport}://{user}@{self.host}:{self.port}{path}?{text}"
