"""Connection URI parsing: where to connect, the name sent to the daemon, clear errors."""

import re

import pytest

import aiovirt

from aiovirt import InvalidURI, parse_uri


@pytest.mark.parametrize("uri, transport, name, socket", [
    ("qemu:///system", "unix", "qemu:///system", None),
    ("qemu+unix:///system?socket=/tmp/x.sock", "unix", "qemu:///system", "/tmp/x.sock"),
    ("test+unix:///default?socket=/s", "unix", "test:///default", "/s"),
    ("test+unix:///abs/node.xml?socket=/s", "unix", "test:///abs/node.xml", "/s"),
    ("qemu+tcp://host.example:1234/system", "tcp", "qemu:///system", None),
    ("qemu://host/system", "tls", "qemu:///system", None),
    ("lxc:///", "unix", "lxc:///", None),
])
def test_parse(uri, transport, name, socket):
    parsed = parse_uri(uri)
    assert parsed.transport == transport
    assert parsed.remote_name == name
    if socket:
        assert parsed.socket == socket


def test_qemu_system_means_the_local_daemon_socket():
    socket = parse_uri("qemu:///system").socket
    assert socket.startswith("/run/libvirt/") and socket.endswith("-sock")


def test_tcp_defaults_and_user():
    parsed = parse_uri("qemu+tcp://alice@[::1]/system")
    assert parsed.address == ("::1", 16509)
    assert parsed.user == "alice"


def test_server_side_query_parameters_stay_in_the_name():
    parsed = parse_uri("test+unix:///default?socket=/s&foo=bar")
    assert parsed.remote_name == "test:///default?foo=bar"
    assert parse_uri("qemu+tcp://h/system?name=qemu:///session").remote_name == "qemu:///session"


@pytest.mark.parametrize("uri, message", [
    ("", "empty"),
    ("/var/run/libvirt", "missing 'driver://' scheme"),
    ("qemu:/system", "expected '//'"),
    ("qemu+carrier-pigeon:///system", "transport 'carrier-pigeon'"),
    ("qemu+tcp://host:99999/system", "port '99999'"),
    ("qemu+tcp://host:abc/system", "port 'abc'"),
    ("qemu+unix://host/system", "unix transport takes no host, got 'host'"),
    ("qemu+unix:///system?socket=relative/sock", "socket 'relative/sock' is not an absolute path"),
    ("qemu+tcp://h/system?socket=/x", "'socket' only applies"),
    ("9p:///system", "driver '9p'"),
])
def test_bad_uris_name_the_bad_part(uri, message):
    with pytest.raises(InvalidURI, match=message.replace("+", r"\+").replace("?", r"\?")):
        parse_uri(uri)


@pytest.mark.parametrize("query, params", [
    ("socket=/tmp/plus+dir/libvirt+sock", {"socket": "/tmp/plus+dir/libvirt+sock"}),  # '+' stays
    ("&&socket=/a%20b&", {"socket": "/a b"}),      # empty sections skipped (was "malformed")
    ("no_tty=1;keyfile=/k", {"no_tty": "1", "keyfile": "/k"}),   # ';' when there is no '&'
    ("=x&name", {"name": ""}),                      # "=value" ignored, a bare name is ""
])
def test_query_is_read_as_libvirt_reads_it(query, params):
    assert parse_uri(f"qemu+ssh://h/system?{query}").params == params


@pytest.mark.parametrize("uri, words", [
    ("qemu+ext:///system?command=/bin/true%00x", "parameter 'command' holds a NUL character"),
    ("qemu+tcp://h:²/system", "port '²' is not a number from 1 to 65535"),
    ("qemu+tcp://h:" + "1" * 5000 + "/system", "is not a number from 1 to 65535"),
    ("qemu+tcp://a..b/system", "host 'a..b' is not a valid host name"),
    ("qemu+tls://" + "a" * 64 + ".example/system", "is not a valid host name"),
])
def test_uri_parts_that_cannot_work_are_named(uri, words):
    # these raised ValueError (int(), Popen's "embedded null byte") or UnicodeError (IDNA)
    with pytest.raises(aiovirt.InvalidURI, match=re.escape(words)):
        parse_uri(uri)


def test_a_flag_of_many_digits_is_invalid_not_a_valueerror():
    with pytest.raises(aiovirt.InvalidURI, match="is not an integer"):
        parse_uri("qemu+tls://h/system?no_verify=" + "1" * 5000).flag("no_verify")
