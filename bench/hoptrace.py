"""Per-packet timestamps at every hop of a local run, and where audio lateness comes from.

A diagnostic, not part of any scenario. With ``HOPTRACE_DIR`` set, :func:`install` wraps aiortc's
DTLS transport so that every RTP packet a process sends (before SRTP) or handles on receipt
(when its event loop gets to it) is recorded as (monotonic ns, direction, transport, SSRC, PT,
sequence, RTP timestamp, size); the records are written to ``HOPTRACE_DIR/<tag>-<pid>.tsv`` at
exit. CLOCK_MONOTONIC is shared by the processes of one machine, and the relay and the stand-in
SFU keep RTP timestamps, so one audio packet can be followed across the hops by its timestamp.

Run a demo with it (the daemon and the stand-ins are separate processes; a ``sitecustomize``
on ``PYTHONPATH`` installs it in each)::

    mkdir -p /tmp/trace
    PYTHONPATH=$PWD/bench/hoptrace_site HOPTRACE_DIR=/tmp/trace avatar-bridge demo --out /tmp/d
    python -m bench.hoptrace /tmp/trace

The analysis prints, per audio stream (RTP timestamps 960 apart) and hop, the lateness of each
packet (its time minus its RTP time, minus the stream's best case) as p50/p95/p99/max, and per
second the worst, so a spike can be followed from the avatar stand-in's send to the Stream SFU
stand-in's receipt. Bounded: at most ``_MAX_ROWS`` records per process.
"""

from __future__ import annotations

import atexit
import collections
import functools
import glob
import itertools
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

_MAX_ROWS = 3_000_000
_rows: list[tuple[int, str, int, int, int, int, int, int]] = []


def _record(direction: str, transport: int, data: bytes) -> None:
    # RTCP (PT 192..223 in the second byte) is not traced.
    if len(data) < 12 or 192 <= data[1] <= 223 or len(_rows) >= _MAX_ROWS:
        return
    seq, ts, ssrc = struct.unpack("!HII", data[2:12])
    pt = data[1] & 0x7F
    _rows.append((time.monotonic_ns(), direction, transport, ssrc, pt, seq, ts, len(data)))


def install(tag: str = "") -> bool:
    """Trace this process when ``HOPTRACE_DIR`` is set. True when installed."""
    out = os.environ.get("HOPTRACE_DIR")
    if not out:
        return False
    from aiortc import rtcdtlstransport

    cls: Any = rtcdtlstransport.RTCDtlsTransport
    send, handle = cls._send_rtp, cls._handle_rtp_data

    # functools.wraps: the relay checks these methods' source (aiortc_hooks.ensure_compatible).
    @functools.wraps(send)
    async def _send_rtp(self: Any, data: bytes) -> None:
        _record("tx", id(self), data)
        await send(self, data)

    @functools.wraps(handle)
    async def _handle_rtp_data(self: Any, data: bytes, arrival_time_ms: int) -> None:
        _record("rx", id(self), data)
        await handle(self, data, arrival_time_ms)

    cls._send_rtp, cls._handle_rtp_data = _send_rtp, _handle_rtp_data
    name = tag or ("daemon" if "run" in sys.argv[1:2] else "proc")

    def dump() -> None:
        path = Path(out) / f"{name}-{os.getpid()}.tsv"
        with path.open("w") as f:
            f.writelines("\t".join(map(str, r)) + "\n" for r in _rows)

    atexit.register(dump)
    return True


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def analyse(directory: str) -> None:
    streams: dict[tuple[str, str, str, str], list[tuple[float, int]]] = collections.defaultdict(
        list
    )
    for name in sorted(glob.glob(os.path.join(directory, "*.tsv"))):
        proc = Path(name).stem
        with open(name) as f:
            for line in f:
                f_t, direction, tid, ssrc, _pt, _seq, f_ts, _n = line.split("\t")
                streams[(proc, direction, tid, ssrc)].append((int(f_t) / 1e9, int(f_ts)))
    for key, rows in streams.items():
        if len(rows) < 100:
            continue
        deltas = collections.Counter((b[1] - a[1]) % (1 << 32) for a, b in itertools.pairwise(rows))
        if deltas.most_common(1)[0][0] != 960:
            continue  # not 20 ms Opus
        # Unwrapped media time; lateness against the stream's best case.
        media: list[float] = []
        last, acc = rows[0][1], 0
        for _, rtp in rows:
            d = (rtp - last) % (1 << 32)
            acc += d - (1 << 32) if d >= 1 << 31 else d
            last = rtp
            media.append(acc / 48_000)
        transit = [at - m for (at, _), m in zip(rows, media, strict=True)]
        base = min(transit)
        late = [1000 * (x - base) for x in transit]
        t0 = rows[0][0]
        per_s: dict[int, float] = {}
        for (at, _), lt in zip(rows, late, strict=True):
            per_s[int(at - t0)] = max(per_s.get(int(at - t0), 0.0), lt)
        print(
            f"{key[0]} {key[1]} ssrc {key[3]}: {len(rows)} packets, lateness ms "
            f"p50 {_pct(late, 0.5):.1f} p95 {_pct(late, 0.95):.1f} p99 {_pct(late, 0.99):.1f} "
            f"max {max(late):.1f}"
        )
        print("   worst per second: " + " ".join(f"{s}:{v:.0f}" for s, v in sorted(per_s.items())))


if __name__ == "__main__":
    analyse(sys.argv[1])
