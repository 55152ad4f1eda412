"""What the object API is built on: the connection interface handles need (a ``Protocol``),
the mixins' base, and ``Handle``."""

from __future__ import annotations

import uuid as _uuid
from collections.abc import Awaitable, Sequence
from enum import IntEnum
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..client.events import SubscriptionHost
from ..errors import EncodeError
from ..protocol.remote import RemoteCalls
from ..protocol.xdr import ProcedureInfo

__all__ = ["ApiBase", "ApiConnection", "Handle", "UUIDHandle", "enum_or_int", "enum_value",
           "uuid_bytes", "uuid_text"]


class ApiConnection(SubscriptionHost, Protocol):
    """What handles and the object API need of a connection: typed calls (``rpc``), raw
    calls (``call``, ``start``) and event subscriptions.  ``aiovirt.Connection`` is one."""

    rpc: RemoteCalls

    async def call(self, procedure: ProcedureInfo, args: Any = None,
                   timeout: float | None | EllipsisType = ..., *,
                   lane: bool | None = None) -> Any: ...

    def start(self, procedure: ProcedureInfo, args: Any = None,
              timeout: float | None | EllipsisType = ...,
              lane: bool | None = None) -> Awaitable[Any]:
        """``call`` sent at once, its reply awaited by the caller (the generated methods
        use it: one coroutine frame less per call than ``rpc``)."""

    async def call_with_fds(self, procedure: ProcedureInfo, args: Any = None,
                            fds: Sequence[int] = (),
                            timeout: float | None | EllipsisType = ...
                            ) -> tuple[Any, list[int]]: ...


if TYPE_CHECKING:
    _Declared = ApiConnection
else:
    _Declared = object


class ApiBase(_Declared):
    """Base of the object API's connection mixins (``HostMethods``, ``DomainMethods``...):
    at run time it defines nothing; to type checkers it says that ``self`` is an
    ``ApiConnection`` (the class the mixins are joined into, with the RPC connection,
    provides it)."""

    __slots__ = ()


class Handle:
    """A handle on one libvirt object: its connection and its wire reference (``_ref``).

    Two handles are equal when they name the same object (same ``_key()``)."""

    __slots__ = ("_conn", "_ref")

    def __init__(self, conn: ApiConnection, ref: Any) -> None:
        self._conn = conn
        self._ref = ref

    def _key(self) -> Any:
        return self._ref

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._key() == self._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def __repr__(self) -> str:
        fields = " ".join(f"{name}={getattr(self, name)!r}" for name in self._repr_fields)
        return f"<{type(self).__name__} {fields}>"

    _repr_fields: tuple[str, ...] = ()


class UUIDHandle(Handle):
    """A handle on an object that a UUID names (domains, networks, pools, secrets).

    ``uuid`` is computed from the wire reference when read, so making a handle costs nothing
    for it (``all_domain_stats`` makes thousands)."""

    __slots__ = ()

    @property
    def uuid(self) -> str:
        """The object's UUID as text."""
        return uuid_text(self._ref.uuid)

    def _key(self) -> bytes:
        return self._ref.uuid  # type: ignore[no-any-return]


def uuid_text(raw: bytes) -> str:
    """16 raw bytes as libvirt prints a UUID (``str(uuid.UUID(bytes=raw))``, 4x faster)."""
    if len(raw) != 16:
        raise ValueError(f"a UUID has 16 bytes, not {len(raw)}")
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_E = TypeVar("_E", bound=IntEnum)


def enum_value(cls: type[IntEnum], value: object, what: str) -> int:
    """An argument meant as one of ``cls``: a member, its name in any case ("title"), or an
    int (a value newer than this table included); ``EncodeError`` names anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        member = cls.__members__.get(value.strip().upper().replace("-", "_"))
        if member is not None:
            return int(member)
    raise EncodeError(f"{what} must be a {cls.__name__} ({', '.join(cls.__members__)}) or an "
                      f"int, not {value!r:.60}")


def enum_or_int(cls: type[_E], value: int) -> _E | int:
    """``cls(value)``, or the plain int for a value newer than this table (a dict lookup:
    event conversion calls this for every event)."""
    return cls._value2member_map_.get(value, value)  # type: ignore[return-value]


def uuid_bytes(value: str | _uuid.UUID) -> bytes:
    """A UUID given as text or ``uuid.UUID`` as the 16 bytes the wire carries;
    ``EncodeError`` names anything else."""
    if isinstance(value, _uuid.UUID):
        return value.bytes
    if isinstance(value, str):
        try:
            return _uuid.UUID(value).bytes
        except ValueError:
            pass
    raise EncodeError(f"uuid {value!r:.60} is not a UUID (give text such as "
                      "'3f1c2b8e-5a0d-4c7e-9b21-0d6f4e8a1c01' or a uuid.UUID)")
