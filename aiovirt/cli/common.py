"""What the ``aiovirt`` commands share: reading inputs, profile parameters, the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import AiovirtError

__all__ = ["add_library_options", "library", "params", "read"]


def read(path: str) -> str:
    """A file's text, or stdin's for ``-``; an unreadable file is an ``AiovirtError``."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        raise AiovirtError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        where = "<stdin>" if path == "-" else path
        raise AiovirtError(f"{where}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                           f"offset {exc.start})") from None


def params(pairs: Sequence[str], option: str = "--param",
           expected: str = "NAME=VALUE or PROFILE.NAME=VALUE") -> dict[str, str]:
    """``NAME=VALUE`` pairs (profile parameters, labels...) as a dict."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AiovirtError(f"{option} {pair!r}: expected {expected}")
        values[key] = value
    return values


def library(options: argparse.Namespace) -> Any:
    """The profile library the command line asks for."""
    from ..compose import Library

    return Library.default(paths=options.profile_path or (),
                           system=not options.no_system_profiles,
                           user=not options.no_system_profiles)


def add_library_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile-path", action="append", metavar="PATH",
                        help="also load profiles from this file or directory (repeatable; "
                             "later ones override earlier ones by name)")
    parser.add_argument("--no-system-profiles", action="store_true",
                        help="only the shipped profiles and --profile-path: ignore "
                             "/etc/aiovirt/profiles and ~/.config/aiovirt/profiles")
