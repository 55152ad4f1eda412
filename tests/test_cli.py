"""The ``aiovirt`` command line, run as a real process (the installed console script)."""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

AIOVIRT = shutil.which("aiovirt", path=str(Path(sys.executable).parent)) or "aiovirt"
PARTIAL = "<domain><name>cli-vm</name></domain>"


# a bare environment, with the code under test where it is not the one installed
CLI_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
           **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AIOVIRT, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env=CLI_ENV)


def test_compose_from_stdin_with_explain():
    done = run("compose", "-p", "kvm-base", "-p", "guest-agent", "-p", "q35-hotplug",
               "--param", "count=2", "--explain", "-", stdin=PARTIAL)
    assert done.returncode == 0, done.stderr
    domain = etree.fromstring(done.stdout.encode())
    assert domain.findtext("name") == "cli-vm"
    assert len(domain.findall("devices/controller[@model='pcie-root-port']")) == 2
    assert "applied q35-hotplug@1.0 (priority 10, requested) count=2" in done.stderr
    assert "guest-agent@1.0 add: added /domain/devices/channel" in done.stderr


def test_compose_file_with_capabilities_as_json(tmp_path):
    (tmp_path / "vm.xml").write_text(PARTIAL)
    domcaps = ("<domainCapabilities><machine>pc-q35-7.2</machine><features>"
               "<hyperv supported='yes'><enum name='features'><value>spinlocks</value>"
               "</enum></hyperv></features></domainCapabilities>")
    (tmp_path / "domcaps.xml").write_text(domcaps)
    done = run("compose", "-p", "kvm-base", "-p", "windows-hyperv", "-p", "usb3",
               "--domcaps", str(tmp_path / "domcaps.xml"), "--json", str(tmp_path / "vm.xml"))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    domain = etree.fromstring(data["xml"].encode())
    assert [e.tag for e in domain.find("features/hyperv")] == ["spinlocks"]  # gated
    assert domain.find("devices/controller[@type='usb']").get("model") == "qemu-xhci"
    assert data["validated"] is True
    assert {a["profile"] for a in data["applied"]} == \
        {"kvm-base@1.0", "windows-hyperv@1.0", "usb3@1.0"}


def test_profile_path_adds_application_profiles(tmp_path):
    (tmp_path / "app.xml").write_text(
        "<profile name='app-title' version='3'><param name='title'/>"
        "<add><title>${title}</title></add></profile>")
    done = run("compose", "--profile-path", str(tmp_path), "-p", "kvm-base", "-p",
               "app-title", "--param", "app-title.title=hello", "-", stdin=PARTIAL)
    assert done.returncode == 0, done.stderr
    assert etree.fromstring(done.stdout.encode()).findtext("title") == "hello"


@pytest.mark.parametrize("args, stdin, message", [
    (["compose", "-p", "nosuch", "-"], PARTIAL, "unknown profile 'nosuch'"),
    (["compose", "-p", "nfv-realtime", "-"], PARTIAL, "needs parameter 'vcpu_cpus'"),
    (["compose", "-"], "<domain><name>x</name>", "<stdin>:1: "),
    (["compose", "--param", "novalue", "-"], PARTIAL, "expected NAME=VALUE"),
    (["compose", "-p", "spice-desktop", "-p", "headless-serial", "-"], PARTIAL, "conflicts"),
    (["compose", "/nonexistent.xml"], None, "/nonexistent.xml: cannot read"),
    (["address", "--reserve", "99999999999", "-"], PARTIAL.replace(
        "<name>", "<os><type arch='x86_64' machine='q35'>hvm</type></os><name>"),
     "hotplug_reserve must be a whole number from 0 to 1024"),   # ran without end
])
def test_errors_are_one_clear_line(args, stdin, message):
    done = run(*args, stdin=stdin)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("aiovirt: error: ") and message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("body, message", [
    ('[1, 2]', "expected a JSON object ({machine, devices, tunables}), not list"),
    ('{"machine": {"bogus": 1}}', "machine: unknown fields bogus"),
    ('{"machine": "q35"}', "machine: expected an object, not 'q35'"),
    ('{"tunables": {"x": 1}}', "tunables: unknown fields x"),
    ('{"devices": [{"kind": "disk", "bus": "virtio", "target": 5}]}',
     "devices[0] disk target: expected a string, not 5"),
    ('{"machine": {"machine": "q35"}, "devices": [{"kind": "controller", "type": "pci", '
     '"model": "pcie-root-port", "index": -3}]}',
     "devices[0] controller index: expected a whole number from 0 to 1023, not -3"),
    ('{"devices": [{"kind": "disk", "index": ' + "9" * 5000 + '}]}', "not JSON"),
])
def test_address_devices_json_of_the_wrong_shape_is_one_clear_line(body, message):
    # each used to end in a traceback (AttributeError, TypeError, IndexError)
    done = run("address", "--devices-json", "-", stdin=body)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("aiovirt: error: ") and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_usage_errors_exit_2():
    done = run("compose")
    assert done.returncode == 2 and "usage:" in done.stderr


def test_profiles_list_and_show():
    listing = run("profiles", "list", "--json")
    assert listing.returncode == 0
    names = {p["name"] for p in json.loads(listing.stdout)}
    assert {"kvm-base", "windows-hyperv", "nfv-realtime", "uefi-secure-boot"} <= names
    text = run("profiles", "list").stdout
    assert any(line.startswith("q35-hotplug@1.0") for line in text.splitlines())
    show = run("profiles", "show", "nfv-realtime")
    assert show.returncode == 0
    assert "vcpu_cpus (string, required)" in show.stdout
    assert "hugepages (bool, default 'yes')" in show.stdout


def test_profiles_validate(tmp_path):
    good = tmp_path / "good.xml"
    good.write_text("<profile name='g'><add><devices><rng model='virtio'>"
                    "<backend model='random'>/dev/urandom</backend></rng></devices></add>"
                    "</profile>")
    bad = tmp_path / "bad.xml"
    bad.write_text("<profile name='b'>\n<add>\n<devices>\n<vidoe/>\n</devices>\n</add>\n"
                   "</profile>\n")
    broken = tmp_path / "broken.xml"
    broken.write_text("<profile name='c'>\n<add>\n")
    done = run("profiles", "validate", str(good), str(bad), str(broken))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert f"{good}: ok (g@0)" in lines
    assert f"{bad}:4: <vidoe> is not allowed in <devices> by libvirt's domain schema" in lines
    assert any(line.startswith(f"{broken}:3: ") for line in lines)
    shipped = sorted(Path(__file__).resolve().parents[1].glob("profiles/*.xml"))
    assert run("profiles", "validate", *map(str, shipped)).returncode == 0


# -- addressing: `aiovirt address` and `aiovirt compose --address` ---------------------------------

ADDRESSED = """<domain type='kvm'><name>{name}</name><memory unit='MiB'>128</memory>
<vcpu>2</vcpu><cpu><numa><cell id='0' cpus='0' memory='65536'/>
<cell id='1' cpus='1' memory='65536'/></numa></cpu>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>
<disk type='file' device='disk'><source file='/var/lib/libvirt/images/{name}.qcow2'/>
<target dev='vda' bus='virtio'/></disk>
<interface type='user'><model type='virtio'/><alias name='ua-net0'/></interface>
<interface type='user'><model type='virtio'/><alias name='ua-net1'/></interface>
<interface type='user'><model type='e1000'/><alias name='ua-net2'/></interface>
<input type='tablet' bus='usb'/></devices></domain>"""


def pci_bus(element) -> int:
    return int(element.find("address").get("bus"), 16)


def empty_root_ports(domain) -> list[int]:
    """Indexes of the pcie-root-ports nothing is plugged into."""
    used = {int(a.get("bus"), 16) for a in domain.iter("address") if a.get("type") == "pci"}
    return [int(c.get("index")) for c in domain.findall("devices/controller")
            if c.get("model") == "pcie-root-port" and int(c.get("index")) not in used]


async def test_address_prints_what_libvirt_itself_assigns(tmp_path, daemon):
    import aiovirt
    from aiovirt.address import address_domain

    from .test_address_live import agreement_tool

    name = f"cli-addr-{__import__('uuid').uuid4().hex[:6]}"
    text = ADDRESSED.format(name=name)
    (tmp_path / "vm.xml").write_text(text)
    done = run("address", str(tmp_path / "vm.xml"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == address_domain(text).xml     # the command is the library, exactly
    out = etree.fromstring(done.stdout.encode())
    for device in ("disk", "interface", "memballoon"):
        for element in out.findall(f"devices/{device}"):
            assert element.find("address").get("type") == "pci", etree.tostring(element)
    assert out.find("devices/input/address").attrib == {"type": "usb", "bus": "0", "port": "1"}
    # the truth: libvirt's own addresses for the same input, from the suite's daemon
    async with aiovirt.connect(daemon.uri("qemu", "/system")) as conn:
        dom = await conn.define_xml(text)
        try:
            theirs = await dom.xml(2)       # VIR_DOMAIN_XML_INACTIVE
        finally:
            await dom.undefine()
    address_map = agreement_tool().address_map
    ours = address_map(done.stdout)
    assert len(ours) >= 12 and ours == address_map(theirs)


def test_address_tuned_from_stdin():
    from aiovirt.address import Tunables, address_domain

    text = ADDRESSED.format(name="cli-tuned")
    done = run("address", "--reserve", "4", "--numa", "ua-net1=1", "-", stdin=text)
    assert done.returncode == 0, done.stderr
    assert done.stdout == address_domain(text, Tunables(hotplug_reserve=4),
                                         device_tunables={"ua-net1": {"numa_node": 1}}).xml
    out = etree.fromstring(done.stdout.encode())
    assert len(empty_root_ports(out)) == 4
    # ua-net1 sits in a root port on an expander bus of guest NUMA node 1
    controllers = {int(c.get("index")): c for c in out.findall("devices/controller")
                   if c.get("type") == "pci"}

    def upstream(alias: str) -> list[str]:
        """The models of the controllers between a NIC and pcie-root."""
        models, bus = [], pci_bus(out.xpath(f"devices/interface[alias/@name='{alias}']")[0])
        while bus != 0:
            models.append(controllers[bus].get("model"))
            bus = pci_bus(controllers[bus])
        return models

    assert upstream("ua-net1") == ["pcie-root-port", "pcie-expander-bus"]
    [expander] = [c for c in controllers.values() if c.get("model") == "pcie-expander-bus"]
    assert expander.findtext("target/node") == "1"
    assert upstream("ua-net0") == ["pcie-root-port"]          # the others: not behind it
    assert upstream("ua-net2") == ["pcie-to-pci-bridge", "pcie-root-port"]   # e1000: PCI
    untuned = run("address", "-", stdin=text)
    assert untuned.returncode == 0 and empty_root_ports(
        etree.fromstring(untuned.stdout.encode())) != empty_root_ports(out)


def test_compose_with_address(tmp_path):
    from aiovirt.address import Tunables, address_domain
    from aiovirt.compose import Library, compose

    from .test_address_live import agreement_tool

    partial = ("<domain><name>cli-vm</name><os><type machine='q35'>hvm</type></os><devices>"
               "<interface type='user'/><disk type='file' device='disk'><source "
               "file='/images/cli-vm.qcow2'/><target dev='vda'/></disk></devices></domain>")
    (tmp_path / "vm.xml").write_text(partial)
    args = ("compose", "-p", "kvm-base", "-p", "virtio-linux", "--no-system-profiles")
    done = run(*args, "--address", "--reserve", "4", str(tmp_path / "vm.xml"))
    assert done.returncode == 0, done.stderr
    expected = compose(partial, ["kvm-base", "virtio-linux"], address=Tunables(hotplug_reserve=4),
                       library=Library.default(system=False, user=False),
                       source=str(tmp_path / "vm.xml"))
    assert done.stdout == expected.xml
    out = etree.fromstring(done.stdout.encode())
    assert out.findtext("name") == "cli-vm" and out.get("type") == "kvm"
    for device in ("interface", "disk", "memballoon"):      # virtio-linux made them virtio
        assert out.find(f"devices/{device}/address").get("type") == "pci", device
    assert out.find("devices/interface/model").get("type") == "virtio"
    assert len(empty_root_ports(out)) == 4
    # without --address nothing is addressed; addressing that afterwards gives the same
    plain = run(*args, str(tmp_path / "vm.xml"))
    assert plain.returncode == 0, plain.stderr
    assert etree.fromstring(plain.stdout.encode()).find(".//address") is None
    address_map = agreement_tool().address_map
    assert address_map(done.stdout) == address_map(
        address_domain(plain.stdout, Tunables(hotplug_reserve=4)).xml)


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "aiovirt", "compose", "-p", "kvm-base", "-"],
                          input=PARTIAL, capture_output=True, text=True, timeout=60,
                          env=CLI_ENV)
    assert done.returncode == 0, done.stderr
    assert etree.fromstring(done.stdout.encode()).findtext("name") == "cli-vm"
    usage = subprocess.run([sys.executable, "-m", "aiovirt", "compose"], capture_output=True,
                           text=True, timeout=60, env=CLI_ENV)
    assert usage.returncode == 2 and "usage: aiovirt compose" in usage.stderr


def test_serve_refuses_a_bad_port_or_unusable_tls_files(tmp_path):
    """``--port 99999`` bound another port and logged the wrong one; a missing certificate
    was uvicorn's FileNotFoundError traceback."""
    bad_port = run("serve", "--port", "99999")
    assert bad_port.returncode == 2 and "99999: a port is from 0 to 65535" in bad_port.stderr
    (tmp_path / "cert.pem").write_text("not a certificate")
    for cert in ("/nonexistent.pem", str(tmp_path / "cert.pem")):
        done = run("serve", "--port", "0", "--tls-cert", cert, "--tls-key", cert)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith(f"aiovirt: error: --tls-cert/--tls-key {cert} / {cert}"
                                      ": cannot use them"), done.stderr


def test_help_follows_the_terminal_width_without_loading_shutil(tmp_path):
    # argparse imports shutil (and its compression modules) to learn the terminal's width;
    # the CLI's formatter asks the OS itself, as shutil would: $COLUMNS, then the terminal
    narrow = subprocess.run([AIOVIRT, "address", "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "50"}, check=True).stdout
    wide = subprocess.run([AIOVIRT, "address", "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, check=True).stdout
    assert len(narrow.splitlines()) > len(wide.splitlines())
    assert max(map(len, narrow.splitlines())) < max(map(len, wide.splitlines()))
    domain = tmp_path / "d.xml"
    domain.write_text("<domain type='kvm'><name>w</name><memory>1</memory><os><type "
                      "arch='x86_64' machine='q35'>hvm</type></os><devices/></domain>")
    code = ("import sys; from aiovirt.cli import main; main(['address', sys.argv[1]]); "
            "print('shutil' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, str(domain)], capture_output=True,
                          text=True, check=True)
    assert "<address" in done.stdout and done.stderr.strip() == "False"
