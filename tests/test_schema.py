"""The repeat table derived from libvirt's RelaxNG domain schema."""

from __future__ import annotations

import json

import pytest

from aiovirt.compose.schema import SCHEMA_DIR, TABLE_FILE, RepeatTable, build_table

SHIPPED = RepeatTable(json.loads(TABLE_FILE.read_text()))
installed = pytest.mark.skipif(not (SCHEMA_DIR / "domain.rng").exists(),
                               reason=f"libvirt's schemas are not installed in {SCHEMA_DIR}")


@installed
def test_shipped_table_is_what_the_generator_makes_from_the_installed_schema():
    """`python -m aiovirt.compose.schema` regenerates the committed table exactly (the
    installed schema is libvirt 9.0's, as scripts/setup installs)."""
    built = build_table(SCHEMA_DIR)
    assert json.dumps(built, separators=(",", ":"), sort_keys=True) + "\n" == \
        TABLE_FILE.read_text()


@pytest.mark.parametrize("path, child, repeats", [
    ((), "devices", False), ((), "vcpu", False), (("devices",), "disk", True),
    (("devices",), "controller", True), (("devices",), "memballoon", False),
    (("devices",), "emulator", False), (("devices", "video"), "model", False),
    (("devices", "disk"), "target", False), (("os",), "type", False),
    (("features", "hyperv"), "relaxed", False), (("cputune",), "vcpupin", True),
    (("clock",), "timer", True), (("metadata",), "{https://example.org/app}data", True),
    (("cpu",), "feature", True), (("devices", "interface"), "model", False),
])
def test_repeats_in_context(path, child, repeats):
    place = SHIPPED.place_of(path)
    assert place is not None
    assert SHIPPED.may_repeat(place, child) is repeats


def test_unknown_elements_have_no_place():
    assert SHIPPED.place_of(("devices", "vidoe")) is None
    assert SHIPPED.child(SHIPPED.root, "bogus") is None
    # context matters: <target> is known under <disk>, and <disk> has no <model>
    assert SHIPPED.place_of(("devices", "disk", "target")) is not None
    assert SHIPPED.place_of(("devices", "disk", "model")) is None
