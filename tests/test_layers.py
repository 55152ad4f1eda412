"""The package's layering, read from its imports: each layer imports only the layers below
it, subpackages form no cycle, and the offline layers load without the RPC client."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aiovirt"

# layer -> the layers it may import (besides itself).  ``errors`` (the exception tree) and
# ``checks`` (option checks raising plain ValueErrors or a given error) are shared by all.
SHARED = {"errors", "checks"}
ALLOWED = {
    "errors": set(),
    "checks": set(),
    "protocol": {"errors"},
    "xml": {"errors"},
    "client": {"errors", "protocol"},
    "api": {"errors", "protocol", "client", "xml"},
    "address": {"errors", "xml"},
    "capabilities": {"errors", "xml"},
    "compose": {"errors", "xml", "address", "capabilities"},
    "provision": {"errors", "protocol", "client", "api", "xml", "address", "compose",
                  "capabilities"},
    "service": {"errors", "protocol", "client", "api", "xml", "address", "compose",
                "provision", "capabilities"},
    "testing": {"errors", "protocol", "client"},
    "compat": {"errors", "protocol", "client", "api", "xml"},
    "cli": {"errors", "protocol", "client", "api", "xml", "address", "compose", "provision",
            "service", "testing", "capabilities"},
    "_profiles": set(),
    "__main__": {"cli"},   # python -m aiovirt: the command line
}
for _layer, _allowed in ALLOWED.items():
    if _layer not in SHARED:
        _allowed |= SHARED


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "aiovirt" or len(parts) == 1:
        return None
    return parts[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every aiovirt module ``path`` imports, wherever the import statement sits."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            if not node.module:   # ``from . import x``: x may be a module
                found |= {f"{target}.{alias.name}" for alias in node.names
                          if not alias.name.startswith("__")}
    return {m for m in found if m.startswith("aiovirt")}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def test_every_subpackage_has_a_rule():
    layers = {layer_of(m) for m in MODULES} - {None}
    assert layers <= set(ALLOWED), f"no layering rule for {sorted(layers - set(ALLOWED))}"
    assert {"protocol", "client", "api", "xml", "testing"} <= layers


def violations(module: str, imported: set[str]) -> list[str]:
    """What ``module`` imports from layers its own may not use."""
    own = layer_of(module)
    assert own is not None
    return sorted(target for target in imported
                  if (layer := layer_of(target)) not in (None, own) and
                  layer not in ALLOWED[own])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m)))
def test_module_imports_only_lower_layers(module):
    bad = violations(module, imports_of(MODULES[module]))
    own = layer_of(module)
    assert not bad, f"{module} ({own}) imports {bad}: allowed {sorted(ALLOWED[own])}"


def test_subpackages_form_no_cycle():
    edges: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        own = layer_of(module)
        if own is None:
            continue
        edges.setdefault(own, set()).update(
            layer for target in imports_of(path)
            if (layer := layer_of(target)) not in (None, own))
    seen: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(edges.get(node, ())):
            assert seen.get(nxt) != 1, f"import cycle: {' -> '.join(path + [node, nxt])}"
            if nxt not in seen:
                visit(nxt, path + [node])
        seen[node] = 2

    for node in sorted(edges):
        if node not in seen:
            visit(node, [])


def test_the_checker_sees_what_it_must(tmp_path):
    """Relative, function-level and TYPE_CHECKING imports are all read, and a client module
    importing the API is a violation (so a passing run means something)."""
    source = tmp_path / "aiovirt" / "client" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text("from typing import TYPE_CHECKING\nfrom ..protocol import wire\n"
                      "if TYPE_CHECKING:\n    from ..api.domain import Domain\n"
                      "def f():\n    from .. import compose\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = imports_of(source)
    finally:
        ROOT = saved
    assert {"aiovirt.protocol", "aiovirt.api.domain", "aiovirt.compose"} <= found
    assert violations("aiovirt.client.probe", found) == ["aiovirt.api.domain",
                                                         "aiovirt.compose"]


@pytest.mark.parametrize("package", ["aiovirt.address", "aiovirt.compose", "aiovirt.xml",
                                     "aiovirt.errors", "aiovirt.capabilities"])
def test_offline_layers_load_without_the_rpc_client(package):
    code = (f"import sys, {package}; "
            "print(sorted(m for m in sys.modules if m.startswith(('aiovirt.protocol', "
            "'aiovirt.client', 'aiovirt.api'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]", f"import {package} loaded {out}"


def test_public_names_still_load_from_the_top():
    code = ("import aiovirt; print(aiovirt.Connection.__module__, aiovirt.connect.__module__, "
            "aiovirt.DomainEventType.__module__, aiovirt.metadata.__name__, "
            "aiovirt.PrivateDaemon if hasattr(aiovirt, 'PrivateDaemon') else '-')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert out == ["aiovirt.api.connection", "aiovirt.api.connection", "aiovirt.api.domain",
                   "aiovirt.xml.metadata", "-"]


def test_the_client_loads_without_lxml_or_the_event_dataclasses():
    # making three dozen frozen dataclasses and loading lxml were a fifth of the client's
    # import; both load when a subscription or an XML method first needs them
    code = ("import sys, aiovirt; aiovirt.connect; "
            "print(sorted(m for m in ('lxml.etree', 'aiovirt.api.events', 'aiovirt.xml.safe', "
            "'aiovirt.xml.metadata') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]", f"import aiovirt.connect loaded {out}"
    code = ("import aiovirt.api.events as e, aiovirt.api.subscriptions as s; "
            "print(e.NetworkEventID is s.NetworkEventID, e.EventMethods is s.EventMethods)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "True True"
