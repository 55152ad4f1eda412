"""Host network interfaces: the ``Interface`` handle (its methods are generated)."""

from __future__ import annotations

from ..protocol.remote import NonnullInterface
from .generated import InterfaceGenerated
from .handle import ApiConnection, Handle

__all__ = ["Interface"]


class Interface(Handle, InterfaceGenerated):
    """A handle on one host interface: ``name`` and ``mac`` (its MAC address as text)."""

    __slots__ = ("name", "mac")
    _ref: NonnullInterface
    _repr_fields = ("name", "mac")

    def __init__(self, conn: ApiConnection, ref: NonnullInterface) -> None:
        super().__init__(conn, ref)
        self.name: str = ref.name
        self.mac: str = ref.mac

    def _key(self) -> str:
        return self._ref.name
