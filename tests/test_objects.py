"""The object API for networks, storage, node devices and secrets, on the test driver."""

from __future__ import annotations

import uuid

import pytest

import aiovirt


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_network_lifecycle(daemon):
    name = unique("net")
    xml = (f"<network><name>{name}</name><bridge name='vb{name[-8:]}'/>"
           "<ip address='192.0.2.1' netmask='255.255.255.0'/></network>")
    async with aiovirt.connect(daemon.uri()) as conn:
        net = await conn.define_network(xml)
        assert net.name == name and not await net.is_active()
        assert await conn.lookup_network(name=name) == net
        assert (await conn.lookup_network(uuid=net.uuid)).name == name
        assert net in await conn.list_networks()
        await net.start()
        assert await net.is_active()
        assert await net.bridge_name() == f"vb{name[-8:]}"
        assert "192.0.2.1" in await net.xml()
        await net.stop()
        assert not await net.is_active()
        await net.undefine()
        with pytest.raises(aiovirt.NoSuchNetwork, match=name):
            await conn.lookup_network(name=name)


async def test_storage_pool_and_volumes(daemon, tmp_path):
    name = unique("pool")
    xml = (f"<pool type='dir'><name>{name}</name>"
           f"<target><path>{tmp_path}</path></target></pool>")
    async with aiovirt.connect(daemon.uri()) as conn:
        pool = await conn.define_storage_pool(xml)
        assert await conn.lookup_storage_pool(name=name) == pool
        assert (await conn.lookup_storage_pool(uuid=pool.uuid)).name == name
        assert pool in await conn.list_storage_pools()
        await pool.start()
        assert await pool.is_active()
        info = await pool.info()
        assert info.capacity > 0
        vol = await pool.create_volume(
            "<volume><name>disk0.img</name><capacity unit='MiB'>10</capacity></volume>")
        assert vol.name == "disk0.img" and vol.pool == name
        assert await pool.lookup_volume("disk0.img") == vol
        assert [v.name for v in await pool.list_volumes()] == ["disk0.img"]
        assert (await vol.info()).capacity == 10 * 1024 * 1024
        path = await vol.path()
        assert path.endswith("disk0.img")
        assert await conn.lookup_volume(path=path) == vol
        assert await conn.lookup_volume(key=vol.key) == vol
        await vol.delete()
        with pytest.raises(aiovirt.NoSuchStorageVolume, match="disk0.img"):
            await pool.lookup_volume("disk0.img")
        await pool.stop()
        await pool.undefine()
        with pytest.raises(aiovirt.NoSuchStoragePool, match=name):
            await conn.lookup_storage_pool(name=name)


async def test_secrets(daemon):
    """The test driver has no secrets; the daemon's secret driver serves them beside QEMU."""
    usage = f"/var/lib/images/{unique('vol')}.img"
    xml = (f"<secret ephemeral='no' private='no'><usage type='volume'>"
           f"<volume>{usage}</volume></usage></secret>")
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        secret = await conn.define_secret(xml)
        assert secret.usage_id == usage and secret.usage_type == 1  # VOLUME
        assert await conn.lookup_secret(uuid=secret.uuid) == secret
        assert await conn.lookup_secret(usage=(1, usage)) == secret
        assert secret in await conn.list_secrets()
        await secret.set_value(b"s3cr3t\x00\xff")
        assert await secret.value() == b"s3cr3t\x00\xff"
        assert usage in await secret.xml()
        await secret.undefine()
        with pytest.raises(aiovirt.NoSuchSecret, match=secret.uuid):
            await conn.lookup_secret(uuid=secret.uuid)


async def test_node_devices(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        devices = await conn.list_node_devices()
        names = {d.name for d in devices}
        assert "computer" in names
        child = next(d for d in devices if d.name != "computer")
        device = await conn.lookup_node_device(child.name)
        assert device == child
        assert await device.parent() is not None
        assert await device.capabilities()
        assert f"<name>{child.name}</name>" in await device.xml()
        with pytest.raises(aiovirt.NoSuchNodeDevice, match="no-such-device"):
            await conn.lookup_node_device("no-such-device")


async def test_lookups_need_exactly_one_key(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        with pytest.raises(TypeError, match="exactly one"):
            await conn.lookup_domain()
        with pytest.raises(TypeError, match="exactly one"):
            await conn.lookup_network(name="a", uuid="b")
