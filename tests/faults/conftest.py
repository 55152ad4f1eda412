"""Fixtures of the fault suite."""

from __future__ import annotations

import pytest

from aiovirt.testing.daemon import PrivateDaemon


@pytest.fixture
def own_daemon(tmp_path):
    """A private libvirtd of this test's own, to stop, kill or restart (``start()`` again
    after ``kill()`` or ``stop()``: same sockets)."""
    running = PrivateDaemon(tmp_path / "d").start()
    try:
        yield running
    finally:
        running.stop()
