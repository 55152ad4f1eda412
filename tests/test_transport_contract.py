"""One contract, every transport: the same behaviour over UNIX, TCP, TLS, ssh with a netcat
proxy and ssh through virt-ssh-helper, each against real components on loopback.

One private libvirtd (TCP always on, TLS with a throwaway PKI) and one private sshd serve the
whole module.  As root the sshd runs in a mount namespace with the daemon's socket directory
over ``/run/libvirt``, where ``virt-ssh-helper`` looks (``proxy=native``); elsewhere that
transport is skipped, the others still run.

For each transport, on asyncio's loop and on uvloop: calls work; domain events arrive; slow procedures open lanes while quick
calls stay usable; a storm of 200 calls cancelled at a random point leaves the connection
fully usable; and closing leaves nothing behind (no socket on the daemon, no descriptor, no
ssh child).  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aiovirt
from aiovirt.client.admin import server_settings
from aiovirt.protocol import remote
from aiovirt.testing.daemon import PrivateDaemon
from aiovirt.testing.pki import CertificateAuthority
from aiovirt.testing.sshd import PrivateSSHD, SSHDError, ssh_children

LIMIT = 20         # seconds any one wait may take
STORM = 200        # calls started, then cancelled together
LIBVER = remote.PROCEDURES[remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION]
TRANSPORTS = ["unix", "tcp", "tls", "ssh-netcat", "ssh-helper"]
SSH_TRANSPORTS = {"ssh-netcat", "ssh-helper"}


# pytest-asyncio 1.x still honours an overridden policy fixture (it asks for a hook instead)
pytestmark = pytest.mark.filterwarnings("ignore:Overriding the \"event_loop_policy\" fixture")


# -- the components ------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every contract holds on the standard loop and on uvloop (``aiovirt[speed]``)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
        return uvloop.EventLoopPolicy()   # type: ignore[no-any-return]
    return asyncio.DefaultEventLoopPolicy()


@pytest.fixture(scope="module")
def contract_pkipath(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    """libvirtd's TLS settings (a certificate for localhost) and the client's pkipath."""
    root = tmp_path_factory.mktemp("contract-pki")
    ca = CertificateAuthority.create(root / "ca")
    server = ca.issue(root / "server", "localhost", hosts=["localhost", "127.0.0.1"],
                      server=True)
    client = ca.issue(root / "client", "client")
    return ca.server_config(server), ca.client_dir(root / "pki", client)


@pytest.fixture(scope="module")
def contract_daemon(contract_pkipath, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[PrivateDaemon]:
    """The module's libvirtd: UNIX, TCP and TLS."""
    tls_config, _ = contract_pkipath
    with PrivateDaemon(tmp_path_factory.mktemp("contractd"),
                       extra_config={"listen_tls": 1, **tls_config}) as running:
        yield running


@pytest.fixture(scope="module")
def contract_sshd(contract_daemon, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[PrivateSSHD]:
    """The module's sshd; as root its sessions see the daemon's sockets at /run/libvirt."""
    binds = {str(contract_daemon.workdir): "/run/libvirt"} if os.geteuid() == 0 else None
    try:
        with PrivateSSHD(tmp_path_factory.mktemp("contract-sshd"), binds=binds) as server:
            yield server
    except SSHDError as exc:
        pytest.skip(f"no private sshd here: {exc}")


@pytest.fixture(params=TRANSPORTS)
def endpoint(request: pytest.FixtureRequest, contract_daemon, contract_pkipath
             ) -> tuple[str, str]:
    """(transport, URI of the daemon's shared test-driver host over it)."""
    transport: str = request.param
    daemon: PrivateDaemon = contract_daemon
    if transport in ("unix", "tcp"):
        return transport, daemon.uri(transport=transport)
    if transport == "tls":
        return transport, daemon.uri(transport="tls") + f"?pkipath={contract_pkipath[1]}"
    if transport == "ssh-helper" and os.geteuid() != 0:
        pytest.skip("virt-ssh-helper needs the daemon at /run/libvirt: a mount namespace, "
                    "so root")
    sshd: PrivateSSHD = request.getfixturevalue("contract_sshd")
    if transport == "ssh-netcat":
        return transport, sshd.uri(socket=daemon.socket_path, proxy="netcat")
    return transport, sshd.uri(proxy="native")


# -- helpers -------------------------------------------------------------------------------------
def domain_xml(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>8</memory>"
            "<os><type>hvm</type></os></domain>")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def wait_until(predicate: Callable[[], Any], what: str, limit: float = 10) -> None:
    """Poll (async-aware) until ``predicate()`` holds; fail naming ``what`` after ``limit``."""
    try:
        with anyio.fail_after(limit):
            while not await _holds(predicate):
                await anyio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"timed out after {limit} s waiting until {what}")


async def _holds(predicate: Callable[[], Any]) -> bool:
    result = predicate()
    if hasattr(result, "__await__"):
        result = await result
    return bool(result)


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


async def daemon_clients(daemon: PrivateDaemon) -> int:
    """How many clients the daemon's libvirtd server has now (its admin socket)."""
    settings = await server_settings(str(daemon.workdir / "libvirt-admin-sock"), timeout=5)
    return settings.clients


async def every_socket_answers(conn: aiovirt.Connection) -> None:
    """On each open socket, three times its slots of calls at once all return, and every
    slot is free again afterwards."""
    with anyio.fail_after(LIMIT):
        for channel in conn.channels:
            assert channel.closed is None, f"{channel.name} socket closed: {channel.closed}"
            results: list[int] = []

            async def one(channel=channel, results=results) -> None:
                results.append((await channel.call(LIBVER)).lib_ver)

            async with anyio.create_task_group() as group:
                for _ in range(channel.max_in_flight * 3):
                    group.start_soon(one)
            assert results == [9000000] * (channel.max_in_flight * 3)
            assert (channel.in_flight, channel.load) == (0, 0), channel.name


# -- the contract --------------------------------------------------------------------------------
async def test_calls(endpoint):
    _, uri = endpoint
    async with aiovirt.connect(uri, connect_timeout=LIMIT) as conn:
        with anyio.fail_after(LIMIT):
            assert await conn.get_lib_version() == 9000000
            hostname = await conn.hostname()
            assert isinstance(hostname, str) and hostname
            assert "test" in [d.name for d in await conn.list_domains()]
            assert (await conn.lookup_domain(name="test")).name == "test"


async def test_domain_events(endpoint):
    """Defining and undefining a domain brings DEFINED then UNDEFINED for it."""
    _, uri = endpoint
    name = unique("contract-ev")
    async with aiovirt.connect(uri, connect_timeout=LIMIT) as conn:
        async with conn.domain_events() as events:
            with anyio.fail_after(LIMIT):
                dom = await conn.define_xml(domain_xml(name))
                await dom.undefine()
                seen: list[aiovirt.DomainEventType] = []
                async for event in events:
                    if event.domain.name == name:
                        seen.append(event.event)
                        if event.event == aiovirt.DomainEventType.UNDEFINED:
                            break
        assert seen == [aiovirt.DomainEventType.DEFINED, aiovirt.DomainEventType.UNDEFINED]


async def test_slow_calls_open_lanes_and_quick_calls_still_work(endpoint):
    _, uri = endpoint
    name = unique("contract-lane")
    assert {"domain_create", "domain_destroy"} <= aiovirt.SLOW_PROCEDURES
    async with aiovirt.connect(uri, connect_timeout=LIMIT, lanes=2) as conn:
        with anyio.fail_after(LIMIT):
            assert len(conn.channels) == 1
            dom = await conn.define_xml(domain_xml(name))
            try:
                await dom.start()                  # slow: on a lane
                assert len(conn.channels) > 1
                assert conn.channels[0].name == "main"
                assert all(c.closed is None for c in conn.channels)
                # quick calls, on main, while the guest runs
                assert await conn.get_lib_version() == 9000000
                assert name in [d.name for d in await conn.list_domains()]
                assert (await dom.state())[0] == aiovirt.DomainState.RUNNING
                await dom.destroy()                # slow: on a lane
                assert (await dom.state())[0] == aiovirt.DomainState.SHUTOFF
            finally:
                if await dom.is_active():
                    await dom.destroy()
                await dom.undefine()
            assert 1 < len(conn.channels) <= 3
            await every_socket_answers(conn)


async def test_cancelled_storm_leaves_the_connection_usable(endpoint):
    """200 calls at once (spilling onto lanes), cancelled together at a random point: once
    after a random number of them returned, once by a tiny random timeout.  Afterwards every
    socket is open and answers, and no slot stays taken."""
    transport, uri = endpoint
    seed = random.randrange(2**32)
    print(f"{transport}: storm seed {seed}")      # shown if the test fails
    rng = random.Random(seed)
    async with aiovirt.connect(uri, connect_timeout=LIMIT) as conn:
        returned = 0
        cut_at = rng.randrange(0, STORM * 3 // 4)
        reached = anyio.Event()

        async def one() -> None:
            nonlocal returned
            assert await conn.get_lib_version() == 9000000
            returned += 1
            if returned >= cut_at:
                reached.set()

        with anyio.fail_after(LIMIT):
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    for _ in range(STORM):
                        group.start_soon(one)
                    if cut_at:
                        await reached.wait()
                    else:
                        await anyio.lowlevel.checkpoint()
                    scope.cancel()
        assert scope.cancelled_caught
        assert returned < STORM, f"nothing was cancelled (seed {seed}, cut at {cut_at})"

        with anyio.fail_after(LIMIT):
            with anyio.move_on_after(rng.uniform(0.0001, 0.02)):
                async with anyio.create_task_group() as group:
                    for _ in range(STORM):
                        group.start_soon(conn.get_lib_version)

        main = conn.channels[0]
        assert main.name == "main" and main.closed is None, (seed, main.closed)
        assert conn.is_alive
        await every_socket_answers(conn)
        with anyio.fail_after(LIMIT):
            assert await conn.get_lib_version() == 9000000
            assert "test" in [d.name for d in await conn.list_domains()]


async def test_close_leaves_nothing_behind(endpoint, contract_daemon):
    """After close: every socket closed, our descriptors as before, the daemon without a
    client of ours, and (ssh) every ssh child gone and reaped by us."""
    transport, uri = endpoint
    async with aiovirt.connect(uri, connect_timeout=LIMIT) as warm:   # lazy set-up
        await warm.get_lib_version()
    await wait_until(lambda: _no_clients(contract_daemon), "the daemon has no clients")
    fds_before, ssh_before = open_fds(), ssh_children()

    conn = await aiovirt.connect(uri, connect_timeout=LIMIT, lanes=2)
    try:
        with anyio.fail_after(LIMIT):
            await conn.call(LIBVER, lane=True)              # open a lane too
            assert len(conn.channels) == 2
            assert await daemon_clients(contract_daemon) == 2
        children = ssh_children() - ssh_before
        assert len(children) == (2 if transport in SSH_TRANSPORTS else 0)   # one a socket
        channels = conn.channels
    finally:
        with anyio.fail_after(5):
            await conn.close()
    assert all(c.closed is not None for c in channels)
    assert conn.channels == [] or all(c.closed is not None for c in conn.channels)
    with pytest.raises(aiovirt.ConnectionClosed):
        await conn.get_lib_version()

    await wait_until(lambda: all(not Path(f"/proc/{pid}").exists() for pid in children),
                     "the ssh children are gone")
    for pid in children:
        with pytest.raises(ChildProcessError):      # reaped by us, not left for anyone else
            os.waitpid(pid, os.WNOHANG)
    await wait_until(lambda: open_fds() <= fds_before,
                     "our file descriptors are back to what they were")
    await wait_until(lambda: _no_clients(contract_daemon), "the daemon has no clients")


async def _no_clients(daemon: PrivateDaemon) -> bool:
    return await daemon_clients(daemon) == 0
