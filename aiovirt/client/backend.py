"""The one place that asks which event loop aiovirt runs on.

Under asyncio aiovirt takes a fast path (protocol callbacks, plain futures, tasks on the
loop); under any other anyio backend (trio) it uses anyio's streams, events and task groups.
The loops aiovirt starts itself (the CLI, the blocking drop-in's thread) are uvloop's when it
is installed (``pip install 'aiovirt[speed]'``): it runs the same code at a fraction of the
client CPU per call.  ``AIOVIRT_LOOP=asyncio`` keeps the standard loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

import anyio

__all__ = ["AnyioWaiter", "asyncio_loop", "current_asyncio_task", "loop_name",
           "new_event_loop", "run", "waiter_factory"]

T = TypeVar("T")


def _uvloop() -> Any:
    """The uvloop module if it is installed and not declined (``AIOVIRT_LOOP=asyncio``)."""
    choice = os.environ.get("AIOVIRT_LOOP", "auto")
    if choice not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"AIOVIRT_LOOP={choice!r}: use auto, uvloop or asyncio")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ImportError("AIOVIRT_LOOP=uvloop but uvloop is not installed: "
                              "pip install 'aiovirt[speed]'") from None
        return None
    return uvloop


def loop_name() -> str:
    """Which loop ``run`` and ``new_event_loop`` use: "uvloop" or "asyncio"."""
    return "uvloop" if _uvloop() is not None else "asyncio"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when installed, else asyncio's."""
    uvloop = _uvloop()
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on ``new_event_loop()``: what aiovirt's own programs run on."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None when running under another backend."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def current_asyncio_task() -> asyncio.Task[Any] | None:
    """The running asyncio task, or None when running under another backend."""
    try:
        return asyncio.current_task()
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
