"""The picture size a keyframe packet carries, read from the bitstream (sans-I/O, pure).

The relay never decodes, but a simulcast SFU may switch the layer it forwards at any keyframe, and
the size is what tells the layers apart. VP8 keyframes carry it in their frame header (RFC 6386
section 9.1), H264 in the sequence parameter set that libwebrtc and aiortc send with every IDR.
"""

from __future__ import annotations

__all__ = ["h264_sps_size", "keyframe_size", "vp8_keyframe_size"]

Size = tuple[int, int]


def _vp8_descriptor_size(payload: bytes) -> int | None:
    """Length of the VP8 payload descriptor (RFC 7741 section 4.2), None when truncated."""
    if not payload:
        return None
    i = 1
    if payload[0] & 0x80:  # X
        if len(payload) < 2:
            return None
        x = payload[1]
        i = 2
        if x & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= i:
                return None
            i += 2 if payload[i] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            i += 1
        if x & 0x30:  # T or K
            i += 1
    return i if i <= len(payload) else None


def vp8_keyframe_size(payload: bytes) -> Size | None:
    """(width, height) of a VP8 RTP payload that starts a keyframe, else None."""
    d = _vp8_descriptor_size(payload)
    if d is None or not payload[0] & 0x10 or payload[0] & 0x07:  # S=1 and PID 0 only
        return None
    frame = payload[d:]
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None  # an interframe, or not a frame start
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


class _Bits:
    """Exp-Golomb reader over an RBSP (emulation prevention bytes already removed)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.pos >> 3
        if byte >= len(self.data):
            raise ValueError("SPS truncated")
        value = (self.data[byte] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _rbsp(nal: bytes) -> bytes:
    out = bytearray()
    zeros = 0
    for b in nal:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def h264_sps_size(nal: bytes) -> Size | None:
    """(width, height) from an H264 SPS NAL unit (header byte included), cropping applied."""
    if not nal or nal[0] & 0x1F != 7:
        return None
    try:
        r = _Bits(_rbsp(nal[1:]))
        profile = r.bits(8)
        r.bits(16)  # constraint flags, level
        r.ue()  # seq_parameter_set_id
        chroma = 1
        if profile in _HIGH_PROFILES:
            chroma = r.ue()
            if chroma == 3:
                r.bit()  # separate_colour_plane_flag
            r.ue()  # bit_depth_luma
            r.ue()  # bit_depth_chroma
            r.bit()  # qpprime_y_zero_transform_bypass
            if r.bit():  # seq_scaling_matrix_present
                for i in range(8 if chroma != 3 else 12):
                    if r.bit():
                        last, nxt = 8, 8
                        for _ in range(16 if i < 6 else 64):
                            if nxt:
                                nxt = (last + r.se()) % 256
                            last = nxt or last
        r.ue()  # log2_max_frame_num
        poc = r.ue()
        if poc == 0:
            r.ue()
        elif poc == 1:
            r.bit()
            r.se()
            r.se()
            for _ in range(r.ue()):
                r.se()
        r.ue()  # max_num_ref_frames
        r.bit()  # gaps_in_frame_num_allowed
        mbs_w = r.ue() + 1
        map_units_h = r.ue() + 1
        frame_mbs_only = r.bit()
        if not frame_mbs_only:
            r.bit()  # mb_adaptive_frame_field
        r.bit()  # direct_8x8_inference
        width = mbs_w * 16
        height = (2 - frame_mbs_only) * map_units_h * 16
        if r.bit():  # frame_cropping
            left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
            crop_x = 2 if chroma in (1, 2) else 1
            crop_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
            width -= (left + right) * crop_x
            height -= (top + bottom) * crop_y
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def _h264_size(payload: bytes) -> Size | None:
    if not payload:
        return None
    nal = payload[0] & 0x1F
    if nal == 7:
        return h264_sps_size(payload)
    if nal == 24:  # STAP-A
        i = 1
        while i + 2 <= len(payload):
            size = int.from_bytes(payload[i : i + 2], "big")
            unit = payload[i + 2 : i + 2 + size]
            if unit and unit[0] & 0x1F == 7:
                return h264_sps_size(unit)
            i += 2 + size
    return None


def keyframe_size(codec: str, payload: bytes) -> Size | None:
    """The size a keyframe's first packet announces (``codec``: "VP8" or "H264"), else None.

    H264: only a packet carrying the SPS (alone or in a STAP-A) tells; an IDR without one
    returns None (the caller keeps the size it knew).
    """
    c = codec.upper()
    if c == "VP8":
        return vp8_keyframe_size(payload)
    if c == "H264":
        return _h264_size(payload)
    return None
