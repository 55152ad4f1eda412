"""What the ``aiovirt`` commands share: reading inputs, profile parameters, the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import AiovirtError

__all__ = ["MAX_DOCUMENT", "MAX_JSON", "add_library_options", "library", "params", "read"]


# the most ``read`` takes: an XML document (libvirt's own limit is 10 MB), a JSON report
MAX_DOCUMENT = 16 * 1024 * 1024
MAX_JSON = 256 * 1024 * 1024   # a report of 100,000s of guests


def read(path: str, limit: int = MAX_DOCUMENT) -> str:
    """A file's text, or stdin's for ``-``, of at most ``limit`` bytes (a larger or endless
    input is refused without being read whole); an unreadable file is an ``AiovirtError``."""
    where = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as file:
                data = file.read(limit + 1)
    except OSError as exc:
        raise AiovirtError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise AiovirtError(f"{where}: more than {limit} bytes, over the limit for this input")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
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
