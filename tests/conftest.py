"""One private libvirtd for the whole session; KVM tests skip, saying why, without /dev/kvm."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiovirt.testing.daemon import PrivateDaemon

NODE_XML = Path(__file__).resolve().parent / "data" / "node.xml"


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    """The suite's libvirtd: test driver and QEMU driver over UNIX and TCP."""
    with PrivateDaemon(tmp_path_factory.mktemp("libvirtd")) as running:
        yield running


@pytest.fixture
def node_xml() -> str:
    """A test-driver host description: each connection to it gets private state."""
    return str(NODE_XML)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        return
    skip = pytest.mark.skip(reason="no /dev/kvm on this machine: KVM guests cannot start")
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)
