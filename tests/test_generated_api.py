"""The generated object API (aiovirt/api/generated.py, made by rpc/objects.py): committed as
the generator writes it, and working against the suite's real libvirtd.

Most tests use a test-driver host with private per-connection state (``tests/data/node.xml``:
node-vm1 runs, node-vm2 is shut off), so what they change no other test sees.
"""

from __future__ import annotations

import inspect
import json
import os
import uuid
from pathlib import Path

import pytest

import aiovirt
from aiovirt.api import generated
from aiovirt.api.generated import ConnectionGenerated, DomainGenerated
from aiovirt.api.typedparams import UINT, ULLONG, from_dict
from rpc import apimap, objects

ROOT = Path(__file__).resolve().parent.parent
NODE_XML = str(Path(__file__).resolve().parent / "data" / "node.xml")

needs_xml = pytest.mark.skipif(
    not all((apimap.API_XML_DIR / n).exists() for n in apimap.API_XML.values()),
    reason=f"libvirt's API descriptions are missing from {apimap.API_XML_DIR} "
           "(apt-get install libvirt-dev)")


# -- the generator ----------------------------------------------------------------------------
@needs_xml
def test_generated_module_is_committed_as_the_generator_writes_it():
    """The committed generated.py equals a regeneration from the committed map (itself checked
    against a regeneration from libvirt's sources by tests/test_api_map.py)."""
    data = json.loads((ROOT / apimap.MAP_PATH).read_text())
    assert objects.render(data) == (ROOT / objects.OUT_PATH).read_text(), \
        "aiovirt/api/generated.py is stale: run `python -m rpc .libvirt-src/libvirt-9.0.0`"


def test_every_remote_function_is_in_the_object_api():
    data = json.loads((ROOT / apimap.MAP_PATH).read_text())
    remote = {k: v for k, v in data["functions"].items() if v["category"] == "remote"}
    missing = sorted(k for k, v in remote.items() if not v["aiovirt"])
    # migration drives several daemons through a multi-step protocol (see generated.py)
    assert all(name.startswith("virDomainMigrate") for name in missing), missing


def test_names_classes_and_signatures():
    assert objects.snake("GetXMLDesc") == "get_xml_desc"
    assert objects.snake("ListAllNWFilterBindings") == "list_all_nwfilter_bindings"
    assert objects.param_name("xmlCPUs") == "xml_cpus"
    assert objects.param_name("from_") == "from_"
    assert hasattr(DomainGenerated, "snapshot_create_xml")
    assert hasattr(ConnectionGenerated, "list_all_domains")
    assert hasattr(ConnectionGenerated, "domain_lookup_by_name")
    assert hasattr(ConnectionGenerated, "network_define_xml")
    assert hasattr(generated.DomainSnapshotGenerated, "revert_to_snapshot")
    assert hasattr(DomainGenerated, "qemu_monitor_command")
    sig = inspect.signature(DomainGenerated.get_memory_parameters)
    assert list(sig.parameters) == ["self", "flags"]
    assert sig.parameters["flags"].default == 0
    # hand-written methods keep priority over generated ones of the same name
    assert aiovirt.Domain.is_active is not DomainGenerated.is_active
    assert hasattr(DomainGenerated, "destroy_legacy")   # renamed: Domain.destroy is taken
    assert issubclass(aiovirt.Connection, ConnectionGenerated)
    for name in ("DomainSnapshot", "DomainCheckpoint", "Interface", "NWFilter",
                 "NWFilterBinding", "NetworkPort"):
        assert name in aiovirt.__all__
        assert getattr(aiovirt, name).__name__ == name


# -- the flags-only smoke test -----------------------------------------------------------------
def _flags_only(cls: type) -> list[str]:
    names = []
    for name, fn in sorted(vars(cls).items()):
        if name.startswith("_") or not inspect.iscoroutinefunction(fn):
            continue
        if set(inspect.signature(fn).parameters) <= {"self", "flags"}:
            names.append(name)
    return names


async def test_flags_only_methods_line_up_with_the_wire(daemon):
    """Every generated method taking only flags, called on the test driver: a result or a
    LibvirtError (never a TypeError, EncodeError or ProtocolError from a bad signature)."""
    called = 0
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        for name in _flags_only(ConnectionGenerated):
            try:
                await getattr(ConnectionGenerated, name)(conn)
            except aiovirt.LibvirtError:
                pass
            called += 1
        dom = await conn.domain_lookup_by_name("node-vm1")
        for name in _flags_only(DomainGenerated):
            try:
                await getattr(DomainGenerated, name)(dom)
            except aiovirt.LibvirtError:
                pass
            called += 1
        assert await conn.get_lib_version() > 0   # the connection survived it all
    assert called > 80


# -- snapshots and checkpoints -------------------------------------------------------------------
async def test_snapshots_on_the_test_driver(daemon):
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        dom = await conn.domain_lookup_by_name("node-vm1")
        assert not await dom.has_current_snapshot()
        s1 = await dom.snapshot_create_xml("<domainsnapshot><name>s1</name></domainsnapshot>")
        assert isinstance(s1, aiovirt.DomainSnapshot)
        assert (s1.name, s1.domain) == ("s1", dom)
        s2 = await dom.snapshot_create_xml("<domainsnapshot><name>s2</name></domainsnapshot>")
        assert set(await dom.list_all_snapshots()) == {s1, s2}
        assert await dom.snapshot_current() == s2
        assert await s2.is_current()
        assert await s2.get_parent() == s1
        assert await s1.list_all_children() == [s2]
        assert await dom.snapshot_num() == 2
        assert await dom.snapshot_lookup_by_name("s1") == s1
        assert "<name>s1</name>" in await s1.get_xml_desc()
        await s1.revert_to_snapshot()
        assert await dom.snapshot_current() == s1
        await s2.delete()
        assert await dom.list_all_snapshots() == [s1]
        await s1.delete()
        assert await dom.list_all_snapshots() == []


async def test_checkpoints_on_the_test_driver(daemon):
    xml = ("<domain type='test'><name>ckpt-vm</name><memory>65536</memory><vcpu>1</vcpu>"
           "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
           "<source file='/nonexistent.img'/><target dev='vda'/></disk></devices></domain>")
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        dom = await conn.domain_create_xml(xml)
        c1 = await dom.checkpoint_create_xml(
            "<domaincheckpoint><name>c1</name></domaincheckpoint>")
        c2 = await dom.checkpoint_create_xml(
            "<domaincheckpoint><name>c2</name></domaincheckpoint>")
        assert isinstance(c1, aiovirt.DomainCheckpoint) and c1.domain == dom
        assert set(await dom.list_all_checkpoints()) == {c1, c2}
        assert await c2.get_parent() == c1
        assert await c1.list_all_children() == [c2]
        assert await dom.checkpoint_lookup_by_name("c1") == c1
        assert "<name>c1</name>" in await c1.get_xml_desc()
        await c2.delete()
        assert await dom.list_all_checkpoints() == [c1]


# -- interfaces, nwfilters, network ports ------------------------------------------------------
async def test_interfaces_on_the_test_driver(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        ifaces = await conn.list_all_interfaces()
        assert ifaces and all(isinstance(i, aiovirt.Interface) for i in ifaces)
        iface = ifaces[0]
        assert f"name='{iface.name}'" in await iface.get_xml_desc()
        assert isinstance(await iface.is_active(), bool)
        assert await conn.interface_lookup_by_name(iface.name) == iface
        assert (await conn.interface_lookup_by_mac_string(iface.mac)).name == iface.name
        assert await conn.num_of_interfaces() >= 1


async def test_nwfilters_and_bindings_on_the_qemu_driver(daemon):
    name = f"aiovirt-{uuid.uuid4().hex[:8]}"
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        filt = await conn.nwfilter_define_xml(
            f"<filter name='{name}' chain='root'><rule action='accept' direction='in'>"
            "<all/></rule></filter>")
        try:
            assert isinstance(filt, aiovirt.NWFilter) and filt.name == name
            assert filt in await conn.list_all_nwfilters()
            assert await conn.nwfilter_lookup_by_name(name) == filt
            assert await conn.nwfilter_lookup_by_uuid_string(filt.uuid) == filt
            assert f"name='{name}'" in await filt.get_xml_desc()
            assert isinstance(await conn.list_all_nwfilter_bindings(), list)
            binding_xml = (f"<filterbinding><owner><name>x</name><uuid>{uuid.uuid4()}</uuid>"
                           "</owner><portdev name='lo'/><mac address='52:54:00:00:00:01'/>"
                           f"<filterref filter='{name}'/></filterbinding>")
            try:
                binding = await conn.nwfilter_binding_create_xml(binding_xml)
            except aiovirt.LibvirtError as exc:
                pytest.skip(f"nwfilter bindings need the host's firewall tools: {exc}")
            try:
                assert isinstance(binding, aiovirt.NWFilterBinding)
                assert binding.filtername == name
                assert await conn.nwfilter_binding_lookup_by_port_dev("lo") == binding
                assert "<filterbinding" in await binding.get_xml_desc()
            finally:
                await binding.delete()
        finally:
            await filt.undefine()


async def test_network_ports_on_the_qemu_driver(daemon):
    """The test driver has no network ports: the network driver beside QEMU does; a
    bridge-mode network needs no firewall to start."""
    name = f"aiov-{uuid.uuid4().hex[:8]}"
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        net = await conn.network_create_xml(
            f"<network><name>{name}</name><forward mode='bridge'/>"
            f"<bridge name='br{name[-8:]}'/></network>")
        try:
            port = await net.port_create_xml(
                f"<networkport><uuid>{uuid.uuid4()}</uuid><owner><name>x</name>"
                f"<uuid>{uuid.uuid4()}</uuid></owner><mac address='52:54:00:00:00:01'/>"
                "</networkport>")
            assert isinstance(port, aiovirt.NetworkPort) and port.network == net
            assert await net.list_all_ports() == [port]
            assert await net.port_lookup_by_uuid_string(port.uuid) == port
            assert "<networkport>" in await port.get_xml_desc()
            await port.set_parameters({"inbound.average": 1000})
            assert (await port.get_parameters())["inbound.average"] == 1000
            await port.delete()
            assert await net.list_all_ports() == []
        finally:
            await net.destroy()


# -- typed parameters ----------------------------------------------------------------------------
async def test_typed_parameter_getters_keep_string_fields(daemon):
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        dom = await conn.domain_lookup_by_name("node-vm1")
        blkio = await dom.get_blkio_parameters()
        assert isinstance(blkio["weight"], int)
        assert isinstance(blkio["device_weight"], str)   # only with STRING_OKAY
        numa = await dom.get_numa_parameters()
        assert isinstance(numa["numa_nodeset"], str)
        # without VIR_TYPED_PARAM_STRING_OKAY the daemon leaves string fields out
        count = (await conn.rpc.domain_get_blkio_parameters(dom._ref, 0, 0)).nparams
        raw = await conn.rpc.domain_get_blkio_parameters(dom._ref, count, 0)
        assert "device_weight" not in {p.field for p in raw.params}
        assert set(await dom.get_memory_parameters()) >= {"hard_limit", "soft_limit"}
        assert await dom.get_scheduler_parameters() == {"weight": 50}
        stats = await dom.get_cpu_stats(-1, 1)
        assert len(stats) == 1 and "cpu_time" in stats[0]
        assert "user" in await conn.node_get_cpu_stats(-1)


async def test_setters_learn_field_types_from_their_getter(daemon):
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        dom = await conn.domain_lookup_by_name("node-vm1")
        # "weight" is an unsigned int: guessing from the Python int says unsigned long long,
        # which the daemon's strict check refuses...
        assert from_dict({"weight": 70})[0].value.type == ULLONG
        with pytest.raises(aiovirt.LibvirtError):
            await conn.rpc.domain_set_scheduler_parameters(dom._ref, from_dict({"weight": 70}))
        # ...the setter asks the getter first and sends UINT
        assert (await dom._typed_param_types_get_scheduler_parameters())["weight"] == UINT
        await dom.set_scheduler_parameters({"weight": 70})
        await dom.set_memory_parameters({"hard_limit": 1048576})
        assert (await dom.get_memory_parameters())["hard_limit"] == 1048576


VIR_DOMAIN_AFFECT_LIVE = 1
VIR_DOMAIN_STATS_IOTHREAD = 128


async def test_setters_without_a_getter_send_libvirts_declared_types(daemon):
    """set_io_thread_params has no getter to ask: poll_grow and poll_shrink go as the
    unsigned ints libvirt declares (guessed from the Python int, unsigned long long, the
    daemon refused them), and the test driver reports them back."""
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        dom = await conn.domain_lookup_by_name("node-vm1")
        await dom.add_io_thread(6, VIR_DOMAIN_AFFECT_LIVE)
        await dom.set_io_thread_params(6, {"poll_max_ns": 1000, "poll_grow": 2,
                                           "poll_shrink": 3}, VIR_DOMAIN_AFFECT_LIVE)
        [(_, stats)] = await conn.domain_list_get_stats([dom], VIR_DOMAIN_STATS_IOTHREAD)
        assert {key: stats[f"iothread.6.{key}"] for key in (
            "poll-max-ns", "poll-grow", "poll-shrink")} == {
            "poll-max-ns": 1000, "poll-grow": 2, "poll-shrink": 3}
        with pytest.raises(aiovirt.EncodeError, match="'poll_grow': expected an int"):
            await dom.set_io_thread_params(6, {"poll_grow": "2"}, VIR_DOMAIN_AFFECT_LIVE)


async def test_block_copy_sends_libvirts_declared_types(daemon, tmp_path):
    """block_copy's granularity goes as an unsigned int: it passes the QEMU driver's type
    check (an unsigned long long was refused) and reaches its checks of the values."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    name = f"aiovirt-{uuid.uuid4().hex[:8]}"
    xml = (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
           "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
           f"<driver name='qemu' type='raw'/><source file='{image}'/>"
           "<target dev='vda' bus='virtio'/></disk></devices></domain>")
    copy = f"<disk type='file'><source file='{tmp_path}/copy.img'/><driver type='raw'/></disk>"
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(xml)
        try:
            with pytest.raises(aiovirt.InvalidArgument, match="granularity must be power of 2"):
                await dom.block_copy("vda", copy, {"granularity": 3})
            with pytest.raises(aiovirt.OperationInvalid, match="not running"):
                await dom.block_copy("vda", copy, {"granularity": 512, "buf-size": 1 << 20,
                                                   "bandwidth": 1 << 20})
        finally:
            await dom.undefine()


async def test_set_identity_sends_libvirts_declared_types(daemon):
    """process-id is a long long: guessed from a positive int, unsigned long long, the daemon
    refuses it."""
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        with pytest.raises(aiovirt.InvalidArgument, match="'process-id', expected 'llong'"):
            await conn.rpc.connect_set_identity(from_dict({"process-id": os.getpid()}), 0)
        await conn.set_identity({"process-id": os.getpid(), "user-name": "root"})
        assert await conn.get_lib_version() > 0


# -- other rules -------------------------------------------------------------------------------
async def test_autostart_vcpus_and_memory(daemon):
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        dom = await conn.domain_lookup_by_name("node-vm2")
        assert await dom.get_autostart() is False
        await dom.set_autostart(1)
        assert await dom.get_autostart() is True
        await dom.set_vcpus_flags(1, 2)                     # VIR_DOMAIN_AFFECT_CONFIG
        assert await dom.get_vcpus_flags(2) == 1
        await dom.set_memory_flags(131072, 2)
        assert (await dom.get_info()).memory == 131072
        assert await dom.get_max_memory() == 262144
        assert await dom.is_persistent() is True
        assert await dom.get_os_type() in ("hvm", "linux")   # the test driver says linux


async def test_rename_renames_the_handle(daemon):
    """As libvirt's client renames its domain object: ``name`` follows (it kept the old one),
    and calls through the handle still reach the domain; a refused rename changes nothing."""
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        dom = await conn.domain_lookup_by_name("node-vm2")
        assert await dom.rename("node-vm2-renamed") == 0
        assert dom.name == "node-vm2-renamed"
        assert await conn.domain_lookup_by_name("node-vm2-renamed") == dom
        assert "<name>node-vm2-renamed</name>" in await dom.xml()
        with pytest.raises(aiovirt.LibvirtError, match="node-vm1"):
            await dom.rename("node-vm1")   # taken
        running = await conn.domain_lookup_by_name("node-vm1")
        with pytest.raises(aiovirt.OperationInvalid):
            await running.rename("node-vm1-renamed")
        assert (dom.name, running.name) == ("node-vm2-renamed", "node-vm1")


async def test_destroy_leaves_the_handle_without_an_id(daemon):
    """As libvirt's client resets its domain object's ID: ``id`` and the wire reference
    (sent with every later call) both become -1, as the daemon's own reference; start gives
    both the new ID."""
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        dom = await conn.domain_lookup_by_name("node-vm1")
        assert dom.id > 0
        await dom.destroy()
        assert dom.id == dom._ref.id == -1
        assert dom._ref == (await conn.domain_lookup_by_name("node-vm1"))._ref
        await dom.start()
        assert dom.id == dom._ref.id == (await conn.domain_lookup_by_name("node-vm1")).id > 0


@pytest.mark.parametrize("stop", ["destroy_legacy", "save", "managed_save"])
async def test_the_calls_that_stop_a_domain_leave_it_without_an_id(daemon, tmp_path, stop):
    """virDomainDestroy, virDomainSave and virDomainManagedSave: libvirt's client resets the
    domain object's ID on success (gendispatch.pl); the generated methods reset the handle's
    and its wire reference's, and start gives both the new one."""
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        dom = await conn.domain_lookup_by_name("node-vm1")
        assert dom.id > 0
        if stop == "save":
            await dom.save(str(tmp_path / "node-vm1.save"))
        else:
            await getattr(dom, stop)()
        assert dom.id == dom._ref.id == -1
        assert dom._ref == (await conn.domain_lookup_by_name("node-vm1"))._ref
        if stop != "save":   # (a saved domain comes back with restore, not start)
            await dom.start()
            assert dom.id == dom._ref.id == (await conn.domain_lookup_by_name("node-vm1")).id


async def test_in_band_failure_raises(daemon):
    """The test driver has no security labels: the daemon answers GET_SECURITY_LABEL_LIST
    with ret = -1 in a successful reply, which the generated method raises."""
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        dom = await conn.domain_lookup_by_name("node-vm1")
        raw = await conn.rpc.domain_get_security_label_list(dom._ref)
        if raw.ret != -1:
            pytest.skip(f"this daemon answers {raw.ret}, not -1")
        with pytest.raises(aiovirt.LibvirtError, match="virDomainGetSecurityLabelList"):
            await dom.get_security_label_list()


async def test_is_secure_combines_the_transport(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        assert await conn.is_secure() is True          # a UNIX socket
        assert await conn.is_encrypted() is False
    async with aiovirt.connect(daemon.uri(transport="tcp")) as conn:
        assert await conn.is_secure() is False         # plain TCP
        assert await conn.is_encrypted() is False


async def test_lookups_and_lists_return_handles(daemon):
    async with aiovirt.connect(daemon.uri(path=NODE_XML)) as conn:
        doms = await conn.list_all_domains()
        assert {d.name for d in doms} == {"node-vm1", "node-vm2"}
        vm1 = await conn.domain_lookup_by_uuid_string("3f1c2b8e-5a0d-4c7e-9b21-0d6f4e8a1c01")
        assert vm1.name == "node-vm1"
        assert sorted(await conn.list_domain_ids(10)) == [vm1.id]
        pool = await conn.storage_pool_lookup_by_name("node-pool")
        assert isinstance(pool, aiovirt.StoragePool)
        net = (await conn.list_all_networks())[0]
        assert await net.get_bridge_name() == "virbr9"
        stats = await conn.domain_list_get_stats([vm1])
        assert [d for d, _ in stats] == [vm1]


@pytest.mark.kvm
async def test_qemu_monitor_and_agent_commands(daemon):
    name = f"gen-{uuid.uuid4().hex[:8]}"
    xml = (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory>"
           "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
           "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>")
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.domain_create_xml(xml)
        try:
            reply = await dom.qemu_monitor_command('{"execute": "query-status"}')
            assert json.loads(reply)["return"]["running"] is True
            with pytest.raises(aiovirt.LibvirtError):     # no guest agent configured
                await dom.qemu_agent_command('{"execute": "guest-ping"}', 1)
        finally:
            await dom.destroy()
