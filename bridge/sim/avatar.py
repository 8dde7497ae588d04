"""A synthetic avatar renderer for the LiveAvatar stand-in.

It plays the received speech back in real time after ``render_latency_s`` and draws a face whose
mouth opening follows the energy of the audio of the same instant, with sync marks
(:mod:`bridge.sim.marks`) on every frame: the flash patch lights on each frame whose interval
contains an onset of the audio it plays out, so a receiver measures skew as flash - onset.

Timing: one media clock per renderer (``t0`` = creation). A tick loop computes 20 ms audio ticks
slightly ahead of real time (never further ahead than the render latency, so audio pushed now is
always scheduled after what is already computed) and fires the speak/state events when their
playout instant is reached. The tracks are live sources: a late consumer skips ahead rather than
building latency. The face is precomputed as I420 planes; per frame the work is one plane copy,
one mouth patch and the marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
import soxr
import structlog
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from prometheus_client import Counter

from bridge.sim import marks

log = structlog.get_logger(__name__)

OUT_RATE = 48_000
IN_RATE = 24_000
TICK_S = 0.02
TICK_SAMPLES = int(OUT_RATE * TICK_S)
_RING_TICKS = 100  # 2 s of computed audio kept for late consumers and the video's lookups
_MOUTH_LEVELS = 8
VIDEO_CLOCK = 90_000
CONTROL_SPAN_S = 0.2  # a delayed control beep's audio: the beep (100 ms) and a margin

RESOLUTIONS: dict[str, tuple[int, int]] = {
    "low": (640, 360),
    "medium": (854, 480),
    "high": (1280, 720),
    "very_high": (1920, 1080),
}

SIM_AVATAR_FRAMES = Counter("sim_avatar_video_frames_total", "Video frames rendered by stand-ins")
SIM_AVATAR_SKIPPED = Counter(
    "sim_avatar_skipped_frames_total",
    "Frames skipped because a track consumer fell behind",
    ["kind"],
)

SIM_AVATAR_UNDERRUNS = Counter(
    "sim_avatar_playback_underruns_total",
    "Times a stand-in avatar's playback buffer ran dry mid-turn (audio arrived too late)",
)
_TURNS_KEPT = 256


@dataclass(frozen=True, slots=True)
class RendererEvent:
    """``kind``: speak_started, speak_ended, speak_interrupted or state (``state`` then set)."""

    kind: str
    event_id: str | None = None
    state: str | None = None
    previous_state: str | None = None
    media_s: float = 0.0


RendererListener = Callable[[RendererEvent], None]


@dataclass(slots=True)
class _Segment:
    event_id: str
    samples: npt.NDArray[np.int16]
    start: int  # absolute output sample index of samples[0]
    pos: int = 0
    first: bool = False  # first audio of its turn


@dataclass(slots=True)
class _TurnEnd:
    event_id: str
    at: int  # absolute output sample index at which the turn's audio ends


@dataclass(slots=True)
class _Turn:
    event_id: str
    resampler: soxr.ResampleStream
    started: bool = False
    ended: bool = False
    last_end: int = 0  # output sample index after the turn's last queued sample


@dataclass(slots=True)
class TurnTiming:
    """What the stand-in saw of one turn, in monotonic seconds (first-sound parts)."""

    first_audio_rx_t: float  # the turn's first agent.speak audio reached the renderer
    first_play_t: float | None = None  # the playout instant of its first sample
    first_frame_t: float | None = None  # the audio frame carrying that sample leaves the renderer
    underruns: int = 0  # times its playback buffer ran dry mid-turn
    underrun_s: float = 0.0  # silence those gaps inserted


@dataclass(slots=True)
class _Face:
    base: npt.NDArray[np.uint8]  # flat I420, height*3/2 x width
    mouth_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in luma
    mouths: list[npt.NDArray[np.uint8]] = field(default_factory=list)  # luma patches per level


def _ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> npt.NDArray[np.bool_]:
    yy, xx = np.ogrid[:h, :w]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def _build_face(width: int, height: int) -> _Face:
    y = np.full((height, width), 60, dtype=np.uint8)
    u = np.full((height // 2, width // 2), 140, dtype=np.uint8)
    v = np.full((height // 2, width // 2), 110, dtype=np.uint8)
    top = marks.barcode_height(width) + height // 20
    cx, cy = width / 2, (top + height) / 2
    ry = (height - top) * 0.42
    rx = ry * 0.8
    head = _ellipse(height, width, cx, cy, rx, ry)
    y[head] = 170
    head_c = head[::2, ::2]
    u[head_c] = 110
    v[head_c] = 150
    for x0, y0, x1, y1 in marks.mark_boxes(width, height):  # neutral: exact luma in RGB
        u[y0 // 2 : (y1 + 1) // 2, x0 // 2 : (x1 + 1) // 2] = 128
        v[y0 // 2 : (y1 + 1) // 2, x0 // 2 : (x1 + 1) // 2] = 128
    for ex in (cx - rx * 0.38, cx + rx * 0.38):
        y[_ellipse(height, width, ex, cy - ry * 0.25, rx * 0.12, ry * 0.08)] = 30
    # Mouth box: the patch rewritten per frame, aligned to even coordinates.
    mw, mh = int(rx * 0.7) & ~1, int(ry * 0.36) & ~1
    x0, y0 = int(cx - mw / 2) & ~1, int(cy + ry * 0.45 - mh / 2) & ~1
    box = (x0, y0, x0 + mw, y0 + mh)
    mouths = []
    for level in range(_MOUTH_LEVELS):
        patch = y[y0 : y0 + mh, x0 : x0 + mw].copy()
        open_ry = max(1.0, mh / 2 * (0.08 + 0.92 * level / (_MOUTH_LEVELS - 1)))
        patch[_ellipse(mh, mw, mw / 2, mh / 2, mw * 0.45, open_ry)] = 40
        mouths.append(patch)
    base = np.concatenate((y.reshape(-1), u.reshape(-1), v.reshape(-1))).reshape(-1, width)
    return _Face(base=base, mouth_box=box, mouths=mouths)


def mouth_level(rms: float) -> int:
    """Mouth opening 0 (closed) .. 7 from RMS: -50 dBFS and below closed, -10 dBFS wide open."""
    if rms <= 0:
        return 0
    db = 20 * math.log10(rms / 32768)
    return round(min(1.0, max(0.0, (db + 50) / 40)) * (_MOUTH_LEVELS - 1))


class AvatarRenderer:
    """Renders one avatar session. Create inside a running loop, then :meth:`start`."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: int = 30,
        render_latency_s: float = 0.2,
        *,
        listener: RendererListener | None = None,
        onset_threshold: float = 1000.0,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError("I420 needs even dimensions")
        self.width = width
        self.height = height
        self.fps = fps
        self.render_latency_s = render_latency_s
        self._listener = listener
        self._face = _build_face(width, height)
        self._latency_samples = int(render_latency_s * OUT_RATE)
        # Compute ahead by at most the render latency: newly pushed audio lands after it.
        self._lookahead_ticks = min(3, int(render_latency_s / TICK_S))
        self._t0 = time.monotonic()
        self._queue: deque[_Segment | _TurnEnd] = deque()
        self._turn: _Turn | None = None
        self._next_tick = 0  # first tick not computed yet
        self._audio: dict[int, npt.NDArray[np.int16]] = {}
        self._rms: dict[int, float] = {}
        self._flash_frames: dict[int, tuple[float, bool]] = {}  # frame -> (lead ms, control)
        self._control_ms = 0.0
        self._control_marks = 0  # onsets seen since the control was set
        self._audio_delay: dict[int, int] = {}  # output tick -> ticks its audio is delayed
        self._onsets = marks.OnsetDetector(OUT_RATE, threshold=onset_threshold)
        self._tones = marks.OnsetTones(OUT_RATE)
        self._due: list[tuple[int, RendererEvent]] = []  # (output sample, event) by playout time
        self._state = "idle"
        self._computed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Test observability: input bytes per turn and output samples of speech played.
        self.received_bytes: dict[str, int] = {}
        self.played_samples: dict[str, int] = {}
        self.onset_media_s: list[float] = []
        # (media s, dominant frequency just after) per onset played: which coded beep it was.
        self.onset_tones: list[tuple[float, float]] = []
        # The playback-buffer model (see _note_playback): per turn, bounded to the recent ones.
        self.turns: dict[str, TurnTiming] = {}
        self.underruns = 0
        self.underrun_s = 0.0
        self._video = _AvatarVideoTrack(self)
        self._audio_track = _AvatarAudioTrack(self)

    # --- control -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="avatar-render")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._computed:
            self._computed.notify_all()
        self._video.stop()
        self._audio_track.stop()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def state(self) -> str:
        return self._state

    def media_s(self) -> float:
        return time.monotonic() - self._t0

    def video_track(self) -> MediaStreamTrack:
        return self._video

    def audio_track(self) -> MediaStreamTrack:
        return self._audio_track

    def push_audio(self, pcm24k_mono: bytes, event_id: str) -> None:
        """Queue speech (s16le 24 kHz mono) of turn ``event_id`` for playout."""
        if self._closed:
            return
        self.received_bytes[event_id] = self.received_bytes.get(event_id, 0) + len(pcm24k_mono)
        if event_id not in self.turns:
            self.turns[event_id] = TurnTiming(first_audio_rx_t=time.monotonic())
            while len(self.turns) > _TURNS_KEPT:
                del self.turns[next(iter(self.turns))]
        turn = self._turn
        if turn is None or turn.event_id != event_id or turn.ended:
            turn = self._turn = _Turn(
                event_id, soxr.ResampleStream(IN_RATE, OUT_RATE, 1, dtype="int16")
            )
        usable = len(pcm24k_mono) & ~1
        pcm = np.frombuffer(pcm24k_mono[:usable], dtype=np.int16)
        out = turn.resampler.resample_chunk(pcm)
        self._enqueue(turn, np.asarray(out, dtype=np.int16).reshape(-1))

    def end_turn(self, event_id: str) -> None:
        """The turn's audio is complete: speak_ended fires when its last sample plays."""
        if self._closed:
            return
        turn = self._turn
        if turn is None or turn.event_id != event_id or turn.ended:
            # A turn with no audio still gets an end so the client sees speak_ended.
            turn = _Turn(event_id, soxr.ResampleStream(IN_RATE, OUT_RATE, 1, dtype="int16"))
        tail = turn.resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._enqueue(turn, np.asarray(tail, dtype=np.int16).reshape(-1))
        turn.ended = True
        self._turn = None
        if turn.started:
            at = max(turn.last_end, self._next_tick * TICK_SAMPLES)
        else:
            at = self._schedule_start()
        self._queue.append(_TurnEnd(event_id, at))

    def interrupt(self) -> None:
        """Drop everything scheduled that has not played yet."""
        if self._closed:
            return
        ids = {item.event_id for item in self._queue}
        if self._turn is not None:
            ids.add(self._turn.event_id)
        self._queue.clear()
        self._turn = None
        # Events already computed but not yet due stay (they describe audio that did play).
        now = self._now_sample()
        self._due = [(at, ev) for at, ev in self._due if at <= now or ev.kind == "state"]
        speaking = self._state == "talking"
        for event_id in sorted(ids):
            self._fire(
                RendererEvent("speak_interrupted", event_id=event_id, media_s=self.media_s())
            )
        if speaking:
            self._set_state("idle", now)

    # --- scheduling ----------------------------------------------------------------------------

    def _now_sample(self) -> int:
        return int(self.media_s() * OUT_RATE)

    def _schedule_start(self) -> int:
        earliest = max(self._now_sample() + self._latency_samples, self._next_tick * TICK_SAMPLES)
        for item in reversed(self._queue):
            end = item.at if isinstance(item, _TurnEnd) else item.start + len(item.samples)
            return max(end, earliest)
        return earliest

    def _enqueue(self, turn: _Turn, samples: npt.NDArray[np.int16]) -> None:
        if not len(samples):
            return
        first = not turn.started
        turn.started = True
        start = self._schedule_start()
        self._note_playback(turn, start, first=first)
        turn.last_end = start + len(samples)
        self._queue.append(_Segment(turn.event_id, samples, start, first=first))

    def _note_playback(self, turn: _Turn, start: int, *, first: bool) -> None:
        """The playback-buffer model. The avatar plays a turn in real time from a buffer fed by
        agent.speak; audio that arrives after the buffer ran dry (mid-turn: the turn's audio so
        far has all played, plus the render latency) starts later than the turn's end so far,
        and the gap is an underrun: silence inside the turn, the avatar's mouth closing."""
        timing = self.turns.get(turn.event_id)
        if timing is None:
            return
        if first:
            timing.first_play_t = self._t0 + start / OUT_RATE
            timing.first_frame_t = self._t0 + (start // TICK_SAMPLES) * TICK_S
            return
        gap = start - turn.last_end
        if gap > 0:
            gap_s = gap / OUT_RATE
            timing.underruns += 1
            timing.underrun_s += gap_s
            self.underruns += 1
            self.underrun_s += gap_s
            SIM_AVATAR_UNDERRUNS.inc()

    def _fire(self, event: RendererEvent) -> None:
        if self._listener is not None:
            try:
                self._listener(event)
            except Exception:
                log.exception("avatar_listener_failed", kind=event.kind)

    def _set_state(self, state: str, at: int) -> None:
        if state == self._state:
            return
        prev, self._state = self._state, state
        self._fire(RendererEvent("state", state=state, previous_state=prev, media_s=at / OUT_RATE))

    def _compute_tick(self, k: int) -> None:
        c = k * TICK_SAMPLES
        out = np.zeros(TICK_SAMPLES, dtype=np.int16)
        i = 0
        while self._queue:
            item = self._queue[0]
            if isinstance(item, _TurnEnd):
                if item.at >= c + TICK_SAMPLES:
                    break
                self._queue.popleft()
                self._due.append((item.at, RendererEvent("speak_ended", event_id=item.event_id)))
                continue
            at = item.start + item.pos
            if at >= c + TICK_SAMPLES:
                break
            i = max(i, at - c)
            if item.first and item.pos == 0:
                self._due.append((at, RendererEvent("speak_started", event_id=item.event_id)))
            n = min(TICK_SAMPLES - i, len(item.samples) - item.pos)
            out[i : i + n] = item.samples[item.pos : item.pos + n]
            item.pos += n
            i += n
            self.played_samples[item.event_id] = self.played_samples.get(item.event_id, 0) + n
            if item.pos >= len(item.samples):
                self._queue.popleft()
            if i >= TICK_SAMPLES:
                break
        self._audio[k] = out
        self._rms[k] = float(np.sqrt(np.mean(out.astype(np.float64) ** 2)))
        found = self._onsets.feed(out)
        for onset in found:
            self.onset_media_s.append(onset / OUT_RATE)
            self._mark(onset)
        for onset, hz in self._tones.feed(out, found):
            self.onset_tones.append((onset / OUT_RATE, hz))
        old = k - _RING_TICKS
        self._audio.pop(old, None)
        self._rms.pop(old, None)
        if len(self._flash_frames) > 64:
            floor = old * TICK_SAMPLES * self.fps // OUT_RATE
            self._flash_frames = {f: v for f, v in self._flash_frames.items() if f >= floor}
            self._audio_delay = {t: d for t, d in self._audio_delay.items() if t >= old}
        del self.onset_media_s[:-256]
        del self.onset_tones[:-256]

    def _mark(self, onset: int) -> None:
        """A sync mark for the onset at output sample ``onset``; every second one after
        :meth:`set_mark_offset` is a control mark, shifted by the control offset."""
        self._control_marks += 1
        if not self._control_ms or self._control_marks % 2:
            self._flash(onset, False)
        elif self._control_ms > 0:  # the picture later than the sound
            self._flash(onset + round(self._control_ms * OUT_RATE / 1000), True)
        else:  # the sound later than the picture: this beep's audio is played out late
            self._flash(onset, True)
            delay = round(-self._control_ms / 1000 / TICK_S)
            # From the tick before the onset's (the detector may place the onset a few samples
            # into it), output ticks read `delay` ticks back until the delayed beep has played
            # (CONTROL_SPAN_S); the source ticks skipped when it ends are silence.
            first = onset // TICK_SAMPLES - 1
            for k in range(first, first + delay + round(CONTROL_SPAN_S / TICK_S)):
                self._audio_delay[k] = delay

    def _flash(self, sample: int, control: bool) -> None:
        """Flash the frame whose interval holds ``sample`` and the next ones (marks.FLASH_FRAMES),
        each lead patch saying where the onset is from that frame's media time."""
        j0 = sample * self.fps // OUT_RATE
        for j in range(j0, j0 + marks.FLASH_FRAMES):
            lead = (sample - j * OUT_RATE / self.fps) * 1000 / OUT_RATE
            if lead >= marks.MIN_LEAD_MS:
                self._flash_frames[j] = (lead, control)

    def set_mark_offset(self, offset_ms: float) -> None:
        """The negative control of a skew measurement (stand-in only): from now on every second
        sync mark is a control mark (its flash drawn at ``marks.CONTROL_FLASH``) whose picture
        is shifted by ``offset_ms`` against its sound, in media time, so transport and
        receivers see nothing different. Positive: the flash is drawn that much later than the
        onset. Negative: that beep's audio is played out that much later (a whole number of
        20 ms ticks, beeps at least CONTROL_SPAN_S + |offset| apart), its flash on the onset.
        0 ends the control."""
        if offset_ms < 0 and (-offset_ms / 1000 / TICK_S) % 1:
            raise ValueError("a negative mark offset must be a multiple of 20 ms")
        if not -200 <= offset_ms <= 200:
            raise ValueError("mark offset out of range")
        self._control_ms = offset_ms
        self._control_marks = 0

    def _fire_due(self) -> None:
        now = self._now_sample()
        due = [(at, ev) for at, ev in self._due if at <= now]
        if not due:
            return
        self._due = [(at, ev) for at, ev in self._due if at > now]
        for at, ev in sorted(due, key=lambda d: d[0]):
            ev = RendererEvent(ev.kind, event_id=ev.event_id, media_s=at / OUT_RATE)
            if ev.kind == "speak_started":
                self._fire(ev)
                self._set_state("talking", at)
            elif ev.kind == "speak_ended":
                self._fire(ev)
                self._set_state("idle", at)

    async def _run(self) -> None:
        while True:
            target = int(self.media_s() / TICK_S) + self._lookahead_ticks
            if self._next_tick <= target:
                # A stalled loop must not make us compute seconds of backlog: skip to live.
                self._next_tick = max(self._next_tick, target - _RING_TICKS // 2)
                while self._next_tick <= target:
                    self._compute_tick(self._next_tick)
                    self._next_tick += 1
                async with self._computed:
                    self._computed.notify_all()
            self._fire_due()
            next_at = (int(self.media_s() / TICK_S) + 1) * TICK_S
            await asyncio.sleep(max(0.0, next_at - self.media_s()))

    async def _wait_computed(self, tick: int) -> None:
        async with self._computed:
            await self._computed.wait_for(lambda: self._closed or self._next_tick > tick)
        if self._closed:
            raise MediaStreamError

    # --- frames --------------------------------------------------------------------------------

    def render_video(self, j: int) -> av.VideoFrame:
        """Frame ``j`` (media time j/fps), from audio ticks that must already be computed."""
        k = int(j / self.fps / TICK_S)
        level = mouth_level(self._rms.get(k, 0.0))
        buf = self._face.base.copy()
        x0, y0, x1, y1 = self._face.mouth_box
        y_plane = buf[: self.height]
        y_plane[y0:y1, x0:x1] = self._face.mouths[level]
        media_ms = j * 1000 // self.fps
        lead, control = self._flash_frames.get(j, (None, False))
        marks.stamp_frame(y_plane, j, media_ms, lead is not None, lead or 0.0, control)
        frame = av.VideoFrame.from_ndarray(buf, format="yuv420p")
        frame.pts = j * VIDEO_CLOCK // self.fps
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        SIM_AVATAR_FRAMES.inc()
        return frame

    @property
    def mouth_box(self) -> tuple[int, int, int, int]:
        """x0, y0, x1, y1 of the mouth region in the luma plane."""
        return self._face.mouth_box

    def mouth_level_at(self, j: int) -> int:
        return mouth_level(self._rms.get(int(j / self.fps / TICK_S), 0.0))

    def ready_audio(self, k: int) -> npt.NDArray[np.int16] | None:
        """Audio tick ``k`` (s16 48 kHz mono) once computed, else None.

        Reads only (single dict lookups and an int, atomic under the GIL), so a consumer on
        another thread may call it: the SDK avatar's audio pump runs on its own loop.
        """
        if self._next_tick <= k:
            return None
        pcm = self._audio.get(k - self._audio_delay.get(k, 0))
        return np.zeros(TICK_SAMPLES, dtype=np.int16) if pcm is None else pcm

    def audio_frame(self, k: int) -> av.AudioFrame:
        pcm = self._audio.get(k - self._audio_delay.get(k, 0))
        if pcm is None:
            pcm = np.zeros(TICK_SAMPLES, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = k * TICK_SAMPLES
        frame.time_base = Fraction(1, OUT_RATE)
        return frame


class _AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, renderer: AvatarRenderer) -> None:
        super().__init__()
        self._r = renderer
        self._next: int | None = None

    async def recv(self) -> av.VideoFrame:
        r = self._r
        if r.closed or self.readyState != "live":
            raise MediaStreamError
        live = int(r.media_s() * r.fps)
        j = live if self._next is None else self._next
        if j < live - 1:
            SIM_AVATAR_SKIPPED.labels("video").inc(live - j)
            j = live
        wait = j / r.fps - r.media_s()
        if wait > 0:
            await asyncio.sleep(wait)
        # The flash needs every onset inside [j/fps, (j+1)/fps): wait for that audio.
        await r._wait_computed(int((j + 1) / r.fps / TICK_S))
        self._next = j + 1
        return r.render_video(j)


class _AvatarAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, renderer: AvatarRenderer) -> None:
        super().__init__()
        self._r = renderer
        self._next: int | None = None

    def media_s(self) -> float:
        """The renderer's media clock (how late a consumer is, for diagnostics)."""
        return self._r.media_s()

    async def recv(self) -> av.AudioFrame:
        r = self._r
        if r.closed or self.readyState != "live":
            raise MediaStreamError
        live = int(r.media_s() / TICK_S)
        k = live if self._next is None else self._next
        if k < live - _RING_TICKS // 2:
            SIM_AVATAR_SKIPPED.labels("audio").inc(live - k)
            k = live
        # Handed over when its last sample is due, as a capture device delivers audio (and as
        # the libwebrtc publisher feeds it, bridge/sim/avatar_publisher.py). At its first
        # sample, the stand-in's audio reached every receiver one tick (20 ms) before a real
        # sender's could, and the transcode path, which times video by the audio's arrival,
        # showed the picture that much late (docs/sync.md, "The transcode path's constant").
        wait = (k + 1) * TICK_S - r.media_s()
        if wait > 0:
            await asyncio.sleep(wait)
        await r._wait_computed(k)
        self._next = k + 1
        return r.audio_frame(k)
