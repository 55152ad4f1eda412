"""The ``aiovirt`` command line.

    aiovirt compose [--profile NAME[@VER]]... [--param K=V]... [--address] FILE|-
    aiovirt address [--reserve N] [--placement pci|pcie] [--numa DEV=NODE]... FILE|-
    aiovirt profiles list | show NAME[@VER] | validate FILE...
    aiovirt serve [--host ADDR] [--port N] [--uri URI]... [--profiles-dir DIR]
    aiovirt provision --uri URI... [--count N] [--profile P]... TEMPLATE|-
    aiovirt teardown [--uri URI]... [--name PATTERN] [--run ID] [--label K=V] [--report F]
    aiovirt events --uri URI...
    aiovirt vol download|upload POOL VOL FILE [--sparse] -c URI
    aiovirt console NAME -c URI
    aiovirt demo [--guests N]

Each command lives in a module of this package that adds itself with ``register``.  Errors go
to stderr as one line naming what and where; the exit status is 1 for them and 2 for a
command line that does not parse.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import AiovirtError
from . import compose, demo, provision, serve, streams

__all__ = ["build_parser", "main"]

COMMANDS = (compose, provision, streams, demo, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiovirt", description="Drive libvirt/KVM hosts: compose domain XML from "
                                    "profiles, assign addresses, provision guests.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    try:
        return int(options.run(options))
    except AiovirtError as exc:
        print(f"aiovirt: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
