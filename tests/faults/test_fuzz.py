"""Fuzzing the bytes a server controls: the frame decoder, ``ClientProtocol.receive_data`` and
every generated XDR decoder.  Whatever arrives, nothing but ``ProtocolError`` (``XdrError`` is
one) may come out.

Every decoder is also swept deterministically (its smallest valid encoding, each truncation of
it, each word of it replaced by edge values, junk appended).  The hypothesis runs are short
by default (a few seconds in all); ``AIOVIRT_FUZZ_EXAMPLES=N`` runs N examples per test
instead, the long run (give pytest ``--timeout 0`` for very long ones)."""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiovirt.errors import ProtocolError
from aiovirt.protocol import keepalive, lxc, qemu, remote, virnet
from aiovirt.protocol.wire import (CALL, ERROR, MESSAGE, OK, PROGRAMS, REPLY, REPLY_WITH_FDS,
                                   STREAM, ClientProtocol, FrameDecoder, encode_message)
from aiovirt.protocol.xdr import XdrError, decode

Decoder = Callable[[bytes, int], Any]


def examples(default: int) -> int:
    """How many hypothesis examples a fuzz test runs: ``default`` unless asked for more."""
    return int(os.environ.get("AIOVIRT_FUZZ_EXAMPLES") or default)


FUZZ = settings(max_examples=examples(150), deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def all_decoders() -> dict[str, tuple[Decoder, Callable[[bytearray, Any], None] | None]]:
    """Every generated decoder (structs, unions, procedure arguments and results), once
    each, by name, with its encoder."""
    found: dict[int, tuple[str, Decoder, Any]] = {}
    for module in (remote, qemu, lxc, keepalive, virnet):
        short = module.__name__.rsplit(".", 1)[1]
        for name, function in vars(module).items():
            if name.startswith("_dec_") and callable(function) and id(function) not in found:
                found[id(function)] = (f"{short}.{name[5:]}", function,
                                       getattr(module, "_enc_" + name[5:], None))
        for info in getattr(module, "PROCEDURES", {}).values():
            for kind in ("args", "ret"):
                function = getattr(info, "decode_" + kind)
                if function is not None and id(function) not in found:
                    found[id(function)] = (f"{short}.{info.name}.{kind}", function,
                                           getattr(info, "encode_" + kind))
    return {name: (dec, enc) for name, dec, enc in found.values()}


def smallest_encoding(decoder: Decoder, what: str) -> bytes:
    """The shortest run of zero words that decodes entirely (or, for a union whose tag 0 is
    no case, zeros with one small tag word among them): a valid encoding to mutate."""
    candidates = (bytes(4 * words) for words in range(256))
    tagged = (bytes(4 * at) + struct.pack(">I", tag) + bytes(4 * (words - at - 1))
              for words in range(1, 64) for at in range(words) for tag in range(1, 17))
    for data in itertools.chain(candidates, tagged):
        try:
            decode(decoder, data, what)
        except XdrError:
            continue
        return data
    raise AssertionError(f"{what}: no small valid encoding found")


DECODERS = all_decoders()
NAMES = sorted(DECODERS)
SEEDS = {name: smallest_encoding(DECODERS[name][0], name) for name in NAMES}
EDGES = (0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 0x00400001, 0x00040001, 3, 2, 1)


def only_protocol_errors(decoder: Decoder, data: bytes, what: str) -> Any:
    """Decode; a ``ProtocolError`` is fine (returns None), anything else fails the test."""
    try:
        return decode(decoder, data, what)
    except ProtocolError:
        return None


def test_there_are_decoders_to_fuzz():
    assert len(DECODERS) > 600     # remote_protocol.x alone has ~700 types and procedures
    assert "remote.NonnullDomain" in DECODERS and "virnet.MessageError" in DECODERS


def test_every_decoder_swept_with_truncations_edge_words_and_junk():
    inputs = 0
    for name in NAMES:
        decoder, encoder = DECODERS[name]
        seed = SEEDS[name]
        value = decode(decoder, seed, name)
        if encoder is not None:            # the seed is canonical: it encodes back to itself
            buf = bytearray()
            encoder(buf, value)
            assert bytes(buf) == seed, name
        for end in range(len(seed)):       # a strict prefix never decodes whole
            with pytest.raises(XdrError):
                decode(decoder, seed[:end], name)
        with pytest.raises(XdrError, match="left over"):
            decode(decoder, seed + b"\0\0\0\0", name)
        for offset in range(0, len(seed), 4):
            for edge in EDGES:
                mutated = seed[:offset] + struct.pack(">I", edge) + seed[offset + 4:]
                only_protocol_errors(decoder, mutated, name)
                only_protocol_errors(decoder, mutated + bytes(64), name)
                inputs += 2
        inputs += len(seed) + 2
    assert inputs > 10_000


@FUZZ
@given(st.sampled_from(NAMES), st.binary(max_size=512))
def test_decoders_take_random_bytes(name, data):
    only_protocol_errors(DECODERS[name][0], data, name)


@st.composite
def mutated_seed(draw: st.DrawFn) -> tuple[str, bytes]:
    """A decoder and its valid encoding with a few words overwritten, bytes flipped,
    inserted or cut."""
    name = draw(st.sampled_from(NAMES))
    data = bytearray(SEEDS[name] + draw(st.binary(max_size=64)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(("word", "flip", "insert", "cut")))
        if action == "word":
            data[at:at + 4] = struct.pack(">I", draw(st.sampled_from(EDGES) |
                                                    st.integers(0, 0xFFFFFFFF)))
        elif action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 8))]
    return name, bytes(data)


@FUZZ
@given(mutated_seed())
def test_decoders_take_mutated_valid_encodings(case):
    name, data = case
    value = only_protocol_errors(DECODERS[name][0], data, name)
    encoder = DECODERS[name][1]
    if value is not None and encoder is not None:   # what decodes can be sent back...
        try:
            encoder(bytearray(), value)
        except XdrError as exc:
            # ...but a string with a NUL inside: decoded as libvirt's own xdr_string takes
            # it, refused on the way out (a C string would end at the NUL)
            assert "contains a NUL character" in str(exc), exc


# -- frames and the client protocol --------------------------------------------------------------

@FUZZ
@given(st.lists(st.binary(max_size=128), max_size=8))
def test_frame_decoder_takes_random_chunks(chunks):
    frames = FrameDecoder()
    try:
        for chunk in chunks:
            for message in frames.feed(chunk):
                assert 28 <= len(message.payload) + 28 <= frames.max_message
    except ProtocolError:
        pass


I32 = st.integers(-(2 ** 31), 2 ** 31 - 1)
U32 = st.integers(0, 0xFFFFFFFF)


def packets() -> st.SearchStrategy[bytes]:
    """Well-framed packets with any header (procedure, type and status are signed); a
    REPLY_WITH_FDS is well framed with its FD count and one byte per FD after it."""
    programs = st.sampled_from(list(PROGRAMS) + [0, 0xFFFFFFFF])
    plain = st.builds(encode_message, programs, I32,
                      (I32 | st.integers(0, 7)).filter(lambda t: t != REPLY_WITH_FDS), U32,
                      I32, st.binary(max_size=64), U32)
    with_fds = st.builds(
        lambda program, procedure, serial, status, nfds, body, version: encode_message(
            program, procedure, REPLY_WITH_FDS, serial, status,
            struct.pack(">I", nfds) + body, version) + bytes(nfds),
        programs, I32, U32, I32, st.integers(0, 32), st.binary(max_size=64), U32)
    return plain | with_fds


@FUZZ
@given(st.lists(packets(), min_size=1, max_size=6), st.data())
def test_frame_decoder_splits_any_chunking_the_same(stream, data):
    """Law: the messages do not depend on how the bytes were cut into reads."""
    whole = b"".join(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=10)))
    frames, chunked = FrameDecoder(), []
    for start, end in zip([0, *cuts], [*cuts, len(whole)]):
        chunked += frames.feed(whole[start:end])
    assert chunked == FrameDecoder().feed(whole) and frames.buffered == 0
    assert len(chunked) == len(stream)


# calls whose replies (and events) reach a variety of real decoders
CALLED = [remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION, remote.REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS,
          remote.REMOTE_PROC_DOMAIN_GET_XML_DESC, remote.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME,
          remote.REMOTE_PROC_NODE_GET_INFO, remote.REMOTE_PROC_CONNECT_GET_ALL_DOMAIN_STATS,
          remote.REMOTE_PROC_DOMAIN_GET_SCHEDULER_PARAMETERS_FLAGS]


def protocol_with_calls() -> tuple[ClientProtocol, list[int]]:
    protocol = ClientProtocol(max_in_flight=len(CALLED))
    serials = []
    for number in CALLED:
        info = remote.PROCEDURES[number]
        args = decode(info.decode_args, SEEDS_BY_DECODER[id(info.decode_args)], info.name) \
            if info.decode_args is not None else None
        serial, packet = protocol.call(info, args)
        assert packet is not None
        serials.append(serial)
    return protocol, serials


SEEDS_BY_DECODER = {id(DECODERS[name][0]): SEEDS[name] for name in NAMES}


@st.composite
def server_messages(draw: st.DrawFn, serials: list[int]) -> bytes:
    """A message a broken server might send: real header values mostly, sometimes not;
    the payload a valid encoding for some procedure (mutated or not), or random."""
    program = draw(st.sampled_from([remote.PROGRAM, remote.PROGRAM, qemu.PROGRAM,
                                    keepalive.PROGRAM, 0x1234]))
    table = PROGRAMS.get(program) or remote.PROCEDURES
    number = draw(st.sampled_from(CALLED) | st.sampled_from(sorted(table)) | I32)
    type_ = draw(st.sampled_from([REPLY, REPLY, MESSAGE, STREAM, CALL]) | I32)
    serial = draw(st.sampled_from(serials) | st.integers(0, 20) | U32)
    status = draw(st.sampled_from([OK, OK, ERROR, 2]) | I32)
    info = table.get(number)
    decoders = [f for f in (getattr(info, "decode_ret", None), virnet._dec_MessageError)
                if f is not None]
    payload = draw(st.sampled_from([b""] + [SEEDS_BY_DECODER[id(f)] for f in decoders]) |
                   st.binary(max_size=64))
    if payload and draw(st.booleans()):
        at = draw(st.integers(0, len(payload) - 1))
        payload = payload[:at] + draw(st.binary(max_size=8)) + payload[at + 1:]
    version = draw(st.sampled_from([1, 1, 1, 2, 0]) | U32)
    return encode_message(program, number, type_, serial, status, payload, version)


@settings(FUZZ, max_examples=examples(60))
@given(st.data())
def test_client_protocol_takes_any_server_messages(data):
    protocol, serials = protocol_with_calls()
    stream = b"".join(data.draw(st.lists(server_messages(serials), min_size=1, max_size=6)))
    if data.draw(st.booleans()):                    # and sometimes raw damage
        at = data.draw(st.integers(0, len(stream) - 1))
        stream = stream[:at] + data.draw(st.binary(max_size=16)) + stream[at:]
    try:
        for start in range(0, len(stream), 37):
            protocol.receive_data(stream[start:start + 37])
    except ProtocolError:
        pass


def test_every_procedure_reply_decodes_its_smallest_encoding_through_the_protocol():
    """Each procedure with a result: its smallest valid reply reaches the caller decoded."""
    for program, table in PROGRAMS.items():
        for number, info in table.items():
            if info.event or program == keepalive.PROGRAM:
                continue
            protocol = ClientProtocol()
            args = None
            if info.decode_args is not None:
                args = decode(info.decode_args, SEEDS_BY_DECODER[id(info.decode_args)],
                              info.name)
            serial, _ = protocol.call(info, args)
            payload = SEEDS_BY_DECODER[id(info.decode_ret)] if info.decode_ret else b""
            version = {qemu.PROGRAM: qemu.VERSION, lxc.PROGRAM: lxc.VERSION}.get(
                program, remote.VERSION)
            (reply,) = protocol.receive_data(encode_message(
                program, number, REPLY, serial, OK, payload, version))
            assert reply.serial == serial and reply.error is None
            if info.decode_ret is not None:
                assert reply.value == decode(info.decode_ret, payload, info.name)
