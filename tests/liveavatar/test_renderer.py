"""The synthetic avatar renderer: marks, mouth, flash on onsets, playout-time events."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import Any, Literal

import av
import numpy as np
import pytest

from bridge.sim import marks
from bridge.sim.avatar import OUT_RATE, RESOLUTIONS, AvatarRenderer, RendererEvent


def _codec(name: str, mode: Literal["r", "w"]) -> Any:
    # av's stubs type create() as the base class; the tests use the video subclass API.
    codec: Any = av.CodecContext.create(name, mode)
    return codec


FPS = 30


def open_pixels(renderer: AvatarRenderer, frame: Any) -> int:
    """Dark pixels inside the mouth box: grows with the mouth opening."""
    x0, y0, x1, y1 = renderer.mouth_box
    y = frame.to_ndarray()[: renderer.height]
    return int((y[y0:y1, x0:x1] < 50).sum())


async def capture(
    renderer: AvatarRenderer, video_frames: int, audio_frames: int
) -> tuple[list[Any], list[Any]]:
    vt: Any = renderer.video_track()
    at: Any = renderer.audio_track()

    async def video() -> list[Any]:
        return [await vt.recv() for _ in range(video_frames)]

    async def audio() -> list[Any]:
        return [await at.recv() for _ in range(audio_frames)]

    return await asyncio.gather(video(), audio())


async def test_mouth_flash_and_events_follow_playout() -> None:
    events: list[RendererEvent] = []
    r = AvatarRenderer(640, 360, FPS, 0.15, listener=events.append)
    r.start()
    try:
        beeps = marks.beep_train(24_000, 4, 300, 100, 600.0, amplitude=0.6)
        pushed_at = r.media_s()
        r.push_audio(beeps.tobytes(), "turn-1")
        pushed_by = r.media_s()  # a loaded machine may preempt us inside push_audio
        r.end_turn("turn-1")
        video, audio = await capture(r, 50, 80)
    finally:
        await r.aclose()
    read = [marks.read_frame(f.to_ndarray()[:360]) for f in video]
    assert all(m is not None for m in read)
    numbers = [m.frame_no for m in read if m]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert all(f.width == 640 and f.height == 360 for f in video)
    assert all(f.pts == m.frame_no * 90_000 // FPS for f, m in zip(video, read, strict=True) if m)
    # Audio: contiguous 20 ms frames at 48 kHz mono, pts in samples.
    assert all(f.sample_rate == OUT_RATE and f.samples == 960 for f in audio)
    assert [f.pts for f in audio] == [audio[0].pts + 960 * i for i in range(len(audio))]
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in audio])
    onset_s = [(audio[0].pts + i) / OUT_RATE for i in marks.onsets(pcm, OUT_RATE)]
    assert len(onset_s) == 4
    # Played out after the render latency (from the instant of the push, which lies between
    # the two readings), one beep every 300 ms.
    assert pushed_at + 0.15 - 0.03 < onset_s[0] < pushed_by + 0.15 + 0.03
    assert np.allclose(np.diff(onset_s), 0.3, atol=0.002)
    # The frame whose interval holds an onset flashes, and the FLASH_FRAMES - 1 after it (so a
    # dropped frame cannot lose the mark), of the frames rendered (a loaded machine makes the
    # track skip to live); each frame's lead patch says where the onset is from its own media
    # time (exact to the patch's resolution).
    flashed = [m.frame_no for m in read if m and m.flash]
    spans = [int(t * FPS) + i for t in onset_s for i in range(marks.FLASH_FRAMES)]
    assert flashed == [n for n in spans if n in numbers]
    leads = {
        m.frame_no: marks.read_lead_ms(f.to_ndarray()[:360])
        for f, m in zip(video, read, strict=True)
        if m and m.flash
    }
    for t in onset_s:
        for j in range(int(t * FPS), int(t * FPS) + marks.FLASH_FRAMES):
            if j in leads:
                assert leads[j] == pytest.approx((t - j / FPS) * 1000, abs=1 / marks.LEAD_PER_MS)
    # The mouth is open while a beep plays and closed in the silences between: every rendered
    # frame 30-70 ms into a beep is wider open than every one 170-230 ms in (frames a loaded
    # machine made the track skip are simply not there; enough of both kinds remain).
    loud, quiet = [], []
    for f, m in zip(video, read, strict=True):
        if m is None:
            continue
        into = [m.frame_no / FPS - t for t in onset_s if m.frame_no / FPS >= t]
        if into and 0.03 <= min(into) <= 0.07:
            loud.append(open_pixels(r, f))
        elif into and 0.17 <= min(into) <= 0.23:
            quiet.append(open_pixels(r, f))
    assert loud and quiet, (numbers, onset_s)
    assert min(loud) > 3 * max(1, max(quiet)), (loud, quiet)
    # Events at the playout instants, in order.
    kinds = [(e.kind, e.event_id or e.state) for e in events]
    assert kinds == [
        ("speak_started", "turn-1"),
        ("state", "talking"),
        ("speak_ended", "turn-1"),
        ("state", "idle"),
    ]
    assert abs(events[0].media_s - onset_s[0]) < 0.005
    assert abs(events[2].media_s - (onset_s[0] + 1.2)) < 0.01
    assert r.received_bytes == {"turn-1": len(beeps) * 2}
    assert r.played_samples == {"turn-1": len(beeps) * 2}


async def test_idle_is_still_and_silent() -> None:
    r = AvatarRenderer(854, 480, FPS, 0.1)
    r.start()
    try:
        video, audio = await capture(r, 6, 10)
    finally:
        await r.aclose()
    assert all(not np.any(f.to_ndarray()) for f in audio)
    bar = marks.barcode_height(854)
    bodies = [f.to_ndarray()[bar : 480 - 100] for f in video]
    assert all(np.array_equal(bodies[0], b) for b in bodies[1:])
    assert all(not m.flash for m in (marks.read_frame(f.to_ndarray()[:480]) for f in video) if m)


async def test_interrupt_silences_and_reports() -> None:
    events: list[RendererEvent] = []
    r = AvatarRenderer(640, 360, FPS, 0.05, listener=events.append)
    r.start()
    try:
        tone = (np.sin(np.arange(48_000) / 4) * 10_000).astype(np.int16)  # 2 s at 24 kHz
        r.push_audio(tone.tobytes(), "long")
        at: Any = r.audio_track()
        frames = [await at.recv() for _ in range(25)]  # 0.5 s
        r.interrupt()
        frames += [await at.recv() for _ in range(25)]
    finally:
        await r.aclose()
    level = [int(np.abs(f.to_ndarray()).max()) for f in frames]
    assert max(level[5:25]) > 5000  # was speaking
    assert max(level[30:]) == 0  # silent shortly after the interrupt (computed lookahead only)
    kinds = [(e.kind, e.event_id or e.state) for e in events]
    assert ("speak_interrupted", "long") in kinds
    assert kinds[-1] == ("state", "idle")
    assert ("speak_ended", "long") not in kinds
    assert r.played_samples["long"] < 48_000 * 2


async def test_rendered_frame_survives_vp8_at_each_quality() -> None:
    for quality in ("low", "medium"):
        w, h = RESOLUTIONS[quality]
        r = AvatarRenderer(w, h, FPS, 0.05)
        r.start()
        try:
            vt: Any = r.video_track()
            frames = [await vt.recv() for _ in range(3)]
        finally:
            await r.aclose()
        enc = _codec("libvpx", "w")
        enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
        enc.bit_rate = 400_000
        enc.time_base = Fraction(1, FPS)
        dec = _codec("vp8", "r")
        decoded = []
        for frame in frames:
            for packet in enc.encode(frame):
                decoded += dec.decode(packet)
        for packet in enc.encode(None):
            decoded += dec.decode(packet)
        expected = [marks.read_frame(f.to_ndarray()[:h]) for f in frames]
        assert [marks.read_frame(f.to_ndarray()[:h]) for f in decoded] == expected
        assert all(m is not None for m in expected)


async def test_audio_frames_leave_when_their_last_sample_is_due() -> None:
    """The aiortc track hands over each 20 ms of audio once all of it has played, as a capture
    device does (and the libwebrtc publisher, bridge/sim/avatar_publisher.py): handed over at
    its first sample, the stand-in's audio reached every receiver one packet earlier than a
    real avatar's, which the transcode path (timed by arrival) carried to the viewer as a
    picture ~20 ms late (docs/sync.md, "The transcode path's constant"). Only lower bounds:
    a loaded machine makes a frame later, never earlier."""
    r = AvatarRenderer(640, 360, FPS, 0.05)
    r.start()
    try:
        at: Any = r.audio_track()
        ends: list[tuple[float, float]] = []  # (frame's end in media s, media s at hand-over)
        for _ in range(10):
            frame = await at.recv()
            ends.append(((frame.pts + frame.samples) / OUT_RATE, r.media_s()))
    finally:
        await r.aclose()
    assert all(handed >= end for end, handed in ends), ends
