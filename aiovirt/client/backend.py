"""The one place that asks which event loop aiovirt runs on.

Under asyncio aiovirt takes a fast path (protocol callbacks, plain futures, tasks on the
loop); under any other anyio backend (trio) it uses anyio's streams, events and task groups.
"""

from __future__ import annotations

import asyncio

__all__ = ["asyncio_loop"]


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None when running under another backend."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
