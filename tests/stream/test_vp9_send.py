"""VP9 sending for the kept SFU session: descriptors, packetization and the encoder, no sockets.

The packets are read back with the Stream stand-in's own VP9 receive support (descriptor
stripper and FFmpeg decoder), i.e. the way the SFU stand-in reads what the bridge sends.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.jitterbuffer import JitterFrame

from bridge.sim.stream.vp9 import Vp9Decoder, vp9_depayload
from bridge.stream.vp9_send import Vp9Encoder, vp9_descriptor, vp9_packetize


def test_descriptor_bits_picture_id_and_scalability_structure() -> None:
    d = vp9_descriptor(picture_id=0x1234, tl0_pic_idx=7, inter=False, start=True, end=False)
    # I, L set; P clear (keyframe); B set, E clear; no V.
    assert d[0] == 0x80 | 0x20 | 0x08
    assert d[1:3] == bytes((0x80 | 0x12, 0x34))  # M = 1, 15-bit picture id
    assert d[3:5] == bytes((0x00, 7))  # TID/SID 0, TL0PICIDX
    ss = vp9_descriptor(
        picture_id=1, tl0_pic_idx=0, inter=True, start=True, end=True, size=(640, 360)
    )
    assert ss[0] == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02
    assert ss[5] == 0x18 and ss[6:10] == bytes((0x02, 0x80, 0x01, 0x68))  # 640 x 360
    assert ss[10:] == bytes((1, 0x04, 1))


@pytest.mark.parametrize("size", [0, 1, 1000, 1287, 1288, 5000])
def test_packetize_splits_marks_and_round_trips(size: int) -> None:
    frame = bytes(i % 251 for i in range(size))
    packets = vp9_packetize(
        frame, picture_id=5, tl0_pic_idx=9, keyframe=True, size=(640, 360), max_payload=1300
    )
    assert all(len(p) <= 1300 for p in packets)
    assert [bool(p[0] & 0x08) for p in packets] == [True] + [False] * (len(packets) - 1)
    assert [bool(p[0] & 0x04) for p in packets] == [False] * (len(packets) - 1) + [True]
    assert [bool(p[0] & 0x02) for p in packets] == [True] + [False] * (len(packets) - 1)
    assert b"".join(vp9_depayload(p) for p in packets) == frame


def test_encoder_frames_decode_and_keyframes_are_marked() -> None:
    enc, dec = Vp9Encoder(), Vp9Decoder()
    rng = np.random.default_rng(3)
    decoded = 0
    keyframes = []
    for i in range(6):
        img = rng.integers(0, 255, (360 * 3 // 2, 640), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90000)
        payloads, timestamp = enc.encode(frame, force_keyframe=i == 3)
        assert abs(timestamp - i * 3000) <= 1  # aiortc's time base conversion truncates
        assert payloads, f"frame {i} produced nothing (lag-in-frames must be 0)"
        keyframes.append(not payloads[0][0] & 0x40)  # P bit clear: not inter-predicted
        data = b"".join(vp9_depayload(p) for p in payloads)
        out = dec.decode(JitterFrame(data=data, timestamp=timestamp))
        decoded += len(out)
        assert all((f.width, f.height) == (640, 360) for f in out)
    assert keyframes == [True, False, False, True, False, False]
    assert decoded == 6
