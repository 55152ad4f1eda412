"""``aiovirt caps merge``: one capability set from many hosts' saved capabilities, offline.

Each FILE is a host's ``virsh capabilities`` or ``virsh domcapabilities`` output (told apart
by its root element).  A host's two files pair up by name: ``h1.caps.xml`` and
``h1.domcaps.xml``, ``h1-caps.xml`` and ``h1-domcaps.xml``, or ``h1/caps.xml`` and
``h1/domcaps.xml`` all belong to host ``h1``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import AiovirtError
from .common import read

__all__ = ["host_name", "register"]

_KIND_SUFFIX = re.compile(r"(?:^|[._-])(?:dom|domain)?(?:caps|capabilities)$", re.IGNORECASE)


def host_name(path: str) -> str:
    """The host a capabilities file belongs to, from its name (see the module docstring)."""
    p = Path(path)
    stem = p.name[:-4] if p.name.lower().endswith(".xml") else p.name
    stem = _KIND_SUFFIX.sub("", stem)
    return stem or p.resolve().parent.name or path


def _hosts(files: list[str]) -> list[Any]:
    from ..capabilities import CapabilityError, HostCaps
    from ..capabilities.hosts import as_tree
    from ..xml.safe import parse

    found: dict[str, dict[str, Any]] = {}
    for path in files:
        text = read(path)
        try:
            root = parse(text, source=path)
        except AiovirtError as exc:
            raise CapabilityError(f"{path}: malformed XML: {exc}") from None
        kind = {"capabilities": "caps", "domainCapabilities": "domcaps"}.get(root.tag)
        if kind is None:
            as_tree(root, "capabilities or domainCapabilities", path)   # raises, naming it
        name = host_name(path)
        entry = found.setdefault(name, {"files": []})
        if kind in entry:
            raise CapabilityError(f"{path}: host {name!r} already has its {kind} from "
                                  f"{entry['files'][-1]}: name each host's files apart")
        entry[kind] = root
        entry["files"].append(path)
    return [HostCaps.parse(name, entry.get("caps"), entry.get("domcaps"))
            for name, entry in found.items()]


def _write(text: str | None, target: str | None, what: str) -> bool:
    if text is None:
        if target:
            raise AiovirtError(f"no {what} to write to {target}: none of the files is one")
        return False
    if target and target != "-":
        try:
            Path(target).write_text(text)
        except OSError as exc:
            raise AiovirtError(f"{target}: cannot write: {exc.strerror or exc}") from None
        return False
    sys.stdout.write(text)
    return True


def _merge(options: argparse.Namespace) -> int:
    from ..capabilities import merge

    capset = merge(_hosts(options.files), options.min_hosts)
    printed = False
    if not options.report_only:
        printed |= _write(capset.caps_xml(), options.caps_out, "capabilities")
        printed |= _write(capset.domcaps_xml(), options.domcaps_out, "domain capabilities")
    report = json.dumps(capset.to_dict(), indent=2) if options.json else capset.report()
    print(report, file=sys.stderr if printed else sys.stdout)
    return 0


def register(commands: Any) -> None:
    """Add ``aiovirt caps`` to the ``aiovirt`` parser's subcommands."""
    caps = commands.add_parser("caps", help="merge hosts' capabilities into one set")
    actions = caps.add_subparsers(dest="action", required=True, metavar="ACTION")
    merge = actions.add_parser(
        "merge", help="what at least K of N hosts can do, and which hosts lack what",
        description="Merge hosts' saved capabilities (virsh capabilities) and domain "
                    "capabilities (virsh domcapabilities) into what at least K of them have, "
                    "with a host-model CPU chosen offline.  The merged XML goes to stdout "
                    "(or --caps-out/--domcaps-out), the report of which hosts lack what to "
                    "stderr (stdout when no XML is printed).  A host's two files pair up by "
                    "name: h1.caps.xml and h1.domcaps.xml, or h1/caps.xml and h1/domcaps.xml.")
    merge.add_argument("files", nargs="+", metavar="FILE")
    merge.add_argument("--min-hosts", "-k", type=int, metavar="K",
                       help="keep what at least K hosts have (default: all of them)")
    merge.add_argument("--caps-out", metavar="FILE", help="write the merged capabilities "
                                                          "here")
    merge.add_argument("--domcaps-out", metavar="FILE",
                       help="write the merged domain capabilities here")
    merge.add_argument("--report-only", action="store_true",
                       help="print only the report, no XML")
    merge.add_argument("--json", action="store_true", help="the report as JSON")
    merge.set_defaults(run=_merge)
