"""Domain checkpoints: the ``DomainCheckpoint`` handle (its methods are generated)."""

from __future__ import annotations

from ..protocol.remote import NonnullDomainCheckpoint
from .domain import Domain
from .generated import DomainCheckpointGenerated
from .handle import ApiConnection, Handle

__all__ = ["DomainCheckpoint"]


class DomainCheckpoint(Handle, DomainCheckpointGenerated):
    """A handle on one checkpoint: ``name`` and ``domain`` (the ``Domain`` it belongs to)."""

    __slots__ = ("name", "domain")
    _ref: NonnullDomainCheckpoint
    _repr_fields = ("name", "domain")

    def __init__(self, conn: ApiConnection, ref: NonnullDomainCheckpoint) -> None:
        super().__init__(conn, ref)
        self.name: str = ref.name
        self.domain = Domain(conn, ref.dom)

    def _key(self) -> tuple[bytes, str]:
        return (self._ref.dom.uuid, self._ref.name)
