"""FD passing (CALL_WITH_FDS / REPLY_WITH_FDS over SCM_RIGHTS) against the suite's libvirtd.

libvirt's layout (virnetmessage.c, virnetclient.c): a u32 FD count between header and payload;
after the packet each FD travels in a sendmsg of its own with one zero data byte.  The daemon
reads each FD with recvmsg right after the packet: if our bytes or FDs were misplaced it would
fail to receive them and drop the connection, so a call that succeeds and a connection that
answers the next call prove the FDs arrived where libvirt expects them.
"""

from __future__ import annotations

import os
import socket
import struct
import uuid

import anyio
import pytest

import aiovirt
from aiovirt.errors import ProtocolError, TransportError
from aiovirt.protocol import remote
from aiovirt.protocol.wire import (CALL_WITH_FDS, OK, PREFIX_SIZE, REPLY_WITH_FDS,
                                   ClientProtocol, encode_message)
from aiovirt.client.transport import AnyioTransport
from aiovirt.testing.fakepeer import memory_dialer

P = remote.PROCEDURES


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the sans-IO layer -----------------------------------------------------------------------

def test_call_with_fds_frames_the_count_before_the_payload_and_is_never_queued():
    protocol = ClientProtocol(max_in_flight=1)
    proc = P[remote.REMOTE_PROC_DOMAIN_CREATE_WITH_FILES]
    dom = remote.NonnullDomain("g", b"u" * 16, -1)
    _, first = protocol.call(proc, remote.DomainCreateWithFilesArgs(dom, 0))
    plain = first
    assert struct.unpack_from(">i", plain, 16)[0] == 0                  # CALL
    serial, packet = protocol.call(proc, remote.DomainCreateWithFilesArgs(dom, 0), fds=2)
    assert packet is not None and protocol.pending == 2                  # not queued
    length, = struct.unpack_from(">I", packet)
    assert length == len(packet) == len(plain) + 4
    assert struct.unpack_from(">i", packet, 16)[0] == CALL_WITH_FDS
    assert struct.unpack_from(">I", packet, PREFIX_SIZE)[0] == 2         # the FD count
    assert packet[PREFIX_SIZE + 4:] == plain[PREFIX_SIZE:]               # then the args
    with pytest.raises(aiovirt.errors.EncodeError):
        protocol.call(proc, remote.DomainCreateWithFilesArgs(dom, 0), fds=33)


def test_reply_with_fds_waits_for_one_byte_per_fd():
    protocol = ClientProtocol()
    proc = P[remote.REMOTE_PROC_DOMAIN_OPEN_GRAPHICS_FD]
    serial, _ = protocol.call(proc, remote.DomainOpenGraphicsFdArgs(
        remote.NonnullDomain("g", b"u" * 16, 1), 0, 0))
    reply = encode_message(remote.PROGRAM, proc.number, REPLY_WITH_FDS, serial, OK,
                           struct.pack(">I", 2))
    assert protocol.receive_data(reply) == []          # the FDs' bytes have not come
    assert protocol.receive_data(b"\0") == []
    ping_next = encode_message(0x6B656570, 1, 2, 0, OK)   # a keepalive PING right after
    items = protocol.receive_data(b"\0" + ping_next)
    assert items[0].serial == serial and items[0].fds == 2 and items[0].value is None
    assert items[1].ping is True


async def test_generic_anyio_transport_refuses_fd_calls_on_a_unix_socket(daemon):
    async with aiovirt.connect(daemon.uri(), native_transport=False) as conn:
        channel = conn.channels[0]
        assert isinstance(channel.transport, AnyioTransport)
        r, w = os.pipe()
        try:
            sent = channel.protocol._serial
            with pytest.raises(TransportError, match="anyio stream transport"):
                await channel.call_with_fds(
                    P[remote.REMOTE_PROC_DOMAIN_CREATE_XML_WITH_FILES],
                    remote.DomainCreateXmlWithFilesArgs(_test_guest("never"), 0), [r])
            assert channel.protocol._serial == sent and channel.closed is None
            assert await conn.get_lib_version()
        finally:
            os.close(r)
            os.close(w)


# -- a scripted peer on a socketpair: what a real daemon will not do on demand ---------------

def _fd_reply(msg, nfds: int) -> bytes:
    """A REPLY_WITH_FDS to ``msg`` (connect_get_lib_version) announcing ``nfds``."""
    body = struct.pack(">I", nfds) + struct.pack(">Q", 9000000)
    return encode_message(remote.PROGRAM, msg.procedure, REPLY_WITH_FDS, msg.serial, OK, body)


async def test_reply_fds_arrive_owned_and_usable_and_abandoned_ones_are_closed():
    pipes = [os.pipe() for _ in range(2)]
    gate = anyio.Event()

    async def peer(stream, msg):
        if msg.procedure != remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION:
            return False
        await gate.wait()
        await stream.send(_fd_reply(msg, 2))
        for r, _ in pipes:              # each FD after the packet, one byte each, as libvirt
            await stream.send_fds(b"\0", [r])
        return True

    async with aiovirt.connect("test:///default", dialer=memory_dialer(peer)) as conn:
        channel = conn.channels[0]
        gate.set()
        value, fds = await channel.call_with_fds(P[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION])
        assert value.lib_ver == 9000000 and len(fds) == 2
        for fd, (_, w) in zip(fds, pipes):   # new descriptors on the same pipes, ours to close
            assert fd not in (r for r, _ in pipes)
            os.write(w, b"!")
            assert os.read(fd, 1) == b"!"
            assert os.get_inheritable(fd) is False      # close-on-exec
            os.close(fd)
        # a caller that leaves before its reply: the FDs that come are closed, not leaked
        gate = anyio.Event()
        before = _open_fds()
        with anyio.move_on_after(0.2):
            await channel.call_with_fds(P[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION])
        gate.set()
        with anyio.fail_after(5):
            while channel._fd_calls or channel.in_flight:
                await anyio.sleep(0.01)
        assert _open_fds() == before and channel.closed is None
        # a plain call answered with FDs: a clear error, the FDs gone, the channel in step
        with anyio.fail_after(5), pytest.raises(ProtocolError, match="call_with_fds"):
            await conn.get_lib_version()
        assert _open_fds() == before and channel.closed is None
    for r, w in pipes:
        os.close(r)
        os.close(w)


async def test_paused_reading_holds_a_reply_with_fds_until_resumed():
    """Stream flow control (pause/resume reading) and the recvmsg reader share the socket."""
    r, w = os.pipe()
    gate = anyio.Event()

    async def peer(stream, msg):
        if msg.procedure != remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION:
            return False
        await gate.wait()
        await stream.send(_fd_reply(msg, 1))
        await stream.send_fds(b"\0", [r])
        return True

    async with aiovirt.connect("test:///default", dialer=memory_dialer(peer)) as conn:
        channel = conn.channels[0]
        got: list = []

        async def call() -> None:
            got.append(await channel.call_with_fds(
                P[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.sleep(0.05)
            assert channel.pause_reading()
            gate.set()
            await anyio.sleep(0.3)
            assert got == []                      # nothing read while paused
            channel.resume_reading()
        (value, fds), = got
        assert value.lib_ver == 9000000 and len(fds) == 1
        os.write(w, b"?")
        assert os.read(fds[0], 1) == b"?"
        os.close(fds[0])
    os.close(r)
    os.close(w)


async def test_fds_announced_but_missing_fail_the_channel():
    async def peer(stream, msg):
        if msg.procedure != remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION:
            return False
        await stream.send(_fd_reply(msg, 1) + b"\0")    # the FD's byte, but no FD
        return True

    async with aiovirt.connect("test:///default", dialer=memory_dialer(peer)) as conn:
        channel = conn.channels[0]
        with anyio.fail_after(5), pytest.raises(ProtocolError, match="announced 1 file"):
            await channel.call_with_fds(P[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION])
        assert channel.closed is not None and not conn.is_alive


# -- a real daemon ----------------------------------------------------------------------------

def _test_guest(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory>1024</memory>"
            "<os><type>hvm</type></os></domain>")


async def test_create_with_files_passes_an_fd_to_the_test_driver(daemon):
    name = f"fds-{uuid.uuid4().hex[:8]}"
    r, w = os.pipe()
    base = _open_fds()
    async with aiovirt.connect(daemon.uri()) as conn:
        channel = conn.channels[0]
        dom = (await conn.rpc.domain_define_xml(_test_guest(name))).dom
        # +1 once FDs have passed: the channel's recvmsg/sendmsg handle, a dup of its socket
        before = _open_fds() + 1
        try:
            value, fds = await channel.call_with_fds(
                P[remote.REMOTE_PROC_DOMAIN_CREATE_WITH_FILES],
                remote.DomainCreateWithFilesArgs(dom, 0), [r, w])
            assert fds == [] and value.dom.name == name and value.dom.id > 0
            # the daemon read both FDs (else it would have dropped us): the socket is in step
            assert (await conn.rpc.domain_get_state(dom, 0)).state == 1   # running
            assert channel.closed is None and _open_fds() == before   # ours stay ours
            os.write(w, b"x")                                          # and still work
            assert os.read(r, 1) == b"x"
            await conn.rpc.domain_destroy(dom)
            # the XML variant too, with many concurrent plain calls around it
            xml_name = name + "-x"
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(conn.rpc.connect_get_hostname)
                value, fds = await channel.call_with_fds(
                    P[remote.REMOTE_PROC_DOMAIN_CREATE_XML_WITH_FILES],
                    remote.DomainCreateXmlWithFilesArgs(_test_guest(xml_name), 0), [r])
                for _ in range(20):
                    tg.start_soon(conn.rpc.connect_get_hostname)
            assert value.dom.name == xml_name and fds == []
            await conn.rpc.domain_destroy(value.dom)   # transient: gone
        finally:
            if (await conn.rpc.domain_is_active(dom)).active:
                await conn.rpc.domain_destroy(dom)
            await conn.rpc.domain_undefine(dom)
    with anyio.fail_after(5):
        while _open_fds() != base:        # the socket and its dup close with the connection
            await anyio.sleep(0.01)
    os.close(r)
    os.close(w)


async def test_tcp_refuses_fd_calls_before_sending(daemon):
    async with aiovirt.connect(daemon.uri(transport="tcp")) as conn:
        channel = conn.channels[0]
        r, w = os.pipe()
        try:
            sent = channel.protocol._serial
            with pytest.raises(TransportError, match="TCP socket.*UNIX socket"):
                await channel.call_with_fds(
                    P[remote.REMOTE_PROC_DOMAIN_CREATE_XML_WITH_FILES],
                    remote.DomainCreateXmlWithFilesArgs(_test_guest("never"), 0), [r])
            with pytest.raises(TransportError, match="TCP socket"):   # receiving as well
                await channel.call_with_fds(P[remote.REMOTE_PROC_CONNECT_GET_HOSTNAME])
            assert channel.protocol._serial == sent and channel.protocol.pending == 0
            assert (await conn.rpc.connect_get_hostname()).hostname
        finally:
            os.close(r)
            os.close(w)
        for i in (await conn.rpc.connect_list_domains(100)).ids:   # nothing was created
            assert (await conn.rpc.domain_lookup_by_id(i)).dom.name != "never"


# -- a KVM guest with VNC: REPLY_WITH_FDS -----------------------------------------------------

def _kvm_guest(name: str) -> str:
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>32</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            "<graphics type='vnc' autoport='yes' listen='127.0.0.1'/></devices></domain>")


async def _rfb_banner(fd: int) -> bytes:
    sock = socket.socket(fileno=fd)          # takes ownership: closed with the socket
    with sock:
        sock.setblocking(False)
        data = b""
        with anyio.fail_after(10):
            while not data.endswith(b"\n"):
                await anyio.wait_readable(sock)
                chunk = sock.recv(64)
                assert chunk, "the graphics FD closed before the RFB banner"
                data += chunk
        return data


@pytest.mark.kvm
async def test_kvm_create_with_files_then_open_graphics_fd(daemon):
    name = f"fds-kvm-{uuid.uuid4().hex[:8]}"
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        channel = conn.channels[0]
        dom = (await conn.rpc.domain_define_xml(_kvm_guest(name))).dom
        r, w = os.pipe()
        try:
            try:
                value, fds = await channel.call_with_fds(
                    P[remote.REMOTE_PROC_DOMAIN_CREATE_WITH_FILES],
                    remote.DomainCreateWithFilesArgs(dom, 0), [r])
                assert fds == [] and value.dom.id > 0
            except aiovirt.errors.NoSupport:
                # the QEMU driver has no domainCreateWithFiles: the daemon still read our
                # FD (else the connection would be gone); start the guest plainly
                assert channel.closed is None
                await conn.rpc.domain_create(dom)
            before = _open_fds()   # the channel already holds its dup (the call above)
            value, fds = await channel.call_with_fds(
                P[remote.REMOTE_PROC_DOMAIN_OPEN_GRAPHICS_FD],
                remote.DomainOpenGraphicsFdArgs(dom, 0, 0))
            assert value is None and len(fds) == 1 and _open_fds() == before + 1
            assert (await _rfb_banner(fds[0])).startswith(b"RFB 003.00")
            assert _open_fds() == before
            # three at once, with plain calls in between: each gets its own working FD
            got: list[bytes] = []

            async def one() -> None:
                _, fds = await channel.call_with_fds(
                    P[remote.REMOTE_PROC_DOMAIN_OPEN_GRAPHICS_FD],
                    remote.DomainOpenGraphicsFdArgs(dom, 0, 0))
                assert len(fds) == 1
                got.append(await _rfb_banner(fds[0]))

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(one)
                    tg.start_soon(conn.rpc.connect_get_hostname)
            assert len(got) == 3 and all(b.startswith(b"RFB 003.00") for b in got)
            # the generated method (a plain CALL) cannot take the FD: a clear error, FD
            # closed, the connection still in step
            with pytest.raises(ProtocolError, match="call_with_fds"):
                await conn.rpc.domain_open_graphics_fd(dom, 0, 0)
            assert _open_fds() == before and channel.closed is None
            assert (await conn.rpc.domain_get_state(dom, 0)).state == 1
        finally:
            os.close(r)
            os.close(w)
            if (await conn.rpc.domain_is_active(dom)).active:
                await conn.rpc.domain_destroy(dom)
            await conn.rpc.domain_undefine(dom)


async def test_the_public_names_pass_files(daemon):
    """``Domain.start_with_files`` and ``Connection.create_xml_with_files`` on the real test
    driver; over TCP the same names refuse before sending, saying why."""
    name = f"fdp-{uuid.uuid4().hex[:8]}"
    r, w = os.pipe()
    try:
        async with aiovirt.connect(daemon.uri()) as conn:
            dom = await conn.define_xml(_test_guest(name))
            try:
                await dom.start_with_files([r, w])
                assert dom.id > 0 and (await dom.state())[0] == aiovirt.DomainState.RUNNING
                await dom.destroy()
                transient = await conn.create_xml_with_files(_test_guest(name + "-t"), [w])
                assert transient.name == name + "-t" and transient.id > 0
                await transient.destroy()
            finally:
                await dom.undefine()
        async with aiovirt.connect(daemon.uri(transport="tcp")) as conn:
            dom = await conn.lookup_domain(name="test")
            with pytest.raises(aiovirt.TransportError, match="TCP"):
                await dom.start_with_files([r])
            assert await conn.get_lib_version() == 9000000
    finally:
        os.close(r)
        os.close(w)
