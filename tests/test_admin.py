"""The admin client and the daemon's max_client_requests, against real private libvirtds:
server settings over the admin socket, the config the daemon runs with, and bounded waits."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest
import trio

from aiovirt.client.admin import AdminClient, admin_socket_for, server_settings
from aiovirt.client.config import ConfSyntaxError, conf_uint, parse_conf
from aiovirt.client.limits import _config_option, config_path, read_max_client_requests
from aiovirt.client.uri import parse_uri
from aiovirt.errors import CallTimeout, ConnectionFailed, LibvirtError
from aiovirt.testing.daemon import PrivateDaemon

SETTINGS = {"max_clients": 42, "max_anonymous_clients": 9, "min_workers": 2,
            "max_workers": 7, "prio_workers": 3}


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory):
    """Two daemons: max_client_requests 3 (with SETTINGS) and 11."""
    with PrivateDaemon(tmp_path_factory.mktemp("adm3"), max_client_requests=3,
                       extra_config=SETTINGS) as three, \
            PrivateDaemon(tmp_path_factory.mktemp("adm11"), max_client_requests=11) as eleven:
        yield three, eleven


def admin_path(daemon: PrivateDaemon) -> str:
    path = admin_socket_for(parse_uri(daemon.uri()))
    assert path == str(daemon.workdir / "libvirt-admin-sock")
    return path


async def test_server_settings_are_the_configured_ones(daemons):
    three, eleven = daemons
    settings = await server_settings(admin_path(three))
    assert settings.server == "libvirtd"
    assert (settings.max_clients, settings.max_unauth_clients) == (42, 9)
    assert (settings.min_workers, settings.max_workers, settings.prio_workers) == (2, 7, 3)
    assert settings.workers >= 2 and settings.job_queue_depth == 0
    other = await server_settings(admin_path(eleven))
    assert (other.max_clients, other.min_workers, other.max_workers) == (5000, 5, 20)


def test_server_settings_under_trio(daemons):
    settings = trio.run(server_settings, admin_path(daemons[0]))
    assert settings.max_clients == 42


async def test_admin_rpc_and_errors(daemons):
    async with await AdminClient.connect(admin_path(daemons[0])) as client:
        assert (await client.rpc.connect_get_lib_version()).libVer == 9000000
        servers = await client.rpc.connect_list_servers(16)
        assert sorted(s.name for s in servers.servers) == ["admin", "libvirtd"]
        with pytest.raises(LibvirtError, match="nosuch"):
            await client.server_settings("nosuch")
        assert (await client.server_settings("admin")).server == "admin"   # still usable


async def test_missing_admin_socket_is_a_clear_error(tmp_path):
    start = time.monotonic()
    with pytest.raises(ConnectionFailed, match="admin socket .*nowhere"):
        await server_settings(str(tmp_path / "nowhere"))
    assert time.monotonic() - start < 1


async def test_a_silent_admin_socket_is_waited_on_only_so_long(tmp_path):
    with socket.socket(socket.AF_UNIX) as listener:   # listens, never accepts nor answers
        listener.bind(str(tmp_path / "silent"))
        listener.listen()
        start = time.monotonic()
        with pytest.raises(CallTimeout, match="no answer within 0.5 s"):
            await server_settings(str(tmp_path / "silent"), timeout=0.5)
        assert time.monotonic() - start < 2


def test_admin_socket_for():
    assert admin_socket_for(parse_uri("qemu+unix:///system?socket=/r/virtqemud-sock")) == \
        "/r/virtqemud-admin-sock"
    assert admin_socket_for(parse_uri("qemu:///system?socket=/r/libvirt-sock-ro")) == \
        "/r/libvirt-admin-sock"
    assert admin_socket_for(parse_uri("test+unix:///default?socket=/r/custom")) is None
    assert admin_socket_for(parse_uri("qemu+tcp://h/system")) is None
    assert admin_socket_for(parse_uri("qemu+ssh://h/system?socket=/r/libvirt-sock")) is None


def test_max_client_requests_of_the_daemon_at_the_other_end(daemons):
    for daemon, expected in zip(daemons, (3, 11)):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(daemon.socket_path)
            assert read_max_client_requests(sock) == expected
        assert config_path(daemon.pid) == (f"/proc/{daemon.pid}/root{daemon.workdir}"
                                           "/libvirtd.conf", False)


async def test_max_client_requests_from_an_asyncio_transport(daemons):
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_unix_connection(asyncio.Protocol, daemons[1].socket_path)
    try:   # asyncio hands out a TransportSocket: the same accessors serve
        assert read_max_client_requests(transport.get_extra_info("socket")) == 11
    finally:
        transport.close()


def test_not_known_over_tcp_nor_from_other_processes(daemons):
    with socket.create_connection(("127.0.0.1", daemons[0].tcp_port), timeout=5) as sock:
        assert read_max_client_requests(sock) is None
    left, right = socket.socketpair()   # the peer is this Python process: not a daemon
    with left, right:
        assert read_max_client_requests(left) is None


def test_a_config_edited_after_start_is_not_trusted(daemons):
    config = daemons[1].workdir / "libvirtd.conf"
    before = config.stat()
    try:
        os.utime(config, (before.st_atime, time.time() + 5))
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(daemons[1].socket_path)
            assert read_max_client_requests(sock) is None
    finally:
        os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_getopt_reading_of_the_config_option():
    assert _config_option(["--listen", "-f", "/a"]) == "/a"
    assert _config_option(["-lf/b", "-p", "/pid"]) == "/b"
    assert _config_option(["--config=/c"]) == "/c"
    assert _config_option(["--conf", "/d"]) == "/d"          # a unique prefix, as getopt_long
    assert _config_option(["-f", "/e", "--config", "/g"]) == "/g"   # the last one counts
    assert _config_option(["-p", "-f", "--", "-f", "/h"]) is None   # "-f" is -p's argument
    assert _config_option(["--listen", "--verbose"]) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("", 5),
    ("max_client_requests = 7 # comment\nmax_client_requests = 9\n", 7),   # the first counts
    ("# max_client_requests = 1\nlisten_tls = 0; max_client_requests=+4", 4),
    ('x = ["a",\n  "b" ]\ny = """max_client_requests = 1\n"""\nmax_client_requests = 8', 8),
    ("max_client_requests_x = 1\n", 5),
])
def test_conf_reading(text, expected):
    assert conf_uint(parse_conf(text), "max_client_requests", 5) == expected


@pytest.mark.parametrize("text", [
    "max_client_requests = -1", 'max_client_requests = "3"', "max_client_requests = 4294967296",
    "max_client_requests 3", "max_client_requests = 3 4", 'a = "open',
])
def test_conf_values_the_daemon_would_reject(text):
    with pytest.raises(ConfSyntaxError):
        conf_uint(parse_conf(text), "max_client_requests", 5)


async def test_connect_sizes_its_in_flight_cap_to_the_daemons_setting(tmp_path):
    """With no ``max_in_flight``, a local connection takes the daemon's own
    max_client_requests (here 11, not the default 5); an explicit value wins; over TCP the
    setting cannot be read: libvirt's default.  Either way quick calls are written ahead up
    to the pipeline depth."""
    from aiovirt.client.connection import connect
    with PrivateDaemon(tmp_path / "d", max_client_requests=11) as daemon:
        async with connect(daemon.uri()) as conn:
            assert conn.max_in_flight == 11
            assert all(c.max_in_flight == 11 for c in conn.channels)
            results = await asyncio.gather(*(conn.rpc.connect_get_lib_version()
                                             for _ in range(40)))
            assert len(results) == 40
        async with connect(daemon.uri(), max_in_flight=3) as conn:
            assert conn.max_in_flight == 3
        async with connect(daemon.uri(transport="tcp")) as conn:
            assert conn.max_in_flight == 5
            assert conn.channels[0].protocol.pipeline_depth == 32
            results = await asyncio.gather(*(conn.rpc.connect_get_lib_version()
                                             for _ in range(40)))
            assert len(results) == 40


@pytest.mark.parametrize("timeout", [float("nan"), -1, "5"])
async def test_admin_timeouts_are_checked(timeout):
    # nan raised anyio's "deadline must not be NaN"; -1 waited "within -1 s"
    from aiovirt.client.admin import server_settings
    with pytest.raises(ValueError, match="timeout must be a number more than 0 seconds"):
        await server_settings("/nonexistent/admin-sock", timeout=timeout)
