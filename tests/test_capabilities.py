"""Capability sets on capabilities captured from this host's QEMU through real private
daemons: the suite's own, and one whose QEMU capabilities cache is edited (a host-model CPU
feature, the qxl video model and a machine type fewer), plus variants derived in XML."""

from __future__ import annotations

import copy
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest
from lxml import etree

import aiovirt
from aiovirt.capabilities import CapabilityError, CapabilitySet, HostCaps, merge
from aiovirt.capabilities.cpu import NON_MIGRATABLE
from aiovirt.capabilities.live import baseline, merge_live
from aiovirt.capabilities.tree import HOST_FACTS
from aiovirt.cli import main
from aiovirt.compose import Library, compose
from aiovirt.compose.errors import ComposeError
from aiovirt.provision import GuestSpec, Stage, provision, teardown
from aiovirt.testing.daemon import DEFAULT_CAPS_CACHE, PrivateDaemon

QXL = "devices/video/enum[@name='modelType']/value[.='qxl']"
HOST_MODEL = "cpu/mode[@name='host-model']"
OLD_MACHINE = "pc-i440fx-2.0"


def domcaps_of(daemon: PrivateDaemon, virttype: str = "kvm") -> str:
    return daemon.virsh("domcapabilities", "--virttype", virttype, "--machine", "q35")


@pytest.fixture(scope="module")
def real(daemon) -> HostCaps:
    """This host's QEMU, as the suite's daemon reports it."""
    return HostCaps.parse("real", daemon.virsh("capabilities"), domcaps_of(daemon))


def required(host: HostCaps) -> list[str]:
    return [f.get("name") for f in host.domcaps.iterfind(f"{HOST_MODEL}/feature")
            if f.get("policy") == "require"]


@pytest.fixture(scope="module")
def variant(real, tmp_path_factory):
    """A second real daemon whose cached QEMU capabilities lack one host-model CPU feature,
    the qxl device and one machine type (libvirt trusts its cache: it checks times and
    versions, not contents).  Yields (daemon, the feature taken away)."""
    source = Path(DEFAULT_CAPS_CACHE)
    if not source.is_dir():
        pytest.skip(f"no shared QEMU capabilities cache at {source} (needs root)")
    cache = tmp_path_factory.mktemp("edited-qemu-caps")
    shutil.copytree(source, cache, dirs_exist_ok=True)
    # libvirt keeps a cached probe only while the CPUID the daemon read at start-up matches
    # the prober's, and on some VMs CPUID differs per CPU (the x2APIC id): a daemon on one
    # CPU brings the copy in line (probing again if it was made elsewhere) and the variant
    # then runs on that CPU too, so it trusts the edited copy
    cpu = {min(os.sched_getaffinity(0))}
    with PrivateDaemon(tmp_path_factory.mktemp("prober"), qemu_caps_cache=cache,
                       cpus=cpu) as prober:
        prober.virsh("domcapabilities", "--virttype", "kvm")
    entry = next((p for p in cache.glob("*.xml")
                  if "<emulator>/usr/bin/qemu-system-x86_64</emulator>" in p.read_text()),
                 None)
    assert entry is not None, f"no cached capabilities of qemu-system-x86_64 in {source}"
    text = entry.read_text()
    assert real.domcaps.xpath(QXL) and OLD_MACHINE in text
    feature = next(f for f in required(real)
                   if f"<property name='{f}' type='boolean' value='true' migratable='yes'/>"
                   in text)
    text = text.replace(f"<property name='{feature}' type='boolean' value='true' "
                        "migratable='yes'/>",
                        f"<property name='{feature}' type='boolean' value='false' "
                        "migratable='yes'/>", 1)
    text = text.replace("  <flag name='qxl'/>\n", "", 1)
    text, machines = re.subn(rf"  <machine [^\n]*name='{OLD_MACHINE}'[^\n]*\n", "", text)
    assert machines >= 1
    entry.write_text(text)
    with PrivateDaemon(tmp_path_factory.mktemp("variant"), qemu_caps_cache=cache,
                       cpus=cpu) as other:
        yield other, feature


@pytest.fixture(scope="module")
def edited(variant) -> HostCaps:
    daemon, _ = variant
    return HostCaps.parse("edited", daemon.virsh("capabilities"), domcaps_of(daemon))


def derive(host: HostCaps, name: str, drop: tuple[str, ...] = (),
           unsupported: tuple[str, ...] = ()) -> HostCaps:
    """``host`` under another name, without the domcaps elements ``drop`` selects and with
    ``supported='no'`` (and nothing below) where ``unsupported`` selects."""
    domcaps = copy.deepcopy(host.domcaps)
    for path in drop:
        found = domcaps.xpath(path)
        assert found, path
        for element in found:
            element.getparent().remove(element)
    for path in unsupported:
        for element in domcaps.xpath(path):
            element[:] = []
            element.set("supported", "no")
    return HostCaps(name, copy.deepcopy(host.caps), domcaps)


def canonical(root: etree._Element) -> str:
    root = copy.deepcopy(root)
    for path in HOST_FACTS:
        for element in root.findall(path):
            element.getparent().remove(element)
    etree.indent(root)
    return etree.tostring(root, method="c14n").decode()


def has(capset: CapabilitySet, path: str) -> bool:
    return bool(capset.domcaps.xpath(path))


# -- merging ------------------------------------------------------------------------------------

def test_identical_hosts_merge_to_the_host_itself(real):
    capset = merge([real, HostCaps("twin", real.caps, real.domcaps)])
    assert canonical(capset.caps) == canonical(real.caps)
    # but for the features a migrating guest cannot keep (libvirt's MIGRATABLE baseline)
    expected = derive(real, "expected", drop=tuple(
        f"{HOST_MODEL}/feature[@policy='require'][@name='{name}']" for name in
        sorted(NON_MIGRATABLE) if name in required(real)))
    assert canonical(capset.domcaps) == canonical(expected.domcaps)
    assert capset.gaps == () and capset.exclusions() == {}
    assert capset.caps.find("host/uuid") is None      # one machine's facts are left out
    assert capset.cpu.model == real.domcaps.findtext(f"{HOST_MODEL}/model")


def test_k_of_n_keeps_what_k_hosts_have(real):
    tpm_crb = "devices/tpm/enum[@name='model']/value[.='tpm-crb']"
    hyperv = "features/hyperv"
    b = derive(real, "b", drop=(QXL,))
    c = derive(real, "c", drop=(QXL, tpm_crb), unsupported=(hyperv,))
    hosts = [real, b, c]
    every, two, one = (merge(hosts, k) for k in (None, 2, 1))
    assert every.min_hosts == 3
    assert not has(every, QXL) and not has(two, QXL) and has(one, QXL)
    assert not has(every, tpm_crb) and has(two, tpm_crb) and has(one, tpm_crb)
    for capset, supported in ((every, "no"), (two, "yes"), (one, "yes")):
        assert capset.domcaps.find(hyperv).get("supported") == supported
    assert not every.domcaps.xpath(f"{hyperv}/enum") and two.domcaps.xpath(f"{hyperv}/enum")
    # what all three have is in every set, untouched
    for capset in (every, two, one):
        assert has(capset, "devices/video/enum[@name='modelType']/value[.='virtio']")
    # the condition a profile writes reads the set as it reads one host
    test = "$domcaps/devices/video/enum[@name='modelType']/value = 'qxl'"
    assert [etree.XPath(test.replace("$domcaps/", ""))(s.domcaps) for s in (every, one)] == \
        [False, True]


def test_the_report_says_which_hosts_each_capability_excludes(real):
    b = derive(real, "b", drop=(QXL,))
    c = derive(real, "c", drop=(QXL,), unsupported=("features/vmcoreinfo",))
    lenient = merge([real, b, c], min_hosts=1)
    assert lenient.excluded_by()[f"domcaps:{QXL}"] == ("b", "c")
    assert lenient.excluded_by()["domcaps:features/vmcoreinfo[@supported='yes']"] == ("c",)
    assert lenient.exclusions() == {"b": [f"domcaps:{QXL}"],
                                    "c": [f"domcaps:{QXL}",
                                          "domcaps:features/vmcoreinfo[@supported='yes']"]}
    strict = merge([real, b, c])
    assert strict.excluded_by() == {}                  # nothing in it excludes a host
    left_out = strict.excluded_by(kept_only=False)
    assert left_out[f"domcaps:{QXL}"] == ("b", "c")
    report = strict.report()
    assert f"domcaps:{QXL}: only 1, lacking on b, c" in report
    assert strict.to_dict()["gaps"][0]["kept"] is False


def test_maxima_take_what_k_hosts_reach(real):
    low = derive(real, "low")
    low.domcaps.find("vcpu").set("max", "64")
    top = int(real.domcaps.find("vcpu").get("max"))
    assert merge([real, low]).domcaps.find("vcpu").get("max") == "64"
    lenient = merge([real, low], 1)
    assert lenient.domcaps.find("vcpu").get("max") == str(top)
    assert lenient.excluded_by()[f"domcaps:vcpu/@max>={top}"] == ("low",)


def test_a_real_daemon_with_fewer_capabilities(real, edited, variant):
    _, feature = variant
    capset = merge([real, edited])
    assert not has(capset, QXL) and has(merge([real, edited], 1), QXL)
    assert feature not in capset.cpu.required and feature in required(real)
    machines = capset.caps.xpath("guest/arch[@name='x86_64']/machine/text()")
    assert OLD_MACHINE not in machines and "pc-q35-7.2" in machines
    gone = capset.excluded_by(kept_only=False)
    assert gone[f"domcaps:{QXL}"] == ("edited",)
    assert gone[f"domcaps:{HOST_MODEL}/feature[@name='{feature}']"] == ("edited",)
    assert any(what.endswith(f"machine[.='{OLD_MACHINE}']") and hosts == ("edited",)
               for what, hosts in gone.items())


# -- the CPU: libvirt's baseline and the offline one --------------------------------------------

async def test_libvirts_baseline_and_the_offline_one_agree_on_one_model(daemon, real,
                                                                        edited, variant):
    _, feature = variant
    offline = merge([real, edited])
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        live = await baseline(conn, offline)
        whole = await merge_live([conn, conn], names=["x", "y"], virttype="kvm",
                                 machine="q35")
    assert live.cpu.source == "libvirt" and offline.cpu.source == "offline"
    assert live.cpu.model == offline.cpu.model
    assert set(live.cpu.required) == set(offline.cpu.required)
    assert set(live.cpu.disabled) == set(offline.cpu.disabled)
    assert feature not in live.cpu.required
    mode = live.domcaps.find(HOST_MODEL)
    assert mode.get("supported") == "yes" and mode.findtext("model") == live.cpu.model
    assert not any(HOST_MODEL in g.path for g in live.gaps)
    assert whole.cpu.source == "libvirt" and whole.names == ("x", "y")


async def test_hosts_of_different_models_offline_finds_none_libvirt_finds_one(daemon, real):
    model = real.domcaps.findtext(f"{HOST_MODEL}/model")
    # another model of the host's own vendor (libvirt refuses a model of another vendor)
    vendor = real.domcaps.findtext(f"{HOST_MODEL}/vendor")
    choices = ("EPYC-Rome", "EPYC") if vendor == "AMD" else ("Skylake-Client", "Broadwell")
    other = next(m for m in choices if m != model)
    renamed = derive(real, "renamed")
    renamed.domcaps.find(f"{HOST_MODEL}/model").text = other
    offline = merge([real, renamed])
    usable = real.domcaps.xpath(f"cpu/mode[@name='custom']/model[@usable='yes']/text()")
    if model in usable or other in usable:
        pytest.skip("on this host a host-model CPU model is usable on both: offline finds it")
    assert offline.cpu.model is None and "no host-model CPU model" in offline.cpu.note
    assert offline.domcaps.find(HOST_MODEL).get("supported") == "no"
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        live = await baseline(conn, offline)
    assert live.cpu.model and live.domcaps.find(HOST_MODEL).get("supported") == "yes"


# -- compose against a set ----------------------------------------------------------------------

VIDEO = """<profile name='best-video'>
  <choose>
    <when test="$domcaps/devices/video/enum[@name='modelType']/value = 'qxl'">
      <add><devices><video><model type='qxl'/></video></devices></add></when>
    <otherwise><add><devices><video><model type='virtio'/></video></devices></add></otherwise>
  </choose>
  <when test="$caps/guest/arch[@name='x86_64']/machine = 'pc-i440fx-2.0'">
    <add><description>old machines run here</description></add></when>
</profile>"""
TEMPLATE = ("<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>")


def video_library() -> Library:
    library = Library()
    library.add_string(VIDEO)
    return library


def test_compose_takes_a_set_as_caps(real, edited):
    library = video_library()

    def video(capset: CapabilitySet) -> tuple[str, bool]:
        tree = compose(TEMPLATE.format(name="v"), ["best-video"], caps=capset,
                       library=library, validate=False).tree
        return tree.find("devices/video/model").get("type"), tree.find("description") is not None

    assert video(merge([real])) == ("qxl", True)
    assert video(merge([real, edited])) == ("virtio", False)
    assert video(merge([real, edited], 1)) == ("qxl", True)
    with pytest.raises(ComposeError, match="carries its own domcaps"):
        compose(TEMPLATE.format(name="v"), caps=merge([real]), domcaps=real.domcaps,
                library=library)


# -- bad input ----------------------------------------------------------------------------------

def test_bad_input_is_named(real, daemon):
    with pytest.raises(CapabilityError, match=r"host 'h2' capabilities:1: malformed XML: Premature end"):
        HostCaps.parse("h2", "<capabilities><host>")
    with pytest.raises(CapabilityError, match=r"host 'h3' domain capabilities: expected "
                                              r"<domainCapabilities>, found <capabilities>"):
        HostCaps.parse("h3", domcaps="<capabilities/>")
    for k in (0, 3, True, "2"):
        with pytest.raises(CapabilityError, match="min_hosts"):
            merge([real, derive(real, "b")], k)
    with pytest.raises(CapabilityError, match="no hosts"):
        merge([])
    with pytest.raises(CapabilityError, match="'real' given more than once"):
        merge([real, real])
    test_host = HostCaps.parse("testdrv", daemon.virsh("capabilities", uri=daemon.uri()))
    with pytest.raises(CapabilityError, match=r"host architecture .*x86_64 \(real\); "
                                              r"i686 \(testdrv\)"):
        merge([HostCaps("real", real.caps), test_host])
    with pytest.raises(CapabilityError, match="domain capabilities given for real but not "
                                              "for testdrv"):
        merge([real, test_host])
    tcg = HostCaps.parse("tcg", real.caps, domcaps_of(daemon, "qemu"))
    with pytest.raises(CapabilityError, match=r"virt type .*kvm \(real\); qemu \(tcg\)"):
        merge([real, tcg])


# -- the command line ---------------------------------------------------------------------------

def test_cli_merges_files_and_reports(real, edited, tmp_path, capsys):
    for host in (real, edited):
        (tmp_path / host.name).mkdir()
        (tmp_path / host.name / "caps.xml").write_bytes(etree.tostring(host.caps))
        (tmp_path / f"{host.name}.domcaps.xml").write_bytes(etree.tostring(host.domcaps))
    files = sorted(str(p) for p in tmp_path.rglob("*.xml"))
    out = tmp_path / "merged.domcaps.xml"
    assert main(["caps", "merge", *files, "--domcaps-out", str(out)]) == 0
    printed = capsys.readouterr()
    assert etree.fromstring(printed.out.encode()).tag == "capabilities"
    assert f"domcaps:{QXL}: only 1, lacking on edited" in printed.err
    assert "2 hosts (edited, real)" in printed.err or "2 hosts (real, edited)" in printed.err
    assert not etree.parse(str(out)).getroot().xpath(QXL)
    assert main(["caps", "merge", *files, "--min-hosts", "1", "--report-only", "--json"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["exclusions"]["edited"][0].startswith("caps:") and report["min_hosts"] == 1
    assert main(["caps", "merge", *files, "-k", "3"]) == 1
    assert "min_hosts=3: give a number from 1 to the number of hosts (2)" in \
        capsys.readouterr().err
    (tmp_path / "junk.xml").write_text("<domain/>")
    assert main(["caps", "merge", str(tmp_path / "junk.xml")]) == 1
    assert "junk.xml: expected <capabilities or domainCapabilities>, found <domain>" in \
        capsys.readouterr().err


# -- provisioning -------------------------------------------------------------------------------

async def test_a_migratable_spec_composes_against_the_fleet(daemon, variant):
    other, _ = variant
    hosts = [daemon.uri("qemu", "/system"), other.uri("qemu", "/system")]
    library = video_library()
    p = f"mig{uuid.uuid4().hex[:6]}"
    reports = []
    try:
        for migratable in (False, True):
            spec = GuestSpec(TEMPLATE.format(name=p), ["best-video"], count=2,
                             name=f"{p}-{'m' if migratable else 'h'}{{n}}", start=False,
                             migratable=migratable)
            report = await provision(hosts, spec, placement="spread", library=library)
            reports.append(report)
            assert report.ok and {r.host for r in report.results} == set(hosts), \
                report.to_json()
            videos = {}
            for result in report.results:
                owner = daemon if result.host == hosts[0] else other
                xml = etree.fromstring(owner.virsh("dumpxml", result.name).encode())
                videos[result.host] = xml.find("devices/video/model").get("type")
            if migratable:
                assert videos == {hosts[0]: "virtio", hosts[1]: "virtio"}
                assert any("spec 0 is migratable" in n and "(libvirt)" in n
                           for n in report.notes), report.notes
            else:
                assert videos == {hosts[0]: "qxl", hosts[1]: "virtio"}
    finally:
        for report in reports:
            await teardown(hosts, report=report)
    for owner in (daemon, other):
        assert p not in owner.virsh("list", "--all", "--name")


async def test_a_migratable_spec_over_unlike_hosts_fails_to_compose(daemon):
    hosts = [daemon.uri("qemu", "/system"), daemon.uri("test", "/default")]
    spec = GuestSpec(TEMPLATE.format(name=f"mig{uuid.uuid4().hex[:6]}"), ["best-video"],
                     start=False, migratable=True)
    report = await provision(hosts, spec, library=video_library())
    result = report.results[0]
    assert result.stage is Stage.FAILED and result.failed_at == "compose"
    assert "migratable: domain capabilities given for" in result.error


def test_migratable_round_trips_and_is_checked():
    spec = GuestSpec(TEMPLATE.format(name="x"), migratable=True)
    assert spec.to_dict()["migratable"] is True
    assert GuestSpec.from_dict(spec.to_dict()).migratable is True
    assert "migratable" not in GuestSpec(TEMPLATE.format(name="x")).to_dict()
    with pytest.raises(Exception, match="migratable is true or false"):
        GuestSpec.from_dict({"template": TEMPLATE, "migratable": "yes"})


async def test_migratable_on_hosts_without_domcaps_and_with_a_bad_profile(daemon, node_xml):
    hosts = [daemon.uri(path=node_xml), daemon.uri(path=node_xml)]   # private test hosts
    good = GuestSpec("<domain type='test'><name>m{n}</name><memory>1024</memory>"
                     "<os><type>hvm</type></os></domain>", name="m{n}", count=2,
                     start=False, migratable=True)
    bad = GuestSpec(good.template, ["no-such-profile"], name="bad", migratable=True)
    report = await provision(hosts, [good, bad], placement="spread", library=Library())
    first, second, third = report.results
    assert first.stage is second.stage is Stage.DEFINED, report.to_json()
    assert any("spec 0 is migratable" in n and "host-model CPU none" in n
               for n in report.notes)
    assert third.stage is Stage.FAILED and third.failed_at == "compose"
    assert "no-such-profile" in third.error
