"""A throwaway X.509 PKI for TLS tests: a CA that issues server and client certificates.

Built with ``certtool`` (gnutls-bin) when it is installed, else with the ``openssl`` command;
standard library only.  Keys are unencrypted RSA 2048 (libvirt insists on the key encipherment
usage, which certtool drops for ECDSA keys), certificates last two days unless ``issue`` is
given other dates (``not_before``/``not_after``, or ``expired=True`` for one that ended a day
ago: a test of what peers make of it).  Typical use::

    ca = CertificateAuthority.create(tmp / "ca")
    server = ca.issue(tmp / "server", "localhost", hosts=["localhost", "127.0.0.1"], server=True)
    client = ca.issue(tmp / "client", "client")
    extra_config = {"listen_tls": 1, **ca.server_config(server)}     # for libvirtd
    pkipath = ca.client_dir(tmp / "pki", client)                   # ?pkipath= for the client

or all of that at once for a daemon on loopback: ``extra_config, pkipath = loopback_tls(tmp)``.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = ["CertificateAuthority", "Issued", "PKIError", "find_tool", "loopback_tls"]

TOOLS = ("certtool", "openssl")
DAYS = 2


class PKIError(RuntimeError):
    """A certificate could not be made; the message carries the tool's command and output."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key (PEM files), and the subject it was issued to."""

    cert: Path
    key: Path
    common_name: str
    organization: str


def find_tool(preferred: str | None = None) -> str:
    """``certtool`` or ``openssl`` (``preferred`` if given), whichever is installed."""
    for name in ([preferred] if preferred else TOOLS):
        if shutil.which(name):
            return name
    raise PKIError(f"neither of {', '.join([preferred] if preferred else TOOLS)} is installed "
                   "(apt-get install gnutls-bin, or openssl)")


def _run(command: Sequence[str], cwd: Path) -> None:
    try:
        done = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PKIError(f"{' '.join(command)}: {exc}") from exc
    if done.returncode != 0:
        raise PKIError(f"{' '.join(command)} failed ({done.returncode}): "
                       f"{(done.stderr or done.stdout).strip()}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _utc(when: datetime) -> datetime:
    """``when`` in UTC, whole seconds (a naive datetime is taken to be UTC already)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).replace(microsecond=0)


def _validity(not_before: datetime | None, not_after: datetime | None, expired: bool
              ) -> tuple[datetime, datetime] | None:
    """The (start, end) a certificate is to carry, or None for the default: from now for
    ``DAYS`` days.  ``expired``: a period that ended a day ago (unless dates are given)."""
    if not_before is None and not_after is None and not expired:
        return None
    now = datetime.now(UTC)
    if expired:
        start = _utc(not_before or now - timedelta(days=DAYS + 1))
        end = _utc(not_after or now - timedelta(days=1))
        if end >= now:
            raise PKIError(f"expired=True with not_after={end.isoformat()}, which is not past")
    else:
        start = _utc(not_before or now)
        end = _utc(not_after or start + timedelta(days=DAYS))
    if end <= start:
        raise PKIError(f"not_after {end.isoformat()} is not later than not_before "
                       f"{start.isoformat()}")
    return start, end


def _new_key(tool: str, key: Path, cwd: Path) -> None:
    if tool == "certtool":
        _run(["certtool", "--generate-privkey", "--key-type=rsa", "--bits=2048",
              "--no-text", "--outfile", str(key)], cwd)
    else:
        _run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
              "-out", str(key)], cwd)
    key.chmod(0o600)


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA (``cert``, ``key``) made with ``tool``; ``issue`` signs leaves."""

    cert: Path
    key: Path
    tool: str
    common_name: str

    @classmethod
    def create(cls, directory: str | Path, common_name: str = "aiovirt test CA",
               *, tool: str | None = None) -> CertificateAuthority:
        """Make a CA in ``directory`` (``cacert.pem``, ``cakey.pem``)."""
        tool = find_tool(tool)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "cacert.pem", directory / "cakey.pem"
        _new_key(tool, key, directory)
        if tool == "certtool":
            template = directory / "ca.info"
            template.write_text(f"cn = {_quoted(common_name)}\nca\ncert_signing_key\n"
                                f"crl_signing_key\nexpiration_days = {DAYS}\n")
            _run(["certtool", "--generate-self-signed", "--load-privkey", str(key),
                  "--template", str(template), "--no-text", "--outfile", str(cert)], directory)
        else:
            _run(["openssl", "req", "-new", "-x509", "-key", str(key), "-out", str(cert),
                  "-days", str(DAYS), "-subj", f"/CN={common_name}",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"], directory)
        return cls(cert, key, tool, common_name)

    def issue(self, directory: str | Path, common_name: str, *, hosts: Iterable[str] = (),
              server: bool = False, organization: str = "aiovirt",
              not_before: datetime | None = None, not_after: datetime | None = None,
              expired: bool = False) -> Issued:
        """A key and a certificate for ``common_name`` in ``directory`` (``cert.pem``,
        ``key.pem``): for a TLS server (with ``hosts`` as DNS names or IP addresses in the
        subject alternative name) when ``server``, else for a TLS client.

        It is valid from now for two days, or from ``not_before`` to ``not_after`` (naive
        datetimes are UTC; either alone: the other follows from the default).  ``expired``
        makes one that is no longer valid: by default valid from three days ago until
        yesterday (the dates, if given, must lie in the past).  Both tools support this
        (``openssl`` through ``openssl ca``, which sets both dates)."""
        validity = _validity(not_before, not_after, expired)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "cert.pem", directory / "key.pem"
        _new_key(self.tool, key, directory)
        hosts = list(hosts)
        if self.tool == "certtool":
            if validity is None:
                dates = [f"expiration_days = {DAYS}"]
            else:
                dates = [f'activation_date = "{validity[0]:%Y-%m-%d %H:%M:%S} UTC"',
                         f'expiration_date = "{validity[1]:%Y-%m-%d %H:%M:%S} UTC"']
            lines = [f"organization = {_quoted(organization)}", f"cn = {_quoted(common_name)}",
                     *dates, "signing_key", "encryption_key",
                     "tls_www_server" if server else "tls_www_client"]
            lines += [f"{'ip_address' if _is_ip(h) else 'dns_name'} = {_quoted(h)}"
                      for h in hosts]
            template = directory / "cert.info"
            template.write_text("\n".join(lines) + "\n")
            _run(["certtool", "--generate-certificate", "--load-privkey", str(key),
                  "--load-ca-certificate", str(self.cert), "--load-ca-privkey", str(self.key),
                  "--template", str(template), "--no-text", "--outfile", str(cert)], directory)
        else:
            ext = ["basicConstraints=critical,CA:FALSE",
                   "keyUsage=critical,digitalSignature,keyEncipherment",
                   f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}"]
            if hosts:
                ext.append("subjectAltName=" + ",".join(
                    f"{'IP' if _is_ip(h) else 'DNS'}:{h}" for h in hosts))
            extfile = directory / "cert.ext"
            extfile.write_text("\n".join(ext) + "\n")
            csr = directory / "cert.csr"
            _run(["openssl", "req", "-new", "-key", str(key), "-out", str(csr),
                  "-subj", f"/O={organization}/CN={common_name}"], directory)
            if validity is None:
                _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.cert),
                      "-CAkey", str(self.key), "-CAcreateserial", "-days", str(DAYS),
                      "-extfile", str(extfile), "-out", str(cert)], directory)
            else:   # only "openssl ca" takes a start date on OpenSSL 3.0-3.3
                self._openssl_ca_sign(directory, csr, extfile, cert, *validity)
        return Issued(cert, key, common_name, organization)

    def _openssl_ca_sign(self, directory: Path, csr: Path, extfile: Path, cert: Path,
                         start: datetime, end: datetime) -> None:
        """Sign ``csr`` with ``openssl ca``, valid from ``start`` to ``end``: a throwaway
        CA database in ``directory/openssl-ca``."""
        db = directory / "openssl-ca"
        db.mkdir(exist_ok=True)
        (db / "index.txt").write_text("")
        config = db / "ca.cnf"
        config.write_text(
            "[ca]\ndefault_ca = aiovirt\n"
            f"[aiovirt]\ndir = {db}\ndatabase = {db}/index.txt\nnew_certs_dir = {db}\n"
            f"serial = {db}/serial\nunique_subject = no\ndefault_md = sha256\n"
            "policy = anything\ncopy_extensions = none\n"
            "[anything]\norganizationName = optional\ncommonName = supplied\n")
        stamp = "%Y%m%d%H%M%SZ"
        _run(["openssl", "ca", "-batch", "-notext", "-config", str(config),
              "-create_serial", "-cert", str(self.cert), "-keyfile", str(self.key),
              "-in", str(csr), "-out", str(cert), "-extfile", str(extfile),
              "-startdate", start.strftime(stamp), "-enddate", end.strftime(stamp)], directory)

    def revoke(self, path: str | Path, *revoked: Issued) -> Path:
        """Write a revocation list naming ``revoked`` to ``path`` (certtool only)."""
        if self.tool != "certtool":
            raise PKIError("revocation lists are made with certtool only (gnutls-bin)")
        path = Path(path)
        template = path.with_suffix(".info")
        template.write_text(f"crl_next_update = {DAYS}\ncrl_number = 1\n")
        loads = [f"--load-certificate={item.cert}" for item in revoked]
        _run(["certtool", "--generate-crl", "--load-ca-privkey", str(self.key),
              "--load-ca-certificate", str(self.cert), *loads, "--template", str(template),
              "--no-text", "--outfile", str(path)], path.parent)
        return path

    def server_config(self, server: Issued) -> dict[str, str]:
        """libvirtd settings that serve TLS with ``server``'s certificate and trust this CA
        for client certificates (add ``listen_tls = 1``)."""
        return {"key_file": str(server.key), "cert_file": str(server.cert),
                "ca_file": str(self.cert)}

    def client_dir(self, directory: str | Path, client: Issued | None = None) -> Path:
        """A ``pkipath=`` directory as libvirt's client reads it: this CA's ``cacert.pem``
        and, with ``client``, ``clientcert.pem`` and ``clientkey.pem``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.cert, directory / "cacert.pem")
        if client is not None:
            shutil.copyfile(client.cert, directory / "clientcert.pem")
            shutil.copyfile(client.key, directory / "clientkey.pem")
            (directory / "clientkey.pem").chmod(0o600)
        return directory


def loopback_tls(directory: str | Path) -> tuple[dict[str, str | int], Path]:
    """A CA under ``directory``, a server certificate for ``localhost`` and ``127.0.0.1`` and
    a client certificate: libvirtd's settings to serve TLS with them (``listen_tls`` on) and
    the client's ``pkipath=`` directory."""
    directory = Path(directory)
    ca = CertificateAuthority.create(directory / "ca")
    server = ca.issue(directory / "server", "localhost", hosts=["localhost", "127.0.0.1"],
                      server=True)
    pkipath = ca.client_dir(directory / "pki", ca.issue(directory / "client", "client"))
    return {"listen_tls": 1, **ca.server_config(server)}, pkipath
