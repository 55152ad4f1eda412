"""Provisioning jobs: each ``Provisioning`` run is a task in a task group the ASGI lifespan
owns, so jobs outlive the request that started them and end cleanly with the server.

A job is ``running`` until its run returns: then ``done`` (every guest has an outcome; the
report's ``ok`` says whether all made it), ``cancelled`` (cancelled by a client or by
shutdown) or ``failed`` (the run itself raised, which is a bug; ``error`` says what).

A finished job's report can be megabytes (about 7 MB for 10,000 guests), so the registry
keeps only the ``keep`` most recently finished jobs; of the last 10,000 it dropped it
remembers the id, state and end (about 200 bytes each) so that a client asking for one is
told what became of it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio
import anyio.abc

from ..provision import Provisioning

__all__ = ["MAX_KEEP", "Dropped", "Job", "JobRegistry", "JobState", "NotRunning",
           "TooManyJobs", "check_keep"]

log = logging.getLogger("aiovirt.service")

STOP_WAIT = 2.0   # seconds a request waiting for a job still waits once the server stops
MAX_KEEP = 10_000          # finished jobs a server may keep (each up to megabytes)
DROPPED_MEMORY = 10_000    # dropped jobs remembered (id, state and end: ~2 MB in all)


class JobState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


class NotRunning(RuntimeError):
    """Jobs cannot start: the lifespan has not started, or the server is shutting down."""


class TooManyJobs(RuntimeError):
    """Jobs cannot start: ``max_running`` already run."""


@dataclass
class Job:
    """One provisioning run: its id (the run id stored in each guest's metadata), hosts,
    state and timestamps; ``run`` holds the live progress and report."""

    run: Provisioning
    hosts: list[str]
    created: float = field(default_factory=time.time)
    state: JobState = JobState.RUNNING
    finished: float | None = None
    error: str | None = None
    cancel_requested: bool = False
    teardown: dict[str, Any] | None = None
    tearing_down: bool = False   # a teardown of the job's guests is under way
    done: anyio.Event = field(default_factory=anyio.Event)
    revision: int = 0            # bumped when what a finished job shows changes (teardown)
    cached: tuple[int, bytes] | None = None   # a finished job's JSON, at a revision
    encoding: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def id(self) -> str:
        return self.run.run_id

    def summary(self) -> dict[str, Any]:
        """What a job listing shows: id, state, times, hosts and progress counts."""
        return {"id": self.id, "url": f"/jobs/{self.id}", "state": str(self.state),
                "created": self.created, "finished": self.finished, "hosts": list(self.hosts),
                "progress": self.run.progress.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        """The summary plus the report (live while running) and any teardown result."""
        data = self.summary()
        data["cancel_requested"] = self.cancel_requested
        if self.error is not None:
            data["error"] = self.error
        data["report"] = self.run.report.to_dict()
        if self.teardown is not None:
            data["teardown"] = self.teardown
        return data


@dataclass(frozen=True, slots=True)
class Dropped:
    """What is left of a finished job the registry dropped: its state and when it ended."""

    state: JobState
    finished: float


def check_keep(keep: int) -> int:
    """How many finished jobs to keep: 1 to ``MAX_KEEP`` (``ValueError`` otherwise)."""
    if not 1 <= keep <= MAX_KEEP:
        raise ValueError(f"keep_jobs {keep}: keep from 1 to {MAX_KEEP} finished jobs")
    return keep


class JobRegistry:
    """The jobs of one service: started into the lifespan's task group (at most
    ``max_running`` at once), kept (the ``keep`` most recently finished ones, and every
    running one) for clients to read their reports."""

    def __init__(self, *, keep: int = 100, shutdown_timeout: float = 30.0,
                 max_running: int = 16) -> None:
        if max_running < 1:
            raise ValueError("the limit of running jobs must be at least 1")
        self.keep = check_keep(keep)
        self.shutdown_timeout = shutdown_timeout
        self.max_running = max_running
        self._jobs: dict[str, Job] = {}           # in the order they started
        self._finished: OrderedDict[str, None] = OrderedDict()   # in the order they ended
        self._dropped: OrderedDict[str, Dropped] = OrderedDict()
        self._group: anyio.abc.TaskGroup | None = None
        self._stopped: list[Job] = []   # running when the server began to stop
        self._waits: set[anyio.CancelScope] = set()

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._jobs.values()))

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def dropped(self, job_id: str) -> Dropped | None:
        """What became of a finished job no longer kept (``None``: not one of the last
        ``DROPPED_MEMORY`` dropped, or never a job here)."""
        return self._dropped.get(job_id)

    def running(self) -> list[Job]:
        return [j for j in self._jobs.values() if j.state is JobState.RUNNING]

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[JobRegistry]:
        """The lifespan of the jobs: on exit, running jobs are cancelled (launch nothing
        more, let the calls that are out finish) and awaited, at most ``shutdown_timeout``
        seconds before they are cancelled hard; their reports are completed either way."""
        async with anyio.create_task_group() as group:
            self._group = group
            try:
                yield self
            finally:
                self.stop()
                with anyio.move_on_after(self.shutdown_timeout, shield=True):
                    for job in self.running():
                        await job.done.wait()
                group.cancel_scope.cancel()
        for job in self._stopped:
            self._log_stopped(job)

    def stop(self) -> None:
        """The server is stopping: start no more jobs, cancel the running ones (they launch
        nothing more; calls already out get their grace), and end waits for them within
        ``STOP_WAIT`` seconds.  Idempotent; the server calls it as soon as shutdown begins."""
        if self._group is None:
            return
        self._group = None
        for job in self.running():
            self._stopped.append(job)
            job.cancel_requested = True
            job.run.cancel()
        soon = anyio.current_time() + STOP_WAIT
        for scope in self._waits:
            scope.deadline = min(scope.deadline, soon)

    async def wait(self, job: Job, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for ``job`` to finish; once the server is
        stopping, at most ``STOP_WAIT`` more (so the request is answered before it goes)."""
        limit = timeout if self._group is not None else min(timeout, STOP_WAIT)
        with anyio.move_on_after(limit) as scope:
            self._waits.add(scope)
            try:
                await job.done.wait()
            finally:
                self._waits.discard(scope)

    @staticmethod
    def _log_stopped(job: Job) -> None:
        """One line for a job the shutdown ended (its report is not kept): what exists of
        it, so that an operator can tear it down by run id."""
        report = job.run.report
        existing = report.existing()
        shown = ", ".join(f"{r.name}@{r.host}" for r in existing[:10])
        log.warning("job %s ended by shutdown (%s): %s; %d guests exist%s; hosts %s; "
                    "remove them with: aiovirt teardown --run %s %s", job.id, job.state,
                    report.counts(), len(existing),
                    f" ({shown}{', ...' if len(existing) > 10 else ''})" if existing else "",
                    ", ".join(job.hosts), job.id, " ".join(f"-c {h}" for h in job.hosts))

    def start(self, job: Job) -> None:
        """Run ``job`` in the background (``NotRunning`` when the lifespan is not up,
        ``TooManyJobs`` when ``max_running`` jobs run)."""
        if self._group is None:
            raise NotRunning("jobs need the server's lifespan (startup not run, or shutting "
                             "down)")
        self.check_room()
        self._jobs[job.id] = job
        self._group.start_soon(self._run, job, name=f"aiovirt job {job.id}")

    def check_room(self) -> None:
        """``TooManyJobs`` when ``max_running`` jobs run."""
        if len(self.running()) >= self.max_running:
            raise TooManyJobs(f"the server is at its limit of {self.max_running} running "
                              "jobs (aiovirt serve --max-jobs); retry when one has finished")

    def cancel(self, job: Job) -> None:
        job.cancel_requested = True
        job.run.cancel()

    async def _run(self, job: Job) -> None:
        try:
            report = await job.run.run()
        except anyio.get_cancelled_exc_class():
            job.state = JobState.CANCELLED
            raise
        except Exception as exc:   # a bug in the run: keep the service, report the job
            log.exception("job %s failed", job.id)
            job.state = JobState.FAILED
            job.error = f"{type(exc).__name__}: {exc}"
        else:
            job.state = JobState.CANCELLED if report.cancelled else JobState.DONE
        finally:
            job.finished = time.time()
            job.done.set()
            self._finished[job.id] = None
            self._prune()

    def _prune(self) -> None:
        """Drop the jobs that finished first beyond ``keep`` (never a running one: only
        finished jobs are counted), remembering a little of each."""
        while len(self._finished) > self.keep:
            job_id, _ = self._finished.popitem(last=False)
            job = self._jobs.pop(job_id)
            self._dropped[job_id] = Dropped(job.state, job.finished or time.time())
            if len(self._dropped) > DROPPED_MEMORY:
                self._dropped.popitem(last=False)
