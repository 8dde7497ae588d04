"""Single-layer VP9 sending for aiortc 1.14 (which encodes VP8 and H264 only).

When the Stream SFU grants VP9 only, the relay declines and the transcode path publishes on the
relay's SFU session (:mod:`bridge.stream.kept_session`), so the call sees the bridge join once.
That needs aiortc to send VP9. :func:`enable_vp9_send` (idempotent, called once at daemon start)
installs the two hooks it takes: the codec in ``aiortc.codecs.CODECS`` so the offer can carry it,
and a :class:`Vp9Encoder` (FFmpeg's ``libvpx-vp9``, real time, one spatial and one temporal layer)
returned by the sender's ``get_encoder`` for ``video/VP9``.

Packetization follows RFC 9628 in non-flexible mode with layer indices, as libwebrtc sends a
single-layer stream: picture id (15 bits), TID/SID 0 and a TL0PICIDX per picture, and the
scalability structure (one layer, its size, a one-frame group) on a keyframe's first packet.
"""

from __future__ import annotations

import multiprocessing
import random
import struct
from typing import Any

import av
from aiortc import rtcrtpsender
from aiortc.codecs import CODECS
from aiortc.codecs.base import Encoder
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters

__all__ = [
    "Vp9Encoder",
    "enable_vp9_send",
    "register_vp9_codec",
    "vp9_descriptor",
    "vp9_packetize",
    "vp9_send_enabled",
]

# Dynamic payload types aiortc's own table leaves free (97..102 are VP8/H264 and their RTX); the
# same as the Stream stand-in's VP9 receive support.
VP9_PT, VP9_RTX_PT = 120, 121
# RTP payload per packet (aiortc's VP8 packetizer uses the same budget).
PACKET_MAX = 1300
DEFAULT_BITRATE = 1_000_000
MIN_BITRATE, MAX_BITRATE = 250_000, 3_000_000

_installed = False


def vp9_descriptor(
    *,
    picture_id: int,
    tl0_pic_idx: int,
    inter: bool,
    start: bool,
    end: bool,
    size: tuple[int, int] | None = None,
) -> bytes:
    """The payload descriptor of one packet (RFC 9628 section 4.2, non-flexible mode).

    ``size`` adds the scalability structure (a keyframe's first packet): one spatial layer of
    that size and a group of one frame referencing the previous one.
    """
    b0 = 0x80 | 0x20  # I: picture id present; L: layer indices present (F = 0: non-flexible)
    if inter:
        b0 |= 0x40
    if start:
        b0 |= 0x08
    if end:
        b0 |= 0x04
    if size is not None:
        b0 |= 0x02
    out = bytearray((b0,))
    out += struct.pack("!H", 0x8000 | (picture_id & 0x7FFF))  # M = 1: 15-bit picture id
    out += bytes((0x00, tl0_pic_idx & 0xFF))  # TID 0, U 0, SID 0, D 0; TL0PICIDX
    if size is not None:
        out.append(0x18)  # N_S = 0 (one layer), Y = 1 (size follows), G = 1 (group follows)
        out += struct.pack("!HH", size[0], size[1])
        out += bytes((1, 0x04, 1))  # N_G = 1: TID 0, U 0, one reference, P_DIFF 1
    return bytes(out)


def vp9_packetize(
    frame: bytes,
    *,
    picture_id: int,
    tl0_pic_idx: int,
    keyframe: bool,
    size: tuple[int, int],
    max_payload: int = PACKET_MAX,
) -> list[bytes]:
    """One encoded VP9 frame as RTP payloads of at most ``max_payload`` bytes."""
    first_len = len(
        vp9_descriptor(picture_id=0, tl0_pic_idx=0, inter=True, start=True, end=False, size=size)
    )
    chunk = max_payload - first_len  # the largest descriptor bounds every packet
    if chunk <= 0:
        raise ValueError("max_payload leaves no room for VP9 data")
    pieces = [frame[i : i + chunk] for i in range(0, len(frame), chunk)] or [b""]
    out = []
    for i, piece in enumerate(pieces):
        desc = vp9_descriptor(
            picture_id=picture_id,
            tl0_pic_idx=tl0_pic_idx,
            inter=not keyframe,
            start=i == 0,
            end=i == len(pieces) - 1,
            size=size if keyframe and i == 0 else None,
        )
        out.append(desc + piece)
    return out


class Vp9Encoder(Encoder):
    """``libvpx-vp9`` behind aiortc's encoder interface (aiortc runs it on its executor)."""

    def __init__(self) -> None:
        self.codec: Any = None
        self.picture_id = random.randint(0, (1 << 15) - 1)
        self.tl0_pic_idx = random.randint(0, 255)
        self._target_bitrate = DEFAULT_BITRATE

    @property
    def target_bitrate(self) -> int:
        return self._target_bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._target_bitrate = max(MIN_BITRATE, min(bitrate, MAX_BITRATE))

    def _open(self, width: int, height: int) -> Any:
        codec: Any = av.CodecContext.create("libvpx-vp9", "w")
        codec.width, codec.height = width, height
        codec.bit_rate = self._target_bitrate
        codec.pix_fmt = "yuv420p"
        codec.gop_size = 3000  # keyframes when asked (PLI), as aiortc's VP8 encoder
        codec.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "0",
            "row-mt": "1",
            "error-resilient": "1",
        }
        codec.thread_count = min(4, multiprocessing.cpu_count())
        return codec

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, av.VideoFrame)
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        c = self.codec
        if c is not None and (
            frame.width != c.width
            or frame.height != c.height
            or abs(self._target_bitrate - c.bit_rate) / c.bit_rate > 0.1
        ):
            self.codec = None
        if self.codec is None:
            self.codec = self._open(frame.width, frame.height)
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        payloads: list[bytes] = []
        for packet in self.codec.encode(frame):
            payloads += self._packets(bytes(packet), packet.is_keyframe, frame.width, frame.height)
        timestamp = convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)
        return payloads, timestamp

    def _packets(self, data: bytes, keyframe: bool, width: int, height: int) -> list[bytes]:
        out = vp9_packetize(
            data,
            picture_id=self.picture_id,
            tl0_pic_idx=self.tl0_pic_idx,
            keyframe=keyframe,
            size=(width, height),
        )
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        self.tl0_pic_idx = (self.tl0_pic_idx + 1) & 0xFF  # every picture is on layer 0
        return out

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        raise NotImplementedError("VP9 is encoded here, not passed through")


def register_vp9_codec() -> None:
    """VP9 (profile 0) and its RTX in aiortc's codec table, once, whoever asks first (the
    sender here, the Stream stand-in's receiver) and however often."""
    if any(c.mimeType.lower() == "video/vp9" for c in CODECS["video"]):
        return
    CODECS["video"] += [
        RTCRtpCodecParameters(
            mimeType="video/VP9",
            clockRate=90000,
            payloadType=VP9_PT,
            rtcpFeedback=[
                RTCRtcpFeedback(type="nack"),
                RTCRtcpFeedback(type="nack", parameter="pli"),
                RTCRtcpFeedback(type="goog-remb"),
            ],
            parameters={"profile-id": "0"},
        ),
        RTCRtpCodecParameters(
            mimeType="video/rtx",
            clockRate=90000,
            payloadType=VP9_RTX_PT,
            parameters={"apt": VP9_PT},
        ),
    ]


def vp9_send_enabled() -> bool:
    return _installed


def enable_vp9_send() -> None:
    """Teach aiortc to offer and encode single-layer VP9. Idempotent; the daemon calls it once at
    start (:class:`bridge.remote.RemoteStages`), so every session sees the same codec table."""
    global _installed
    if _installed:
        return
    register_vp9_codec()
    # The sender module imported the name directly, so it is replaced there.
    orig_get_encoder = getattr(rtcrtpsender, "get_encoder")  # noqa: B009 (not re-exported)

    def get_encoder(codec: RTCRtpCodecParameters) -> Encoder:
        if codec.mimeType.lower() == "video/vp9":
            return Vp9Encoder()
        encoder: Encoder = orig_get_encoder(codec)
        return encoder

    setattr(rtcrtpsender, "get_encoder", get_encoder)  # noqa: B010
    _installed = True
