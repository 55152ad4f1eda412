"""Authentication: SCRAM against the RFC test vectors, the SASL exchange against scripted
servers, and SASL against a real libvirtd (Cyrus SASL with a private sasldb)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiovirt
from aiovirt.client import auth as auth_module
from aiovirt.client.auth import Credential, Credentials, CredentialType, authenticate
from aiovirt.client.reconnect import ConnectionState, Reconnect
from aiovirt.client.sasl import Plain, SaslError, Scram, choose_mechanism, gssapi_available, \
    parse_mechlist
from aiovirt.client.uri import parse_uri
from aiovirt.errors import AuthenticationError, LibvirtError
from aiovirt.protocol import remote
from aiovirt.testing.daemon import PrivateDaemon
from aiovirt.testing.kdc import PrivateKDC, missing_kdc_tools
from aiovirt.testing.pki import loopback_tls

USERS = {"alice": "wonder-land", "bob": "b0b,=pass"}
KERBEROS_PASSWORD = "k3rb-alice"


# -- SCRAM, sans-IO -------------------------------------------------------------------------
def test_scram_sha1_rfc5802_vector():
    scram = Scram("SCRAM-SHA-1", "user", "pencil", nonce="fyko+d2lbbFgONRv9qkxdawL")
    assert scram.initial() == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    final = scram.step(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,"
                       b"i=4096")
    assert final == (b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                     b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
    assert not scram.done
    assert scram.step(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=") == b""
    assert scram.done


def test_scram_sha256_rfc7677_vector():
    scram = Scram("SCRAM-SHA-256", "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert scram.initial() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = scram.step(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                       b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    scram.step(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert scram.done


def _started(nonce: str = "abc") -> Scram:
    scram = Scram("SCRAM-SHA-256", "user", "pencil", nonce=nonce)
    scram.initial()
    return scram


def test_scram_refuses_a_wrong_server_signature():
    scram = _started("rOprNGfwEbeRWgbNEkqO")
    scram.step(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
               b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    with pytest.raises(SaslError, match="signature is wrong"):
        scram.step(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert not scram.done


@pytest.mark.parametrize("server_first, problem", [
    (b"r=other-nonce,s=QSXCR+Q6sek8bf92,i=4096", "does not extend ours"),
    (b"r=abc,s=QSXCR+Q6sek8bf92,i=4096", "does not extend ours"),
    (b"r=abcdef,s=!!!,i=4096", "not base64"),
    (b"r=abcdef,s=QSXCR+Q6sek8bf92,i=0", "iteration count"),
    (b"r=abcdef,s=QSXCR+Q6sek8bf92,i=99999999999", "iteration count"),
    (b"m=ext,r=abcdef,s=QSXCR+Q6sek8bf92,i=1", "extension"),
    (b"e=unknown-user", "unknown-user"),
    (b"garbage", "malformed"),
    (b"r=abcdef,i=4096", "lacks"),
])
def test_scram_refuses_bad_server_first_messages(server_first, problem):
    with pytest.raises(SaslError, match=problem):
        _started().step(server_first)


def test_scram_escapes_the_user_name_and_reports_server_errors():
    scram = Scram("SCRAM-SHA-1", "a=b,c", "pw", nonce="n")
    assert scram.initial() == b"n,,n=a=3Db=2Cc,r=n"
    scram.step(b"r=nX,s=QSXCR+Q6sek8bf92,i=1")
    with pytest.raises(SaslError, match="invalid-proof"):
        scram.step(b"e=invalid-proof")


def test_plain_and_mechanism_choice():
    assert Plain("user", "pw").initial() == b"\0user\0pw"
    with pytest.raises(SaslError, match="NUL"):
        Plain("us\0er", "pw")
    assert parse_mechlist("scram-sha-1,SCRAM-SHA-256 plain") == [
        "SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"]
    assert choose_mechanism(["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"], True) == "SCRAM-SHA-256"
    assert choose_mechanism(["PLAIN", "SCRAM-SHA-1"], True) == "SCRAM-SHA-1"
    assert choose_mechanism(["PLAIN"], True) == "PLAIN"
    assert choose_mechanism(["PLAIN", "GSSAPI"], False) is None


# -- the exchange against scripted servers --------------------------------------------------
class ScriptedChannel:
    """Answers each procedure from a script; records the calls."""

    def __init__(self, **replies: Any) -> None:
        self.replies = {k: list(v) if isinstance(v, list) else [v] for k, v in replies.items()}
        self.calls: list[tuple[str, Any]] = []

    async def call(self, procedure, args=None):
        self.calls.append((procedure.name, args))
        reply = self.replies[procedure.name].pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply


def _refused() -> LibvirtError:
    return LibvirtError("authentication failed: authentication failed", 45, 7)


async def test_plain_is_used_over_tls_only():
    channel = ScriptedChannel(
        auth_sasl_init=remote.AuthSaslInitRet("DIGEST-MD5 PLAIN"),
        auth_sasl_start=remote.AuthSaslStartRet(1, 1, b""))
    await authenticate(channel, [1], parse_uri("qemu+tls://host/system"), ("bob", "pw"))
    [_, (name, args)] = channel.calls
    assert (name, args.mech, args.nil, args.data) == ("auth_sasl_start", "PLAIN", 0,
                                                        b"\0bob\0pw")
    with pytest.raises(AuthenticationError, match="refusing SASL PLAIN over the unix"):
        await authenticate(ScriptedChannel(auth_sasl_init=remote.AuthSaslInitRet("PLAIN")),
                           [1], parse_uri("qemu:///system"), ("bob", "pw"))


async def test_unimplemented_mechanisms_are_named(monkeypatch):
    channel = ScriptedChannel(auth_sasl_init=remote.AuthSaslInitRet("CRAM-MD5 DIGEST-MD5"))
    with pytest.raises(AuthenticationError, match="CRAM-MD5 DIGEST-MD5, none of which"):
        await authenticate(channel, [1], parse_uri("qemu:///system"), ("u", "p"))
    monkeypatch.setitem(sys.modules, "gssapi", None)   # the optional package not installed
    channel = ScriptedChannel(auth_sasl_init=remote.AuthSaslInitRet("GSSAPI DIGEST-MD5"))
    with pytest.raises(AuthenticationError, match=r"GSSAPI \(Kerberos\) needs the optional "
                                                  r"gssapi package: pip install 'aiovirt\[gssapi"):
        await authenticate(channel, [1], parse_uri("qemu:///system"))
    channel = ScriptedChannel(auth_sasl_init=remote.AuthSaslInitRet("SCRAM-SHA-1"))
    with pytest.raises(AuthenticationError, match="SCRAM-SHA-256 is not offered"):
        await authenticate(channel, [1], parse_uri("qemu:///system?auth=sasl.SCRAM-SHA-256"),
                           ("u", "p"))


async def test_a_server_claiming_success_without_its_signature_is_refused():
    channel = ScriptedChannel(
        auth_sasl_init=remote.AuthSaslInitRet("SCRAM-SHA-256"),
        auth_sasl_start=remote.AuthSaslStartRet(1, 1, b""))
    with pytest.raises(AuthenticationError, match="without proving"):
        await authenticate(channel, [1], parse_uri("qemu:///system"), ("u", "p"))


async def test_auth_type_selection_and_polkit_refusal():
    uri = parse_uri("qemu:///system?auth=polkit")
    with pytest.raises(AuthenticationError, match="asked for, but the server offers sasl"):
        await authenticate(ScriptedChannel(), [1], uri)
    with pytest.raises(AuthenticationError, match="unknown authentication type"):
        await authenticate(ScriptedChannel(), [1], parse_uri("qemu:///system?auth=kerberos"))
    channel = ScriptedChannel(auth_polkit=LibvirtError("access denied by policy", 6, 7))
    with pytest.raises(AuthenticationError, match="polkit refused.*access denied"):
        await authenticate(channel, [2], parse_uri("qemu:///system"))
    channel = ScriptedChannel(auth_polkit=remote.AuthPolkitRet(1))
    await authenticate(channel, [2], parse_uri("qemu:///system"))
    await authenticate(ScriptedChannel(), [0], parse_uri("qemu:///system"))
    await authenticate(ScriptedChannel(), [], parse_uri("qemu:///system"))


async def test_over_plain_tcp_the_error_asks_for_a_security_layer():
    channel = ScriptedChannel(auth_sasl_init=_refused())
    with pytest.raises(AuthenticationError, match="security layer.*qemu\\+tls://h/system"):
        await authenticate(channel, [1], parse_uri("qemu+tcp://h/system"), ("u", "p"))


# -- credentials ----------------------------------------------------------------------------
async def test_credentials_from_a_callback_are_asked_once_in_one_list():
    asked: list[list[Credential]] = []

    def callback(creds: list[Credential]) -> None:
        asked.append(creds)
        for cred in creds:
            cred.result = "pw" if cred.type is CredentialType.PASSPHRASE else None

    source = Credentials(callback)
    uri = parse_uri("qemu+tls://carol@h/system")
    assert await source.get(uri, "SCRAM-SHA-256") == ("carol", "pw")
    [[name, password]] = asked
    assert (name.type, name.default, password.type) == (
        CredentialType.AUTHNAME, "carol", CredentialType.PASSPHRASE)
    source.accepted("carol", "pw")
    assert await source.get(uri, "SCRAM-SHA-256") == ("carol", "pw")
    assert len(asked) == 1
    source.refused()
    await source.get(uri, "SCRAM-SHA-256")
    assert len(asked) == 2


async def test_missing_credentials_say_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.delenv("LIBVIRT_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setattr("aiovirt.client.config.SYSCONFDIR", str(tmp_path / "etc"))
    with pytest.raises(AuthenticationError, match=f"no password for 'dave'.*{tmp_path}"):
        await Credentials().get(parse_uri("qemu+tls://dave@h/system"), "SCRAM-SHA-256")
    with pytest.raises(AuthenticationError, match="no user name"):
        await Credentials().get(parse_uri("qemu+tls://h/system"), "SCRAM-SHA-256")
    monkeypatch.setenv("LIBVIRT_AUTH_FILE", str(tmp_path / "missing.conf"))
    with pytest.raises(AuthenticationError, match="missing.conf"):
        await Credentials().get(parse_uri("qemu+tls://h/system"), "SCRAM-SHA-256")
    with pytest.raises(TypeError):
        Credentials("just-a-password")  # type: ignore[arg-type]


# -- against a real libvirtd --------------------------------------------------------------
def _have_sasl() -> str | None:
    if shutil.which("saslpasswd2") is None and not os.path.exists("/usr/sbin/saslpasswd2"):
        return "saslpasswd2 is missing (package sasl2-bin)"
    if not list(Path("/usr/lib").glob("*/sasl2/libscram.so*")):
        return "Cyrus SASL's SCRAM plugin is missing (package libsasl2-modules)"
    return None


@pytest.fixture(scope="module")
def sasl_daemon(tmp_path_factory):
    """A libvirtd whose UNIX and TCP sockets want SASL (SCRAM-SHA-256, SCRAM-SHA-1, PLAIN)."""
    reason = _have_sasl()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("sasld")
    sasl = work / "sasl"
    sasl.mkdir()
    db = sasl / "passwd.db"
    (sasl / "libvirt.conf").write_text(
        f"mech_list: scram-sha-256 scram-sha-1 plain\nsasldb_path: {db}\n")
    saslpasswd2 = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"
    for user, password in USERS.items():
        subprocess.run([saslpasswd2, "-a", "libvirt", "-f", str(db), "-p", user],
                       input=password.encode(), check=True, timeout=20)
    config: dict[str, str | int] = {"auth_unix_rw": "sasl", "auth_tcp": "sasl"}
    try:    # TLS too, if certificates can be made here
        from aiovirt.testing.pki import CertificateAuthority
        ca = CertificateAuthority.create(work / "ca")
        server = ca.issue(work / "server", "localhost", hosts=["localhost", "127.0.0.1"],
                          server=True)
        pkipath = ca.client_dir(work / "client", ca.issue(work / "client-cert", "client"))
        config.update(listen_tls=1, auth_tls="sasl", **ca.server_config(server))
    except Exception:   # noqa: BLE001 - no certtool, or no PKI helper: TLS tests skip
        pkipath = None
    with PrivateDaemon(work / "d", extra_config=config,
                       env={"SASL_CONF_PATH": str(sasl)}) as running:
        running.pkipath = pkipath   # type: ignore[attr-defined]
        yield running


@pytest.fixture
def mechanisms(monkeypatch) -> list[str]:
    """The mechanism of every SASL exchange started (one per authenticated socket)."""
    used: list[str] = []
    real = auth_module.make_mechanism

    def spy(name, user, password):
        used.append(name)
        return real(name, user, password)

    monkeypatch.setattr(auth_module, "make_mechanism", spy)
    return used


async def test_scram_sha256_over_unix_with_a_tuple(sasl_daemon, mechanisms):
    async with aiovirt.connect(sasl_daemon.uri(), auth=("alice", USERS["alice"]),
                               lanes=0) as conn:
        assert await conn.get_lib_version() == 9000000
    assert mechanisms == ["SCRAM-SHA-256"]


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
async def test_scram_over_unix_with_an_async_callback(sasl_daemon, mechanisms, mech):
    seen: list[tuple[CredentialType, str | None]] = []

    async def callback(creds: list[Credential]) -> None:
        for cred in creds:
            seen.append((cred.type, cred.default))
            cred.result = "bob" if cred.type is CredentialType.AUTHNAME else USERS["bob"]

    uri = sasl_daemon.uri() + f"&auth=sasl.{mech}"
    async with aiovirt.connect(uri, auth=callback, lanes=0) as conn:
        assert await conn.get_lib_version() == 9000000
    assert mechanisms == [mech]
    assert seen == [(CredentialType.AUTHNAME, None), (CredentialType.PASSPHRASE, None)]


async def test_credentials_from_auth_conf(sasl_daemon, tmp_path, monkeypatch):
    conf = tmp_path / "auth.conf"
    conf.write_text("[credentials-lab]\nauthname=alice\npassword=" + USERS["alice"] +
                    "\n\n[auth-libvirt-localhost]\ncredentials=lab\n")
    monkeypatch.setenv("LIBVIRT_AUTH_FILE", str(conf))
    async with aiovirt.connect(sasl_daemon.uri(), lanes=0) as conn:
        assert await conn.get_lib_version() == 9000000


@pytest.mark.parametrize("user, password", [("alice", "not-her-password"),
                                            ("mallory", "whatever")])
async def test_a_wrong_password_or_unknown_user_is_refused_once(sasl_daemon, mechanisms,
                                                                 user, password):
    began = time.monotonic()
    with anyio.fail_after(10), pytest.raises(AuthenticationError) as info:
        async with aiovirt.connect(sasl_daemon.uri(), auth=(user, password), lanes=0):
            pass
    message = str(info.value)
    assert repr(user) in message and "SCRAM-SHA-256" in message and "refused" in message
    assert mechanisms == ["SCRAM-SHA-256"]      # tried once, not in a loop
    assert time.monotonic() - began < 5


async def test_scram_over_plain_tcp_asks_for_tls(sasl_daemon):
    with anyio.fail_after(10), pytest.raises(AuthenticationError) as info:
        async with aiovirt.connect(sasl_daemon.uri(transport="tcp"),
                                   auth=("alice", USERS["alice"])):
            pass
    assert "security layer" in str(info.value) and "test+tls://" in str(info.value)


async def test_plain_is_refused_over_unix(sasl_daemon):
    with pytest.raises(AuthenticationError, match="refusing SASL PLAIN over the unix"):
        async with aiovirt.connect(sasl_daemon.uri() + "&auth=sasl.PLAIN",
                                   auth=("alice", USERS["alice"])):
            pass


async def test_every_lane_authenticates_and_the_callback_is_asked_once(sasl_daemon,
                                                                        mechanisms):
    asked = 0

    async def callback(creds: list[Credential]) -> None:
        nonlocal asked
        asked += 1
        for cred in creds:
            cred.result = "alice" if cred.type is CredentialType.AUTHNAME else USERS["alice"]

    name = f"auth-{uuid.uuid4().hex[:8]}"
    xml = (f"<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
           "<os><type>hvm</type></os></domain>")
    async with aiovirt.connect(sasl_daemon.uri(), auth=callback, lanes=2) as conn:
        dom = await conn.define_xml(xml)
        try:
            async with anyio.create_task_group() as group:   # slow calls: on the lanes
                group.start_soon(dom.start)
                group.start_soon(lambda: conn.call(
                    remote.PROCEDURES[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION], lane=True))
            await dom.destroy()
        finally:
            await dom.undefine()
        assert len(conn.channels) >= 2
        assert len(mechanisms) == len(conn.channels)
    assert asked == 1


async def test_a_reconnection_authenticates_again(sasl_daemon, mechanisms):
    async with aiovirt.connect(sasl_daemon.uri(), auth=("alice", USERS["alice"]), lanes=0,
                               reconnect=Reconnect(initial=0.05, max_delay=0.5),
                               keepalive=(0.5, 2)) as conn:
        changes = conn.state_changes()
        await anyio.to_thread.run_sync(sasl_daemon.stop)
        with anyio.fail_after(20):
            assert (await changes.receive()).state is ConnectionState.LOST
            await anyio.to_thread.run_sync(sasl_daemon.start)
            assert (await changes.receive()).state is ConnectionState.RECONNECTED
        assert await conn.get_lib_version() == 9000000
    assert mechanisms == ["SCRAM-SHA-256", "SCRAM-SHA-256"]


@pytest.mark.parametrize("mech", ["PLAIN", "SCRAM-SHA-256"])
async def test_plain_and_scram_over_tls(sasl_daemon, mechanisms, mech):
    if sasl_daemon.pkipath is None:
        pytest.skip("no certificates for TLS here (certtool missing?)")
    uri = f"{sasl_daemon.uri(transport='tls')}?pkipath={sasl_daemon.pkipath}"
    if mech == "PLAIN":
        uri += "&auth=sasl.PLAIN"
    async with aiovirt.connect(uri, auth=("alice", USERS["alice"]), lanes=0) as conn:
        assert await conn.get_lib_version() == 9000000
    assert mechanisms == [mech]
    with pytest.raises(AuthenticationError, match=f"{mech} authentication as 'alice' failed"):
        async with aiovirt.connect(uri, auth=("alice", "wrong"), lanes=0):
            pass


# -- GSSAPI (Kerberos) against a private KDC and a real libvirtd ------------------------------
def _no_kerberos() -> str | None:
    if not gssapi_available():
        return "the gssapi package is missing (pip install 'aiovirt[gssapi]')"
    if not list(Path("/usr/lib").glob("*/sasl2/libgssapiv2.so*")):
        return "Cyrus SASL's GSSAPI plugin is missing (package libsasl2-modules-gssapi-mit)"
    return missing_kdc_tools()


@pytest.fixture(scope="module")
def kdc(tmp_path_factory):
    """A realm of our own on loopback with one user, alice."""
    reason = _no_kerberos()
    if reason:
        pytest.skip(reason)
    with PrivateKDC(tmp_path_factory.mktemp("kdc")) as running:
        running.add_user("alice", KERBEROS_PASSWORD)
        yield running


@pytest.fixture(scope="module")
def gssapi_daemon(tmp_path_factory, kdc):
    """A libvirtd whose UNIX, TCP and TLS sockets want SASL GSSAPI, with a keytab for
    libvirt/HOST under every name this machine may go by."""
    work = tmp_path_factory.mktemp("gssd")
    keytab = kdc.add_service("libvirt", ["localhost", socket.gethostname(), socket.getfqdn()],
                             work / "libvirt.keytab")
    sasl = work / "sasl"
    sasl.mkdir()
    (sasl / "libvirt.conf").write_text(f"mech_list: gssapi\nkeytab: {keytab}\n")
    tls, pkipath = loopback_tls(work / "pki")
    config = {"auth_unix_rw": "sasl", "auth_tcp": "sasl", "auth_tls": "sasl", **tls}
    with PrivateDaemon(work / "d", extra_config=config,
                       env={"SASL_CONF_PATH": str(sasl),
                            **kdc.env(KRB5_KTNAME=str(keytab))}) as running:
        running.pkipath = pkipath   # type: ignore[attr-defined]
        yield running


@pytest.fixture
def realm(kdc, monkeypatch):
    """This process sees only the private realm, with an empty credential cache."""
    for name, value in kdc.env().items():
        monkeypatch.setenv(name, value)
    kdc.kdestroy()
    yield kdc
    kdc.kdestroy()


def _tickets_for(kdc: PrivateKDC, service: str) -> int:
    """Service tickets the KDC issued to alice for ``service`` (its log, one line each)."""
    return sum(1 for line in kdc.log_path.read_text(errors="replace").splitlines()
               if "TGS_REQ" in line and "ISSUE" in line and "alice@" in line and
               f"for {service}@" in line)


async def test_gssapi_with_a_ticket_from_kinit_over_unix(gssapi_daemon, realm):
    realm.kinit("alice", KERBEROS_PASSWORD)
    before = _tickets_for(realm, "libvirt/localhost")
    with anyio.fail_after(20):
        async with aiovirt.connect(gssapi_daemon.uri(), lanes=0) as conn:
            assert await conn.get_lib_version() == 9000000
    assert _tickets_for(realm, "libvirt/localhost") == before + 1   # then cached


async def test_gssapi_over_tls_on_every_lane(gssapi_daemon, realm):
    realm.kinit("alice", KERBEROS_PASSWORD)
    uri = f"{gssapi_daemon.uri(transport='tls')}?pkipath={gssapi_daemon.pkipath}"
    version = remote.PROCEDURES[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION]
    answers: list[int] = []

    async def on_a_lane(conn: aiovirt.Connection) -> None:
        answers.append((await conn.call(version, lane=True)).lib_ver)

    with anyio.fail_after(30):
        async with aiovirt.connect(uri, lanes=2) as conn:
            async with anyio.create_task_group() as group:
                for _ in range(6):
                    group.start_soon(on_a_lane, conn)
            assert answers == [9000000] * 6
            assert len(conn.channels) == 3   # the main socket and two lanes, each authenticated


async def test_gssapi_with_a_password_and_no_credential_cache(gssapi_daemon, realm):
    with anyio.fail_after(20):
        async with aiovirt.connect(gssapi_daemon.uri(), auth=("alice", KERBEROS_PASSWORD),
                                   lanes=0) as conn:
            assert await conn.get_lib_version() == 9000000
    assert not realm.ccache.exists()   # the tickets stayed in memory


def test_gssapi_under_trio(gssapi_daemon, realm):
    """The ticket's KDC round trip runs in a worker thread under trio too."""
    trio = pytest.importorskip("trio")

    async def main() -> int:
        with anyio.fail_after(20):
            async with aiovirt.connect(gssapi_daemon.uri(), auth=("alice", KERBEROS_PASSWORD),
                                       lanes=0) as conn:
                return await conn.get_lib_version()

    assert trio.run(main) == 9000000


async def test_gssapi_without_a_ticket_says_kinit(gssapi_daemon, realm):
    with anyio.fail_after(20), pytest.raises(AuthenticationError) as info:
        async with aiovirt.connect(gssapi_daemon.uri(), lanes=0):
            pass
    text = str(info.value)
    assert "GSSAPI authentication with the Kerberos credential cache failed" in text
    assert "run kinit" in text


async def test_gssapi_with_a_wrong_password_is_refused_by_the_kdc(gssapi_daemon, realm):
    with anyio.fail_after(20), pytest.raises(AuthenticationError) as info:
        async with aiovirt.connect(gssapi_daemon.uri(), auth=("alice", "wrong"), lanes=0):
            pass
    text = str(info.value)
    assert "GSSAPI authentication as 'alice' failed" in text
    assert "logging in as 'alice' with the password" in text
    assert "Preauthentication failed" in text


async def test_gssapi_for_a_host_the_realm_does_not_know_names_the_service(gssapi_daemon,
                                                                             realm):
    realm.kinit("alice", KERBEROS_PASSWORD)
    uri = gssapi_daemon.uri(transport="tcp") + "?auth=sasl.GSSAPI"
    tls_uri = (f"{gssapi_daemon.uri(transport='tls')}?pkipath={gssapi_daemon.pkipath}"
               ).replace("localhost", "127.0.0.1")
    with anyio.fail_after(20), pytest.raises(AuthenticationError) as info:
        async with aiovirt.connect(tls_uri, lanes=0):
            pass
    assert "libvirt@127.0.0.1" in str(info.value)
    assert "not found in Kerberos database" in str(info.value)
    # over plain TCP libvirtd wants a security layer: asked for TLS before any ticket
    with anyio.fail_after(20), pytest.raises(AuthenticationError, match="security layer"):
        async with aiovirt.connect(uri, lanes=0):
            pass


def test_scram_iteration_counts_are_ascii_and_bounded_and_hashed_off_the_loop():
    # 'i=²' passed isdigit() and raised int()'s ValueError; a 10-million count froze the
    # event loop for seconds (the salted hash now runs in a thread: ``blocking``)
    for count in ("²", "0" * 5000 + "1", "1000001", "0"):
        mech = Scram("SCRAM-SHA-256", "u", "pw", nonce="abc")
        mech.initial()
        with pytest.raises(SaslError, match=r"iteration count '.{1,40}' is not a number from "
                                            r"1 to 1000000"):
            mech.step(f"r=abcdef,s=c2FsdA==,i={count}".encode())
    assert Scram.blocking


def test_tls_renegotiation_is_refused(tmp_path):
    # a TLS 1.2 server's renegotiation made every write raise SSLWantReadError inside the
    # loop's flush, where it was swallowed with the packets
    import ssl
    from aiovirt.client.tls import client_context, locate_files
    from aiovirt.testing.pki import loopback_tls
    _, pki = loopback_tls(tmp_path)
    context, _ = client_context(locate_files(str(pki)))
    assert context.options & ssl.OP_NO_RENEGOTIATION


@pytest.mark.parametrize("auth, error, words", [
    (("alice", None), TypeError, r"the password must be a str, not NoneType"),
    ((b"alice", "pw"), TypeError, r"the user name must be a str, not bytes"),
    (("alice", "p\udc80w"), ValueError, r"the password is not valid text"),
])
def test_credentials_that_sasl_cannot_send_are_refused_at_connect(auth, error, words):
    # they raised AttributeError/TypeError/UnicodeEncodeError deep in the SCRAM exchange
    with pytest.raises(error, match=words):
        aiovirt.connect("test:///default", auth=auth)


async def test_an_auth_callback_result_of_the_wrong_type_is_an_authentication_error():
    def callback(credentials: list[Credential]) -> None:
        for credential in credentials:
            credential.result = 1234
    with pytest.raises(AuthenticationError, match="the auth callback's AUTHNAME credential "
                                                  "must be a str, not int"):
        await Credentials(callback).get(parse_uri("qemu+tcp://h/system"), "SCRAM-SHA-256")
