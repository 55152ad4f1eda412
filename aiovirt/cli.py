"""The ``aiovirt`` command line.

    aiovirt compose [--profile NAME[@VER]]... [--param K=V]... [--caps FILE] [--domcaps FILE]
                    [--explain] [--json] FILE|-
    aiovirt profiles list | show NAME[@VER] | validate FILE...

Errors go to stderr as one line naming what and where; the exit status is 1 for them and 2
for a command line that does not parse.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import AiovirtError

__all__ = ["main"]


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise AiovirtError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _params(pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise AiovirtError(f"--param {pair!r}: expected NAME=VALUE or PROFILE.NAME=VALUE")
        params[key] = value
    return params


def _library(options: argparse.Namespace) -> Any:
    from .compose import Library

    return Library.default(paths=options.profile_path or (),
                           system=not options.no_system_profiles,
                           user=not options.no_system_profiles)


def _add_library_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile-path", action="append", metavar="PATH",
                        help="also load profiles from this file or directory (repeatable; "
                             "later ones override earlier ones by name)")
    parser.add_argument("--no-system-profiles", action="store_true",
                        help="only the shipped profiles and --profile-path: ignore "
                             "/etc/aiovirt/profiles and ~/.config/aiovirt/profiles")


# -- compose ------------------------------------------------------------------------------------

def _compose(options: argparse.Namespace) -> int:
    from .compose import compose

    result = compose(_read(options.file), options.profile or (),
                     params=_params(options.param or ()),
                     caps=_read(options.caps) if options.caps else None,
                     domcaps=_read(options.domcaps) if options.domcaps else None,
                     library=_library(options),
                     validate=False if options.no_validate else None,
                     upgrade=options.upgrade, record=not options.no_record,
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
    library = _library(options)
    rows = []
    for profile in library:
        versions = library.versions(profile.name)
        older = [v for v in versions if v != profile.version]
        rows.append((profile.id + (f" (also {', '.join(older)})" if older else ""),
                     str(profile.priority), profile.description))
    if options.json:
        print(json.dumps([{"name": p.name, "version": p.version, "priority": p.priority,
                           "versions": library.versions(p.name), "auto": p.auto,
                           "description": p.description, "source": p.source}
                          for p in library], indent=2))
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
    library = _library(options)
    profile = library.get(options.name)
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
    from .compose.errors import ComposeError
    from .compose.library import Library
    from .compose.lint import lint
    from .compose.profile import load_profiles

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


# -- the parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiovirt", description="Drive libvirt/KVM hosts: compose domain XML from "
                                    "profiles, and more.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    compose.add_argument("--no-record", action="store_true",
                         help="do not record the applied profiles in the domain's metadata")
    _add_library_options(compose)
    compose.set_defaults(run=_compose)

    profiles = commands.add_parser("profiles", help="list, show and validate profiles")
    actions = profiles.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every profile: name@version, priority, "
                                              "summary")
    listing.add_argument("--json", action="store_true", help="as JSON")
    _add_library_options(listing)
    listing.set_defaults(run=_profiles_list)
    show = actions.add_parser("show", help="one profile's parameters and actions")
    show.add_argument("name", metavar="NAME[@VER]")
    _add_library_options(show)
    show.set_defaults(run=_profiles_show)
    validate = actions.add_parser("validate", help="check profile files: syntax, and "
                                                   "snippets against libvirt's schema")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(run=_profiles_validate)
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
