"""Regenerate aiovirt/protocol/*.py: ``python -m rpc LIBVIRT_SOURCE_TREE``.

The tree is an unpacked libvirt source (``rpc/fetch-libvirt-source`` fetches 9.0.0, the
version Debian 12 ships); only its ``.x`` files, ``include/libvirt`` and ``meson.build`` are read.
It also writes the generated object API (``aiovirt/api/generated.py``, rpc/objects.py), the libvirt API map (``rpc/libvirt_api_map.json``) and ``docs/api-coverage.md``
(rpc/apimap.py; they also read ``src/libvirt*.c``, from the tree or the ``*.orig.tar.xz``
beside it, and the API descriptions ``libvirt-dev`` installs).
"""

import argparse
import sys
from pathlib import Path

from . import apimap, objects
from .generate import write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpc", description=__doc__.splitlines()[0])
    parser.add_argument("tree", type=Path, help="libvirt source tree")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "aiovirt" / "protocol",
                        help="where the modules go (default: aiovirt/protocol); given alone, "
                             "only the protocol modules are written")
    parser.add_argument("--map-root", type=Path, default=None,
                        help="write rpc/libvirt_api_map.json and docs/api-coverage.md under "
                             "this directory (default: the repository, unless --out is given)")
    parser.add_argument("--api-xml", type=Path, default=apimap.API_XML_DIR,
                        help=f"libvirt's API descriptions (default: {apimap.API_XML_DIR})")
    options = parser.parse_args(argv)
    out_given = options.out != parser.get_default("out")
    for path in write(options.tree, options.out):
        print(path)
    map_root = options.map_root or (None if out_given else apimap.ROOT)
    if map_root is not None:
        # the generated object API first (it needs the map), then the map again: its scan of
        # aiovirt/api then sees the generated methods
        data = apimap.build(options.tree, options.api_xml)
        if data is not None:
            for path in objects.write(data, map_root, options.api_xml):
                print(path)
        for path in apimap.write(options.tree, map_root, options.api_xml):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
