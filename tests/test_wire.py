"""The sans-IO protocol core, without sockets: framing, routing, keepalive, errors, limits."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiovirt.errors import EncodeError

from aiovirt import LibvirtError, NoSuchDomain, ProtocolError
from aiovirt.protocol import keepalive, qemu, remote, virnet
from aiovirt.protocol.wire import (CALL, ERROR, MESSAGE, OK, REPLY, ClientProtocol, EventMessage,
                                   FrameDecoder, KeepaliveMessage, Reply, domain_lifecycle_fields,
                                   domain_lifecycle_type,
                                   encode_message)
from aiovirt.protocol.xdr import encode

P = remote.PROCEDURES
LOOKUP = P[remote.REMOTE_PROC_DOMAIN_LOOKUP_BY_NAME]
LIBVER = P[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION]
DOM = remote.NonnullDomain("vm1", bytes(range(16)), 7)


def reply(serial, procedure, value=None, status=OK, error=None):
    if status == ERROR:
        payload = encode(virnet._enc_MessageError, error, "err")
    elif procedure.encode_ret is not None:
        payload = encode(procedure.encode_ret, value, procedure.name)
    else:
        payload = b""
    return encode_message(remote.PROGRAM, procedure.number, REPLY, serial, status, payload)


def test_call_is_framed_with_header_and_serial():
    proto = ClientProtocol()
    serial, data = proto.call(LOOKUP, remote.DomainLookupByNameArgs("vm1"))
    [msg] = FrameDecoder().feed(data)
    assert (msg.program, msg.procedure, msg.type, msg.serial, msg.status) == \
        (remote.PROGRAM, 23, CALL, serial, OK)
    assert int.from_bytes(data[:4], "big") == len(data)
    serial2, _ = proto.call(LIBVER)
    assert serial2 == serial + 1
    assert proto.pending == 2


def test_replies_are_routed_by_serial_whatever_the_order():
    proto = ClientProtocol()
    s1, _ = proto.call(LOOKUP, remote.DomainLookupByNameArgs("vm1"))
    s2, _ = proto.call(LIBVER)
    data = reply(s2, LIBVER, remote.ConnectGetLibVersionRet(9000000)) + \
        reply(s1, LOOKUP, remote.DomainLookupByNameRet(DOM))
    results = proto.receive_data(data)
    assert results == [Reply(s2, remote.ConnectGetLibVersionRet(9000000)),
                       Reply(s1, remote.DomainLookupByNameRet(DOM))]
    assert proto.pending == 0


def test_frames_split_at_every_byte_boundary():
    proto = ClientProtocol()
    s1, _ = proto.call(LIBVER)
    data = encode_message(keepalive.PROGRAM, 1, MESSAGE, 0, OK) + \
        reply(s1, LIBVER, remote.ConnectGetLibVersionRet(1))
    for cut in range(len(data) + 1):
        proto2 = ClientProtocol()
        proto2.call(LIBVER)
        got = proto2.receive_data(data[:cut]) + proto2.receive_data(data[cut:])
        assert [type(x) for x in got] == [KeepaliveMessage, Reply]


def test_ping_is_answered_with_pong():
    proto = ClientProtocol()
    [item] = proto.receive_data(encode_message(keepalive.PROGRAM, 1, MESSAGE, 0, OK))
    assert item == KeepaliveMessage(ping=True)
    [pong] = FrameDecoder().feed(proto.data_to_send())
    assert (pong.program, pong.procedure, pong.type) == (keepalive.PROGRAM, 2, MESSAGE)
    assert proto.data_to_send() == b""


def test_events_are_routed_by_type_not_serial():
    proto = ClientProtocol()
    body = remote.DomainEventCallbackLifecycleMsg(3, remote.DomainEventLifecycleMsg(DOM, 2, 0))
    proc = P[remote.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE]
    # libvirtd sends events with serial 1, which may collide with a call's serial
    proto.call(LIBVER)
    data = encode_message(remote.PROGRAM, proc.number, MESSAGE, 1, OK,
                          encode(proc.encode_ret, body, "ev"))
    [event] = proto.receive_data(data)
    # routed without decoding: the callback id and lifecycle type are read from the bytes
    assert repr(event).endswith("<not decoded>)")
    assert event.callback_id == 3 and domain_lifecycle_type(event) == 2
    assert event == EventMessage(remote.PROGRAM, proc, body=body)
    assert proto.pending == 1


def test_a_malformed_event_body_is_reported_when_read_and_only_then():
    proto = ClientProtocol()
    proc = P[remote.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE]
    [event] = proto.receive_data(encode_message(remote.PROGRAM, proc.number, MESSAGE, 1, OK,
                                                b"\0\0\0\7" + b"\xff" * 6))
    assert event.callback_id == 7
    assert domain_lifecycle_type(event) is None     # too short to hold a type
    for _ in range(2):   # each read reports it; nothing is cached half-done
        with pytest.raises(ProtocolError, match="event domain_event_callback_lifecycle"):
            event.body
    with pytest.raises(ProtocolError, match="2-byte payload has no callback id"):
        proto.receive_data(encode_message(remote.PROGRAM, proc.number, MESSAGE, 1, OK, b"\0\0"))
    legacy = P[remote.REMOTE_PROC_DOMAIN_EVENT_LIFECYCLE]
    [old] = proto.receive_data(encode_message(remote.PROGRAM, legacy.number, MESSAGE, 1, OK,
                                              b"garbage!"))
    assert old.callback_id is None   # no callback id field: not routed, never decoded


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
               max_size=30), st.binary(min_size=16, max_size=16), st.integers(-2**31, 2**31 - 1),
       st.integers(-2**31, 2**31 - 1), st.integers(-2**31, 2**31 - 1),
       st.sampled_from(["whole", "short", "long", "legacy", "decoded"]))
def test_lifecycle_fields_read_from_the_payload_agree_with_the_decoder(
        name, uuid, id_, kind, detail, shape):
    """The raw reader gives what decoding gives, and None (decode to learn why) for anything
    that is not exactly a callback lifecycle event."""
    proc = P[remote.REMOTE_PROC_DOMAIN_EVENT_CALLBACK_LIFECYCLE]
    body = remote.DomainEventCallbackLifecycleMsg(
        5, remote.DomainEventLifecycleMsg(remote.NonnullDomain(name, uuid, id_), kind, detail))
    payload = encode(proc.encode_ret, body, "ev")
    if shape == "short":
        payload = payload[:-1]
    elif shape == "long":
        payload += b"\0\0\0\0"
    elif shape == "legacy":
        proc = P[remote.REMOTE_PROC_DOMAIN_EVENT_LIFECYCLE]
    [event] = ClientProtocol().receive_data(
        encode_message(remote.PROGRAM, proc.number, MESSAGE, 1, OK, payload))
    if shape == "decoded":
        event.body
    fields = domain_lifecycle_fields(event)
    if shape != "whole":
        assert fields is None
        if shape in ("short", "long"):
            with pytest.raises(ProtocolError):
                event.body
        return
    msg = event.body.msg
    assert fields == (msg.dom.name, msg.dom.uuid, msg.dom.id, msg.event, msg.detail) == \
        (name, uuid, id_, kind, detail)


def test_remote_error_becomes_exception_subclass():
    proto = ClientProtocol()
    s1, _ = proto.call(LOOKUP, remote.DomainLookupByNameArgs("nope"))
    err = virnet.MessageError(42, 12, "Domain not found: no domain with matching name 'nope'",
                              2, None, "nope", None, None, 0, 0, None)
    [item] = proto.receive_data(reply(s1, LOOKUP, status=ERROR, error=err))
    assert isinstance(item.error, NoSuchDomain) and isinstance(item.error, LibvirtError)
    assert (item.error.code, item.error.domain) == (42, 12)
    assert "nope" in item.error.message


def test_abandoned_call_reply_is_dropped():
    proto = ClientProtocol()
    s1, _ = proto.call(LIBVER)
    assert proto.cancel(s1) is True          # on the wire: keeps its slot until the reply
    assert proto.pending == 1
    assert proto.receive_data(reply(s1, LIBVER, remote.ConnectGetLibVersionRet(1))) == []
    assert proto.pending == 0


def test_calls_beyond_the_cap_queue_in_order_and_leave_as_replies_free_slots():
    proto = ClientProtocol(max_in_flight=2)
    sent = [proto.call(LIBVER) for _ in range(5)]
    assert [packet is not None for _, packet in sent] == [True, True, False, False, False]
    assert (proto.pending, proto.queued) == (2, 3)
    serials = [serial for serial, _ in sent]
    # one reply frees one slot: exactly the oldest queued call is released
    proto.receive_data(reply(serials[1], LIBVER, remote.ConnectGetLibVersionRet(1)))
    [admitted] = FrameDecoder().feed(proto.data_to_send())
    assert admitted.serial == serials[2]
    # a late reply to an abandoned call frees its slot just the same (the slot leak of old)
    proto.cancel(serials[0])
    assert proto.receive_data(reply(serials[0], LIBVER,
                                    remote.ConnectGetLibVersionRet(1))) == []
    assert [m.serial for m in FrameDecoder().feed(proto.data_to_send())] == [serials[3]]
    # a queued call that is cancelled never reaches the wire
    assert proto.cancel(serials[4]) is False
    assert (proto.pending, proto.queued) == (2, 0)
    proto.receive_data(reply(serials[2], LIBVER, remote.ConnectGetLibVersionRet(1)))
    assert proto.data_to_send() == b""
    # a new call while there is room goes out at once
    _, packet = proto.call(LIBVER)
    assert packet is not None and proto.pending == 2


def test_quick_calls_are_written_ahead_up_to_the_depth_while_no_slow_call_is_out():
    """Beyond max_in_flight, quick calls still go on the wire (up to pipeline_depth): the
    daemon finds them waiting.  A slow call on the wire stops that until its reply, and a
    slow call itself is never written ahead."""
    save = remote.PROCEDURES[remote.REMOTE_PROC_DOMAIN_SAVE]
    slow = {save.number}
    proto = ClientProtocol(max_in_flight=2, pipeline_depth=4, slow=slow)
    sent = [proto.call(LIBVER) for _ in range(5)]
    assert [packet is not None for _, packet in sent] == [True, True, True, True, False]
    assert (proto.pending, proto.queued, proto.writes_now) == (4, 1, False)
    for serial, _ in sent[:4]:
        proto.receive_data(reply(serial, LIBVER, remote.ConnectGetLibVersionRet(1)))
    assert [m.serial for m in FrameDecoder().feed(proto.data_to_send())] == [sent[4][0]]
    proto.receive_data(reply(sent[4][0], LIBVER, remote.ConnectGetLibVersionRet(1)))
    assert proto.writes_now and proto.pending == 0

    dom = remote.NonnullDomain("d", b"\0" * 16, 1)
    slow_serial, packet = proto.call(save, remote.DomainSaveArgs(dom, "/tmp/x"))
    assert packet is not None
    quick = [proto.call(LIBVER) for _ in range(3)]
    # one more fits under max_in_flight; none is written ahead behind the save
    assert [packet is not None for _, packet in quick] == [True, False, False]
    assert not proto.writes_now
    proto.receive_data(reply(quick[0][0], LIBVER, remote.ConnectGetLibVersionRet(1)))
    assert [m.serial for m in FrameDecoder().feed(proto.data_to_send())] == [quick[1][0]]
    # the save's reply (even abandoned) ends the hold: the rest goes out ahead
    proto.cancel(slow_serial)
    proto.receive_data(reply(slow_serial, save, None))
    assert [m.serial for m in FrameDecoder().feed(proto.data_to_send())] == [quick[2][0]]
    assert proto.writes_now
    # with room only under max_in_flight a slow call waits as anything would
    filler = [proto.call(LIBVER) for _ in range(2)]
    assert proto.pending == 4
    _, packet = proto.call(save, remote.DomainSaveArgs(dom, "/tmp/y"))
    assert packet is None and proto.queued == 1


def test_pipeline_depth_below_max_in_flight_is_refused():
    with pytest.raises(ValueError, match="pipeline_depth"):
        ClientProtocol(max_in_flight=5, pipeline_depth=4)


def test_unencodable_arguments_take_no_serial_and_no_slot():
    proto = ClientProtocol(max_in_flight=1)
    with pytest.raises(EncodeError, match="domain_lookup_by_name"):
        proto.call(LOOKUP, remote.DomainLookupByNameArgs(12345))
    assert (proto.pending, proto.queued) == (0, 0)
    serial, packet = proto.call(LIBVER)
    assert serial == 1 and packet is not None


def test_reply_with_wrong_version_or_program_is_named_as_such():
    proto = ClientProtocol()
    s1, _ = proto.call(LIBVER)
    payload = encode(LIBVER.encode_ret, remote.ConnectGetLibVersionRet(1), "x")
    bad_version = encode_message(remote.PROGRAM, LIBVER.number, REPLY, s1, OK, payload,
                                 version=7)
    with pytest.raises(ProtocolError, match="protocol version 7, expected 1"):
        proto.receive_data(bad_version)
    proto = ClientProtocol()
    s1, _ = proto.call(LIBVER)
    wrong_program = encode_message(qemu.PROGRAM, LIBVER.number, REPLY, s1, OK, payload)
    with pytest.raises(ProtocolError, match=f"from program {qemu.PROGRAM:#x}"):
        proto.receive_data(wrong_program)


def test_reply_to_unknown_serial_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="serial 99"):
        ClientProtocol().receive_data(reply(99, LIBVER, remote.ConnectGetLibVersionRet(1)))


def test_oversize_length_rejected_before_the_body_arrives():
    proto = ClientProtocol()
    header_only = (64 * 1024 * 1024).to_bytes(4, "big") + b"\0" * 24
    with pytest.raises(ProtocolError, match="exceeds the limit of 33554432"):
        proto.receive_data(header_only)


def test_short_length_rejected():
    with pytest.raises(ProtocolError, match="shorter than the 28-byte header"):
        FrameDecoder().feed((8).to_bytes(4, "big") + b"\0" * 4)


def test_garbage_payload_is_a_protocol_error():
    proto = ClientProtocol()
    s1, _ = proto.call(LOOKUP, remote.DomainLookupByNameArgs("x"))
    bad = encode_message(remote.PROGRAM, 23, REPLY, s1, OK, b"\xff\xff\xff\xff")
    with pytest.raises(ProtocolError, match="domain_lookup_by_name reply"):
        proto.receive_data(bad)


def test_message_over_the_limit_is_refused_on_send():
    proto = ClientProtocol()
    huge = "x" * (remote.REMOTE_STRING_MAX)
    args = remote.DomainDefineXmlFlagsArgs(huge, 0)
    s, data = proto.call(P[remote.REMOTE_PROC_DOMAIN_DEFINE_XML_FLAGS], args)  # 4 MiB is fine
    assert len(data) > remote.REMOTE_STRING_MAX
    with pytest.raises(EncodeError, match="exceed the limit"):
        proto.call(P[remote.REMOTE_PROC_DOMAIN_DEFINE_XML_FLAGS],
                   remote.DomainDefineXmlFlagsArgs(huge + "y", 0))
