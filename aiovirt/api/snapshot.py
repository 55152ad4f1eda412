"""Domain snapshots: the ``DomainSnapshot`` handle (its methods are generated)."""

from __future__ import annotations

from ..protocol.remote import NonnullDomainSnapshot
from .domain import Domain
from .generated import DomainSnapshotGenerated
from .handle import ApiConnection, Handle

__all__ = ["DomainSnapshot"]


class DomainSnapshot(Handle, DomainSnapshotGenerated):
    """A handle on one snapshot: ``name`` and ``domain`` (the ``Domain`` it belongs to)."""

    __slots__ = ("name", "domain")
    _ref: NonnullDomainSnapshot
    _repr_fields = ("name", "domain")

    def __init__(self, conn: ApiConnection, ref: NonnullDomainSnapshot) -> None:
        super().__init__(conn, ref)
        self.name: str = ref.name
        self.domain = Domain(conn, ref.dom)

    def _key(self) -> tuple[bytes, str]:
        return (self._ref.dom.uuid, self._ref.name)
