"""What a viewer of a call would get, measured on the frames the stand-in SFU decodes.

One :class:`CallMeasure` per call aggregates everything published into it, so a publisher that
rejoins (a new SFU session) continues the same timeline. Every time is the host's monotonic clock
at receipt (``time.monotonic()``), which all processes in the test namespace share.

Sync marks are read by pluggable functions, by default those of :mod:`bridge.sim.marks`:
a :data:`MarkReader` (Y plane -> marks or None) and an :data:`OnsetDetectorFactory` (sample rate ->
streaming detector of audio onsets).
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bridge.sim import marks
from bridge.sim.marks import FLASH_FRAMES

Y = npt.NDArray[np.uint8]
PCM = npt.NDArray[np.int16]

# Receiver holds subtracted from receipt times (see media-chain-measured.md): aiortc's video
# jitter buffer releases a frame when the next frame's first packet arrives (one frame interval),
# and its audio jitter buffer prefetches 4 packets of 20 ms before releasing any.
AUDIO_HOLD_S = 0.080
# Frame RMS above which received audio counts as sound rather than silence or codec noise.
LOUD_RMS = 300.0
# A flash and an audio onset further apart than this are not the same mark.
PAIR_WINDOW_S = 0.5
# An inter-frame gap counts as a freeze above max(FREEZE_MIN_S, FREEZE_FACTOR x median interval).
FREEZE_MIN_S = 0.2
FREEZE_FACTOR = 3.0
# Bounded histories: enough for a long demo, never unbounded.
_HISTORY = 4096


class FrameMarksLike(Protocol):
    """The fields the measurement uses from ``bridge.sim.marks.FrameMarks``."""

    @property
    def frame_no(self) -> int: ...

    @property
    def media_ms(self) -> float: ...

    @property
    def flash(self) -> bool: ...


class StreamingOnsets(Protocol):
    """Fed consecutive mono PCM; returns onsets as sample indices since its creation."""

    def feed(self, pcm: PCM) -> list[int]: ...


MarkReader = Callable[[Y], FrameMarksLike | None]
OnsetDetectorFactory = Callable[[int], StreamingOnsets]  # sample rate -> detector


def _default_onsets(sample_rate: int) -> StreamingOnsets:
    return marks.OnsetDetector(sample_rate)


# ---- measurement -------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _dbfs(rms: float) -> float | None:
    return round(20 * math.log10(rms / 32768.0), 1) if rms > 0 else None


class FrameGaps:
    """The gaps between consecutive frames of one stream, and the freezes among them: a gap over
    max(FREEZE_MIN_S, FREEZE_FACTOR x the median recent gap), WebRTC's freeze rule."""

    def __init__(self) -> None:
        self.frames = 0
        self.freezes = 0
        self.longest_gap_s = 0.0
        self.intervals: deque[float] = deque(maxlen=120)
        self.last_t: float | None = None

    def add(self, t: float) -> None:
        self.frames += 1
        if self.last_t is not None:
            gap = t - self.last_t
            self.intervals.append(gap)
            median = statistics.median(self.intervals)
            if len(self.intervals) >= 5 and gap > max(FREEZE_MIN_S, FREEZE_FACTOR * median):
                self.freezes += 1
            self.longest_gap_s = max(self.longest_gap_s, gap)
        self.last_t = t

    def snapshot(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "freezes": self.freezes,
            "longest_gap_ms": round(1000 * self.longest_gap_s, 1),
        }


class CallMeasure:
    """Per-call receive statistics. Not thread-safe: fed from the event loop only."""

    def __init__(
        self,
        cid: str,
        mark_reader: MarkReader | None = None,
        onset_detector: OnsetDetectorFactory | None = None,
    ) -> None:
        self.cid = cid
        self._read_marks: MarkReader = mark_reader or marks.read_frame
        self._new_detector: OnsetDetectorFactory = onset_detector or _default_onsets
        self.created_t = time.monotonic()
        # Sender clock origin (monotonic seconds of media_ms == 0), for end-to-end latency.
        self.media_origin_t: float | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything measured so far (a test's warm-up)."""
        self.reset_t = time.monotonic()
        # video
        self.frames = 0
        self.sizes: dict[str, int] = {}
        self.first_frame_t: float | None = None
        self.last_frame_t: float | None = None
        # Decoded pictures (what a viewer sees, late too when the decoder waits for a CPU) and
        # frames completed by the receiver's jitter buffer (what the network delivered).
        self.decoded = FrameGaps()
        self.assembled = FrameGaps()
        self.first_assembled_t: float | None = None
        # The first publisher connection of the call up (ICE and DTLS): frames a publisher
        # wrote before it never arrive (the call's first keyframe among them).
        self.publisher_connected_t: float | None = None
        self.withheld = 0
        self.marks_read = 0
        self.first_mark: int | None = None
        self.last_mark: int | None = None
        self.marks_backwards = 0
        self.marks_repeated = 0
        self.marks_missing = 0
        self.max_mark_gap = 0
        self.recent_marks: deque[int] = deque(maxlen=64)
        self.latency_ms: deque[float] = deque(maxlen=_HISTORY)
        self._prev_flash = False
        self.flash_times: deque[float] = deque(maxlen=_HISTORY)
        self._last_media_ms: float | None = None
        self._flash_last: int | None = None  # frame number of the last flashed frame seen
        # (first flashed frame seen, when it was shown, media ms per frame, the dark frame seen
        # before it) awaiting the flash's end.
        self._flash_pending: tuple[int, float, float, int] | None = None
        self.flashes_late_first = 0  # flashes whose first frame was lost, timed from the end
        self.flashes_unresolved = 0  # flashes whose first and end frames were lost: not timed
        self.flashes_half_frame = 0  # of flashes_late_first, timed within half a frame
        # audio
        self.audio_frames = 0
        self.audio_samples = 0
        self.audio_rate: int | None = None
        self.audio_channels: int | None = None
        self.first_audio_t: float | None = None
        self._sum_sq = 0.0
        self._peak_rms = 0.0
        # Receipt time of the last audio frame above the onset threshold (barge-in timing).
        self.last_loud_t: float | None = None
        self._detector: StreamingOnsets | None = None
        self._detector_base = 0  # audio_samples when the detector was created
        # (index of first sample, receipt time) per received audio frame, for onset timing
        self._frame_index: deque[tuple[int, float]] = deque(maxlen=_HISTORY)
        self.onset_times: deque[float] = deque(maxlen=_HISTORY)
        # (onset time, dominant frequency just after it) per onset: which coded beep it was
        # (bridge.sim.marks.coded_beeps), to tell a lost beep from one heard twice.
        self._tones: marks.OnsetTones | None = None
        self.onset_tones: deque[tuple[float, float]] = deque(maxlen=_HISTORY)
        # Decoder release minus wire arrival per audio frame (the receiver's jitter buffer).
        self.audio_backlog_ms: deque[float] = deque(maxlen=_HISTORY)

    # ---- video ----

    def on_video(self, width: int, height: int, y: Y | None, t: float | None = None) -> None:
        """One decoded picture; ``y`` is its Y plane (h x w view) or None to skip mark reading."""
        t = time.monotonic() if t is None else t
        self.frames += 1
        key = f"{width}x{height}"
        self.sizes[key] = self.sizes.get(key, 0) + 1
        if self.first_frame_t is None:
            self.first_frame_t = t
        self.decoded.add(t)
        self.last_frame_t = t
        if y is not None:
            self._on_marks(self._read_marks(y), t)

    def on_video_withheld(self) -> None:
        """A completed frame not decoded: it follows a break the receiver could not repair and
        predicts from a missing picture (``rtp_taps.DecodableGate``)."""
        self.withheld += 1

    def on_video_assembled(self, t: float | None = None) -> None:
        """One encoded frame completed by the receiver's jitter buffer, handed to its decoder."""
        t = time.monotonic() if t is None else t
        if self.first_assembled_t is None:
            self.first_assembled_t = t
        self.assembled.add(t)

    def on_publisher_connected(self) -> None:
        if self.publisher_connected_t is None:
            self.publisher_connected_t = time.monotonic()

    @property
    def freezes(self) -> int:
        return self.decoded.freezes

    @property
    def longest_gap_s(self) -> float:
        return self.decoded.longest_gap_s

    @property
    def intervals(self) -> deque[float]:
        return self.decoded.intervals

    def _on_marks(self, marks: FrameMarksLike | None, t: float) -> None:
        if marks is None:
            return
        self.marks_read += 1
        n = marks.frame_no
        self.recent_marks.append(n)
        prev, prev_media_ms = self.last_mark, self._last_media_ms
        self._last_media_ms = marks.media_ms
        if self.first_mark is None:
            self.first_mark = n
        elif self.last_mark is not None:
            if n == self.last_mark:
                self.marks_repeated += 1
            elif n < self.last_mark:
                self.marks_backwards += 1
            else:
                self.marks_missing += n - self.last_mark - 1
                self.max_mark_gap = max(self.max_mark_gap, n - self.last_mark)
        self.last_mark = n
        if self.media_origin_t is not None and not math.isnan(marks.media_ms):
            self.latency_ms.append(1000 * (t - (self.media_origin_t + marks.media_ms / 1000)))
        # The picture was shown one frame interval before aiortc released it.
        shown = t - (statistics.median(self.intervals) if self.intervals else 0.0)
        if marks.flash and not self._prev_flash:
            if n == 0 or (prev is not None and n == prev + 1):
                # The frame before was seen dark (or there is none): this is the onset's frame.
                self.flash_times.append(shown)
                self._flash_pending = None
            else:
                # Frames before this one were lost (an encoder dropping frames): which flashed
                # frame this is follows from where the flash ends (it spans FLASH_FRAMES). Media
                # ms per frame from the marks (both count from the stream's first frame).
                if prev is not None and prev_media_ms is not None and n > prev:
                    frame_ms = (marks.media_ms - prev_media_ms) / (n - prev)
                else:
                    frame_ms = marks.media_ms / n
                dark_before = prev if prev is not None and prev < n else -1
                self._flash_pending = (n, shown, frame_ms, dark_before)
        elif not marks.flash and self._prev_flash and self._flash_pending is not None:
            self._resolve_flash(n)
        if marks.flash:
            self._flash_last = n
        self._prev_flash = marks.flash

    def _resolve_flash(self, first_dark: int) -> None:
        """The flash's first frame from what was seen around it: it started after the dark
        frame before it and no later than its first frame seen, and its FLASH_FRAMES ended at
        or after the last flashed frame seen and before the dark frame after. One frame left:
        timed from it; two: from between them (half a frame at most off, less than the flash's
        own one-frame quantization); more: not a measurement."""
        seen_no, seen_t, frame_ms, dark_before = self._flash_pending or (0, 0.0, 0.0, 0)
        self._flash_pending = None
        last = self._flash_last if self._flash_last is not None else seen_no
        lo = max(dark_before + 1, last - (FLASH_FRAMES - 1))
        hi = min(seen_no, first_dark - FLASH_FRAMES)
        if hi < lo or hi - lo > 1:
            self.flashes_unresolved += 1  # ambiguous (or not a FLASH_FRAMES flash): no guess
            return
        start = (lo + hi) / 2
        self.flash_times.append(seen_t - (seen_no - start) * frame_ms / 1000)
        self.flashes_late_first += 1
        self.flashes_half_frame += hi - lo

    # ---- audio ----

    def on_audio(
        self,
        pcm: PCM,
        sample_rate: int,
        channels: int,
        t: float | None = None,
        *,
        wire_t: float | None = None,
    ) -> None:
        """One decoded audio frame (interleaved int16); only the first channel is analysed.

        ``t`` is when the decoder released it (the receiver's hold, ``AUDIO_HOLD_S``, is taken
        off); ``wire_t``, when known, is when its packet arrived, and is used as is: a receive
        jitter buffer that keeps a backlog after a burst must not read as the sender's skew.
        """
        t = time.monotonic() if t is None else t
        heard = wire_t if wire_t is not None else t - AUDIO_HOLD_S
        if wire_t is not None:
            self.audio_backlog_ms.append(1000 * (t - wire_t))
        mono = pcm.reshape(-1, channels)[:, 0] if channels > 1 else pcm.reshape(-1)
        if self.first_audio_t is None:
            self.first_audio_t = t
        if self._detector is None or self.audio_rate != sample_rate:
            self._detector = self._new_detector(sample_rate)
            self._tones = marks.OnsetTones(sample_rate)
            self._detector_base = self.audio_samples
        self.audio_rate, self.audio_channels = sample_rate, channels
        self._frame_index.append((self.audio_samples, heard))
        self.audio_frames += 1
        self.audio_samples += len(mono)
        sq = float(np.square(mono, dtype=np.float64).sum())
        self._sum_sq += sq
        if len(mono):
            rms = math.sqrt(sq / len(mono))
            self._peak_rms = max(self._peak_rms, rms)
            if rms >= LOUD_RMS:
                self.last_loud_t = heard
        found = self._detector.feed(mono)
        for idx in found:
            at = self._time_of(self._detector_base + idx, sample_rate)
            if at is not None:
                self.onset_times.append(at)
        if self._tones is not None:
            for idx, hz in self._tones.feed(mono, found):
                at = self._time_of(self._detector_base + idx, sample_rate)
                if at is not None:
                    self.onset_tones.append((at, hz))

    def _time_of(self, sample_index: int, rate: int) -> float | None:
        starts = [s for s, _ in self._frame_index]
        i = bisect.bisect_right(starts, sample_index) - 1
        if i < 0:
            return None
        first, t = self._frame_index[i]
        return t + (sample_index - first) / rate

    # ---- results ----

    def skews_ms(self) -> list[float]:
        """Flash time minus the nearest audio onset (negative: picture early), per paired mark."""
        return [skew for _, skew in self.timed_skews_ms()]

    def timed_skews_ms(self) -> list[tuple[float, float]]:
        """(flash time, skew ms) per paired mark, as :meth:`skews_ms`."""
        out: list[tuple[float, float]] = []
        onsets = list(self.onset_times)
        if not onsets:
            return out
        for ft in self.flash_times:
            i = bisect.bisect_left(onsets, ft)
            near = [onsets[j] for j in (i - 1, i) if 0 <= j < len(onsets)]
            best = min(near, key=lambda a: abs(a - ft))
            if abs(best - ft) <= PAIR_WINDOW_S:
                out.append((ft, 1000 * (ft - best)))
        return out

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        video: dict[str, Any] = {
            "frames": self.frames,
            "sizes": dict(self.sizes),
            "resolution": max(self.sizes, key=lambda k: self.sizes[k]) if self.sizes else None,
            "first_frame_s": None
            if self.first_frame_t is None
            else round(self.first_frame_t - self.reset_t, 3),
            "fps": None,
            "freezes": self.freezes,
            "longest_gap_ms": round(1000 * self.longest_gap_s, 1),
            "since_last_frame_s": None
            if self.last_frame_t is None
            else round(now - self.last_frame_t, 3),
            # The same gaps at the jitter buffer's output: a freeze here was delivered late by
            # the network or the sender; one only in the decoded figures is this receiver's CPU.
            "assembled": self.assembled.snapshot(),
            # Frames after an unrepaired break, held back until a keyframe as a viewer does.
            "withheld_until_keyframe": self.withheld,
        }
        if self.first_frame_t is not None and self.last_frame_t is not None and self.frames > 1:
            span = self.last_frame_t - self.first_frame_t
            video["fps"] = round((self.frames - 1) / span, 2) if span > 0 else None
        marks = {
            "read": self.marks_read,
            "first": self.first_mark,
            "last": self.last_mark,
            "in_order": self.marks_backwards == 0 and self.marks_repeated == 0,
            "backwards": self.marks_backwards,
            "repeated": self.marks_repeated,
            "missing": self.marks_missing,
            "max_gap": self.max_mark_gap,
            "recent": list(self.recent_marks)[-10:],
            "flashes": len(self.flash_times),
            "flashes_late_first": self.flashes_late_first,
            "flashes_unresolved": self.flashes_unresolved,
            "flashes_half_frame": self.flashes_half_frame,
        }
        lat = list(self.latency_ms)
        rate = self.audio_rate
        audio: dict[str, Any] = {
            "frames": self.audio_frames,
            "sample_rate": rate,
            "channels": self.audio_channels,
            "seconds": round(self.audio_samples / rate, 3) if rate else 0.0,
            "first_audio_s": None
            if self.first_audio_t is None
            else round(self.first_audio_t - self.reset_t, 3),
            "level_dbfs": _dbfs(math.sqrt(self._sum_sq / self.audio_samples))
            if self.audio_samples
            else None,
            "peak_frame_dbfs": _dbfs(self._peak_rms),
            "onsets": len(self.onset_times),
            "jitter_buffer_ms_p50": _pct(list(self.audio_backlog_ms), 0.5),
            "jitter_buffer_ms_max": _pct(list(self.audio_backlog_ms), 1.0),
        }
        skews = self.skews_ms()
        sync = {
            "pairs": len(skews),
            "skew_ms_median": round(statistics.median(skews), 1) if skews else None,
            "skew_ms_min": round(min(skews), 1) if skews else None,
            "skew_ms_max": round(max(skews), 1) if skews else None,
            "recent_ms": [round(s, 1) for s in skews[-10:]],
            "video_hold_ms": round(1000 * statistics.median(self.intervals), 1)
            if self.intervals
            else None,
            "audio_hold_ms": round(1000 * AUDIO_HOLD_S, 1),
        }
        latency = {"samples": len(lat), "p50_ms": _pct(lat, 0.5), "p95_ms": _pct(lat, 0.95)}
        return {
            "cid": self.cid,
            "video": video,
            "marks": marks,
            "audio": audio,
            "sync": sync,
            "latency": latency,
        }
