"""libvirt-python's ``libvirtaio`` for the compat drop-in: event callbacks of
``aiovirt.compat.libvirt`` connections run on an asyncio loop.

    import aiovirt.compat.libvirtaio as libvirtaio
    libvirtaio.virEventRegisterAsyncIOImpl()      # the running (or given) loop
"""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from . import libvirt as _libvirt

__all__ = ["getCurrentImpl", "virEventAsyncIOImpl", "virEventRegisterAsyncIOImpl"]


class virEventAsyncIOImpl:  # noqa: N801 - libvirt-python's name
    """Runs the callbacks on ``loop``; ``is_idle`` / ``drain`` as libvirt-python's."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = asyncio.Event()

    def _deliver(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        with self._lock:
            self._pending += 1
        self.loop.call_soon_threadsafe(self._run, callback, args)

    def _run(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            callback(*args)
        except Exception:
            traceback.print_exc()
        finally:
            with self._lock:
                self._pending -= 1

    def is_idle(self) -> bool:
        """No callback pending and no event registered on any connection."""
        return self._pending == 0 and not any(c._has_events() for c in _libvirt._connections)

    async def drain(self) -> None:
        """Wait until the callbacks queued so far have run."""
        while self._pending:
            await asyncio.sleep(0.01)


_current: virEventAsyncIOImpl | None = None


def virEventRegisterAsyncIOImpl(loop: asyncio.AbstractEventLoop | None = None  # noqa: N802
                                ) -> virEventAsyncIOImpl:
    global _current
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = asyncio.get_event_loop_policy().get_event_loop()
    _current = virEventAsyncIOImpl(loop)
    _libvirt._aio_impl = _current
    # the libvirt module callers imported (a drop-in shim may stand in for ours)
    module = sys.modules.get("libvirt")
    if module is None or not getattr(module, "_AIOVIRT_COMPAT", False):
        module = _libvirt
    module.virEventRegisterImpl(None, None, None, None, None, None)
    return _current


def getCurrentImpl() -> virEventAsyncIOImpl | None:  # noqa: N802
    return _current
