"""The codec a subscriber decodes is the codec TrackInfo announces, across renegotiations.

A real libwebrtc subscriber (the ``livekit`` SDK) joins a room whose avatar track is announced in
one codec, the stand-in forces renegotiations (one before media flows, as browsers do, and one
mid-call), and the test reads the codec libwebrtc decoded from its own stats. The stand-in's codec
counter is checked against it: it is counted from the payload type of each packet on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from livekit import rtc

from bridge.sim.livekit_server import LiveKitStandIn
from tests.livekit.conftest import open_room

pytestmark = pytest.mark.netns


async def _until(check: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def _decoded_video_codec(room: rtc.Room) -> tuple[str, int]:
    """(mime type, frames decoded) of the subscribed video stream, from libwebrtc's stats."""
    stats = (await room.get_rtc_stats()).subscriber_stats
    stats += (await room.get_rtc_stats()).publisher_stats  # v1: one PC, reported as publisher
    codecs = {s.codec.rtc.id: s.codec.codec.mime_type for s in stats if s.HasField("codec")}
    inbound = [
        s.inbound_rtp
        for s in stats
        if s.HasField("inbound_rtp") and s.inbound_rtp.stream.kind == "video"
    ]
    decoded = [i for i in inbound if i.inbound.frames_decoded > 0]
    assert len(decoded) == 1, f"expected one decoding video stream, got {inbound}"
    return codecs.get(decoded[0].stream.codec_id, "?"), decoded[0].inbound.frames_decoded


@pytest.mark.parametrize("codec", ["H264", "VP8"])
@pytest.mark.parametrize("single_pc", [True, False], ids=["rtc-v1", "rtc-legacy"])
async def test_decoded_codec_is_the_announced_one_across_renegotiations(
    single_pc: bool, codec: str
) -> None:
    server = LiveKitStandIn()
    await server.start()
    server.faults.renegotiate_on_join = True
    room = rtc.Room()
    try:
        await open_room(server, "codec", codec=codec)
        video_track: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()
        announced: list[str] = []

        @room.on("track_subscribed")
        def _on(
            track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
        ) -> None:
            if track.kind == rtc.TrackKind.KIND_VIDEO and not video_track.done():
                announced.append(pub.mime_type)
                video_track.set_result(track)

        options = rtc.RoomOptions(single_peer_connection=single_pc)
        await room.connect(server.url, server.mint_token("codec", "daemon"), options)
        track = await asyncio.wait_for(video_track, 10)
        assert [m.lower() for m in announced] == [f"video/{codec}".lower()]
        stream = rtc.VideoStream(track)
        try:
            async with asyncio.timeout(10):
                async for _ in stream:
                    break
            # The renegotiation asked for on join, then one asked for mid-call.
            await _until(lambda: server.counters.renegotiations >= 1, 10, "renegotiation 1")
            assert await server.faults.renegotiate("codec") == 1
            await _until(lambda: server.counters.renegotiations >= 2, 10, "renegotiation 2")
            frames = 0
            async with asyncio.timeout(10):
                async for _ in stream:
                    frames += 1
                    if frames >= 30:
                        break
        finally:
            await stream.aclose()
        mime, decoded = await _decoded_video_codec(room)
        assert mime.lower() == f"video/{codec}".lower(), f"decoded {mime}, announced {codec}"
        assert decoded >= 30
        # Wire truth: one subscriber, one codec ever seen on its packets.
        assert server.counters.video_codecs == {codec: 1}
        # Every SDP the stand-in sent named only the announced video codec.
        assert server.counters.sdp_video_codecs == {codec}
    finally:
        await room.disconnect()
        await server.aclose()
