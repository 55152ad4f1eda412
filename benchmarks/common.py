"""What the one-core benchmarks (compose.py, address.py) share: the report, pinning, timing
and the description of the machine the figures belong to; and (compat.py too) counting
instructions under valgrind's callgrind."""

from __future__ import annotations

import gc
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

import aiovirt

HERE = Path(__file__).resolve().parent
LINES: list[str] = []


def say(line: str = "") -> None:
    """Print a line and keep it for ``--output``."""
    print(line, flush=True)
    LINES.append(line)


def write_report(path: str | None) -> None:
    """Write every line said so far to ``path`` (if given)."""
    if path:
        Path(path).write_text("\n".join(LINES) + "\n")


@dataclass(frozen=True, slots=True)
class Sample:
    """One round: wall and this process's CPU seconds."""

    wall: float
    cpu: float


def timed(work: Callable[[], object]) -> Sample:
    """Run ``work`` once after a full collection, timing wall and CPU."""
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    work()
    return Sample(time.perf_counter() - t0, time.process_time() - c0)


def pin(cpu: int | None) -> int:
    """Pin this process to one CPU (default: the last one allowed); returns it."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


def describe(cpu: int) -> str:
    """The commit, the machine, the libraries: what the figures belong to."""
    try:
        commit = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--",
                                "aiovirt"], capture_output=True, text=True,
                               check=True).stdout.strip()
        tree = f"aiovirt {aiovirt.__version__} at {commit}" + (" + uncommitted changes" if dirty
                                                               else "")
    except (OSError, subprocess.CalledProcessError):
        tree = f"aiovirt {aiovirt.__version__}"
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                      if line.startswith("model name")), model)
    libxml2 = ".".join(map(str, etree.LIBXML_VERSION))
    return (f"# {tree}; {time.strftime('%Y-%m-%d %H:%M %Z')}\n# {os.cpu_count()} cores "
            f"({model}), pinned to CPU {cpu}; Linux {platform.release()}, Python "
            f"{platform.python_version()}, lxml {etree.__version__}, libxml2 {libxml2}")


def machine_speed() -> float:
    """Milliseconds this core takes for ``sum(range(10**6))`` (best of 7): a yardstick for
    readers to scale the figures by (on a current desktop core with Python 3.11 it is about
    8-10 ms)."""
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        sum(range(10**6))
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def yardstick_line(before: float, after: float) -> str:
    return (f"machine yardstick: sum(range(10**6)) took {before:.1f} ms before the rounds "
            f"and {after:.1f} ms after (a current desktop core: about 8-10 ms)")


def callgrind(argv: list[str], *, env: dict[str, str] | None = None,
              cwd: str | Path | None = None) -> tuple[str, dict[int, int]]:
    """Run ``argv`` under valgrind's callgrind: its stdout, and the user-space instructions
    counted in each of its processes by pid, in the order they ended (a forked child's count
    starts from its parent's at the fork).  Unlike timings, other load does not move them."""
    if shutil.which("valgrind") is None:
        raise SystemExit("counting instructions needs valgrind (its callgrind tool): not found "
                         "on PATH")
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                           *argv], capture_output=True, text=True, env=env, cwd=cwd)
    counts = {int(pid): int(total.replace(",", "")) for pid, total in
              re.findall(r"==(\d+)==\s*Collected\s*:\s*([\d,]+)", done.stderr)}
    if done.returncode or not counts:
        raise SystemExit(f"the run under callgrind failed (exit {done.returncode}); the end of "
                         f"its stderr:\n{done.stderr[-3000:]}")
    return done.stdout, counts


def callgrind_instructions(argv: list[str], *, env: dict[str, str] | None = None,
                           cwd: str | Path | None = None) -> int:
    """User-space instructions of one run of ``argv`` (its own process), counted by
    callgrind."""
    return list(callgrind(argv, env=env, cwd=cwd)[1].values())[-1]
