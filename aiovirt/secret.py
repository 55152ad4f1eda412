"""Secrets: the ``Secret`` handle and the connection's secret methods."""

from __future__ import annotations

import uuid as _uuid

from .errors import NoSuchSecret
from .handle import ConnectionBase, Handle, uuid_bytes, uuid_text
from .protocol.remote import NonnullSecret

__all__ = ["Secret", "SecretMethods"]


class Secret(Handle):
    """A handle on one secret: ``uuid``, ``usage_type`` (``VIR_SECRET_USAGE_TYPE_*``) and
    ``usage_id`` (what it is for, e.g. a volume path or a Ceph user)."""

    __slots__ = ("uuid", "usage_type", "usage_id")
    _ref: NonnullSecret
    _repr_fields = ("uuid", "usage_type", "usage_id")

    def __init__(self, conn: ConnectionBase, ref: NonnullSecret) -> None:
        super().__init__(conn, ref)
        self.uuid = uuid_text(ref.uuid)
        self.usage_type = ref.usageType
        self.usage_id = ref.usageID

    def _key(self) -> bytes:
        return self._ref.uuid

    async def xml(self, flags: int = 0) -> str:
        return (await self._conn.rpc.secret_get_xml_desc(self._ref, flags)).xml

    async def set_value(self, value: bytes, flags: int = 0) -> None:
        await self._conn.rpc.secret_set_value(self._ref, bytes(value), flags)

    async def value(self, flags: int = 0) -> bytes:
        """The secret's value (refused by the daemon for private secrets)."""
        return (await self._conn.rpc.secret_get_value(self._ref, flags)).value

    async def undefine(self) -> None:
        await self._conn.rpc.secret_undefine(self._ref)

    delete = undefine


class SecretMethods(ConnectionBase):
    """The connection's secret methods (mixed into ``Connection``)."""

    async def define_secret(self, xml: str, flags: int = 0) -> Secret:
        return Secret(self, (await self.rpc.secret_define_xml(xml, flags)).secret)

    async def lookup_secret(self, *, uuid: str | _uuid.UUID | None = None,
                            usage: tuple[int, str] | None = None) -> Secret:
        """Find a secret by ``uuid`` or by ``usage=(usage_type, usage_id)``."""
        if (uuid is None) == (usage is None):
            raise TypeError("lookup_secret takes exactly one of uuid= or usage=")
        try:
            if uuid is not None:
                ref = (await self.rpc.secret_lookup_by_uuid(uuid_bytes(uuid))).secret
            else:
                usage_type, usage_id = usage  # type: ignore[misc]
                ref = (await self.rpc.secret_lookup_by_usage(usage_type, usage_id)).secret
        except NoSuchSecret as exc:
            what = f"uuid {uuid}" if uuid is not None else f"usage {usage!r}"
            raise exc.with_context(f"no secret with {what}") from None
        return Secret(self, ref)

    async def list_secrets(self, flags: int = 0) -> list[Secret]:
        ret = await self.rpc.connect_list_all_secrets(1, flags)
        return [Secret(self, ref) for ref in ret.secrets]
