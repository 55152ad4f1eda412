"""Bulk provisioning from a script: many guests over one or more hosts, with progress, a
per-guest account, the report saved for a later teardown.

    python examples/bulk_provision.py URI [URI ...] [--count 100] [--teardown]

Each guest is composed from the shipped profiles (kvm-base, virtio-linux, guest-agent),
addressed offline, spread over the hosts, defined and started; the run's report (JSON)
lists every guest's outcome and is enough to remove exactly what the run made.
"""

import argparse
import asyncio
import sys

from aiovirt.provision import GuestSpec, Provisioning, Stage, teardown

TEMPLATE = """<domain type='{type}'>
  <name>bulk</name>
  <memory unit='MiB'>64</memory>
  <os><type>hvm</type></os>
</domain>"""


async def main(uris: list[str], count: int, remove: bool) -> int:
    kind = "test" if all(u.startswith("test") for u in uris) else "kvm"
    spec = GuestSpec(TEMPLATE.format(type=kind), ["kvm-base", "virtio-linux", "guest-agent"],
                     count=count, name="bulk-{n:04d}", labels={"owner": "bulk-example"})
    job = Provisioning(uris, spec, placement="spread", overcommit=4)
    step = max(1, count // 10)

    def on_change(result) -> None:   # called as each guest moves on: print every 10%
        done = job.progress.done
        if result.final and (done % step == 0 or done == count):
            counts = job.progress.counts
            print(f"{done}/{count} done: {counts[Stage.STARTED]} started, "
                  f"{counts[Stage.FAILED]} failed", flush=True)

    job.on_change = on_change
    report = await job.run()
    for host in report.hosts:
        mine = [r for r in report.results if r.host == host.uri]
        print(f"{host.uri.split('?')[0]}: {host.state}, {len(mine)} guests")
    for result in report.failed():
        print(f"FAILED {result.name}: {result.error}")
    with open("bulk-report.json", "w") as out:
        out.write(report.to_json())
    print(f"run {report.run_id}: {report.counts()} in {report.seconds:.2f} s; "
          "report in bulk-report.json")
    if remove:
        removed = await teardown(report=report)
        print(f"teardown: {removed.counts()}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uris", nargs="+", metavar="URI")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--teardown", action="store_true", help="remove them afterwards")
    options = parser.parse_args()
    sys.exit(asyncio.run(main(options.uris, options.count, options.teardown)))
