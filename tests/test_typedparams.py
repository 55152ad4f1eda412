"""Typed parameters: dict conversion, the types libvirt declares for setters without a getter,
and the all-domain-stats fast decoder against the generated one."""

from __future__ import annotations

import re
import struct
import uuid
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aiovirt
from aiovirt.protocol import remote
from aiovirt.api.typedparams import (BOOLEAN, DOUBLE, INT, LLONG, PARAM_MULTIPLE, PARAM_TYPES,
                                     STRING, UINT, ULLONG, decode_domain_stats, from_dict,
                                     to_dict)
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


MIGRATE = (PARAM_TYPES["virDomainMigrateToURI3"], PARAM_MULTIPLE["virDomainMigrateToURI3"])


def test_a_list_repeats_a_parameter_libvirt_takes_several_times():
    """migrate_disks and compression are sent once per item of a list or tuple, each item
    typed as declared; a list for any other parameter is an EncodeError naming it."""
    def sent(params):
        return [(p.field, p.value.type, p.value.value) for p in params]

    assert sent(from_dict({"migrate_disks": ["vda", "vdb"], "compression": ("mt",),
                           "bandwidth": 5}, *MIGRATE)) == [
        ("migrate_disks", STRING, "vda"), ("migrate_disks", STRING, "vdb"),
        ("compression", STRING, "mt"), ("bandwidth", ULLONG, 5)]
    assert from_dict({"migrate_disks": []}, *MIGRATE) == []
    with pytest.raises(EncodeError, match="'migrate_disks': expected a string, not 1"):
        from_dict({"migrate_disks": ["vda", 1]}, *MIGRATE)
    with pytest.raises(EncodeError, match="'bandwidth' takes one value, not \\[1, 2\\] "
                                          "\\(only compression, migrate_disks take several\\)"):
        from_dict({"bandwidth": [1, 2]}, *MIGRATE)
    with pytest.raises(EncodeError, match="'poll_max_ns' takes one value, not \\[1\\]$"):
        from_dict({"poll_max_ns": [1]}, PARAM_TYPES["virDomainSetIOThreadParams"])


async def test_migration_lists_reach_the_qemu_driver(daemon):
    """The QEMU driver takes both lists past its parameter check (which refuses a repeated
    parameter not flagged VIR_TYPED_PARAM_MULTIPLE) and reads them: it refuses two disks
    to migrate over a UNIX migration URI without an NBD URI, and one method given twice."""
    name = f"tp-{uuid.uuid4().hex[:8]}"
    xml = (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
           "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
           "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>")
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(xml)
        try:
            with pytest.raises(aiovirt.InvalidArgument, match="NBD URI must be supplied"):
                await dom.migrate_to_uri3(None, {"migrate_uri": "unix:/nonexistent",
                                                 "migrate_disks": ["vda", "vdb"]})
            with pytest.raises(aiovirt.InvalidArgument, match="'xbzrle' is specified twice"):
                await dom.migrate_to_uri3(None, {"compression": ("xbzrle", "xbzrle")})
        finally:
            await dom.undefine()


def test_multiple_parameters_are_libvirts():
    """PARAM_MULTIPLE names the parameters whose macros libvirt describes as a "params
    multiple field" (qemu_migration.h flags the same VIR_TYPED_PARAM_MULTIPLE)."""
    if not API_XML.exists():
        pytest.skip(f"{API_XML} is missing (apt-get install libvirt-dev)")
    multiple = {m.get("string") for m in ET.parse(API_XML).getroot().iter("macro")
                if "params multiple field" in (m.findtext("info") or "")}
    assert set(PARAM_MULTIPLE) <= set(PARAM_TYPES)
    for function, names in PARAM_TYPES.items():
        assert PARAM_MULTIPLE.get(function, set()) == multiple & set(names), function
    assert multiple == {"migrate_disks", "compression"}


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
