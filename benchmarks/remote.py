"""aiovirt against libvirt-python over the same remote transport (TLS, SSH), side by side.

    .venv/bin/python benchmarks/remote.py [--quick] [--transport tls|ssh|both] [--rounds N] [--pin]
                                          [--calls N] [--domains N] [--output FILE]

Everything is set up inside: a throwaway PKI (``aiovirt.testing.pki``: a CA, a server
certificate for localhost/127.0.0.1, a client certificate, a ``pkipath`` directory), a private
libvirtd (``aiovirt.testing.daemon.PrivateDaemon``, default settings: max_client_requests 5)
serving TLS on loopback, and a private sshd (``aiovirt.testing.sshd.PrivateSSHD``) on loopback
whose sessions reach that libvirtd's UNIX socket with ``nc -U`` (``proxy=netcat``).  Both
clients are given the very same URI, so the same transport:

* TLS: ``test+tls://localhost:PORT/PATH?pkipath=DIR`` (libvirt-python: GnuTLS; aiovirt:
  Python's ssl, i.e. OpenSSL);
* SSH: ``test+ssh://USER@127.0.0.1:PORT/PATH?keyfile=..&no_tty=1&socket=..&proxy=netcat&
  command=WRAPPER``.  libvirt's plain ``+ssh`` ignores ``known_hosts=`` (libssh only), so
  ``command=`` names a two-line wrapper that execs the system ssh with the private sshd's
  known_hosts file and strict host key checking; both clients then run the identical ssh
  command line (checked at start from the ssh children's /proc/PID/cmdline).

Cases (the loop rotates who goes first each round, as run.py does, whose helpers this uses):

* ``tiny``: getLibVersion at concurrency 16.  aiovirt: 16 tasks on one connection (default:
  main socket + up to 4 lanes, quick calls written ahead up to pipeline_depth 32; also
  shown: lanes=0, one socket, and lanes=0 with pipeline_depth=5, i.e. never more on the
  socket than the daemon's max_client_requests); libvirt-python: 16 threads sharing one
  virConnect (its threads write every call at once).  The verdicts compare aiovirt's
  defaults.
* ``define``: defineXML + create of N test-driver domains by 16 workers on one connection, a
  fresh private host (benchmarks/node.xml) per round, as run.py's ``define`` (there aiovirt
  keeps to one socket; also shown with pipeline_depth=5).

Per round: wall time, this process's CPU (``time.process_time``, all threads), libvirtd's CPU,
and for SSH the CPU of this process's ``ssh`` children (the tunnel processes: NOT included in
the client CPU of either side) and of the far side's sshd session processes and nc.
Targets (the issue's): throughput >= 1.0x libvirt-python's and client CPU per call <= 0.8x
libvirt-python's, both on the best rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import libvirt  # type: ignore[import-untyped]  # noqa: E402

import aiovirt  # noqa: E402
from aiovirt.testing.daemon import PrivateDaemon  # noqa: E402
from aiovirt.testing.pki import loopback_tls  # noqa: E402
from aiovirt.testing.sshd import PrivateSSHD  # noqa: E402
from run import (LINES, add_loop_option, loop_in_use, pin, run_on, NODE_XML, SUMMARY, TEST_DOMAIN, Disturbance, Meter, Round,  # noqa: E402
                 Sample, Verdict, best, daemon_cpu_ns, describe_machine, describe_tree,
                 in_thread, interleave, median, print_summary, run_tasks, run_threads, say,
                 shares)

CONCURRENCY = 16
WORKERS = 16
TICK = os.sysconf("SC_CLK_TCK")


# -- processes ----------------------------------------------------------------------------------

def proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (ppid, name, CPU seconds: utime + stime) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        close = text.rindex(")")
        fields = text[close + 2:].split()
        table[int(entry)] = (int(fields[1]), text[text.index("(") + 1:close],
                             (int(fields[11]) + int(fields[12])) / TICK)
    return table


def descendants(table: dict[int, tuple[int, str, float]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def ssh_children(table: dict[int, tuple[int, str, float]] | None = None) -> set[int]:
    """This process's children named ssh: the tunnels of both clients."""
    table = proc_table() if table is None else table
    me = os.getpid()
    return {pid for pid, (ppid, name, _) in table.items() if ppid == me and name == "ssh"}


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode() for part in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


# -- measuring ----------------------------------------------------------------------------------

def task_cpu(pid: int) -> float | None:
    """A process's CPU seconds at ns resolution (schedstat, summed over its threads), where
    /proc/PID/stat counts whole clock ticks (10 ms: too coarse for an ssh child's round)."""
    ns = daemon_cpu_ns(pid)
    return None if ns is None else ns / 1e9


@dataclass
class RSample(Sample):
    ssh: float | None = None      # this process's ssh children, seconds
    far: float | None = None      # the sshd session processes and nc, seconds
    tunnels: int = 0              # ssh children busy in the round (> 1 ms of CPU: not
    #                               merely answering a keepalive of an idle connection)


class RemoteMeter(Meter):
    """run.py's Meter plus, with an sshd, the CPU of our ssh children and of the sshd's
    descendants (sessions, nc), counting processes alive at both ends of the round.  The
    /proc scans happen outside the timed and CPU-measured span."""

    def __init__(self, pid: int | None, sshd_pid: int | None) -> None:
        super().__init__(pid)
        self.sshd_pid = sshd_pid

    def _scan(self) -> tuple[dict[int, float], dict[int, float]] | None:
        if self.sshd_pid is None:
            return None
        table = proc_table()
        ssh = {pid: task_cpu(pid) for pid in ssh_children(table)}
        far = {pid: task_cpu(pid) for pid in descendants(table, self.sshd_pid)}
        return ({p: v for p, v in ssh.items() if v is not None},
                {p: v for p, v in far.items() if v is not None})

    def start(self) -> None:
        self._p0 = self._scan()
        super().start()

    def stop(self) -> RSample:
        s = super().stop()
        p1 = self._scan()
        if self._p0 is None or p1 is None:
            return RSample(s.wall, s.cpu, s.daemon)
        (ssh0, far0), (ssh1, far1) = self._p0, p1
        ssh = {p: ssh1[p] - ssh0[p] for p in ssh1 if p in ssh0}
        far = sum(far1[p] - far0[p] for p in far1 if p in far0)
        return RSample(s.wall, s.cpu, s.daemon, sum(ssh.values()), far,
                       sum(1 for v in ssh.values() if v > 1e-3))


class TreeDisturbance(Disturbance):
    """run.py's Disturbance, counting all our descendants (libvirtd, sshd and its sessions,
    the ssh tunnels) as our own work rather than other work on the machine."""

    def __init__(self) -> None:
        super().__init__(None)

    def _own(self) -> float:
        t = os.times()
        table = proc_table()
        ours = descendants(table, os.getpid())
        return (t.user + t.system + t.children_user + t.children_system +
                sum(table[pid][2] for pid in ours))


def stat(samples: list[RSample], field: str, per: int, pick: Any = median) -> float | None:
    values = [getattr(s, field) for s in samples]
    if any(v is None for v in values):
        return None
    if pick is median:
        return statistics.median(values) / per * 1e6
    return min(values) / per * 1e6


def us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def report(case: str, transport: str, res: dict[str, list[RSample]], per: int, unit: str,
           av: str, lv: str, measure: str) -> None:
    """The table of one case on one transport, and its verdicts (``av`` against ``lv``)."""
    ssh = transport == "ssh"
    head = (f"{'variant':<34} {unit + '/s best / median':>22} {'client CPU us':>14}"
            + (f" {'ssh us':>7} {'client+ssh':>10}" if ssh else "")
            + f" {'libvirtd us':>11}" + (f" {'sshd+nc us':>10} {'tunnels':>7}" if ssh else ""))
    say(f"per {unit}; CPU: best round / median round (us per {unit})")
    say(head)
    for name, samples in res.items():
        rate = f"{per / best(samples):.0f} / {per / median(samples):.0f}"
        cpu = f"{us(stat(samples, 'cpu', per, min))} / {us(stat(samples, 'cpu', per))}"
        line = f"{name:<34} {rate:>22} {cpu:>14}"
        if ssh:
            both = [RSample(s.wall, s.cpu + (s.ssh or 0), s.daemon) for s in samples]
            line += (f" {us(stat(samples, 'ssh', per)):>7}"
                     f" {us(stat(both, 'cpu', per, min)) + ' / ' + us(stat(both, 'cpu', per)):>10}")
        line += f" {us(stat(samples, 'daemon', per)):>11}"
        if ssh:
            line += (f" {us(stat(samples, 'far', per)):>10}"
                     f" {max(s.tunnels for s in samples):>7}")
        say(line)
    b = res[lv]
    for name in (n for n in res if n != lv):
        a = res[name]
        ratio, ratio_med = best(b) / best(a), median(b) / median(a)
        cpu_a, cpu_b = stat(a, "cpu", per, min), stat(b, "cpu", per, min)
        cpu_ratio = cpu_a / cpu_b if cpu_a and cpu_b else None
        say(f"{name} / {lv}: throughput {ratio:.2f}x best ({ratio_med:.2f}x median); client "
            f"CPU per {unit} {cpu_ratio:.2f}x (best rounds)")
    a = res[av]
    ratio = best(b) / best(a)
    cpu_a, cpu_b = stat(a, "cpu", per, min), stat(b, "cpu", per, min)
    cpu_ratio = cpu_a / cpu_b if cpu_a and cpu_b else None
    label = f"{case} {transport}"
    SUMMARY.append(Verdict(label, f"{measure}", f"{per / best(a):.0f}", f"{per / best(b):.0f}",
                           ratio, ">= 1.0x", ratio >= 1.0))
    SUMMARY.append(Verdict(label, f"client CPU us/{unit}", f"{cpu_a:.1f}", f"{cpu_b:.1f}",
                           cpu_ratio, "<= 0.8x",
                           None if cpu_ratio is None else cpu_ratio <= 0.8))
    if ssh:
        both_a = stat([RSample(s.wall, s.cpu + (s.ssh or 0), s.daemon) for s in a], "cpu", per,
                      min)
        both_b = stat([RSample(s.wall, s.cpu + (s.ssh or 0), s.daemon) for s in b], "cpu", per,
                      min)
        if both_a and both_b:
            say(f"counting the ssh tunnels too: client + ssh CPU per {unit} "
                f"{both_a / both_b:.2f}x")
            SUMMARY.append(Verdict(label, f"client+ssh CPU us/{unit}", f"{both_a:.1f}",
                                   f"{both_b:.1f}", both_a / both_b, "-", None))
    say()


# -- the cases ----------------------------------------------------------------------------------

async def lv_open(uri: str) -> libvirt.virConnect:
    return await asyncio.to_thread(libvirt.open, uri)


async def case_tiny(transport: str, uri: str, meter: RemoteMeter, rounds: int,
                    calls: int) -> None:
    conc = CONCURRENCY
    say(f"## tiny over {transport.upper()}: getLibVersion at concurrency {conc}, {calls} calls "
        f"per round, {rounds} interleaved rounds")
    counts = shares(calls, conc)

    def av(conn: aiovirt.Connection) -> Round:
        async def work(i: int) -> None:
            for _ in range(counts[i]):
                await conn.get_lib_version()

        async def run(m: Meter) -> Sample:
            return await run_tasks(conc, work, m)
        return run

    def lv(conn: libvirt.virConnect) -> Round:
        def work(i: int) -> None:
            for _ in range(counts[i]):
                conn.getLibVersion()
        return in_thread(lambda m: run_threads(conc, work, m))

    names = ("aiovirt", "aiovirt lanes=0 (1 socket)", "aiovirt lanes=0 pipeline_depth=5",
             f"libvirt-python {conc} thr, 1 conn")
    async with aiovirt.connect(uri) as conn, aiovirt.connect(uri, lanes=0) as single, \
            aiovirt.connect(uri, lanes=0, pipeline_depth=5) as deep:
        shared = await lv_open(uri)
        try:
            variants = {names[0]: av(conn), names[1]: av(single), names[2]: av(deep),
                        names[3]: lv(shared)}
            await interleave(1, variants, meter)   # warm-up, untimed (opens aiovirt's lanes)
            res = await interleave(rounds, variants, meter)
            sockets = len(conn.channels)
        finally:
            await asyncio.to_thread(shared.close)
    report("tiny", transport, res, calls, "call", names[0], names[3],
           f"calls/s at concurrency {conc}")
    say(f"(aiovirt used {sockets} sockets: its main one and its lanes"
        + (", each its own ssh tunnel)" if transport == "ssh" else ")"))
    say()


async def case_define(transport: str, uri: str, meter: RemoteMeter, rounds: int,
                      count: int) -> None:
    workers = WORKERS
    say(f"## define over {transport.upper()}: defineXML + create of {count} test-driver "
        f"domains, {workers} workers, one connection each, a fresh private host per round; "
        f"{rounds} interleaved rounds")

    async def av(m: Meter, **options: Any) -> Sample:
        async with aiovirt.connect(uri, **options) as conn:
            todo = iter(range(count))

            async def worker(_: int) -> None:
                for i in todo:
                    dom = await conn.define_xml(TEST_DOMAIN.format(name=f"d{i}"))
                    await dom.start()

            sample = await run_tasks(workers, worker, m)
            assert len(conn.channels) == 1
            assert len(await conn.list_domains(1 | 16)) == count  # ACTIVE | PERSISTENT
            return sample

    def lv(m: Meter) -> Sample:
        conn = libvirt.open(uri)
        try:
            todo = iter(range(count))

            def worker(_: int) -> None:
                for i in todo:
                    conn.defineXML(TEST_DOMAIN.format(name=f"d{i}")).create()

            sample = run_threads(workers, worker, m)
            assert len(conn.listAllDomains(1 | 16)) == count
            return sample
        finally:
            conn.close()

    async def av_deep(m: Meter) -> Sample:
        return await av(m, pipeline_depth=5)

    names = ("aiovirt", "aiovirt pipeline_depth=5", f"libvirt-python {workers} thr, 1 conn")
    res = await interleave(rounds, {names[0]: av, names[1]: av_deep, names[2]: in_thread(lv)},
                           meter)
    report("define", transport, res, count, "domain", names[0], names[2],
           f"define+start {count}: domains/s")


# -- setup ----------------------------------------------------------------------------------------

def ssh_wrapper(directory: Path, sshd: PrivateSSHD) -> Path:
    """An ``ssh`` that checks the private sshd's host key against its known_hosts file:
    ``command=`` for both clients (libvirt's +ssh has no known_hosts= of its own)."""
    path = directory / "ssh"
    path.write_text("#!/bin/sh\n"
                    f"exec /usr/bin/ssh -o UserKnownHostsFile={sshd.known_hosts} "
                    "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes \"$@\"\n")
    path.chmod(0o755)
    return path


def ssh_uri(sshd: PrivateSSHD, daemon: PrivateDaemon, wrapper: Path, path: str) -> str:
    user = pwd.getpwuid(os.getuid()).pw_name
    query = {"keyfile": str(sshd.user_key), "no_tty": "1", "socket": daemon.socket_path,
             "proxy": "netcat", "command": str(wrapper)}
    text = "&".join(f"{k}={quote(v, safe='/:,')}" for k, v in query.items())
    return f"test+ssh://{user}@{sshd.host}:{sshd.port}{path}?{text}"


async def same_ssh_command(uri: str) -> str:
    """Open one connection with each client; the argv of the ssh child each spawned."""
    before = ssh_children()
    async with aiovirt.connect(uri) as conn:
        await conn.get_lib_version()
        (pid,) = ssh_children() - before
        av = cmdline(pid)
    before = ssh_children()
    lv = await lv_open(uri)
    try:
        (pid,) = ssh_children() - before
        lv_argv = cmdline(pid)
    finally:
        await asyncio.to_thread(lv.close)
    if av != lv_argv:
        return (f"ssh command lines DIFFER:\n#   aiovirt:        {' '.join(av)}\n"
                f"#   libvirt-python: {' '.join(lv_argv)}")
    return f"same ssh command line for both: {' '.join(av)}"


async def main(options: argparse.Namespace) -> None:
    quick = options.quick
    rounds = options.rounds or (2 if quick else 5)
    calls = options.calls or (2000 if quick else 8000)
    domains = options.domains or (200 if quick else 1000)
    transports = ("tls", "ssh") if options.transport == "both" else (options.transport,)
    lv_version = libvirt.getVersion()
    lv_text = f"{lv_version // 1000000}.{lv_version // 1000 % 1000}.{lv_version % 1000}"
    with tempfile.TemporaryDirectory(prefix="avr-") as work:
        workdir = Path(work)
        config, pkipath = loopback_tls(workdir)
        with PrivateDaemon(workdir / "d", extra_config=config) as daemon, \
                PrivateSSHD(workdir / "sshd") as sshd:
            wrapper = ssh_wrapper(workdir, sshd)

            def uri(transport: str, path: str = "/default") -> str:
                if transport == "tls":
                    return daemon.uri(path=path, transport="tls") + f"?pkipath={pkipath}"
                return ssh_uri(sshd, daemon, wrapper, path)

            pinned = pin(daemon.pid) if options.pin else "not pinned"
            async with aiovirt.connect(daemon.uri()) as conn:
                lib = await conn.get_lib_version()
            say(f"# remote transports: aiovirt {aiovirt.__version__} vs libvirt-python {lv_text}, "
                f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
            say(f"# {describe_tree()}")
            say(f"# {describe_machine()}; a private libvirtd (max_client_requests 5), libvirt "
                f"{lib // 1000000}.{lib // 1000 % 1000}.{lib % 1000}, on loopback; "
                f"{'--quick, ' if quick else ''}{rounds} rounds per case; aiovirt on "
                f"{loop_in_use()}'s loop; {pinned}")
            say("# client CPU = this process (time.process_time, all threads); it does NOT "
                "include the ssh child processes of either client: their CPU is the 'ssh us' "
                "column, summed over this process's ssh children (/proc/PID/task/*/schedstat); "
                "'sshd+nc' is the far side's session processes and nc; 'tunnels' = ssh children "
                "busy in a round (> 1 ms CPU)")
            if "ssh" in transports:
                say(f"# ssh: {await same_ssh_command(uri('ssh'))}")
            say()
            started = time.perf_counter()
            disturbance = TreeDisturbance()
            for transport in transports:
                meter = RemoteMeter(daemon.pid, sshd.pid if transport == "ssh" else None)
                disturbance.start()
                await case_tiny(transport, uri(transport), meter, rounds, calls)
                disturbance.stop(f"tiny {transport}")
                disturbance.start()
                await case_define(transport, uri(transport, str(NODE_XML)), meter, rounds,
                                  domains)
                disturbance.stop(f"define {transport}")
            print_summary()
            say(f"(all cases took {time.perf_counter() - started:.0f} s)")
            say("(other work on the machine during each case, as a share of all its cores: "
                + ", ".join(disturbance.shares) + ")")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller, faster cases (< 1 min)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per case (default 5)")
    parser.add_argument("--calls", type=int, help="getLibVersion calls per round (8000)")
    parser.add_argument("--domains", type=int, help="domains defined+started per round (1000)")
    parser.add_argument("--transport", choices=("tls", "ssh", "both"), default="both")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--pin", action="store_true", help="libvirtd on CPU 0; this process, "
                        "its threads and its ssh children on CPU 1 (sshd is not pinned)")
    add_loop_option(parser)
    opts = parser.parse_args()
    try:
        run_on(opts.loop, main(opts))
    finally:
        if opts.output:
            Path(opts.output).write_text("\n".join(LINES) + "\n")
