"""Regenerate aiovirt/protocol/*.py: ``python -m rpc LIBVIRT_SOURCE_TREE``.

The tree is an unpacked libvirt source (``rpc/fetch-libvirt-source`` fetches 9.0.0, the
version Debian 12 ships); only its ``.x`` files, ``include/libvirt`` and ``meson.build`` are read.
"""

import argparse
import sys
from pathlib import Path

from .generate import write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpc", description=__doc__.splitlines()[0])
    parser.add_argument("tree", type=Path, help="libvirt source tree")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "aiovirt" / "protocol",
                        help="where the modules go (default: aiovirt/protocol)")
    options = parser.parse_args(argv)
    for path in write(options.tree, options.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
