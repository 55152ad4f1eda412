"""libvirt typed parameters (``remote_typed_param``) to and from plain Python dicts.

Besides converting the generated ``TypedParam`` lists, this module decodes the one reply
where typed parameters come by the ten thousand, ``CONNECT_GET_ALL_DOMAIN_STATS``, straight
from the wire into dicts: no intermediate ``TypedParam`` objects, same limits and checks.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from ..errors import EncodeError
from ..protocol import remote
from ..protocol.remote import NonnullDomain, TypedParam, TypedParamValue
from ..protocol.xdr import ProcedureInfo, XdrError

__all__ = ["INT", "UINT", "LLONG", "ULLONG", "DOUBLE", "BOOLEAN", "STRING", "DOMAIN_STATS",
           "PARAM_MULTIPLE", "PARAM_TYPES", "decode_domain_stats", "from_dict", "param_items",
           "to_dict"]

INT, UINT, LLONG, ULLONG, DOUBLE, BOOLEAN, STRING = 1, 2, 3, 4, 5, 6, 7


def to_dict(params: list[TypedParam]) -> dict[str, Any]:
    """``[TypedParam('state.state', (1, 5))]`` -> ``{'state.state': 5}``; booleans become bool."""
    result: dict[str, Any] = {}
    for param in params:
        value = param.value
        result[param.field] = value.value if value.type != BOOLEAN else bool(value.value)
    return result


def from_dict(values: dict[str, Any], types: dict[str, int] | None = None,
              multiple: Collection[str] = ()) -> list[TypedParam]:
    """Encode a dict as typed parameters, guessing each type unless ``types`` names it; a
    list or tuple gives a parameter of ``multiple`` once per item (``param_items``).  A value
    that does not fit its type is an ``EncodeError`` naming the parameter."""
    if not isinstance(values, Mapping):
        raise EncodeError(f"typed parameters are a dict of names to values, not "
                          f"{values!r:.60}")
    params = []
    for field, value in param_items(values, multiple):
        kind = (types or {}).get(field)
        if kind is None:
            if isinstance(value, bool):
                kind = BOOLEAN
            elif isinstance(value, int):
                kind = ULLONG if value >= 0 else LLONG
            elif isinstance(value, float):
                kind = DOUBLE
            elif isinstance(value, str):
                kind = STRING
            else:
                raise EncodeError(f"typed parameter {field!r}: cannot encode {value!r:.60} "
                                  "(give an int, float, bool or str)")
        elif not isinstance(value, _KINDS.get(kind, object)):
            raise EncodeError(f"typed parameter {field!r}: expected "
                              f"{_KIND_NAMES.get(kind, 'a value')}, not {value!r:.60}")
        span = _RANGES.get(kind)
        if span is not None and not span[0] <= value <= span[1]:
            raise EncodeError(f"typed parameter {field!r}: {value} is out of range "
                              f"({span[0]}..{span[1]})")
        params.append(TypedParam(field, TypedParamValue(kind, int(value) if kind == BOOLEAN
                                                        else value)))
    return params


def param_items(values: Mapping[str, Any], multiple: Collection[str] | None = ()
                ) -> Iterator[tuple[str, Any]]:
    """(name, value) per typed parameter, a list or tuple giving its name once per item (as
    libvirt takes a ``VIR_TYPED_PARAM_MULTIPLE`` one) for the names in ``multiple`` (None:
    any, as libvirt-python's bindings); for another name it is an ``EncodeError``."""
    for field, value in values.items():
        if not isinstance(field, str):
            raise EncodeError(f"typed parameter names are strings, not {field!r:.60}")
        if not isinstance(value, (list, tuple)):
            yield field, value
        elif multiple is None or field in multiple:
            yield from ((field, item) for item in value)
        else:
            raise EncodeError(f"typed parameter {field!r} takes one value, not {value!r:.60}"
                              + (f" (only {', '.join(sorted(multiple))} take several)"
                                 if multiple else ""))


# what each typed-parameter type takes (a bool is an int to Python, and 0 or 1 to libvirt)
_KINDS: dict[int, type | tuple[type, ...]] = {
    INT: int, UINT: int, LLONG: int, ULLONG: int, DOUBLE: (int, float), BOOLEAN: int,
    STRING: str}
_RANGES = {INT: (-(1 << 31), (1 << 31) - 1), UINT: (0, (1 << 32) - 1),
           LLONG: (-(1 << 63), (1 << 63) - 1), ULLONG: (0, (1 << 64) - 1)}
_KIND_NAMES = {INT: "an int", UINT: "an int", LLONG: "an int", ULLONG: "an int",
               DOUBLE: "a number", BOOLEAN: "a bool", STRING: "a string"}


# -- the declared types of parameters no getter reports --------------------------------------
# libvirt 9.0's types for them: its headers' VIR_* macros name each parameter and most say its
# type; the drivers' virTypedParamsValidate calls (qemu_driver.c, viridentity.c,
# qemu_migration.h) declare them all and refuse any other type.  The setters below have no
# getter to learn them from, so both the object API and aiovirt.compat type values by these.

# ``VIR_MIGRATE_PARAM_*`` (QEMU_MIGRATION_PARAMETERS)
_MIGRATE_PARAM_TYPES: dict[str, int] = {
    **dict.fromkeys(("migrate_uri", "destination_name", "destination_xml", "persistent_xml",
                     "graphics_uri", "listen_address", "migrate_disks", "compression",
                     "tls.destination", "disks_uri"), STRING),
    **dict.fromkeys(("bandwidth", "compression.xbzrle.cache", "bandwidth.postcopy"), ULLONG),
    **dict.fromkeys(("disks_port", "compression.mt.level", "compression.mt.threads",
                     "compression.mt.dthreads", "auto_converge.initial",
                     "auto_converge.increment", "parallel.connections"), INT)}
_SAVE_PARAM_TYPES = {"file": STRING, "dxml": STRING}   # VIR_DOMAIN_SAVE_PARAM_*

#: libvirt function -> {parameter: type} for the typed-parameter setters without a getter
PARAM_TYPES: dict[str, dict[str, int]] = {
    # VIR_DOMAIN_IOTHREAD_*
    "virDomainSetIOThreadParams": {"poll_max_ns": ULLONG, "poll_grow": UINT,
                                   "poll_shrink": UINT, "thread_pool_min": INT,
                                   "thread_pool_max": INT},
    # VIR_DOMAIN_BLOCK_COPY_*
    "virDomainBlockCopy": {"bandwidth": ULLONG, "granularity": UINT, "buf-size": ULLONG},
    # VIR_CONNECT_IDENTITY_*
    "virConnectSetIdentity": {
        **dict.fromkeys(("user-name", "group-name", "sasl-user-name",
                         "x509-distinguished-name", "selinux-context"), STRING),
        "unix-user-id": ULLONG, "unix-group-id": ULLONG, "process-id": LLONG,
        "process-time": ULLONG},
    # VIR_DOMAIN_LAUNCH_SECURITY_SEV_SECRET*
    "virDomainSetLaunchSecurityState": {"sev-secret": STRING, "sev-secret-header": STRING,
                                        "sev-secret-set-address": ULLONG},
    "virDomainSaveParams": _SAVE_PARAM_TYPES,
    "virDomainRestoreParams": _SAVE_PARAM_TYPES,
    "virDomainMigrate3": _MIGRATE_PARAM_TYPES,
    "virDomainMigrateToURI3": _MIGRATE_PARAM_TYPES,
}

# the migration parameters QEMU_MIGRATION_PARAMETERS flags VIR_TYPED_PARAM_MULTIPLE, the only
# ones libvirt 9.0 takes more than once (any other repeated, it refuses the call)
_MIGRATE_MULTIPLE = frozenset(("migrate_disks", "compression"))

#: libvirt function -> the parameters it takes several times (from_dict: a list of values)
PARAM_MULTIPLE: dict[str, frozenset[str]] = {"virDomainMigrate3": _MIGRATE_MULTIPLE,
                                             "virDomainMigrateToURI3": _MIGRATE_MULTIPLE}

# -- CONNECT_GET_ALL_DOMAIN_STATS, decoded straight into dicts ---------------------------------

_U32 = struct.Struct(">I")
_DOMAIN_TAIL = struct.Struct(">16si")   # remote_nonnull_domain after its name: uuid, id
_SCALARS = {INT: struct.Struct(">i"), UINT: struct.Struct(">I"), LLONG: struct.Struct(">q"),
            ULLONG: struct.Struct(">Q"), DOUBLE: struct.Struct(">d"),
            BOOLEAN: struct.Struct(">i")}
_STRING_MAX = remote.REMOTE_STRING_MAX
_RECORDS_MAX = remote.REMOTE_DOMAIN_LIST_MAX
_PARAMS_MAX = remote.REMOTE_CONNECT_GET_ALL_DOMAIN_STATS_MAX

DomainStats = list[tuple[NonnullDomain, dict[str, Any]]]


def decode_domain_stats(d: bytes, o: int) -> tuple[DomainStats, int]:
    """``remote_connect_get_all_domain_stats_ret`` as [(domain reference, {field: value})].

    The same wire format and limits as the generated decoder (a property test holds them
    equal), at about half its cost with the dicts built: records go straight into dicts, and
    field names, which repeat in every record, are decoded once.
    """
    unpack = _U32.unpack_from
    domain_tail = _DOMAIN_TAIL.unpack_from
    scalars = _SCALARS.get
    end = len(d)
    fields: dict[bytes, str] = {}

    def string(o: int, what: str) -> tuple[bytes, int]:
        length, = unpack(d, o)
        o += 4
        if length > _STRING_MAX:
            raise XdrError(f"{what}: {length} bytes exceed the limit of {_STRING_MAX}")
        if o + length > end:
            raise XdrError(f"{what}: truncated")
        return d[o:o + length], o + ((length + 3) & ~3)

    count, = unpack(d, o)
    o += 4
    if count > _RECORDS_MAX:
        raise XdrError(f"ConnectGetAllDomainStatsRet.retStats: {count} items exceed the limit "
                       f"of {_RECORDS_MAX}")
    records: DomainStats = []
    add = records.append
    for _ in range(count):
        raw, o = string(o, "NonnullDomain.name")
        uuid, id_ = domain_tail(d, o)
        o += 20
        nparams, = unpack(d, o)
        o += 4
        if nparams > _PARAMS_MAX:
            raise XdrError(f"DomainStatsRecord.params: {nparams} items exceed the limit of "
                           f"{_PARAMS_MAX}")
        values: dict[str, Any] = {}
        for _ in range(nparams):
            # the field name, string() inlined: this loop is the hot path
            length, = unpack(d, o)
            o += 4
            if length > _STRING_MAX:
                raise XdrError(f"TypedParam.field: {length} bytes exceed the limit of "
                               f"{_STRING_MAX}")
            if o + length > end:
                raise XdrError("TypedParam.field: truncated")
            key = d[o:o + length]
            field = fields.get(key)
            if field is None:
                field = fields[key] = key.decode("utf-8", "surrogateescape")
            o += (length + 3) & ~3
            kind, = unpack(d, o)
            o += 4
            scalar = scalars(kind)
            if scalar is not None:
                value, = scalar.unpack_from(d, o)
                o += scalar.size
                if kind == BOOLEAN:
                    value = bool(value)
            elif kind == STRING:
                text, o = string(o, "TypedParamValue.s")
                value = text.decode("utf-8", "surrogateescape")
            else:
                raise XdrError(f"TypedParamValue: no arm for type={kind}")
            values[field] = value
        add((NonnullDomain(raw.decode("utf-8", "surrogateescape"), uuid, id_), values))
    return records, o


#: ``CONNECT_GET_ALL_DOMAIN_STATS`` with ``decode_domain_stats`` as its reply decoder.
DOMAIN_STATS: ProcedureInfo = dataclasses.replace(
    remote.PROCEDURES[remote.REMOTE_PROC_CONNECT_GET_ALL_DOMAIN_STATS],
    ret=None, decode_ret=decode_domain_stats)
