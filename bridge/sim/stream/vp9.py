"""Single-layer VP9 receive support for aiortc 1.14 (which only knows VP8 and H264).

The stand-in SFU receives what the real ``getstream_rtc`` publisher sends, and VP9 is that
publisher's default codec. Three aiortc hooks are needed, all installed by
:func:`enable_vp9_receive` (idempotent): the codec in ``aiortc.codecs.CODECS`` so the answer SDP
accepts it, a payload-descriptor stripper in front of aiortc's ``depayload``, and an FFmpeg VP9
decoder from ``get_decoder``. Only single-layer VP9 works (the stand-in advertises
``max_spatial_layers=1``); SVC would need per-layer frame reassembly.
"""

from __future__ import annotations

from typing import Any

import av
import structlog
from aiortc import rtcrtpreceiver
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import VIDEO_TIME_BASE
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from bridge.stream.vp9_send import register_vp9_codec

log = structlog.get_logger(__name__)

# Dynamic payload types not used by aiortc's own table (97..102 are VP8/H264 and their RTX).
_installed = False


def vp9_depayload(payload: bytes) -> bytes:
    """Strip the VP9 RTP payload descriptor (RFC 9628, section 4.2) and return the VP9 data.

    Raises ValueError on a truncated descriptor, which aiortc treats as a bad packet.
    """
    try:
        b0 = payload[0]
        has_pid, inter, has_layers = b0 & 0x80, b0 & 0x40, b0 & 0x20
        flexible, has_ss = b0 & 0x10, b0 & 0x02
        pos = 1
        if has_pid:
            pos += 2 if payload[pos] & 0x80 else 1  # M bit: 15-bit picture id
        if has_layers:
            pos += 1 if flexible else 2  # layer byte, plus TL0PICIDX in non-flexible mode
        if flexible and inter:
            for _ in range(3):  # up to 3 P_DIFF bytes chained by their N bit
                more = payload[pos] & 0x01
                pos += 1
                if not more:
                    break
        if has_ss:
            ss = payload[pos]
            pos += 1
            n_s, has_res, has_group = (ss >> 5) + 1, ss & 0x10, ss & 0x08
            if has_res:
                pos += 4 * n_s
            if has_group:
                n_g = payload[pos]
                pos += 1
                for _ in range(n_g):
                    refs = (payload[pos] >> 2) & 0x03
                    pos += 1 + refs
    except IndexError as exc:
        raise ValueError("truncated VP9 payload descriptor") from exc
    if pos > len(payload):
        raise ValueError("truncated VP9 payload descriptor")
    return payload[pos:]


class Vp9Decoder(Decoder):
    """FFmpeg's native VP9 decoder behind aiortc's decoder interface (runs on aiortc's thread)."""

    def __init__(self) -> None:
        self._codec: Any = av.CodecContext.create("vp9", "r")

    def decode(self, encoded_frame: JitterFrame) -> list[Any]:
        try:
            packet = av.Packet(encoded_frame.data)
            packet.pts = encoded_frame.timestamp
            packet.time_base = VIDEO_TIME_BASE
            return list(self._codec.decode(packet))
        except av.FFmpegError as exc:
            # Expected until the first keyframe after a join or a loss; the PLI recovers it.
            log.debug("vp9_decode_failed", error=str(exc))
            return []


def enable_vp9_receive() -> None:
    """Teach aiortc to negotiate, depayload and decode single-layer VP9. Idempotent."""
    global _installed
    if _installed:
        return
    register_vp9_codec()
    # The receiver module imported these names directly, so they are replaced there.
    orig_depayload = getattr(rtcrtpreceiver, "depayload")  # noqa: B009 (not re-exported)
    orig_get_decoder = getattr(rtcrtpreceiver, "get_decoder")  # noqa: B009

    def depayload(codec: RTCRtpCodecParameters, payload: bytes) -> bytes:
        if codec.name == "VP9":
            return vp9_depayload(payload)
        out: bytes = orig_depayload(codec, payload)
        return out

    def get_decoder(codec: RTCRtpCodecParameters) -> Decoder:
        if codec.mimeType.lower() == "video/vp9":
            return Vp9Decoder()
        decoder: Decoder = orig_get_decoder(codec)
        return decoder

    setattr(rtcrtpreceiver, "depayload", depayload)  # noqa: B010
    setattr(rtcrtpreceiver, "get_decoder", get_decoder)  # noqa: B010
    _installed = True
