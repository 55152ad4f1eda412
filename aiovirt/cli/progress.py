"""Terminal output for provisioning: a live progress line and the summary tables."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

from ..provision import GuestResult, Progress, Report, Stage, TeardownReport

__all__ = ["ProgressLine", "summary", "teardown_summary"]

_ORDER = (Stage.STARTED, Stage.DEFINED, Stage.FAILED, Stage.SKIPPED, Stage.CANCELLED)


class ProgressLine:
    """A one-line progress bar redrawn in place on a terminal, at most ``rate`` times a
    second; on anything else it stays silent (the summary says it all)."""

    def __init__(self, progress: Progress, stream: TextIO = sys.stderr, *, width: int = 30,
                 rate: float = 10.0, force: bool = False) -> None:
        self.progress = progress
        self.stream = stream
        self.width = width
        self.interval = 1.0 / rate
        self.enabled = force or stream.isatty()
        self.began = time.monotonic()
        self._last = 0.0
        self._shown = False

    def update(self, _: GuestResult | None = None) -> None:
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval or
                             self.progress.done == self.progress.total):
            self._last = now
            self._write("\r" + self.render(now) + "\x1b[K")
            self._shown = True

    def render(self, now: float | None = None) -> str:
        p = self.progress
        filled = self.width * p.done // max(p.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        busy = p.counts[Stage.DEFINING] + p.counts[Stage.STARTING]
        parts = [f"{p.counts[s]} {s}" for s in _ORDER if p.counts[s]]   # (defined: so far)
        if busy:
            parts.append(f"{busy} in flight")
        seconds = (now or time.monotonic()) - self.began
        return f"[{bar}] {p.done}/{p.total}  {', '.join(parts) or 'connecting'}  " \
               f"{seconds:.1f} s"

    def close(self) -> None:
        if self._shown and self.enabled:
            self._write("\r" + self.render() + "\x1b[K\n")

    def _write(self, text: str) -> None:
        """Draw; a stream that fails (a closed pipe) ends the display, never the run."""
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def summary(report: Report, *, failures: int = 10) -> str:
    """Per host: how many guests ended how; then the first failures with their reasons."""
    stages = [s for s in _ORDER if any(r.stage is s for r in report.results)]
    rows = [["host", "state", *[str(s) for s in stages], "total"]]
    by_host: dict[str | None, Counter[Stage]] = {}
    for result in report.results:
        by_host.setdefault(result.host, Counter())[result.stage] += 1
    for host in report.hosts:
        counts = by_host.pop(host.uri, Counter())
        rows.append([host.uri, host.state, *[str(counts[s]) for s in stages],
                     str(sum(counts.values()))])
    for host_uri, counts in by_host.items():   # guests no host took (placement failures)
        rows.append([host_uri or "(no host)", "-", *[str(counts[s]) for s in stages],
                     str(sum(counts.values()))])
    total = Counter(r.stage for r in report.results)
    rows.append(["all", "", *[str(total[s]) for s in stages], str(len(report.results))])
    lines = _table(rows)
    failed = report.failed()
    if failed:
        lines.append(f"{len(failed)} failed:")
        for result in failed[:failures]:
            exists = {True: "exists", False: "nothing left",
                      None: "may exist"}[result.exists]
            extra = ", rolled back" if result.rolled_back else ""
            lines.append(f"  {result.name}: at {result.failed_at}: {result.error} "
                         f"({exists}{extra})")
        if len(failed) > failures:
            lines.append(f"  ... and {len(failed) - failures} more (--json shows all)")
    lines += [f"note: {note}" for note in report.notes]
    lines.append(f"run {report.run_id}: {len(report.results)} guests in "
                 f"{report.seconds:.2f} s" + (" (cancelled)" if report.cancelled else ""))
    return "\n".join(lines)


def teardown_summary(report: TeardownReport) -> str:
    lines = []
    counts = report.counts()
    lines.append(", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or
                 "no guest matched")
    for removal in report.removals:
        if removal.outcome == "failed":
            lines.append(f"  {removal.name} on {removal.host}: {removal.error}")
        elif removal.outcome == "skipped":
            lines.append(f"  {removal.name} on {removal.host}: skipped: {removal.reason}")
    for uri, why in report.unreachable.items():
        lines.append(f"  {uri}: unreachable: {why}")
    return "\n".join(lines)
