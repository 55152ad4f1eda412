"""What the suite's private servers (sshd, a Kerberos KDC) share: one child process in its
own session, logging to a file, started until it answers, and killed and reaped on leaving.

A subclass says how to start (``_command``, ``_env``) and when the server is ready
(``_ready``); ``start()`` waits for that, bounded, and raises the subclass's ``Error`` with
the log's tail if the child exits or never gets ready.  Standard library only.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import ClassVar, Self

__all__ = ["ServerProcess", "process_table"]


def process_table() -> dict[int, tuple[int, str]]:
    """Every process on the machine: pid -> (parent pid, name), read from /proc (zombies
    included); what tests read to see which children a connection left behind."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        table[int(entry.name)] = (int(text[text.rindex(")") + 2:].split()[1]), name)
    return table


class ServerProcess:
    """One server we run as a child; subclasses set ``name``, ``Error`` and ``log_path``."""

    name: ClassVar[str] = "server"
    Error: ClassVar[type[Exception]] = RuntimeError
    log_path: Path

    _process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        """The child's environment (None: ours)."""
        return None

    def _ready(self) -> bool:
        """Whether the server answers now (one quick probe)."""
        raise NotImplementedError

    def _spawn(self, timeout: float, where: str) -> None:
        """Start the child, logging to ``log_path``; return once ``_ready``, else stop it and
        raise ``Error`` saying why (``where``: what it should listen on)."""
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log, start_new_session=True,
                                             env=self._env())
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                status = self._process.returncode
                self.stop()
                raise self.Error(f"{self.name} exited with status {status}:\n"
                                 f"{self.log_tail()}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise self.Error(f"{self.name} did not listen on {where} within {timeout} s:"
                                 f"\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server and reap it (bounded: SIGTERM, five seconds, SIGKILL)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout: float = 15.0) -> Self:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

