"""libvirt's client configuration: the conf and key-file parsers, where the files are, the
default URI and aliases, and ``connect()`` using them; ``connect_timeout``."""

from __future__ import annotations

import os
import socket
import time

import anyio
import pytest

import aiovirt
from aiovirt.client import config
from aiovirt.client.config import (AuthConf, ConfSyntaxError, LibvirtConf, auth_conf_candidates,
                                   find_auth_conf, libvirt_conf_path, load_libvirt_conf,
                                   parse_conf, parse_keyfile, resolve_uri)
from aiovirt.client.connection import connect as rpc_connect
from aiovirt.errors import ConnectionFailed, InvalidURI


# -- libvirt's conf syntax ------------------------------------------------------------------
def test_parse_conf_values():
    text = """# a comment
uri_default = "qemu:///system"   # trailing comment
single='it''s'
count = 42 ; negative = -7
plus = +3
multi = \"\"\"two
lines\"\"\"
uri_aliases = [
  "hail=qemu+ssh://root@hail.example.com/system",
  "sleet=qemu:///session",
]
empty = []
nested = [ 1, [ "a" ] ]
"""
    with pytest.raises(ConfSyntaxError):     # 'it''s' is two strings side by side
        parse_conf(text)
    values = parse_conf(text.replace("single='it''s'", "single='its'"))
    assert values == {
        "uri_default": "qemu:///system", "single": "its", "count": 42, "negative": -7,
        "plus": 3, "multi": "two\nlines",
        "uri_aliases": ["hail=qemu+ssh://root@hail.example.com/system",
                        "sleet=qemu:///session"],
        "empty": [], "nested": [1, ["a"]],
    }


@pytest.mark.parametrize("text, problem", [
    ('a = "open', ":1: unterminated string"),
    ("\n\na = ", ":3: expecting a value"),
    ("a b", ":1: expecting '='"),
    ("1a = 2", ":1: expecting a name"),
    ('a = ["x" "y"]', ":1: expecting ','"),
    ('a = ["x",\n', ":2: list is not closed"),
    ('a = "x" b = 1', ":1: expecting a new line or ';'"),
    ('a = """x', ':1: unterminated """ string'),
    ("a = " + "9" * 5000, ":1: number 9{24}... is too long"),   # was int()'s ValueError
    ("a = " + "[" * 5000, ":1: lists nested more than 64 deep"),   # was RecursionError
])
def test_parse_conf_errors_name_the_line(text, problem):
    with pytest.raises(ConfSyntaxError, match=f"^f.conf{problem}"):
        parse_conf(text, "f.conf")


def test_the_installed_libvirt_conf_parses():
    if not os.path.exists("/etc/libvirt/libvirt.conf"):
        pytest.skip("no /etc/libvirt/libvirt.conf here")
    with open("/etc/libvirt/libvirt.conf") as file:
        parse_conf(file.read())


# -- GLib key files and auth.conf -----------------------------------------------------------
AUTH_CONF = r"""# credentials for the lab
[credentials-lab]
authname = alice
password=with\sspace\\
username[fr]=ignored

[credentials-other]
username=bob
password=pw2

[auth-libvirt-lab.example.com]
credentials=lab

[auth-libvirt-default]
credentials=other

[auth-libvirt-broken]
credentials=nowhere

[auth-libvirt-empty]
"""


def test_auth_conf_lookup():
    conf = AuthConf("auth.conf", parse_keyfile(AUTH_CONF, "auth.conf"))
    assert conf.groups["credentials-lab"] == {"authname": "alice", "password": "with space\\"}
    assert conf.lookup("libvirt", "lab.example.com", "authname") == "alice"
    assert conf.lookup("libvirt", "lab.example.com", "username") is None
    assert conf.lookup("libvirt", "elsewhere", "password") == "pw2"      # [auth-...-default]
    assert conf.lookup("libvirt", None, "username") == "bob"             # localhost
    assert conf.lookup("ssh", "lab.example.com", "password") is None     # other service
    with pytest.raises(ConfSyntaxError, match="credentials-nowhere"):
        conf.lookup("libvirt", "broken", "password")
    with pytest.raises(ConfSyntaxError, match=r"\[auth-libvirt-empty\] has no 'credentials'"):
        conf.lookup("libvirt", "empty", "password")


@pytest.mark.parametrize("text, problem", [
    ("key=value", "before any"),
    ("[group\nx=1", "malformed group"),
    ("[g]\njust words", "expecting 'key=value'"),
    ("[g]\nx=bad\\q", "invalid escape"),
])
def test_keyfile_errors(text, problem):
    with pytest.raises(ConfSyntaxError, match=problem):
        parse_keyfile(text, "a.conf")


def test_where_auth_conf_is_looked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "SYSCONFDIR", str(tmp_path / "etc"))
    env = {"HOME": str(tmp_path / "home")}
    assert auth_conf_candidates(None, env) == [
        (str(tmp_path / "home/.config/libvirt/auth.conf"), False),
        (str(tmp_path / "etc/libvirt/auth.conf"), False)]
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    assert auth_conf_candidates({"authfile": "/a/b"}, env) == [("/a/b", True)]
    env["LIBVIRT_AUTH_FILE"] = "/from/env"
    assert auth_conf_candidates({"authfile": "/a/b"}, env) == [("/from/env", True)]
    del env["LIBVIRT_AUTH_FILE"]
    assert find_auth_conf(None, env) == (None, [str(tmp_path / "xdg/libvirt/auth.conf"),
                                                str(tmp_path / "etc/libvirt/auth.conf")])
    (tmp_path / "etc/libvirt").mkdir(parents=True)
    (tmp_path / "etc/libvirt/auth.conf").write_text(AUTH_CONF)
    found, looked = find_auth_conf(None, env)
    assert found is not None and found.path == str(tmp_path / "etc/libvirt/auth.conf")
    assert len(looked) == 2


# -- libvirt.conf: default URI and aliases --------------------------------------------------
def test_libvirt_conf_path(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "SYSCONFDIR", "/sysconf")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert libvirt_conf_path(euid=0) == "/sysconf/libvirt/libvirt.conf"
    assert libvirt_conf_path(euid=1000) == str(tmp_path / "libvirt/libvirt.conf")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert libvirt_conf_path(euid=1000) == "/home/u/.config/libvirt/libvirt.conf"


def test_resolve_uri():
    conf = LibvirtConf("/x/libvirt.conf", True, {
        "uri_default": "test:///default",
        "uri_aliases": ["lab=qemu+ssh://root@lab/system", "lab=ignored:///", "my-Host_2=a:///b"]})
    assert resolve_uri("qemu:///system", conf, {}) == "qemu:///system"
    assert resolve_uri(None, conf, {}) == "test:///default"
    assert resolve_uri("", conf, {"LIBVIRT_DEFAULT_URI": "lxc:///"}) == "lxc:///"
    assert resolve_uri("lab", conf, {}) == "qemu+ssh://root@lab/system"   # the first wins
    assert resolve_uri("my-Host_2", conf, {}) == "a:///b"
    assert resolve_uri(None, conf, {"LIBVIRT_DEFAULT_URI": "lab"}) == \
        "qemu+ssh://root@lab/system"                                       # aliases apply too
    with pytest.raises(InvalidURI, match=r"LIBVIRT_DEFAULT_URI is not set and "
                                         r"/none/libvirt.conf \(not found\) sets no uri_default"):
        resolve_uri(None, LibvirtConf("/none/libvirt.conf"), {})
    for bad, problem in [(["no-equals"], "expected 'alias=uri"),
                         (["bad.name=x:///"], "may only contain"), ("lab", "list of strings")]:
        with pytest.raises(InvalidURI, match=problem):
            resolve_uri("x", LibvirtConf("c", True, {"uri_aliases": bad}), {})
    with pytest.raises(InvalidURI, match="uri_default must be a string"):
        resolve_uri(None, LibvirtConf("c", True, {"uri_default": 3}), {})


def test_load_libvirt_conf(tmp_path):
    path = tmp_path / "libvirt.conf"
    assert load_libvirt_conf(str(path)) == LibvirtConf(str(path))
    path.write_text('uri_default = "test:///default"\n')
    assert load_libvirt_conf(str(path)).uri_default == "test:///default"
    path.write_text('uri_default = "unterminated\n')
    with pytest.raises(InvalidURI, match=f"{path}:1: unterminated"):
        load_libvirt_conf(str(path))
    path.write_bytes(b'uri_default = "test:///d\xe9fault"\n')   # was UnicodeDecodeError
    with pytest.raises(InvalidURI, match=f"cannot read {path}: not UTF-8 text"):
        load_libvirt_conf(str(path))


def test_an_auth_conf_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "auth.conf"
    path.write_bytes(b"[credentials-x]\nusername=j\xf6rg\n")
    with pytest.raises(ConfSyntaxError, match=f"{path}: not UTF-8 text"):
        find_auth_conf(None, {"LIBVIRT_AUTH_FILE": str(path)})


@pytest.fixture
def conf_dir(tmp_path, monkeypatch):
    """libvirt.conf in a temporary directory (as root and otherwise); no LIBVIRT_DEFAULT_URI."""
    monkeypatch.setattr(config, "SYSCONFDIR", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    (tmp_path / "libvirt").mkdir()
    return tmp_path / "libvirt"


async def test_connect_without_a_uri(daemon, conf_dir, monkeypatch):
    with pytest.raises(InvalidURI, match="no connection URI given"):
        aiovirt.connect()
    (conf_dir / "libvirt.conf").write_text(f'uri_default = "{daemon.uri()}"\n')
    async with aiovirt.connect() as conn:                 # uri_default
        assert await conn.get_lib_version() == 9000000
        assert conn.uri.uri == daemon.uri()
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", daemon.uri(transport="tcp"))
    async with rpc_connect() as conn:                     # the environment beats it
        assert conn.uri.transport == "tcp"
        assert await conn.rpc.connect_get_lib_version() is not None


async def test_connect_with_an_alias(daemon, conf_dir):
    (conf_dir / "libvirt.conf").write_text(
        f'uri_aliases = [\n  "other=test:///default",\n  "suite={daemon.uri()}",\n]\n')
    conn = await aiovirt.connect("suite")
    try:
        assert conn.uri.uri == daemon.uri()
        assert await conn.get_lib_version() == 9000000
    finally:
        await conn.close()


# -- connect_timeout ------------------------------------------------------------------------
@pytest.fixture
def silent_server():
    """A TCP listener on loopback that never says a word (the kernel completes the TCP
    handshake; nobody answers)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"test+tcp://127.0.0.1:{listener.getsockname()[1]}/default"


@pytest.mark.parametrize("form", ["async with", "await"])
async def test_connect_timeout_bounds_a_silent_server(silent_server, form):
    began = time.monotonic()
    with anyio.fail_after(5), pytest.raises(ConnectionFailed) as info:
        if form == "await":
            await aiovirt.connect(silent_server, connect_timeout=0.3)
        else:
            async with aiovirt.connect(silent_server, connect_timeout=0.3):
                pass
    assert time.monotonic() - began < 2
    assert silent_server in str(info.value) and "0.3 s" in str(info.value)


def test_connect_timeout_is_checked():
    with pytest.raises(ValueError, match="connect_timeout"):
        aiovirt.connect("test:///default", connect_timeout=0)
