"""Sync marks: barcode round trips (also through VP8), flash patch, onsets and beeps."""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Literal

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.sim import marks


def _codec(name: str, mode: Literal["r", "w"]) -> Any:
    # av's stubs type create() as the base class; the tests use the video subclass API.
    codec: Any = av.CodecContext.create(name, mode)
    return codec


@settings(max_examples=50, deadline=None)
@given(
    frame_no=st.integers(0, 2**32 - 1),
    media_ms=st.integers(0, 2**32 - 1),
    flash=st.booleans(),
    size=st.sampled_from([(640, 360), (854, 480), (1280, 720)]),
)
def test_round_trip(frame_no: int, media_ms: int, flash: bool, size: tuple[int, int]) -> None:
    w, h = size
    y = np.full((h, w), 128, dtype=np.uint8)
    marks.stamp_frame(y, frame_no, media_ms, flash)
    assert marks.read_frame(y) == marks.FrameMarks(frame_no, media_ms, flash)


def test_unstamped_and_corrupted_frames_read_none() -> None:
    rng = np.random.default_rng(3)
    assert marks.read_frame(np.full((360, 640), 128, dtype=np.uint8)) is None
    assert marks.read_frame(rng.integers(0, 256, (360, 640), dtype=np.uint8)) is None
    y = np.zeros((360, 640), dtype=np.uint8)
    marks.stamp_frame(y, 12345, 678, False)
    flipped = y.copy()
    flipped[0:16, 5 * 16 : 6 * 16] ^= 0xFF  # one data bit: parity must catch it
    assert marks.read_frame(flipped) is None


def test_survives_uniform_rescale() -> None:
    y = np.full((360, 640), 90, dtype=np.uint8)
    marks.stamp_frame(y, 77, 2566, True)
    double = np.repeat(np.repeat(y, 2, axis=0), 2, axis=1)
    assert marks.read_frame(double) == marks.FrameMarks(77, 2566, True)


def _code(codec: str, pictures: list[Any]) -> list[marks.FrameMarks | None]:
    enc = _codec(codec, "w")
    enc.width, enc.height, enc.pix_fmt = 640, 360, "yuv420p"
    enc.bit_rate = 250_000
    enc.time_base = Fraction(1, 30)
    enc.framerate = Fraction(30, 1)
    dec = _codec("vp8" if codec == "libvpx" else "h264", "r")
    out: list[marks.FrameMarks | None] = []
    packets = []
    for i, img in enumerate(pictures):
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts = i
        packets += enc.encode(frame)
    packets += enc.encode(None)
    for packet in [*packets, None]:
        out += [marks.read_frame(f.to_ndarray()[:360]) for f in dec.decode(packet)]
    return out


@pytest.mark.parametrize("codec", ["libvpx", "libx264"])
def test_survives_lossy_coding(codec: str) -> None:
    rng = np.random.default_rng(0)
    # A face-like smooth picture with mild noise: every mark, flash included, must survive.
    yy, xx = np.mgrid[:540, :640]
    smooth = (80 + 60 * np.exp(-((xx - 320) ** 2 + (yy - 200) ** 2) / 8000)).astype(np.int16)
    pictures, expected = [], []
    for i in range(15):
        img = np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)
        marks.stamp_frame(img[:360], 1000 + i, i * 33, i % 4 == 0)
        pictures.append(img)
        expected.append(marks.FrameMarks(1000 + i, i * 33, i % 4 == 0))
    assert _code(codec, pictures) == expected
    # Pure noise starves a 250 kbps encoder; the barcode still decodes on every frame.
    noisy = []
    for i in range(10):
        img = rng.integers(0, 256, (540, 640), dtype=np.uint8)
        marks.stamp_frame(img[:360], i, i * 33, False)
        noisy.append(img)
    read = _code(codec, noisy)
    assert [(m.frame_no, m.media_ms) if m else None for m in read] == [
        (i, i * 33) for i in range(10)
    ]


def test_beep_train_and_onsets() -> None:
    rate = 48_000
    pcm = marks.beep_train(rate, 5, 400, 100, 1000.0)
    assert pcm.dtype == np.int16 and len(pcm) == 5 * 400 * 48
    found = marks.onsets(pcm, rate)
    assert [round(i / 48) for i in found] == [0, 400, 800, 1200, 1600]
    # Streaming in odd pieces finds the same samples.
    det = marks.OnsetDetector(rate)
    streamed: list[int] = []
    for start in range(0, len(pcm), 777):
        streamed += det.feed(pcm[start : start + 777])
    assert streamed == found
    # Gaps shorter than min_gap_ms are not onsets.
    tight = marks.beep_train(rate, 4, 150, 100)
    assert len(marks.onsets(tight, rate, min_gap_ms=100)) == 1
    assert marks.onsets(np.zeros(rate, dtype=np.int16), rate) == []
