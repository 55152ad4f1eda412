"""The ``tls`` transport against a real libvirtd over loopback, and against a fake TLS peer
that misbehaves after the handshake; plus the credential lookup order as units."""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import hypothesis
import hypothesis.strategies as st
import pytest
import trio

import aiovirt
import aiovirt.client.tls as tls
from aiovirt.client.tls import SYSTEM_CACERT, SYSTEM_CACRL, SYSTEM_CERT, SYSTEM_KEY, \
    client_context, locate_files
from aiovirt.testing.daemon import PrivateDaemon
from aiovirt.testing.pki import CertificateAuthority, Issued

AIOVIRT = shutil.which("aiovirt", path=str(Path(sys.executable).parent)) or "aiovirt"


class PKI:
    """Everything the tests need: our CA and an unrelated one, and certificates."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CertificateAuthority.create(root / "ca")
        self.other_ca = CertificateAuthority.create(root / "other-ca", "someone else's CA")
        self.server = self.ca.issue(root / "server", "localhost",
                                    hosts=["localhost", "127.0.0.1"], server=True)
        self.elsewhere = self.ca.issue(root / "elsewhere", "elsewhere.test",
                                       hosts=["elsewhere.test"], server=True)
        self.client = self.ca.issue(root / "client", "client")
        self.stranger = self.other_ca.issue(root / "stranger", "stranger")

    def pkipath(self, name: str, ca: CertificateAuthority | None = None,
                client: Issued | None = None, with_ca: bool = True) -> Path:
        """A ``pkipath`` directory with ``ca``'s certificate (ours by default) and
        ``client``'s certificate and key (our client's by default)."""
        path = (ca or self.ca).client_dir(self.root / name, client or self.client)
        if not with_ca:
            (path / "cacert.pem").unlink()
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_daemon(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDaemon]:
    """libvirtd serving TLS with a certificate for localhost and 127.0.0.1, checking that
    clients' certificates come from our CA."""
    config = {"listen_tls": 1, **pki.ca.server_config(pki.server)}
    with PrivateDaemon(tmp_path_factory.mktemp("tlsd"), extra_config=config) as running:
        yield running


@pytest.fixture(scope="module")
def strict_daemon(pki: PKI, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[PrivateDaemon]:
    """libvirtd whose certificate names another host, and which lets in no client DN."""
    config = {"listen_tls": 1, **pki.ca.server_config(pki.elsewhere),
              "tls_allowed_dn_list": ["CN=nobody"]}
    with PrivateDaemon(tmp_path_factory.mktemp("strictd"), extra_config=config) as running:
        yield running


def tls_uri(daemon: PrivateDaemon, pkipath: Path, host: str = "localhost", **params: str) -> str:
    query = "&".join([f"pkipath={pkipath}"] + [f"{k}={v}" for k, v in params.items()])
    return daemon.uri(transport="tls").replace("//localhost:", f"//{host}:") + "?" + query


async def calls(uri: str, **options) -> tuple[int, list[str]]:
    async with aiovirt.connect(uri, **options) as conn:
        return await conn.get_lib_version(), [d.name for d in await conn.list_domains()]


# -- (a) it works ------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [True, False], ids=["asyncio-protocol", "anyio-stream"])
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_calls_over_tls(tls_daemon, pki, native, host):
    uri = tls_uri(tls_daemon, pki.pkipath("good"), host)
    assert await calls(uri, native_transport=native) == (9000000, ["test"])


def test_calls_over_tls_under_trio(tls_daemon, pki):
    assert trio.run(calls, tls_uri(tls_daemon, pki.pkipath("good"))) == (9000000, ["test"])


def test_blocking_drop_in_over_tls_reads_through_the_loop(tls_daemon, pki, monkeypatch):
    """The drop-in's lone caller reads its own reply only from a plain socket: over TLS the
    socket is left to the loop (reading it directly would take the ciphertext); calls,
    lookups and a large reply work, each waited for by a run of the loop."""
    import aiovirt.compat.libvirt as libvirt

    conn = libvirt.open(tls_uri(tls_daemon, pki.pkipath("good")))
    try:
        assert all(channel.fd_here() is None for channel in conn._a._c.channels)
        settled: list[object] = []
        run_loop = libvirt._run_loop
        monkeypatch.setattr(libvirt, "_run_loop", lambda loop, coro: (
            settled.append(getattr(coro, "__name__", None)), run_loop(loop, coro))[1])
        assert conn.getLibVersion() == 9000000
        assert [d.name() for d in conn.listAllDomains()] == ["test"]
        assert len(conn.getCapabilities()) > 1000
        assert settled.count("_settled") >= 3
    finally:
        conn.close()


async def test_many_concurrent_calls_over_tls(tls_daemon, pki):
    async with aiovirt.connect(tls_uri(tls_daemon, pki.pkipath("good"))) as conn:
        names: list[str] = []

        async def one() -> None:
            names.append((await conn.lookup_domain(name="test")).name)

        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(one)
        assert names == ["test"] * 40


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AIOVIRT, *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})


async def test_cli_over_tls(tls_daemon, pki):
    good = tls_uri(tls_daemon, pki.pkipath("good"))
    done = await anyio.to_thread.run_sync(
        lambda: _cli("teardown", "--uri", good, "--name", "no-such-guest-*", "--json"))
    assert done.returncode == 0, done.stderr
    bad = tls_uri(tls_daemon, pki.pkipath("foreign-ca", pki.other_ca))
    failed = await anyio.to_thread.run_sync(
        lambda: _cli("teardown", "--uri", bad, "--name", "no-such-guest-*"))
    output = failed.stdout + failed.stderr    # teardown reports per-host errors on stdout
    assert failed.returncode == 1 and "failed verification" in output, output


# -- (b, c) the server's certificate is checked -------------------------------------------------
@pytest.mark.parametrize("native", [True, False], ids=["asyncio-protocol", "anyio-stream"])
async def test_server_certificate_from_an_unknown_ca_is_refused(tls_daemon, pki, native):
    pkipath = pki.pkipath("foreign-ca", pki.other_ca)
    with pytest.raises(aiovirt.AuthenticationError) as caught:
        await calls(tls_uri(tls_daemon, pkipath), native_transport=native)
    message = str(caught.value)
    assert "certificate failed verification" in message
    assert "unable to get local issuer certificate" in message
    assert str(pkipath / "cacert.pem") in message and f":{tls_daemon.tls_port}" in message


@pytest.mark.parametrize("native", [True, False], ids=["asyncio-protocol", "anyio-stream"])
async def test_server_certificate_for_another_host_is_refused(strict_daemon, pki, native):
    with pytest.raises(aiovirt.AuthenticationError,
                       match=r"failed verification .* for host 'localhost'.*Hostname mismatch"):
        await calls(tls_uri(strict_daemon, pki.pkipath("good")), native_transport=native)


# -- (d) no_verify=1 ----------------------------------------------------------------------------
async def test_no_verify_skips_the_server_certificate_checks(tls_daemon, strict_daemon, pki):
    """As in libvirt, no_verify=1 accepts a server certificate that fails validation (an
    unknown CA, another host's name): the server still checks ours."""
    foreign = pki.pkipath("foreign-ca", pki.other_ca)
    assert await calls(tls_uri(tls_daemon, foreign, no_verify="1")) == (9000000, ["test"])
    # past our checks, the strict daemon refuses our DN: the status byte says so
    with pytest.raises(aiovirt.AuthenticationError, match="closed the connection after"):
        await calls(tls_uri(strict_daemon, pki.pkipath("good"), no_verify="1"))


async def test_no_verify_still_needs_the_ca_file(tls_daemon, pki):
    pkipath = pki.pkipath("no-ca", with_ca=False)
    with pytest.raises(aiovirt.ConnectionFailed,
                       match=f"no CA certificate: looked for {pkipath}/cacert.pem"):
        await calls(tls_uri(tls_daemon, pkipath, no_verify="1"))


async def test_no_verify_must_be_an_integer(tls_daemon, pki):
    with pytest.raises(aiovirt.InvalidURI, match="no_verify='yes' is not an integer"):
        await calls(tls_uri(tls_daemon, pki.pkipath("good"), no_verify="yes"))


# -- (e) the server refuses our certificate ------------------------------------------------------
@pytest.mark.parametrize("native", [True, False], ids=["asyncio-protocol", "anyio-stream"])
async def test_server_refusing_our_dn_is_a_prompt_clear_error(strict_daemon, pki, native):
    pkipath = pki.pkipath("good")
    started = time.monotonic()
    with pytest.raises(aiovirt.AuthenticationError) as caught:
        await calls(tls_uri(strict_daemon, pkipath, no_verify="1"), native_transport=native)
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert "closed the connection after the handshake" in message
    assert f"our certificate {pkipath}/clientcert.pem" in message
    assert "tls_allowed_dn_list" in message


def test_server_refusal_under_trio(strict_daemon, pki):
    with pytest.raises(aiovirt.AuthenticationError, match="closed the connection after"):
        trio.run(calls, tls_uri(strict_daemon, pki.pkipath("good"), no_verify="1"))


async def test_client_certificate_from_an_unknown_ca_is_refused(tls_daemon, pki):
    pkipath = pki.pkipath("stranger", client=pki.stranger)
    with pytest.raises(aiovirt.AuthenticationError,
                       match=f"refused our certificate {pkipath}/clientcert.pem"):
        await calls(tls_uri(tls_daemon, pkipath))


# -- (f) missing files ---------------------------------------------------------------------------
async def test_missing_ca_names_the_path(tls_daemon, pki, tmp_path):
    with pytest.raises(aiovirt.ConnectionFailed,
                       match=f"no CA certificate: looked for {tmp_path}/cacert.pem"):
        await calls(tls_uri(tls_daemon, tmp_path))


async def test_missing_client_certificate_is_named_when_the_server_refuses(tls_daemon, pki):
    """libvirt's client goes on without a certificate of its own (a server may not ask for
    one); this server does, so the refusal names where we looked."""
    pkipath = pki.pkipath("ca-only")
    (pkipath / "clientkey.pem").unlink()
    with pytest.raises(aiovirt.AuthenticationError) as caught:
        await calls(tls_uri(tls_daemon, pkipath))
    assert (f"without a client certificate (none found at {pkipath}/clientcert.pem with "
            f"{pkipath}/clientkey.pem)") in str(caught.value)


def test_unusable_client_key_is_named(pki, tmp_path):
    pkipath = pki.pkipath("wrong-key")
    shutil.copyfile(pki.stranger.key, pkipath / "clientkey.pem")  # not the certificate's key
    with pytest.raises(aiovirt.ConnectionFailed,
                       match=f"cannot use client certificate {pkipath}/clientcert.pem with key "
                             f"{pkipath}/clientkey.pem"):
        client_context(locate_files(str(pkipath)))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_encrypted_client_key_is_refused_without_prompting(pki):
    pkipath = pki.pkipath("encrypted-key")
    subprocess.run(["openssl", "pkey", "-in", str(pki.client.key), "-aes256", "-passout",
                    "pass:secret", "-out", str(pkipath / "clientkey.pem")], check=True,
                   capture_output=True)
    with pytest.raises(aiovirt.ConnectionFailed, match="clientkey.pem is encrypted"):
        client_context(locate_files(str(pkipath)))


async def test_tls_priority_is_ignored_with_a_warning(tls_daemon, pki, caplog):
    with caplog.at_level(logging.WARNING, logger="aiovirt.client.tls"):
        assert await calls(tls_uri(tls_daemon, pki.pkipath("good"),
                                   tls_priority="NORMAL")) == (9000000, ["test"])
    assert "tls_priority='NORMAL' ignored" in caplog.text


# -- (g) a peer that misbehaves after (or instead of) the handshake ------------------------------
@contextlib.contextmanager
def fake_tls_server(pki: PKI, after_handshake: bytes | None, *, handshake: bool = True
                    ) -> Iterator[int]:
    """A TLS server on a loopback port that completes the handshake (with our server
    certificate), then sends ``after_handshake`` and closes, or (None) stays silent until
    the block ends.  ``handshake=False``: accept and say nothing at all."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.1)
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            if not handshake:
                continue
            conn.settimeout(5)
            try:
                wrapped = context.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                continue
            held.append(wrapped)
            if after_handshake is not None:
                if after_handshake:
                    wrapped.sendall(after_handshake)
                wrapped.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        for sock in held:
            sock.close()
        listener.close()


@pytest.fixture
def short_timeouts(monkeypatch):
    monkeypatch.setattr(tls, "HANDSHAKE_TIMEOUT", 0.5)
    monkeypatch.setattr(tls, "STATUS_TIMEOUT", 0.5)


@pytest.mark.parametrize("native", [True, False], ids=["asyncio-protocol", "anyio-stream"])
@pytest.mark.parametrize("behaviour, error, message", [
    (None, aiovirt.ConnectionFailed, r"no status byte after the TLS handshake within 0.5 s"),
    (b"", aiovirt.AuthenticationError, r"closed the connection after the handshake"),
    (b"\x00", aiovirt.AuthenticationError, r"sent b'\\x00' instead of b'\\x01'"),
], ids=["silent", "closes", "zero-byte"])
async def test_fake_server_after_the_handshake(pki, short_timeouts, native, behaviour, error,
                                               message):
    with fake_tls_server(pki, behaviour) as port:
        uri = f"test+tls://localhost:{port}/default?pkipath={pki.pkipath('good')}"
        started = time.monotonic()
        with pytest.raises(error, match=message):
            await calls(uri, native_transport=native)
        assert time.monotonic() - started < 2


@pytest.mark.parametrize("native", [True, False], ids=["asyncio-protocol", "anyio-stream"])
async def test_silent_peer_cannot_hang_the_handshake(pki, short_timeouts, native):
    with fake_tls_server(pki, None, handshake=False) as port:
        uri = f"test+tls://localhost:{port}/default?pkipath={pki.pkipath('good')}"
        started = time.monotonic()
        with pytest.raises(aiovirt.ConnectionFailed, match=f"localhost:{port}.*handshake"):
            await calls(uri, native_transport=native)
        assert time.monotonic() - started < 2


async def test_nothing_listening(pki):
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with pytest.raises(aiovirt.ConnectionFailed, match=f"cannot connect to localhost:{port}"):
        await calls(f"test+tls://localhost:{port}/default?pkipath={pki.pkipath('good')}")


@pytest.mark.skipif(shutil.which("certtool") is None, reason="needs certtool (gnutls-bin)")
async def test_revocation_list_beside_the_ca_is_honoured(tls_daemon, pki):
    pkipath = pki.pkipath("revoked")
    pki.ca.revoke(pkipath / "cacrl.pem", pki.server)
    with pytest.raises(aiovirt.AuthenticationError, match="certificate revoked"):
        await calls(tls_uri(tls_daemon, pkipath))
    pki.ca.revoke(pkipath / "cacrl.pem", pki.elsewhere)     # a list not naming this server
    assert await calls(tls_uri(tls_daemon, pkipath)) == (9000000, ["test"])


# -- packets and TLS records ---------------------------------------------------------------------
def packet(body: bytes) -> bytes:
    return (len(body) + 4).to_bytes(4, "big") + body


def test_cutter_splits_joined_packets():
    cutter = tls._PacketCutter()
    one, two, three = packet(b"a" * 30), packet(b"b" * 5), packet(b"")
    assert [bytes(p) for p in cutter.cut(one + two + three)] == [one, two, three]


def test_cutter_follows_packets_across_writes():
    cutter = tls._PacketCutter()
    one, two = packet(b"x" * 40), packet(b"y" * 10)
    stream = one + two
    pieces = [bytes(p) for p in cutter.cut(stream[:2])] + \
        [bytes(p) for p in cutter.cut(stream[2:28])] + \
        [bytes(p) for p in cutter.cut(stream[28:])]
    assert b"".join(pieces) == stream
    ends, total = set(), 0
    for piece in pieces:
        total += len(piece)
        ends.add(total)
    assert len(one) in ends    # no piece straddles the boundary


@hypothesis.given(st.lists(st.binary(max_size=40), min_size=1, max_size=8),
                  st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_cutter_never_lets_a_piece_straddle_packets(bodies, cuts):
    """Any packets, written in any pieces: the pieces add up to the stream and a packet
    boundary is always a piece boundary (the fast path for whole packets and the slow one
    for split writes agree)."""
    stream = b"".join(packet(body) for body in bodies)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    cutter = tls._PacketCutter()
    starts = {0}
    for body in bodies:
        starts.add(max(starts) + len(body) + 4)
    pieces = []
    for a, b in zip(points, points[1:]):
        pieces += [bytes(piece) for piece in cutter.cut(stream[a:b])]
        assert cutter.idle == (b in starts)   # between packets exactly at their boundaries
    assert b"".join(pieces) == stream
    ends, total = set(), 0
    for piece in pieces:
        total += len(piece)
        ends.add(total)
    boundary = 0
    for body in bodies:
        boundary += len(body) + 4
        assert boundary in ends


async def test_concurrent_calls_are_not_held_back_by_tls_records(tls_daemon, pki):
    """Packets written together must not share a TLS record: libvirtd 9.0 would leave the
    second in GnuTLS's buffer until the next keepalive (5 s)."""
    for native in (True, False):
        async with aiovirt.connect(tls_uri(tls_daemon, pki.pkipath("good")),
                                   native_transport=native) as conn:
            started = time.monotonic()
            for _ in range(5):
                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(conn.get_lib_version)
            assert time.monotonic() - started < 1


# -- (h) where the files are looked for ----------------------------------------------------------
def test_pkipath_is_used_as_is():
    files = locate_files("/some/dir", euid=1000, home="/home/u", exists=lambda p: False)
    assert (files.cacert, files.cacrl, files.cert, files.key) == (
        "/some/dir/cacert.pem", "/some/dir/cacrl.pem", "/some/dir/clientcert.pem",
        "/some/dir/clientkey.pem")
    assert files.ca_tried == ("/some/dir/cacert.pem",)


def test_root_uses_the_system_files_only():
    files = locate_files(euid=0, home="/root", exists=lambda p: True)
    assert (files.cacert, files.cacrl, files.cert, files.key) == (
        "/etc/pki/CA/cacert.pem", "/etc/pki/CA/cacrl.pem", "/etc/pki/libvirt/clientcert.pem",
        "/etc/pki/libvirt/private/clientkey.pem")


def test_user_files_come_first():
    files = locate_files(euid=1000, home="/home/u", exists=lambda p: True)
    user = "/home/u/.pki/libvirt"
    assert (files.cacert, files.cacrl, files.cert, files.key) == (
        f"{user}/cacert.pem", f"{user}/cacrl.pem", f"{user}/clientcert.pem",
        f"{user}/clientkey.pem")


def test_each_missing_user_file_falls_back_to_the_system_one():
    user = "/home/u/.pki/libvirt"
    present = {f"{user}/cacrl.pem", f"{user}/clientcert.pem", f"{user}/clientkey.pem"}
    files = locate_files(euid=1000, home="/home/u", exists=present.__contains__)
    assert (files.cacert, files.cacrl, files.cert, files.key) == (
        SYSTEM_CACERT, f"{user}/cacrl.pem", f"{user}/clientcert.pem", f"{user}/clientkey.pem")
    assert files.ca_tried == (f"{user}/cacert.pem", SYSTEM_CACERT)


def test_certificate_and_key_fall_back_as_a_pair():
    user = "/home/u/.pki/libvirt"
    present = {f"{user}/cacert.pem", f"{user}/clientcert.pem"}   # no user key
    files = locate_files(euid=1000, home="/home/u", exists=present.__contains__)
    assert (files.cacert, files.cacrl, files.cert, files.key) == (
        f"{user}/cacert.pem", SYSTEM_CACRL, SYSTEM_CERT, SYSTEM_KEY)
    assert files.pair_tried == ((f"{user}/clientcert.pem", f"{user}/clientkey.pem"),
                                (SYSTEM_CERT, SYSTEM_KEY))


def test_missing_ca_error_names_every_path_tried():
    files = locate_files(euid=1000, home="/home/u", exists=lambda p: False)
    with pytest.raises(aiovirt.ConnectionFailed,
                       match="looked for /home/u/.pki/libvirt/cacert.pem and "
                             "/etc/pki/CA/cacert.pem"):
        client_context(files, exists=lambda p: False)


# -- (i) expired certificates --------------------------------------------------------------------
@pytest.mark.parametrize("native", [True, False], ids=["asyncio-protocol", "anyio-stream"])
async def test_expired_client_certificate_is_refused_promptly(tls_daemon, pki, native):
    """libvirtd verifies the client certificate after the handshake (GnuTLS finds it expired;
    libvirtd's log says only "not trusted") and closes without its status byte: a clear
    AuthenticationError naming our certificate, within seconds."""
    expired = pki.ca.issue(pki.root / f"expired-client-{native}", "client", expired=True)
    pkipath = pki.pkipath(f"expired-client-{native}", client=expired)
    started = time.monotonic()
    with anyio.fail_after(10), pytest.raises(aiovirt.AuthenticationError) as caught:
        await calls(tls_uri(tls_daemon, pkipath), native_transport=native)
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert "closed the connection after the handshake" in message
    assert f"refused our certificate {pkipath}/clientcert.pem" in message
    # and the daemon is none the worse for it
    assert await calls(tls_uri(tls_daemon, pki.pkipath("good"))) == (9000000, ["test"])


@pytest.mark.parametrize("native", [True, False], ids=["asyncio-protocol", "anyio-stream"])
async def test_expired_server_certificate_is_refused(pki, native):
    """(libvirtd will not start with an expired certificate of its own, so a fake peer
    serves one.)  Our client refuses it before anything is sent, saying it has expired."""
    server = pki.ca.issue(pki.root / "expired-server", "localhost",
                          hosts=["localhost", "127.0.0.1"], server=True, expired=True)
    serving_expired = copy.copy(pki)
    serving_expired.server = server
    with fake_tls_server(serving_expired, b"\x01") as port:
        uri = f"test+tls://localhost:{port}/default?pkipath={pki.pkipath('good')}"
        started = time.monotonic()
        with anyio.fail_after(10), pytest.raises(aiovirt.AuthenticationError) as caught:
            await calls(uri, native_transport=native)
        assert time.monotonic() - started < 3
    message = str(caught.value)
    assert "certificate failed verification" in message
    assert "certificate has expired" in message
    assert f"localhost:{port}" in message
