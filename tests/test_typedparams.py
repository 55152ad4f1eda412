"""Typed parameters: dict conversion, and the all-domain-stats fast decoder against the
generated one."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiovirt.protocol import remote
from aiovirt.api.typedparams import BOOLEAN, decode_domain_stats, from_dict, to_dict
from aiovirt.errors import EncodeError
from aiovirt.protocol.xdr import XdrError, decode, encode

from .test_xdr import records


def encode_stats(recs: list[remote.DomainStatsRecord]) -> bytes:
    return encode(remote._enc_ConnectGetAllDomainStatsRet,
                  remote.ConnectGetAllDomainStatsRet(recs), "stats")


@given(st.lists(records, max_size=6))
def test_fast_decoder_agrees_with_the_generated_one(recs):
    data = encode_stats(recs)
    generated = decode(remote._dec_ConnectGetAllDomainStatsRet, data, "generated")
    fast = decode(decode_domain_stats, data, "fast")
    assert [(r.dom, to_dict(r.params)) for r in generated.retStats] == fast


def test_booleans_become_bool_and_strings_stay_text():
    param = remote.TypedParam
    value = remote.TypedParamValue
    rec = remote.DomainStatsRecord(remote.NonnullDomain("vm", bytes(16), 3), [
        param("ok", value(BOOLEAN, 1)), param("name", value(7, "héllo")),
        param("load", value(5, 0.5))])
    [(dom, values)] = decode(decode_domain_stats, encode_stats([rec]), "stats")
    assert dom.name == "vm" and dom.id == 3
    assert values == {"ok": True, "name": "héllo", "load": 0.5}
    assert type(values["ok"]) is bool


@pytest.mark.parametrize("cut", [1, 5, 17, 30])
def test_truncated_reply_is_an_error(cut):
    rec = remote.DomainStatsRecord(remote.NonnullDomain("some-domain", bytes(16), 1),
                                   [remote.TypedParam("state.state",
                                                      remote.TypedParamValue(1, 1))])
    data = encode_stats([rec])
    with pytest.raises(XdrError, match="stats"):
        decode(decode_domain_stats, data[:-cut], "stats")


def test_unknown_value_type_is_named():
    rec = remote.DomainStatsRecord(remote.NonnullDomain("vm", bytes(16), 1),
                                   [remote.TypedParam("x", remote.TypedParamValue(1, 1))])
    data = bytearray(encode_stats([rec]))
    # the value's type tag sits 8 bytes from the end: tag(4) + int(4)
    struct.pack_into(">I", data, len(data) - 8, 99)
    with pytest.raises(XdrError, match="no arm for type=99"):
        decode(decode_domain_stats, bytes(data), "stats")


def test_record_count_over_the_limit_is_refused_before_decoding():
    data = struct.pack(">I", remote.REMOTE_DOMAIN_LIST_MAX + 1)
    with pytest.raises(XdrError, match="exceed the limit of 16384"):
        decode(decode_domain_stats, data, "stats")


def test_dict_round_trip():
    values = {"a": 1, "b": -2, "c": 1.5, "d": "text", "e": True}
    assert to_dict(from_dict(values)) == values
    # what cannot be encoded is an EncodeError naming the parameter (as for any argument)
    with pytest.raises(EncodeError, match="typed parameter 'f': cannot encode"):
        from_dict({"f": object()})
    with pytest.raises(EncodeError, match="typed parameter 'cmt': expected a bool, not 'yes'"):
        from_dict({"cmt": "yes"}, {"cmt": BOOLEAN})   # was int()'s "invalid literal"
    with pytest.raises(EncodeError, match="typed parameter 'hard_limit': expected an int"):
        from_dict({"hard_limit": 1.5}, {"hard_limit": 4})
    with pytest.raises(EncodeError, match=r"typed parameter 'big': 1180591620717411303424 is "
                                          r"out of range \(0\.\.18446744073709551615\)"):
        from_dict({"big": 2 ** 70})   # was struct's words, the field unnamed
    with pytest.raises(EncodeError, match="a dict of names to values, not \\[\\('a', 1\\)\\]"):
        from_dict([("a", 1)])   # type: ignore[arg-type]   # was AttributeError (.items)
