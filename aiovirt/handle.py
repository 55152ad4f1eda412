"""What the object API is built on: the connection interface handles need, and ``Handle``."""

from __future__ import annotations

import uuid as _uuid
from typing import Any

from .protocol.remote import RemoteCalls

__all__ = ["ConnectionBase", "Handle", "uuid_bytes", "uuid_text"]


class ConnectionBase:
    """The part of ``Connection`` that object handles and mixins use."""

    rpc: RemoteCalls

    @property
    def is_alive(self) -> bool:
        raise NotImplementedError

    def _add_subscription(self, family: str, callback_id: int, subscription: Any) -> None:
        raise NotImplementedError

    def _remove_subscription(self, family: str, callback_id: int) -> None:
        raise NotImplementedError


class Handle:
    """A handle on one libvirt object: its connection and its wire reference (``_ref``).

    Two handles are equal when they name the same object (same ``_key()``)."""

    __slots__ = ("_conn", "_ref")

    def __init__(self, conn: ConnectionBase, ref: Any) -> None:
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


def uuid_text(raw: bytes) -> str:
    """16 raw bytes as libvirt prints a UUID."""
    return str(_uuid.UUID(bytes=raw))


def uuid_bytes(value: str | _uuid.UUID) -> bytes:
    """A UUID given as text or ``uuid.UUID`` as the 16 bytes the wire carries."""
    return _uuid.UUID(str(value)).bytes
