"""What keeps the service responsive under load: CPU-bound work off the event loop with a
bounded queue (``WorkPool``), and caps on long-lived things (``Gate``: event streams, jobs).
Past a limit a request gets 503 with ``Retry-After``, never an unbounded wait."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from .http import HTTPError

__all__ = ["Gate", "WorkPool", "busy"]

T = TypeVar("T")


def busy(message: str, retry_after: int = 1) -> HTTPError:
    """503 with ``Retry-After``: the server is at a limit, the request may be repeated."""
    return HTTPError(503, message, headers=[("retry-after", str(retry_after))])


class WorkPool:
    """Runs CPU-bound request work (composition, addressing) in ``workers`` threads, at most
    ``queue`` calls waiting for one; more get 503.

    Threads, not processes: measured on 2 cores, a thread pool keeps ``/health`` p99 well
    under 50 ms during 200 parallel composes (benchmarks/service_load.py), and the work
    shares the caller's profile library instead of rebuilding it in every process.
    """

    def __init__(self, workers: int | None = None, queue: int = 256) -> None:
        workers = workers or os.cpu_count() or 1
        if workers < 1 or queue < 0:
            raise ValueError("a work pool needs at least 1 worker and a queue of 0 or more")
        self.workers = workers
        self.queue = queue
        self._limiter = anyio.CapacityLimiter(workers)

    @property
    def waiting(self) -> int:
        return self._limiter.statistics().tasks_waiting

    @property
    def running(self) -> int:
        return self._limiter.borrowed_tokens

    async def run(self, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` in a worker thread (503 when ``queue`` calls already wait)."""
        if self._limiter.available_tokens < 1 and self.waiting >= self.queue:
            raise busy(f"the server is busy: {self.waiting} requests wait for its "
                       f"{self.workers} workers (aiovirt serve --work-queue); retry shortly")
        return await anyio.to_thread.run_sync(work, *args, limiter=self._limiter)


class Gate:
    """At most ``limit`` holders of something long-lived (event streams, running jobs)."""

    def __init__(self, limit: int, what: str, option: str) -> None:
        if limit < 1:
            raise ValueError(f"the limit of {what} must be at least 1")
        self.limit = limit
        self.count = 0
        self._what = what
        self._option = option

    def enter(self) -> Callable[[], None]:
        """Take a place (503 when all are taken); returns what gives it back (idempotent)."""
        if self.count >= self.limit:
            raise busy(f"the server is at its limit of {self.limit} {self._what} "
                       f"(aiovirt serve {self._option}); retry later", retry_after=5)
        self.count += 1
        held = True

        def leave() -> None:
            nonlocal held
            if held:
                held = False
                self.count -= 1

        return leave
