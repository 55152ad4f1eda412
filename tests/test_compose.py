"""Composition semantics, offline: actions, priorities, selection, parameters, versions,
idempotency, the report, validation and bad input.  (Defining the results on a real libvirtd
is in test_profiles_live.py.)"""

from __future__ import annotations

import itertools
import json
import os

import pytest
from lxml import etree

from aiovirt.compose import (
    ComposeError,
    InvalidResult,
    Library,
    ParameterError,
    ProfileConflict,
    ProfileRef,
    ProfileSyntaxError,
    UnknownProfile,
    XMLInputError,
    compose,
)
from aiovirt.compose.composer import NS

BASE = ("<domain type='kvm'><name>vm</name><memory unit='MiB'>256</memory>"
        "<os><type arch='x86_64'>hvm</type></os>{extra}<devices>{devices}</devices></domain>")


def domain(devices: str = "", extra: str = "") -> str:
    return BASE.format(devices=devices, extra=extra)


def library(*profiles: str) -> Library:
    lib = Library()
    for text in profiles:
        lib.add_string(text)
    return lib


def tree(xml: str) -> etree._Element:
    return etree.fromstring(xml)


QXL = """<profile name='add-qxl' version='1.0'>
  <add><devices><video><model type='qxl'/></video></devices></add>
</profile>"""


# -- add multiple='auto': the design's video example ------------------------------------------

def test_auto_add_without_video_adds_one():
    result = compose(domain(), ["add-qxl"], library=library(QXL))
    assert [v.get("type") for v in tree(result.xml).findall("devices/video/model")] == ["qxl"]


def test_auto_add_fills_a_video_without_model():
    result = compose(domain("<video/>"), ["add-qxl"], library=library(QXL))
    videos = tree(result.xml).findall("devices/video")
    assert len(videos) == 1 and videos[0].find("model").get("type") == "qxl"
    assert [c.what for c in result.changes] == ["added"]
    assert result.changes[0].path == "/domain/devices/video/model"


def test_auto_add_next_to_a_video_of_another_model():
    result = compose(domain("<video><model type='vga'/></video>"), ["add-qxl"],
                     library=library(QXL))
    models = [v.get("type") for v in tree(result.xml).findall("devices/video/model")]
    assert models == ["vga", "qxl"]


def test_auto_add_of_what_exists_changes_nothing():
    xml = domain("<video><model type='qxl' vram='65536'/></video>")
    result = compose(xml, ["add-qxl"], library=library(QXL), record=False)
    assert result.changes == []
    assert len(tree(result.xml).findall("devices/video")) == 1


def test_auto_add_adjusts_elements_that_do_not_repeat():
    lib = library("""<profile name='p' priority='100'>
      <add><features><hyperv mode='custom'><spinlocks state='on' retries='8191'/></hyperv>
      </features></add></profile>""")
    xml = domain(extra="<features><hyperv mode='custom'><spinlocks state='on' retries='4096'/>"
                       "</hyperv></features>")
    result = compose(xml, ["p"], library=lib)
    assert tree(result.xml).find("features/hyperv/spinlocks").get("retries") == "8191"
    [change] = result.changes
    assert (change.what, change.old, change.new) == ("set", "4096", "8191")
    assert change.path == "/domain/features/hyperv/spinlocks/@retries"


# -- add multiple='yes' and 'no' ------------------------------------------------------------------

REDIR = """<profile name='redir' version='2'>
  <add multiple='yes'><devices>
    <redirdev bus='usb' type='spicevmc'/><redirdev bus='usb' type='spicevmc'/>
  </devices></add></profile>"""


def test_multiple_yes_appends_even_when_present():
    xml = domain("<redirdev bus='usb' type='spicevmc'/>")
    result = compose(xml, ["redir"], library=library(REDIR))
    assert len(tree(result.xml).findall("devices/redirdev")) == 3


def test_multiple_yes_with_count_parameter():
    lib = library("""<profile name='ports'><param name='n' type='int' default='3'/>
      <add multiple='yes' count='${n}'><devices><controller type='pci' model='pcie-root-port'/>
      </devices></add></profile>""")
    assert len(tree(compose("<domain><name>x</name></domain>", ["ports"], library=lib,
                            validate=False).xml).findall("devices/controller")) == 3
    result = compose("<domain><name>x</name></domain>", ["ports"], params={"n": "5"},
                     library=lib, validate=False)
    assert len(tree(result.xml).findall("devices/controller")) == 5


def test_multiple_yes_needs_something_that_repeats():
    lib = library("<profile name='p'><add multiple='yes'><os><type>hvm</type></os></add>"
                  "</profile>")
    with pytest.raises(ComposeError, match="nothing in <os> may repeat"):
        compose(domain(), ["p"], library=lib)


def test_multiple_no_adjusts_the_existing_element_of_that_type():
    lib = library("""<profile name='usb' priority='100'><add multiple='no'><devices>
      <controller type='usb' model='qemu-xhci'/></devices></add></profile>""")
    xml = domain("<controller type='pci' index='0' model='pci-root'/>"
                 "<controller type='usb' index='0' model='piix3-uhci'/>")
    result = compose(xml, ["usb"], library=lib)
    controllers = {c.get("type"): c.get("model")
                   for c in tree(result.xml).findall("devices/controller")}
    assert controllers == {"pci": "pci-root", "usb": "qemu-xhci"}


def test_multiple_no_matches_timers_by_name():
    lib = library("""<profile name='t' priority='100'><add multiple='no'><clock>
      <timer name='hpet' present='no'/></clock></add></profile>""")
    xml = domain(extra="<clock offset='utc'><timer name='rtc' tickpolicy='catchup'/>"
                       "<timer name='hpet' present='yes'/></clock>")
    timers = tree(compose(xml, ["t"], library=lib).xml).findall("clock/timer")
    assert [(t.get("name"), t.get("present")) for t in timers] == \
        [("rtc", None), ("hpet", "no")]


def test_multiple_no_keeps_one_dropping_the_others_the_snippet_covers():
    # the first is adjusted; another one holding only what the snippet sets would be the
    # same once adjusted: it goes (it stayed, so <vcpusched> overlapped); one with values of
    # its own (a USB controller's index) stays
    lib = library("""<profile name='p' priority='100'><add multiple='no'>
      <cputune><vcpusched vcpus='0-1' scheduler='fifo' priority='1'/></cputune>
      <devices><controller type='usb' model='qemu-xhci'/></devices></add></profile>""")
    xml = domain("<controller type='usb' model='piix3-uhci'/>"
                 "<controller type='usb' index='1' model='piix3-uhci'/>",
                 "<cputune><vcpusched vcpus='0' scheduler='fifo' priority='1'/>"
                 "<vcpusched vcpus='1' scheduler='rr' priority='2'/></cputune>")
    result = compose(xml, ["p"], library=lib)
    root = tree(result.xml)
    assert [dict(s.attrib) for s in root.findall("cputune/vcpusched")] == \
        [{"vcpus": "0-1", "scheduler": "fifo", "priority": "1"}]
    assert [(c.get("index"), c.get("model")) for c in root.findall("devices/controller")] == \
        [(None, "qemu-xhci"), ("1", "piix3-uhci")]
    assert [(c.what, c.path) for c in result.changes if c.what == "removed"] == \
        [("removed", "/domain/cputune/vcpusched[2]")]
    assert compose(result.xml, ["p"], library=lib).changes == []


# -- remove and default ---------------------------------------------------------------------------

def test_remove_deletes_every_match_even_with_more_on_it():
    lib = library("""<profile name='no-cdrom' priority='100'><remove><devices>
      <disk device='cdrom'/></devices></remove></profile>""")
    xml = domain("<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>"
                 "<disk type='file' device='disk'><source file='/a'/><target dev='vda'/></disk>"
                 "<disk type='block' device='cdrom'><target dev='hdd' bus='ide'/></disk>")
    result = compose(xml, ["no-cdrom"], library=lib)
    assert [d.get("device") for d in tree(result.xml).findall("devices/disk")] == ["disk"]
    assert [c.what for c in result.changes] == ["removed", "removed"]


def test_remove_of_a_leaf_that_does_not_repeat():
    lib = library("<profile name='p' priority='100'><remove><features><apic/></features>"
                  "</remove></profile>")
    result = compose(domain(extra="<features><acpi/><apic/></features>"), ["p"], library=lib)
    assert [e.tag for e in tree(result.xml).find("features")] == ["acpi"]


def test_default_fills_only_what_is_missing():
    lib = library("""<profile name='nic'><default><devices><interface>
      <model type='virtio'/></interface></devices></default></profile>""")
    xml = domain("<interface type='network'><source network='default'/></interface>"
                 "<interface type='user'><model type='e1000'/></interface>"
                 "<interface type='user'><model/></interface>")
    result = compose(xml, ["nic"], library=lib)
    models = [i.find("model").get("type") for i in tree(result.xml).findall("devices/interface")]
    assert models == ["virtio", "e1000", "virtio"]


def test_default_never_adds_elements_that_repeat():
    lib = library("""<profile name='nic'><default><devices><interface>
      <model type='virtio'/></interface></devices></default></profile>""")
    result = compose(domain(), ["nic"], library=lib)
    assert tree(result.xml).findall("devices/interface") == []
    assert result.changes == []


def test_default_selects_by_the_snippets_attributes():
    lib = library("""<profile name='cache'><default><devices><disk device='disk'>
      <driver cache='none'/></disk></devices></default></profile>""")
    xml = domain("<disk type='file' device='cdrom'><target dev='hdc'/></disk>"
                 "<disk type='file'><source file='/a'/><target dev='vda'/></disk>")
    disks = tree(compose(xml, ["cache"], library=lib).xml).findall("devices/disk")
    assert disks[0].find("driver") is None
    assert disks[1].get("device") == "disk" and disks[1].find("driver").get("cache") == "none"


def test_domain_root_attributes():
    lib = library("<profile name='p'><default><domain type='kvm'/></default></profile>")
    result = compose("<domain><name>x</name></domain>", ["p"], library=lib, validate=False)
    assert tree(result.xml).get("type") == "kvm"


# -- priorities and constraints -------------------------------------------------------------------

def machine(name: str, value: str, priority: int, constraint: str = "soft") -> str:
    return (f"<profile name='{name}' version='1' priority='{priority}'>"
            f"<add constraint='{constraint}'><os><type machine='{value}'>hvm</type></os></add>"
            "</profile>")


def test_higher_priority_overrides_soft_value():
    lib = library(machine("low", "pc", 10), machine("high", "q35", 20))
    result = compose(domain(), ["low", "high"], library=lib)
    assert tree(result.xml).find("os/type").get("machine") == "q35"
    sets = [(c.profile, c.new) for c in result.changes if c.what == "set"]
    assert sets == [("low@1", "pc"), ("high@1", "q35")]


def test_overriding_a_hard_value_names_both_profiles_the_path_and_values():
    lib = library(machine("low", "pc", 10, "hard"), machine("high", "q35", 20))
    with pytest.raises(ProfileConflict) as info:
        compose(domain(), ["high", "low"], library=lib)
    message = str(info.value)
    for part in ("low@1", "high@1", "/domain/os/type/@machine", "'pc'", "'q35'", "hard"):
        assert part in message


def test_equal_priorities_that_disagree_clash():
    lib = library(machine("a", "pc", 10), machine("b", "q35", 10))
    with pytest.raises(ProfileConflict, match="clash at equal priority 10"):
        compose(domain(), ["a", "b"], library=lib)


# input-wins mode (aiovirt 0.1's rules); the default is in test_compose_semantics.py

def test_input_wins_over_lower_priority_profiles():
    lib = library(machine("p", "q35", 10))
    xml = domain().replace("<type arch='x86_64'>", "<type arch='x86_64' machine='pc'>")
    result = compose(xml, ["p"], library=lib, input_wins=True)
    assert tree(result.xml).find("os/type").get("machine") == "pc"
    [kept] = result.report
    assert (kept.what, kept.old, kept.new, kept.profile) == ("kept", "pc", "q35", "p@1")
    assert result.changes == []


def test_profile_above_the_input_priority_overrides_it():
    lib = library(machine("p", "q35", 100))
    xml = domain().replace("<type arch='x86_64'>", "<type arch='x86_64' machine='pc'>")
    result = compose(xml, ["p"], library=lib, input_wins=True)
    assert tree(result.xml).find("os/type").get("machine") == "q35"


def test_hard_value_contradicted_by_the_input_is_an_error():
    lib = library(machine("p", "q35", 10, "hard"))
    xml = domain().replace("<type arch='x86_64'>", "<type arch='x86_64' machine='pc'>")
    with pytest.raises(ProfileConflict, match="input"):
        compose(xml, ["p"], library=lib, input_wins=True)


def test_removing_what_a_hard_profile_added_is_an_error():
    lib = library("""<profile name='adds' priority='10'><add constraint='hard'><devices>
        <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
        </devices></add></profile>""",
                  """<profile name='removes' priority='20'><remove><devices><rng/></devices>
        </remove></profile>""")
    with pytest.raises(ProfileConflict, match="adds.*hard"):
        compose(domain(), ["adds", "removes"], library=lib)


def test_adding_what_a_hard_remove_removed_is_an_error():
    lib = library("""<profile name='removes' priority='10'><remove constraint='hard'><devices>
        <video/></devices></remove></profile>""", QXL.replace("version='1.0'",
                                                                "version='1.0' priority='20'"))
    with pytest.raises(ProfileConflict, match="removes.*hard"):
        compose(domain("<video><model type='vga'/></video>"), ["removes", "add-qxl"],
                library=lib)
    with pytest.raises(ProfileConflict, match="removes.*hard"):  # the 0.1 way to get there
        compose(domain("<video><model type='vga'/></video>"), ["removes", "add-qxl"],
                library=lib, input_wins=True, input_priority=0)


def test_priority_from_the_request_overrides_the_profiles_own():
    lib = library(machine("a", "pc", 10), machine("b", "q35", 20))
    result = compose(domain(), ["a", "b"], library=lib)
    assert tree(result.xml).find("os/type").get("machine") == "q35"
    from aiovirt.compose import ProfileRef
    result = compose(domain(), [ProfileRef("a", None, 30), "b"], library=lib)
    assert tree(result.xml).find("os/type").get("machine") == "pc"


# -- selection ------------------------------------------------------------------------------------

WINDOWS_APP = """<profile name='win-app' auto='yes' xmlns:app='https://example.org/app'>
  <match><metadata><app:app><app:guest os_type='windows'/></app:app></metadata></match>
  <add><clock offset='localtime'/></add>
</profile>"""


def app_domain(os_type: str, ns: str = "https://example.org/app") -> str:
    return domain(extra=f"<metadata><x:app xmlns:x='{ns}'><x:guest os_type='{os_type}' "
                        "os_version='10'/></x:app></metadata>")


def test_auto_profiles_apply_when_their_match_matches_metadata():
    lib = library(WINDOWS_APP)
    result = compose(app_domain("windows"), [], library=lib)
    assert tree(result.xml).find("clock").get("offset") == "localtime"
    assert [(a.profile.name, a.reason) for a in result.applied] == [("win-app", "matched")]


def test_match_respects_values_and_namespaces():
    lib = library(WINDOWS_APP)
    assert compose(app_domain("linux"), [], library=lib).applied == []
    other_namespace = app_domain("windows", "https://example.org/other")
    assert compose(other_namespace, [], library=lib).applied == []


def test_match_gates_an_explicitly_requested_profile():
    lib = library("""<profile name='qxl-for-spice'>
      <match><devices><graphics type='spice'/></devices></match>
      <add><devices><video><model type='qxl'/></video></devices></add></profile>""")
    result = compose(domain("<graphics type='vnc'/>"), ["qxl-for-spice"], library=lib)
    assert result.skipped == [("qxl-for-spice@0", "its <match> does not match the domain")]
    assert result.applied == []
    result = compose(domain("<graphics type='spice' autoport='yes'/>"), ["qxl-for-spice"],
                     library=lib)
    assert tree(result.xml).find("devices/video/model").get("type") == "qxl"


def test_match_test_attribute():
    lib = library("""<profile name='big' auto='yes'><match test='memory > 1000'/>
      <add><devices><memballoon model='virtio'/></devices></add></profile>""")
    assert compose(domain(), [], library=lib).applied == []
    big = domain().replace(">256<", ">2048<")
    assert [a.profile.name for a in compose(big, [], library=lib).applied] == ["big"]


def test_the_domain_selects_profiles_in_its_metadata():
    lib = library(QXL, machine("m", "q35", 5))
    xml = domain(extra=f"<metadata><aiovirt:profiles xmlns:aiovirt='{NS}'>"
                       "<aiovirt:use profile='add-qxl@1.0'/><aiovirt:use profile='m' "
                       "priority='7'/></aiovirt:profiles></metadata>")
    result = compose(xml, [], library=lib)
    assert {(a.profile.id, a.priority, a.reason) for a in result.applied} == \
        {("add-qxl@1.0", 0, "domain metadata"), ("m@1", 7, "domain metadata")}
    assert tree(result.xml).find("os/type").get("machine") == "q35"


def test_requires_pulls_in_and_conflicts_refuse():
    lib = library(QXL, """<profile name='desktop'><requires profile='add-qxl'/>
                            <conflicts profile='headless'/></profile>""",
                  "<profile name='headless'/>")
    result = compose(domain(), ["desktop"], library=lib)
    assert {(a.profile.name, a.reason) for a in result.applied} == \
        {("desktop", "requested"), ("add-qxl", "required by desktop@0")}
    with pytest.raises(ProfileConflict, match="desktop@0 .* conflicts with headless@0"):
        compose(domain(), ["desktop", "headless"], library=lib)


def test_order_is_priority_then_name():
    profiles = [f"<profile name='{n}' priority='{p}'/>" for n, p in
                [("b", 1), ("a", 1), ("c", 0), ("z", -5)]]
    result = compose(domain(), ["a", "b", "c", "z"], library=library(*profiles))
    assert [a.profile.name for a in result.applied] == ["z", "c", "a", "b"]


# -- conditions ---------------------------------------------------------------------------------

USB = """<profile name='usb'>
  <choose>
    <when test="$domcaps/devices/controller/enum[@name='model']/value = 'qemu-xhci'">
      <add><devices><controller type='usb' model='qemu-xhci'/></devices></add>
    </when>
    <otherwise><add><devices><controller type='usb' model='nec-xhci'/></devices></add></otherwise>
  </choose>
</profile>"""
DOMCAPS = ("<domainCapabilities><devices><controller supported='yes'><enum name='model'>"
           "<value>{}</value></enum></controller></devices></domainCapabilities>")


def test_choose_on_domain_capabilities():
    lib = library(USB)
    def model(domcaps):
        result = compose(domain(), ["usb"], library=lib, domcaps=domcaps)
        return tree(result.xml).find("devices/controller").get("model")
    assert model(DOMCAPS.format("qemu-xhci")) == "qemu-xhci"
    assert model(DOMCAPS.format("piix3-uhci")) == "nec-xhci"
    assert model(None) == "nec-xhci"


def test_when_sees_parameters_and_host_capabilities():
    lib = library("""<profile name='p'><param name='on' type='bool' default='no'/>
      <when test="$on and $caps/host/cpu/arch = 'x86_64'">
        <add><devices><panic model='isa'/></devices></add></when></profile>""")
    caps = "<capabilities><host><cpu><arch>x86_64</arch></cpu></host></capabilities>"
    assert tree(compose(domain(), ["p"], library=lib, caps=caps).xml).find(
        "devices/panic") is None
    result = compose(domain(), ["p"], params={"on": "yes"}, library=lib, caps=caps)
    assert tree(result.xml).find("devices/panic").get("model") == "isa"


@pytest.mark.parametrize("test", ["re:test('a', 'a')", "document('/etc/passwd')",
                                  "ex:node-set('x')"])
def test_conditions_cannot_call_extension_functions(test):
    lib = library("<profile name='p' xmlns:re='http://exslt.org/regular-expressions' "
                  "xmlns:ex='http://exslt.org/common'>"
                  f"<when test=\"{test}\"><add><title>x</title></add></when></profile>")
    with pytest.raises(ComposeError, match=r"p@0 \(<string>:1\): <when test="):
        compose(domain(), ["p"], library=lib)


def test_bad_xpath_is_a_syntax_error():
    with pytest.raises(ProfileSyntaxError, match="bad XPath"):
        library("<profile name='p'><when test='devices[['><add><title>x</title></add></when>"
                "</profile>")


# -- parameters -----------------------------------------------------------------------------------

PARAMS = """<profile name='rng'><param name='source' default='/dev/urandom'/>
  <param name='period' type='int'/>
  <add><devices><rng model='virtio'><rate bytes='1024' period='${period}'/>
    <backend model='random'>${source}</backend></rng></devices></add></profile>"""


def test_parameters_defaults_given_and_scoped():
    lib = library(PARAMS)
    result = compose(domain(), ["rng"], params={"period": "2000"}, library=lib)
    rng = tree(result.xml).find("devices/rng")
    assert rng.find("backend").text == "/dev/urandom" and \
        rng.find("rate").get("period") == "2000"
    result = compose(domain(), ["rng"], params={"rng.period": "10", "source": "/dev/random"},
                     library=lib)
    rng = tree(result.xml).find("devices/rng")
    assert (rng.find("backend").text, rng.find("rate").get("period")) == ("/dev/random", "10")


def test_parameter_errors_are_clear():
    lib = library(PARAMS)
    with pytest.raises(ParameterError, match="rng@0 needs parameter 'period'"):
        compose(domain(), ["rng"], library=lib)
    with pytest.raises(ParameterError, match="must be an integer, not 'soon'"):
        compose(domain(), ["rng"], params={"period": "soon"}, library=lib)
    with pytest.raises(ParameterError, match="no selected profile has a parameter 'perod'"):
        compose(domain(), ["rng"], params={"period": "1", "perod": "2"}, library=lib)
    with pytest.raises(ParameterError, match="has no parameter 'bogus'"):
        compose(domain(), ["rng"], params={"period": "1", "rng.bogus": "2"}, library=lib)


def test_parameter_select_reads_the_input():
    lib = library("""<profile name='q'><param name='queues' default='1'
        select='vcpu'/><default><devices><interface><driver queues='${queues}'/></interface>
        </devices></default></profile>""")
    with_vcpus = domain("<interface type='user'/>").replace("</memory>", "</memory><vcpu>4</vcpu>")
    assert tree(compose(with_vcpus, ["q"], library=lib).xml).find(
        "devices/interface/driver").get("queues") == "4"
    assert tree(compose(domain("<interface type='user'/>"), ["q"], library=lib).xml).find(
        "devices/interface/driver").get("queues") == "1"


def test_undeclared_placeholder_is_a_syntax_error():
    with pytest.raises(ProfileSyntaxError, match=r"\$\{nope\} names no declared <param>"):
        library("<profile name='p'><add><title>${nope}</title></add></profile>")


# -- versions, library sources, extends -----------------------------------------------------------

def versioned(version: str, machine_type: str) -> str:
    return (f"<profile name='m' version='{version}'><add><os><type machine='{machine_type}'>"
            "hvm</type></os></add></profile>")


def test_newest_version_and_name_at_version():
    lib = library(versioned("1.9", "pc"), versioned("1.10", "q35"))
    assert lib.get("m").version == "1.10"
    assert lib.get("m@1.9").version == "1.9"
    with pytest.raises(UnknownProfile, match="no version '2'.*available: 1.9, 1.10"):
        lib.get("m@2")
    with pytest.raises(UnknownProfile, match="did you mean m"):
        lib.get("mm")


def test_later_sources_override_by_name(tmp_path):
    (tmp_path / "m.xml").write_text(versioned("0.5", "pc-i440fx-7.2"))
    lib = library(versioned("1.0", "q35"))
    lib.add_path(tmp_path)
    assert lib.get("m").version == "0.5"       # the later source wins by name
    assert lib.get("m@1.0").version == "1.0"   # the older source's version stays selectable


def test_a_changed_profile_file_is_read_again(tmp_path):
    path = tmp_path / "m.xml"
    path.write_text(versioned("1.0", "q35"))
    first = Library()
    first.add_path(path)
    assert first.get("m").version == "1.0"
    path.write_text(versioned("1.1", "q35"))     # same size: only the mtime tells
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    second = Library()
    second.add_path(path)
    assert second.get("m").version == "1.1" and first.get("m").version == "1.0"


def test_shipped_library_loads_with_distinct_names():
    lib = Library.default(system=False, user=False)
    assert len(lib) >= 12
    for profile in lib:
        assert profile.description, profile.id
        assert profile.source.endswith(f"{profile.name}.xml")


def test_extends_inherits_parameters_and_actions():
    lib = library(PARAMS, """<profile name='rng-fast' extends='rng' version='2'>
        <param name='period' type='int' default='100'/>
        <add><devices><memballoon model='virtio'/></devices></add></profile>""")
    profile = lib.get("rng-fast")
    assert [p.name for p in profile.params] == ["source", "period"]
    result = compose(domain(), ["rng-fast"], library=lib)
    devices = tree(result.xml).find("devices")
    assert devices.find("rng/rate").get("period") == "100"
    assert devices.find("memballoon") is not None


def test_extends_loop_is_an_error():
    lib = library("<profile name='a' extends='b'/>", "<profile name='b' extends='a'/>")
    with pytest.raises(ProfileSyntaxError, match="extends itself"):
        lib.get("a")


# -- idempotency and the applied record -----------------------------------------------------------

SHIPPED = Library.default(system=False, user=False)
COMPATIBLE = ["kvm-base", "virtio-linux", "guest-agent", "crash-diagnostics", "usb3",
              "virtio-rng", "balloon-stats", "q35-hotplug", "spice-desktop", "uefi-secure-boot"]
MINIMAL = [
    "<domain><name>a</name></domain>",
    "<domain type='kvm'><name>b</name><memory unit='GiB'>2</memory><vcpu>2</vcpu>"
    "<devices><disk type='file' device='disk'><source file='/b.img'/><target dev='vda'/>"
    "</disk><interface type='network'><source network='default'/></interface>"
    "<graphics type='vnc'/></devices></domain>",
]


@pytest.mark.parametrize("xml", MINIMAL)
@pytest.mark.parametrize("size", [1, 3, 6])
def test_reapplying_to_the_output_changes_nothing(xml, size):
    for names in itertools.islice(itertools.combinations(COMPATIBLE, size), 0, None, 7):
        first = compose(xml, ["kvm-base", *names], library=SHIPPED)
        second = compose(first.xml, ["kvm-base", *names], library=SHIPPED)
        assert second.xml == first.xml, names
        assert second.changes == [], names
        assert second.upgrades == []


SHIPPED_PARAMS = {"nfv-realtime": {"vcpu_cpus": "2-5", "emulator_cpus": "0"}}


@pytest.mark.parametrize("xml", MINIMAL)
@pytest.mark.parametrize("name", [*sorted(p.name for p in SHIPPED), "nfv-realtime realtime"])
def test_every_shipped_profile_composed_again_changes_nothing(xml, name):
    # headless-serial removed its own <video><model type='none'/> and added it again at the
    # end of <devices> on every composition of its output; nfv-realtime's realtime_vcpus
    # (select=) read the input, so its record (and with realtime=yes its XML) changed
    name, _, realtime = name.partition(" ")
    params = {**SHIPPED_PARAMS.get(name, {}), **({"realtime": "yes"} if realtime else {})}
    first = compose(xml, ["kvm-base", name], params=params, library=SHIPPED, validate=False)
    second = compose(first.xml, ["kvm-base", name], params=params, library=SHIPPED,
                     validate=False)
    assert second.xml == first.xml
    assert [str(c) for c in second.report] == [] and second.upgrades == []


@pytest.mark.parametrize("vcpus, expect", [("1", "0"), ("4", "0-3")])
def test_nfv_realtime_schedules_the_vcpus_the_domain_has_at_its_turn(vcpus, expect):
    # select= was evaluated on the input before kvm-base gave the domain its vCPUs: vCPU 0
    result = compose(MINIMAL[0], ["kvm-base", "nfv-realtime"], library=SHIPPED, validate=False,
                     params={**SHIPPED_PARAMS["nfv-realtime"], "realtime": "yes",
                             "vcpus": vcpus})
    assert [s.get("vcpus") for s in tree(result.xml).findall("cputune/vcpusched")] == [expect]
    assert result.applied[-1].params["realtime_vcpus"] == expect


def _vcpus_changed(xml: str, count: int) -> str:
    """The composed ``xml`` with its <vcpu> count changed, as an edit between compositions."""
    root = tree(xml)
    root.find("vcpu").text = str(count)
    return etree.tostring(root, encoding="unicode")


def test_nfv_realtime_recomposed_after_a_vcpu_count_change_keeps_one_vcpusched():
    # 1.0 appended a second <vcpusched> (0-1, then 0-3: overlapping, which libvirt refuses)
    params = {**SHIPPED_PARAMS["nfv-realtime"], "realtime": "yes"}
    xml = "<domain><name>rt</name><vcpu>2</vcpu></domain>"
    for count, expect in ((2, "0-1"), (4, "0-3"), (1, "0"), (3, "0-2")):
        result = compose(_vcpus_changed(xml, count) if count != 2 else xml,
                         ["kvm-base", "nfv-realtime"], params=params, library=SHIPPED,
                         validate=False)
        assert [s.get("vcpus") for s in tree(result.xml).findall("cputune/vcpusched")] == \
            [expect]
        again = compose(result.xml, ["kvm-base", "nfv-realtime"], params=params,
                        library=SHIPPED, validate=False)
        assert again.xml == result.xml and again.changes == [] and again.upgrades == []
        xml = result.xml


def _per_vcpu(xml: str) -> str:
    """The composed ``xml`` with its <vcpusched> split per vCPU, as libvirt writes it back."""
    root = tree(xml)
    cputune = root.find("cputune")
    for old in cputune.findall("vcpusched"):
        cputune.remove(old)
    for vcpu in range(int(root.findtext("vcpu"))):
        etree.SubElement(cputune, "vcpusched", vcpus=str(vcpu), scheduler="fifo",
                         priority="1")
    return etree.tostring(root, encoding="unicode")


@pytest.mark.parametrize("count, expect", [(4, "0-3"), (2, "0-1"), (1, "0")])
def test_nfv_realtime_recomposed_from_libvirts_per_vcpu_form_keeps_one_vcpusched(count,
                                                                               expect):
    # the first <vcpusched vcpus='0'> was adjusted to 0-3 and 1, 2, 3 stayed: overlapping
    params = {**SHIPPED_PARAMS["nfv-realtime"], "realtime": "yes"}
    first = compose(f"<domain><name>rt</name><vcpu>{count}</vcpu></domain>",
                    ["kvm-base", "nfv-realtime"], params=params, library=SHIPPED,
                    validate=False)
    again = compose(_per_vcpu(first.xml), ["kvm-base", "nfv-realtime"], params=params,
                    library=SHIPPED, validate=False)
    assert again.xml == first.xml
    assert [s.get("vcpus") for s in tree(again.xml).findall("cputune/vcpusched")] == [expect]


def test_nfv_realtime_1_0_stays_pinned_until_upgraded():
    # 1.1 changed how <vcpusched> is added: a domain composed with 1.0 keeps 1.0 (and its
    # digest) until composed with upgrade=True, which lists the move
    params = {**SHIPPED_PARAMS["nfv-realtime"], "realtime": "yes"}
    assert SHIPPED.versions("nfv-realtime") == ["1.0", "1.1", "1.2"]
    assert SHIPPED.get("nfv-realtime").version == "1.2"
    old = compose("<domain><name>rt</name><vcpu>2</vcpu></domain>",
                  ["kvm-base", "nfv-realtime@1.0"], params=params, library=SHIPPED,
                  validate=False)
    pinned = compose(old.xml, ["kvm-base", "nfv-realtime"], params=params, library=SHIPPED,
                     validate=False)
    assert pinned.xml == old.xml and pinned.upgrades == []
    moved = compose(_vcpus_changed(old.xml, 4), ["kvm-base", "nfv-realtime"], params=params,
                    library=SHIPPED, validate=False, upgrade=True)
    assert [(u.old_version, u.new_version) for u in moved.upgrades] == [("1.0", "1.2")]
    assert [s.get("vcpus") for s in tree(moved.xml).findall("cputune/vcpusched")] == ["0-3"]


def _vcpuscheds(xml: str) -> list[str | None]:
    return [s.get("vcpus") for s in tree(xml).findall("cputune/vcpusched")]


def test_nfv_realtime_turned_off_removes_the_vcpusched_it_added():
    # 1.1 left its <vcpusched> (in libvirt's per-vCPU form too) when realtime went to no;
    # a domain's own <vcpusched>, never composed with realtime, stays
    on = {**SHIPPED_PARAMS["nfv-realtime"], "realtime": "yes"}
    off = {**on, "realtime": "no"}
    first = compose("<domain><name>rt</name><vcpu>4</vcpu></domain>",
                    ["kvm-base", "nfv-realtime"], params=on, library=SHIPPED)
    for xml in (first.xml, _per_vcpu(first.xml)):
        result = compose(xml, ["kvm-base", "nfv-realtime"], params=off, library=SHIPPED)
        assert _vcpuscheds(result.xml) == []
        assert {c.what for c in result.changes} == {"removed"}
        again = compose(result.xml, ["kvm-base", "nfv-realtime"], params=off, library=SHIPPED)
        assert again.xml == result.xml and again.changes == []
    own = ("<domain><name>rt</name><vcpu>2</vcpu><cputune>"
           "<vcpusched vcpus='0-1' scheduler='fifo' priority='1'/></cputune></domain>")
    kept = compose(own, ["kvm-base", "nfv-realtime"], params=off, library=SHIPPED)
    assert _vcpuscheds(kept.xml) == ["0-1"]


def test_nfv_realtime_1_1_keeps_its_vcpusched_until_upgraded():
    # 1.2 changed what realtime=no does: 1.1 stays pinned (and leaves <vcpusched>) until
    # composed with upgrade=True, which moves it to 1.2 and removes it
    on = {**SHIPPED_PARAMS["nfv-realtime"], "realtime": "yes"}
    off = {**on, "realtime": "no"}
    old = compose("<domain><name>rt</name><vcpu>2</vcpu></domain>",
                  ["kvm-base", "nfv-realtime@1.1"], params=on, library=SHIPPED)
    pinned = compose(old.xml, ["kvm-base", "nfv-realtime"], params=off, library=SHIPPED)
    assert pinned.applied[-1].profile.version == "1.1"
    assert _vcpuscheds(pinned.xml) == ["0-1"]
    moved = compose(old.xml, ["kvm-base", "nfv-realtime"], params=off, library=SHIPPED,
                    upgrade=True)
    assert [(u.old_version, u.new_version) for u in moved.upgrades] == [("1.1", "1.2")]
    assert _vcpuscheds(moved.xml) == []


def test_applied_set_is_recorded_with_versions_digests_and_parameters():
    result = compose(MINIMAL[0], ["kvm-base", "q35-hotplug"], params={"count": "2"},
                     library=SHIPPED)
    applied = tree(result.xml).find(f"metadata/{{{NS}}}profiles/{{{NS}}}applied")
    entries = {p.get("name"): p for p in applied}
    assert entries["q35-hotplug"].get("version") == "1.0"
    assert entries["q35-hotplug"].get("digest") == SHIPPED.get("q35-hotplug").digest
    params = {q.get("name"): q.get("value") for q in entries["q35-hotplug"]}
    assert params == {"count": "2"}
    assert applied.get("digest").startswith("sha256:")


def test_recorded_versions_are_pinned_and_upgrades_shown():
    old = library(versioned("1.0", "pc"))
    first = compose(domain(), ["m"], library=old)
    newer = library(versioned("1.0", "pc"), versioned("2.0", "q35"))
    pinned = compose(first.xml, ["m"], library=newer)
    assert pinned.applied[0].profile.version == "1.0" and pinned.upgrades == []
    upgraded = compose(first.xml, ["m"], library=newer, upgrade=True)
    assert [str(u) for u in upgraded.upgrades] == ["m: 1.0 -> 2.0"]
    gone = library(versioned("2.0", "q35"))
    with pytest.raises(UnknownProfile, match="upgrade=True"):
        compose(first.xml, ["m"], library=gone)


def test_multiple_yes_tops_up_on_reapplication():
    lib = library(REDIR)
    first = compose(domain(), ["redir"], library=lib)
    again = compose(first.xml, ["redir"], library=lib)
    assert len(tree(again.xml).findall("devices/redirdev")) == 2


def test_zero_profiles_change_nothing():
    xml = MINIMAL[1]
    result = compose(xml, [], library=SHIPPED, validate=False)
    assert result.report == [] and result.applied == []
    from aiovirt.xml.safe import parse
    assert etree.tostring(parse(result.xml), method="c14n") == \
        etree.tostring(parse(xml), method="c14n")


# -- the report -----------------------------------------------------------------------------------

def test_explain_names_profile_action_old_and_new():
    lib = library(machine("low", "pc", 10), machine("high", "q35", 20))
    result = compose(domain(), ["low", "high"], library=lib)
    text = result.explain()
    assert "high@1 add: set /domain/os/type/@machine: 'pc' -> 'q35'" in text
    data = json.loads(result.to_json())
    assert data["changes"][-1] == {"path": "/domain/os/type/@machine", "what": "set",
                                   "old": "pc", "new": "q35", "profile": "high@1",
                                   "action": "add", "note": "", "replaced": "low@1"}
    assert [a["profile"] for a in data["applied"]] == ["low@1", "high@1"]


def test_explain_says_what_an_addition_added():
    # additions were shown by their start tag only: usb3's "added /domain/devices <devices>"
    # never said which controller, windows-hyperv's <hyperv> not which enlightenments
    result = compose("<domain><name>x</name></domain>", ["kvm-base", "usb3"], library=SHIPPED,
                     validate=False)
    text = result.explain()
    assert ("usb3@1.0 add multiple=no: added /domain/devices <devices><controller type=\"usb\" "
            "model=\"nec-xhci\"") in text
    result = compose("<domain><name>x</name></domain>", ["kvm-base", "windows-hyperv"],
                     library=SHIPPED, validate=False)
    hyperv = next(c for c in result.changes if c.path == "/domain/features/hyperv")
    assert hyperv.what == "added" and '<relaxed state="on"/>' in hyperv.new
    lib = library("<profile name='ns' xmlns:v='urn:v'><add><devices><video><model "
                  "type='qxl'/></video></devices></add></profile>",
                  f"<profile name='long'><add><description>{'d' * 1000}</description></add>"
                  "</profile>")
    added = compose(domain(), ["ns"], library=lib, validate=False).changes[0]
    assert added.new == '<video><model type="qxl"/></video>'   # no stray xmlns:v
    added = compose(domain(), ["long"], library=lib, validate=False).changes[0]
    assert len(added.new) < 300 and added.new.startswith("<description>ddd")
    assert added.new.endswith("...")                          # bounded, as removals are


# -- validation -----------------------------------------------------------------------------------

def test_invalid_result_names_the_profile_and_the_violation():
    lib = library("<profile name='broken'><add><devices><disk type='file' device='disk'>"
                  "<source file='/x'/></disk></devices></add></profile>")
    with pytest.raises(InvalidResult) as info:
        compose(domain(), ["broken"], library=lib)
    assert "broken@0" in str(info.value)
    assert any(who == "broken@0" and "disk" in path for who, path, _ in info.value.violations)
    result = compose(domain(), ["broken"], library=lib, validate=False)
    assert not result.validated


def test_invalid_input_is_blamed_on_the_input():
    with pytest.raises(InvalidResult) as info:
        compose("<domain type='kvm'><name>x</name><memory>1</memory><os><type>hvm</type>"
                "</os><bogus/></domain>", [], library=Library())
    assert info.value.violations[0][0] == "input"


# -- bad input ------------------------------------------------------------------------------------

def test_malformed_domain_names_source_and_line():
    with pytest.raises(XMLInputError, match=r"guest\.xml:3: "):
        compose("<domain>\n<name>x</name>\n<devices></domain>", [], source="guest.xml")


def test_entities_and_doctypes_are_refused():
    laughs = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
              '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><domain><name>&b;</name></domain>')
    with pytest.raises(XMLInputError, match="DOCTYPE"):
        compose(laughs, [])
    xxe = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           '<domain><name>&x;</name></domain>')
    with pytest.raises(XMLInputError, match="DOCTYPE"):
        compose(xxe, [])
    with pytest.raises(XMLInputError):
        library("<!DOCTYPE p [<!ENTITY x 'y'>]><profile name='p'/>")


def test_malformed_profiles_name_file_and_line(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text("<profile name='p'>\n  <add>\n    <devices>\n  </add>\n</profile>\n")
    with pytest.raises(ProfileSyntaxError, match=r"bad\.xml:4:"):
        Library().add_path(path)
    path.write_text("<profile name='p'>\n\n  <ad><title>x</title></ad>\n</profile>\n")
    with pytest.raises(ProfileSyntaxError, match=r"bad\.xml:3: unknown element <ad>"):
        Library().add_path(path)
    path.write_text("<profile name='p'>\n  <add multiple='sometimes'><title>x</title></add>"
                    "\n</profile>\n")
    with pytest.raises(ProfileSyntaxError, match=r"bad\.xml:2: .*multiple='sometimes'"):
        Library().add_path(path)


def test_not_a_domain():
    with pytest.raises(ComposeError, match="expected a <domain>"):
        compose("<network/>", [])


def test_unknown_profile_in_a_request():
    with pytest.raises(UnknownProfile, match="unknown profile 'nosuch'"):
        compose(domain(), ["nosuch"], library=SHIPPED)
    with pytest.raises(ValueError, match="not a profile reference"):
        compose(domain(), ["bad name"], library=SHIPPED)


USES_HOTPLUG = ("<domain><name>x</name><metadata><aiovirt:profiles xmlns:aiovirt='" + NS +
                "'><aiovirt:use profile='q35-hotplug' priority='50'><aiovirt:param "
                "name='count' value='8'/></aiovirt:use></aiovirt:profiles></metadata></domain>")


def test_the_domains_own_use_counts_when_the_caller_names_the_profile_too():
    # the caller's -p q35-hotplug won silently: 4 ports at priority 10, the domain's 8 and
    # priority 50 dropped
    def ports(result):
        return len(tree(result.xml).findall("devices/controller[@model='pcie-root-port']"))

    result = compose(USES_HOTPLUG, ["q35-hotplug"], library=SHIPPED, validate=False)
    (applied,) = result.applied
    assert (ports(result), applied.priority, applied.params) == (8, 50, {"count": "8"})
    assert applied.reason == "requested, domain metadata"
    # what the caller says explicitly wins, and the report says what it replaced
    result = compose(USES_HOTPLUG, [ProfileRef("q35-hotplug", priority=70)],
                     params={"count": "2"}, library=SHIPPED, validate=False)
    (applied,) = result.applied
    assert (ports(result), applied.priority, applied.params) == (2, 70, {"count": "2"})
    assert "priority 70 as requested, not the domain's 50" in applied.reason
    assert "count=2 as given, not the domain's 8" in applied.reason
    assert "count=2 as given, not the domain's 8" in result.explain()
    twice = USES_HOTPLUG.replace("</aiovirt:profiles>", "<aiovirt:use profile='q35-hotplug'/>"
                                 "</aiovirt:profiles>")
    with pytest.raises(ComposeError, match="names q35-hotplug twice"):
        compose(twice, [], library=SHIPPED, validate=False)
