"""A private MIT Kerberos KDC on a loopback port, for tests of SASL GSSAPI.

``PrivateKDC`` makes a realm in its own directory (``kdb5_util``), adds principals
(``kadmin.local``), writes keytabs and a ``krb5.conf`` naming only itself, and runs
``krb5kdc -n`` as our child; leaving the ``with`` block kills and reaps it.  Nothing outside
its directory is read or written: clients and servers are pointed at it through
``env()`` (``KRB5_CONFIG``, ``KRB5CCNAME``, ``KRB5_KTNAME``, no replay cache).  Packages:
krb5-kdc and krb5-admin-server (``kadmin.local``); krb5-user for ``kinit``.  Standard
library only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Self

from .daemon import _free_port
from .server import ServerProcess

__all__ = ["KDCError", "PrivateKDC", "missing_kdc_tools"]

_TOOLS = {"krb5kdc": "krb5-kdc", "kdb5_util": "krb5-kdc", "kadmin.local": "krb5-admin-server",
          "kinit": "krb5-user"}


class KDCError(RuntimeError):
    """The private KDC could not be made or started; the message carries the tool's output."""


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()),
        None)


def missing_kdc_tools() -> str | None:
    """Why no private KDC can run here (a missing tool and its Debian package), else None."""
    for tool, package in _TOOLS.items():
        if _find(tool) is None:
            return f"{tool} is missing (package {package})"
    return None


class PrivateKDC(ServerProcess):
    """A KDC of our own for ``realm`` on ``127.0.0.1:port`` (UDP and TCP)."""

    name = "krb5kdc"
    Error = KDCError

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *,
                 realm: str = "AIOVIRT.TEST", port: int | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aiovirt-kdc-")).resolve()
        self.realm = realm
        self.port = port or _free_port()
        self.krb5_conf = self.workdir / "krb5.conf"
        self.kdc_conf = self.workdir / "kdc.conf"
        self.ccache = self.workdir / "ccache"
        self.log_path = self.workdir / "kdc.log"

    def env(self, **more: str) -> dict[str, str]:
        """What a client or server process needs to use this realm and nothing else."""
        return {"KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(self.kdc_conf),
                "KRB5CCNAME": f"FILE:{self.ccache}", "KRB5RCACHETYPE": "none", **more}

    def _run(self, *command: str, input: str | None = None) -> str:
        done = subprocess.run(list(command), input=input, capture_output=True, text=True,
                              env={**os.environ, **self.env()}, timeout=60, check=False)
        if done.returncode != 0:
            raise KDCError(f"{' '.join(command)} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        where = f"127.0.0.1:{self.port}"
        self.krb5_conf.write_text(
            "[libdefaults]\n"
            f" default_realm = {self.realm}\n"
            " dns_lookup_kdc = false\n dns_lookup_realm = false\n"
            " dns_canonicalize_hostname = false\n rdns = false\n"
            # a service key in the keytab is taken whatever host name the client used
            " ignore_acceptor_hostname = true\n"
            " udp_preference_limit = 1\n"   # TCP: no datagrams lost on a busy machine
            f"[realms]\n {self.realm} = {{\n  kdc = {where}\n }}\n")
        self.kdc_conf.write_text(
            f"[kdcdefaults]\n kdc_listen = {self.port}\n kdc_tcp_listen = {self.port}\n"
            f"[realms]\n {self.realm} = {{\n"
            f"  database_name = {self.workdir / 'principal'}\n"
            f"  key_stash_file = {self.workdir / 'stash'}\n"
            f"  acl_file = {self.workdir / 'kadm5.acl'}\n"
            f"  kdc_listen = {self.port}\n  kdc_tcp_listen = {self.port}\n"
            "  max_life = 1h\n }\n"
            f"[logging]\n kdc = FILE:{self.log_path}\n")
        (self.workdir / "kadm5.acl").write_text("")

    def _command(self) -> list[str]:
        return [_find("krb5kdc") or "krb5kdc", "-n", "-r", self.realm]

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env()}

    def _ready(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def start(self, timeout: float = 15.0) -> Self:
        """Make the realm's database and start the KDC; return once it answers on TCP."""
        if self.running:
            return self
        reason = missing_kdc_tools()
        if reason:
            raise KDCError(reason)
        self._write_files()
        self._run(_find("kdb5_util") or "kdb5_util", "create", "-s", "-r", self.realm,
                  "-P", "aiovirt-master-key")
        self._spawn(timeout, f"127.0.0.1:{self.port}")
        return self

    def add_user(self, name: str, password: str) -> str:
        """A principal with a password (pre-authentication required, as KDCs in use set
        it); returns ``name@REALM``."""
        self._run(_find("kadmin.local") or "kadmin.local", "-r", self.realm, "-q",
                  f"addprinc -pw {password} +requires_preauth {name}")
        return f"{name}@{self.realm}"

    def add_service(self, service: str, hosts: list[str], keytab: Path) -> Path:
        """``service/HOST`` principals with random keys, written to ``keytab``."""
        kadmin = _find("kadmin.local") or "kadmin.local"
        for host in dict.fromkeys(hosts):
            self._run(kadmin, "-r", self.realm, "-q", f"addprinc -randkey {service}/{host}")
            self._run(kadmin, "-r", self.realm, "-q", f"ktadd -k {keytab} {service}/{host}")
        return keytab

    def kinit(self, principal: str, password: str) -> None:
        """Get ``principal`` a ticket-granting ticket in this realm's credential cache."""
        self._run(_find("kinit") or "kinit", principal, input=password + "\n")

    def kdestroy(self) -> None:
        """Forget the credential cache's tickets."""
        self.ccache.unlink(missing_ok=True)
