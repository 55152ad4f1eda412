"""Client instructions per call, counted by valgrind's callgrind: a measure of client cost that
other work on a noisy 2-core machine does not move (timings and CPU time do; ``perf`` has no
hardware counters on these VMs).

    .venv/bin/python benchmarks/instructions.py [--calls N] [--uri URI] [--transport unix|tls]
                                                [--libvirt-python]

Starts a private libvirtd (or uses ``--uri``), then runs the client workload twice under
callgrind for each case: once with N measured calls after a warm-up, once with none; the
difference over N is the user-space instructions the client spends per call (the daemon runs
in its own process and is not counted).  Cases: ``getLibVersion`` (``conn.rpc``) and
``dom.get_info()`` (object API) at concurrency 1 and 16.  ``--transport tls`` serves the
daemon over TLS with a throwaway PKI (as ``remote.py``); ``--libvirt-python`` also counts
libvirt-python (N threads sharing one ``virConnect``, ``getLibVersion`` / ``dom.info()``) on
the same URI.  Kernel time (system calls) is not counted by callgrind.  Needs ``valgrind``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import callgrind_instructions

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


def lv_workload(uri: str, kind: str, concurrency: int, calls: int) -> None:
    """libvirt-python doing the same: ``concurrency`` threads sharing one connection."""
    import threading

    import libvirt  # type: ignore[import-untyped]
    conn = libvirt.open(uri)
    dom = conn.lookupByName("test")
    op = conn.getLibVersion if kind == "libver" else dom.info

    def worker(count: int) -> None:
        for _ in range(count):
            op()

    for count in (50, calls // concurrency):
        threads = [threading.Thread(target=worker, args=(count,)) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    conn.close()


def count(uri: str, kind: str, concurrency: int, calls: int, client: str = "aiovirt") -> int:
    """User-space instructions of one run of the workload under callgrind."""
    return callgrind_instructions([sys.executable, __file__, "--run", client, uri, kind,
                                   str(concurrency), str(calls)])


def measure(uri: str, calls: int, clients: tuple[str, ...] = ("aiovirt",)) -> None:
    print(f"client instructions per call (callgrind; {calls} calls minus none)")
    with ThreadPoolExecutor(max_workers=2) as pool:
        for kind, concurrency in CASES:
            per: dict[str, int] = {}
            for client in clients:
                with_calls = pool.submit(count, uri, kind, concurrency, calls, client)
                without = pool.submit(count, uri, kind, concurrency, 0, client)
                per[client] = (with_calls.result() - without.result()) // calls
            name = "getLibVersion" if kind == "libver" else "dom.get_info()"
            line = "  ".join(f"{client} {value:>7,}" for client, value in per.items())
            if len(per) == 2:
                line += f"  ratio {per['aiovirt'] / per['libvirt-python']:.2f}x"
            print(f"  {name:<16} concurrency {concurrency:>2}: {line}", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        client, uri, kind, concurrency, calls = sys.argv[2:7]
        if client == "aiovirt":
            asyncio.run(workload(uri, kind, int(concurrency), int(calls)))
        else:
            lv_workload(uri, kind, int(concurrency), int(calls))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000, help="measured calls (4000)")
    parser.add_argument("--uri", help="a running daemon's test-driver URI")
    parser.add_argument("--transport", choices=("unix", "tls"), default="unix",
                        help="how the private daemon is reached (unix)")
    parser.add_argument("--libvirt-python", action="store_true",
                        help="count libvirt-python too, on the same URI")
    options = parser.parse_args()
    clients = ("aiovirt", "libvirt-python") if options.libvirt_python else ("aiovirt",)
    if options.uri:
        measure(options.uri, options.calls, clients)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from aiovirt.testing.daemon import PrivateDaemon
    from aiovirt.testing.pki import CertificateAuthority
    with tempfile.TemporaryDirectory(prefix="avb-instr-") as work:
        workdir = Path(work)
        config: dict[str, object] = {}
        if options.transport == "tls":
            ca = CertificateAuthority.create(workdir / "ca")
            server = ca.issue(workdir / "server", "localhost",
                              hosts=["localhost", "127.0.0.1"], server=True)
            pkipath = ca.client_dir(workdir / "pki", ca.issue(workdir / "client", "client"))
            config = {"listen_tls": 1, **ca.server_config(server)}
        with PrivateDaemon(workdir / "d", extra_config=config) as daemon:
            uri = daemon.uri()
            if options.transport == "tls":
                uri = daemon.uri(transport="tls") + f"?pkipath={pkipath}"
            measure(uri, options.calls, clients)


if __name__ == "__main__":
    main()
