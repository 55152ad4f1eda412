"""Secrets: the ``Secret`` handle and the connection's secret methods."""

from __future__ import annotations

import uuid as _uuid
from enum import IntEnum

from ..errors import NoSuchSecret
from .generated import SecretGenerated
from .handle import ApiBase, ApiConnection, UUIDHandle, enum_or_int, uuid_bytes
from ..protocol.remote import NonnullSecret

__all__ = ["Secret", "SecretMethods", "SecretUsageType"]


class SecretUsageType(IntEnum):
    """What a secret is for (``VIR_SECRET_USAGE_TYPE_*``); the usage XML element's type."""

    NONE = 0
    VOLUME = 1
    CEPH = 2
    ISCSI = 3
    TLS = 4
    VTPM = 5


class Secret(UUIDHandle, SecretGenerated):
    """A handle on one secret: ``uuid``, ``usage_type`` (``VIR_SECRET_USAGE_TYPE_*``) and
    ``usage_id`` (what it is for, e.g. a volume path or a Ceph user)."""

    __slots__ = ("usage_type", "usage_id")
    _ref: NonnullSecret
    _repr_fields = ("uuid", "usage_type", "usage_id")

    def __init__(self, conn: ApiConnection, ref: NonnullSecret) -> None:
        super().__init__(conn, ref)
        self.usage_type: SecretUsageType | int = enum_or_int(SecretUsageType, ref.usageType)
        self.usage_id: str = ref.usageID

    async def xml(self, flags: int = 0) -> str:
        return (await self._conn.rpc.secret_get_xml_desc(self._ref, flags)).xml

    async def set_value(self, value: bytes | bytearray | memoryview, flags: int = 0) -> None:
        """Store the secret's value (arbitrary bytes: a passphrase, a key); anything but
        bytes (a str, an int) is a TypeError."""
        if not isinstance(value, (bytes, bytearray, memoryview)):
            hint = ": encode it first" if isinstance(value, str) else ""
            raise TypeError(f"a secret's value is bytes, not {type(value).__name__}{hint}")
        await self._conn.rpc.secret_set_value(self._ref, bytes(value), flags)

    async def value(self, flags: int = 0) -> bytes:
        """The secret's value (refused by the daemon for private secrets)."""
        return (await self._conn.rpc.secret_get_value(self._ref, flags)).value

    async def undefine(self) -> None:
        """Delete the secret and its value."""
        await self._conn.rpc.secret_undefine(self._ref)

    delete = undefine


class SecretMethods(ApiBase):
    """The connection's secret methods (mixed into ``Connection``)."""

    async def define_secret(self, xml: str, flags: int = 0) -> Secret:
        """Define (or, with a known ``<uuid>``, redefine) a secret from its XML; it has no
        value until ``set_value``."""
        return Secret(self, (await self.rpc.secret_define_xml(xml, flags)).secret)

    async def lookup_secret(self, *, uuid: str | _uuid.UUID | None = None,
                            usage: tuple[SecretUsageType | int, str] | None = None) -> Secret:
        """Find a secret by ``uuid`` or by ``usage=(usage_type, usage_id)``."""
        if (uuid is None) == (usage is None):
            raise TypeError("lookup_secret takes exactly one of uuid= or usage=")
        try:
            if uuid is not None:
                what = f"uuid {uuid}"
                ref = (await self.rpc.secret_lookup_by_uuid(uuid_bytes(uuid))).secret
            else:
                usage_type, usage_id = usage  # type: ignore[misc]
                what = f"usage type {int(usage_type)} id {usage_id!r}"
                ref = (await self.rpc.secret_lookup_by_usage(int(usage_type),
                                                             usage_id)).secret
        except NoSuchSecret as exc:
            raise exc.with_context(f"no secret with {what}") from None
        return Secret(self, ref)

    async def list_secrets(self, flags: int = 0) -> list[Secret]:
        """All secrets (``VIR_CONNECT_LIST_SECRETS_*`` flags filter them)."""
        ret = await self.rpc.connect_list_all_secrets(1, flags)
        return [Secret(self, ref) for ref in ret.secrets]
