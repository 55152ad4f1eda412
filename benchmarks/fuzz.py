"""Fuzzing speed: how many hostile inputs per second the wire layer and the generated XDR
decoders take, and whether any raised something other than ``ProtocolError``.

    .venv/bin/python benchmarks/fuzz.py [--seconds S] [--seed N] [--output FILE]

A plain random loop (no hypothesis: its bookkeeping would be most of the cost), one core,
four measures of ``--seconds`` each:

- ``frames, random bytes``: a fresh ``FrameDecoder`` fed, in two reads, 1-4 packets of
  random bytes whose length words are plausible half the time;
- ``frames, mutated``: ``ClientProtocol.receive_data`` with calls pending, on well-framed
  replies, events and keepalive messages with a header field or payload byte damaged;
- ``decoders, random bytes``: a random generated decoder on 0-512 random bytes;
- ``decoders, mutated``: a random decoder on its smallest valid encoding with words
  overwritten by edge values, bytes flipped, inserted or cut.

Any exception other than ``ProtocolError`` (``XdrError`` is one) is counted and the first few
are printed: the figure that matters besides the rate is that this count is 0.
"""

from __future__ import annotations

import argparse
import itertools
import random
import struct
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiovirt.errors import ProtocolError  # noqa: E402
from aiovirt.protocol import keepalive, lxc, qemu, remote, virnet  # noqa: E402
from aiovirt.protocol.wire import (ERROR, MESSAGE, OK, REPLY, STREAM, ClientProtocol,  # noqa: E402
                          FrameDecoder, encode_message)
from aiovirt.protocol.xdr import XdrError, decode  # noqa: E402

Decoder = Callable[[bytes, int], Any]
EDGES = (0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 0x00400001, 0x00040001, 3, 2, 1, 0)
CALLED = [remote.REMOTE_PROC_CONNECT_GET_LIB_VERSION, remote.REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS,
          remote.REMOTE_PROC_DOMAIN_GET_XML_DESC, remote.REMOTE_PROC_NODE_GET_INFO,
          remote.REMOTE_PROC_CONNECT_GET_ALL_DOMAIN_STATS]


def decoders() -> list[tuple[str, Decoder]]:
    """Every generated decoder once (structs, unions, procedure arguments and results)."""
    found: dict[int, tuple[str, Decoder]] = {}
    for module in (remote, qemu, lxc, keepalive, virnet):
        short = module.__name__.rsplit(".", 1)[1]
        for name, function in vars(module).items():
            if name.startswith("_dec_") and callable(function) and id(function) not in found:
                found[id(function)] = (f"{short}.{name[5:]}", function)
        for info in getattr(module, "PROCEDURES", {}).values():
            for function in (info.decode_args, info.decode_ret):
                if function is not None and id(function) not in found:
                    found[id(function)] = (f"{short}.{info.name}", function)
    return sorted(found.values(), key=lambda item: item[0])


def smallest_encoding(decoder: Decoder, what: str) -> bytes:
    """The shortest zero words that decode entirely (or zeros with one small union tag)."""
    plain = (bytes(4 * words) for words in range(256))
    tagged = (bytes(4 * at) + struct.pack(">I", tag) + bytes(4 * (words - at - 1))
              for words in range(1, 64) for at in range(words) for tag in range(1, 17))
    for data in itertools.chain(plain, tagged):
        try:
            decode(decoder, data, what)
        except XdrError:
            continue
        return data
    raise SystemExit(f"{what}: no small valid encoding found")


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data + rng.randbytes(rng.choice((0, 0, 4, 16))))
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        at = rng.randrange(len(out))
        action = rng.randrange(4)
        if action == 0:
            out[at:at + 4] = struct.pack(">I", rng.choice(EDGES) if rng.random() < 0.7
                                         else rng.getrandbits(32))
        elif action == 1:
            out[at] ^= 1 << rng.randrange(8)
        elif action == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            del out[at:at + rng.randint(1, 8)]
    return bytes(out)


class Tally:
    """Inputs tried and exceptions of the wrong type, for one measure."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inputs = 0
        self.rejected = 0     # ProtocolError: the right answer to a bad input
        self.wrong: list[str] = []

    def wrong_type(self, exc: BaseException, what: str) -> None:
        if len(self.wrong) < 3:
            self.wrong.append(f"{what}: " + "".join(traceback.format_exception_only(exc)))
        else:
            self.wrong.append("")


def random_stream(rng: random.Random) -> bytes:
    """Random bytes cut into packets whose length words are, half the time, plausible
    (so that headers and bodies get read, not just the first length rejected)."""
    out = bytearray()
    for _ in range(rng.randint(1, 4)):
        body = rng.randbytes(rng.randint(0, 64))
        length = 28 + len(body) - 4 if rng.random() < 0.5 else rng.choice(
            (rng.getrandbits(32), rng.randint(0, 40), *EDGES))
        out += struct.pack(">I", length & 0xFFFFFFFF) + body
    return bytes(out)


def run_frames_random(rng: random.Random, seconds: float) -> Tally:
    tally = Tally("frames, random bytes")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(200):
            stream = random_stream(rng)
            cut = rng.randint(0, len(stream))
            frames = FrameDecoder()
            tally.inputs += 1
            try:
                frames.feed(stream[:cut])
                frames.feed(stream[cut:])
            except ProtocolError:
                tally.rejected += 1
            except Exception as exc:  # noqa: BLE001 - what we look for
                tally.wrong_type(exc, "FrameDecoder.feed")
    return tally


def run_frames_mutated(rng: random.Random, seconds: float,
                       seeds: dict[int, bytes]) -> Tally:
    tally = Tally("frames, mutated")
    args = {n: decode(remote.PROCEDURES[n].decode_args,
                      seeds[id(remote.PROCEDURES[n].decode_args)], "args")
            if remote.PROCEDURES[n].decode_args else None for n in CALLED}
    events = [info for info in remote.PROCEDURES.values() if info.event]

    def fresh() -> tuple[ClientProtocol, list[int], dict[int, int]]:
        protocol = ClientProtocol(max_in_flight=len(CALLED))
        serials = {}
        for number in CALLED:
            serial, _ = protocol.call(remote.PROCEDURES[number], args[number])
            serials[serial] = number
        return protocol, list(serials), serials

    protocol, open_serials, numbers = fresh()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            kind = rng.randrange(4)
            if kind == 0 and open_serials:          # a reply to a pending call
                serial = rng.choice(open_serials)
                info = remote.PROCEDURES[numbers[serial]]
                status = OK if rng.random() < 0.8 else ERROR
                payload = seeds[id(info.decode_ret)] if status == OK and info.decode_ret \
                    else seeds[id(virnet._dec_MessageError)] if status == ERROR else b""
                header = [remote.PROGRAM, info.number, REPLY, serial, status, payload, 1]
            elif kind == 1:                          # an event
                info = rng.choice(events)
                header = [remote.PROGRAM, info.number, MESSAGE, 1, OK,
                          seeds[id(info.decode_ret)], 1]
            elif kind == 2:                          # keepalive
                header = [keepalive.PROGRAM, rng.choice((1, 2)), MESSAGE, 0, OK, b"", 1]
            else:                                     # stream data for some serial
                header = [remote.PROGRAM, 201, STREAM, rng.randrange(8), 2,
                          rng.randbytes(16), 1]
            field = rng.randrange(8)
            if field < 5:
                header[field] = rng.choice(EDGES) if field not in (1, 2, 4) else \
                    rng.choice(EDGES) - 0x80000000
            elif field == 5 and header[5]:
                header[5] = mutate(rng, header[5])
            elif field == 6:
                header[6] = rng.choice(EDGES)
            try:
                packet = encode_message(*header)
            except (struct.error, ProtocolError):
                continue
            tally.inputs += 1
            try:
                for item in protocol.receive_data(packet):
                    open_serials = [s for s in open_serials if s != getattr(item, "serial", -1)]
                if not open_serials:
                    protocol, open_serials, numbers = fresh()
            except ProtocolError:
                tally.rejected += 1
                protocol, open_serials, numbers = fresh()
            except Exception as exc:  # noqa: BLE001 - what we look for
                tally.wrong_type(exc, "ClientProtocol.receive_data")
                protocol, open_serials, numbers = fresh()
    return tally


def run_decoders(rng: random.Random, seconds: float, table: list[tuple[str, Decoder]],
                 seeds: dict[int, bytes], mutated: bool) -> Tally:
    tally = Tally("decoders, mutated" if mutated else "decoders, random bytes")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(200):
            name, decoder = rng.choice(table)
            data = mutate(rng, seeds[id(decoder)]) if mutated else \
                rng.randbytes(rng.randint(0, 512))
            tally.inputs += 1
            try:
                decode(decoder, data, name)
            except ProtocolError:
                tally.rejected += 1
            except Exception as exc:  # noqa: BLE001 - what we look for
                tally.wrong_type(exc, name)
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measure (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", help="also write the report to this file")
    options = parser.parse_args()
    rng = random.Random(options.seed)
    table = decoders()
    began = time.perf_counter()
    seeds = {id(decoder): smallest_encoding(decoder, name) for name, decoder in table}
    lines = [f"fuzz: {len(table)} generated decoders (smallest valid encodings found in "
             f"{time.perf_counter() - began:.2f} s), {options.seconds:g} s per measure, "
             f"seed {options.seed}, Python {sys.version.split()[0]}", "",
             f"{'measure':<24} {'inputs':>10} {'inputs/s':>10} {'rejected':>9} {'wrong type':>10}"]
    print(lines[0], flush=True)
    tallies = [run_frames_random(rng, options.seconds),
               run_frames_mutated(rng, options.seconds, seeds),
               run_decoders(rng, options.seconds, table, seeds, mutated=False),
               run_decoders(rng, options.seconds, table, seeds, mutated=True)]
    for tally in tallies:
        lines.append(f"{tally.name:<24} {tally.inputs:>10} "
                     f"{tally.inputs / options.seconds:>10.0f} "
                     f"{tally.rejected / max(tally.inputs, 1):>8.0%} {len(tally.wrong):>10}")
    for tally in tallies:
        lines += [f"wrong type in {tally.name}: {w.strip()}" for w in tally.wrong if w]
    print("\n".join(lines[1:]))
    if options.output:
        Path(options.output).write_text("\n".join(lines) + "\n")
    return 1 if any(t.wrong for t in tallies) else 0


if __name__ == "__main__":
    raise SystemExit(main())
