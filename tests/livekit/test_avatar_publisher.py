"""The stand-in avatar's LiveKit-SDK publisher options (no network): by default what a LiveKit
client that sets no encoding sends (the SDK's preset for the size), and a frame-rate cap on
request (``StandInOptions.publisher_max_fps`` / ``BRIDGE_SIM_AVATAR_FPS``: a steady 30 fps at
360p for the cadence benches, docs/sync.md)."""

from __future__ import annotations

from livekit import rtc

from bridge.sim.avatar_publisher import SdkAvatarPublisher
from bridge.sim.livekit_server import SyntheticVideoTrack, ToneAudioTrack


def _publisher(height: int, max_fps: float | None) -> SdkAvatarPublisher:
    # Built inside a running loop (the tests are async), as the stand-in builds it.
    width = height * 16 // 9
    return SdkAvatarPublisher(
        SyntheticVideoTrack(width, height, fps=30),
        ToneAudioTrack(),
        width=width,
        height=height,
        codec="VP8",
        max_fps=max_fps,
    )


async def test_no_cap_leaves_the_sdks_preset() -> None:
    opts = _publisher(360, None)._video_options(rtc.VideoCodec.VP8)
    assert opts.simulcast and opts.video_codec == rtc.VideoCodec.VP8
    assert not opts.HasField("video_encoding")


async def test_a_cap_sets_the_frame_rate_and_the_presets_bitrate() -> None:
    small = _publisher(360, 30)._video_options(rtc.VideoCodec.H264)
    assert small.video_encoding.max_framerate == 30
    assert small.video_encoding.max_bitrate == 450_000  # livekit-client's h360
    assert small.video_codec == rtc.VideoCodec.H264 and small.simulcast
    large = _publisher(720, 25)._video_options(rtc.VideoCodec.VP8)
    assert large.video_encoding.max_framerate == 25
    assert large.video_encoding.max_bitrate == 1_700_000  # h720
