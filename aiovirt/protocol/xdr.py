"""What the generated protocol modules share: XDR errors, padding and the procedure record."""

from __future__ import annotations

import collections.abc
import dataclasses
import gc
import re
import struct
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any
from collections.abc import Callable

from ..errors import EncodeError, ProtocolError

__all__ = ["Int32", "Int64", "IntRange", "ProcedureInfo", "Record", "UInt32", "UInt64",
           "XdrError", "decode", "encode", "misfit", "plain_hint"]


@dataclass(frozen=True, slots=True)
class IntRange:
    """The values an XDR integer type holds: the generated records annotate each integer
    field with one (``Int32``...), so an encoding error can name the field and its range."""

    low: int
    high: int
    xdr: str   # the type's name in the .x file


# The integer field types of the generated records: plain ``int`` to type checkers
Int32 = Annotated[int, IntRange(-(1 << 31), (1 << 31) - 1, "int")]
UInt32 = Annotated[int, IntRange(0, (1 << 32) - 1, "unsigned int")]
Int64 = Annotated[int, IntRange(-(1 << 63), (1 << 63) - 1, "hyper")]
UInt64 = Annotated[int, IntRange(0, (1 << 64) - 1, "unsigned hyper")]
_RANGED = re.compile(r"\bU?Int(?:32|64)\b")


def plain_hint(hint: str) -> str:
    """A record field's annotation (a string) with its ranged integers as plain ``int``."""
    return _RANGED.sub("int", hint)


class XdrError(ProtocolError):
    """A value does not fit its XDR type: a length over its declared limit, a bad tag, truncation."""


class _LazyFields:
    """``__dataclass_fields__`` of a ``Record`` class, made when first asked for and then
    kept on that class: ``dataclasses.fields``, ``replace`` and ``asdict`` work on the wire
    records while importing them makes no dataclass (which cost ~10x the import)."""

    def __get__(self, obj: object, cls: type) -> dict[str, dataclasses.Field[Any]]:
        if cls is Record:
            raise AttributeError("__dataclass_fields__")
        kinds = cls.__annotations__
        shadow = dataclasses.make_dataclass(
            cls.__name__, [(name, kinds[name]) for name in cls.__slots__],
            init=False, repr=False, eq=False)
        fields: dict[str, dataclasses.Field[Any]] = shadow.__dataclass_fields__
        cls.__dataclass_fields__ = fields  # type: ignore[attr-defined]
        return fields


class Record:
    """Base of the generated structs and unions: slotted, compared and shown field by
    field like a dataclass (unhashable, as a mutable dataclass is)."""

    __slots__ = ()
    __dataclass_fields__ = _LazyFields()
    __hash__ = None  # type: ignore[assignment]

    def __init_subclass__(cls) -> None:
        cls.__match_args__ = cls.__slots__   # positional patterns, as a dataclass has them

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        names = self.__slots__
        return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)


def misfit(record: Any, where: str = "") -> str | None:
    """The first field of ``record`` (nested records and lists included) holding what its
    declared type cannot, said as ``path: expected T, not U (value)``; None if none is
    plainly wrong.  For ``EncodeError``'s message, on the error path only."""
    if not isinstance(record, Record):
        return None
    try:
        hints = typing.get_type_hints(type(record), include_extras=True)
    except Exception:   # noqa: BLE001 - an annotation we cannot resolve: say nothing
        return None
    for name in record.__slots__:
        wrong = _misfit(getattr(record, name, None), hints.get(name), f"{where}{name}")
        if wrong:
            return wrong
    return None


_KINDS: dict[type, tuple[type, ...]] = {int: (int,), float: (int, float),
                                       bytes: (bytes, bytearray, memoryview)}


def _misfit(value: Any, hint: Any, path: str) -> str | None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        wrong = _misfit(value, args[0], path)
        if wrong or type(value) is bool:
            return wrong
        for limits in args[1:]:
            if isinstance(limits, IntRange) and not limits.low <= value <= limits.high:
                return (f"{path}: {value} is out of range for XDR {limits.xdr} "
                        f"({limits.low}..{limits.high})")
        return None
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        return _misfit(value, others[0], path) if len(others) == 1 else None
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            return f"{path}: expected a list, not {type(value).__name__} ({value!r:.60})"
        for index, item in enumerate(value):
            wrong = _misfit(item, args[0] if args else None, f"{path}[{index}]")
            if wrong:
                return wrong
        return None
    if not isinstance(hint, type) or hint is Any:
        return None
    if not isinstance(value, _KINDS.get(hint, (hint,))):
        return f"{path}: expected {hint.__name__}, not {type(value).__name__} ({value!r:.60})"
    return misfit(value, f"{path}.") if issubclass(hint, Record) else None


_U32 = struct.Struct(">I")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length & 3
_TRUE = b"\0\0\0\1"
_FALSE = b"\0\0\0\0"

Encoder = Callable[[bytearray, Any], None]
Decoder = Callable[[bytes, int], "tuple[Any, int]"]


@dataclass(frozen=True, slots=True)
class ProcedureInfo:
    """One remote procedure: its number, name, argument/result types and their codecs."""

    number: int
    name: str
    args: type | None
    ret: type | None
    encode_args: Encoder | None
    decode_args: Decoder | None
    encode_ret: Encoder | None
    decode_ret: Decoder | None
    high_priority: bool = False
    stream: str | None = None   # "read" or "write" when the procedure opens a stream
    event: bool = False         # a message the server sends unasked (ret is its payload)
    program: int = 0


def encode(encoder: Encoder, value: Any, what: str) -> bytes:
    """Encode one value, turning a wrong Python value into an ``EncodeError`` naming
    ``what``."""
    buf = bytearray()
    try:
        encoder(buf, value)
    except XdrError as exc:
        raise EncodeError(f"{what}: {exc}") from None
    except (struct.error, AttributeError, TypeError, UnicodeError) as exc:
        culprit = misfit(value)
        raise EncodeError(f"{what}: {culprit}" if culprit else
                          f"{what}: cannot encode {value!r:.200}: {exc}") from None
    return bytes(buf)


# Payloads from this size up pause the cyclic garbage collector while they decode: a large
# reply makes tens of thousands of acyclic objects, and the collections they would trigger
# (full ones included, over the whole heap) cost more than the decoding itself.
GC_PAUSE_BYTES = 64 * 1024


def decode(decoder: Decoder, data: bytes, what: str) -> Any:
    """Decode a whole payload; trailing or missing bytes are an ``XdrError`` naming ``what``."""
    pause = len(data) >= GC_PAUSE_BYTES and gc.isenabled()
    if pause:
        gc.disable()
    try:
        value, end = decoder(data, 0)
    except XdrError as exc:
        raise XdrError(f"{what}: {exc}") from None
    except (struct.error, UnicodeError, IndexError) as exc:
        raise XdrError(f"{what}: truncated or malformed payload: {exc}") from None
    finally:
        if pause:
            gc.enable()
    if end != len(data):
        raise XdrError(f"{what}: {len(data) - end} bytes left over after the payload")
    return value
