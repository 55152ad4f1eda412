"""The ssh and ext transports against a real sshd and libvirtd on loopback, and the command
line they build checked against libvirt's own expected strings."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

import aiovirt
from aiovirt.client.ssh import remote_command, shell_quote, ssh_command
from aiovirt.client.uri import parse_uri
from aiovirt.errors import ConnectionClosed, ConnectionFailed, InvalidURI
from aiovirt.testing.sshd import PrivateSSHD, SSHDError, keygen, ssh_children

LIMIT = 20   # seconds any connection attempt here may take


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    try:
        with PrivateSSHD(tmp_path_factory.mktemp("sshd")) as server:
            yield server
    except SSHDError as exc:
        pytest.skip(f"no private sshd here: {exc}")


@pytest.fixture(scope="module")
def helper_sshd(tmp_path_factory, daemon):
    """An sshd whose sessions see the private daemon's sockets at /run/libvirt, where
    virt-ssh-helper looks (a private mount namespace: root only)."""
    if os.geteuid() != 0:
        pytest.skip("bind-mounting over /run/libvirt in a mount namespace needs root")
    with PrivateSSHD(tmp_path_factory.mktemp("sshd-helper"),
                     binds={str(daemon.workdir): "/run/libvirt"}) as server:
        yield server


def gone(pid: int) -> bool:
    """The process no longer exists, not even as a zombie waiting to be reaped."""
    return not Path(f"/proc/{pid}").exists()


async def wait_gone(pids: set[int], limit: float = 5.0) -> None:
    with anyio.fail_after(limit):
        while not all(gone(pid) for pid in pids):
            await anyio.sleep(0.01)


async def exercise(uri: str, **options) -> None:
    async with aiovirt.connect(uri, connect_timeout=LIMIT, **options) as conn:
        assert await conn.get_lib_version() == 9000000
        assert isinstance(await conn.hostname(), str)
        assert "test" in [d.name for d in await conn.list_domains()]


# -- real tunnels ---------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [True, False], ids=["asyncio", "anyio-streams"])
async def test_netcat_proxy_makes_real_calls(sshd, daemon, native):
    before = ssh_children()
    await exercise(sshd.uri(socket=daemon.socket_path, proxy="netcat"),
                   native_transport=native)
    await wait_gone(ssh_children() - before)


async def test_socket_alone_means_netcat(sshd, daemon):
    await exercise(sshd.uri(socket=daemon.socket_path))


@pytest.mark.parametrize("transport", ["libssh", "libssh2"])
async def test_libssh_uris_use_the_system_ssh(sshd, daemon, transport):
    await exercise(sshd.uri(transport=transport, socket=daemon.socket_path,
                            known_hosts_verify="normal", sshauth="agent,privkey"))


@pytest.mark.parametrize("proxy", ["native", "auto", None])
async def test_virt_ssh_helper(helper_sshd, proxy):
    params = {"proxy": proxy} if proxy else {}
    await exercise(helper_sshd.uri(**params))


@pytest.mark.parametrize("proxy", ["netcat", "native"])
async def test_a_read_only_connection_reaches_the_read_only_socket(helper_sshd, proxy):
    """connect(readonly=True) through ssh goes to libvirt-sock-ro (nc) or asks
    virt-ssh-helper for it (-r), as libvirt does: the daemon itself then refuses writes."""
    async with aiovirt.connect(helper_sshd.uri(proxy=proxy), readonly=True,
                               connect_timeout=LIMIT) as conn:
        assert conn.uri.readonly
        assert await conn.get_lib_version() == 9000000
        with pytest.raises(aiovirt.LibvirtError, match="read only|read-only"):
            await conn.define_xml("<domain type='test'><name>ro</name>"
                                  "<memory>8192</memory><os><type>hvm</type></os></domain>")


def test_read_only_command_lines():
    uri = parse_uri("qemu+ssh://root@h/system?proxy=netcat")
    assert "libvirt-sock-ro" in ssh_command(uri, readonly=True)[-1]
    assert "libvirt-sock-ro" not in ssh_command(uri)[-1]


async def test_unknown_host_key_fails_with_sshs_words(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    uri = sshd.uri(socket="/nonexistent", known_hosts=str(empty), known_hosts_verify="normal")
    with pytest.raises(ConnectionFailed, match="Host key verification failed"):
        await aiovirt.connect(uri, connect_timeout=LIMIT)
    assert empty.read_text() == ""


async def test_unknown_host_key_accepted_with_auto(sshd, daemon, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    await exercise(sshd.uri(socket=daemon.socket_path, known_hosts=str(known),
                            known_hosts_verify="auto"))
    assert "ssh-ed25519" in known.read_text()    # learnt (hashed if ssh_config says so)


async def test_wrong_key_is_permission_denied(sshd, daemon, tmp_path):
    before = ssh_children()
    key = keygen(tmp_path / "stranger")
    uri = sshd.uri(socket=daemon.socket_path, keyfile=str(key))
    with pytest.raises(ConnectionFailed, match="Permission denied") as caught:
        await aiovirt.connect(uri, connect_timeout=LIMIT)
    assert "ssh to 127.0.0.1 failed" in str(caught.value)
    await wait_gone(ssh_children() - before)     # reaped on failure too


async def test_missing_remote_netcat_is_a_clear_error(sshd, daemon):
    uri = sshd.uri(socket=daemon.socket_path, netcat="/nonexistent/nc")
    with pytest.raises(ConnectionFailed, match=r"/nonexistent/nc.*not found"):
        await aiovirt.connect(uri, connect_timeout=LIMIT)


async def test_missing_remote_socket_is_a_clear_error(sshd):
    uri = sshd.uri(socket="/nonexistent/libvirt-sock")
    with pytest.raises(ConnectionFailed, match="/nonexistent/libvirt-sock"):
        await aiovirt.connect(uri, connect_timeout=LIMIT)


async def test_missing_local_ssh_binary(sshd, daemon):
    uri = sshd.uri(socket=daemon.socket_path, command="/nonexistent/ssh")
    with pytest.raises(ConnectionFailed, match="cannot run '/nonexistent/ssh'"):
        await aiovirt.connect(uri, connect_timeout=LIMIT)


async def test_close_kills_and_reaps_the_ssh_child(sshd, daemon):
    before = ssh_children()
    conn = await aiovirt.connect(sshd.uri(socket=daemon.socket_path), connect_timeout=LIMIT,
                                 lanes=0)
    try:
        assert await conn.get_lib_version() == 9000000
        children = ssh_children() - before
        assert len(children) == 1
    finally:
        await conn.close()
    await wait_gone(children)
    [pid] = children
    with pytest.raises(ChildProcessError):   # reaped by us, not left for anyone else
        os.waitpid(pid, os.WNOHANG)


async def test_a_dead_child_means_connection_closed_not_a_hang(sshd, daemon):
    before = ssh_children()
    async with aiovirt.connect(sshd.uri(socket=daemon.socket_path), connect_timeout=LIMIT,
                               lanes=0) as conn:
        assert await conn.get_lib_version() == 9000000
        [pid] = ssh_children() - before
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(5):
            with pytest.raises(ConnectionClosed):
                while True:      # the call made before the loss is seen may still be answered
                    await conn.get_lib_version()
                    await anyio.sleep(0.01)
    await wait_gone({pid})


# -- ext -------------------------------------------------------------------------------------------
def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize("native", [True, False], ids=["asyncio", "anyio-streams"])
async def test_ext_runs_the_command(daemon, tmp_path, native):
    command = script(tmp_path / "tunnel", f"exec nc -U {daemon.socket_path}")
    await exercise(f"test+ext:///default?command={command}", native_transport=native)


async def test_ext_failure_carries_the_commands_stderr(tmp_path):
    command = script(tmp_path / "broken", "echo 'no way through' >&2; exit 3")
    with pytest.raises(ConnectionFailed, match="no way through"):
        await aiovirt.connect(f"test+ext:///default?command={command}", connect_timeout=LIMIT)


@pytest.mark.parametrize("body, words", [
    # was "packet length 1466264675 exceeds the limit of 33554432 bytes"
    ("echo 'Welcome to host'; exec sleep 5", "the far side printed 'Welcome to host\\n' "
                                            "instead of speaking libvirt's protocol"),
    # was "[Errno 104] Connection reset by peer" (or "Broken pipe")
    ("exit 0", "failed: it exited with status 0"),
])
async def test_a_tunnel_that_does_not_speak_the_protocol_says_how(tmp_path, body, words):
    command = script(tmp_path / "tunnel", body)
    with pytest.raises(ConnectionFailed, match=re.escape(words)):
        await aiovirt.connect(f"test+ext:///default?command={command}", connect_timeout=LIMIT)


async def test_a_tunnels_stderr_is_kept_to_its_tail(tmp_path):
    # it went to a temporary file that grew with whatever the far side said (200 MB held)
    command = script(tmp_path / "chatty", "head -c 20000000 /dev/zero | tr '\\0' x >&2; "
                     "echo >&2; echo 'the last word' >&2; exit 3")
    with pytest.raises(ConnectionFailed, match="the last word") as info:
        await aiovirt.connect(f"test+ext:///default?command={command}", connect_timeout=LIMIT)
    assert len(str(info.value)) < 4096 + 200
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:   # (listdir's own descriptor, gone)
            pass
    assert not [path for path in held if "aiovirt-tunnel" in path], held


def test_a_child_that_ignores_sigterm_is_killed_at_exit(tmp_path):
    # the reaper is a daemon thread: a child outliving SIGTERM outlived the program
    pidfile = tmp_path / "pid"
    command = script(tmp_path / "stubborn", f"trap '' TERM; echo $$ > {pidfile}; "
                     "exec sleep 60")
    code = (f"import asyncio, aiovirt\n"
            f"async def main():\n"
            f"    try:\n"
            f"        await aiovirt.connect('test+ext:///default?command={command}',\n"
            f"                              connect_timeout=0.5)\n"
            f"    except aiovirt.ConnectionFailed:\n"
            f"        pass\n"
            f"asyncio.run(main())\n")
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{pid}/stat") as stat_file:   # a zombie is gone in all but name
            if stat_file.read().split(") ")[1].startswith("Z"):
                return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"the ext command {pid} outlived the program")


async def test_ext_needs_a_command():
    with pytest.raises(InvalidURI, match="command="):
        await aiovirt.connect("test+ext:///default", connect_timeout=LIMIT)


# -- the command line, against libvirt's expectations ---------------------------------------------
# libvirt's tests/virnetsockettest.c runs virNetSocketNewConnectSSH with a fake ssh that echoes
# its arguments; these are its expected lines (SSH tests 1, 2, 3, 6 and 7).
def _nc(binary: str, socket: str = "/tmp/socket") -> str:
    return (f"if {binary} -q 2>&1 | grep \"requires an argument\" >/dev/null 2>&1; then "
            f"ARG=-q0;else ARG=;fi;{binary} $ARG -U {socket}")


LIBVIRT_LINES = [
    ("qemu+ssh://somehost/system?socket=/tmp/socket&netcat=nc",
     f"-T -e none -- somehost sh -c '{_nc(repr('nc'))}'"),
    ("qemu+ssh://fred@somehost:9000/system?socket=/tmp/socket&netcat=netcat&no_tty=1",
     f"-p 9000 -l fred -T -e none -o BatchMode=yes -- somehost sh -c '{_nc(repr('netcat'))}'"),
    ("qemu+ssh://fred@somehost:9000/system?socket=/tmp/socket&netcat=netcat&no_verify=1",
     "-p 9000 -l fred -T -e none -o StrictHostKeyChecking=no -- somehost "
     f"sh -c '{_nc(repr('netcat'))}'"),
    ("qemu+ssh://example.com/system?socket=/tmp/socket&netcat=nc"
     "&keyfile=/root/.ssh/example_key&no_verify=1",
     "-i /root/.ssh/example_key -T -e none -o StrictHostKeyChecking=no -- example.com "
     f"sh -c '{_nc(repr('nc'))}'"),
    ("qemu+ssh://somehost/system?socket=/tmp/socket&netcat=/tmp/fo%20o/nc",
     "-T -e none -- somehost sh -c '" + _nc("'''\\''/tmp/fo o/nc'\\''''") + "'"),
]


@pytest.mark.parametrize("uri, expected", LIBVIRT_LINES)
def test_command_line_matches_libvirt(uri, expected):
    argv = ssh_command(parse_uri(uri))
    assert argv[0] == "ssh"
    assert " ".join(argv[1:]) == expected


def test_auto_and_native_remote_commands():
    nc = _nc("'nc'", "/var/run/libvirt/libvirt-sock")
    assert remote_command("auto", None, "/var/run/libvirt/libvirt-sock", "qemu:///system") == (
        "sh -c 'which virt-ssh-helper 1>/dev/null 2>&1; if test $? = 0; then "
        f"    virt-ssh-helper 'qemu:///system'; else    {nc}; fi'")
    assert remote_command("native", None, "/unused", "qemu:///system", readonly=True) == \
        "sh -c 'virt-ssh-helper -r 'qemu:///system''"
    # netcat= turns auto into netcat; a URI with shell characters is quoted twice
    assert remote_command("auto", "nc", "/s", "x") == f"sh -c '{_nc(repr('nc'), '/s')}'"
    assert remote_command("native", None, "/s", "test:///default?a=b c") == \
        "sh -c 'virt-ssh-helper '''\\''test:///default?a=b c'\\'''''"


def test_default_proxy_and_socket_as_root():
    if os.geteuid() != 0:
        pytest.skip("libvirt picks the session daemon when not root")
    [*_, host, command] = ssh_command(parse_uri("qemu+ssh://root@h/system"))
    assert host == "h"
    assert command.startswith("sh -c 'which virt-ssh-helper")
    assert "virt-ssh-helper 'qemu:///system'" in command
    assert command.endswith("-U /var/run/libvirt/libvirt-sock; fi'")


def test_shell_quote_is_libvirts():
    assert shell_quote("") == "''"
    assert shell_quote("plain/path-1.0") == "plain/path-1.0"
    assert shell_quote("a b") == "'a b'"
    assert shell_quote("it's") == "'it'\\''s'"


def test_libssh_parameters_map_to_openssh_options():
    argv = ssh_command(parse_uri(
        "qemu+libssh://h/system?known_hosts=/k&known_hosts_verify=auto"
        "&sshauth=agent,privkey,password,keyboard-interactive&command=/opt/ssh"))
    assert argv[0] == "/opt/ssh"
    options = [argv[i + 1] for i, part in enumerate(argv) if part == "-o"]
    assert options == ["StrictHostKeyChecking=accept-new", "UserKnownHostsFile=/k",
                       "PreferredAuthentications=publickey,password,keyboard-interactive"]
    assert "StrictHostKeyChecking=yes" in ssh_command(parse_uri(
        "qemu+ssh://h/system?known_hosts_verify=normal"))
    assert "StrictHostKeyChecking=no" in ssh_command(parse_uri(
        "qemu+ssh://h/system?known_hosts_verify=ignore"))


def test_boolean_parameters_read_as_libvirt_reads_them():
    # an integer in strtol's syntax, true when not 0
    def batch(value: str) -> bool:
        return "BatchMode=yes" in ssh_command(parse_uri(f"qemu+ssh://h/system?no_tty={value}"))
    assert batch("1") and batch("+2") and batch(" 7")
    assert not batch("0") and not batch("-0")


@pytest.mark.parametrize("query, message", [
    ("proxy=carrier-pigeon", "proxy="),
    ("proxy=native&netcat=nc", "netcat="),
    ("known_hosts_verify=maybe", "known_hosts_verify="),
    ("sshauth=telepathy", "sshauth"),
    ("mode=direct", "mode=direct"),
    ("no_tty=yes", "no_tty='yes' is not an integer"),
    ("no_verify=on", "no_verify='on' is not an integer"),   # as in the tls transport
])
def test_bad_parameters_are_invalid_uris(query, message):
    with pytest.raises(InvalidURI, match=message):
        ssh_command(parse_uri(f"qemu+ssh://h/system?{query}"))


def test_under_trio(sshd, daemon, tmp_path):
    trio = pytest.importorskip("trio")

    async def main() -> str:
        await exercise(sshd.uri(socket=daemon.socket_path))
        with pytest.raises(ConnectionFailed) as caught:
            await exercise(sshd.uri(socket=daemon.socket_path,
                                    keyfile=str(keygen(tmp_path / "stranger"))))
        return str(caught.value)

    assert "Permission denied" in trio.run(main)
