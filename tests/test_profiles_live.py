"""Every shipped profile, composed onto minimal domains and defined on the suite's real
libvirtd (QEMU driver); started as a KVM guest where /dev/kvm exists and the host allows what
the profile asks for (a host that cannot is named in the skip)."""

from __future__ import annotations

import uuid

import pytest
from lxml import etree

import aiovirt
from aiovirt.compose import Library, compose

SHIPPED = Library.default(system=False, user=False)
MINIMAL = {"pc": "<domain><name>{name}</name></domain>",
           "q35": "<domain><name>{name}</name><os><type machine='q35'>hvm</type></os></domain>"}
PARAMS = {"nfv-realtime": {"vcpu_cpus": "0", "emulator_cpus": "0", "hugepages": "no"}}
# what libvirt's own (inactive) XML must show once the composed domain is defined
EXPECT = {
    "kvm-base": ["@type = 'kvm'", "os/type = 'hvm'", "features/acpi", "on_crash = 'destroy'"],
    "q35": ["starts-with(os/type/@machine, 'pc-q35')"],
    "q35-hotplug": ["count(devices/controller[@model = 'pcie-root-port']) >= 4"],
    "virtio-linux": ["devices/memballoon/@model = 'virtio'", "clock/@offset = 'utc'"],
    "windows-hyperv": ["features/hyperv/spinlocks/@retries = '8191'",
                       "clock/@offset = 'localtime'", "clock/timer[@name = 'hpet']/@present = 'no'"],
    "guest-agent": ["devices/channel[@type = 'unix']/target/@name = 'org.qemu.guest_agent.0'"],
    "crash-diagnostics": ["devices/panic/@model = 'isa'", "features/vmcoreinfo/@state = 'on'"],
    "uefi-secure-boot": ["os/@firmware = 'efi'", "starts-with(os/type/@machine, 'pc-q35')", "features/smm/@state = 'on'",
                         "devices/tpm/backend/@type = 'emulator'",
                         "os/firmware/feature[@name = 'secure-boot']/@enabled = 'yes'"],
    "spice-desktop": ["devices/graphics/@type = 'spice'", "devices/video/model/@type = 'qxl'",
                      "count(devices/redirdev) = 2", "devices/audio/@type = 'spice'",
                      "devices/channel/target/@name = 'com.redhat.spice.0'"],
    "headless-serial": ["not(devices/graphics)", "devices/video/model/@type = 'none'",
                        "devices/console/@type = 'pty'"],
    "usb3": ["devices/controller[@type = 'usb']/@model = 'qemu-xhci'"],
    "virtio-rng": ["devices/rng/backend = '/dev/urandom'"],
    "balloon-stats": ["devices/memballoon/stats/@period = '10'"],
    "nfv-realtime": ["vcpu/@cpuset = '0'", "cputune/emulatorpin/@cpuset = '0'",
                     "devices/memballoon/@model = 'none'", "cpu/@mode = 'host-passthrough'"],
}
# what a host must be able to do to start a profile's guest: (probe domain fragment, why)
NEEDS = {
    "uefi-secure-boot": ("<os><type machine='q35'>hvm</type></os>"
                         "<features><smm state='on'/></features>", "SMM"),
    "nfv-realtime": ("<os><type>hvm</type></os><cpu mode='host-passthrough'/>",
                     "host-passthrough CPUs"),
}


def test_every_shipped_profile_has_a_live_check():
    assert sorted(EXPECT) == sorted(p.name for p in SHIPPED)
    assert len(EXPECT) >= 12


@pytest.fixture(scope="module")
def host_caps(daemon):
    """The QEMU driver's capabilities, as profiles' conditions see them."""
    domcaps = daemon.virsh("domcapabilities", "--virttype", "kvm", "--machine", "q35")
    return daemon.virsh("capabilities"), domcaps


def composed(name: str, profile: str, machine: str, caps: tuple[str, str]) -> str:
    profiles = ["kvm-base", profile] if profile != "kvm-base" else ["kvm-base"]
    result = compose(MINIMAL[machine].format(name=name), profiles,
                     params={**PARAMS.get(profile, {}), "kvm-base.memory": "64"},
                     caps=caps[0], domcaps=caps[1], library=SHIPPED)
    assert result.validated
    return result.xml


async def host_can(conn: aiovirt.Connection, profile: str) -> str | None:
    """None if the host can start what ``profile`` needs, else libvirt's reason."""
    if profile not in NEEDS:
        return None
    fragment, what = NEEDS[profile]
    probe = await conn.define_xml(f"<domain type='kvm'><name>probe-{uuid.uuid4().hex[:8]}"
                                  f"</name><memory unit='MiB'>32</memory>{fragment}</domain>")
    try:
        await probe.start()
        await probe.destroy()
        return None
    except aiovirt.LibvirtError as exc:
        return f"this host cannot start guests with {what}: {str(exc).splitlines()[-1]}"
    finally:
        await probe.undefine()


@pytest.mark.parametrize("machine", ["pc", "q35"])
@pytest.mark.parametrize("profile", sorted(EXPECT))
async def test_shipped_profile_defines(daemon, host_caps, profile, machine):
    name = f"prof-{profile}-{uuid.uuid4().hex[:6]}"
    xml = composed(name, profile, machine, host_caps)
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(xml)
        try:
            defined = etree.fromstring((await dom.xml(2)).encode())  # VIR_DOMAIN_XML_INACTIVE
            for check in EXPECT[profile]:
                assert defined.xpath(f"boolean({check})"), (check, etree.tostring(defined))
            # libvirt kept the record of what was applied
            assert defined.xpath("count(metadata/*[local-name() = 'profiles']/*"
                                 "[local-name() = 'applied']/*)") >= 1
        finally:
            await dom.undefine(4)  # VIR_DOMAIN_UNDEFINE_NVRAM


@pytest.mark.kvm
@pytest.mark.parametrize("profile", sorted(EXPECT))
async def test_shipped_profile_starts(daemon, host_caps, profile):
    machine = "q35" if profile in ("uefi-secure-boot", "q35", "q35-hotplug") else "pc"
    name = f"run-{profile}-{uuid.uuid4().hex[:6]}"
    xml = composed(name, profile, machine, host_caps)
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        reason = await host_can(conn, profile)
        if reason is not None:
            pytest.skip(reason)
        dom = await conn.define_xml(xml)
        try:
            await dom.start()
            state, _ = await dom.state()
            assert state == aiovirt.DomainState.RUNNING
            live = etree.fromstring((await dom.xml()).encode())
            for check in EXPECT[profile]:
                assert live.xpath(f"boolean({check})"), check
            await dom.destroy()
        finally:
            if await dom.is_active():
                await dom.destroy()
            await dom.undefine(4)


DESIGN_PROFILES = """<profiles>
  <profile name='force-virtio-video' version='1' priority='20'>
    <add multiple='no'><devices><video><model type='virtio'/></video></devices></add>
  </profile>
  <profile name='no-apic' version='1' priority='10'>
    <remove constraint='hard'><features><apic/></features></remove>
  </profile>
</profiles>"""


async def test_design_semantics_define(daemon, host_caps):
    """Profiles act on the template's own values (0.2's default): its vga becomes virtio,
    its apic goes, and libvirt keeps what was composed."""
    library = Library.default(system=False, user=False)
    library.add_string(DESIGN_PROFILES)
    name = f"design-{uuid.uuid4().hex[:6]}"
    template = (f"<domain><name>{name}</name><features><acpi/><apic eoi='on'/></features>"
                "<devices><video><model type='vga' vram='16384'/></video></devices></domain>")
    result = compose(template, ["kvm-base", "no-apic", "force-virtio-video"],
                     params={"kvm-base.memory": "64"}, caps=host_caps[0],
                     domcaps=host_caps[1], library=library)
    assert result.validated
    assert {(c.path, c.old, c.new) for c in result.changes if c.replaced == "input"} >= {
        ("/domain/devices/video/model/@type", "vga", "virtio")}
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(result.xml)
        try:
            defined = etree.fromstring((await dom.xml(2)).encode())
            assert [m.get("type") for m in defined.findall("devices/video/model")] == \
                ["virtio"]
            assert defined.find("features/apic") is None
            assert defined.find("features/acpi") is not None
        finally:
            await dom.undefine(4)


@pytest.mark.parametrize("vcpu", ["", "<vcpu>4</vcpu>"])
async def test_nfv_realtime_composed_again_defines_the_same(daemon, host_caps, vcpu):
    """realtime_vcpus (select=) counts the vCPUs the domain has at nfv-realtime's turn:
    kvm-base's 4 on a bare input gave vCPU 0 only, and composing that output again added a
    second <vcpusched> for 0-3, which libvirt refuses ("must not overlap")."""
    params = {"vcpu_cpus": "0", "emulator_cpus": "0", "hugepages": "no", "realtime": "yes",
              "vcpus": "4", "kvm-base.memory": "64"}
    name = f"nfv-rt-{uuid.uuid4().hex[:6]}"
    first = compose(f"<domain><name>{name}</name>{vcpu}</domain>", ["kvm-base", "nfv-realtime"],
                    params=params, caps=host_caps[0], domcaps=host_caps[1], library=SHIPPED)
    second = compose(first.xml, ["kvm-base", "nfv-realtime"], params=params,
                     caps=host_caps[0], domcaps=host_caps[1], library=SHIPPED)
    assert second.xml == first.xml and second.changes == [] and second.upgrades == []
    assert [s.get("vcpus") for s in etree.fromstring(second.xml.encode()).findall(
        "cputune/vcpusched")] == ["0-3"]
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(second.xml)
        try:
            defined = etree.fromstring((await dom.xml(2)).encode())
            # (libvirt writes one <vcpusched> per vCPU back)
            assert [s.get("vcpus") for s in defined.findall("cputune/vcpusched")] == \
                ["0", "1", "2", "3"]
        finally:
            await dom.undefine(4)


async def test_nfv_realtime_recomposed_from_libvirts_xml_defines(daemon, host_caps):
    """A domain read back from libvirt (one <vcpusched> per vCPU) composed again: the first
    was adjusted to 0-3 and the others stayed, overlapping, which libvirt refuses."""
    params = {"vcpu_cpus": "0", "emulator_cpus": "0", "hugepages": "no", "realtime": "yes",
              "vcpus": "4", "kvm-base.memory": "64"}
    name = f"nfv-back-{uuid.uuid4().hex[:6]}"
    first = compose(f"<domain><name>{name}</name></domain>", ["kvm-base", "nfv-realtime"],
                    params=params, caps=host_caps[0], domcaps=host_caps[1], library=SHIPPED)
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(first.xml)
        try:
            back = await dom.xml(2)
            again = compose(back, ["kvm-base", "nfv-realtime"], params=params,
                            caps=host_caps[0], domcaps=host_caps[1], library=SHIPPED)
            assert [s.get("vcpus") for s in etree.fromstring(again.xml.encode()).findall(
                "cputune/vcpusched")] == ["0-3"]
            dom = await conn.define_xml(again.xml)
            defined = etree.fromstring((await dom.xml(2)).encode())
            assert [s.get("vcpus") for s in defined.findall("cputune/vcpusched")] == \
                ["0", "1", "2", "3"]
        finally:
            await dom.undefine(4)
