"""Addressing speed: a 20-device q35 domain, addressed offline on one core.

    .venv/bin/python benchmarks/address.py [--rounds N] [--count N] [--cpu CPU]
                                           [--no-libvirt] [--output FILE] [--profile]
                                           [--baseline PATH] [--instructions]

Measures ``aiovirt.address`` alone (pure Python, no daemon): how many times per second one
core completes the same 20-device q35 guest (4 virtio NICs, 4 virtio disks, a SATA CD-ROM,
a virtio-scsi controller, 2 virtio channels, a USB tablet, 2 USB redirectors, virtio video,
SPICE, virtio-rng, ich9 sound, a watchdog; 19 controllers and the balloon get added), against
the target of >= 2000 domains/s through the core API.  Four measures alternate round by round
(rotating which goes first):

- ``core``: ``place(Machine('x86_64', 'q35'), devices)`` with the devices built from their
  JSON dicts (``device_from_dict``) each time, as a service taking JSON would;
- ``core, reserve 4``: the same with ``Tunables(hotplug_reserve=4)``;
- ``xml``: ``address_domain(text).xml``: parse, read the devices, place, write the
  controllers and addresses into the tree and serialise it;
- ``libvirt`` (reference, unless ``--no-libvirt``): what a program without aiovirt does to
  get libvirt's addresses: ``defineXML`` on a private libvirtd's QEMU driver, ``XMLDesc``
  (inactive) and ``undefine``, with libvirt-python, one call after another.  That is more
  work than addressing (a daemon round trip, the domain saved to disk), which is the point:
  it is the cost aiovirt removes.  Not pinned (the daemon runs on any core).

With ``--baseline PATH`` (a checkout of another aiovirt commit, e.g. ``git worktree add
/tmp/address-base HEAD``), ``core`` and ``xml`` also run from that checkout, in a child
process pinned to the same CPU and fed the same workload, interleaved round by round with the
others (``base core``, ``base xml``); the report ends with each ratio, this code over the
baseline (best rounds, and medians).  ``--instructions`` adds user-space instructions per
domain through the core API, counted by valgrind's callgrind for this checkout (and the
baseline): a figure other work on a shared machine does not move.

Before timing, the result is checked once: the core API and the XML path must give the same
addresses, and (with libvirt) libvirt must assign exactly the same addresses itself.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from common import (
    Sample,
    callgrind_instructions,
    describe,
    machine_speed,
    pin,
    say,
    timed,
    write_report,
    yardstick_line,
)

from aiovirt.address import (
    Device,
    Machine,
    Tunables,
    address_domain,
    device_from_dict,
    place,
)
from aiovirt.address.domainxml import read_devices
from aiovirt.xml.safe import parse

TARGET = 2000.0  # domains/s, core API, one core

DOMAIN = """<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/images/bench-a.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/images/bench-b.qcow2'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/images/bench-c.qcow2'/><target dev='vdc' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/images/bench-d.qcow2'/><target dev='vdd' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    <controller type='scsi' model='virtio-scsi'/>
    <interface type='user'><model type='virtio'/></interface>
    <interface type='user'><model type='virtio'/></interface>
    <interface type='user'><model type='virtio'/></interface>
    <interface type='user'><model type='virtio'/></interface>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <channel type='pty'><target type='virtio' name='org.example.agent.1'/></channel>
    <input type='tablet' bus='usb'/>
    <graphics type='spice' autoport='yes'/>
    <video><model type='virtio'/></video>
    <sound model='ich9'/>
    <redirdev bus='usb' type='spicevmc'/>
    <redirdev bus='usb' type='spicevmc'/>
    <watchdog model='i6300esb' action='reset'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
"""
MACHINE = Machine("x86_64", "q35")


def workload() -> tuple[str, list[dict[str, Any]]]:
    """The domain XML and its 20 devices as JSON dicts (what the core API takes)."""
    text = DOMAIN.format(name="aiovirt-bench-address")
    devices = [d.to_dict() for d in read_devices(parse(text)) if d.kind != "emulator"]
    if len(devices) != 20:
        raise SystemExit(f"the workload should have 20 devices, it has {len(devices)}")
    return text, devices


def core(specs: list[dict[str, Any]], tunables: Tunables | None, count: int) -> None:
    for _ in range(count):
        place(MACHINE, [device_from_dict(spec) for spec in specs], tunables)


def xml(text: str, count: int) -> None:
    for _ in range(count):
        _ = address_domain(text).xml


def addresses(devices: list[Device]) -> list[tuple[str, str, str]]:
    """(kind, type or model, address) for every device, sorted (the XML puts the devices
    in the schema's order) that has an address or is a controller: what must agree (libvirt
    also adds address-less PS/2 inputs and an audio backend, which are not addressing)."""
    return sorted((d.kind, str(d.type or d.model or d.bus), str(d.address)) for d in devices
                  if d.address is not None or d.kind == "controller")


def xml_addresses(text: str) -> list[tuple[str, str, str]]:
    return addresses([d for d in read_devices(parse(text)) if d.kind != "emulator"])


# -- libvirt, for reference ----------------------------------------------------------------------

class Libvirt:
    """A private libvirtd and a libvirt-python connection to its QEMU driver."""

    def __init__(self) -> None:
        import libvirt  # type: ignore[import-untyped]

        from aiovirt.testing.daemon import PrivateDaemon

        libvirt.registerErrorHandler(lambda *_: None, None)
        self._workdir = tempfile.TemporaryDirectory(prefix="aiovirt-bench-")
        self.daemon = PrivateDaemon(self._workdir.name)
        self.daemon.__enter__()
        self.conn = libvirt.open(self.daemon.uri("qemu", "/system"))
        self.flags = libvirt.VIR_DOMAIN_XML_INACTIVE

    def define_read_undefine(self, text: str) -> str:
        domain = self.conn.defineXML(text)
        try:
            return domain.XMLDesc(self.flags)
        finally:
            domain.undefine()

    def run(self, text: str, count: int) -> None:
        for _ in range(count):
            self.define_read_undefine(text)

    def close(self) -> None:
        self.conn.close()
        self.daemon.__exit__(None, None, None)
        self._workdir.cleanup()


def verify(text: str, specs: list[dict[str, Any]], lv: Libvirt | None) -> str:
    """Both aiovirt paths give the same addresses (and libvirt agrees); a line saying so."""
    from_core = addresses(place(MACHINE, [device_from_dict(s) for s in specs]))
    result = address_domain(text)
    from_xml = xml_addresses(result.xml)
    if from_core != from_xml:
        raise SystemExit("FAILED: the core API and the XML path disagree:\n"
                         + "\n".join(f"  {a} | {b}" for a, b in zip(from_core, from_xml)
                                     if a != b))
    assert sum(d.kind == "emulator" for d in result.devices) == 1
    added = Counter(d.model or d.type or d.kind for d in result.added)
    line = (f"verified: {len(specs)} devices in, {len(result.devices) - 1} out "
            f"({len(result.added)} added: {', '.join(f'{n} {what}' for what, n in sorted(added.items()))}); the core "
            "API and the XML path give the same addresses")
    if lv is not None:
        theirs = xml_addresses(lv.define_read_undefine(text))
        if theirs != from_xml:
            raise SystemExit("FAILED: libvirt assigns different addresses:\n  ours:   "
                             f"{sorted(set(from_xml) - set(theirs))}\n  theirs: "
                             f"{sorted(set(theirs) - set(from_xml))}")
        line += ", and libvirt assigns exactly these itself"
    return line


# -- measuring ------------------------------------------------------------------------------------

def interleave(rounds: int, measures: dict[str, Callable[[], Any]]) -> dict[str, list[Sample]]:
    """Every measure once per round, rotating which goes first; a measure that returns a
    ``Sample`` (the baseline child's own timing) is recorded as such."""
    samples: dict[str, list[Sample]] = {label: [] for label in measures}
    order = list(measures.items())
    for r in range(rounds):
        shift = r % len(order)
        for label, work in order[shift:] + order[:shift]:
            sample = timed(work)
            inner = getattr(work, "sample", None)
            samples[label].append(inner() if inner is not None else sample)
    return samples


def report(samples: dict[str, list[Sample]], counts: dict[str, int]) -> dict[str, float]:
    """Best and median rate per measure, and each one's ratio to libvirt; the best rates."""
    say(f"{'measure':<18} {'best/s':>8} {'median/s':>9} {'best us':>8} {'median us':>10}"
        f"  {'vs libvirt (best)':>17}")
    bests = {label: counts[label] / min(s.wall for s in runs) for label, runs in
             samples.items()}
    for label, runs in samples.items():
        n = counts[label]
        med = statistics.median(s.wall for s in runs)
        versus = f"{bests[label] / bests['libvirt']:.0f}x" if "libvirt" in bests and \
            label != "libvirt" else ""
        say(f"{label:<18} {bests[label]:8.0f} {n / med:9.0f} {1e6 / bests[label]:8.0f} "
            f"{med / n * 1e6:10.0f}  {versus:>17}")
    say("(rounds, domains/s: " + "; ".join(
        f"{label} " + " ".join(f"{counts[label] / s.wall:.0f}" for s in runs)
        for label, runs in samples.items()) + ")")
    return bests


def profile(specs: list[dict[str, Any]], count: int, top: int = 15) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    core(specs, None, count)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    say(f"## cProfile, {count} x core, top {top} by own time (tottime)")
    for line in out.getvalue().splitlines():
        if line.strip() and not line.lstrip().startswith(("Ordered by", "List reduced")):
            say(line.rstrip())


def main(options: argparse.Namespace) -> None:
    text, specs = workload()
    lv = None if options.no_libvirt else Libvirt()
    try:
        cpu = pin(options.cpu)
        say(describe(cpu))
        say(verify(text, specs, lv))
        count = options.count
        measures: dict[str, Callable[[], None]] = {
            "core": partial(core, specs, None, count),
            "core, reserve 4": partial(core, specs, Tunables(hotplug_reserve=4), count),
            "xml": partial(xml, text, count),
        }
        counts = dict.fromkeys(measures, count)
        if lv is not None:
            lv_count = max(1, count // 20)
            measures["libvirt"] = partial(lv.run, text, lv_count)
            counts["libvirt"] = lv_count
        timed_measures: dict[str, Callable[[], Any]] = pinned(measures, cpu)
        if options.baseline:
            baseline = Baseline(options.baseline, cpu, text, specs)
            say(f"baseline: {baseline.module} (a child process pinned to CPU {cpu})")
            for work in ("core", "xml"):
                timed_measures[f"base {work}"] = _BaselineWork(baseline, work, count)
                counts[f"base {work}"] = count
        say()
        say(f"## one 20-device q35 domain, {count} times per round (libvirt: "
            f"{counts.get('libvirt', 0)}), {options.rounds} interleaved rounds, one core")
        before = machine_speed()
        samples = interleave(options.rounds, timed_measures)
        pin(cpu)
        after = machine_speed()
        bests = report(samples, counts)
        say(yardstick_line(before, after))
        if options.baseline:
            ratios(samples)
            baseline.close()
        if options.instructions:
            instruction_ratio(options.baseline, specs)
        if options.profile:
            say()
            profile(specs, count)
        say()
        say(f"address: {bests['core']:.0f} domains/s through the core API (target >= "
            f"{TARGET:.0f}/s: {'met' if bests['core'] >= TARGET else 'MISSED'}), "
            f"{bests['xml']:.0f} domains/s from XML to XML (best rounds)")
    finally:
        if lv is not None:
            lv.close()


# The child that runs the same workload with another checkout's aiovirt: it reads one JSON
# request per line ({"work": "core"|"xml", "count": N}) and answers with the wall seconds.
BASELINE_CHILD = """
import json, os, sys, time
cpu, text, specs = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
os.sched_setaffinity(0, {cpu})
import aiovirt.address as address
from aiovirt.address import Machine, address_domain, device_from_dict, place
machine = Machine("x86_64", "q35")
print(json.dumps({"module": address.__file__}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    count = request["count"]
    import gc; gc.collect()
    start = time.perf_counter()
    if request["work"] == "core":
        for _ in range(count):
            place(machine, [device_from_dict(spec) for spec in specs])
    else:
        for _ in range(count):
            address_domain(text).xml
    print(json.dumps({"wall": time.perf_counter() - start}), flush=True)
"""


class Baseline:
    """Another checkout's aiovirt in a child process pinned to ``cpu``, timed on request."""

    def __init__(self, path: str, cpu: int, text: str, specs: list[dict[str, Any]]) -> None:
        root = os.path.abspath(path)
        if not os.path.isdir(os.path.join(root, "aiovirt", "address")):
            raise SystemExit(f"--baseline {path}: no aiovirt/address there (make one with "
                             "`git worktree add /tmp/address-base HEAD`)")
        env = dict(os.environ, PYTHONPATH=root)
        self.child = subprocess.Popen(
            [sys.executable, "-c", BASELINE_CHILD, str(cpu), text, json.dumps(specs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        hello = json.loads(self._line())
        if not hello["module"].startswith(root):
            self.close()
            raise SystemExit(f"--baseline {path}: the child imported {hello['module']}, not "
                             "the baseline's aiovirt")
        self.module = hello["module"]

    def _line(self) -> str:
        assert self.child.stdout is not None
        line = self.child.stdout.readline()
        if not line:
            raise SystemExit(f"the baseline child exited ({self.child.wait()})")
        return line

    def run(self, work: str, count: int) -> float:
        """Wall seconds the child took for ``count`` domains of ``work``."""
        assert self.child.stdin is not None
        self.child.stdin.write(json.dumps({"work": work, "count": count}) + "\n")
        self.child.stdin.flush()
        return float(json.loads(self._line())["wall"])

    def close(self) -> None:
        if self.child.stdin is not None:
            self.child.stdin.close()
        self.child.wait(timeout=30)


# One callgrind run: N core placements (after a warm-up) with the aiovirt on PYTHONPATH.
INSTRUCTIONS_CHILD = """
import json, sys
import aiovirt.address
from aiovirt.address import Machine, device_from_dict, place
specs, count, root = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
assert aiovirt.address.__file__.startswith(root), aiovirt.address.__file__
machine = Machine("x86_64", "q35")
for _ in range(20 + count):
    place(machine, [device_from_dict(spec) for spec in specs])
"""


def instructions(root: str, specs: list[dict[str, Any]], count: int = 100) -> int:
    """User-space instructions per domain through the core API with the aiovirt at ``root``,
    counted by valgrind's callgrind: a run of ``count`` domains minus a run of none."""
    totals = [callgrind_instructions([sys.executable, "-c", INSTRUCTIONS_CHILD,
                                      json.dumps(specs), str(n), root],
                                     env=dict(os.environ, PYTHONPATH=root), cwd=root)
              for n in (0, count)]
    return (totals[1] - totals[0]) // count


def instruction_ratio(baseline: str | None, specs: list[dict[str, Any]]) -> None:
    """Instructions per domain, this checkout and (if given) the baseline: a measure other
    work on the machine does not move."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ours = instructions(here, specs)
    line = f"instructions per domain (callgrind, core API): {ours:,} here"
    if baseline:
        base = instructions(os.path.abspath(baseline), specs)
        line += f", {base:,} in the baseline: {base / ours:.2f}x fewer"
    say(line)


class _BaselineWork:
    """One baseline measure: a round runs in the child, which times itself (wall only)."""

    def __init__(self, baseline: Baseline, work: str, count: int) -> None:
        self.baseline, self.work, self.count = baseline, work, count
        self.last = Sample(0.0, 0.0)

    def __call__(self) -> None:
        wall = self.baseline.run(self.work, self.count)
        self.last = Sample(wall, wall)

    def sample(self) -> Sample:
        return self.last


def ratios(samples: dict[str, list[Sample]]) -> None:
    """This code over the baseline, per measure, on the best and the median rounds."""
    for label in ("core", "xml"):
        base = samples.get(f"base {label}")
        if not base:
            continue
        ours = samples[label]
        best = min(s.wall for s in base) / min(s.wall for s in ours)
        median = statistics.median(s.wall for s in base) / statistics.median(
            s.wall for s in ours)
        say(f"{label}: {best:.2f}x the baseline's throughput (best rounds), {median:.2f}x "
            "(medians)")


def pinned(measures: dict[str, Callable[[], None]], cpu: int) -> dict[str, Callable[[], None]]:
    """aiovirt's measures run pinned to ``cpu``; libvirt's (a daemon round trip) on any."""
    everywhere = set(range(os.cpu_count() or 1))

    def wrap(work: Callable[[], None], cores: set[int]) -> Callable[[], None]:
        def run() -> None:
            os.sched_setaffinity(0, cores)
            work()
        return run

    return {label: wrap(work, everywhere if label == "libvirt" else {cpu})
            for label, work in measures.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per measure (default 7)")
    parser.add_argument("--count", type=int, default=2000,
                        help="domains per round (default 2000; libvirt does a 20th)")
    parser.add_argument("--cpu", type=int, help="the CPU to pin to (default: the last allowed)")
    parser.add_argument("--no-libvirt", action="store_true",
                        help="skip the libvirt reference (no daemon needed)")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile one round of the core API")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--baseline", metavar="PATH",
                        help="also run core and xml from the aiovirt checkout at PATH (a "
                             "child pinned to the same CPU) and print the ratios")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per domain under valgrind's callgrind "
                             "(and the baseline's): noise-free, needs valgrind")
    opts = parser.parse_args()
    if opts.rounds < 1 or opts.count < 1:
        parser.error("--rounds and --count must be at least 1")
    try:
        main(opts)
    finally:
        write_report(opts.output)
