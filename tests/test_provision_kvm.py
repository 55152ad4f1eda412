"""Provisioning real KVM guests on the QEMU driver: composed from shipped profiles and
addressed offline, started (completion from STARTED events), rolled back on failure."""

from __future__ import annotations

import uuid

import pytest

import aiovirt
from aiovirt.provision import GuestSpec, Stage, provision, teardown

pytestmark = pytest.mark.kvm

BARE = "<domain><name>{name}</name></domain>"
BROKEN = ("<domain><name>{name}</name><devices><disk type='file' device='disk'>"
          "<source file='/nonexistent/aiovirt-{name}.qcow2'/><target dev='vda' bus='virtio'/>"
          "</disk></devices></domain>")


async def test_kvm_guests_composed_addressed_and_started(daemon):
    uri = daemon.uri("qemu", "/system")
    p = f"pk{uuid.uuid4().hex[:6]}"
    spec = GuestSpec(BARE.format(name=p), ["kvm-base", "q35", "virtio-linux", "guest-agent"],
                     params={"kvm-base.memory": "64"}, count=3)
    report = await provision(uri, spec)
    try:
        assert report.ok and report.counts() == {"started": 3}, report.to_json()
        async with aiovirt.connect(uri) as conn:
            for result in report.results:
                assert daemon.virsh("domstate", result.name).strip() == "running"
                xml = await (await conn.lookup_domain(name=result.name)).xml(2)
                assert "pcie-root-port" in xml and "org.qemu.guest_agent.0" in xml
    finally:
        removed = await teardown(uri, report=report)
    assert removed.counts() == {"removed": 3}
    assert p not in daemon.virsh("list", "--all", "--name")


@pytest.mark.parametrize("rollback", [True, False])
async def test_a_guest_that_cannot_start_is_rolled_back_or_left(daemon, rollback):
    uri = daemon.uri("qemu", "/system")
    name = f"pkbad{uuid.uuid4().hex[:6]}"
    report = await provision(uri, GuestSpec(BROKEN.format(name=name), ["kvm-base"],
                                            params={"kvm-base.memory": "64"}),
                             rollback=rollback)
    result = report.results[0]
    assert result.stage is Stage.FAILED and result.failed_at == "start"
    assert "nonexistent" in result.error
    assert result.rolled_back is rollback and result.exists is (not rollback)
    listed = daemon.virsh("list", "--all", "--name").split()
    assert (name in listed) is (not rollback)
    if not rollback:
        assert (await teardown(uri, report=report)).counts() == {"removed": 1}
