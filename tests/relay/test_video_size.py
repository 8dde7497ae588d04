"""Keyframe sizes read from real encoders' RTP payloads (aiortc's VP8 and H264 packetizers, and a
High-profile SPS from libx264), without sockets."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from bridge.relay.video_size import h264_sps_size, keyframe_size

SIZES = [(320, 180), (640, 360), (1280, 720), (854, 480)]


def encode(codec: str, width: int, height: int) -> tuple[list[bytes], list[bytes]]:
    """The RTP payloads of a keyframe and of the interframe after it."""
    params: dict[str, int | str | None] = {}
    if codec == "H264":
        params = {"packetization-mode": "1", "profile-level-id": "42e01f"}
    encoder = get_encoder(
        RTCRtpCodecParameters(
            mimeType=f"video/{codec}", clockRate=90000, payloadType=96, parameters=params
        )
    )
    out = []
    for i, key in enumerate((True, False)):
        y = np.full((height * 3 // 2, width), 128, np.uint8)
        y[: height // 2, : width // 2] = 40 + 50 * i  # something to encode in the interframe
        frame = av.VideoFrame.from_ndarray(y, format="yuv420p")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=key)
        out.append(payloads)
    return out[0], out[1]


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_the_first_packet_of_a_keyframe_tells_its_size(codec: str) -> None:
    for width, height in SIZES:
        key, inter = encode(codec, width, height)
        assert keyframe_size(codec, key[0]) == (width, height), (codec, width, height)
        # Only the frame's start tells: other packets and interframes say nothing.
        assert all(keyframe_size(codec, p) is None for p in key[1:] + inter)


def test_a_high_profile_sps_with_cropping() -> None:
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 1920, 1080, "yuv420p"  # 1080 = 68 MBs, cropped by 8
    ctx.options = {"profile": "high", "x264-params": "keyint=1"}
    ctx.time_base = fractions.Fraction(1, 30)
    frame = av.VideoFrame.from_ndarray(np.full((1620, 1920), 128, np.uint8), format="yuv420p")
    frame.pts = 0
    stream = b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])
    nals = [n.lstrip(b"\x00") for n in stream.split(b"\x00\x00\x01") if n.strip(b"\x00")]
    sps = next(n for n in nals if n[0] & 0x1F == 7)
    assert sps[1] == 100  # profile_idc: High (chroma format, scaling matrix flags parsed)
    assert h264_sps_size(sps) == (1920, 1080)
    # The same SPS in a STAP-A, as libwebrtc sends it ahead of an IDR.
    pps = next(n for n in nals if n[0] & 0x1F == 8)
    stap = bytes([24]) + len(sps).to_bytes(2, "big") + sps + len(pps).to_bytes(2, "big") + pps
    assert keyframe_size("H264", stap) == (1920, 1080)
    assert h264_sps_size(sps[:6]) is None  # truncated: no guess
