"""A LiveKit client publishes (libwebrtc, simulcast) and the stand-in forwards like an SFU.

The publisher is the real ``livekit`` SDK with the options a LiveKit client uses by default
(simulcast video, Opus with DTX off); the subscriber is the real SDK too. Asserted from the
subscriber's own decoder (libwebrtc stats and decoded frames): the codec, the layer's size, a layer
switch asked by UpdateTrackSettings, and from the stand-in: one forwarded stream per subscriber.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from livekit import rtc

from bridge.sim.livekit_server import LiveKitStandIn

pytestmark = pytest.mark.netns

# LiveAvatar's default quality. At 640x360 the SDK announces and sends two layers both 640x360.
W, H = 1280, 720


class Publisher:
    """The avatar as a LiveKit client: a moving picture and a tone, published with the SDK."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.room = rtc.Room()
        self.video = rtc.VideoSource(W, H)
        self.audio = rtc.AudioSource(48000, 1)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, url: str, token: str) -> None:
        await self.room.connect(url, token)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._frames()), loop.create_task(self._tone())]
        codec = rtc.VideoCodec.H264 if self.codec == "H264" else rtc.VideoCodec.VP8
        lp = self.room.local_participant
        await lp.publish_track(
            rtc.LocalVideoTrack.create_video_track("avatar-video", self.video),
            rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True, video_codec=codec
            ),
        )
        await lp.publish_track(
            rtc.LocalAudioTrack.create_audio_track("avatar-audio", self.audio),
            rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, dtx=False),
        )

    async def _frames(self) -> None:
        # A second of moving picture computed once: the loop only hands buffers to the SDK (the
        # stand-in's SFU shares this loop and must keep up with the packets).
        ramp = np.tile(np.arange(W, dtype=np.uint16), (H, 1))
        chroma = np.full(W * H // 2, 128, dtype=np.uint8)
        frames = [
            rtc.VideoFrame(
                W,
                H,
                rtc.VideoBufferType.I420,
                ((ramp + n * 4) % 200 + 28).astype(np.uint8).tobytes() + chroma.tobytes(),
            )
            for n in range(30)
        ]
        t0, n = time.monotonic(), 0
        while True:
            self.video.capture_frame(frames[n % len(frames)])
            n += 1
            await asyncio.sleep(max(0.0, t0 + n / 30 - time.monotonic()))

    async def _tone(self) -> None:
        t = 0
        while True:
            pcm = np.sin(2 * np.pi * 440 * (t + np.arange(480)) / 48000) * 8000
            data = pcm.astype(np.int16).tobytes()
            await self.audio.capture_frame(rtc.AudioFrame(data, 48000, 1, 480))
            t += 480

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.room.disconnect()


@pytest.fixture
async def world() -> AsyncIterator[tuple[LiveKitStandIn, Callable[[str], Publisher]]]:
    server = LiveKitStandIn()
    await server.start()
    pubs: list[Publisher] = []

    def make(codec: str) -> Publisher:
        pubs.append(Publisher(codec))
        return pubs[-1]

    try:
        yield server, make
    finally:
        for p in pubs:
            await p.aclose()
        await server.aclose()


async def _inbound(room: rtc.Room) -> Any:
    """The decoding video stream's inbound stats, or None before one decodes."""
    stats = await room.get_rtc_stats()
    for s in list(stats.subscriber_stats) + list(stats.publisher_stats):
        i = s.inbound_rtp if s.HasField("inbound_rtp") else None
        if i is not None and i.stream.kind == "video" and i.inbound.frames_decoded > 0:
            return i.inbound
    return None


def _diagnosis(server: LiveKitStandIn, room: str, sizes: object) -> str:
    out = [f"decoded sizes {sizes}"]
    for p in server._rooms[room].participants.values():
        for kind, track in p.published.items():
            layers = {r: (lay.packets, lay.ssrc) for r, lay in track.layers.items()}
            out.append(f"published {kind}: {track.stats} layers {layers}")
        for sink in p.sinks:
            f = sink.forwarder
            out.append(f"sink {sink.track.kind}: sent {sink.sent} {f and (f.current, f.stats)}")
    return "; ".join(out)


async def _inbound_video(room: rtc.Room) -> tuple[str, int, int]:
    """(decoded mime type, freezes, packets lost) of the subscriber's video, from libwebrtc."""
    stats = await room.get_rtc_stats()
    all_stats = list(stats.subscriber_stats) + list(stats.publisher_stats)
    codecs = {s.codec.rtc.id: s.codec.codec.mime_type for s in all_stats if s.HasField("codec")}
    inbound = [
        s.inbound_rtp
        for s in all_stats
        if s.HasField("inbound_rtp")
        and s.inbound_rtp.stream.kind == "video"
        and s.inbound_rtp.inbound.frames_decoded > 0
    ]
    assert len(inbound) == 1, inbound
    i = inbound[0]
    return codecs.get(i.stream.codec_id, "?"), i.inbound.freeze_count, i.received.packets_lost


@pytest.mark.parametrize("codec", ["VP8", "H264"])
@pytest.mark.parametrize("single_pc", [True, False], ids=["rtc-v1", "rtc-legacy"])
async def test_simulcast_is_forwarded_one_layer_at_a_time(
    world: tuple[LiveKitStandIn, Callable[[str], Publisher]], codec: str, single_pc: bool
) -> None:
    server, make = world
    await server.open_room("sfu")
    publisher = make(codec)
    await publisher.start(server.url, server.mint_token("sfu", "heygen"))
    room = rtc.Room()
    got: asyncio.Future[tuple[rtc.Track, rtc.RemoteTrackPublication]] = (
        asyncio.get_running_loop().create_future()
    )

    @room.on("track_subscribed")
    def _on(track: rtc.Track, pub: rtc.RemoteTrackPublication, _: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO and not got.done():
            got.set_result((track, pub))

    try:
        await room.connect(
            server.url,
            server.mint_token("sfu", "daemon"),
            rtc.RoomOptions(single_peer_connection=single_pc),
        )
        _track, pub = await asyncio.wait_for(got, 15)
        assert pub.mime_type.lower() == f"video/{codec}".lower()
        assert (pub.width, pub.height) == (W, H) and pub.simulcasted
        # What the subscriber's decoder produced, from its stats (no per-frame Python work).
        decoded: dict[str, object] = {}

        async def decoder_at(size: tuple[int, int], frames: int, within_s: float) -> None:
            deadline = asyncio.get_running_loop().time() + within_s
            start: int | None = None
            while True:
                i = await _inbound(room)
                if i is not None:
                    decoded.update(
                        size=(i.frame_width, i.frame_height),
                        frames=i.frames_decoded,
                        keyframes=i.key_frames_decoded,
                        freezes=i.freeze_count,
                        nacks=i.nack_count,
                        plis=i.pli_count,
                    )
                    if (i.frame_width, i.frame_height) == size:
                        start = i.frames_decoded if start is None else start
                        if i.frames_decoded - start >= frames:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    diag = _diagnosis(server, "sfu", decoded)
                    raise AssertionError(f"no {frames} frames decoded at {size}: {diag}")
                await asyncio.sleep(0.25)

        # No settings asked: the highest layer the publisher sends.
        await decoder_at((W, H), 30, 20)
        pub.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
        await decoder_at((W // 4, H // 4), 15, 20)
        mime, _freezes, _lost = await _inbound_video(room)
        assert mime.lower() == f"video/{codec}".lower()
        assert server.counters.video_codecs == {codec: 1}
        subscriber = next(p for p in server._participants("sfu") if p.identity == "daemon")
        video_sink = next(s for s in subscriber.sinks if s.track.kind == "video")
        assert video_sink.forwarder is not None
        stats = video_sink.forwarder.stats
        assert stats.switches >= 1 and video_sink.forwarder.current == "q"
        published = video_sink.track
        assert {"q", "h", "f"} <= set(published.layers), "libwebrtc sent its simulcast layers"
        assert published.stats["plis_up"] >= 1, "a switch asks the publisher for a keyframe"
    finally:
        await room.disconnect()
