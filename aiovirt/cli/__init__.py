"""The ``aiovirt`` command line.

    aiovirt compose [--profile NAME[@VER]]... [--param K=V]... [--address] FILE|-
    aiovirt address [--reserve N] [--placement pci|pcie] [--numa DEV=NODE]... FILE|-
    aiovirt profiles list | show NAME[@VER] | validate FILE...
    aiovirt serve [--host ADDR] [--port N] [--uri URI]... [--profiles-dir DIR]
    aiovirt provision --uri URI... [--count N] [--profile P]... TEMPLATE|-
    aiovirt teardown [--uri URI]... [--name PATTERN] [--run ID] [--label K=V] [--report F]
    aiovirt caps merge FILE... [--min-hosts K] [--caps-out F] [--domcaps-out F]
    aiovirt events --uri URI...
    aiovirt vol download|upload POOL VOL FILE [--sparse] -c URI
    aiovirt console NAME -c URI
    aiovirt hotplug NAME FILE|--profile P -c URI  /  aiovirt unplug NAME ALIAS -c URI
    aiovirt demo [--guests N]

Each command lives in a module of this package that adds itself with ``register``; only the
module of the command being run is imported (``aiovirt address`` never loads the RPC client),
all of them for ``--help``.  Errors go to stderr as one line naming what and where; the exit
status is 1 for them and 2 for a command line that does not parse.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import AiovirtError

__all__ = ["build_parser", "main"]

# the modules that register commands, in help order, and which module owns each command
COMMANDS = ("compose", "caps", "provision", "streams", "hotplug", "demo", "serve")
OWNERS = {"compose": "compose", "address": "compose", "profiles": "compose", "caps": "caps",
          "provision": "provision", "teardown": "provision", "events": "provision",
          "vol": "streams", "console": "streams", "hotplug": "hotplug", "unplug": "hotplug",
          "demo": "demo", "serve": "serve"}


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it ($COLUMNS, then the
    terminal of stdout, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            stdout = sys.__stdout__
            columns = os.get_terminal_size(stdout.fileno()).columns if stdout else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, given the terminal's width: argparse makes one for every
    argument added and would import ``shutil`` (and its compression modules) to learn it,
    ~2 ms of every command's start-up."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help uses ``_Formatter``; its subcommands' parsers are
    made of this class too."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` only (the others' modules not loaded)."""
    parser = _Parser(
        prog="aiovirt", description="Drive libvirt/KVM hosts: compose domain XML from "
                                    "profiles, assign addresses, provision guests.")
    parser.add_argument("--version", action="version", version=f"aiovirt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    owner = OWNERS.get(command or "")
    for name in (owner,) if owner else () if command == "--version" else COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args[0] if args else None)
    options = parser.parse_args(args)
    try:
        return int(options.run(options))
    except AiovirtError as exc:
        print(f"aiovirt: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:   # (Ctrl-C at a prompt or while reading stdin: no traceback)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
