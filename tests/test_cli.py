"""The ``aiovirt`` command line, run as a real process (the installed console script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

AIOVIRT = shutil.which("aiovirt", path=str(Path(sys.executable).parent)) or "aiovirt"
PARTIAL = "<domain><name>cli-vm</name></domain>"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AIOVIRT, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})


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
])
def test_errors_are_one_clear_line(args, stdin, message):
    done = run(*args, stdin=stdin)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("aiovirt: error: ") and message in done.stderr
    assert "Traceback" not in done.stderr


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
