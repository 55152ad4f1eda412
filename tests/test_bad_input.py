"""Bad input at the public surface: a clear error from ``aiovirt.errors`` naming what was
wrong and where, nothing accepted that would fail later, every size bounded."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import aiovirt
from aiovirt.address import AddressError, address_domain
from aiovirt.compose import ParameterError, ProfileSyntaxError, compose, parse_profiles
from aiovirt.compose.profile import MAX_COUNT
from aiovirt.xml import metadata

AIOVIRT = shutil.which("aiovirt", path=str(Path(sys.executable).parent)) or "aiovirt"
Q35 = ("<domain type='kvm'><name>x</name><memory>1048576</memory><os>"
       "<type arch='x86_64' machine='q35'>hvm</type></os><devices>{}</devices></domain>")


def test_connect_refuses_bad_keepalive_before_dialing():
    # (0, 5) used to connect and then die with "did not answer keepalive for 0.0 s";
    # (nan, 5) with an ExceptionGroup; (-1, 5) and (5, -3) were taken and failed later
    for keepalive, what in (((0, 5), "interval"), ((-1.0, 5), "interval"),
                            ((float("nan"), 5), "interval"), (("5", 5), "interval"),
                            ((5, -3), "count"), ((5, 1.5), "count"), (5, "keepalive must be")):
        with pytest.raises(ValueError, match=what) as info:
            aiovirt.connect("test:///default", keepalive=keepalive)
        assert "keepalive" in str(info.value)
    aiovirt.connect("test:///default", keepalive=(5, 0))   # 0 missed intervals is allowed
    aiovirt.connect("test:///default", keepalive=None)


@pytest.mark.parametrize("option, value, words", [
    ("lanes", "2", "lanes must be an integer from 0 to 64"),
    ("lanes", 2.5, "lanes must be an integer"),
    ("lanes", 10**6, "lanes must be an integer from 0 to 64"),
    ("lanes", True, "lanes must be an integer"),
    ("max_in_flight", "3", "max_in_flight must be an integer from 1 to 65536"),
    ("max_in_flight", 0, "max_in_flight must be an integer from 1"),
    ("pipeline_depth", 10**9, "pipeline_depth must be an integer from 1 to 65536"),
    ("call_timeout", "5", "call_timeout must be a number more than 0 seconds"),
    ("call_timeout", float("nan"), "call_timeout must be a number"),
    ("connect_timeout", -1, "connect_timeout must be a number more than 0 seconds"),
    ("event_batch_window", None, "event_batch_window must be a number at least 0 seconds "
                                 "and at most 1,"),
    ("event_batch_window", 2, "event_batch_window must be a number"),
])
def test_connect_options_are_checked_before_dialing(option, value, words):
    # "2" and 1.5 raised bare comparison errors or were taken; sizes had no upper bound
    with pytest.raises(ValueError, match=words) as info:
        aiovirt.connect("test:///default", **{option: value})
    assert repr(value)[:20] in str(info.value)
    aiovirt.connect("test:///default", lanes=0, max_in_flight=5, pipeline_depth=32,
                    call_timeout=1, connect_timeout=0.5, event_batch_window=0)


def test_an_unknown_remote_mode_is_refused():
    # mode=bogus was taken (and treated as auto); libvirt says "Unknown remote mode"
    with pytest.raises(aiovirt.InvalidURI, match=r"mode='bogus' is not one of auto, direct, "
                                                 r"legacy"):
        aiovirt.connect("qemu:///system?mode=bogus")
    aiovirt.connect("qemu:///system?mode=legacy")


@pytest.mark.parametrize("uri", [5, b"qemu:///system"])
def test_uri_of_the_wrong_type_is_named(uri):
    with pytest.raises(aiovirt.InvalidURI, match=f"is a str, not {type(uri).__name__}"):
        aiovirt.parse_uri(uri)


async def test_lookup_domain_refuses_bad_id_and_uuid(daemon):
    async with aiovirt.connect(daemon.uri()) as conn:
        # id=1.5 used to find domain 1, id="abc" raised int()'s bare ValueError
        for bad in (1.5, "1", True):
            with pytest.raises(aiovirt.EncodeError, match=r"lookup_domain: id must be an int"):
                await conn.lookup_domain(id=bad)
        # uuid= used to raise uuid's "badly formed hexadecimal UUID string", naming nothing
        for bad in ("xyz", 5, b"0123456789abcdef"):
            with pytest.raises(aiovirt.EncodeError, match=rf"uuid {bad!r:.20}.* is not a UUID"):
                await conn.lookup_domain(uuid=bad)
        with pytest.raises(aiovirt.NoSuchDomain):
            await conn.lookup_domain(uuid=uuid.uuid4())
        with pytest.raises(aiovirt.NoSuchDomain):
            await conn.lookup_domain(id=123456)


async def test_wrong_argument_types_are_named_by_field(daemon):
    # used to say "cannot encode DomainDefineXmlFlagsArgs(...): 'bytes' object has no
    # attribute 'encode'", naming no argument
    async with aiovirt.connect(daemon.uri()) as conn:
        with pytest.raises(aiovirt.EncodeError,
                           match=r"domain_define_xml_flags: xml: expected str, not bytes"):
            await conn.define_xml(b"<domain/>")   # type: ignore[arg-type]
        with pytest.raises(aiovirt.EncodeError, match=r"flags: expected int, not str \('x'\)"):
            await conn.define_xml("<domain/>", flags="x")   # type: ignore[arg-type]
        assert await conn.get_lib_version() == 9000000   # nothing was sent; all is well


async def test_integers_out_of_their_xdr_range_are_named_with_the_range(daemon):
    # used to be struct's own words ("argument out of range"), naming no field
    async with aiovirt.connect(daemon.uri()) as conn:
        dom = await conn.lookup_domain(name="test")
        with pytest.raises(aiovirt.EncodeError, match=(
                r"domain_set_max_memory: memory: 1180591620717411303424 is out of range for "
                r"XDR unsigned hyper \(0\.\.18446744073709551615\)")):
            await dom.set_max_memory(2 ** 70)
        with pytest.raises(aiovirt.EncodeError,
                           match=r"domain_set_memory: memory: -1 is out of range for XDR "
                                 r"unsigned hyper"):
            await dom.set_memory(-1)
        with pytest.raises(aiovirt.EncodeError,
                           match=r"domain_send_key: keycodes\[1\]: 4294967296 is out of "
                                 r"range for XDR unsigned int \(0\.\.4294967295\)"):
            await dom.send_key(0, 10, [1, 2 ** 32])
        with pytest.raises(aiovirt.EncodeError,
                           match=r"domain_lookup_by_id: id: 2147483648 is out of range for "
                                 r"XDR int \(-2147483648\.\.2147483647\)"):
            await conn.rpc.domain_lookup_by_id(2 ** 31)
        assert await dom.get_max_memory() > 0   # nothing was sent; all is well


async def test_a_nul_in_a_string_is_refused_not_cut_short(daemon):
    # the daemon reads C strings: "test\0garbage" used to find the domain "test", and a
    # define or a title lost everything after the NUL
    async with aiovirt.connect(daemon.uri()) as conn:
        with pytest.raises(aiovirt.EncodeError, match=r"domain_lookup_by_name: "
                           r"DomainLookupByNameArgs\.name: contains a NUL character"):
            await conn.lookup_domain(name="test\0garbage")
        dom = await conn.lookup_domain(name="test")
        with pytest.raises(aiovirt.EncodeError, match="contains a NUL character"):
            await dom.set_metadata("ti\0tle", type="title")
        with pytest.raises(aiovirt.EncodeError, match="contains a NUL character"):
            await conn.define_xml("<domain type='test'><name>n</name></domain>\0<junk")
        assert (await conn.lookup_domain(name="test")).name == "test"


def test_misfit_walks_nested_records_and_lists():
    from aiovirt.protocol import remote
    from aiovirt.protocol.xdr import misfit
    dom = remote.NonnullDomain("a", bytes(16), 1)
    args = remote.DomainSetSchedulerParametersArgs(dom, [remote.TypedParam("cap", None)])
    assert misfit(args) == "params[0].value: expected TypedParamValue, not NoneType (None)"
    args = remote.DomainSetSchedulerParametersArgs(dom, [remote.TypedParam(7, None)])
    assert misfit(args) == "params[0].field: expected str, not int (7)"
    args = remote.DomainSetSchedulerParametersArgs(remote.NonnullDomain(5, bytes(16), 1), [])
    assert misfit(args) == "dom.name: expected str, not int (5)"
    args = remote.DomainSetSchedulerParametersArgs(dom, "not a list")
    assert misfit(args).startswith("params: expected a list, not str")
    assert misfit(remote.DomainSetSchedulerParametersArgs(dom, [])) is None


async def test_enum_arguments_take_names_and_name_the_choices(daemon, node_xml):
    # type="title" and event_id="x" raised int()'s "invalid literal for int() with base 10"
    from aiovirt.api.domain import MetadataType
    async with aiovirt.connect(daemon.uri(path=node_xml)) as conn:
        dom = await conn.define_xml(
            "<domain type='test'><name>enums</name><memory unit='MiB'>8</memory><os>"
            "<type>hvm</type></os></domain>")
        await dom.set_metadata("Hello", type="title")
        assert await dom.metadata(type=MetadataType.TITLE) == "Hello"
        with pytest.raises(aiovirt.EncodeError, match=r"set_metadata: type must be a "
                                                      r"MetadataType \(DESCRIPTION, TITLE, "
                                                      r"ELEMENT\) or an int, not 'heading'"):
            await dom.set_metadata("x", type="heading")
        with pytest.raises(aiovirt.EncodeError, match=r"domain_events: event_id must be a "
                                                      r"DomainEventID \(LIFECYCLE"):
            conn.domain_events("x")
        with pytest.raises(aiovirt.EncodeError, match=r"domain_events: lifecycle must be"):
            conn.domain_events(lifecycle={"begun"})
        async with conn.domain_events("lifecycle", lifecycle={"started"}):
            pass


async def test_metadata_namespace_that_is_not_a_uri_is_refused(daemon, node_xml):
    # libvirt stores it, and then the domain's XML no longer parses (unplug, device
    # metadata, hotplug all failed on it): refused before the call instead
    async with aiovirt.connect(daemon.uri(path=node_xml)) as conn:
        dom = await conn.define_xml(
            "<domain type='test'><name>ns-check</name><memory>1024</memory>"
            "<os><type>hvm</type></os></domain>")
        try:
            with pytest.raises(aiovirt.XMLInputError, match="'not a uri' is not a valid URI"):
                await dom.write_metadata({"a": 1}, namespace="not a uri")
            with pytest.raises(aiovirt.XMLInputError, match="is not a valid URI"):
                await dom.set_metadata("<x/>", key="app", uri="http://x/ y")
            with pytest.raises(aiovirt.XMLInputError, match="is not a valid URI"):
                await dom.write_device_metadata("ua-x", 1, namespace="a b", check=False)
            await dom.write_metadata({"a": 1}, namespace="https://example.org/app")
            assert await dom.read_metadata(namespace="https://example.org/app") == {"a": 1}
            assert await dom.device_metadata() == {}     # the domain's XML still parses
        finally:
            await dom.undefine()
    with pytest.raises(aiovirt.XMLInputError, match="is not a valid URI"):
        metadata.dumps(1, namespace="not a uri")


def test_profile_count_is_bounded():
    # count=100000000 used to run for minutes and take gigabytes
    start = time.monotonic()
    with pytest.raises(ParameterError, match=rf"count=100000000 is more than {MAX_COUNT}"):
        compose(Q35.format(""), ["q35-hotplug"], params={"count": "100000000"})
    assert time.monotonic() - start < 5
    with pytest.raises(ProfileSyntaxError, match=rf"count=100000: at most {MAX_COUNT}"):
        parse_profiles("<profile name='many'><add multiple='yes' count='100000'><devices>"
                       "<controller type='pci' model='pcie-root-port'/></devices></add>"
                       "</profile>")
    result = compose(Q35.format(""), ["q35-hotplug"], params={"count": 8})  # an int is fine
    assert result.xml.count("pcie-root-port") == 8


@pytest.mark.parametrize("value, message", [
    (True, "must be given as text, not bool"),
    (2.5, "must be given as text, not float"),
    ("9" * 5000, "must be an integer"),
])
def test_profile_parameter_of_the_wrong_type(value, message):
    with pytest.raises(ParameterError, match=message) as info:
        compose(Q35.format(""), ["q35-hotplug"], params={"count": value})
    assert "parameter 'count'" in str(info.value) and len(str(info.value)) < 300


def test_what_compose_is_given_is_named():
    from aiovirt.compose import BadProfileReference, ProfileRef
    # compose(5, ...) raised "object of type 'int' has no len()"
    with pytest.raises(aiovirt.XMLInputError, match=r"expected XML text \(str or bytes\), "
                                                    r"not int \(5\)"):
        compose(5, [])   # type: ignore[arg-type]
    # a lone name was taken letter by letter: "'-' is not a profile reference"
    with pytest.raises(BadProfileReference, match=r"got the lone 'q35-hotplug' "
                                                  r"\(write \['q35-hotplug'\]\)"):
        compose(Q35.format(""), "q35-hotplug")   # type: ignore[arg-type]
    # [5]: "'int' object has no attribute 'strip'"
    with pytest.raises(BadProfileReference, match=r"named by text .* not int \(5\)"):
        compose(Q35.format(""), [5])   # type: ignore[list-item]
    # a plain ValueError before: still one, and a ComposeError now
    with pytest.raises(ValueError, match="'@1' is not a profile reference"):
        ProfileRef.parse("@1")
    assert "pcie-root-port" in compose(Q35.format(""), ["q35-hotplug"]).xml


def test_profile_in_a_namespace_says_so():
    # was "expected <profile>, found <profile>"
    with pytest.raises(ProfileSyntaxError,
                       match="found <profile> in namespace 'urn:x' .*drop xmlns="):
        parse_profiles("<profile xmlns='urn:x' name='a'/>")


def test_pci_controller_index_is_bounded():
    # index 99999999 used to build that many buses: minutes and gigabytes
    start = time.monotonic()
    with pytest.raises(AddressError, match="index: 99999999 is out of range \\(0 to 1023\\)"):
        address_domain(Q35.format(
            "<controller type='pci' index='99999999' model='pcie-root-port'/>"))
    with pytest.raises(AddressError, match="index 300: PCI bus numbers go up to 255"):
        address_domain(Q35.format("<controller type='pci' index='300' model='pcie-root-port'/>"))
    assert time.monotonic() - start < 5


def test_undecodable_text_is_an_xml_error():
    with pytest.raises(aiovirt.XMLInputError, match="<domain>:1: not UTF-8 text"):
        compose("<domain>\udcff</domain>", [])


@pytest.mark.parametrize("stdin", [False, True])
def test_cli_file_that_is_not_utf8(tmp_path, stdin):
    path = tmp_path / "vm.xml"
    path.write_bytes(b"\xff\xfe<domain/>")
    for command in ("compose", "address"):
        done = subprocess.run([AIOVIRT, command, "-" if stdin else str(path)],
                              input=path.read_bytes() if stdin else None, capture_output=True,
                              timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
        err = done.stderr.decode()
        assert done.returncode == 1 and done.stdout == b""
        assert err.startswith("aiovirt: error: ") and err.count("\n") == 1, err
        assert "not UTF-8 text" in err and "Traceback" not in err
        assert ("<stdin>" if stdin else str(path)) in err


@pytest.mark.parametrize("command", ["compose", "address", "compose-stdin"])
def test_cli_input_without_end_is_refused_not_read_whole(command):
    # /dev/zero used to be read until memory ran out
    stdin = command.endswith("-stdin")
    with open("/dev/zero", "rb") as zeros:
        done = subprocess.run([AIOVIRT, command.removesuffix("-stdin"),
                               "-" if stdin else "/dev/zero"],
                              stdin=zeros if stdin else subprocess.DEVNULL,
                              capture_output=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    err = done.stderr.decode()
    assert done.returncode == 1 and done.stdout == b"", err
    assert err == (f"aiovirt: error: {'<stdin>' if stdin else '/dev/zero'}: more than "
                   "16777216 bytes, over the limit for this input\n")


def test_a_profile_or_schema_file_without_end_is_refused():
    from aiovirt.xml.safe import XMLInputError, parse_file
    with pytest.raises(XMLInputError, match=r"/dev/zero.*more than 16777216 bytes"):
        parse_file("/dev/zero")


@pytest.mark.parametrize("address, words", [
    ("<address type='bogus'/>", r"disk#1 <address type='bogus'>: unknown address type "
                                r"\(libvirt knows ccid, ccw, dimm, drive"),
    ("<address type='none'/>", r"<address type='none'>: unknown address type"),
    ("<address/>", r"disk#1 <address>: no type given"),
])
def test_an_address_of_no_known_type_is_refused(address, words):
    # used to be kept as a foreign address, for libvirt to refuse at define time
    from aiovirt.address import AddressError, address_domain
    xml = ("<domain type='kvm'><name>a</name><memory>1024</memory><os><type arch='x86_64' "
           "machine='q35'>hvm</type></os><devices><disk type='file' device='disk'>"
           f"<source file='/x.img'/><target dev='vda' bus='virtio'/>{address}</disk>"
           "</devices></domain>")
    with pytest.raises(AddressError, match=words):
        address_domain(xml)


@pytest.mark.parametrize("settings, words", [
    ({"address": "yes"}, "address is True, False or a Tunables, not 'yes'"),
    ({"aliases": 1}, "aliases is True or False, not 1"),
    ({"validate": "no"}, "validate is True, False or None, not 'no'"),
    ({"input_wins": True, "input_priority": "9"}, r"input_priority is an int .*not '9'"),
])
def test_compose_settings_of_the_wrong_type_are_named(settings, words):
    # address="yes" used to be taken as True
    from aiovirt.compose import ComposeError, compose
    with pytest.raises(ComposeError, match=words):
        compose("<domain type='kvm'><name>a</name></domain>", **settings)


# -- provisioning options, specs and reports ---------------------------------------------------

_TEMPLATE = ("<domain type='test'><name>x</name><memory unit='MiB'>8</memory>"
             "<os><type>hvm</type></os></domain>")


@pytest.mark.parametrize("option, value, words", [
    ("concurrency", float("nan"), "concurrency must be an integer"),   # used to hang
    ("concurrency", "3", "concurrency must be an integer"),
    ("start_timeout", float("nan"), "start_timeout must be a number more than 0 seconds"),
    ("start_timeout", -1, "start_timeout must be a number more than 0"),
    ("overcommit", float("inf"), "overcommit must be a number more than 0 and at most 1000"),
    ("overcommit", "2", "overcommit must be a number"),
    ("connect_timeout", "5", "connect_timeout must be a number"),
    ("rollback", "no", "rollback must be True or False"),
])
def test_provisioning_options_are_checked_up_front(option, value, words):
    from aiovirt.provision import GuestSpec, ProvisionError, Provisioning
    with pytest.raises(ProvisionError, match=words):
        Provisioning("test:///default", GuestSpec(_TEMPLATE), **{option: value})


@pytest.mark.parametrize("fields, words", [
    ({"start": "no"}, "start 'no': give True or False"),   # was taken as true
    ({"address": "yes"}, "address 'yes': give True, False or Tunables"),
    ({"labels": None}, "labels None: give a mapping"),
    ({"params": None}, "params None: give a mapping"),
    ({"profiles": None}, "profiles None: give a list"),
    ({"labels": {"k" * 300: "v"}}, "a label's name has 1 to 256 characters"),
    ({"labels": {"k": "v" * 70_000}}, "its value of 70000 characters is over the limit"),
    ({"name": "a\x01b"}, "character U\\+0001 cannot be in XML"),   # failed at define
])
def test_guest_spec_fields_of_the_wrong_kind_are_named(fields, words):
    from aiovirt.provision import GuestSpec, ProvisionError
    with pytest.raises(ProvisionError, match=words):
        GuestSpec(_TEMPLATE, **fields).names()


@pytest.mark.parametrize("data, words", [
    ({"start": "no"}, "start is true or false"),
    ({"address": {"hotplug_reserve": -1}}, "guest spec: address: "),   # was a 500 in the service
    ({"address": {"hotplug_reserve": 3_000_000}}, "address: hotplug_reserve must be a whole "
                                                   "number from 0 to 1024"),   # froze the loop
    ({"address": {"placement": "zzz"}}, "guest spec: address: "),
])
def test_guest_spec_from_json_names_bad_fields(data, words):
    from aiovirt.provision import GuestSpec, ProvisionError
    with pytest.raises(ProvisionError, match=words):
        GuestSpec.from_dict({"template": _TEMPLATE, **data})


@pytest.mark.parametrize("data, words", [
    ({"guests": "abc"}, "guests: expected a list"),
    ([1, 2], "the report: expected an object"),
    ({"guests": ["abc"]}, r"guests\[0\]: expected an object"),
    ({"guests": [{"name": "a", "host": ["x"]}]}, r"guests\[0\]\.host: expected a string or null"),
    ({"guests": [{"name": "a", "stage": "zzz"}]}, r"guests\[0\]\.stage: 'zzz' is not a stage"),
])
def test_a_report_of_the_wrong_shape_is_named(data, words):
    # used to be AttributeError / TypeError (unhashable list) inside teardown
    from aiovirt.provision import ProvisionError, Report
    with pytest.raises(ProvisionError, match=words):
        Report.from_dict(data)


@pytest.mark.parametrize("concurrency", [0, -1, float("nan")])
async def test_teardown_concurrency_is_checked(concurrency):
    from aiovirt.provision import ProvisionError, teardown
    with pytest.raises(ProvisionError, match="concurrency must be an integer from 1"):
        await teardown("test:///default", run="x", concurrency=concurrency)   # 0 used to hang


async def test_teardown_gives_up_on_a_host_that_never_answers(tmp_path):
    # a socket that accepts and stays silent: teardown used to wait for ever
    import socket as _socket

    from aiovirt.provision import teardown
    path = tmp_path / "silent.sock"
    listener = _socket.socket(_socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(4)
    try:
        uri = f"test+unix:///default?socket={path}"
        started = time.monotonic()
        result = await teardown(uri, run="x", connect_timeout=1)
        assert time.monotonic() - started < 15
        assert list(result.unreachable) == [uri] and not result.ok
    finally:
        listener.close()


async def test_teardown_says_which_report_hosts_it_was_not_given(daemon):
    # a report's host spelled otherwise used to be skipped silently, with ok=True
    from aiovirt.provision import GuestSpec, provision, teardown
    uri = daemon.uri()
    async with aiovirt.connect(uri) as conn:   # (the test driver's guests live while it does)
        name = f"spelled-{uuid.uuid4().hex[:8]}"
        report = await provision(conn, GuestSpec(_TEMPLATE, count=2, name=name + "-{n}"))
        assert report.ok
        other = uri.replace("test+unix:///default", "test+unix:///default/")
        result = await teardown(other, report=report)
        assert not result.ok and report.results[0].host in result.unreachable
        assert "not among the hosts given" in result.unreachable[report.results[0].host]
        assert len([d for d in await conn.list_domains() if d.name.startswith(name)]) == 2
        assert (await teardown(conn, report=report)).ok


def test_cli_report_file_that_cannot_be_written_is_refused_before_the_run(daemon, tmp_path):
    # the run used to go ahead, then a traceback hid its summary
    template = tmp_path / "t.xml"
    template.write_text(_TEMPLATE)
    name = f"nowrite-{uuid.uuid4().hex[:8]}"
    for report in (tmp_path / "missing" / "r.json", tmp_path):
        done = subprocess.run([AIOVIRT, "provision", "-c", daemon.uri(), str(template), "-n",
                               "2", "--name", name + "-{n}", "--report", str(report)],
                              capture_output=True, timeout=60)
        err = done.stderr.decode()
        assert done.returncode == 1 and "Traceback" not in err, err
        assert err.startswith(f"aiovirt: error: --report {report}: "), err


async def test_event_and_timeout_arguments_are_named(daemon):
    # each used to be a raw AttributeError, TypeError or int()'s ValueError (or anyio's)
    async with aiovirt.connect(daemon.uri()) as conn:
        with pytest.raises(aiovirt.EncodeError, match="domain_events: domain must be a Domain"):
            conn.domain_events(domain="test")   # type: ignore[arg-type]
        with pytest.raises(aiovirt.EncodeError, match="domain_events: lifecycle is a "
                                                      "collection of event types"):
            conn.domain_events(lifecycle=5)   # type: ignore[arg-type]
        with pytest.raises(aiovirt.EncodeError, match="network_events: network must be a "
                                                      "Network"):
            conn.network_events(12345)   # type: ignore[arg-type]
        with pytest.raises(aiovirt.EncodeError, match="storage_pool_events: pool must be a "
                                                      "StoragePool"):
            conn.storage_pool_events(pool=await conn.lookup_domain(name="test"))  # type: ignore[arg-type]
        for method in (conn.storage_pool_events, conn.node_device_events, conn.secret_events):
            assert method("lifecycle").callback_id is None   # a name, as domain_events takes
            with pytest.raises(aiovirt.EncodeError, match="event_id must be a"):
                method("bogus")
        for bad in ("10", 1.5, True, 0, -1):
            with pytest.raises(ValueError, match="max_buffer must be an integer from 1"):
                conn.domain_events(max_buffer=bad)   # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_buffer must be an integer from 1"):
            conn.state_changes(-1)
        for bad in ("x", float("nan"), -1):
            with pytest.raises(ValueError, match="timeout must be a number more than 0"):
                await conn.rpc.connect_get_lib_version(call_timeout=bad)  # type: ignore[arg-type]
        assert await conn.get_lib_version() == 9000000


async def test_error_messages_do_not_echo_a_megabyte_back(daemon):
    # the daemon repeats what it was given: a 1 MiB name made a 1 MiB message
    async with aiovirt.connect(daemon.uri()) as conn:
        with pytest.raises(aiovirt.NoSuchDomain) as caught:
            await conn.lookup_domain(name="x" * (1 << 20))
        message = str(caught.value)
        assert len(message) < 4200 and "more characters)" in message
        assert message.startswith("Domain not found")


@pytest.mark.parametrize("devices, words", [
    # each used to take from seconds to for ever (a controller per number up to it)
    ("<disk type='file' device='disk'><source file='/x'/><target dev='sdzzzz' bus='sata'/>"
     "</disk>", "target 'sdzzzz' is disk number 475253, which needs sata controller 79208"),
    ("<disk type='file' device='disk'><source file='/x'/><target dev='sda' bus='scsi'/>"
     "<address type='drive' controller='100000' bus='0' target='0' unit='0'/></disk>",
     "controller: 100000 is out of range"),
    ("<controller type='usb' index='0' model='qemu-xhci' ports='1000000000'/>"
     "<input type='tablet' bus='usb'/>", "ports: 1000000000 is out of range"),   # MemoryError
    # each used to be written as given (bus="0x-1"), or changed (multifunction="off")
    ("<interface type='network'><source network='default'/>"
     "<address type='pci' bus='-1' slot='3'/></interface>", "bus: -1 is out of range"),
    ("<interface type='network'><source network='default'/>"
     "<address type='pci' bus='0' slot='3' multifunction='maybe'/></interface>",
     "multifunction 'maybe': give on or off"),
    ("<disk type='file' device='disk'><source file='/x'/><target dev='sda' bus='scsi'/>"
     "<address type='drive' controller='-1' bus='0' target='0' unit='0'/></disk>",
     "controller: -1 is out of range"),
    ("<controller type='pci' index='1' model='pcie-root-port'><target chassis='99999999'/>"
     "</controller>", "<target chassis>: 99999999 is out of range"),
])
def test_addresses_and_controllers_out_of_range_are_refused_at_once(devices, words):
    start = time.monotonic()
    with pytest.raises(AddressError, match=re.escape(words)):
        address_domain(Q35.format(devices))
    assert time.monotonic() - start < 5


# -- composition: what used to hang, recurse or leak Python's own words -----------------------

def _library(*texts: str):
    from aiovirt.compose import Library
    library = Library()
    for text in texts:
        library.add_string(text)
    return library


_PLAIN = "<domain type='kvm'><name>a</name><memory>1024</memory></domain>"


@pytest.mark.parametrize("attrs, words", [
    ("count='²' multiple='yes'", "count='²': expected a positive integer"),   # int() failed
    ("count='٣' multiple='yes'", "count='٣': expected a positive integer"),   # was taken as 3
])
def test_profile_numbers_are_ascii_integers(attrs, words):
    with pytest.raises(ProfileSyntaxError, match=words) as caught:
        parse_profiles(f"<profile name='t'><add {attrs}><devices><disk/></devices></add>"
                       "</profile>")
    assert caught.value.line == 1


@pytest.mark.parametrize("priority", ["high", "1_0", "9" * 30])
def test_profile_priorities_are_bounded_integers(priority):
    with pytest.raises(ProfileSyntaxError, match="priority must be an integer from"):
        parse_profiles(f"<profile name='t' priority='{priority}'/>")
    domain = ("<domain type='kvm'><name>a</name><metadata><aiovirt:profiles xmlns:aiovirt="
              "'https://aiovirt.org/xmlns/profiles/1'><aiovirt:use profile='t' priority="
              f"'{priority}'/></aiovirt:profiles></metadata></domain>")
    from aiovirt.compose import ComposeError
    with pytest.raises(ComposeError, match="priority must be an integer from"):
        compose(domain, library=_library("<profile name='t'/>"))


def test_long_extends_and_requires_chains_are_refused_not_recursion_errors():
    from aiovirt.compose import ComposeError
    extends = [f"<profile name='p{i}' extends='p{i + 1}'/>" for i in range(200)]
    with pytest.raises(ProfileSyntaxError, match="extending one another more than 64 deep"):
        compose(_PLAIN, ["p0"], library=_library(*extends, "<profile name='p200'/>"))
    requires = [f"<profile name='r{i}'><requires profile='r{i + 1}'/></profile>"
                for i in range(200)]
    with pytest.raises(ComposeError, match="requiring profiles more than 64 deep"):
        compose(_PLAIN, ["r0"], library=_library(*requires, "<profile name='r200'/>"))
    # a profile may extend an older version of its own name (it said "extends itself")
    library = _library("<profile name='t' version='1'><add><title>one</title></add></profile>",
                       "<profile name='t' version='2' extends='t@1'/>")
    assert "<title>one</title>" in compose(_PLAIN, ["t@2"], library=library).xml


@pytest.mark.parametrize("params, words", [
    ({"x": "a\x01b"}, r"parameter 'x': character U\+0001 at position 1 cannot be in XML"),
    ({"x": "a" * 70_000}, "a value of 70000 characters is over the limit of 65536"),
    ({1: "1"}, "parameter names are text"),                 # was AttributeError
    ({"x": ["1"]}, "parameter 'x' must be given as text, not list"),   # was unhashable
])
def test_parameter_values_that_cannot_be_used_are_named(params, words):
    library = _library("<profile name='t'><param name='x' default='d'/>"
                       "<add><title>${x}</title></add></profile>")
    with pytest.raises(ParameterError, match=words):
        compose(_PLAIN, ["t"], params=params, library=library)


def test_capabilities_of_the_wrong_type_are_named():
    from aiovirt.compose import ComposeError
    with pytest.raises(ComposeError, match="domain capabilities: expected XML text or an "
                                           "element, not list"):
        compose(_PLAIN, domcaps=["<domainCapabilities/>"])   # type: ignore[arg-type]


def test_machine_names_of_mixed_shapes_sort():
    # pc-q35-7.2 against pc-q35-rhel9.2.0 raised "'<' not supported between str and int"
    from aiovirt.capabilities.tree import _version_key
    names = ["pc-q35-rhel9.2.0", "pc-q35-10.0", "pc-q35-7.2"]
    assert sorted(names, key=_version_key) == ["pc-q35-7.2", "pc-q35-10.0",
                                                "pc-q35-rhel9.2.0"]


def test_an_action_that_would_add_gigabytes_is_refused_before_it_does():
    # ${x} of 60,000 characters, ten times, 4096 copies: lxml ran out of memory
    library = _library("<profile name='t'><param name='x' default='d'/><add multiple='yes' "
                       "count='4096'><devices><disk device='" + "${x}" * 10 + "'/></devices>"
                       "</add></profile>")
    with pytest.raises(ParameterError, match="adds 2457747456 bytes of XML, over the limit"):
        compose(_PLAIN, ["t"], params={"x": "a" * 60_000}, library=library, validate=False)
    big = "<title>" + "t" * 10_000 + "</title>"
    with pytest.raises(ProfileSyntaxError, match="<add> adds .* bytes of XML \\(count=4096\\)"):
        parse_profiles(f"<profile name='b'><add multiple='yes' count='4096'>{big}</add></profile>")


def test_removing_many_elements_takes_linear_time():
    # 20,000 removals took over a minute (every removal rescanned every earlier note)
    library = _library("<profile name='rm'><remove><devices><disk/></devices></remove></profile>")
    disks = "<disk type='file' device='disk'><target dev='vda'/></disk>" * 20_000
    start = time.monotonic()
    result = compose(f"<domain type='kvm'><name>a</name><devices>{disks}</devices></domain>",
                     ["rm"], library=library, validate=False)
    assert "<disk" not in result.xml and len(result.changes) == 20_000
    assert time.monotonic() - start < 20


@pytest.mark.parametrize("device, words", [
    # each used to leak a stdlib error naming no device, or be taken (numa_node -1 or "1"
    # made a pcie-expander-bus with that node)
    ({"kind": "disk", "bus": "virtio", "target": 5}, "device disk target: expected a string"),
    ({"kind": "controller", "type": "pci", "model": "pcie-root-port", "index": -3},
     "device controller index: expected a whole number from 0 to 1023, not -3"),
    ({"kind": "controller", "type": "pci", "index": "x"}, "controller index: expected a whole"),
    ({"kind": "controller", "type": "pci", "index": 1.5}, "controller index: expected a whole"),
    ({"kind": "controller", "type": "usb", "index": 0, "model": "qemu-xhci",
      "options": {"ports": "abc"}}, "device controller options.ports: expected a whole number"),
    ({"kind": "disk", "options": 5}, "device disk options: expected an object, not 5"),
    ({"kind": "disk", "address": "x"}, "device disk address: expected an object, not 'x'"),
    ({"kind": "disk", "address": {"type": "pci", "bus": 0, "slot": "zz"}},
     "device disk address (pci) slot: expected a whole number"),
    ({"kind": "disk", "address": {"type": "usb", "bus": 0, "port": 5}},
     "device disk address (usb) port: expected a list of 1 to 5 port numbers"),
    ({"kind": "disk", "numa_node": -1}, "device disk numa_node: expected a whole number from 0"),
    ({"kind": "disk", "numa_node": "1"}, "device disk numa_node: expected a whole number"),
    ({"kind": "disk", "placement": "weird"}, "device disk placement: expected 'pci' or 'pcie'"),
    ({"kind": "disk", "hotpluggable": "no"}, "device disk hotpluggable: expected true or false"),
    ({"kind": "disk", "name": 5}, "device (disk) name: expected a string, not 5"),
    ({"kind": "disk", "name": "d1", "function_group": ["a"]}, "device 'd1' function_group: "),
    ({"kind": 5}, "device kind: expected a device element name, not 5"),
    ([1], "device: expected an object, not [1]"),
])
def test_json_devices_with_fields_of_the_wrong_type_or_range_are_named(device, words):
    from aiovirt.address import device_from_dict
    with pytest.raises(AddressError, match=re.escape(words)):
        device_from_dict(device)


@pytest.mark.parametrize("make, words", [
    # devices made in Python went unchecked: a TypeError or ValueError from deep in the
    # placement (index -3, ports "abc", an address tuple), or written out as given
    (lambda a: a.Device("disk", bus="virtio", target=5), "disk target: expected a string"),
    (lambda a: a.Device("controller", type="pci", model="pcie-root-port", index=-3),
     "controller index: expected a whole number from 0 to 1023, not -3"),
    (lambda a: a.Device("controller", type="usb", index=0, model="qemu-xhci",
                        options={"ports": "abc"}),
     "controller options.ports: expected a whole number from 1 to 1023, not 'abc'"),
    (lambda a: a.Device("disk", options=5), "disk options: expected an object, not 5"),
    (lambda a: a.Device("disk", address=(0, 5)), "disk address: expected an address "
     "(PciAddress, DriveAddress, UsbAddress, VirtioSerialAddress, CcidAddress, CcwAddress, "
     "SpaprVioAddress), not (0, 5)"),
    (lambda a: a.Device("interface", model="virtio", address=a.PciAddress(0, "zz")),
     "interface address (pci) slot: expected a whole number from 0 to 255, not 'zz'"),
    (lambda a: a.Device("interface", model="virtio", address=a.PciAddress(0, 3, 0, 0, "on")),
     "interface address (pci) multifunction: expected true, false or null, not 'on'"),
    (lambda a: a.Device("input", bus="usb", address=a.UsbAddress(0, 5)),
     "input address (usb) port: expected a list of 1 to 5 port numbers, not 5"),
    (lambda a: a.Device("channel", target="virtio", address=a.VirtioSerialAddress(0, 10**6)),
     "channel address (virtio-serial) port: expected a whole number from 0 to 1023"),
    (lambda a: a.Device("disk", numa_node=-1), "disk numa_node: expected a whole number"),
    (lambda a: a.Device("disk", numa_node="1"), "disk numa_node: expected a whole number"),
    (lambda a: a.Device("disk", placement="weird"), "disk placement: expected 'pci' or"),
    (lambda a: a.Device("disk", hotpluggable="no"), "disk hotpluggable: expected true or"),
    (lambda a: a.Device("disk", name=5), "(disk) name: expected a string, not 5"),
    (lambda a: a.Device("disk", name="d1", function_group=["a"]), "'d1' function_group: "),
    (lambda a: a.Device(5), "kind: expected a device element name, not 5"),
    (lambda a: a.Device("disk", added="yes"), "disk added: expected true or false, not"),
    (lambda a: {"kind": "disk"}, ": expected a Device, not {'kind': 'disk'}"),
])
def test_devices_made_in_python_are_checked_as_json_devices_are(make, words):
    import aiovirt.address
    good = aiovirt.address.Device("disk", bus="virtio", name="ok")
    bad = make(aiovirt.address)
    with pytest.raises(AddressError, match=re.escape(f"devices[1]{'' if words[0] == ':' else ' '}"
                                                     f"{words}")):
        aiovirt.address.place(aiovirt.address.Machine("x86_64", "q35"), [good, bad])


def test_python_and_json_devices_meet_one_set_of_rules():
    from aiovirt.address import CcidAddress, Device, Machine, device_from_dict, place
    for data, made in [
            ({"kind": "disk", "numa_node": -1}, Device("disk", numa_node=-1)),
            ({"kind": "hub", "options": {"ports": 0}}, Device("hub", options={"ports": 0})),
            ({"kind": "smartcard", "address": {"type": "ccid", "controller": 0, "slot": 300}},
             Device("smartcard", address=CcidAddress(0, 300)))]:
        with pytest.raises(AddressError) as from_json:
            device_from_dict(data, "devices[0]")
        with pytest.raises(AddressError) as from_python:
            place(Machine("x86_64", "q35"), [made])
        assert str(from_json.value) == str(from_python.value)
    with pytest.raises(AddressError, match="machine: expected a Machine, not 'q35'"):
        place("q35", [])
    with pytest.raises(AddressError, match="tunables: expected Tunables, not {}"):
        place(Machine(), [], {})


@pytest.mark.parametrize("call, words", [
    (lambda a: a.Machine("x86_64", "q35", numa_nodes=-1), "machine numa_nodes: expected"),
    (lambda a: a.Machine("x86_64", "q35", numa_nodes="2"), "machine numa_nodes: expected"),
    (lambda a: a.machine_from_dict("q35"), "machine: expected an object, not 'q35'"),
    (lambda a: a.machine_from_dict({"bogus": 1}), "machine: unknown fields bogus"),
    (lambda a: a.tunables_from_dict({"x": 1}), "tunables: unknown fields x"),
    (lambda a: a.Tunables(hotplug_reserve=10**9), "hotplug_reserve must be a whole number from 0 to 1024"),
    (lambda a: a.address_domain(Q35.format("<interface type='network'/>"),
                                device_tunables={"interface#1": {"numa_node": -1}}),
     "interface#1 numa_node: expected a whole number from 0"),
])
def test_machines_and_tunables_of_the_wrong_type_or_range_are_named(call, words):
    # a hotplug_reserve of 10**9 used to hang placement; the others leaked TypeErrors
    import aiovirt.address
    with pytest.raises(AddressError, match=re.escape(words)):
        call(aiovirt.address)


def test_addressing_many_disks_takes_near_linear_time():
    # 16,000 disks took 6 s to sort (libvirt's insertion scan, quadratic)
    from aiovirt.address import Device, Machine, Tunables
    from aiovirt.address.libvirt import LibvirtPlacement
    placement = LibvirtPlacement(Machine("x86_64", "q35"),
                                 [Device("disk") for _ in range(16_000)], Tunables())
    start = time.monotonic()
    placement.sort_disks()
    assert time.monotonic() - start < 1


def test_the_number_of_devices_to_address_is_bounded():
    # 300,000 <disk/> (2 MB, under the input limit) would have taken 40 minutes
    start = time.monotonic()
    result = address_domain(Q35.format("<disk/>" * 8192))
    assert sum(d.kind == "disk" for d in result.devices) == 8192
    with pytest.raises(AddressError, match="8193 devices: more than the "
                                           "8192 one guest can be given addresses"):
        address_domain(Q35.format("<disk/>" * 8193))
    with pytest.raises(AddressError, match="300000 devices: more than"):
        address_domain(Q35.format("<disk/>" * 300_000))
    assert time.monotonic() - start < 5


def test_addressing_many_scsi_host_devices_takes_near_linear_time():
    # 1,000 took 36 s: every one rescanned every device for every controller before its own
    hostdevs = "<hostdev mode='subsystem' type='scsi'><source/></hostdev>"
    start = time.monotonic()
    result = address_domain(Q35.format(hostdevs * 1000))
    assert max(d.address.controller for d in result.devices if d.kind == "hostdev") == 142
    assert time.monotonic() - start < 2
    with pytest.raises(AddressError, match="hostdev#7169: needs scsi controller 1024: over "
                                           "the limit of 1023"):
        address_domain(Q35.format(hostdevs * 7169))


def _placement_steps(machine, devices) -> int:
    """The lines of ``aiovirt.address`` that placing ``devices`` runs: a measure of its work
    that neither the machine's load nor its speed moves (time does)."""
    import sys

    import aiovirt.address
    from aiovirt.address import place
    package, count = str(Path(aiovirt.address.__file__).parent), 0

    def line(frame, event, arg):
        nonlocal count
        count += event == "line"
        return line

    previous = sys.gettrace()
    sys.settrace(lambda frame, event, arg:
                 line if frame.f_code.co_filename.startswith(package) else None)
    try:
        place(machine, devices)
    finally:
        sys.settrace(previous)
    return count


def _scales_linearly(machine, make) -> None:
    """Twice the devices made by ``make()`` take at most 2.5 times the steps (a quadratic
    part takes ~4 times at these sizes)."""
    small, large = (_placement_steps(machine, [make() for _ in range(n)]) for n in (400, 800))
    assert large < 2.5 * small, (small, large)


def test_addressing_many_smartcards_takes_linear_steps():
    # each card without an address rescanned every card for controller 0's highest slot:
    # 8192 cards took 3.6 s (at most 256 go without one now: 256 among 8192 took 0.1 s)
    from aiovirt.address import CcidAddress, Device, Machine
    given = itertools.count()

    def card() -> Device:   # one in four without an address, the others on controllers 1..
        number = next(given)
        return Device("smartcard") if number % 4 == 0 else \
            Device("smartcard", address=CcidAddress(1 + number // 256, number % 256))

    _scales_linearly(Machine("x86_64", "q35"), card)


def test_smartcard_slots_stop_where_a_given_address_must():
    # the 257th card got slot 256, which the same output fed back in was refused for
    from aiovirt.address import Device, Machine, place
    q35 = Machine("x86_64", "q35")
    placed = place(q35, [Device("smartcard") for _ in range(256)])
    slots = [d.address.slot for d in placed if d.kind == "smartcard"]
    assert slots == list(range(256))
    assert [d.address.slot for d in place(q35, placed) if d.kind == "smartcard"] == slots
    with pytest.raises(AddressError, match="smartcard: needs CCID slot 256: over the limit "
                                           "of 255"):
        place(q35, [Device("smartcard") for _ in range(257)])


def test_addressing_many_spapr_vio_serial_ports_takes_linear_steps():
    # each port's reg was searched from 0x30000000 up past every earlier one: 8192 took 1.8 s
    from aiovirt.address import Device, Machine
    _scales_linearly(Machine("ppc64", "pseries"), lambda: Device("serial"))


def test_addressing_many_virtio_serial_channels_takes_linear_steps():
    # each channel's port was searched from controller 0 port 1 up: 4000 took 0.3 s, 8000 ~1 s
    from aiovirt.address import Device, Machine
    _scales_linearly(Machine("x86_64", "q35"), lambda: Device("channel", target="virtio"))


_HOTPLUG = ("<domain type='kvm'><name>x</name><maxMemory slots='{}' unit='KiB'>16777216"
            "</maxMemory><memory>1048576</memory><os><type arch='x86_64' machine='q35'>hvm"
            "</type></os><cpu><numa><cell id='0' cpus='0' memory='1048576'/></numa></cpu>"
            "<devices>{}</devices></domain>")
_DIMM = "<memory model='dimm'><target><size>131072</size><node>0</node></target>{}</memory>"


def test_memory_slots_are_bounded_by_qemus_limit():
    # slots and dimm_slot took any number up to 8192 (QEMU 7.2 refuses more than 256 slots:
    # "unsupported amount of memory slots: 257"), a DIMM slot past the domain's was written
    # out for libvirt to refuse, and a dimm_slot of None was a TypeError
    from aiovirt.address import Device, Machine, place
    assert 'slot="255"' in address_domain(_HOTPLUG.format(256, _DIMM.format(
        "<address type='dimm' slot='255'/>") + _DIMM.format(""))).xml
    for xml, words in [
            (_HOTPLUG.format(257, ""), "<maxMemory slots>: 257 is out of range (0 to 256)"),
            (_HOTPLUG.format(10**30, ""), "<maxMemory slots>: 10000000000"),
            (_HOTPLUG.format(256, _DIMM.format("<address type='dimm' slot='256'/>")),
             "memory#1 <address type='dimm' slot>: 256 is out of range (0 to 255)"),
            (_HOTPLUG.format(16, _DIMM.format("<address type='dimm' slot='16'/>")),
             "memory#1: DIMM slot 16 is beyond the domain's 16 (<maxMemory slots='16'>)"),
            (_HOTPLUG.format(1, _DIMM.format("") * 2),
             "memory#2: no free memory slot (all 1 of <maxMemory slots='1'> are taken)")]:
        with pytest.raises(AddressError, match=re.escape(words)):
            address_domain(xml)
    with pytest.raises(AddressError, match=re.escape(
            "machine memory_slots: expected a whole number from 0 to 256, not 257")):
        Machine("x86_64", "q35", memory_slots=257)
    dimm = Device("memory", model="dimm", options={"dimm_slot": 256})
    with pytest.raises(AddressError, match=re.escape(
            "devices[0] memory options.dimm_slot: expected a whole number from 0 to 255")):
        place(Machine("x86_64", "q35", memory_slots=256), [dimm])
    dimm.options["dimm_slot"] = None
    [placed] = [d for d in place(Machine("x86_64", "q35", memory_slots=4), [dimm])
                if d.kind == "memory"]
    assert placed.options["dimm_slot"] == 0


def test_pseries_memory_slots_are_bounded_by_its_own_limit():
    # pSeries takes 32 DIMM slots (QEMU's SPAPR_MAX_RAM_SLOTS: it exits at start-up with more);
    # 256 were accepted for every machine
    from aiovirt.address import Machine
    pseries = _HOTPLUG.replace("arch='x86_64' machine='q35'", "arch='ppc64le' machine='pseries'")
    assert 'slot="31"' in address_domain(pseries.format(32, _DIMM.format(
        "<address type='dimm' slot='31'/>"))).xml
    with pytest.raises(AddressError, match=re.escape(
            "<maxMemory slots>: 33 is out of range (0 to 32)")):
        address_domain(pseries.format(33, ""))
    with pytest.raises(AddressError, match=re.escape(
            "machine memory_slots: expected a whole number from 0 to 32, not 33")):
        Machine("ppc64le", "pseries-7.2", memory_slots=33)
    assert Machine("ppc64le", "pseries", memory_slots=32).memory_slots == 32
    assert Machine("aarch64", "virt", memory_slots=256).memory_slots == 256


@pytest.mark.parametrize("kwargs, words", [
    ({"namespace": "https://aiovirt.org/xmlns/profiles/1"}, "is aiovirt's own"),
    ({"namespace": "https://aiovirt.org/xmlns/devices/1"}, "is aiovirt's own"),
    ({"namespace": "urn:app", "prefix": "xml"}, "prefix 'xml' is not usable"),   # <xml:data>
    ({"namespace": "urn:app", "prefix": "1x"}, "prefix '1x' is not usable"),     # lxml's words
    ({"namespace": "urn:app", "name": 5}, "5 is not usable as an element name"),
])
def test_metadata_writes_that_would_break_the_domain_are_refused(kwargs, words):
    # a write under the profiles namespace used to replace composition's records
    from lxml import etree
    domain = etree.fromstring("<domain><metadata/></domain>")
    with pytest.raises(ValueError, match=words):
        metadata.write(domain, {"a": 1}, **kwargs)
    with pytest.raises(TypeError, match="takes a parsed domain"):
        metadata.read("<domain/>", "urn:app")   # type: ignore[arg-type]


def test_a_profile_twice_in_one_document_is_refused():
    # the last one used to win without a word
    with pytest.raises(ProfileSyntaxError, match="profile t@1 comes twice \\(first at line 1\\)"):
        parse_profiles("<profiles><profile name='t' version='1'/>\n"
                       "<profile name='t' version='1'/></profiles>")


def test_a_mistyped_parameter_in_the_domain_metadata_is_named():
    # <aiovirt:param name="cuont"> used to be ignored (the default applied)
    library = _library("<profile name='t'><param name='count' default='1'/>"
                       "<add><title>${count}</title></add></profile>")
    domain = ("<domain type='kvm'><name>a</name><metadata><aiovirt:profiles xmlns:aiovirt="
              "'https://aiovirt.org/xmlns/profiles/1'><aiovirt:use profile='t'>"
              "<aiovirt:param name='cuont' value='8'/></aiovirt:use></aiovirt:profiles>"
              "</metadata></domain>")
    with pytest.raises(ParameterError, match="<aiovirt:param name='cuont'>: profile t@0 has "
                                             "no such parameter \\(it has: count\\)"):
        compose(domain, library=library)


@pytest.mark.parametrize("devices, words", [
    ("<disk type='file' device='disk'><source file='/x'/><target dev='sda' bus='scsi'/></disk>"
     "<disk type='file' device='disk'><source file='/y'/><target dev='sda' bus='scsi'/></disk>",
     "disk#2: target 'sda' is disk#1's too"),
    ("<disk type='file' device='disk'><source file='/x'/><target dev='sda' bus='scsi'/>"
     "<address type='drive' controller='0' bus='0' target='0' unit='1'/></disk>"
     "<disk type='file' device='disk'><source file='/y'/><target dev='sdb' bus='scsi'/>"
     "<address type='drive' controller='0' bus='0' target='0' unit='1'/></disk>",
     "disk#2: drive address drive 0:0:0:1 on the scsi bus is disk#1's too"),
    ("<controller type='scsi' index='0'/><controller type='scsi' index='0'/>",
     "controller#2: scsi controller index 0 is controller#1's too"),
])
def test_disks_libvirt_would_refuse_as_duplicates_are_refused(devices, words):
    # both used to be written out unchanged, for libvirt to refuse at define time
    with pytest.raises(AddressError, match=re.escape(words)):
        address_domain(Q35.format(devices))


@pytest.mark.parametrize("body, words", [
    ("<a:data type='dict'><a:x type='int'>1</a:x><a:x type='int'>2</a:x></a:data>",
     "key 'x' comes twice"),                       # the last used to win
    ("<a:data type='list'>text<a:i type='int'>1</a:i></a:data>",
     "a list holds elements, not text"),           # the text used to be dropped
])
def test_metadata_that_would_lose_data_when_read_is_refused(body, words):
    with pytest.raises(ValueError, match=words):
        metadata.loads(body.replace("<a:data", "<a:data xmlns:a='urn:a'", 1))


def test_merging_capabilities_with_many_siblings_takes_linear_time():
    # each new sibling was placed with list.index() and insert(): 80k of them took minutes
    from lxml import etree

    from aiovirt.capabilities.tree import merge_documents

    def host(prefix: str) -> etree._Element:
        values = "".join(f"<value>{prefix}{i}</value>" for i in range(40_000))
        return etree.fromstring(f"<domainCapabilities><devices><disk><enum name='x'>{values}"
                                "</enum></disk></devices></domainCapabilities>")
    start = time.monotonic()
    merged, gaps = merge_documents([host("a"), host("b")], ["a", "b"], 1, "domainCapabilities")
    assert len(merged.findall(".//value")) == 80_000 and len(gaps) == 80_000
    assert time.monotonic() - start < 30


def test_a_template_that_is_no_domain_says_so():
    # said "the template has no <name>"
    from aiovirt.provision import GuestSpec, ProvisionError
    with pytest.raises(ProvisionError, match="expected a <domain> document, found <a>"):
        GuestSpec("<a/>").names()


@pytest.mark.parametrize("record, words", [
    ("<aiovirt:profile version='1'/>", "has a <profile> without a name"),   # was a profile ""
    ("<aiovirt:profile name='t' version='1'/><aiovirt:profile name='t' version='2'/>",
     "names 't' twice"),
])
def test_a_malformed_applied_record_is_named(record, words):
    from aiovirt.compose import ComposeError
    domain = ("<domain type='kvm'><name>a</name><metadata><aiovirt:profiles xmlns:aiovirt="
              f"'https://aiovirt.org/xmlns/profiles/1'><aiovirt:applied>{record}"
              "</aiovirt:applied></aiovirt:profiles></metadata></domain>")
    with pytest.raises(ComposeError, match=words):
        compose(domain, library=_library("<profile name='t' version='1'/>"))


def test_many_profiles_together_cannot_add_more_than_a_document():
    # each action was bounded (16 MiB) but many profiles of 12 MiB each were not
    from aiovirt.compose import ComposeError
    texts = [f"<profile name='p{i}'><add multiple='yes' count='4096'><devices>"
             f"<disk type='file' device='disk'><source file='/{'x' * 3000}'/></disk>"
             "</devices></add></profile>" for i in range(3)]
    start = time.monotonic()
    with pytest.raises(ComposeError, match=r"p1@\S* \(add[^)]*\) at .*: with it the profiles add "
                       r"more than 16777216 bytes of XML"):
        compose(_PLAIN, ["p0", "p1", "p2"], library=_library(*texts))
    assert time.monotonic() - start < 10
    # one of them alone is fine
    assert compose(_PLAIN, ["p0"], library=_library(*texts),
                   validate=False).xml.count("<disk") == 4096


def test_a_connection_used_from_another_event_loop_says_so_and_sends_nothing(daemon):
    # used to send the call, then fail with asyncio's "got Future <Future pending> attached
    # to a different loop" (a started domain's caller would not know it was started)
    import asyncio
    first = asyncio.new_event_loop()
    try:
        conn = first.run_until_complete(aiovirt.connect(daemon.uri()).__aenter__())

        async def elsewhere():
            return await conn.get_lib_version()
        with pytest.raises(aiovirt.UsageError, match=r"connect_get_lib_version: this "
                           r"connection belongs to the event loop it was opened on.*nothing "
                           r"was sent"):
            asyncio.run(asyncio.wait_for(elsewhere(), 10))
        assert all(channel.in_flight == 0 for channel in conn.channels)
        assert first.run_until_complete(asyncio.wait_for(conn.get_lib_version(), 10)) > 0
        first.run_until_complete(conn.close())
    finally:
        first.close()


@pytest.mark.parametrize("digits", [21, 400, 4000])
def test_int_parameters_out_of_range_are_named(digits):
    # 400 digits used in a condition leaked lxml's OverflowError (XPath numbers are doubles)
    huge = "9" * digits
    profile = ("<profile name='t'><param name='n' type='int' default='{}'/>"
               "<when test='$n &gt; 1'><add><title>t</title></add></when></profile>")
    with pytest.raises(ParameterError, match="parameter 'n': '9999.* is out of range"):
        _library(profile.format(huge))
    library = _library(profile.format("2"))
    with pytest.raises(ParameterError, match="parameter 'n': '9999.* is out of range"):
        compose(_PLAIN, ["t"], params={"n": huge}, library=library)
    with pytest.raises(ParameterError, match="parameter 'n': '-9999.* is out of range"):
        compose(_PLAIN, ["t"], params={"n": "-" + huge}, library=library)
    top = str(2 ** 64 - 1)
    assert compose(_PLAIN, ["t"], params={"n": top}, library=library,
                   validate=False).applied[0].params == {"n": top}
