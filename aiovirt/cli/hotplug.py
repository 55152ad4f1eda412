"""``aiovirt hotplug`` and ``aiovirt unplug``: devices into and out of a running guest.

    aiovirt hotplug NAME DEVICE.xml|- -c URI        # a device element
    aiovirt hotplug NAME --profile guest-agent -c URI
    aiovirt hotplug NAME DEVICE.xml --offline LIVE.xml   # only print the addressed device
    aiovirt unplug NAME ua-net-default -c URI

``hotplug`` gives the device a stable user alias and an address that fits the live domain
(``aiovirt.compose.hotplug``), plugs it and waits for QEMU's DEVICE_ADDED; it prints the
device as the domain now shows it.  ``unplug`` waits for DEVICE_REMOVED.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..client.backend import run as run_loop
from ..errors import AiovirtError
from .common import add_library_options, library, params, read

__all__ = ["register"]


def _request(options: argparse.Namespace) -> Any:
    from ..address import Tunables
    from ..compose.hotplug import HotplugRequest

    if (options.file is None) == (options.profile is None):
        raise AiovirtError("hotplug: give either a device FILE or --profile NAME")
    device = options.profile if options.profile is not None else read(options.file)
    return HotplugRequest(device, params=params(options.param or ()),
                          library=library(options),
                          tunables=Tunables(placement=options.placement)
                          if options.placement else None)


def _print(devices: list[tuple[str, str]], as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"alias": alias, "xml": xml} for alias, xml in devices], indent=2))
        return
    for _, xml in devices:
        sys.stdout.write(xml if xml.endswith("\n") else xml + "\n")


async def _hotplug_live(options: argparse.Namespace) -> None:
    from ..api.connection import connect

    request = _request(options)
    async with connect(options.uri) as conn:
        dom = await conn.lookup_domain(name=options.name)
        plugged = await dom.hotplug(request, persistent=False if options.live_only else None,
                                    timeout=options.timeout)
    _print([(p.alias, p.xml) for p in plugged], options.json)


def _alias(element: Any) -> str:
    node = element.find("alias")
    return "" if node is None else str(node.get("name", ""))


def _hotplug(options: argparse.Namespace) -> int:
    if options.offline is not None:
        from ..xml.safe import to_string

        request = _request(options)
        request(read(options.offline))
        _print([(_alias(e), to_string(e)) for e in request.prepared], options.json)
        return 0
    run_loop(_hotplug_live(options))
    return 0


async def _unplug_live(options: argparse.Namespace) -> None:
    from ..api.connection import connect

    async with connect(options.uri) as conn:
        dom = await conn.lookup_domain(name=options.name)
        await dom.unplug(options.alias, persistent=False if options.live_only else None,
                         timeout=options.timeout, keep_metadata=options.keep_metadata)
    print(f"unplugged {options.alias} from {options.name}", file=sys.stderr)


def _unplug(options: argparse.Namespace) -> int:
    run_loop(_unplug_live(options))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME",
                        help="the domain's name (only a label with --offline)")
    parser.add_argument("--uri", "-c", metavar="URI",
                        help="the host (default: LIBVIRT_DEFAULT_URI or libvirt.conf's "
                             "uri_default, as virsh)")
    parser.add_argument("--live-only", action="store_true",
                        help="leave the persistent definition alone (default: change it too "
                             "when the domain has one)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for QEMU's event (default 30)")


def register(commands: Any) -> None:
    """Add ``hotplug`` and ``unplug``."""
    hotplug = commands.add_parser(
        "hotplug", help="plug a device into a running guest",
        description="Plug a device (FILE, or the devices --profile adds) into domain NAME: "
                    "it gets a stable ua- alias and an address that moves nothing; the "
                    "command waits for QEMU's DEVICE_ADDED and prints the device as the "
                    "domain shows it.")
    _common(hotplug)
    hotplug.add_argument("file", nargs="?", metavar="FILE",
                         help="the device element (- for stdin)")
    hotplug.add_argument("--profile", metavar="NAME[@VER]",
                         help="plug the devices this profile adds instead")
    hotplug.add_argument("--param", action="append", metavar="K=V",
                         help="a parameter of the profile (repeatable)")
    hotplug.add_argument("--placement", choices=("pci", "pcie"),
                         help="PCI or PCIe placement for devices that can take either")
    hotplug.add_argument("--offline", metavar="DOMAIN.xml",
                         help="no host: address against this saved domain XML and print the "
                              "device")
    hotplug.add_argument("--json", action="store_true",
                         help="print [{alias, xml}] as JSON")
    add_library_options(hotplug)
    hotplug.set_defaults(run=_hotplug)

    unplug = commands.add_parser(
        "unplug", help="unplug a device from a running guest",
        description="Unplug the device with alias ALIAS from domain NAME and wait for QEMU's "
                    "DEVICE_REMOVED (PCI devices need the guest OS to let them go).")
    _common(unplug)
    unplug.add_argument("alias", metavar="ALIAS", help="the device's alias (ua-...)")
    unplug.add_argument("--keep-metadata", action="store_true",
                        help="keep the data bound to the alias (default: forget it)")
    unplug.set_defaults(run=_unplug)
