"""Typed parameters: dict conversion, the types libvirt declares for setters without a getter,
and the all-domain-stats fast decoder against the generated one."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiovirt.protocol import remote
from aiovirt.api.typedparams import (BOOLEAN, DOUBLE, INT, LLONG, PARAM_TYPES, STRING, UINT,
                                     ULLONG, decode_domain_stats, from_dict, to_dict)
from aiovirt.errors import EncodeError
from aiovirt.protocol.xdr import XdrError, decode, encode
from rpc import apimap

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


# -- the declared types of setters without a getter ---------------------------------------------
# each function's parameters: libvirt's macros of this prefix
FAMILIES = {"virDomainSetIOThreadParams": "VIR_DOMAIN_IOTHREAD_",
            "virDomainBlockCopy": "VIR_DOMAIN_BLOCK_COPY_",
            "virConnectSetIdentity": "VIR_CONNECT_IDENTITY_",
            "virDomainSetLaunchSecurityState": "VIR_DOMAIN_LAUNCH_SECURITY_SEV_SECRET",
            "virDomainSaveParams": "VIR_DOMAIN_SAVE_PARAM_",
            "virDomainRestoreParams": "VIR_DOMAIN_SAVE_PARAM_",
            "virDomainMigrate3": "VIR_MIGRATE_PARAM_",
            "virDomainMigrateToURI3": "VIR_MIGRATE_PARAM_"}
# how a macro's description names a type
SAID = {"VIR_TYPED_PARAM_INT": INT, "VIR_TYPED_PARAM_UINT": UINT,
        "VIR_TYPED_PARAM_LLONG": LLONG, "VIR_TYPED_PARAM_ULLONG": ULLONG,
        "VIR_TYPED_PARAM_DOUBLE": DOUBLE, "VIR_TYPED_PARAM_BOOLEAN": BOOLEAN,
        "VIR_TYPED_PARAM_STRING": STRING, "unsigned int": UINT, "unsigned long long": ULLONG}
API_XML = apimap.API_XML_DIR / apimap.API_XML["libvirt"]


@pytest.mark.skipif(not API_XML.exists(), reason=f"{API_XML} is missing (apt-get install "
                                                 "libvirt-dev)")
def test_declared_types_are_libvirts():
    """PARAM_TYPES names each function's parameters as libvirt 9.0's macros do (all of them,
    nothing else), with the type a macro's description gives where it gives one (the others,
    such as poll_grow's, are the drivers': test_generated_api sends them to the daemon)."""
    macros = {m.get("name", ""): (m.get("string"), m.findtext("info") or "")
              for m in ET.parse(API_XML).getroot().iter("macro")}
    assert set(PARAM_TYPES) == set(FAMILIES)
    for function, prefix in FAMILIES.items():
        family = {string: info for name, (string, info) in macros.items()
                  if name.startswith(prefix)}
        assert set(PARAM_TYPES[function]) == set(family), function
        for field, info in family.items():
            said = {SAID[word] for word in re.findall("|".join(SAID), info)}
            assert said <= {PARAM_TYPES[function][field]}, (function, field, info)
    # what guessing from the Python value would get wrong
    assert PARAM_TYPES["virDomainSetIOThreadParams"]["poll_grow"] == UINT
    assert PARAM_TYPES["virConnectSetIdentity"]["process-id"] == LLONG
