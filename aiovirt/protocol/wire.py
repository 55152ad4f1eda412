"""The sans-IO core of libvirt's RPC protocol: bytes in, messages out, calls in, bytes out.

Nothing here awaits or touches a socket.  A packet is a big-endian u32 length (counting
itself), a 24-byte header and an XDR payload.  ``ClientProtocol`` frames outgoing calls,
allocates serials, checks sizes before reading a body, routes replies by serial and server
messages (events, keepalive) by type, answers keepalive PINGs with PONGs and turns
``remote_error`` payloads into exceptions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from collections.abc import Container
from typing import Any

from ..errors import EncodeError, LibvirtError, ProtocolError, error_from_remote
from . import keepalive, lxc, qemu, remote, virnet
from .xdr import GC_PAUSE_BYTES, ProcedureInfo, XdrError, decode, misfit

__all__ = [
    "CALL", "CALL_WITH_FDS", "ClientProtocol", "ERROR", "EventMessage", "FrameDecoder", "KeepaliveMessage",
    "MAX_FDS", "MAX_MESSAGE", "MESSAGE", "Message", "OK", "PROGRAMS", "REPLY",
    "REPLY_WITH_FDS", "Reply", "STREAM",
    "StreamMessage", "domain_lifecycle_type", "encode_message",
]

# Message types and statuses (virnetprotocol.x)
CALL, REPLY, MESSAGE, STREAM = 0, 1, 2, 3
CALL_WITH_FDS, REPLY_WITH_FDS, STREAM_HOLE = 4, 5, 6
OK, ERROR, CONTINUE = 0, 1, 2

MAX_MESSAGE = virnet.VIR_NET_MESSAGE_MAX           # whole packet, length word included
# FD passing (virnetmessage.c, virnetclient.c): a *_WITH_FDS packet has a u32 FD count between
# its header and its payload; after the packet's last byte each FD follows in a sendmsg of its
# own: one data byte (0) carrying one SCM_RIGHTS descriptor, so the byte stream holds one extra
# byte per FD right after the packet.
MAX_FDS = 32                                        # VIR_NET_MESSAGE_NUM_FDS_MAX
_PREFIX = struct.Struct(">IIIiiIi")                 # length + header
PREFIX_SIZE = _PREFIX.size                          # 28
_LENGTH = struct.Struct(">I")

# program number -> {procedure number -> ProcedureInfo}
PROGRAMS: dict[int, dict[int, ProcedureInfo]] = {
    remote.PROGRAM: remote.PROCEDURES,
    qemu.PROGRAM: qemu.PROCEDURES,
    lxc.PROGRAM: lxc.PROCEDURES,
    keepalive.PROGRAM: keepalive.PROCEDURES,
}
_REMOTE = remote.PROGRAM
_VERSIONS = {remote.PROGRAM: remote.VERSION, qemu.PROGRAM: qemu.VERSION,
             lxc.PROGRAM: lxc.VERSION, keepalive.PROGRAM: keepalive.VERSION}


@dataclass(slots=True)
class Message:
    """One framed packet: header fields and the undecoded payload."""

    program: int
    version: int
    procedure: int
    type: int
    serial: int
    status: int
    payload: bytes
    fds: int = 0        # REPLY_WITH_FDS: descriptors that followed (payload excludes the count)


def encode_message(program: int, procedure: int, type_: int, serial: int, status: int,
                   payload: bytes = b"", version: int = 1) -> bytes:
    """Frame one packet (used for calls, keepalive and by test peers)."""
    length = PREFIX_SIZE + len(payload)
    if length > MAX_MESSAGE:
        raise EncodeError(f"message of {length} bytes exceeds the limit of {MAX_MESSAGE}")
    return _PREFIX.pack(length, program, version, procedure, type_, serial, status) + payload


class FrameDecoder:
    """Splits a byte stream into ``Message`` objects, checking each length before its body."""

    __slots__ = ("_buffer", "max_message")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self.max_message = max_message

    def feed(self, data: bytes) -> list[Message]:
        return [Message(*fields) for fields in self.split(data)]

    def split(self, data: bytes) -> list[tuple[int, int, int, int, int, int, bytes, int]]:
        """``feed`` without the ``Message`` objects: each packet's fields as a tuple, in
        ``Message`` order (what ``ClientProtocol`` reads, once per reply)."""
        buffer = self._buffer
        # Fast path: with nothing held over, packets are parsed (and their payloads sliced)
        # straight out of ``data``; only an incomplete tail is copied into the buffer.
        held = bool(buffer) or type(data) is not bytes
        if held:
            buffer += data
            data = buffer   # type: ignore[assignment]
        max_message = self.max_message
        messages: list[tuple[int, int, int, int, int, int, bytes, int]] = []
        start, available = 0, len(data)
        while available - start >= 4:
            length, = _LENGTH.unpack_from(data, start)
            if length < PREFIX_SIZE:
                raise ProtocolError(f"packet length {length} is shorter than the "
                                    f"{PREFIX_SIZE}-byte header")
            if length > max_message:
                raise ProtocolError(f"packet length {length} exceeds the limit of "
                                    f"{max_message} bytes")
            if available - start < length:
                break
            _, program, version, procedure, type_, serial, status = \
                _PREFIX.unpack_from(data, start)
            if type_ == REPLY_WITH_FDS:
                # the FD count, then one byte per FD after the packet (each with its FD)
                if length < PREFIX_SIZE + 4:
                    raise ProtocolError("a reply with file descriptors has no FD count")
                nfds, = _LENGTH.unpack_from(data, start + PREFIX_SIZE)
                if nfds > MAX_FDS:
                    raise ProtocolError(f"a reply carries {nfds} file descriptors; at most "
                                        f"{MAX_FDS} are allowed")
                if available - start < length + nfds:
                    break   # held until every FD (and its byte) has arrived
                messages.append((program, version, procedure, type_, serial, status,
                                 bytes(data[start + PREFIX_SIZE + 4:start + length]), nfds))
                start += length + nfds
                continue
            payload = data[start + PREFIX_SIZE:start + length]
            messages.append((program, version, procedure, type_, serial, status,
                             bytes(payload) if held else payload, 0))
            start += length
        if held:
            if start:
                del buffer[:start]
        elif start < available:
            buffer += memoryview(data)[start:]
        return messages

    @property
    def buffered(self) -> int:
        """Bytes received but not yet forming a whole packet."""
        return len(self._buffer)


# -- what ClientProtocol.receive_data reports ------------------------------------------------

@dataclass(slots=True)
class Reply:
    """The answer to one call: ``value`` (decoded result or None) or ``error``."""

    serial: int
    value: Any = None
    error: LibvirtError | None = None
    fds: int = 0    # file descriptors that came with it (the transport holds them)


_NOT_DECODED: Any = object()
_INT = struct.Struct(">i")
# event procedure name -> whether its payload starts with ``int callbackID``
_ROUTED_BY_ID: dict[str, bool] = {}


def _starts_with_callback_id(procedure: ProcedureInfo) -> bool:
    routed = _ROUTED_BY_ID.get(procedure.name)
    if routed is None:
        slots = getattr(procedure.ret, "__slots__", ())
        routed = _ROUTED_BY_ID[procedure.name] = bool(slots) and slots[0] == "callbackID"
    return routed


class EventMessage:
    """A message the server sent unasked (type MESSAGE): an event, its payload decoded
    only when ``body`` is first read (most events reach no consumer, or one that skips
    them), so an event costs its routing until someone looks at it."""

    __slots__ = ("program", "procedure", "payload", "_body")

    def __init__(self, program: int, procedure: ProcedureInfo, payload: bytes = b"",
                 body: Any = _NOT_DECODED) -> None:
        self.program = program
        self.procedure = procedure
        self.payload = payload
        self._body = body

    @property
    def body(self) -> Any:
        """The decoded payload; a malformed one raises ``ProtocolError`` naming the event
        (each time it is read: the connection itself is unharmed, the packet was framed)."""
        body = self._body
        if body is _NOT_DECODED:
            body = self._body = decode(self.procedure.decode_ret, self.payload,
                                       f"event {self.procedure.name}")
        return body

    @property
    def callback_id(self) -> int | None:
        """The daemon's callback id the event is for, read from the payload without
        decoding it; None for an event that carries none (legacy events, close)."""
        if self._body is not _NOT_DECODED:
            return getattr(self._body, "callbackID", None)
        routed = _ROUTED_BY_ID.get(self.procedure.name)   # known after the first of its kind
        if not (routed if routed is not None else _starts_with_callback_id(self.procedure)):
            return None
        return _INT.unpack_from(self.payload)[0]   # 4 bytes at least: checked on receipt

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventMessage):
            return NotImplemented
        return (self.program, self.procedure, self.body) == \
            (other.program, other.procedure, other.body)

    __hash__ = None   # type: ignore[assignment]

    def __repr__(self) -> str:
        body = "<not decoded>" if self._body is _NOT_DECODED else repr(self._body)
        return f"EventMessage({self.program:#x}, {self.procedure.name}, {body})"


_U32 = struct.Struct(">I")


def domain_lifecycle_type(message: EventMessage) -> int | None:
    """The event type (``virDomainEventType``) of a ``domain_event_callback_lifecycle``
    message, read from its raw payload (callbackID, domain name, UUID, id, then the type)
    without decoding it; None if the payload is too short to hold one."""
    payload = message.payload
    try:
        length, = _U32.unpack_from(payload, 4)
        return _INT.unpack_from(payload, 28 + ((length + 3) & ~3))[0]
    except struct.error:
        return None


_LIFECYCLE_TAIL = struct.Struct(">16siii")   # UUID, id, event type, detail
_LIFECYCLE_PROCEDURE = remote.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE


def domain_lifecycle_fields(message: EventMessage) -> tuple[str, bytes, int, int, int] | None:
    """The domain name, UUID, id, event type and detail of a
    ``domain_event_callback_lifecycle`` message, read straight from its payload (what
    ``body`` holds, without making its three records); None when the message is anything
    else or not exactly that shape (``body`` then says what is wrong)."""
    payload = message.payload
    if message.procedure.number != _LIFECYCLE_PROCEDURE or \
            message.program != remote.PROGRAM or message._body is not _NOT_DECODED:
        return None
    try:
        length, = _U32.unpack_from(payload, 4)
        tail = 8 + ((length + 3) & ~3)
        if tail + 28 != len(payload) or length > remote.REMOTE_STRING_MAX:
            return None
        uuid, id_, kind, detail = _LIFECYCLE_TAIL.unpack_from(payload, tail)
        return payload[8:8 + length].decode("utf-8", "surrogateescape"), uuid, id_, kind, detail
    except (struct.error, UnicodeError):
        return None


@dataclass(slots=True)
class KeepaliveMessage:
    """A keepalive PING or PONG arrived (a PING is answered by ``ClientProtocol`` itself)."""

    ping: bool


@dataclass(slots=True)
class StreamMessage:
    """Stream data or status for the stream opened by call ``serial``."""

    serial: int
    status: int
    type: int
    payload: bytes
    error: LibvirtError | None = None


_PONG = encode_message(keepalive.PROGRAM, keepalive.KEEPALIVE_PROC_PONG, MESSAGE, 0, OK)


class ClientProtocol:
    """The client side of one libvirt RPC connection, without I/O.

    ``call`` frames a call and returns its serial and the packet to send, or None for the
    packet when it must wait: the call then waits in a FIFO queue and its packet joins
    ``data_to_send`` as soon as a reply (to any call, abandoned ones included) makes room.

    Room: ``max_in_flight`` is what the daemon works on at once (its max_client_requests);
    up to ``pipeline_depth`` calls go on the wire while none of them is *slow* (a procedure
    number of the REMOTE program in ``slow``), so the daemon finds its next call already
    waiting when it finishes one.  The calls beyond ``max_in_flight`` wait unread in the
    daemon's socket, behind quick calls only: a slow call on the wire stops that, so nothing
    sits behind a domain start or a save.  The protocol is the one owner of that state, so
    the in-flight count can never drift from the calls really on the wire.  ``receive_data``
    takes bytes read from the socket and returns what they mean; PONG answers also go to
    ``data_to_send``.
    """

    def __init__(self, max_message: int = MAX_MESSAGE, max_in_flight: int = 5,
                 pipeline_depth: int | None = None, slow: Container[int] = ()) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if pipeline_depth is not None and pipeline_depth < max_in_flight:
            raise ValueError(f"pipeline_depth ({pipeline_depth}) must be at least "
                             f"max_in_flight ({max_in_flight})")
        self._frames = FrameDecoder(max_message)
        # the largest packet ``_receive_whole`` parses in place (bigger: the general path)
        self._whole_limit = min(max_message, GC_PAUSE_BYTES)
        self._serial = 0
        self.max_in_flight = max_in_flight
        self.pipeline_depth = pipeline_depth or max_in_flight
        self._slow = slow
        self._slow_out: set[int] = set()   # serials of slow calls on the wire
        self._pending: dict[int, ProcedureInfo | None] = {}  # on the wire; None: abandoned
        self._queued: dict[int, tuple[ProcedureInfo, bytes]] = {}  # FIFO, not sent yet
        self._outgoing: list[bytes] = []
        self.streams: set[int] = set()  # serials whose STREAM messages are expected

    # -- outgoing -----------------------------------------------------------------------------
    def call(self, procedure: ProcedureInfo, args: Any = None,
             fds: int = 0) -> tuple[int, bytes | None]:
        """Frame a call; returns its serial and the packet to send now, or None if it queued.

        ``fds``: the number of file descriptors the caller sends after the packet (a
        CALL_WITH_FDS, its count before the payload).  Such a call is never queued: its
        packet and FDs must leave together, so it goes out at once even beyond the cap.
        Raises ``EncodeError`` (or ``TypeError``) for arguments that cannot be encoded;
        nothing is then pending or queued."""
        if fds and not 0 < fds <= MAX_FDS:
            raise EncodeError(f"{procedure.name}: {fds} file descriptors; at most {MAX_FDS} "
                              "can be sent")
        program = procedure.program
        encode_args = procedure.encode_args
        if encode_args is None and not fds:
            # no payload (the commonest small call): the header is the whole packet
            self._serial = serial = (self._serial + 1) & 0xFFFFFFFF or 1
            packet = _PREFIX.pack(PREFIX_SIZE, program, _VERSIONS[program], procedure.number,
                                  CALL, serial, OK)
        else:
            buf = bytearray(PREFIX_SIZE + 4 if fds else PREFIX_SIZE)
            if encode_args is not None:
                if args is None:
                    raise TypeError(f"{procedure.name} needs arguments of type "
                                    f"{getattr(procedure.args, '__name__', '?')}")
                try:
                    encode_args(buf, args)
                except XdrError as exc:
                    raise EncodeError(f"{procedure.name}: {exc}") from None
                except (struct.error, AttributeError, TypeError, UnicodeError) as exc:
                    culprit = misfit(args)
                    raise EncodeError(f"{procedure.name}: {culprit}" if culprit else
                                      f"{procedure.name}: cannot encode {args!r:.200}: "
                                      f"{exc}") from None
            length = len(buf)
            if length > MAX_MESSAGE:
                raise EncodeError(f"{procedure.name}: message of {length} bytes exceeds the "
                                  f"limit of {MAX_MESSAGE}")
            self._serial = serial = (self._serial + 1) & 0xFFFFFFFF or 1
            _PREFIX.pack_into(buf, 0, length, program, _VERSIONS[program], procedure.number,
                              CALL_WITH_FDS if fds else CALL, serial, OK)
            if fds:
                _LENGTH.pack_into(buf, PREFIX_SIZE, fds)
            packet = bytes(buf)
        pending = self._pending
        out = len(pending)
        slow = procedure.number in self._slow and program == _REMOTE
        if fds or (not self._queued and (out < self.max_in_flight or (
                out < self.pipeline_depth and not slow and not self._slow_out))):
            pending[serial] = procedure
            if slow:
                self._slow_out.add(serial)
            return serial, packet
        self._queued[serial] = (procedure, packet)
        return serial, None

    @property
    def writes_now(self) -> bool:
        """Whether a quick call made now would go on the wire at once (not queue)."""
        out = len(self._pending)
        return not self._queued and (out < self.max_in_flight or
                                     (out < self.pipeline_depth and not self._slow_out))

    def cancel(self, serial: int) -> bool:
        """The caller no longer waits for ``serial``.  A queued call is dropped unsent (returns
        False); one on the wire keeps its slot until its reply is read and discarded (True)."""
        if self._queued.pop(serial, None) is not None:
            return False
        if serial in self._pending:
            self._pending[serial] = None
            return True
        return False

    @property
    def pending(self) -> int:
        """Calls sent whose reply has not arrived yet (abandoned ones included)."""
        return len(self._pending)

    @property
    def queued(self) -> int:
        """Calls waiting for a free slot, not sent yet."""
        return len(self._queued)

    @property
    def load(self) -> int:
        """Calls sent and not answered plus calls queued: what a new call waits behind."""
        return len(self._pending) + len(self._queued)

    def ping(self) -> bytes:
        """A keepalive PING packet, for probing a quiet server."""
        return encode_message(keepalive.PROGRAM, keepalive.KEEPALIVE_PROC_PING, MESSAGE, 0, OK)

    def data_to_send(self) -> bytes:
        """Bytes the protocol wants sent on its own account (PONGs, calls admitted from the
        queue), and forgets them."""
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def drop_pongs(self) -> None:
        """Forget the PONGs not sent yet (a peer that pings and does not read: they would
        pile up; a PONG is only a sign of life, the next one does as well)."""
        self._outgoing[:] = [data for data in self._outgoing if data is not _PONG]

    def _admit(self) -> None:
        pending, queued, outgoing = self._pending, self._queued, self._outgoing
        while queued:
            serial = next(iter(queued))
            procedure, packet = queued[serial]
            out = len(pending)
            slow = procedure.number in self._slow and procedure.program == _REMOTE
            if out >= self.max_in_flight and (out >= self.pipeline_depth or slow or
                                              self._slow_out):
                break
            del queued[serial]
            pending[serial] = procedure
            if slow:
                self._slow_out.add(serial)
            outgoing.append(packet)

    # -- incoming -----------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Reply | EventMessage | KeepaliveMessage |
                                                 StreamMessage]:
        """Parse bytes from the server.  Raises ``ProtocolError`` on anything malformed."""
        return [Reply(item[0], item[1]) if type(item) is tuple else item
                for item in self.receive(data)]

    def receive(self, data: bytes) -> list[Any]:
        """``receive_data`` for the channel, which reads the commonest item cheaply: a
        successful reply (no descriptors) is a ``(serial, value)`` tuple, anything else the
        object ``receive_data`` gives.  Order is the order of arrival."""
        frames = self._frames
        if frames._buffer or type(data) is not bytes:
            results = self._receive_split(data)
        else:
            results = self._receive_whole(data)
        if self._slow_out:
            self._slow_out.intersection_update(self._pending)
        if self._queued and len(self._pending) < self.pipeline_depth:
            self._admit()
        return results

    def _receive_split(self, data: bytes | bytearray | memoryview) -> list[Any]:
        results: list[Any] = []
        route = self._route
        for fields in self._frames.split(data):
            result = route(*fields)
            if result is not None:
                results.append(result)
        return results

    def _receive_whole(self, data: bytes) -> list[Any]:
        """The usual read: packets parsed in place, and each small successful reply decoded
        straight out of ``data``; anything else (errors, events, descriptors, a torn last
        packet) goes the general way."""
        results: list[Any] = []
        pending, route = self._pending, self._route
        unpack = _PREFIX.unpack_from
        limit = self._whole_limit
        pos, end = 0, len(data)
        while end - pos >= PREFIX_SIZE:
            length, program, version, number, type_, serial, status = unpack(data, pos)
            if not PREFIX_SIZE <= length <= limit or end - pos < length or \
                    type_ == REPLY_WITH_FDS:
                break   # the general path checks, holds back or raises
            stop = pos + length
            if type_ == REPLY and status == OK:
                procedure = pending.get(serial)
                if procedure is not None and procedure.number == number and \
                        procedure.program == program and version == _VERSIONS[program]:
                    decoder = procedure.decode_ret
                    if decoder is not None:
                        try:
                            value, used = decoder(data, pos + PREFIX_SIZE)
                        except (XdrError, struct.error, UnicodeError, IndexError):
                            used = -1
                        if used == stop:
                            del pending[serial]
                            results.append((serial, value))
                            pos = stop
                            continue
                    elif length == PREFIX_SIZE:
                        del pending[serial]
                        results.append((serial, None))
                        pos = stop
                        continue
            elif type_ == MESSAGE and length >= PREFIX_SIZE + 4:
                # an event (what a watcher reads by the thousand): ``_route``'s checks, here
                table = PROGRAMS.get(program)
                procedure = table.get(number) if table is not None else None
                if procedure is not None and procedure.event and \
                        procedure.decode_ret is not None and version == _VERSIONS[program]:
                    results.append(EventMessage(program, procedure,
                                                data[pos + PREFIX_SIZE:stop]))
                    pos = stop
                    continue
            result = route(program, version, number, type_, serial, status,
                           data[pos + PREFIX_SIZE:stop], 0)
            if result is not None:
                results.append(result)
            pos = stop
        if pos < end:
            results += self._receive_split(data[pos:] if pos else data)
        return results

    def _route(self, program: int, version: int, number: int, type_: int, serial: int,
               status: int, payload: bytes, fds: int) -> Any:
        """What one packet means (its fields as ``FrameDecoder.split`` gives them)."""
        if type_ == REPLY or type_ == REPLY_WITH_FDS:
            try:
                procedure = self._pending.pop(serial)
            except KeyError:
                raise ProtocolError(f"reply to serial {serial}, which has no call "
                                    f"waiting (program {program:#x}, procedure "
                                    f"{number})") from None
            if procedure is None:
                # its caller gave up; the late reply is dropped, its slot freed (FDs it
                # brought are reported, for the channel to close)
                return Reply(serial, None, None, fds) if fds else None
            expected = procedure.program
            if program != expected:
                raise ProtocolError(f"reply to serial {serial} comes from program "
                                    f"{program:#x}, but {procedure.name} belongs to "
                                    f"program {expected:#x}")
            if version != _VERSIONS[expected]:
                raise ProtocolError(f"reply to serial {serial} ({procedure.name}) has "
                                    f"protocol version {version}, expected "
                                    f"{_VERSIONS[expected]}")
            if number != procedure.number:
                raise ProtocolError(f"reply to serial {serial} names procedure "
                                    f"{number}, but {procedure.name} was called")
            if status == OK:
                decoder = procedure.decode_ret
                if decoder is None:
                    if payload:
                        raise ProtocolError(f"{procedure.name}: unexpected reply payload")
                    return Reply(serial, None, None, fds)
                if len(payload) >= GC_PAUSE_BYTES:
                    return Reply(serial, decode(decoder, payload, procedure.name + " reply"),
                                 None, fds)
                # ``decode`` inlined for a small reply: its error label is built only if
                # decoding fails (then ``decode`` runs again, to raise the error it names)
                try:
                    value, end = decoder(payload, 0)
                except (XdrError, struct.error, UnicodeError, IndexError):
                    end = -1
                if end != len(payload):
                    decode(decoder, payload, procedure.name + " reply")   # raises
                return Reply(serial, value, None, fds)
            if status == ERROR:
                return Reply(serial, None, self._error(payload), fds)
            raise ProtocolError(f"reply to serial {serial} has bad status {status}")
        if type_ == MESSAGE:
            if program == keepalive.PROGRAM:
                if number == keepalive.KEEPALIVE_PROC_PING:
                    self._outgoing.append(_PONG)
                    return KeepaliveMessage(ping=True)
                if number == keepalive.KEEPALIVE_PROC_PONG:
                    return KeepaliveMessage(ping=False)
                raise ProtocolError(f"unknown keepalive procedure {number}")
            table = PROGRAMS.get(program)
            procedure = table.get(number) if table else None
            if procedure is None or not procedure.event or procedure.decode_ret is None:
                raise ProtocolError(f"unexpected message: program {program:#x} "
                                    f"procedure {number} is not an event")
            if version != _VERSIONS[program]:
                raise ProtocolError(f"event {procedure.name} has protocol version "
                                    f"{version}, expected {_VERSIONS[program]}")
            if len(payload) < 4 and _starts_with_callback_id(procedure):
                raise ProtocolError(f"event {procedure.name}: {len(payload)}-byte payload "
                                    f"has no callback id")
            return EventMessage(program, procedure, payload)
        if type_ == STREAM or type_ == STREAM_HOLE:
            if serial not in self.streams:
                return None  # a stream nobody reads any more (its call was abandoned)
            error = self._error(payload) if status == ERROR else None
            return StreamMessage(serial, status, type_, payload, error)
        raise ProtocolError(f"unexpected message type {type_} from the server")

    # -- streams ----------------------------------------------------------------------------
    def stream_packet(self, procedure: ProcedureInfo, serial: int, status: int,
                      payload: bytes = b"", type_: int = STREAM) -> bytes:
        """A STREAM (or STREAM_HOLE) packet of the stream opened by call ``serial``."""
        return encode_message(procedure.program, procedure.number, type_, serial, status,
                              payload, _VERSIONS[procedure.program])

    def stream_header(self, procedure: ProcedureInfo, serial: int, status: int,
                      payload_size: int, type_: int = STREAM) -> bytes:
        """The 28 bytes that go before a STREAM payload of ``payload_size`` bytes (so a large
        payload can be written after them without being copied into one packet)."""
        length = PREFIX_SIZE + payload_size
        if length > MAX_MESSAGE:
            raise EncodeError(f"message of {length} bytes exceeds the limit of {MAX_MESSAGE}")
        return _PREFIX.pack(length, procedure.program, _VERSIONS[procedure.program],
                            procedure.number, type_, serial, status)

    def end_stream(self, serial: int) -> None:
        """Stop expecting STREAM messages for ``serial``; late ones are dropped."""
        self.streams.discard(serial)

    @staticmethod
    def _error(payload: bytes) -> LibvirtError:
        return error_from_remote(decode(virnet._dec_MessageError, payload, "remote_error"))
