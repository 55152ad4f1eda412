"""Network filters: the ``NWFilter`` and ``NWFilterBinding`` handles (their methods are
generated)."""

from __future__ import annotations

from ..protocol.remote import NonnullNwfilter, NonnullNwfilterBinding
from .generated import NWFilterBindingGenerated, NWFilterGenerated
from .handle import ApiConnection, Handle, UUIDHandle

__all__ = ["NWFilter", "NWFilterBinding"]


class NWFilter(UUIDHandle, NWFilterGenerated):
    """A handle on one network filter; ``name`` and ``uuid`` are plain attributes."""

    __slots__ = ("name",)
    _ref: NonnullNwfilter
    _repr_fields = ("name", "uuid")

    def __init__(self, conn: ApiConnection, ref: NonnullNwfilter) -> None:
        super().__init__(conn, ref)
        self.name: str = ref.name


class NWFilterBinding(Handle, NWFilterBindingGenerated):
    """A handle on one filter binding: ``portdev`` (the guest's port device) and
    ``filtername`` (the filter bound to it)."""

    __slots__ = ("portdev", "filtername")
    _ref: NonnullNwfilterBinding
    _repr_fields = ("portdev", "filtername")

    def __init__(self, conn: ApiConnection, ref: NonnullNwfilterBinding) -> None:
        super().__init__(conn, ref)
        self.portdev: str = ref.portdev
        self.filtername: str = ref.filtername

    def _key(self) -> str:
        return self._ref.portdev
