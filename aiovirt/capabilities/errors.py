"""The one exception of capability merging: bad input, named by host and document."""

from __future__ import annotations

from ..errors import AiovirtError

__all__ = ["CapabilityError"]


class CapabilityError(AiovirtError, ValueError):
    """Capabilities that cannot be merged as given: malformed XML, a wrong root element,
    hosts of different architectures or virt types, or a ``min_hosts`` out of range."""
