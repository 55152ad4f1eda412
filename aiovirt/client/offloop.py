"""Coroutines stepped by a thread that owns the event loop while the loop does not run.

The blocking drop-in (``aiovirt.compat.libvirt``) runs a lone caller's call that way, as
libvirt's own client does: the call is written and its reply read on the caller's thread,
with no pass of the loop.  Code on the way that needs the running loop (a time limit, a lane
or a reconnection to wait for, file descriptors, a stream) asks for it while ``stepping()``:
``await OnLoop(awaitable)`` hands that piece to the driver, which runs it on the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Generator
from typing import Any

__all__ = ["OnLoop", "local", "stepping"]

local = threading.local()   # ``local.on``: this thread steps a coroutine without the loop


def stepping() -> bool:
    """Whether this thread steps a coroutine while the loop does not run."""
    return getattr(local, "on", False)


class OnLoop:
    """A piece of a stepped coroutine that needs the running loop: the driver runs
    ``awaitable`` there and sends its result back (or throws its error in)."""

    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self.awaitable = awaitable

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self)
