"""The one place that asks which event loop aiovirt runs on.

Under asyncio aiovirt takes a fast path (protocol callbacks, plain futures, tasks on the
loop); under any other anyio backend (trio) it uses anyio's streams, events and task groups.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any

import anyio

__all__ = ["AnyioWaiter", "asyncio_loop", "waiter_factory"]


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None when running under another backend."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class AnyioWaiter:
    """A one-shot result slot for backends other than asyncio (there a plain Future serves):
    ``done``, ``set_result``, ``set_exception``, awaitable."""

    __slots__ = ("_event", "_value", "_error")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, value: Any) -> None:
        self._value = value
        self._event.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wait().__await__()

    async def _wait(self) -> Any:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


def waiter_factory() -> Callable[[], Any]:
    """What makes one-shot result slots on the running loop: ``loop.create_future`` under
    asyncio (the cheapest wake-up), ``AnyioWaiter`` elsewhere."""
    loop = asyncio_loop()
    return loop.create_future if loop is not None else AnyioWaiter
