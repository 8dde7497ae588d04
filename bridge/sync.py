"""The sync stage: the avatar's decoded media in, the Stream call's tracks out, in lip sync.

Audio is the master clock: it goes to the publisher as soon as it arrives, and the publisher's
own pacer plays it out in real time. Video frames are held back from their arrival, because
libwebrtc hands decoded video to us earlier than the matching audio. The hold
(:class:`VideoAlignment`) is ``video_delay_ms`` (a fixed part, which holds the video receiver's
small, steady delay; ``video_cadence_allowance_ms`` less while the frames written are steadily
timed, which a viewer's Chromium renders by cadence: :mod:`bridge.cadence`) plus the downlink's
audio jitter buffer (NetEq), read from libwebrtc's stats
every 100 ms, plus the Stream SDK's PCM queue (:class:`PacerQueue`, modelled from our writes):
NetEq starts a call with a delay it sheds over seconds (and grows it on jitter), which a fixed
hold left as the picture 100-200 ms early in the first seconds of every call (docs/sync.md).
Both leave aligned for a viewer, without the Vision Agents plugin's up-to-``buffer_seconds``
fixed delay and without per-frame conversions.

Queues and their overflow policies:

* video: at most ``fps x buffer_seconds`` frames; when full the *oldest* frame is dropped and
  counted (a late frame is worth less than a fresh one, and the encoder recovers from gaps).
  A due frame whose successor is due too is dropped (``reason="late"``): when the publisher's
  encoder falls behind (a loaded machine), the picture stays with its sound at a lower frame
  rate instead of falling behind by the backlog (600 ms measured at load 10).
* audio (:class:`AudioBacklog`): at most ``audio_backlog_ms`` of PCM waiting for the publisher.
  A transient stall (the publisher's first writes block at the call's start; a loaded CPU holds
  the event loop, and the downlink then hands over what queued meanwhile in one burst) leaves
  the avatar's speech queued here, not dropped: the pump then writes the backlog in batches as fast
  as the SDK's PCM queue takes them (``audio_queue_ms``, modelled by :class:`PacerQueue`, so
  the SDK never drops it either) and catches up by skipping *silent* chunks only while the
  backlog is above ``CATCH_UP_ABOVE_S``. Only a stall longer than the bound drops audio: the
  oldest, counted in ``bridge_dropped_total`` and logged, because unbounded audio latency would
  destroy lip sync for the rest of the session.

``flush()`` (barge-in) empties both queues at once.

Audio latency is re-anchored during silence: the Stream SDK queues PCM written before its
connection is up (or during a stall) and then plays it out in real time for ever after, a standing
delay of up to its queue capacity that the SDK does not let us observe. Whenever the avatar's
audio has been silent for ``silence_flush_ms``, the publisher's queue is flushed once, which drops
only silence and brings audio latency back to its floor.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import structlog
from prometheus_client import Counter, Gauge, Histogram

from bridge import metrics
from bridge.cadence import FRAMES as CADENCE_FRAMES
from bridge.cadence import CadenceHold
from bridge.first_sound import PCM_LOUD_PEAK, OnsetPoint
from bridge.media import AudioChunk, JitterBufferReading, VideoFrame
from bridge.stages import CallPublisher

log = structlog.get_logger(__name__)

# Peak sample magnitude below which a chunk counts as silence (about -54 dBFS).
SILENCE_PEAK = 64
# The hold is logged when it moved this much since it was last logged (bounded log volume).
_HOLD_LOG_STEP_MS = 10.0

# Fine buckets: the downlink's added latency is video_delay_ms (deliberate) plus this lateness,
# and its goal (p95 < 33 ms in total) needs millisecond resolution (read by bench/).
VIDEO_LATE = Histogram(
    "bridge_sync_video_late_seconds",
    "How long after its due time (arrival + the hold) a frame's publisher write completed",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.033, 0.05, 0.1,
             0.2, 0.5, 1.0),
)  # fmt: skip


VIDEO_ADDED = Histogram(
    "bridge_sync_video_added_seconds",
    "From a frame's hand-off by the downlink to the end of its publisher write: the hold "
    "(output.video_delay_ms, the downlink's audio jitter buffer, the publisher's PCM queue) "
    "and the lateness past it",
    buckets=(0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3,
             0.4, 0.5, 0.75, 1.0, 2.0),
)  # fmt: skip
CADENCE_CHANGES = Counter(
    "bridge_sync_video_cadence_changes_total",
    "Times the transcode path's written frames turned steadily timed or not, and the video "
    "hold's base followed (output.video_cadence_allowance_ms)",
    ["steady"],
)
AUDIO_SILENCE_SKIPPED = Counter(
    "bridge_sync_audio_silence_skipped_seconds_total",
    "Silent audio the sync stage skipped to shed the latency a publisher stall left (speech is "
    "never skipped)",
)
VIDEO_HOLD = Gauge(
    "bridge_sync_video_hold_ms",
    "The video hold the downlink's receivers call for (output.video_delay_ms plus the audio "
    "jitter buffer; the PCM queue not included), set on each stats reading (last session wins)",
)

# Windows over which a receiver's delay is averaged: audio's counters grow by 48 000 samples a
# second, so a short window is precise and follows NetEq's shedding closely (it lags the
# delay by half the window: ~3 ms at NetEq's fastest, 60 ms/s); video's grow by one per frame,
# so it needs more frames for a steady mean (its buffer also moves little).
AUDIO_WINDOW_MS = 100.0
VIDEO_WINDOW_MS = 500.0
# How much longer or shorter one frame may be held than the one before it: 20 ms on a 33 ms
# frame interval keeps the gaps below Chromium's freeze threshold (3 x the mean interval) and
# above zero (frames never become due together because the hold came down).
MAX_STEP_MS = 20.0


class ReceiverDelay:
    """The recent jitter-buffer delay of one receiver, from successive readings of its
    cumulative counters: the mean over the last ``window_ms`` (at least two readings apart).
    Counters that go backwards (a new receiver after a reconnect) start it afresh."""

    def __init__(self, window_ms: float) -> None:
        self._window_ns = int(window_ms * 1_000_000)
        self._readings: deque[JitterBufferReading] = deque()
        self.ms: float | None = None

    def update(self, reading: JitterBufferReading) -> float | None:
        last = self._readings[-1] if self._readings else None
        if last is not None and (reading.emitted < last.emitted or reading.delay_s < last.delay_s):
            self._readings.clear()  # a new receiver: its counters started again
            self.ms = None
        if last is not None and reading.emitted == last.emitted and self._readings:
            return self.ms  # nothing emitted since (a paused track): no new information
        self._readings.append(reading)
        # The oldest reading kept is the newest one at least a window before this one.
        window = self._window_ns
        while len(self._readings) > 2 and reading.at_ns - self._readings[1].at_ns >= window:
            self._readings.popleft()
        first = self._readings[0]
        if first is reading:
            return self.ms
        emitted = reading.emitted - first.emitted
        if emitted > 0:
            self.ms = max(0.0, 1000.0 * (reading.delay_s - first.delay_s) / emitted)
        return self.ms


class PacerQueue:
    """A model of the Stream SDK's PCM queue, which the SDK does not let us observe: its 20 ms
    pacer drains it in real time, so after each write its depth is what it was, less the time
    since, never below zero, plus the write. A stall that delivers the avatar's audio in a burst
    leaves a standing depth (audio keeps coming in real time), which delays the call's audio
    until a flush (silence, barge-in) or an overflow; the hold adds it to video."""

    def __init__(self, capacity_s: float) -> None:
        self._capacity_ns = int(capacity_s * 1e9)  # beyond it the SDK drops the oldest
        self._depth_ns = 0
        self._at_ns = 0

    def depth_ms(self, now_ns: int) -> float:
        return max(0, self._depth_ns - (now_ns - self._at_ns)) / 1e6

    def wrote(self, duration_s: float, now_ns: int) -> None:
        depth_ns = int(self.depth_ms(now_ns) * 1e6) + int(duration_s * 1e9)
        self._depth_ns = min(self._capacity_ns, depth_ns)
        self._at_ns = now_ns

    def flushed(self, now_ns: int) -> None:
        self._depth_ns, self._at_ns = 0, now_ns


def is_loud(chunk: AudioChunk) -> bool:
    """Whether a chunk carries sound (any sample beyond ``SILENCE_PEAK``)."""
    samples = chunk.samples
    # max/min rather than abs(): no temporary array, and no int16 overflow at -32768.
    return bool(len(samples)) and (
        int(samples.max()) > SILENCE_PEAK or int(samples.min()) < -SILENCE_PEAK
    )


# Above this much audio waiting for the publisher, silent chunks at its head are skipped: the
# latency a stall left is shed in the pauses, never from speech. Below it nothing is skipped:
# bursts of up to the SDK queue's 200 ms come with the video's own (a loop held by the CPU
# delays both), and shaving their pauses moved the sound ahead of its picture (a loaded
# end-to-end run at 60 ms: beep skews of -233...+252 ms). 200 ms is the old audio queue's bound,
# so below it the timing is what it was; above it, silence goes where speech used to.
CATCH_UP_ABOVE_S = 0.2
# Room kept free in the SDK's PCM queue when a backlog is written (see _pump_audio).
SDK_QUEUE_MARGIN_S = 0.04
# At most this much audio per write: 5 chunks a round trip catch up with a stall 5x faster than
# one, without bursts that the SDK's queue, whose real depth the model only estimates (it
# overflowed under load with batches up to its whole room), would drop.
MAX_BATCH_S = 0.05


@dataclass(slots=True)
class TakenAudio:
    """What :meth:`AudioBacklog.take` hands the pump: the chunks to write now (in order) and the
    silence skipped to catch up."""

    chunks: list[AudioChunk]
    skipped_s: float = 0.0


class AudioBacklog:
    """The avatar's audio waiting for the publisher (sans-I/O: chunks in, batches out).

    Bounded by ``max_s`` of audio: beyond it the oldest chunk is dropped (``put`` returns what
    it dropped); that is a stall longer than the bound, not a transient one. ``take(room_s)``
    gives what fits in the publisher's queue now (``room_s``; at least the head chunk when the
    room is positive, so a chunk larger than the room cannot wedge it), after skipping silent
    head chunks while more than ``catch_up_above_s`` is queued."""

    def __init__(self, max_s: float, catch_up_above_s: float = CATCH_UP_ABOVE_S) -> None:
        self.max_s = max_s
        self.catch_up_above_s = catch_up_above_s
        self._chunks: deque[AudioChunk] = deque()
        self.queued_s = 0.0

    def __len__(self) -> int:
        return len(self._chunks)

    def put(self, chunk: AudioChunk) -> list[AudioChunk]:
        self._chunks.append(chunk)
        self.queued_s += chunk.duration_s
        dropped: list[AudioChunk] = []
        while self.queued_s > self.max_s + 1e-9 and len(self._chunks) > 1:
            old = self._chunks.popleft()
            self.queued_s -= old.duration_s
            dropped.append(old)
        return dropped

    def head_s(self) -> float:
        return self._chunks[0].duration_s if self._chunks else 0.0

    def take(self, room_s: float) -> TakenAudio:
        taken = TakenAudio([])
        chunks = self._chunks
        while chunks and self.queued_s > self.catch_up_above_s + 1e-9 and not is_loud(chunks[0]):
            skipped = chunks.popleft()
            self.queued_s -= skipped.duration_s
            taken.skipped_s += skipped.duration_s
        used = 0.0
        while chunks and room_s > 0 and (not taken.chunks or used + chunks[0].duration_s <= room_s):
            chunk = chunks.popleft()
            used += chunk.duration_s
            taken.chunks.append(chunk)
        self.queued_s = max(0.0, self.queued_s - used) if chunks else 0.0
        return taken

    def clear(self) -> None:
        self._chunks.clear()
        self.queued_s = 0.0


class VideoAlignment:
    """How long to hold each video frame after its arrival, so that it leaves the bridge with
    the audio it belongs to (sans-I/O: readings in, a hold out).

    The downlink's two receivers delay the avatar's media by different and changing amounts:
    libwebrtc's audio jitter buffer (NetEq) starts a call with a larger delay than it needs and
    sheds it over seconds (time-compressing the audio), while the video receiver hands frames
    out almost at once. The hold is ``base_ms`` (a fixed part) plus the receivers' current
    difference, audio minus video, plus ``publisher_queue_ms`` (the Stream SDK's PCM queue, set
    by the sync stage from :class:`PacerQueue`), clamped to ``[0, max_ms]``. Until the audio
    receiver is measured it is the base alone, and always with ``follow=False`` (the
    receivers are then measured only, for the logs). The base is ``base_ms``, less
    ``cadence_allowance_ms`` while the frames written are steadily timed (:meth:`written`)."""

    def __init__(
        self, base_ms: float, max_ms: float, *, follow: bool = True, cadence_allowance_ms: float = 0
    ) -> None:
        self.follow = follow
        self.max_ms = max(0.0, max_ms)
        # The base, less the allowance while the frames written are steadily timed (a viewer's
        # Chromium renders them by cadence: bridge/cadence.py).
        self.cadence = CadenceHold(base_ms, cadence_allowance_ms)
        self._durations: deque[float] = deque(maxlen=CADENCE_FRAMES)
        self._last_pts_us: int | None = None
        self.audio = ReceiverDelay(AUDIO_WINDOW_MS)
        self.video = ReceiverDelay(VIDEO_WINDOW_MS)
        self._last_ms: float | None = None
        # The publisher's PCM queue now (PacerQueue), set by the sync stage before each frame.
        self.publisher_queue_ms = 0.0

    def update(self, reading: JitterBufferReading) -> None:
        if reading.kind == "audio":
            self.audio.update(reading)
        elif reading.kind == "video":
            self.video.update(reading)

    @property
    def difference_ms(self) -> float | None:
        """Audio's receiver delay minus video's, once audio's is known (video's counts as 0
        until it is: the downlink reads audio only, see bridge/livekit/downlink.py)."""
        if self.audio.ms is None:
            return None
        return self.audio.ms - (self.video.ms or 0.0)

    def hold_ms(self) -> float:
        """The hold the receivers call for now (the target)."""
        diff = self.difference_ms if self.follow else None
        hold = self.cadence.hold_ms + (diff if diff is not None else 0.0)
        if self.follow:
            hold += self.publisher_queue_ms
        return min(self.max_ms, max(0.0, hold))

    def frame_hold_ms(self) -> float:
        """The hold for the next frame: the target, moved by at most ``MAX_STEP_MS`` from the
        previous frame's, so that a jump of the audio delay neither stops the picture (a gap
        over ~3 frame intervals is a freeze to a viewer) nor makes frames due all at once
        (all but the newest would be dropped as stale: a jerk for every dip of NetEq)."""
        target = self.hold_ms()
        if self._last_ms is None:
            return target
        return min(max(target, self._last_ms - MAX_STEP_MS), self._last_ms + MAX_STEP_MS)

    def released(self, hold_ms: float) -> None:
        """A frame left with this hold."""
        self._last_ms = hold_ms

    def written(self, pts_us: int) -> float | None:
        """A frame with this pts went to the call: its timing joins the cadence verdict.
        Returns the base (ms) when the verdict changed it, else None."""
        last, self._last_pts_us = self._last_pts_us, pts_us
        if last is None or pts_us <= last:
            return None
        self._durations.append((pts_us - last) / 1e6)
        return self.cadence.update(self._durations)


class SyncStage:
    """Bounded A/V queues between the downlink and the publisher; see the module docstring."""

    def __init__(
        self,
        publisher: CallPublisher,
        *,
        fps: int,
        buffer_seconds: float,
        audio_queue_ms: float,
        video_delay_ms: float,
        audio_backlog_ms: float,
        silence_flush_ms: float = 300.0,
        follow_receivers: bool = True,
        cadence_allowance_ms: float = 0.0,
    ) -> None:
        self._publisher = publisher
        self.video_capacity = max(1, round(fps * buffer_seconds))
        # The publisher's (the SDK's) PCM queue: what the pump may have written and not yet
        # played out; the backlog beyond it waits here.
        self._sdk_capacity_s = audio_queue_ms / 1000.0
        # A small queue keeps a quarter free, not the whole margin (it would throttle writes).
        self._sdk_margin_s = min(SDK_QUEUE_MARGIN_S, self._sdk_capacity_s / 4)
        self.audio = AudioBacklog(audio_backlog_ms / 1000.0)
        # The hold cannot outlast the video queue (its frames would be dropped as overflow).
        self.alignment = VideoAlignment(
            video_delay_ms,
            max_ms=1000.0 * buffer_seconds * 0.8,
            follow=follow_receivers,
            cadence_allowance_ms=cadence_allowance_ms,
        )
        self._hold_logged_ms = -1.0
        self.pacer = PacerQueue(audio_queue_ms / 1000.0)
        self._video: deque[VideoFrame] = deque()
        self._video_ready = asyncio.Event()
        self._audio_ready = asyncio.Event()
        self._silence_flush_s = silence_flush_ms / 1000.0
        self._silent_s = 0.0
        self._flushed_this_silence = False
        self.silence_flushes = 0
        self.video_dropped = 0
        self.video_late_dropped = 0
        self.audio_dropped_s = 0.0
        self.audio_skipped_s = 0.0  # silence skipped to catch up after a stall
        self.video_written = 0
        self.audio_written_s = 0.0
        self._onset_out = OnsetPoint("transcode", "out")  # first-sound figures

    # ----- MediaSink (called by the downlink; never blocks) ------------------------------

    def put_video(self, frame: VideoFrame) -> None:
        if len(self._video) >= self.video_capacity:
            self._video.popleft()
            self.video_dropped += 1
            metrics.DROPS.labels(stage="sync_video", reason="queue_full").inc()
        self._video.append(frame)
        metrics.QUEUE_DEPTH.labels(stage="sync_video").set(len(self._video))
        self._video_ready.set()

    def put_audio(self, chunk: AudioChunk) -> None:
        for old in self.audio.put(chunk):
            self.audio_dropped_s += old.duration_s
            metrics.DROPS.labels(stage="sync_audio", reason="queue_full").inc()
            metrics.AUDIO_DROPPED_SECONDS.labels(stage="sync").inc(old.duration_s)
            log.warning("sync_audio_dropped", ms=round(1000 * old.duration_s, 1))
        metrics.QUEUE_DEPTH.labels(stage="sync_audio_ms").set(self.audio.queued_s * 1000)
        self._audio_ready.set()

    def put_jitter_buffer(self, reading: JitterBufferReading) -> None:
        self.alignment.update(reading)
        hold = self.alignment.hold_ms()
        VIDEO_HOLD.set(hold)
        if abs(hold - self._hold_logged_ms) >= _HOLD_LOG_STEP_MS:
            self._hold_logged_ms = hold
            audio, video = self.alignment.audio.ms, self.alignment.video.ms
            log.info(
                "sync_video_hold",
                hold_ms=round(hold, 1),
                audio_jitter_buffer_ms=None if audio is None else round(audio, 1),
                video_jitter_buffer_ms=None if video is None else round(video, 1),
            )

    # ----- control -----------------------------------------------------------------------

    def flush(self) -> None:
        """Barge-in: forget everything queued (the caller flushes the publisher's audio too)."""
        self.pacer.flushed(time.monotonic_ns())
        dropped = len(self._video)
        self._video.clear()
        self.audio.clear()
        if dropped:
            metrics.DROPS.labels(stage="sync_video", reason="interrupt").inc(dropped)

    def depth(self) -> dict[str, float]:
        return {"video_frames": len(self._video), "audio_ms": round(self.audio.queued_s * 1000, 1)}

    # ----- the pump ----------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._pump_audio(), name="sync-audio")
            tg.create_task(self._pump_video(), name="sync-video")

    async def _pump_audio(self) -> None:
        while True:
            while not self.audio:
                self._audio_ready.clear()
                await self._audio_ready.wait()
            # Never more than the SDK's queue holds (it would drop the oldest): after a stall
            # the backlog goes in batches as the SDK plays its queue out.
            depth_s = self.pacer.depth_ms(time.monotonic_ns()) / 1000
            # Less a margin: the SDK takes 20 ms frames on its own timer, so the model can be
            # a frame short of its real depth (it drops the oldest beyond its capacity).
            room_s = self._sdk_capacity_s - depth_s - self._sdk_margin_s
            head_s = self.audio.head_s()
            if room_s < head_s:
                if depth_s > 0:
                    await asyncio.sleep(max(0.002, head_s - room_s))
                    continue
                room_s = head_s  # an empty queue takes a chunk, whatever the capacity setting
            taken = self.audio.take(min(room_s, MAX_BATCH_S))
            if taken.skipped_s:
                self.audio_skipped_s += taken.skipped_s
                AUDIO_SILENCE_SKIPPED.inc(taken.skipped_s)
            metrics.QUEUE_DEPTH.labels(stage="sync_audio_ms").set(self.audio.queued_s * 1000)
            if not taken.chunks:
                continue
            peaks = [_peak(chunk) for chunk in taken.chunks]  # one pass over the samples
            for chunk, peak in zip(taken.chunks, peaks, strict=True):
                self._track_silence(chunk, loud=peak > SILENCE_PEAK)
            batch = _joined(taken.chunks)
            await self._publisher.write_audio(batch)
            self.pacer.wrote(batch.duration_s, time.monotonic_ns())
            self.audio_written_s += batch.duration_s
            for peak in peaks:
                self._onset_out.feed(peak >= PCM_LOUD_PEAK)

    def _track_silence(self, chunk: AudioChunk, *, loud: bool) -> None:
        if loud:
            self._silent_s = 0.0
            self._flushed_this_silence = False
            return
        self._silent_s += chunk.duration_s
        if self._silent_s >= self._silence_flush_s and not self._flushed_this_silence:
            self._flushed_this_silence = True
            self.silence_flushes += 1
            self._publisher.flush_audio()
            self.pacer.flushed(time.monotonic_ns())

    async def _pump_video(self) -> None:
        while True:
            while not self._video:
                self._video_ready.clear()
                await self._video_ready.wait()
            frame = self._video[0]
            self.alignment.publisher_queue_ms = self.pacer.depth_ms(time.monotonic_ns())
            hold_ms = self.alignment.frame_hold_ms()
            # The call's first picture leaves at once: the hold lines video up with the
            # avatar's speech, and before the first picture there is none to line up with
            # (the first frame of a warm session otherwise waits a hold for nothing). The
            # frames after it keep the hold, and so does the stale check below.
            own_hold_ms = hold_ms if self.video_written else 0.0
            due = frame.received_ns + int(own_hold_ms * 1_000_000)
            wait_ns = due - time.monotonic_ns()
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / 1e9)
                continue  # the queue may have been flushed or trimmed meanwhile
            # A frame whose successor is due as well is stale: the publisher (its encoder) fell
            # behind. Writing it would put the picture behind its sound for as long as the
            # backlog lasts; only the newest due frame goes.
            hold_ns = int(hold_ms * 1_000_000)
            now_ns = time.monotonic_ns()
            while len(self._video) > 1 and self._video[1].received_ns + hold_ns <= now_ns:
                self._video.popleft()
                self.video_late_dropped += 1
                metrics.DROPS.labels(stage="sync_video", reason="late").inc()
            frame = self._video.popleft()
            due = frame.received_ns + int(own_hold_ms * 1_000_000)
            self.alignment.released(hold_ms)
            # The await is the publisher's backpressure: frames queue (bounded) meanwhile.
            await self._publisher.write_video(frame)
            self.video_written += 1
            if (base := self.alignment.written(frame.pts_us)) is not None:
                steady = self.alignment.cadence.steady
                CADENCE_CHANGES.labels(str(steady).lower()).inc()
                dev = self.alignment.cadence.deviation_ms
                log.info(
                    "sync_video_cadence",
                    steady=steady,
                    frame_deviation_ms=None if dev is None else round(dev, 1),
                    base_hold_ms=base,
                )
            done_ns = time.monotonic_ns()
            metrics.STAGE_LATENCY.labels(stage="downlink_to_publish").observe(
                (done_ns - frame.received_ns) / 1e9
            )
            VIDEO_LATE.observe(max(0, done_ns - due) / 1e9)
            VIDEO_ADDED.observe((done_ns - frame.received_ns) / 1e9)


def _joined(chunks: list[AudioChunk]) -> AudioChunk:
    """One write of consecutive chunks (one SDK round trip instead of one per 10 ms)."""
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    return AudioChunk(np.concatenate([c.samples for c in chunks]), first.fmt, first.pts_us)


def _peak(chunk: AudioChunk) -> int:
    samples = chunk.samples
    if not len(samples):
        return 0
    # max/min rather than abs(): no temporary array, and no int16 overflow at -32768.
    return max(int(samples.max()), -int(samples.min()))
