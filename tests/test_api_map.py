"""The libvirt API map (rpc/apimap.py): complete, consistent with our protocol tables, and
committed as the generator writes it."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from aiovirt.protocol import admin, lxc, qemu, remote
from rpc import apimap

ROOT = Path(__file__).resolve().parent.parent
LIBVIRT_TREE = Path(os.environ.get("AIOVIRT_LIBVIRT_SRC", ROOT / ".libvirt-src" / "libvirt-9.0.0"))
XML_DIR = apimap.API_XML_DIR
MODULES = {"REMOTE": remote, "QEMU": qemu, "LXC": lxc, "ADMIN": admin}
CATEGORIES = {"remote", "client-side", "unsupported"}

needs_xml = pytest.mark.skipif(
    not all((XML_DIR / name).exists() for name in apimap.API_XML.values()),
    reason=f"libvirt's API descriptions are missing from {XML_DIR} (apt-get install libvirt-dev)")


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads((ROOT / apimap.MAP_PATH).read_text())


def _xml_functions(name: str) -> list[str]:
    return [f.get("name") for f in ET.parse(XML_DIR / name).getroot().iter("function")]


def _procedure(const: str):
    module = MODULES[const.split("_", 1)[0]]
    number = getattr(module, const, None)
    assert number is not None, f"{const} is not in aiovirt.protocol"
    return module.PROCEDURES[number]


@needs_xml
def test_every_public_function_appears_once_with_a_category(committed):
    for section, key in (("libvirt", "functions"), ("qemu", "functions"),
                         ("lxc", "functions"), ("admin", "admin_functions")):
        names = _xml_functions(apimap.API_XML[section])
        assert len(names) == len(set(names))
        for name in names:
            entry = committed[key].get(name)
            assert entry is not None, f"{name} is missing from the map"
            assert entry["category"] in CATEGORIES, name
            if entry["category"] != "remote":
                assert entry["reason"], f"{name} has no reason"
    public = set().union(*(_xml_functions(apimap.API_XML[s]) for s in ("libvirt", "qemu", "lxc")))
    assert set(committed["functions"]) == public
    assert set(committed["admin_functions"]) == set(_xml_functions(apimap.API_XML["admin"]))


def test_every_named_procedure_exists(committed):
    entries = list(committed["functions"].values()) + list(committed["admin_functions"].values())
    for entry in entries:
        if entry["category"] == "remote":
            assert entry["procedures"]
        for const in entry["procedures"]:
            _procedure(const)
    for const in committed["unnamed_procedures"]:
        _procedure(const)


def test_no_call_on_the_wire_is_orphaned(committed):
    named = {p for e in list(committed["functions"].values()) +
             list(committed["admin_functions"].values()) for p in e["procedures"]}
    unnamed = committed["unnamed_procedures"]
    for prefix, module in MODULES.items():
        for number, info in module.PROCEDURES.items():
            const = f"{prefix}_PROC_{info.name.upper()}"
            assert getattr(module, const) == number
            if info.event:
                continue
            assert const in named or unnamed.get(const, {}).get("reason"), \
                f"{const} is neither sent by a public function nor listed with a reason"
            assert not (const in named and const in unnamed), const


def test_aiovirt_methods_are_real(committed):
    """Every method the map credits exists (the scan found real Class.method names)."""
    from aiovirt.api import (checkpoint, connection, domain, events, host, interface, network,
                             nodedev, nwfilter, secret, snapshot, storage)
    from aiovirt.client import admin as admin_client
    classes = {}
    for module in (connection, domain, events, host, network, nodedev, secret, storage,
                   snapshot, checkpoint, interface, nwfilter, admin_client):
        classes.update({k: v for k, v in vars(module).items() if isinstance(v, type)})
    entries = list(committed["functions"].values()) + list(committed["admin_functions"].values())
    for entry in entries:
        for method in entry["aiovirt"]:
            if method.startswith("aiovirt."):
                continue
            cls, _, attr = method.partition(".")
            assert hasattr(classes[cls], attr), method


def test_known_wire_facts(committed):
    f = committed["functions"]
    assert f["virDomainGetInfo"]["procedures"] == ["REMOTE_PROC_DOMAIN_GET_INFO"]
    assert "Domain.info" in f["virDomainGetInfo"]["aiovirt"]
    assert f["virDomainQemuMonitorCommand"]["procedures"] == ["QEMU_PROC_DOMAIN_MONITOR_COMMAND"]
    assert f["virDomainLxcOpenNamespace"]["procedures"] == ["LXC_PROC_DOMAIN_OPEN_NAMESPACE"]
    assert any("VIR_TYPED_PARAM_STRING_OKAY" in n for n in f["virDomainGetCPUStats"]["notes"])
    assert any("transport" in n for n in f["virConnectIsSecure"]["notes"])
    assert any("`ret`" in n for n in f["virDomainGetSecurityLabelList"]["notes"])
    assert f["virDomainGetName"]["category"] == "client-side"
    assert f["virConnectOpen"]["kind"] == "connect"
    assert "REMOTE_PROC_CONNECT_OPEN" in f["virConnectOpen"]["procedures"]


@needs_xml
def test_regeneration_is_byte_identical(tmp_path):
    if not (LIBVIRT_TREE / "src/remote/remote_driver.c").exists():
        pytest.fail(f"libvirt's sources are missing at {LIBVIRT_TREE}: run "
                    "`bash rpc/fetch-libvirt-source`", pytrace=False)
    written = apimap.write(LIBVIRT_TREE, tmp_path)
    assert written
    for rel in (apimap.MAP_PATH, apimap.DOC_PATH):
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), \
            f"{rel} is stale: run `python -m rpc {LIBVIRT_TREE}`"


def test_missing_api_xml_skips_the_map(tmp_path, capsys):
    if not (LIBVIRT_TREE / "src/remote/remote_protocol.x").exists():
        pytest.skip("libvirt's sources are missing")
    assert apimap.write(LIBVIRT_TREE, tmp_path, tmp_path / "no-such-dir") == []
    assert "libvirt-dev" in capsys.readouterr().err
    assert not (tmp_path / apimap.MAP_PATH).exists()
