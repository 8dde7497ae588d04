"""The LiveKit stand-in's pre-encoded mode: one encode fanned out to many rooms, relayed as is."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from bridge.relay.path import RelayOptions, RelayPath
from bridge.sim.livekit_server import LiveKitStandIn, SyntheticVideoTrack, ToneAudioTrack
from bridge.stages import AvatarRoom

from .conftest import AVATAR, Recorder, wait_for
from .loopback import LoopbackStream

pytestmark = pytest.mark.netns


@pytest.fixture
async def fanout() -> AsyncIterator[LiveKitStandIn]:
    server = LiveKitStandIn(preencoded=True)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_one_encode_feeds_every_room(
    fanout: LiveKitStandIn, recorder: Recorder, codec: str
) -> None:
    relays: list[RelayPath] = []
    streams: list[LoopbackStream] = []
    try:
        for i in range(3):
            room = f"room-{i}"
            await fanout.create_room(
                room,
                avatar_identity=AVATAR,
                video=SyntheticVideoTrack(320, 180, 30),
                audio=ToneAudioTrack(),
                video_codec=codec,
            )
            stream = LoopbackStream()
            relay = RelayPath(RelayOptions(avatar_codec=codec), stream, recorder, recorder.fail)
            token = fanout.mint_token(room, "avatar-bridge")
            assert await relay.start(AvatarRoom(room, fanout.url, token, "")) is None
            relays.append(relay)
            streams.append(stream)
        await wait_for(lambda: all(len(s.frames) >= 30 for s in streams), 20, "every room")
        broadcaster = fanout.broadcasters[codec]
        decoded = sum(len(s.frames) for s in streams)
        assert broadcaster.frames < decoded  # encoded once, received three times
        assert set(fanout.broadcasters) == {codec}
        for s in streams:
            nums = [f for f in s.frames if f is not None]
            assert nums and all(b > a for a, b in itertools.pairwise(nums))
            assert s.audio_samples > 0
        # A keyframe request from one room reaches the shared encoder.
        forced = broadcaster.keyframes_forced
        await streams[0].send_pli()
        await wait_for(lambda: broadcaster.keyframes_forced > forced, 5, "shared keyframe")
    finally:
        for relay in relays:
            await relay.aclose()
    assert not recorder.failures
