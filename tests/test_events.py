"""Event subscriptions of every family against the real libvirtd, and bounded buffers.

Networks, pools, node devices and domains use the test driver's shared host
(``daemon.uri()``), secrets and QEMU monitor registrations the QEMU driver's connection.
Every wait is bounded (``fail_after``); names carry a random suffix and whatever a test makes
it removes again.
"""

from __future__ import annotations

import contextlib
import gc
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

import aiovirt
from aiovirt.api.events import (ConnectionCloseReason, ConnectionClosedEvent,
                                DomainDeviceAddedEvent, DomainMetadataChangeEvent,
                                DomainTunableEvent, NetworkEventType,
                                NetworkLifecycleEvent, NodeDeviceEventType,
                                NodeDeviceLifecycleEvent, QemuMonitorEvent, SecretEventID,
                                SecretEventType, SecretLifecycleEvent, SecretValueChangedEvent,
                                StoragePoolEventID, StoragePoolEventType,
                                StoragePoolLifecycleEvent, StoragePoolRefreshEvent)
from aiovirt.client.events import (CLOSE_CALLBACK_ID, DEFAULT_MAX_BUFFER, Dropped,
                                   EventSubscription, Resync, event_callback_id)
from aiovirt.protocol import remote
from aiovirt.protocol.remote import NetworkEventLifecycleMsg, NonnullNetwork
from aiovirt.protocol.wire import EventMessage
from aiovirt.protocol.xdr import encode
from aiovirt.testing.daemon import PrivateDaemon

LIMIT = 20   # seconds any one wait may take


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


NETWORK_LIFECYCLE = remote.PROCEDURES[remote.REMOTE_PROC_NETWORK_EVENT_LIFECYCLE]


def network_event(callback_id: int, name: str, uuid_bytes: bytes, event: int) -> EventMessage:
    """A network lifecycle event as the socket reader hands it over: undecoded bytes."""
    body = NetworkEventLifecycleMsg(callback_id, NonnullNetwork(name, uuid_bytes), event, 0)
    return EventMessage(remote.PROGRAM, NETWORK_LIFECYCLE,
                        encode(NETWORK_LIFECYCLE.encode_ret, body, "event"))


def network_xml(name: str) -> str:
    return (f"<network><name>{name}</name><bridge name='vb{name[-8:]}'/>"
            "<ip address='192.0.2.1' netmask='255.255.255.0'/></network>")


def domain_xml(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type>hvm</type></os></domain>")


@contextlib.asynccontextmanager
async def cleanup() -> AsyncIterator[Callable[[Callable[[], Awaitable[object]]], None]]:
    """Undo steps run last-first on exit; a step whose object is already gone is skipped."""
    steps: list[Callable[[], Awaitable[object]]] = []
    try:
        yield steps.append
    finally:
        for step in reversed(steps):
            with contextlib.suppress(aiovirt.LibvirtError):
                await step()


async def take(events: EventSubscription[Any], count: int) -> list[Any]:
    """The next ``count`` items of a subscription, within ``LIMIT`` seconds."""
    got: list[Any] = []
    with anyio.fail_after(LIMIT):
        async for item in events:
            got.append(item)
            if len(got) == count:
                break
    return got


async def until(events: EventSubscription[Any], done: Callable[[Any], bool]) -> list[Any]:
    """Items up to and including the first for which ``done`` holds, within ``LIMIT``."""
    got: list[Any] = []
    with anyio.fail_after(LIMIT):
        async for item in events:
            got.append(item)
            if done(item):
                break
    return got


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- bounded buffers --------------------------------------------------------------------------
async def test_stalled_subscription_memory_stays_flat_and_losses_are_exact(daemon):
    """100,000 events to a never-read subscription: RSS grows < 10 MB, 99,000 reported lost."""
    total = 100_000
    async with aiovirt.connect(daemon.uri()) as conn, conn.network_events() as events:
        assert events.max_buffer == DEFAULT_MAX_BUFFER == 1000
        callback_id = events.callback_id
        assert callback_id is not None
        deliver = events.deliver
        gc.collect()
        before = rss_bytes()
        for i in range(total):   # fresh packets, as the reader hands them over
            deliver(network_event(callback_id, f"n{i}", uuid.uuid4().bytes, 0))
        gc.collect()
        grown = rss_bytes() - before
        assert grown < 10 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"
        assert events.buffered == 1000
        assert events.dropped_total == total - 1000

        got = await take(events, 1 + 1000)
        assert got[0] == Dropped(total - 1000)
        assert [e.network.name for e in got[1:]] == [f"n{i}" for i in range(total - 1000, total)]
        assert all(isinstance(e, NetworkLifecycleEvent) for e in got[1:])
        assert events.buffered == 0


async def test_unbounded_buffer_keeps_everything(daemon):
    """``max_buffer=None`` is the opt-out: nothing is dropped (and memory grows)."""
    async with aiovirt.connect(daemon.uri()) as conn, \
            conn.network_events(max_buffer=None) as events:
        for i in range(5000):
            events.deliver(network_event(events.callback_id or 0, f"n{i}", bytes(16), 0))
        assert events.buffered == 5000 and events.dropped_total == 0
        got = await take(events, 5000)
        assert [e.network.name for e in got] == [f"n{i}" for i in range(5000)]
    with pytest.raises(ValueError, match="max_buffer"):
        EventSubscription(conn, "network", (), None, None, None, max_buffer=0)  # type: ignore


async def test_small_buffer_reports_exact_losses_of_a_real_storm(daemon):
    """A define/undefine storm on the daemon: a 5-event subscription left unread reports
    exactly how many it lost, then the 5 newest - the same ones a lossless one saw last."""
    storm = 40
    prefix = unique("storm")
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo, \
            conn.network_events(max_buffer=5) as small, \
            conn.network_events(max_buffer=None) as full:
        assert small.callback_id == full.callback_id   # one daemon-side callback, shared
        for i in range(storm):
            net = await conn.define_network(network_xml(f"{prefix}-{i:03d}"))
            undo(net.undefine)
            await net.undefine()
        last = f"{prefix}-{storm - 1:03d}"
        seen = await until(full, lambda e: (e.network.name, e.event) ==
                           (last, NetworkEventType.UNDEFINED))
        mine = [(e.network.name, e.event) for e in seen if e.network.name.startswith(prefix)]
        assert len(mine) == 2 * storm
        assert mine[:2] == [(f"{prefix}-000", NetworkEventType.DEFINED),
                            (f"{prefix}-000", NetworkEventType.UNDEFINED)]
        # every event reached ``small`` when it reached ``full``: same registration
        got = await take(small, 6)
        assert got[0] == Dropped(len(seen) - 5)
        assert [(e.network.name, e.event) for e in got[1:]] == \
            [(e.network.name, e.event) for e in seen[-5:]]
        assert small.buffered == 0


async def test_resync_marker_is_delivered_in_order(daemon):
    """``Registration.resynced()`` (the reconnect path) puts ``Resync`` after what is buffered,
    keeps the callables to register again, and a dropped ``Resync`` is still reported."""
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo, \
            conn.network_events(max_buffer=2) as events:
        registration = events._registration
        assert registration is not None
        assert registration.register is not None and registration.deregister is not None
        assert registration.family == "network"
        name = unique("rs")
        net = await conn.define_network(network_xml(name))
        undo(net.undefine)
        got = await take(events, 1)
        assert got[0].event == NetworkEventType.DEFINED and got[0].network.name == name
        registration.resynced()
        await net.undefine()
        got = await take(events, 2)
        assert got[0] == Resync()
        assert (got[1].network.name, got[1].event) == (name, NetworkEventType.UNDEFINED)
        # overflow pushes the Resync out of the buffer: it is still yielded, before Dropped
        registration.resynced()
        for i in range(3):
            events.deliver(network_event(events.callback_id or 0, f"x{i}", bytes(16), 2))
        got = await take(events, 4)
        assert got[0] == Resync() and got[1] == Dropped(1)
        assert [e.network.name for e in got[2:]] == ["x1", "x2"]


# -- every family, typed -----------------------------------------------------------------------
async def test_network_events_typed_and_filtered(daemon):
    """Lifecycle events arrive typed; a per-network subscription sees only its network."""
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo:
        a = await conn.define_network(network_xml(unique("neta")))
        undo(a.undefine)
        async with conn.network_events() as every, conn.network_events(a) as only_a:
            assert every.callback_id != only_a.callback_id
            b = await conn.define_network(network_xml(unique("netb")))
            undo(b.undefine)
            await a.start()
            undo(a.stop)
            await a.stop()
            await a.undefine()
            got = await until(every, lambda e: e.network == a and
                              e.event == NetworkEventType.UNDEFINED)
            assert [(e.network.name, e.event) for e in got] == [
                (b.name, NetworkEventType.DEFINED), (a.name, NetworkEventType.STARTED),
                (a.name, NetworkEventType.STOPPED), (a.name, NetworkEventType.UNDEFINED)]
            got = await take(only_a, 3)
            assert all(isinstance(e, NetworkLifecycleEvent) for e in got)
            assert [(e.network, e.event) for e in got] == [
                (a, NetworkEventType.STARTED), (a, NetworkEventType.STOPPED),
                (a, NetworkEventType.UNDEFINED)]
            assert only_a.buffered == 0    # b's DEFINED never reached it


async def test_storage_pool_lifecycle_and_refresh_events(daemon, tmp_path):
    name = unique("pool")
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo, \
            conn.storage_pool_events() as lifecycle, \
            conn.storage_pool_events(StoragePoolEventID.REFRESH) as refresh:
        pool = await conn.define_storage_pool(
            f"<pool type='dir'><name>{name}</name><target><path>{tmp_path}</path></target>"
            "</pool>")
        undo(pool.undefine)
        await pool.start()
        undo(pool.stop)
        await pool.refresh()
        await pool.stop()
        await pool.undefine()
        got = await until(lifecycle, lambda e: e.pool.name == name and
                          e.event == StoragePoolEventType.UNDEFINED)
        assert all(isinstance(e, StoragePoolLifecycleEvent) for e in got)
        assert [e.event for e in got if e.pool.name == name] == [
            StoragePoolEventType.DEFINED, StoragePoolEventType.STARTED,
            StoragePoolEventType.STOPPED, StoragePoolEventType.UNDEFINED]
        [event] = await take(refresh, 1)
        assert event == StoragePoolRefreshEvent(pool)


async def test_node_device_lifecycle_events(daemon):
    """The test driver creates vHBAs under a vport-capable fc_host, and emits events."""
    wwn = uuid.uuid4().hex[:12]
    xml = ("<device><parent>scsi_host1</parent><capability type='scsi_host'>"
           f"<capability type='fc_host'><wwnn>2000{wwn}</wwnn><wwpn>1000{wwn}</wwpn>"
           "</capability></capability></device>")
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo, \
            conn.node_device_events() as events:
        device = await conn.create_node_device(xml)
        undo(device.destroy)
        await device.destroy()
        got = await until(events, lambda e: e.device == device and
                          e.event == NodeDeviceEventType.DELETED)
        assert all(isinstance(e, NodeDeviceLifecycleEvent) for e in got)
        assert [e.event for e in got if e.device == device] == [
            NodeDeviceEventType.CREATED, NodeDeviceEventType.DELETED]


async def test_secret_lifecycle_and_value_changed_events(daemon):
    usage = f"/var/lib/images/{unique('vol')}.img"
    xml = ("<secret ephemeral='no' private='no'><usage type='volume'>"
           f"<volume>{usage}</volume></usage></secret>")
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn, cleanup() as undo, \
            conn.secret_events() as lifecycle, \
            conn.secret_events(SecretEventID.VALUE_CHANGED) as changed:
        secret = await conn.define_secret(xml)
        undo(secret.undefine)
        async with conn.secret_events(SecretEventID.VALUE_CHANGED, secret) as only_this:
            await secret.set_value(b"one")
            await secret.undefine()
            got = await until(lifecycle, lambda e: e.secret == secret and
                              e.event == SecretEventType.UNDEFINED)
            assert [(type(e), e.event) for e in got if e.secret == secret] == [
                (SecretLifecycleEvent, SecretEventType.DEFINED),
                (SecretLifecycleEvent, SecretEventType.UNDEFINED)]
            assert await take(changed, 1) == [SecretValueChangedEvent(secret)]
            assert await take(only_this, 1) == [SecretValueChangedEvent(secret)]


async def test_domain_events_typed_per_id(daemon):
    """Lifecycle and metadata-change events, each its own dataclass with named fields."""
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo:
        dom = await conn.define_xml(domain_xml(unique("dom")))
        undo(dom.undefine)
        async with conn.domain_events(domain=dom) as lifecycle, \
                conn.domain_events(aiovirt.DomainEventID.METADATA_CHANGE, dom) as meta:
            await dom.set_metadata("<app><owner>me</owner></app>", key="app",
                                   uri="http://example.org/app")
            await dom.start()
            undo(dom.destroy)
            [event] = await take(meta, 1)
            assert event == DomainMetadataChangeEvent(dom, aiovirt.MetadataType.ELEMENT,
                                                      "http://example.org/app")
            [event] = await take(lifecycle, 1)
            assert isinstance(event, aiovirt.DomainLifecycleEvent)
            assert (event.domain, event.event) == (dom, aiovirt.DomainEventType.STARTED)


async def test_lifecycle_types_are_selected_before_decoding(daemon):
    """``lifecycle=`` keeps only the chosen lifecycle types: a subscription for STARTED and
    STOPPED sees just those of a define/start/destroy/undefine cycle, in order, while one
    without it sees all four; both share one daemon callback."""
    T = aiovirt.DomainEventType
    async with aiovirt.connect(daemon.uri()) as conn, cleanup() as undo, \
            conn.domain_events() as everything, \
            conn.domain_events(lifecycle={T.STARTED, T.STOPPED}, max_buffer=None) as chosen:
        assert everything.callback_id == chosen.callback_id is not None
        dom = await conn.define_xml(domain_xml(unique("dom")))
        undo(dom.undefine)
        await dom.start()
        await dom.destroy()
        await dom.undefine()
        seen = await until(everything, lambda e: (e.domain, e.event) == (dom, T.UNDEFINED))
        assert [e.event for e in seen if e.domain == dom] == \
            [T.DEFINED, T.STARTED, T.STOPPED, T.UNDEFINED]
        got = await until(chosen, lambda e: (e.domain, e.event) == (dom, T.STOPPED))
        assert {e.event for e in got} <= {T.STARTED, T.STOPPED}
        assert [e.event for e in got if e.domain == dom] == [T.STARTED, T.STOPPED]
        assert chosen.dropped_total == 0
    with pytest.raises(ValueError, match="needs event_id LIFECYCLE"):
        conn.domain_events(aiovirt.DomainEventID.REBOOT, lifecycle={T.STARTED})


async def test_qemu_monitor_registrations(daemon):
    """QEMU monitor subscriptions register with the daemon (event-name filter, regex flag)
    and deregister; different filters are different daemon-side callbacks."""
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        async with conn.qemu_monitor_events(event="RESUME") as resume, \
                conn.qemu_monitor_events(event="^(STOP|RESUME)$", regex=True,
                                         nocase=True) as both:
            assert resume.callback_id is not None and both.callback_id is not None
            assert resume.callback_id != both.callback_id
        assert resume.callback_id is None
        with pytest.raises(aiovirt.LibvirtError):   # the daemon checks the regular expression
            async with conn.qemu_monitor_events(event="(", regex=True):
                pass
        assert await conn.get_lib_version() > 0     # the connection is still usable
    assert QemuMonitorEvent.__dataclass_fields__.keys() == {
        "domain", "event", "seconds", "micros", "details"}


async def test_connection_closed_event_with_reason(daemon):
    """The close callback registers with the daemon; when this client closes the connection
    the iterator yields ``ConnectionClosedEvent(CLIENT)`` and ends."""
    closed_proc = remote.PROCEDURES[remote.REMOTE_PROC_CONNECT_EVENT_CONNECTION_CLOSED]
    assert event_callback_id(EventMessage(remote.PROGRAM, closed_proc, b"\0\0\0\1")) == \
        CLOSE_CALLBACK_ID
    conn = await aiovirt.connect(daemon.uri())
    got: list[Any] = []
    async with conn.connection_closed_events() as closed:
        assert closed.callback_id == CLOSE_CALLBACK_ID
        async with anyio.create_task_group() as tg:
            async def read() -> None:
                with anyio.fail_after(LIMIT):
                    async for item in closed:
                        got.append(item)
            tg.start_soon(read)
            await conn.close()
    assert got == [ConnectionClosedEvent(ConnectionCloseReason.CLIENT)]


def kvm_guest_xml(name: str) -> str:
    """A diskless 32 MiB KVM guest: enough for QEMU to run, nothing to boot (ACPI: PCI
    hot-plug)."""
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<features><acpi/></features>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>")


@pytest.mark.kvm
async def test_qemu_monitor_events_of_a_real_guest_with_name_filter(daemon):
    """Pausing and resuming a KVM guest: QMP STOP/RESUME arrive typed, each filtered
    subscription gets only its event name, and the lifecycle events match."""
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn, cleanup() as undo:
        dom = await conn.define_xml(kvm_guest_xml(unique("qmp")))
        undo(dom.undefine)
        await dom.start()
        undo(dom.destroy)
        async with conn.qemu_monitor_events(dom, "STOP") as stops, \
                conn.qemu_monitor_events(dom, "resume", nocase=True) as resumes, \
                conn.qemu_monitor_events() as every, \
                conn.domain_events(domain=dom) as lifecycle:
            await dom.suspend()
            await dom.resume()
            [stop] = await take(stops, 1)
            assert isinstance(stop, QemuMonitorEvent)
            assert (stop.domain, stop.event) == (dom, "STOP") and stop.seconds > 0
            [resume] = await take(resumes, 1)
            assert (resume.domain, resume.event) == (dom, "RESUME")
            got = await until(every, lambda e: e.domain == dom and e.event == "RESUME")
            assert "STOP" in [e.event for e in got]
            assert stops.buffered == 0 and resumes.buffered == 0   # the filters held
            got = await take(lifecycle, 2)
            assert [e.event for e in got] == [aiovirt.DomainEventType.SUSPENDED,
                                              aiovirt.DomainEventType.RESUMED]


@pytest.mark.kvm
async def test_tunable_and_device_added_events_of_a_real_guest(daemon):
    """Pinning a vCPU gives a ``DomainTunableEvent`` whose typed parameters are a dict;
    hot-plugging an RNG gives a ``DomainDeviceAddedEvent`` naming its alias."""
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn, cleanup() as undo:
        dom = await conn.define_xml(kvm_guest_xml(unique("tun")))
        undo(dom.undefine)
        await dom.start()
        undo(dom.destroy)
        async with conn.domain_events(aiovirt.DomainEventID.TUNABLE, dom) as tunable, \
                conn.domain_events(aiovirt.DomainEventID.DEVICE_ADDED, dom) as added:
            await conn.rpc.domain_pin_vcpu_flags(dom._ref, 0, b"\x01", 1)   # live
            [event] = await take(tunable, 1)
            assert isinstance(event, DomainTunableEvent) and event.domain == dom
            assert event.params == {"cputune.vcpupin0": "0"}
            await dom.attach_device("<rng model='virtio'><backend model='random'>"
                                    "/dev/urandom</backend><alias name='ua-rng'/></rng>", 1)
            [event] = await take(added, 1)
            assert event == DomainDeviceAddedEvent(dom, "ua-rng")


async def test_connection_closed_event_when_the_daemon_goes(tmp_path):
    """A daemon of its own, stopped under the subscription: ``ConnectionClosedEvent(EOF)``,
    then the iteration ends."""
    with PrivateDaemon(tmp_path) as own:
        conn = await aiovirt.connect(own.uri())
        try:
            got: list[Any] = []
            async with conn.connection_closed_events() as closed:
                await anyio.to_thread.run_sync(own.stop)
                with anyio.fail_after(LIMIT):
                    async for item in closed:
                        got.append(item)
            assert got == [ConnectionClosedEvent(ConnectionCloseReason.EOF)]
        finally:
            await conn.close()
