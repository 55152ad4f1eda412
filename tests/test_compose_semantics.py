"""The libvirt-profiles design's semantics, the default since aiovirt 0.2: actions apply to the
input document, priorities and hard constraints arbitrate between profiles only.  The
design's own example profiles, on inputs that already hold what they touch; input-wins mode
(0.1's rules) beside them; plans, the batch API and the CLI flag."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from aiovirt.compose import (
    ComposeError,
    Composer,
    Library,
    ProfileConflict,
    ProfileSyntaxError,
    compose,
    compose_many,
)
from aiovirt.compose.plan import action_plan, reads_only_variables

APP = "http://example.org/myapp"
VIRTUNED = "http://virt-manager.org/schemas/virtuned/0.1"

# The design's profiles, as it writes them (its unclosed tags closed; type='hard' as it spells
# constraint='hard').
SOME_INTERESTING_THINGS = """<profile name='some-interesting-things' priority='10'>
  <add><iothreads>2</iothreads></add>
  <add><devices><disk device='cdrom'/></devices></add>
  <add multiple='yes'><devices>
    <redirdev bus='usb' type='spicevmc'/><redirdev bus='usb' type='spicevmc'/>
  </devices></add>
  <remove type='hard'><features><apic/></features></remove>
  <defaults><devices><interface><model type='virtio'/></interface></devices></defaults>
</profile>"""
ADD_QXL_FOR_SPICE = """<profile name='add-qxl-for-spice'>
  <match><devices><graphics type='spice'/></devices></match>
  <add><devices><video><model type='qxl'/></video></devices></add>
</profile>"""
HYPERV_DEFAULTS = f"""<profile name='hyperv-defaults' auto='yes' xmlns:virtuned='{VIRTUNED}'>
  <match><metadata><virtuned:virtuned><virtuned:guest os_type='windows'/></virtuned:virtuned>
  </metadata></match>
  <add><features><hyperv><relaxed state='on'/><vapic state='on'/>
    <spinlocks state='on' retries='8191'/></hyperv></features></add>
</profile>"""
SPICE_STUFF = """<profile name='spice-stuff'>
  <match><devices><graphics type='spice'/></devices></match>
  <add><devices><video><model type='qxl'/></video></devices></add>
  <add multiple='yes'><devices>
    <redirdev bus='usb' type='spicevmc'/><redirdev bus='usb' type='spicevmc'/>
  </devices></add>
</profile>"""
SENSIBLE_DEFAULTS = """<profile name='sensible-defaults'>
  <add multiple='no'><devices><video><model type='qxl'/></video></devices></add>
  <defaults><devices><interface><model type='virtio'/></interface></devices></defaults>
</profile>"""
MYAPP_DEFAULTS = """<profile name='myapp-defaults'>
  <defaults type='hard'><devices><graphics type='spice'/>
    <interface><model type='e1000e'/></interface></devices></defaults>
</profile>"""
FORCE_VIRTIO_VIDEO = """<profile name='force-virtio-video' version='1' priority='20'>
  <add multiple='no'><devices><video><model type='virtio'/></video></devices></add>
</profile>"""
ADDS_APIC = """<profile name='adds-apic' version='1' priority='{}'>
  <add><features><apic/></features></add>
</profile>"""


def library(*texts: str) -> Library:
    lib = Library()
    for text in texts:
        lib.add_string(text)
    return lib


def tree(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode())


def guest(devices: str = "", extra: str = "") -> str:
    return ("<domain type='kvm'><name>g</name><memory unit='MiB'>256</memory>"
            f"<os><type arch='x86_64'>hvm</type></os>{extra}<devices>{devices}</devices>"
            "</domain>")


# -- the design's "some-interesting-things" on an input that has all it touches -------------------

def test_some_interesting_things_acts_on_the_input():
    xml = guest("<disk type='file' device='cdrom'><target dev='hdc' bus='sata'/></disk>"
                "<redirdev bus='usb' type='spicevmc'/>"
                "<interface type='network'><source network='default'/></interface>"
                "<interface type='user'><model type='e1000'/></interface>",
                "<iothreads>4</iothreads><features><acpi/><apic eoi='on'/></features>")
    result = compose(xml, ["some-interesting-things"], library=library(SOME_INTERESTING_THINGS))
    out = tree(result.xml)
    assert out.findtext("iothreads") == "2"                      # add overrides the input
    assert len(out.findall("devices/disk")) == 1                 # the cdrom is there already
    assert len(out.findall("devices/redirdev")) == 3             # two more, unconditionally
    assert out.find("features/apic") is None                     # removed, extra attrs and all
    assert out.find("features/acpi") is not None
    assert [i.find("model").get("type") for i in out.findall("devices/interface")] == \
        ["virtio", "e1000"]                                      # default: only the missing
    by_path = {c.path: c for c in result.changes}
    iothreads = by_path["/domain/iothreads/text()"]
    assert (iothreads.what, iothreads.old, iothreads.new, iothreads.replaced) == \
        ("set", "4", "2", "input")
    apic = by_path["/domain/features/apic"]
    assert (apic.what, apic.old, apic.replaced) == ("removed", '<apic eoi="on"/>', "input")
    assert "removed /domain/features/apic: was <apic eoi=\"on\"/> (the input's)" in \
        result.explain()


def test_the_same_in_input_wins_mode_is_0_1s_behaviour():
    xml = guest(extra="<iothreads>4</iothreads><features><acpi/><apic/></features>")
    lib = library(SOME_INTERESTING_THINGS)
    with pytest.raises(ProfileConflict, match="some-interesting-things.*hard.*input"):
        compose(xml, ["some-interesting-things"], library=lib, input_wins=True,
                validate=False)
    soft = library(SOME_INTERESTING_THINGS.replace(" type='hard'", ""))
    result = compose(xml, ["some-interesting-things"], library=soft, input_wins=True,
                     validate=False)
    out = tree(result.xml)
    assert out.findtext("iothreads") == "4" and out.find("features/apic") is not None
    assert {c.what for c in result.report if "iothreads" in c.path or "apic" in c.path} == \
        {"kept"}


# -- hard constraints arbitrate between profiles only -------------------------------------------

def test_a_hard_remove_binds_profiles_of_higher_priority():
    lib = library(SOME_INTERESTING_THINGS, ADDS_APIC.format(50))
    xml = guest(extra="<features><acpi/><apic/></features>")
    with pytest.raises(ProfileConflict) as info:
        compose(xml, ["some-interesting-things", "adds-apic"], library=lib, validate=False)
    message = str(info.value)
    assert "adds-apic@1" in message and "some-interesting-things@0" in message
    assert "/domain/features/apic" in message and "hard" in message


def test_a_hard_remove_holds_even_when_there_was_nothing_to_remove():
    lib = library(SOME_INTERESTING_THINGS, ADDS_APIC.format(50))
    with pytest.raises(ProfileConflict, match="adds-apic@1 .*puts back /domain/features/apic"):
        compose(guest(), ["some-interesting-things", "adds-apic"], library=lib,
                validate=False)


def test_a_hard_remove_overrides_profiles_of_lower_priority():
    lib = library(SOME_INTERESTING_THINGS, ADDS_APIC.format(5))
    result = compose(guest(), ["some-interesting-things", "adds-apic"], library=lib,
                     validate=False)
    assert tree(result.xml).find("features/apic") is None
    removed = next(c for c in result.changes if c.what == "removed")
    assert removed.replaced == "adds-apic@1"


def test_a_hard_add_errors_only_against_a_higher_profile():
    hard = FORCE_VIRTIO_VIDEO.replace("multiple='no'", "multiple='no' constraint='hard'")
    qxl = FORCE_VIRTIO_VIDEO.replace("force-virtio-video", "force-qxl").replace(
        "virtio", "qxl").replace("'20'", "'30'")
    vga = guest("<video><model type='vga'/></video>")
    result = compose(vga, ["force-virtio-video"], library=library(hard))  # the input: no error
    assert tree(result.xml).find("devices/video/model").get("type") == "virtio"
    with pytest.raises(ProfileConflict, match="force-qxl@1 .* force-virtio-video@1 .*hard"):
        compose(vga, ["force-virtio-video", "force-qxl"], library=library(hard, qxl))


def test_equal_priorities_still_clash():
    other = FORCE_VIRTIO_VIDEO.replace("force-virtio-video", "force-vga").replace(
        "'virtio'", "'vga'")
    with pytest.raises(ProfileConflict, match="clash at equal priority 20"):
        compose(guest("<video/>"), ["force-virtio-video", "force-vga"],
                library=library(FORCE_VIRTIO_VIDEO, other))


def test_type_and_constraint_must_agree():
    with pytest.raises(ProfileSyntaxError, match="constraint='soft' and type='hard' disagree"):
        library("<profile name='p'><remove constraint='soft' type='hard'><features><apic/>"
                "</features></remove></profile>")


# -- force-virtio-video on a template with vga: virtio, and the report says vga -> virtio ------------

def test_force_virtio_video_overrides_the_template():
    result = compose(guest("<video><model type='vga' vram='16384'/></video>"),
                     ["force-virtio-video"], library=library(FORCE_VIRTIO_VIDEO))
    models = tree(result.xml).findall("devices/video/model")
    assert [(m.get("type"), m.get("vram")) for m in models] == [("virtio", "16384")]
    [change] = result.changes
    assert (change.path, change.old, change.new, change.replaced) == \
        ("/domain/devices/video/model/@type", "vga", "virtio", "input")
    assert ("force-virtio-video@1 add multiple=no: set /domain/devices/video/model/@type: "
            "'vga' -> 'virtio' (the input's)") in result.explain()
    assert result.to_dict()["changes"][0]["replaced"] == "input"


def test_force_virtio_video_in_input_wins_mode_keeps_vga():
    result = compose(guest("<video><model type='vga'/></video>"), ["force-virtio-video"],
                     library=library(FORCE_VIRTIO_VIDEO), input_wins=True)
    assert tree(result.xml).find("devices/video/model").get("type") == "vga"
    [kept] = result.report
    assert (kept.what, kept.old, kept.new) == ("kept", "vga", "virtio")
    assert result.changes == []


# -- add-qxl-for-spice and its <match> ---------------------------------------------------------------

@pytest.mark.parametrize(("video", "models"), [
    ("", ["qxl"]),                                            # no video: one is added
    ("<video/>", ["qxl"]),                                    # no model: it becomes qxl
    ("<video><model type='vga'/></video>", ["vga", "qxl"]),   # another model: a second one
    ("<video><model type='qxl' heads='2'/></video>", ["qxl"]),  # there already
])
def test_add_qxl_for_spice_on_spice_guests(video, models):
    xml = guest(f"<graphics type='spice' autoport='yes'/>{video}")
    result = compose(xml, ["add-qxl-for-spice"], library=library(ADD_QXL_FOR_SPICE))
    assert [m.get("type") for m in tree(result.xml).findall("devices/video/model")] == models


def test_add_qxl_for_spice_skips_other_guests():
    result = compose(guest("<graphics type='vnc'/><video><model type='vga'/></video>"),
                     ["add-qxl-for-spice"], library=library(ADD_QXL_FOR_SPICE))
    assert result.skipped == [("add-qxl-for-spice@0", "its <match> does not match the domain")]
    assert result.changes == []


# -- metadata matches, and the design's full example ----------------------------------------------------

def windows_guest(os_type: str) -> str:
    return guest(extra=f"<metadata><virtuned:virtuned xmlns:virtuned='{VIRTUNED}'>"
                       f"<virtuned:guest os_type='{os_type}'/></virtuned:virtuned></metadata>"
                       "<features><acpi/><hyperv mode='custom'><spinlocks state='on' "
                       "retries='4096'/></hyperv></features>")


def test_a_metadata_match_selects_and_the_profile_overrides_the_input():
    lib = library(HYPERV_DEFAULTS)
    result = compose(windows_guest("windows"), [], library=lib)
    assert [(a.profile.name, a.reason) for a in result.applied] == \
        [("hyperv-defaults", "matched")]
    hyperv = tree(result.xml).find("features/hyperv")
    assert hyperv.find("spinlocks").get("retries") == "8191"
    assert hyperv.find("relaxed") is not None and hyperv.get("mode") == "custom"
    retries = next(c for c in result.changes if c.path.endswith("@retries"))
    assert (retries.old, retries.new, retries.replaced) == ("4096", "8191", "input")
    assert compose(windows_guest("linux"), [], library=lib).applied == []


def test_the_designs_full_example():
    lib = library(SPICE_STUFF, SENSIBLE_DEFAULTS, HYPERV_DEFAULTS,
                  MYAPP_DEFAULTS.replace("<profile name='myapp-defaults'>",
                                         "<profile name='myapp-defaults' priority='50'>"))
    xml = (f"<domain><name>asdf</name><metadata><virtuned:virtuned xmlns:virtuned='{VIRTUNED}'>"
           "<virtuned:guest os='centos7'/></virtuned:virtuned></metadata>"
           "<memory unit='GiB'>4</memory><devices><disk type='file' device='disk'>"
           "<source file='/path/to/some/disk.img'/><target dev='vda'/></disk>"
           "<graphics type='spice'/><interface type='network'><source network='default'/>"
           "</interface></devices></domain>")
    result = compose(xml, ["spice-stuff", "sensible-defaults", "myapp-defaults"], library=lib,
                     validate=False)
    devices = tree(result.xml).find("devices")
    # myapp-defaults' default (priority 50) beats sensible-defaults' (0): e1000e
    assert devices.find("interface/model").get("type") == "e1000e"
    assert [v.get("type") for v in devices.findall("video/model")] == ["qxl"]
    assert len(devices.findall("redirdev")) == 2
    assert "hyperv-defaults" not in {a.profile.name for a in result.applied}
    model = next(c for c in result.changes if c.path.endswith("interface/model/@type"))
    assert (model.old, model.new, model.replaced) == ("virtio", "e1000e",
                                                      "sensible-defaults@0")


def test_a_hard_default_binds_higher_profiles_too():
    higher = SENSIBLE_DEFAULTS.replace("sensible-defaults'", "sensible-defaults' priority='60'")
    lib = library(higher, MYAPP_DEFAULTS.replace("'myapp-defaults'",
                                                 "'myapp-defaults' priority='50'"))
    with pytest.raises(ProfileConflict, match="sensible-defaults@0 .*myapp-defaults@0 .*hard"):
        compose(guest("<interface type='user'/>"), ["sensible-defaults", "myapp-defaults"],
                library=lib, validate=False)


# -- conditions are evaluated when reached ---------------------------------------------------------------

def test_headless_serial_removes_the_inputs_display_and_adds_video_none():
    shipped = Library.default(system=False, user=False)
    xml = guest("<graphics type='vnc'/><video><model type='vga'/></video>")
    result = compose(xml, ["headless-serial"], library=shipped)
    devices = tree(result.xml).find("devices")
    assert devices.find("graphics") is None
    assert [m.get("type") for m in devices.findall("video/model")] == ["none"]
    kept = compose(xml, ["headless-serial"], library=shipped, input_wins=True)
    assert tree(kept.xml).find("devices/graphics") is not None


# -- modes, plans, the batch API -------------------------------------------------------------------------

def test_input_priority_needs_input_wins():
    with pytest.raises(ComposeError, match="input_priority=50 only applies with input_wins"):
        compose(guest(), [], input_priority=50)


def test_a_plan_is_compiled_once_per_action_and_parameters():
    profile = Library.default(system=False, user=False).get("kvm-base")
    action = next(profile.actions())
    assert action_plan(action, (), profile.id) is action_plan(action, (), profile.id)
    node = action_plan(action, (), profile.id).root
    assert node is not None and node.attrs == (("type", "@type", "kvm"),)


@pytest.mark.parametrize(("test", "free"), [
    ("$domcaps/features/hyperv[@supported = 'yes']/enum/value = 'relaxed'", True),
    ("not($domcaps/*) or $hugepages", True),
    ("$x[position() = 1] and name($caps) = 'capabilities'", True),
    ("devices/video", False), ("not(os/type/@arch)", False), ("/domain", False),
    ("$domain/devices", False), ("count(devices/disk) > $n", False), ("name()", False),
    ("child::memory", False), ("id('x')", False), ("$a|devices", False),
])
def test_which_conditions_read_only_variables(test, free):
    assert reads_only_variables(test) is free


def test_batch_composition_equals_one_by_one():
    shipped = Library.default(system=False, user=False)
    domains = [guest(f"<interface type='user'/>{'<video/>' * n}") for n in range(3)]
    profiles = ["kvm-base", "virtio-linux", "guest-agent"]
    batch = compose_many(domains, profiles, library=shipped)
    assert [r.xml for r in batch] == [compose(d, profiles, library=shipped).xml
                                      for d in domains]
    composer = Composer(shipped, validate=False)
    assert [composer.compose(d, profiles).xml for d in domains] == [r.xml for r in batch]
    with pytest.raises(ComposeError) as info:
        composer.compose_all([domains[0], "<network/>"], profiles)
    assert "<domain #1>" in str(info.value)


def test_cli_input_wins_flag(tmp_path):
    profile = tmp_path / "force.xml"
    profile.write_text(FORCE_VIRTIO_VIDEO)
    xml = guest("<video><model type='vga'/></video>")

    def model(*flags: str) -> str:
        aiovirt = shutil.which("aiovirt", path=str(Path(sys.executable).parent)) or "aiovirt"
        done = subprocess.run([aiovirt, "compose", "--profile-path",
                               str(profile), "-p", "force-virtio-video", *flags, "-"],
                              input=xml, capture_output=True, text=True, check=True)
        return tree(done.stdout).find("devices/video/model").get("type")

    assert model() == "virtio"
    assert model("--input-wins") == "vga"


@pytest.mark.parametrize("action", ["add", "default"])
@pytest.mark.parametrize("removes", ["<features><acpi/></features>", "<features/>"])
@pytest.mark.parametrize("features", ["", "<features><acpi/></features>"])
def test_a_hard_bare_element_holds_whether_or_not_the_input_had_it(action, removes, features):
    # the input's own <acpi/> was claimed by no one (nothing but its presence to own), so a
    # profile of higher priority removed it where on a bare input that was a conflict
    hard = (f"<profile name='a' version='1' priority='10'><{action} constraint='hard'>"
            f"<features><acpi/></features></{action}></profile>")
    remover = (f"<profile name='b' version='1' priority='20'><remove>{removes}</remove>"
               "</profile>")
    with pytest.raises(ProfileConflict, match=r"b@1 \(remove\) .*a@1 .* hard"):
        compose(guest(extra=features), ["a", "b"], library=library(hard, remover),
                validate=False)
    soft = library(hard.replace(" constraint='hard'", ""), remover)
    result = compose(guest(extra=features), ["a", "b"], library=soft, validate=False)
    assert tree(result.xml).find("features/acpi") is None


def _at_ten(name: str, body: str) -> str:
    return f"<profile name='{name}' version='1' priority='10'>{body}</profile>"


TIE_INPUTS = {"bare": guest(), "has it": guest("<graphics type='spice'/>", "<vcpu>1</vcpu>")}
ADD_VCPU, DEFAULT_VCPU = "<add><vcpu>4</vcpu></add>", "<default><vcpu>2</vcpu></default>"


@pytest.mark.parametrize("given", sorted(TIE_INPUTS))
@pytest.mark.parametrize("names", [("a", "b"), ("b", "a")])
def test_equal_priority_outcome_depends_neither_on_names_nor_on_the_input(given, names):
    # whether a tie was an error depended on which profile's name sorted first and on
    # whether the input already had the value (or the element a remove removed)
    xml = TIE_INPUTS[given]
    first, second = names

    def run(one: str, other: str):
        lib = library(_at_ten(first, one), _at_ten(second, other))
        return compose(xml, [first, second], library=lib, validate=False, record=False)

    # a default yields to an add of equal priority: no disagreement, the add's value stands
    result = run(DEFAULT_VCPU, ADD_VCPU)
    assert tree(result.xml).findtext("vcpu") == "4"
    # two defaults that want different values disagree, even where the input decides
    with pytest.raises(ProfileConflict, match="clash at equal priority 10"):
        run(DEFAULT_VCPU, DEFAULT_VCPU.replace("2", "3"))
    run(DEFAULT_VCPU, DEFAULT_VCPU)   # wanting the same is agreeing
    # a remove and an add of what it removes disagree, whether or not there was one
    with pytest.raises(ProfileConflict, match="clash at equal priority 10"):
        run("<remove><devices><graphics/></devices></remove>",
            "<add><devices><graphics type='vnc'/></devices></add>")
