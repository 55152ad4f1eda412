"""Client instructions per call, counted by valgrind's callgrind: a measure of client cost that
other work on a noisy 2-core machine does not move (timings and CPU time do; ``perf`` has no
hardware counters on these VMs).

    .venv/bin/python benchmarks/instructions.py [--calls N] [--uri URI]

Starts a private libvirtd (or uses ``--uri``), then runs the client workload twice under
callgrind for each case: once with N measured calls after a warm-up, once with none; the
difference over N is the user-space instructions the client spends per call (the daemon runs
in its own process and is not counted).  Cases: ``getLibVersion`` (``conn.rpc``) and
``dom.get_info()`` (object API) at concurrency 1 and 16.  Needs ``valgrind``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CASES = (("libver", 1), ("libver", 16), ("info", 1), ("info", 16))


async def workload(uri: str, kind: str, concurrency: int, calls: int) -> None:
    """The measured program: a warm-up, then ``calls`` calls of ``kind``."""
    import aiovirt
    async with aiovirt.connect(uri) as conn:
        dom = await conn.lookup_domain(name="test")
        op = conn.rpc.connect_get_lib_version if kind == "libver" else dom.get_info

        async def worker(count: int) -> None:
            for _ in range(count):
                await op()

        await asyncio.gather(*(worker(50) for _ in range(concurrency)))
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))


def count(uri: str, kind: str, concurrency: int, calls: int) -> int:
    """User-space instructions of one run of the workload under callgrind."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--run", uri, kind, str(concurrency), str(calls)],
        capture_output=True, text=True, check=True)
    found = re.search(r"Collected\s*:\s*([\d,]+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no total:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def measure(uri: str, calls: int) -> None:
    print(f"client instructions per call (callgrind; {calls} calls minus none)")
    with ThreadPoolExecutor(max_workers=2) as pool:
        for kind, concurrency in CASES:
            with_calls = pool.submit(count, uri, kind, concurrency, calls)
            without = pool.submit(count, uri, kind, concurrency, 0)
            per_call = (with_calls.result() - without.result()) // calls
            name = "getLibVersion" if kind == "libver" else "dom.get_info()"
            print(f"  {name:<16} concurrency {concurrency:>2}: {per_call:>7,} instructions",
                  flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        uri, kind, concurrency, calls = sys.argv[2:6]
        asyncio.run(workload(uri, kind, int(concurrency), int(calls)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000, help="measured calls (4000)")
    parser.add_argument("--uri", help="a running daemon's test-driver URI")
    options = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("instructions.py needs valgrind (apt-get install valgrind)")
    if options.uri:
        measure(options.uri, options.calls)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from aiovirt.testing.daemon import PrivateDaemon
    with tempfile.TemporaryDirectory(prefix="avb-instr-") as workdir, \
            PrivateDaemon(workdir) as daemon:
        measure(daemon.uri(), options.calls)


if __name__ == "__main__":
    main()
