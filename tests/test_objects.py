"""The object API for networks, storage, node devices and secrets, against a real libvirtd.

Networks, pools, volumes and node devices use the test driver's shared host
(``daemon.uri()``); secrets use the daemon's secret driver beside QEMU, since the test
driver has none.  Names carry a random suffix, and everything a test makes it removes again,
also when an assertion fails (``cleanup``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import aiovirt

VIR_NETWORK_XML_INACTIVE = 1
VIR_NETWORK_DEFINE_VALIDATE = 1
VIR_ERR_INVALID_SECRET = 65
VIR_ERR_XML_INVALID_SCHEMA = 92


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def cleanup() -> AsyncIterator[Callable[[Callable[[], Awaitable[object]]], None]]:
    """Collects undo steps and runs them last-first on exit; a step whose object is already
    gone (or inactive) is skipped, so the test itself may have undone it."""
    steps: list[Callable[[], Awaitable[object]]] = []
    try:
        yield steps.append
    finally:
        for step in reversed(steps):
            with contextlib.suppress(aiovirt.LibvirtError):
                await step()


# -- networks ---------------------------------------------------------------------------------
def network_xml(name: str, address: str = "192.0.2.1") -> str:
    return (f"<network><name>{name}</name><bridge name='vb{name[-8:]}'/>"
            f"<ip address='{address}' netmask='255.255.255.0'/></network>")


async def test_network_lifecycle(daemon):
    name = unique("net")
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo:
        net = await conn.define_network(network_xml(name))
        undo(net.undefine)
        undo(net.destroy)
        assert net.name == name
        assert not await net.is_active()

        assert await conn.lookup_network(name=name) == net
        by_uuid = await conn.lookup_network(uuid=net.uuid)
        assert (by_uuid.name, by_uuid.uuid) == (name, net.uuid)
        assert await conn.lookup_network(uuid=uuid.UUID(net.uuid)) == net
        assert net in await conn.list_networks()

        xml = await net.xml()
        assert f"<name>{name}</name>" in xml
        assert f"<uuid>{net.uuid}</uuid>" in xml
        assert "192.0.2.1" in xml

        await net.start()
        assert await net.is_active()
        assert await (await conn.lookup_network(name=name)).is_active()
        assert await net.bridge_name() == f"vb{name[-8:]}"
        with pytest.raises(aiovirt.OperationInvalid, match="already running"):
            await net.start()

        assert not await net.autostart()
        await net.set_autostart(True)
        assert await net.autostart()
        await net.set_autostart(False)
        assert not await net.autostart()

        await net.stop()
        assert not await net.is_active()
        await net.undefine()
        assert net not in await conn.list_networks()
        with pytest.raises(aiovirt.NoSuchNetwork, match=name):
            await conn.lookup_network(name=name)
        with pytest.raises(aiovirt.NoSuchNetwork, match=net.uuid):
            await conn.lookup_network(uuid=net.uuid)


async def test_network_define_errors(daemon):
    name = unique("net")
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo:
        net = await conn.define_network(network_xml(name))
        undo(net.undefine)
        # libvirt reports a second definition under the same name as OPERATION_FAILED.
        with pytest.raises(aiovirt.OperationFailed, match="already exists"):
            await conn.define_network(network_xml(name))
        with pytest.raises(aiovirt.XMLError):
            await conn.define_network("<network><name>broken")
        # Flags reach the daemon: VALIDATE rejects an element that the plain call ignores.
        bogus = f"<network><name>{unique('net')}</name><bogus/></network>"
        with pytest.raises(aiovirt.LibvirtError) as failure:
            await conn.define_network(bogus, VIR_NETWORK_DEFINE_VALIDATE)
        assert failure.value.code == VIR_ERR_XML_INVALID_SCHEMA
        lenient = await conn.define_network(bogus)
        undo(lenient.undefine)
        assert "bogus" not in await lenient.xml()


async def test_transient_network(daemon):
    name = unique("tnet")
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo:
        net = await conn.create_network(network_xml(name, "198.51.100.1"))
        undo(net.destroy)
        assert net.name == name
        assert await net.is_active()
        assert await conn.lookup_network(uuid=net.uuid) == net
        assert net in await conn.list_networks()
        await net.destroy()  # a transient network disappears when stopped
        with pytest.raises(aiovirt.NoSuchNetwork, match=name):
            await conn.lookup_network(name=name)


# -- storage pools and volumes ----------------------------------------------------------------
def pool_xml(name: str, path: object) -> str:
    return (f"<pool type='dir'><name>{name}</name>"
            f"<target><path>{path}</path></target></pool>")


async def test_storage_pool_lifecycle(daemon, tmp_path):
    name = unique("pool")
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo:
        pool = await conn.define_storage_pool(pool_xml(name, tmp_path))
        undo(pool.undefine)
        undo(pool.stop)
        assert pool.name == name
        assert not await pool.is_active()
        assert (await pool.info()).state is aiovirt.StoragePoolState.INACTIVE

        assert await conn.lookup_storage_pool(name=name) == pool
        by_uuid = await conn.lookup_storage_pool(uuid=pool.uuid)
        assert (by_uuid.name, by_uuid.uuid) == (name, pool.uuid)
        assert pool in await conn.list_storage_pools()
        with pytest.raises(aiovirt.OperationFailed, match="already exists"):
            await conn.define_storage_pool(pool_xml(name, tmp_path))

        xml = await pool.xml()
        assert f"<name>{name}</name>" in xml
        assert f"<uuid>{pool.uuid}</uuid>" in xml
        assert f"<path>{tmp_path}</path>" in xml

        await pool.build()
        await pool.start()
        assert await pool.is_active()
        info = await pool.info()
        assert info.state is aiovirt.StoragePoolState.RUNNING
        assert info.capacity > 0 and info.capacity == info.allocation + info.available
        await pool.refresh()
        assert await pool.list_volumes() == []

        assert not await pool.autostart()
        await pool.set_autostart(True)
        assert await pool.autostart()

        await pool.stop()
        assert not await pool.is_active()
        await pool.delete()
        await pool.undefine()
        assert pool not in await conn.list_storage_pools()
        with pytest.raises(aiovirt.NoSuchStoragePool, match=name):
            await conn.lookup_storage_pool(name=name)
        with pytest.raises(aiovirt.NoSuchStoragePool, match=pool.uuid):
            await conn.lookup_storage_pool(uuid=pool.uuid)


async def test_storage_volumes(daemon, tmp_path):
    name = unique("pool")
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo:
        pool = await conn.create_storage_pool(pool_xml(name, tmp_path))  # transient, running
        undo(pool.stop)
        assert await pool.is_active()
        vol_xml = "<volume><name>disk0.img</name><capacity unit='MiB'>10</capacity></volume>"
        vol = await pool.create_volume(vol_xml)
        undo(vol.delete)
        assert (vol.name, vol.pool) == ("disk0.img", name)

        assert await pool.lookup_volume("disk0.img") == vol
        assert await pool.list_volumes() == [vol]
        info = await vol.info()
        assert info.type is aiovirt.StorageVolumeType.FILE
        assert info.capacity == 10 * 1024 * 1024
        path = await vol.path()
        assert path == f"{tmp_path}/disk0.img"
        assert f"<path>{path}</path>" in await vol.xml()
        assert await conn.lookup_volume(path=path) == vol
        assert await conn.lookup_volume(key=vol.key) == vol
        with pytest.raises(aiovirt.OperationFailed, match="already exists"):
            await pool.create_volume(vol_xml)

        await vol.delete()
        assert await pool.list_volumes() == []
        with pytest.raises(aiovirt.NoSuchStorageVolume, match="disk0.img"):
            await pool.lookup_volume("disk0.img")
        with pytest.raises(aiovirt.NoSuchStorageVolume, match="disk0.img"):
            await conn.lookup_volume(path=path)

        await pool.stop()  # a transient pool disappears when stopped
        with pytest.raises(aiovirt.NoSuchStoragePool, match=name):
            await conn.lookup_storage_pool(name=name)


# -- node devices -----------------------------------------------------------------------------
async def test_node_device_listing(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        devices = {d.name: d for d in await conn.list_node_devices()}
        assert "computer" in devices
        root = await conn.lookup_node_device("computer")
        assert root == devices["computer"]
        assert await root.parent() is None
        assert await root.capabilities() == ["system"]

        host = await conn.lookup_node_device("scsi_host1")
        assert await host.parent() == "computer"
        assert await host.capabilities() == ["scsi_host"]
        assert "<name>scsi_host1</name>" in await host.xml()
        with pytest.raises(aiovirt.NoSuchNodeDevice, match="no-such-device"):
            await conn.lookup_node_device("no-such-device")


async def test_node_device_create_and_destroy(daemon):
    """The test driver creates vHBAs (scsi_host devices) under a vport-capable fc_host."""
    wwn = uuid.uuid4().hex[:12]
    xml = ("<device><parent>scsi_host1</parent><capability type='scsi_host'>"
           f"<capability type='fc_host'><wwnn>2000{wwn}</wwnn><wwpn>1000{wwn}</wwpn>"
           "</capability></capability></device>")
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo:
        before = {d.name for d in await conn.list_node_devices()}
        device = await conn.create_node_device(xml)
        undo(device.destroy)
        assert device.name not in before
        assert device.name.startswith("scsi_host")
        assert await conn.lookup_node_device(device.name) == device
        assert device in await conn.list_node_devices()
        assert await device.parent() == "scsi_host1"
        assert await device.capabilities() == ["scsi_host"]
        assert f"<wwpn>1000{wwn}</wwpn>" in await device.xml()

        await device.destroy()
        assert {d.name for d in await conn.list_node_devices()} == before
        with pytest.raises(aiovirt.NoSuchNodeDevice, match=device.name):
            await conn.lookup_node_device(device.name)


# -- secrets ----------------------------------------------------------------------------------
async def test_secret_lifecycle(daemon):
    usage = f"/var/lib/images/{unique('vol')}.img"
    xml = ("<secret ephemeral='no' private='no'><usage type='volume'>"
           f"<volume>{usage}</volume></usage></secret>")
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn, cleanup() as undo:
        secret = await conn.define_secret(xml)
        undo(secret.undefine)
        assert secret.usage_id == usage
        assert secret.usage_type is aiovirt.SecretUsageType.VOLUME
        assert await conn.lookup_secret(uuid=secret.uuid) == secret
        assert await conn.lookup_secret(usage=(aiovirt.SecretUsageType.VOLUME, usage)) == secret
        assert secret in await conn.list_secrets()
        xml_out = await secret.xml()
        assert f"<uuid>{secret.uuid}</uuid>" in xml_out and usage in xml_out

        await secret.set_value(b"s3cr3t\x00\xff")
        assert await secret.value() == b"s3cr3t\x00\xff"
        await secret.set_value(b"second")
        assert await secret.value() == b"second"
        # only bytes: an int n made n zero bytes (bytes(n)), a str is not encoded for you
        for wrong in (5, "text", None, [1, 2]):
            with pytest.raises(TypeError, match="a secret's value is bytes"):
                await secret.set_value(wrong)   # type: ignore[arg-type]
        assert await secret.value() == b"second"
        await secret.set_value(bytearray(b"third"))
        assert await secret.value() == b"third"

        await secret.undefine()
        assert secret not in await conn.list_secrets()
        with pytest.raises(aiovirt.NoSuchSecret, match=secret.uuid):
            await conn.lookup_secret(uuid=secret.uuid)
        with pytest.raises(aiovirt.NoSuchSecret, match=usage):
            await conn.lookup_secret(usage=(aiovirt.SecretUsageType.VOLUME, usage))


async def test_private_secret_value_is_refused(daemon):
    name = unique("ceph")
    xml = ("<secret ephemeral='no' private='yes'><usage type='ceph'>"
           f"<name>{name}</name></usage></secret>")
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn, cleanup() as undo:
        secret = await conn.define_secret(xml)
        undo(secret.undefine)
        assert (secret.usage_type, secret.usage_id) == (aiovirt.SecretUsageType.CEPH, name)
        await secret.set_value(b"key")
        with pytest.raises(aiovirt.LibvirtError, match="private") as refused:
            await secret.value()
        assert refused.value.code == VIR_ERR_INVALID_SECRET


# -- what the test driver lacks, and argument checks --------------------------------------------
async def test_test_driver_gaps_surface_as_errors(daemon, tmp_path):
    """Calls the test driver does not implement fail with ``NoSupport`` (flags it does not
    know with ``InvalidArgument``), not a hang or a protocol error; if libvirt adds them,
    this test says so."""
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo:
        with pytest.raises(aiovirt.NoSupport):
            await conn.list_secrets()
        with pytest.raises(aiovirt.NoSupport):
            await conn.define_secret("<secret><usage type='ceph'><name>x</name></usage></secret>")

        host = await conn.lookup_node_device("scsi_host1")
        with pytest.raises(aiovirt.NoSupport):
            await host.is_active()
        with pytest.raises(aiovirt.NoSupport):
            await host.start()
        with pytest.raises(aiovirt.NoSupport):
            await host.undefine()
        with pytest.raises(aiovirt.NoSupport):
            await conn.define_node_device(
                "<device><parent>computer</parent><capability type='mdev'>"
                "<type id='nvidia-11'/></capability></device>")

        net = (await conn.list_networks())[0]
        with pytest.raises(aiovirt.InvalidArgument, match="unsupported flags"):
            await net.xml(VIR_NETWORK_XML_INACTIVE)

        pool = await conn.create_storage_pool(pool_xml(unique("pool"), tmp_path))
        undo(pool.stop)
        vol = await pool.create_volume("<volume><name>v</name><capacity>4096</capacity></volume>")
        with pytest.raises(aiovirt.NoSupport):
            await vol.wipe()
        with pytest.raises(aiovirt.NoSupport):
            await vol.resize(8192)


async def test_lookups_need_exactly_one_key(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        with pytest.raises(TypeError, match="exactly one"):
            await conn.lookup_network()
        with pytest.raises(TypeError, match="exactly one"):
            await conn.lookup_network(name="a", uuid="b")
        with pytest.raises(TypeError, match="exactly one"):
            await conn.lookup_storage_pool()
        with pytest.raises(TypeError, match="exactly one"):
            await conn.lookup_volume(path="/a", key="/a")
        with pytest.raises(TypeError, match="exactly one"):
            await conn.lookup_secret()
