"""The ``tls`` transport: TCP, a TLS session (Python's ``ssl``), then libvirtd's go-ahead byte.

Credentials are found as libvirt's client finds them (``locate_files``).  The server's
certificate is checked against the CA and the URI's host name during the handshake; after it
libvirtd checks ours (and our address) and sends one byte, ``\\x01`` to go on.  That byte is
read here and never reaches the RPC layer.  Every step is bounded: ``HANDSHAKE_TIMEOUT`` for
the TCP connection and the TLS handshake, ``STATUS_TIMEOUT`` for the byte.

URI parameters: ``pkipath=DIR``, ``no_verify=1`` (as in libvirt: connect even if the server's
certificate fails validation, CA and host name alike; the CA file must still exist).
``tls_priority`` (a GnuTLS priority string) is ignored with a logged warning: it has no
faithful OpenSSL translation, and refusing would fail URIs that work with virsh; Python's
defaults (TLS 1.2 or newer, OpenSSL's default suites) are no weaker than GnuTLS's
``NORMAL``, libvirt's default.  ``no_sanity`` (libvirt's pre-flight checks of local
certificates) has no counterpart here: OpenSSL checks that key and certificate match on load.

Failures: ``AuthenticationError`` when a certificate is refused (theirs by us, or ours by
the server); ``ConnectionFailed`` for everything else (files missing or unusable, the host
unreachable, a handshake that fails or times out).  Each message names the host and port and
the files concerned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from ..errors import AuthenticationError, ConnectionFailed, InvalidURI
from .backend import asyncio_loop
from .transport import AnyioTransport, AsyncioTransport, Spawn, Transport
from .uri import ConnectionURI

__all__ = ["HANDSHAKE_TIMEOUT", "STATUS_TIMEOUT", "TLSFiles", "client_context", "dial_tls",
           "locate_files"]

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 20.0   # seconds for TCP connect + TLS handshake
STATUS_TIMEOUT = 20.0      # seconds for the server's status byte after the handshake

# libvirt's built-in locations (src/rpc/virnettlscontext.c, LIBVIRT_PKI_DIR = /etc/pki)
SYSTEM_CACERT = "/etc/pki/CA/cacert.pem"
SYSTEM_CACRL = "/etc/pki/CA/cacrl.pem"
SYSTEM_CERT = "/etc/pki/libvirt/clientcert.pem"
SYSTEM_KEY = "/etc/pki/libvirt/private/clientkey.pem"


@dataclass(frozen=True)
class TLSFiles:
    """The files a TLS client uses, and every place looked at for them (for messages)."""

    cacert: str
    cacrl: str
    cert: str
    key: str
    ca_tried: tuple[str, ...]
    pair_tried: tuple[tuple[str, str], ...]


def locate_files(pkipath: str | None = None, *, home: str | None = None,
                 euid: int | None = None,
                 exists: Callable[[str], bool] = os.path.exists) -> TLSFiles:
    """Where libvirt's client looks: all of ``pkipath`` if given (existing or not); else, not
    as root, ``HOME/.pki/libvirt`` with each of CA and CRL, and the certificate and key as a
    pair, falling back to the system files; as root the system files only."""
    if pkipath is not None:
        def inside(name: str) -> str:
            return os.path.join(pkipath, name)
        cert, key = inside("clientcert.pem"), inside("clientkey.pem")
        return TLSFiles(inside("cacert.pem"), inside("cacrl.pem"), cert, key,
                        (inside("cacert.pem"),), ((cert, key),))
    if (os.geteuid() if euid is None else euid) == 0:
        return TLSFiles(SYSTEM_CACERT, SYSTEM_CACRL, SYSTEM_CERT, SYSTEM_KEY,
                        (SYSTEM_CACERT,), ((SYSTEM_CERT, SYSTEM_KEY),))
    user = os.path.join(os.path.expanduser("~") if home is None else home, ".pki", "libvirt")
    cacert, cacrl = os.path.join(user, "cacert.pem"), os.path.join(user, "cacrl.pem")
    cert, key = os.path.join(user, "clientcert.pem"), os.path.join(user, "clientkey.pem")
    user_pair = exists(cert) and exists(key)
    return TLSFiles(cacert if exists(cacert) else SYSTEM_CACERT,
                    cacrl if exists(cacrl) else SYSTEM_CACRL,
                    cert if user_pair else SYSTEM_CERT, key if user_pair else SYSTEM_KEY,
                    (cacert, SYSTEM_CACERT), ((cert, key), (SYSTEM_CERT, SYSTEM_KEY)))


class _EncryptedKey(Exception):
    """Raised from OpenSSL's password callback: we never prompt for a key's password."""


def _no_password() -> bytes:
    raise _EncryptedKey


def client_context(files: TLSFiles, *, verify: bool = True, where: str = "",
                   exists: Callable[[str], bool] = os.path.exists) -> tuple[ssl.SSLContext, bool]:
    """An SSL context trusting ``files.cacert`` (and its CRL if present) with our certificate
    if both it and its key exist, as libvirt's client does; and whether we have one.
    ``verify=False`` is libvirt's ``no_verify=1``; ``where`` (host:port) goes in messages."""
    tls = f"TLS to {where}" if where else "TLS"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # a TLS 1.2 renegotiation would make writes wait for reads mid-packet: refused, as
    # GnuTLS (libvirt's) refuses unsafe renegotiation; TLS 1.3 has none
    context.options |= ssl.OP_NO_RENEGOTIATION
    if not exists(files.cacert):
        raise ConnectionFailed(f"{tls}: no CA certificate: looked for "
                               + " and ".join(files.ca_tried)
                               + " (pkipath=DIR sets the directory)")
    try:
        context.load_verify_locations(cafile=files.cacert)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionFailed(f"{tls}: cannot use CA certificate {files.cacert}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from exc
    if exists(files.cacrl):
        try:
            context.load_verify_locations(cafile=files.cacrl)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionFailed(f"{tls}: cannot use revocation list {files.cacrl}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from exc
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    have_cert = exists(files.cert) and exists(files.key)
    if have_cert:
        try:
            context.load_cert_chain(files.cert, files.key, password=_no_password)
        except _EncryptedKey:
            raise ConnectionFailed(f"{tls}: private key {files.key} is encrypted: libvirt's "
                                   "client reads unencrypted keys only") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionFailed(f"{tls}: cannot use client certificate {files.cert} with key "
                                   f"{files.key}: {getattr(exc, 'strerror', None) or exc}"
                                   ) from exc
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context, have_cert


class _TLSWire(asyncio.Protocol):
    """TLS done here, over a plain TCP transport, with ``ssl.SSLObject`` and memory BIOs:
    asyncio's own TLS transport would send every record with a system call of its own and
    pass every record up separately; this one encrypts each libvirt packet as a record of
    its own (``_PacketCutter``) but sends all the records of one write in one ``send`` and
    passes all that one read decrypts up in one call.

    It is the protocol of the TCP transport and the transport of the protocol above
    (``AsyncioTransport``), which it gets once the handshake and the status byte are done."""

    def __init__(self, context: ssl.SSLContext, host: str) -> None:
        loop = asyncio.get_running_loop()
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_hostname=host)
        self._host = host
        # the C object behind ``ssl.SSLObject`` (same read/write, one Python call less per
        # record); the wrapper itself if a Python version ever lacks it
        self._records: Any = getattr(self._ssl, "_sslobj", self._ssl)
        self._raw: asyncio.Transport | None = None
        self._app: asyncio.Protocol | None = None
        self._cutter = _PacketCutter()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.status: asyncio.Future[bytes] = loop.create_future()
        self._early = bytearray()     # plaintext after the status byte, before the app
        self._buffer = bytearray(_BUFFER_KEEP)   # what one read decrypts
        self._view = memoryview(self._buffer)
        self._ended: tuple[Exception | None] | None = None
        # handshake done, status byte read, the protocol above attached: reads skip all three
        self._steady = False
        self._error: Exception | None = None   # a TLS error that ended the connection

    # -- the TCP transport's protocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport  # type: ignore[assignment]
        self._shake()

    def _shake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush()
            if not self.handshake.done():
                self.handshake.set_exception(exc)
            return
        self._flush()
        if not self.handshake.done():
            self.handshake.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._in.write(data)
        if not self._steady:   # the handshake and the status byte: read once, then skipped
            if not self.handshake.done():
                self._shake()
                if not self.handshake.done() or self.handshake.exception() is not None:
                    return
        closed = False
        # Read while bytes are left in the BIO: SSL reads exactly one record at a time, so
        # it empties when the last whole record is read, and the "want read" answer (an
        # exception, costly) comes only when a record is still incomplete.  Records are
        # decrypted side by side into one buffer (no bytes object per record).
        incoming, read = self._in, self._records.read
        buffer, view = self._buffer, self._view
        used = 0
        while incoming.pending:
            if len(buffer) - used < _RECORD_MAX:   # a big read: a buffer twice the size
                grown = bytearray(2 * len(buffer))
                grown[:used] = view[:used]
                buffer, view = self._buffer, self._view = grown, memoryview(grown)
            try:
                count = read(_RECORD_MAX, view[used:])
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                closed = True
                break
            except ssl.SSLError as exc:
                self._fail(exc)
                return
            if not count:
                closed = True
                break
            used += count
        if self._out.pending:
            self._flush()   # TLS 1.3 may answer on its own (key updates)
        plain = bytes(view[:used])
        if len(buffer) > _BUFFER_KEEP:   # a burst grew it: give the memory back
            self._buffer = bytearray(_BUFFER_KEEP)
            self._view = memoryview(self._buffer)
        if self._steady:
            if plain:
                self._app.data_received(plain)  # type: ignore[union-attr]
        else:
            if plain and not self.status.done():
                self.status.set_result(plain[:1])
                plain = plain[1:]
            if plain:
                if self._app is not None:
                    self._app.data_received(plain)
                else:
                    self._early += plain
        if closed and self._raw is not None:
            self._raw.close()

    def eof_received(self) -> bool:
        return False   # close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        broken = self._error   # what TLS made of the server's bytes, if that ended it
        if exc is None and broken is not None:
            exc = _tls_broken(broken, self._host)
        self._ended = (exc,)
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError(
                "the server closed the connection during the TLS handshake"))
        if not self.status.done():
            if broken is not None and not _is_alert(broken):
                # bytes that are not TLS where the status byte should be: not a refusal
                self.status.set_exception(broken)
            else:
                self.status.set_result(b"")
        if self._app is not None:
            self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        if self._raw is not None:
            self._raw.abort()

    def _flush(self) -> None:
        data = self._out.read()
        if data and self._raw is not None and not self._raw.is_closing():
            self._raw.write(data)

    # -- the transport of the protocol above -------------------------------------------------
    def attach(self, app: asyncio.Protocol) -> None:
        """Hand the connection to ``app``: what arrived early, then everything."""
        self._app = app
        app.connection_made(self)  # type: ignore[arg-type]
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            app.data_received(early)
        if self._ended is not None:
            app.connection_lost(self._ended[0])
        self._steady = (self.handshake.done() and self.handshake.exception() is None and
                        self.status.done())

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """One piece (a lone call's packet, the commonest write): ``writelines`` inlined."""
        if not (self._cutter.idle and len(data) >= 4 and
                _LENGTH.unpack_from(data)[0] == len(data)):
            self.writelines((data,))
            return
        try:
            self._records.write(data)
        except ssl.SSLError as exc:   # (a packet cannot be half sent: the connection ends)
            self._fail(exc)
            return
        raw = self._raw
        if raw is not None and not raw.is_closing():
            raw.write(self._out.read())

    def writelines(self, pieces: Iterable[bytes | bytearray | memoryview]) -> None:
        """Encrypt ``pieces`` (one record per libvirt packet) and send them in one go.  A
        piece that is exactly one packet is encrypted as it is; anything else is cut."""
        write, cutter = self._records.write, self._cutter
        try:
            for data in pieces:
                if cutter.idle and len(data) >= 4 and _LENGTH.unpack_from(data)[0] == len(data):
                    write(data)
                else:
                    for piece in cutter.cut(data):
                        write(piece)
        except ssl.SSLError as exc:   # (a packet cannot be half sent: the connection ends)
            self._fail(exc)
            return
        self._flush()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if self._raw is None:
            return default
        return self._raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._raw is None or self._raw.is_closing()

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()

    def abort(self) -> None:
        if self._raw is not None:
            self._raw.abort()

    def pause_reading(self) -> None:
        if self._raw is not None:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._raw is not None:
            self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw is not None and self._raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return 0 if self._raw is None else self._raw.get_write_buffer_size()


def _is_alert(exc: Exception) -> bool:
    """The server sent a TLS alert (e.g. it refuses our certificate), rather than bytes that
    are not TLS at all."""
    return isinstance(exc, ssl.SSLError) and "ALERT" in (exc.reason or "")


def _tls_broken(exc: Exception, host: str) -> ConnectionError:
    """A TLS error that ended a session after its handshake, saying so (OpenSSL's own words,
    "[SSL: WRONG_VERSION_NUMBER] wrong version number", do not name TLS)."""
    error = ConnectionError(f"TLS error from {host}: {exc}")
    error.__cause__ = exc
    return error


_LENGTH = struct.Struct(">I")
_RECORD_MAX = 16384 + 256   # a TLS record's plaintext is at most 2**14 bytes
_BUFFER_KEEP = 4 * _RECORD_MAX   # the decryption buffer kept between reads


class _PacketCutter:
    """Cuts the bytes we send at libvirt packet boundaries, so that no TLS record carries the
    end of one packet and the start of the next: libvirtd 9.0 reads one packet per wake-up
    and asks the socket, not GnuTLS's buffer, whether more is waiting (virnetsocket.c
    virNetSocketHasCachedData), so a second packet in the same record would wait for the
    next bytes to arrive (a keepalive, 5 s later)."""

    def __init__(self) -> None:
        self._left = 0                 # bytes of the current packet still to come
        self._length = bytearray()     # a length word being collected
        self.idle = True               # between packets: the next byte starts a packet

    def cut(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        view = memoryview(data).cast("B")
        pieces: list[memoryview] = []
        start = pos = 0
        end = len(view)
        if self._left == 0 and not self._length:
            # the usual case, whole packets: one length read per packet
            unpack = _LENGTH.unpack_from
            while pos + 4 <= end:
                length = max(unpack(view, pos)[0], 4)
                if pos + length > end:
                    break
                pieces.append(view[pos:pos + length])
                pos += length
            start = pos
        while pos < end:
            if self._left == 0:
                word = view[pos:pos + 4 - len(self._length)]
                self._length += word
                pos += len(word)
                if len(self._length) < 4:
                    break
                self._left = max(int.from_bytes(self._length, "big") - 4, 0)
                self._length.clear()
            step = min(self._left, len(view) - pos)
            pos += step
            self._left -= step
            if self._left == 0:
                pieces.append(view[start:pos])
                start = pos
        if start < len(view):
            pieces.append(view[start:])
        self.idle = self._left == 0 and not self._length
        return pieces


class _RecordPerPacketStream(anyio.abc.ByteStream):
    """The anyio counterpart: one ``send`` on the TLS stream per packet (or part of one)."""

    def __init__(self, stream: TLSStream, host: str) -> None:
        self._stream = stream
        self._host = host
        self._cutter = _PacketCutter()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._stream.receive(max_bytes)
        except ssl.SSLError as exc:
            raise _tls_broken(exc, self._host) from exc

    async def send(self, item: bytes) -> None:
        for piece in self._cutter.cut(item):
            await self._stream.send(piece)  # type: ignore[arg-type]

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes


def _timed_out(where: str, what: str, seconds: float) -> ConnectionFailed:
    return ConnectionFailed(f"TLS to {where}: {what} within {seconds:g} s")


async def _dial_asyncio(loop: asyncio.AbstractEventLoop, host: str, port: int,
                        context: ssl.SSLContext, check: Callable[[bytes], None]) -> Transport:
    where = f"{host}:{port}"
    try:
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            raw, wire = await loop.create_connection(lambda: _TLSWire(context, host),
                                                     host, port)
            try:
                await wire.handshake
            except BaseException:
                raw.abort()
                raise
    except TimeoutError:
        raise _timed_out(where, "no connection and TLS handshake", HANDSHAKE_TIMEOUT) from None
    try:
        try:
            with anyio.fail_after(STATUS_TIMEOUT):
                status = await wire.status
        except TimeoutError:
            raise _timed_out(where, "no status byte after the TLS handshake",
                             STATUS_TIMEOUT) from None
        check(status)
    except BaseException:
        raw.abort()
        raise
    protocol = AsyncioTransport()
    wire.attach(protocol)
    return protocol


async def _dial_anyio(host: str, port: int, context: ssl.SSLContext, spawn: Spawn,
                      check: Callable[[bytes], None]) -> Transport:
    where = f"{host}:{port}"
    try:
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            tcp = await anyio.connect_tcp(host, port)
    except TimeoutError:
        raise _timed_out(where, "no TCP connection", HANDSHAKE_TIMEOUT) from None
    try:
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT):
                stream = await TLSStream.wrap(tcp, hostname=host, ssl_context=context,
                                              standard_compatible=False)
        except TimeoutError:
            raise _timed_out(where, "no TLS handshake", HANDSHAKE_TIMEOUT) from None
        try:
            with anyio.fail_after(STATUS_TIMEOUT):
                status = await stream.receive(1)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            status = b""
        except TimeoutError:
            raise _timed_out(where, "no status byte after the TLS handshake",
                             STATUS_TIMEOUT) from None
        check(status)
    except BaseException:
        await anyio.aclose_forcefully(tcp)
        raise
    return AnyioTransport(_RecordPerPacketStream(stream, host), spawn)


async def dial_tls(uri: ConnectionURI, spawn: Spawn, native: bool) -> Transport:
    """Connect to the daemon's ``listen_tls`` port and pass its checks (see the module)."""
    host, port = uri.address
    where = f"{host}:{port}"
    verify = not uri.flag("no_verify")
    if "tls_priority" in uri.params:
        log.warning("%s: tls_priority=%r ignored: GnuTLS priority strings do not apply to "
                    "Python's ssl", where, uri.params["tls_priority"])
    files = locate_files(uri.params.get("pkipath"))
    context, have_cert = client_context(files, verify=verify, where=where)
    if have_cert:
        ours = f"our certificate {files.cert}"
    else:
        ours = "our connection without a client certificate (none found at " + "; ".join(
            f"{cert} with {key}" for cert, key in files.pair_tried) + ")"

    def check(status: bytes) -> None:
        if status == b"\x01":
            return
        said = (f"sent {status!r} instead of b'\\x01'" if status
                else "closed the connection")
        raise AuthenticationError(
            f"TLS to {where}: the server {said} after the handshake: it refused {ours} "
            "or our address (server verification failed; see libvirtd's "
            "tls_no_verify_certificate and tls_allowed_dn_list)")

    loop = asyncio_loop() if native else None
    try:
        if loop is not None:
            return await _dial_asyncio(loop, host, port, context, check)
        return await _dial_anyio(host, port, context, spawn, check)
    except ssl.SSLCertVerificationError as exc:
        raise AuthenticationError(
            f"TLS to {where}: the server's certificate failed verification against CA "
            f"{files.cacert} for host {host!r}: {exc.verify_message or exc.reason} "
            "(no_verify=1 skips this check, as in libvirt)") from exc
    except ssl.SSLError as exc:
        raise ConnectionFailed(f"TLS handshake with {where} failed: {exc.reason or exc} "
                               f"(with {ours})") from exc
    except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        raise ConnectionFailed(f"TLS to {where}: the server closed the connection during "
                               "the TLS handshake (is it libvirtd's TLS port?)") from exc
    except OSError as exc:
        raise ConnectionFailed(f"cannot connect to {where} (TLS): "
                               f"{exc.strerror or exc}") from exc
