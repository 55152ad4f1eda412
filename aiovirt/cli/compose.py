"""``aiovirt compose``, ``aiovirt address`` and ``aiovirt profiles``: the offline commands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import AiovirtError
from .common import add_library_options, library, params, read

__all__ = ["register"]


# -- compose ------------------------------------------------------------------------------------

def _compose(options: argparse.Namespace) -> int:
    import json

    from ..compose import compose

    result = compose(read(options.file), options.profile or (),
                     params=params(options.param or ()),
                     caps=read(options.caps) if options.caps else None,
                     domcaps=read(options.domcaps) if options.domcaps else None,
                     library=library(options),
                     validate=False if options.no_validate else None,
                     upgrade=options.upgrade, record=not options.no_record,
                     input_wins=options.input_wins,
                     address=_tunables(options) if options.address else False,
                     aliases=options.aliases,
                     source=options.file if options.file != "-" else "<stdin>")
    if options.json:
        print(json.dumps({"xml": result.xml, **result.to_dict()}, indent=2))
        return 0
    sys.stdout.write(result.xml)
    if options.explain:
        print(result.explain(), file=sys.stderr)
    return 0


# -- profiles -------------------------------------------------------------------------------------

def _profiles_list(options: argparse.Namespace) -> int:
    import json

    profiles = library(options)
    rows = []
    for profile in profiles:
        versions = profiles.versions(profile.name)
        older = [v for v in versions if v != profile.version]
        rows.append((profile.id + (f" (also {', '.join(older)})" if older else ""),
                     str(profile.priority), profile.description))
    if options.json:
        print(json.dumps([{"name": p.name, "version": p.version, "priority": p.priority,
                           "versions": profiles.versions(p.name), "auto": p.auto,
                           "description": p.description, "source": p.source}
                          for p in profiles], indent=2))
        return 0
    width = max((len(r[0]) for r in rows), default=10)
    for ident, priority, description in rows:
        summary = description.split(". ")[0].rstrip(".")
        room = max(20, 100 - width - 7)
        if len(summary) > room:
            summary = summary[:room - 3].rsplit(" ", 1)[0] + "..."
        print(f"{ident:<{width}}  {priority:>3}  {summary}")
    return 0


def _profiles_show(options: argparse.Namespace) -> int:
    import textwrap

    profiles = library(options)
    profile = profiles.get(options.name)
    print(f"{profile.id}  (priority {profile.priority}{', auto' if profile.auto else ''})")
    print(f"source: {profile.source}:{profile.line}")
    print(f"digest: {profile.digest}")
    if profile.description:
        print(textwrap.fill(profile.description, 79))
    if profile.requires:
        print("requires: " + ", ".join(map(str, profile.requires)))
    if profile.conflicts:
        print("conflicts: " + ", ".join(map(str, profile.conflicts)))
    if profile.params:
        print("parameters:")
        for param in profile.params:
            default = "required" if param.default is None and param.select is None else \
                f"default {param.default!r}" + (f", or {param.select}" if param.select else "")
            print(f"  {param.name} ({param.type}, {default}): {param.description}")
    print("actions:")
    for action in profile.actions():
        print(f"  line {action.line}: {action.describe()} ({action.constraint})")
    return 0


def _profiles_validate(options: argparse.Namespace) -> int:
    from ..compose.errors import ComposeError
    from ..compose.library import Library
    from ..compose.lint import lint
    from ..compose.profile import load_profiles

    failed = 0
    for path in options.files:
        try:
            profiles = load_profiles(path)
            library = Library.default(paths=[path], system=False, user=False)
            problems = [p for profile in profiles
                        for p in lint(library.get(profile.id))]
        except (ComposeError, AiovirtError) as exc:
            problems = [str(exc)]
            profiles = []
        if problems:
            failed += 1
            for problem in problems:
                print(problem)
        else:
            print(f"{path}: ok ({', '.join(p.id for p in profiles)})")
    return 1 if failed else 0


# -- address ------------------------------------------------------------------------------------

def _tunables(options: argparse.Namespace) -> Any:
    from ..address import Tunables

    return Tunables(hotplug_reserve=options.reserve, placement=options.placement,
                    multifunction="pack" if options.pack else "spread")


def _device_tunables(options: argparse.Namespace) -> dict[str, dict[str, object]]:
    wanted: dict[str, dict[str, object]] = {}
    for flag, key, convert in (("numa", "numa_node", int), ("device_placement", "placement", str),
                               ("hotpluggable", "hotpluggable", _yes_no),
                               ("group", "function_group", str)):
        for pair in getattr(options, flag) or ():
            name, sep, value = pair.partition("=")
            if not sep or not name:
                raise AiovirtError(f"--{flag.replace('_', '-')} {pair!r}: expected "
                                   "DEVICE=VALUE")
            try:
                wanted.setdefault(name, {})[key] = convert(value)
            except ValueError:
                raise AiovirtError(f"--{flag.replace('_', '-')} {pair!r}: bad value "
                                   f"{value!r}") from None
    return wanted


def _yes_no(value: str) -> bool:
    if value.lower() in ("yes", "true", "on", "1"):
        return True
    if value.lower() in ("no", "false", "off", "0"):
        return False
    raise ValueError(value)


def _address(options: argparse.Namespace) -> int:
    from ..address import (address_domain, device_from_dict, machine_from_dict, place,
                           tunables_from_dict)

    text = read(options.file)
    if options.devices_json or options.json:
        import json   # only then: the plain XML path starts faster without it
    if options.devices_json:
        try:
            data = json.loads(text)
        except ValueError as exc:   # JSONDecodeError, or a number of over 4300 digits
            raise AiovirtError(f"{options.file}: not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise AiovirtError(f"{options.file}: expected a JSON object ({{machine, devices, "
                               f"tunables}}), not {type(data).__name__}")
        unknown = sorted(set(data) - {"machine", "devices", "tunables"})
        if unknown:
            raise AiovirtError(f"{options.file}: unknown fields {', '.join(unknown)[:200]} "
                               "(known: machine, devices, tunables)")
        machine = machine_from_dict(data.get("machine", {}))
        tunables = tunables_from_dict(data["tunables"]) if "tunables" in data \
            else _tunables(options)
        listed = data.get("devices", [])
        if not isinstance(listed, list):
            raise AiovirtError(f"{options.file}: devices: expected a list, not "
                               f"{type(listed).__name__}")
        devices = place(machine, [device_from_dict(d, f"devices[{i}]")
                                  for i, d in enumerate(listed)], tunables,
                        policy=options.policy)
        print(json.dumps({"machine": {"arch": machine.arch, "machine": machine.machine},
                          "devices": [d.to_dict() for d in devices]}, indent=2))
        return 0
    result = address_domain(text, _tunables(options), policy=options.policy,
                            source=options.file if options.file != "-" else "<stdin>",
                            device_tunables=_device_tunables(options))
    if options.json:
        print(json.dumps([d.to_dict() for d in result.devices], indent=2))
    else:
        sys.stdout.write(result.xml)
    return 0


def _add_address_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reserve", type=int, default=0, metavar="N",
                        help="leave N (at most 1024) empty hot-pluggable places "
                             "(pcie-root-ports on q35)")
    parser.add_argument("--placement", choices=("pci", "pcie"),
                        help="put every device that can go either way on PCI or PCIe")
    parser.add_argument("--pack", action="store_true",
                        help="pack devices of one --group into the functions of one slot")


# -- the parser ---------------------------------------------------------------------------------

def register(commands: Any) -> None:
    """Add the offline commands to the ``aiovirt`` parser's subcommands."""
    compose = commands.add_parser(
        "compose", help="apply profiles to a (partial) domain XML",
        description="Apply profiles to a domain XML and print the complete result. The "
                    "domain's own <metadata> may also list profiles to apply.")
    compose.add_argument("file", metavar="FILE|-", help="the domain XML ('-': stdin)")
    compose.add_argument("--profile", "-p", action="append", metavar="NAME[@VER]",
                         help="apply this profile (repeatable)")
    compose.add_argument("--param", action="append", metavar="K=V",
                         help="a profile parameter; PROFILE.K=V for one profile only")
    compose.add_argument("--caps", metavar="FILE", help="host capabilities XML "
                                                        "(virsh capabilities)")
    compose.add_argument("--domcaps", metavar="FILE", help="domain capabilities XML "
                                                           "(virsh domcapabilities)")
    compose.add_argument("--explain", action="store_true",
                         help="print what each profile changed to stderr")
    compose.add_argument("--json", action="store_true",
                         help="print the XML and the report as one JSON object")
    compose.add_argument("--no-validate", action="store_true",
                         help="skip validation against libvirt's RelaxNG schema")
    compose.add_argument("--upgrade", action="store_true",
                         help="use the newest profile versions even where the domain "
                              "records older ones")
    compose.add_argument("--input-wins", action="store_true",
                         help="aiovirt 0.1's rules: the input's own values outrank profiles "
                              "below priority 99 (by default profiles act on them)")
    compose.add_argument("--no-record", action="store_true",
                         help="do not record the applied profiles in the domain's metadata")
    compose.add_argument("--address", action="store_true",
                         help="then fill in controllers and addresses (see `aiovirt address`)")
    compose.add_argument("--aliases", action="store_true",
                         help="then give every device without one a stable user alias (ua-...), "
                              "which per-device metadata and unplug name it by")
    _add_address_options(compose)
    add_library_options(compose)
    compose.set_defaults(run=_compose)

    address = commands.add_parser(
        "address", help="fill in controllers and device addresses, offline",
        description="Print the domain XML with every controller and device address filled "
                    "in, as libvirt would assign them (given addresses are kept), or tuned. "
                    "Devices are named by their ua- alias, else KIND#N (interface#2).")
    address.add_argument("file", metavar="FILE|-", help="the domain XML ('-': stdin)")
    _add_address_options(address)
    address.add_argument("--numa", action="append", metavar="DEVICE=NODE",
                         help="place a device on a guest NUMA node (behind an expander bus)")
    address.add_argument("--device-placement", action="append", metavar="DEVICE=pci|pcie",
                         help="put one device on PCI or PCIe")
    address.add_argument("--hotpluggable", action="append", metavar="DEVICE=yes|no",
                         help="yes: a hot-pluggable slot; no on q35: straight on pcie-root")
    address.add_argument("--group", action="append", metavar="DEVICE=GROUP",
                         help="with --pack, devices of a group share one slot")
    address.add_argument("--policy", default="libvirt", help="the placement policy "
                                                             "(default: libvirt)")
    address.add_argument("--json", action="store_true", help="print the devices as JSON")
    address.add_argument("--devices-json", action="store_true",
                         help="the input is JSON: {machine, devices, tunables}, no XML")
    address.set_defaults(run=_address)

    profiles = commands.add_parser("profiles", help="list, show and validate profiles")
    actions = profiles.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every profile: name@version, priority, "
                                              "summary")
    listing.add_argument("--json", action="store_true", help="as JSON")
    add_library_options(listing)
    listing.set_defaults(run=_profiles_list)
    show = actions.add_parser("show", help="one profile's parameters and actions")
    show.add_argument("name", metavar="NAME[@VER]")
    add_library_options(show)
    show.set_defaults(run=_profiles_show)
    validate = actions.add_parser("validate", help="check profile files: syntax, and "
                                                   "snippets against libvirt's schema")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(run=_profiles_validate)
