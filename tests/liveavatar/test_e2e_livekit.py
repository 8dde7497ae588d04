"""End to end over real WebRTC: client uplink -> LiveAvatar stand-in -> LiveKit stand-in -> SDK.

The rendered avatar (published by the real SDK and forwarded, or encoded by the LiveKit
stand-in) is received with the LiveKit SDK using the start response's livekit_url and
agent token; the sync marks and the beep onsets are read back from what was decoded.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from livekit import rtc

from bridge.liveavatar.api import LiveAvatarAPI
from bridge.liveavatar.ledger import SessionLedger
from bridge.liveavatar.uplink import LiveAvatarOptions, LiveAvatarUplink
from bridge.media import AudioChunk, AudioFormat
from bridge.sim import marks
from bridge.sim.liveavatar import LiveAvatarStandIn, StandInOptions
from bridge.sim.livekit_server import LiveKitStandIn

from .conftest import API_KEY, AVATAR

pytestmark = pytest.mark.netns


@pytest.fixture(params=["sdk", "aiortc"])
async def stack(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[LiveAvatarStandIn, LiveKitStandIn]]:
    """sdk: the avatar publishes as a LiveKit client (libwebrtc) and the stand-in forwards it;
    aiortc: the LiveKit stand-in encodes the renderer's tracks itself."""
    lk = LiveKitStandIn()
    await lk.start()
    options = StandInOptions(render_latency_s=0.1, publisher=request.param)
    la = LiveAvatarStandIn(options, livekit=lk)
    await la.start()
    try:
        yield la, lk
    finally:
        await la.aclose()
        await lk.aclose()


async def test_rendered_avatar_reaches_livekit_subscriber(
    stack: tuple[LiveAvatarStandIn, LiveKitStandIn], tmp_path: Any
) -> None:
    la, lk = stack
    fmt = AudioFormat(24_000, 1)
    async with aiohttp.ClientSession() as http:
        api = LiveAvatarAPI(http, la.base_url, API_KEY, 5.0)
        options = LiveAvatarOptions(
            avatar_id=AVATAR, is_sandbox=False, video_quality="low", video_encoding="VP8"
        )
        uplink = LiveAvatarUplink(
            api, SessionLedger(tmp_path), options, fmt, lambda *_a, **_k: None, lambda _e: None
        )
        avatar_room = await uplink.start()
        room = rtc.Room()
        flashes: list[float] = []
        onsets: list[float] = []
        frame_nos: list[int] = []
        flashed: set[int] = set()
        got_tracks: dict[str, rtc.Track] = {}
        both = asyncio.Event()

        @room.on("track_subscribed")
        def _on_track(track: rtc.Track, _pub: Any, participant: rtc.RemoteParticipant) -> None:
            if participant.identity == "heygen":
                got_tracks[str(track.kind)] = track
                if len(got_tracks) == 2:
                    both.set()

        async def read_video(track: rtc.Track) -> None:
            async for ev in rtc.VideoStream(track):
                frame = ev.frame.convert(rtc.VideoBufferType.I420)
                y = np.frombuffer(frame.data, dtype=np.uint8)[: frame.width * frame.height]
                m = marks.read_frame(y.reshape(frame.height, frame.width))
                if m is not None:
                    # The flash's first frame seen (it spans marks.FLASH_FRAMES frames).
                    if m.flash and not (frame_nos and frame_nos[-1] in flashed):
                        flashes.append(time.monotonic())
                    if m.flash:
                        flashed.add(m.frame_no)
                    frame_nos.append(m.frame_no)

        async def read_audio(track: rtc.Track) -> None:
            det = marks.OnsetDetector(48_000)
            seen = 0
            async for ev in rtc.AudioStream(track, sample_rate=48_000, num_channels=1):
                pcm = np.frombuffer(ev.frame.data, dtype=np.int16)
                now = time.monotonic()
                for idx in det.feed(pcm):
                    # Arrival time of the onset sample: the end of this frame minus what follows.
                    onsets.append(now - (seen + len(pcm) - idx) / 48_000)
                seen += len(pcm)

        readers: list[asyncio.Task[None]] = []
        try:
            await asyncio.wait_for(
                room.connect(avatar_room.livekit_url, avatar_room.livekit_token), 10
            )
            await asyncio.wait_for(both.wait(), 10)
            readers = [
                asyncio.create_task(read_video(t))
                for k, t in got_tracks.items()
                if "VIDEO" in k.upper() or k == str(rtc.TrackKind.KIND_VIDEO)
            ]
            readers += [
                asyncio.create_task(read_audio(t))
                for k, t in got_tracks.items()
                if "AUDIO" in k.upper() or k == str(rtc.TrackKind.KIND_AUDIO)
            ]
            assert len(readers) == 2, got_tracks
            await asyncio.sleep(1.0)  # let both streams settle
            beeps = marks.beep_train(24_000, 6, 500, 100, 800.0, amplitude=0.6)
            for start in range(0, len(beeps), 2400):
                await uplink.send_audio(AudioChunk(beeps[start : start + 2400], fmt))
            await uplink.end_turn()
            # Until the six onsets arrived (bounded: a loaded machine delivers them late), then
            # the last flash's frame.
            deadline = time.monotonic() + 20
            while len(onsets) < 6 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await room.disconnect()
            await uplink.aclose()
    assert len(frame_nos) > 60 and frame_nos == sorted(frame_nos)
    assert len(onsets) == 6, onsets
    # libwebrtc's encoder drops frames on a busy machine (about one in five here, measured by
    # frame number) and a flash mark is three frames, so with the SDK publisher at least half
    # must survive; the stand-in's own encoder sends them all.
    assert len(flashes) >= (3 if la.options.publisher == "sdk" else 5), flashes

    # The skew is what the pipeline adds. Times are when this process read each flash and onset,
    # so on a loaded machine a single reading can be late by a scheduling delay: the median of
    # the pairs is the pipeline's skew (loose bound; the benchmark holds the goal). Pairing from
    # the flash side: the SDK's video queue may drop a flash's frame under load, and an onset
    # whose flash was dropped must not be paired with the neighbouring beep's flash (500 ms
    # away), which is no skew of the pipeline.
    def nearest_onset(f: float) -> float:
        return min(onsets, key=lambda o: abs(f - o))

    skews = [f - nearest_onset(f) for f in flashes]
    print(
        f"A/V skew at the LiveKit subscriber (flash - onset), ms: {[round(s * 1e3) for s in skews]}"
    )
    assert abs(statistics.median(skews)) < 0.15, skews
    assert la.live_sessions == []
    assert lk.rooms_open == 0
