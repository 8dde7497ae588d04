"""Per-mark A/V timing inside the daemon on the transcode path: where a mark's skew is born.

A diagnostic, not part of any scenario. With ``MARKTRACE_DIR`` set, :func:`install` wraps the
sync stage and the Stream publisher of the daemon process so that each beep onset and each mark's
first flash frame is timed (CLOCK_MONOTONIC) at two points:

* ``in``: handed to the sync stage by the LiveKit downlink (after the SDK's jitter buffers and
  decoders: NetEq for audio);
* ``out``: written to the Stream SDK (audio into its PCM queue, video encoded), i.e. after the
  sync stage's video hold.

Flash frames are timed as ``t + lead`` (the stand-in's lead patch, bridge/sim/marks.py), audio
onsets at the onset's sample within its chunk. It also records the sync stage's hold and the
downlink's jitter-buffer readings. Output: ``MARKTRACE_DIR/marks-<pid>.json`` at exit. Run::

    PYTHONPATH=$PWD/bench/hoptrace_site MARKTRACE_DIR=DIR \
        avatar-bridge demo --media-path transcode --out OUT
    python -m bench.marktrace DIR OUT/report.json

The analysis pairs each flash with the nearest onset (within 250 ms) at each point and prints
per mark: skew at ``in`` (what the downlink delivered), at ``out`` (what the bridge published),
the SFU stand-in's arrival skew and the browser's playout skew from the demo's report, with the
hold and the receivers' delays at that moment.
"""

from __future__ import annotations

import atexit
import bisect
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

_MAX = 20_000
_events: dict[str, list[Any]] = {
    "onset_in": [],
    "onset_out": [],
    "flash_in": [],
    "flash_out": [],
    "hold": [],
    "jitter": [],
}


def _add(kind: str, value: Any) -> None:
    rows = _events[kind]
    if len(rows) < _MAX:
        rows.append(value)


class _Onsets:
    def __init__(self, kind: str) -> None:
        from bridge.sim import marks

        self._kind = kind
        self._det: Any = None
        self._marks = marks
        self._n = 0

    def feed(self, samples: Any, rate: int) -> None:
        now = time.monotonic_ns()
        if self._det is None:
            self._det = self._marks.OnsetDetector(rate)
        for idx in self._det.feed(samples):
            # The chunk's first sample plays at `now`; the onset is idx - start samples later.
            _add(self._kind, now + (idx - self._n) * 1_000_000_000 // rate)
        self._n += len(samples)


class _Flashes:
    def __init__(self, kind: str) -> None:
        from bridge.sim import marks

        self._kind = kind
        self._marks = marks
        self._lit = False

    def feed(self, frame: Any) -> None:
        now = time.monotonic_ns()
        w, h = frame.width, frame.height
        y = frame.data[: w * h].reshape(h, w)
        m = self._marks.read_frame(y)
        if m is None:
            return
        if m.flash and not self._lit:
            lead = self._marks.read_lead_ms(y) or 0.0
            _add(self._kind, now + int(lead * 1_000_000))
        self._lit = m.flash


def install() -> bool:
    out = os.environ.get("MARKTRACE_DIR")
    if not out or "run" not in sys.argv[1:2]:
        return False  # only the daemon
    from bridge import sync
    from bridge.stream import publisher

    stage: Any = sync.SyncStage
    pub: Any = publisher.StreamPublisher
    onset_in, onset_out = _Onsets("onset_in"), _Onsets("onset_out")
    flash_in, flash_out = _Flashes("flash_in"), _Flashes("flash_out")
    put_audio, put_video, put_jb = stage.put_audio, stage.put_video, stage.put_jitter_buffer
    write_audio, write_video = pub.write_audio, pub.write_video

    @functools.wraps(put_audio)
    def _put_audio(self: Any, chunk: Any) -> None:
        onset_in.feed(chunk.samples, chunk.fmt.sample_rate)
        put_audio(self, chunk)

    @functools.wraps(put_video)
    def _put_video(self: Any, frame: Any) -> None:
        flash_in.feed(frame)
        put_video(self, frame)

    @functools.wraps(put_jb)
    def _put_jb(self: Any, reading: Any) -> None:
        put_jb(self, reading)
        a = self.alignment
        _add("jitter", (reading.at_ns, reading.kind, a.audio.ms, a.video.ms))
        now = time.monotonic_ns()
        _add("hold", (now, a.hold_ms(), self.pacer.depth_ms(now)))

    @functools.wraps(write_audio)
    async def _write_audio(self: Any, chunk: Any) -> None:
        onset_out.feed(chunk.samples, chunk.fmt.sample_rate)
        await write_audio(self, chunk)

    @functools.wraps(write_video)
    async def _write_video(self: Any, frame: Any) -> None:
        await write_video(self, frame)
        flash_out.feed(frame)

    stage.put_audio, stage.put_video, stage.put_jitter_buffer = _put_audio, _put_video, _put_jb
    pub.write_audio, pub.write_video = _write_audio, _write_video

    def dump() -> None:
        path = Path(out) / f"marks-{os.getpid()}.json"
        path.write_text(json.dumps(_events))

    atexit.register(dump)
    return True


def _pair(flashes: list[int], onsets: list[int]) -> list[tuple[int, float]]:
    """(flash time, skew ms) for each flash with an onset within 250 ms."""
    out = []
    for f in flashes:
        i = bisect.bisect_left(onsets, f)
        near = [onsets[j] for j in (i - 1, i) if 0 <= j < len(onsets)]
        if not near:
            continue
        o = min(near, key=lambda x: abs(x - f))
        if abs(o - f) <= 250_000_000:
            out.append((f, (f - o) / 1e6))
    return out


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    mags = sorted(abs(v) for v in values)

    def q(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    return (
        f"median {q(ordered, 0.5):+.1f}, |p95| {q(mags, 0.95):.1f}, |p99| {q(mags, 0.99):.1f} "
        f"ms ({len(values)})"
    )


def analyse(directory: str, report: str | None) -> None:
    for name in sorted(Path(directory).glob("marks-*.json")):
        ev = json.loads(name.read_text())
        sin = _pair(ev["flash_in"], sorted(ev["onset_in"]))
        sout = _pair(ev["flash_out"], sorted(ev["onset_out"]))
        arrival: list[float] = []
        viewer: list[float] = []
        if report:
            rep = json.loads(Path(report).read_text())
            arrival = (rep.get("skew_ms") or {}).get("values") or []
            viewer = ((rep.get("viewer") or {}).get("skew_ms") or {}).get("values") or []
        holds = ev["hold"]
        hold_t = [h[0] for h in holds]
        jit = ev["jitter"]
        jit_t = [j[0] for j in jit]
        t0 = sin[0][0] if sin else 0
        print(f"{name.name}: {len(sin)} marks in, {len(sout)} out")
        first = [s for t, s in sout if t - t0 < 10_000_000_000]
        for label, values in (
            ("in (downlink hand-off)", [s for _, s in sin]),
            ("out (publisher write)", [s for _, s in sout]),
            ("out, first 10 s", first),
            ("arrival at the SFU", arrival),
            ("viewer at playout", viewer),
        ):
            print(f"  {label:24s} {_summary(values)}")
        print("  #   t(s)    in    out  arrival  viewer   hold  audioJB videoJB  pcmQ")
        for k, (t, s_in) in enumerate(sin):
            s_out = next((s for tt, s in sout if 0 <= tt - t < 600_000_000), None)
            hrow = holds[bisect.bisect_right(hold_t, t) - 1] if hold_t and hold_t[0] <= t else None
            h = None if hrow is None else hrow[1]
            pq = None if hrow is None or len(hrow) < 3 else hrow[2]
            j = jit[bisect.bisect_right(jit_t, t) - 1] if jit_t and jit_t[0] <= t else None
            print(
                f"{k:3d} {(t - t0) / 1e9:6.2f} {s_in:6.1f} "
                f"{'' if s_out is None else f'{s_out:6.1f}':>6} "
                f"{arrival[k] if k < len(arrival) else '':>8} "
                f"{viewer[k] if k < len(viewer) else '':>7} "
                f"{'' if h is None else f'{h:6.1f}':>6} "
                f"{'' if j is None or j[2] is None else f'{j[2]:7.1f}':>7} "
                f"{'' if j is None or j[3] is None else f'{j[3]:7.1f}':>7} "
                f"{'' if pq is None else f'{pq:6.1f}':>6}"
            )


if __name__ == "__main__":
    analyse(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
