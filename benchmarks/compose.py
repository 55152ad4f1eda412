"""Composition speed: 1000 different partial domains, 6 profiles each, on one core.

    .venv/bin/python benchmarks/compose.py [--rounds N] [--output FILE] [--cpu CPU] [--profile]
        [--baseline CHECKOUT] [--instructions]

Measures ``aiovirt.compose.compose`` alone (pure Python and lxml, no libvirt daemon): how many
domains per second one core composes, with ``validate=False`` and with ``validate=True``
(libvirt's RelaxNG schema), against the target of >= 2000 domains/s without validation.

The 1000 partial domain XMLs are generated from a seeded ``random.Random``, so every run
composes the same set: each has its own name, memory, vCPUs, 0-4 disks, 0-3 NICs, perhaps a
VNC display, perhaps application metadata, and a q35, pc or unspecified machine.  Each gets
``kvm-base`` and 5 more shipped profiles picked from compatible ones (some with parameters).
Before timing, every (domain, profiles) pair is composed once with ``validate=True``: any
error or invalid result stops the benchmark.

One timed unit is ``compose(text, profiles, ...).xml``: parsing the input string, applying
the profiles, recording them in the metadata, (validating,) and serialising the result.  One
``Library`` (the shipped profiles only) serves every composition, as in a real application.
The two measures alternate round by round (rotating which goes first); best and median are
reported, the target is checked on the best.  A one-round cost split (coarse timers) shows
where the time goes; ``--profile`` adds cProfile's top functions for one round.

``--baseline CHECKOUT`` (e.g. ``git worktree add /tmp/compose-base COMMIT``) also runs the same
workload with the aiovirt of that checkout, side by side: a worker process imports aiovirt from
CHECKOUT, pins itself to the same CPU and composes a round whenever asked, so the rounds of
both alternate (rotating which goes first) and share the machine's state.  It runs
``compose()`` as 0.1 had it; this tree runs ``compose()`` (the new default rules),
``compose(input_wins=True)`` (0.1's rules: its XML must equal the baseline's, byte for byte,
which is checked) and one ``Composer`` for all domains (the batch API).  Both sides read this
tree's profile files, so that only the engines differ.  ``--instructions`` adds a noise-free
cross-check: instructions per domain counted by valgrind's callgrind (both trees with
``--baseline``).  Ratios are best
against best, and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from common import (
    HERE,
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

from aiovirt.compose import Composition, Library, compose
from aiovirt.compose.schema import repeat_table, validator
from aiovirt.errors import AiovirtError
from aiovirt.xml.safe import parse

DOMAINS = 1000
PROFILES_PER_DOMAIN = 6
TARGET = 2000.0  # domains/s without validation
SEED = 20261122
APP_NS = "https://example.org/xmlns/inventory/1"

# The profiles every domain may draw from (besides kvm-base, which all get), and pairs that
# do not go together: the first two declare a <conflicts>; windows-hyperv's localtime clock
# clashes at equal priority (20) with the UTC clock virtio-linux sets (ProfileConflict);
# nfv-realtime turns off the balloon balloon-stats configures (that composes and validates,
# but leaves <memballoon model='none'> with <stats>: not something anyone would ask for).
POOL = ("virtio-linux", "guest-agent", "virtio-rng", "balloon-stats", "crash-diagnostics",
        "usb3", "headless-serial", "spice-desktop", "nfv-realtime", "windows-hyperv")
Q35_POOL = ("q35-hotplug", "uefi-secure-boot")  # they want q35: not for machine='pc'
EXCLUSIVE = ({"headless-serial", "spice-desktop"}, {"nfv-realtime", "balloon-stats"},
             {"windows-hyperv", "virtio-linux"})

# -- the workload -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Case:
    """One domain to compose: its partial XML, the profiles named and their parameters."""

    name: str
    xml: str
    profiles: tuple[str, ...]
    params: dict[str, str]


def domain_xml(rng: random.Random, name: str) -> tuple[str, str | None, int]:
    """A random partial domain: (its XML, its machine type or None, its vCPU count)."""
    machine = rng.choice(("q35", "q35", "pc", None))
    vcpus = rng.choice((1, 1, 2, 2, 4, 8, 16))
    memory = rng.choice((512, 1024, 2048, 4096, 8192, 16384))
    kind = rng.choice(("", " type='kvm'"))  # kvm-base sets it where the input does not
    parts = [f"<domain{kind}>", f"<name>{name}</name>",
             f"<memory unit='MiB'>{memory}</memory>", f"<vcpu>{vcpus}</vcpu>"]
    if machine is not None:
        parts.append(f"<os><type machine='{machine}'>hvm</type></os>")
    if rng.random() < 0.3:
        parts.append(f"<metadata><inv:host xmlns:inv='{APP_NS}'><inv:owner>team-"
                     f"{rng.randrange(40)}</inv:owner><inv:tier>{rng.choice(('web', 'db'))}"
                     "</inv:tier></inv:host></metadata>")
    devices = [f"<disk type='file' device='disk'><source file='/var/lib/images/{name}-{n}"
               f".qcow2'/><target dev='vd{'abcd'[n]}'/></disk>" for n in range(rng.randint(0, 4))]
    devices += ["<interface type='network'><source network='default'/></interface>"] * \
        rng.randint(0, 3)
    if rng.random() < 0.4:
        devices.append("<graphics type='vnc'/>")
    if devices:
        parts.append("<devices>" + "".join(devices) + "</devices>")
    return "".join(parts) + "</domain>", machine, vcpus


def pick_profiles(rng: random.Random, machine: str | None) -> tuple[str, ...]:
    """kvm-base and 5 more from the pool, skipping any that would clash with one taken."""
    pool = list(POOL) + (list(Q35_POOL) if machine != "pc" else [])
    rng.shuffle(pool)
    chosen: list[str] = []
    for name in pool:
        if any(name in pair and (pair - {name}) <= set(chosen) for pair in EXCLUSIVE):
            continue
        chosen.append(name)
        if len(chosen) == PROFILES_PER_DOMAIN - 1:
            break
    return ("kvm-base", *chosen)


def profile_params(rng: random.Random, profiles: tuple[str, ...], vcpus: int) -> dict[str, str]:
    """Parameters for the profiles that take (or need) them, scoped to their profile."""
    params: dict[str, str] = {}
    if "q35-hotplug" in profiles:
        params["q35-hotplug.count"] = str(rng.randint(1, 16))
    if "balloon-stats" in profiles:
        params["balloon-stats.period"] = str(rng.choice((5, 10, 30)))
    if "nfv-realtime" in profiles:
        params["nfv-realtime.vcpu_cpus"] = f"2-{1 + vcpus}"
        params["nfv-realtime.emulator_cpus"] = "0-1"
        params["nfv-realtime.realtime"] = rng.choice(("yes", "no"))
    return params


def make_cases(count: int, seed: int) -> list[Case]:
    """``count`` different domains with their profiles, the same for the same seed."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        name = f"bench-{i:04d}-{rng.getrandbits(24):06x}"
        xml, machine, vcpus = domain_xml(rng, name)
        profiles = pick_profiles(rng, machine)
        cases.append(Case(name, xml, profiles, profile_params(rng, profiles, vcpus)))
    if len({c.xml for c in cases}) != count:
        raise SystemExit("the generated domains are not all different")
    return cases


def run(case: Case, library: Library, validate: bool) -> Composition:
    """Compose one case (as every measure does)."""
    return compose(case.xml, case.profiles, params=case.params, library=library,
                   validate=validate)


def verify(cases: list[Case], library: Library) -> list[Composition]:
    """Compose every case once with validation; stop loudly on the first failure (errors
    other than aiovirt's propagate with their traceback)."""
    results = []
    for case in cases:
        try:
            result = run(case, library, validate=True)
        except AiovirtError as exc:
            raise SystemExit(f"FAILED: {case.name} with {', '.join(case.profiles)} "
                             f"{case.params}: {type(exc).__name__}: {exc}\n{case.xml}") from None
        if not result.validated:
            raise SystemExit(f"FAILED: {case.name}: composed but not validated")
        results.append(result)
    return results


# -- measuring ----------------------------------------------------------------------------------

def compose_all(cases: list[Case], library: Library, validate: bool) -> None:
    """The timed unit, for every case: compose and serialise."""
    for case in cases:
        _ = run(case, library, validate).xml


def interleave(rounds: int, cases: list[Case], library: Library) -> dict[str, list[Sample]]:
    """Both measures, alternating, rotating which goes first."""
    samples: dict[str, list[Sample]] = {"without validation": [], "with validation": []}
    order = [("without validation", False), ("with validation", True)]
    for r in range(rounds):
        for label, validate in order[r % 2:] + order[:r % 2]:
            samples[label].append(timed(partial(compose_all, cases, library, validate)))
    return samples


def rate(count: int, sample: Sample) -> float:
    return count / sample.wall


def report_rounds(samples: dict[str, list[Sample]], count: int) -> dict[str, float]:
    """Print best and median per measure; returns the best rate of each."""
    say(f"{'measure':<20} {'best/s':>8} {'median/s':>9} {'best us/domain':>15} "
        f"{'median':>7}  CPU/wall (median)")
    bests = {}
    for label, runs in samples.items():
        best = min(runs, key=lambda s: s.wall)
        med_wall = statistics.median(s.wall for s in runs)
        share = statistics.median(s.cpu / s.wall for s in runs)
        say(f"{label:<20} {rate(count, best):8.0f} {count / med_wall:9.0f} "
            f"{best.wall / count * 1e6:15.0f} {med_wall / count * 1e6:7.0f}  {share:.0%}")
        bests[label] = rate(count, best)
    say("(rounds: " + "; ".join(f"{label} " + " ".join(f"{rate(count, s):.0f}" for s in runs)
                                for label, runs in samples.items()) + " domains/s)")
    return bests


# -- where the time goes ----------------------------------------------------------------------------

def seconds(work: Callable[[], object]) -> float:
    return timed(work).wall


def cost_split(cases: list[Case], library: Library, samples: dict[str, list[Sample]]) -> None:
    """One round cut into parts with coarse timers, each part timed alone over all domains;
    'applying' is what remains of compose() once its input parsing is taken away."""
    n = len(cases)
    t_parse = seconds(lambda: [parse(c.xml, source="<domain>") for c in cases])
    results: list[Composition] = []
    t_compose = seconds(lambda: results.extend(run(c, library, False) for c in cases))
    texts: list[str] = []
    t_serialise = seconds(lambda: texts.extend(r.xml for r in results))
    schema = validator()
    assert schema is not None
    t_relaxng = seconds(lambda: [schema.validate(r.tree) for r in results])
    total = t_compose + t_serialise
    say(f"## cost split, one round of {n} domains (coarse timers, one pass per part: noisy)")
    for label, t in [("parse the input XML (xmlsafe.parse)", t_parse),
                     ("select profiles, apply them, record them (compose - parse)",
                      t_compose - t_parse),
                     ("serialise the output (.xml: xmlsafe.to_string)", t_serialise)]:
        say(f"{label:<62} {t / n * 1e6:6.0f} us/domain {t / total:4.0%}")
    say(f"{'= compose + .xml, without validation':<62} {total / n * 1e6:6.0f} us/domain")
    say(f"{'validation: RelaxNG validate of the tree (lxml)':<62} "
        f"{t_relaxng / n * 1e6:6.0f} us/domain {t_relaxng / total:4.0%} more")
    extra = statistics.median(s.wall for s in samples["with validation"]) - \
        statistics.median(s.wall for s in samples["without validation"])
    say(f"(validation in the rounds, median with - median without: {extra / n * 1e6:.0f} "
        "us/domain, to compare with the line above)")


def profile_round(cases: list[Case], library: Library, top: int = 15) -> None:
    """cProfile one round without validation; the top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    compose_all(cases, library, validate=False)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    say(f"## cProfile, one round without validation, top {top} by own time (tottime)")
    for line in out.getvalue().splitlines():
        if line.strip() and not line.lstrip().startswith(("Ordered by", "List reduced")):
            say(line.rstrip())


# -- side by side with a baseline checkout ---------------------------------------------------------

def digest(texts: list[str]) -> str:
    """One hash over a round's outputs, to compare two trees' XML without shipping it."""
    total = hashlib.sha256()
    for text in texts:
        total.update(text.encode())
        total.update(b"\0")
    return total.hexdigest()


def worker(cpu: int) -> None:
    """The baseline's side: compose a round (without validation) whenever a line "round"
    arrives on stdin, answer with its timing as JSON; only API that 0.1 had is used.  The
    profiles are this tree's files (the same policy on both sides: only the engine differs)."""
    pin(cpu)
    library = Library()
    library.add_path(HERE.parent / "profiles")
    cases = make_cases(DOMAINS, SEED)
    outputs = [run(case, library, False).xml for case in cases]  # warm, and what it makes
    import aiovirt

    print(json.dumps({"ready": True, "digest": digest(outputs), "from": aiovirt.__file__}),
          flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        sample = timed(partial(compose_all, cases, library, False))
        print(json.dumps({"wall": sample.wall, "cpu": sample.cpu}), flush=True)


class Baseline:
    """The worker process running a baseline checkout's aiovirt on the same CPU."""

    def __init__(self, checkout: str, cpu: int) -> None:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                                         "--cpu", str(cpu)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)
        hello = self._read()
        self.digest = hello["digest"]
        self.origin = hello["from"]

    def _read(self) -> dict[str, object]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the baseline worker stopped (exit {self.process.wait()})")
        return json.loads(line)

    def round(self) -> Sample:
        assert self.process.stdin is not None
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        answer = self._read()
        return Sample(float(answer["wall"]), float(answer["cpu"]))  # type: ignore[arg-type]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def compose_batch(cases: list[Case], composer: object) -> None:
    """The timed unit through one shared ``Composer`` (this tree's batch API)."""
    for case in cases:
        _ = composer.compose(case.xml, case.profiles,  # type: ignore[attr-defined]
                             params=case.params).xml


def side_by_side(checkout: str, cpu: int, rounds: int, cases: list[Case],
                 library: Library) -> None:
    """The same rounds from ``checkout``'s aiovirt and this tree's, interleaved; ratios."""
    from aiovirt.compose import Composer

    baseline = Baseline(checkout, cpu)
    try:
        same = digest([compose(c.xml, c.profiles, params=c.params, library=library,
                               validate=False, input_wins=True).xml for c in cases])
        say(f"baseline: aiovirt from {os.path.dirname(baseline.origin)} (worker pinned to CPU "
            f"{cpu}); this tree's compose(input_wins=True) output "
            f"{'equals' if same == baseline.digest else 'DIFFERS FROM'} the baseline's, byte "
            f"for byte, over all {len(cases)} domains")
        composer = Composer(library, validate=False)
        measures: list[tuple[str, Callable[[], Sample]]] = [
            ("baseline compose()", baseline.round),
            ("compose()", lambda: timed(partial(compose_all, cases, library, False))),
            ("compose(input_wins)", lambda: timed(lambda: [
                compose(c.xml, c.profiles, params=c.params, library=library, validate=False,
                        input_wins=True).xml for c in cases])),
            ("Composer.compose", lambda: timed(partial(compose_batch, cases, composer))),
        ]
        for _, measure in measures:  # one warm-up round each, not counted
            measure()
        samples: dict[str, list[Sample]] = {label: [] for label, _ in measures}
        for r in range(rounds):
            turn = measures[r % len(measures):] + measures[:r % len(measures)]
            for label, measure in turn:
                samples[label].append(measure())
    finally:
        baseline.close()
    n = len(cases)
    say(f"{'measure (no validation)':<24} {'best/s':>8} {'median/s':>9} {'best x':>7} "
        f"{'median x':>9}")
    base = samples["baseline compose()"]
    base_best = min(s.wall for s in base)
    for label, runs in samples.items():
        best = min(s.wall for s in runs)
        ratios = [b.wall / s.wall for b, s in zip(base, runs)]
        say(f"{label:<24} {n / best:8.0f} {n / statistics.median(s.wall for s in runs):9.0f} "
            f"{base_best / best:6.2f}x {statistics.median(ratios):8.2f}x")
    say("(x: throughput relative to the baseline; best against best, and the median of the "
        "per-round ratios)")
    say("(rounds: " + "; ".join(f"{label} " + " ".join(f"{n / s.wall:.0f}" for s in runs)
                                for label, runs in samples.items()) + " domains/s)")


# -- instructions: a noise-free cross-check --------------------------------------------------------

COUNTED = 300  # domains per counted pass


def count_worker(passes: int) -> None:
    """Under callgrind: warm up on ``COUNTED`` domains, then compose them ``passes`` times
    with the cyclic GC paused (API 0.1 had, this tree's profile files)."""
    import gc

    library = Library()
    library.add_path(HERE.parent / "profiles")
    cases = make_cases(DOMAINS, SEED)[:COUNTED]
    compose_all(cases, library, False)
    gc.collect()
    gc.disable()
    for _ in range(passes):
        compose_all(cases, library, False)


def instructions(checkout: str | None) -> dict[str, float]:
    """Instructions per domain (callgrind), for this tree and ``checkout``: two runs each,
    with 0 and 2 passes, and the difference over the domains composed."""
    trees = {"this tree": None} | ({"baseline": checkout} if checkout else {})
    found: dict[str, float] = {}
    for label, tree in trees.items():
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree)) if tree else None
        totals = [callgrind_instructions([sys.executable, os.path.abspath(__file__), "--count",
                                          str(passes)], env=env) for passes in (0, 2)]
        found[label] = (totals[1] - totals[0]) / (2 * COUNTED)
        say(f"{label}: {found[label] / 1e6:.3f} M instructions per domain")
    if checkout:
        say(f"ratio: {found['baseline'] / found['this tree']:.2f}x fewer instructions")
    return found


# -- the run ------------------------------------------------------------------------------------------

def setup() -> Library:
    """Load the library and warm the schema caches, saying what each one-time cost was."""
    t0 = time.perf_counter()
    library = Library.default(system=False, user=False)
    t1 = time.perf_counter()
    repeat_table()
    t2 = time.perf_counter()
    if validator() is None:
        raise SystemExit("libvirt's schema (/usr/share/libvirt/schemas/domain.rng) is not "
                         "installed: cannot measure validation")
    t3 = time.perf_counter()
    say(f"one-time costs, not in the rounds: Library.default(system=False, user=False) "
        f"{(t1 - t0) * 1e3:.0f} ms ({len(library)} shipped profiles), repeat table "
        f"{(t2 - t1) * 1e3:.0f} ms, RelaxNG schema {(t3 - t2) * 1e3:.0f} ms")
    say("one Library is reused by every composition (as an application would); building it "
        "per domain would add its load time to each")
    return library


def describe_cases(cases: list[Case], results: list[Composition]) -> None:
    """What the generated workload looks like, so the figures can be judged."""
    uses: dict[str, int] = {}
    for case in cases:
        for name in case.profiles:
            uses[name] = uses.get(name, 0) + 1
    applied = statistics.mean(len(r.applied) for r in results)
    changes = statistics.mean(len(r.report) for r in results)
    size_in = statistics.mean(len(c.xml) for c in cases)
    size_out = statistics.mean(len(r.xml) for r in results)
    say(f"{len(cases)} different domains (seed {SEED}), {PROFILES_PER_DOMAIN} profiles named "
        f"each, {applied:.2f} applied on average (with required ones), {changes:.1f} report "
        f"entries; input {size_in:.0f} chars, output {size_out:.0f} chars on average")
    say("profiles named: " + ", ".join(f"{n} {k}" for n, k in sorted(uses.items(),
                                                                      key=lambda i: -i[1])))
    say(f"verified: all {len(cases)} compose without error and validate against libvirt's "
        "schema")


def main(options: argparse.Namespace) -> None:
    cpu = pin(options.cpu)
    say(describe(cpu))
    library = setup()
    cases = make_cases(DOMAINS, SEED)
    describe_cases(cases, verify(cases, library))
    say()
    say(f"## compose(xml, 6 profiles).xml for {len(cases)} domains, {options.rounds} "
        "interleaved rounds per measure, one core")
    speed_before = machine_speed()
    samples = interleave(options.rounds, cases, library)
    speed_after = machine_speed()
    bests = report_rounds(samples, len(cases))
    say(yardstick_line(speed_before, speed_after))
    say()
    cost_split(cases, library, samples)
    if options.profile:
        say()
        profile_round(cases, library)
    if options.instructions:
        say()
        say(f"## instructions per domain (callgrind, {COUNTED} of the domains, GC paused), "
            "without validation")
        instructions(options.baseline)
    if options.baseline:
        say()
        say(f"## side by side with {options.baseline}: {options.rounds} interleaved rounds of "
            f"{len(cases)} domains per measure, one core")
        speed_before = machine_speed()
        side_by_side(options.baseline, cpu, options.rounds, cases, library)
        say(yardstick_line(speed_before, machine_speed()))
    say()
    plain, checked = bests["without validation"], bests["with validation"]
    say(f"compose: {plain:.0f} domains/s without validation (target >= {TARGET:.0f}/s: "
        f"{'met' if plain >= TARGET else 'MISSED'}), {checked:.0f} domains/s with validation "
        "(best rounds)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per measure (default 5)")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--cpu", type=int, help="the CPU to pin to (default: the last allowed)")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile one round (top 15 functions by own time)")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="also run the workload with the aiovirt of this checkout (a git "
                             "worktree of an earlier commit), interleaved, and print ratios")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per domain under callgrind (and the "
                             "baseline's, with --baseline): a measure other load does not move")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.count is not None:
        count_worker(opts.count)
        raise SystemExit(0)
    if opts.worker:
        worker(opts.cpu if opts.cpu is not None else pin(None))
        raise SystemExit(0)
    if opts.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        main(opts)
    finally:
        write_report(opts.output)
