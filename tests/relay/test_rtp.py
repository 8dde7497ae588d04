"""The relay's sans-I/O core: keyframe detection, rewriting, SR translation, history, hold."""

from __future__ import annotations

import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, wrap_rtx

from bridge.relay.rtp import (
    HoldQueue,
    KeyframeGate,
    OutputBinding,
    RateLimiter,
    RtpRewriter,
    RtxHistory,
    h264_is_keyframe_start,
    is_keyframe_start,
    rtx_from_serialized,
    vp8_is_keyframe_start,
)

EXTENSIONS = HeaderExtensionsMap()
EXTENSIONS.configure(
    RTCRtpParameters(
        headerExtensions=[
            RTCRtpHeaderExtensionParameters(
                id=1, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"
            ),
            RTCRtpHeaderExtensionParameters(id=3, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
            RTCRtpHeaderExtensionParameters(
                id=4, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
            ),
        ]
    )
)

# -- VP8 (RFC 7741) ------------------------------------------------------------------------------


def vp8(
    *, start: bool = True, pid: int = 0, key: bool = True, picture_id: int | None = 300
) -> bytes:
    b0 = (0x10 if start else 0) | pid
    desc = bytearray()
    if picture_id is not None:
        b0 |= 0x80
        desc.append(0x80)  # I
        desc += struct.pack("!H", 0x8000 | picture_id)  # 15-bit PictureID
    header = bytes([0x00 if key else 0x01, 0x9D, 0x01, 0x2A])
    return bytes([b0]) + bytes(desc) + header


def test_vp8_keyframe_start_detected_with_and_without_picture_id() -> None:
    assert vp8_is_keyframe_start(vp8())
    assert vp8_is_keyframe_start(vp8(picture_id=None))
    short = bytes([0x90, 0x80, 0x05, 0x00])  # 7-bit PictureID
    assert vp8_is_keyframe_start(short)


def test_vp8_non_key_continuation_and_other_partitions_rejected() -> None:
    assert not vp8_is_keyframe_start(vp8(key=False))
    assert not vp8_is_keyframe_start(vp8(start=False))
    assert not vp8_is_keyframe_start(vp8(pid=1))
    assert not vp8_is_keyframe_start(b"")
    assert not vp8_is_keyframe_start(bytes([0x90, 0x80]))  # truncated


def test_vp8_tl0_and_tid_bytes_skipped() -> None:
    payload = bytes([0x90, 0xE0, 0x81, 0x02, 0x07, 0x20, 0x00, 0x9D])  # I(15) L T
    assert vp8_is_keyframe_start(payload)
    assert not vp8_is_keyframe_start(payload[:6] + bytes([0x01]))


# -- H264 (RFC 6184) -----------------------------------------------------------------------------


def nal(t: int, body: bytes = b"\x11\x22") -> bytes:
    return bytes([0x60 | t]) + body


def stap_a(*nals: bytes) -> bytes:
    out = bytes([0x78])  # NRI 3, type 24
    for n in nals:
        out += struct.pack("!H", len(n)) + n
    return out


def fu_a(t: int, *, start: bool) -> bytes:
    return bytes([0x7C, (0x80 if start else 0) | t]) + b"\xaa" * 10


def test_h264_single_nal_idr_and_sps() -> None:
    assert h264_is_keyframe_start(nal(5))
    assert h264_is_keyframe_start(nal(7))
    assert not h264_is_keyframe_start(nal(1))
    assert not h264_is_keyframe_start(nal(8))  # PPS alone does not start a keyframe


def test_h264_stap_a() -> None:
    assert h264_is_keyframe_start(stap_a(nal(7), nal(8)))
    assert h264_is_keyframe_start(stap_a(nal(6), nal(5)))
    assert not h264_is_keyframe_start(stap_a(nal(6), nal(1)))
    assert not h264_is_keyframe_start(bytes([0x78, 0x00]))  # truncated


def test_h264_fu_a_only_the_first_idr_fragment() -> None:
    assert h264_is_keyframe_start(fu_a(5, start=True))
    assert not h264_is_keyframe_start(fu_a(5, start=False))
    assert not h264_is_keyframe_start(fu_a(1, start=True))
    assert not h264_is_keyframe_start(b"")


def test_is_keyframe_start_rejects_unknown_codec() -> None:
    assert is_keyframe_start("vp8", vp8())
    assert is_keyframe_start("h264", nal(5))
    with pytest.raises(ValueError):
        is_keyframe_start("VP9", b"\x00")


def test_gate_opens_on_keyframe_and_counts_frames_once() -> None:
    gate = KeyframeGate("H264")
    assert not gate.admit(nal(1), 100)
    assert not gate.admit(fu_a(5, start=False), 100)
    assert gate.dropped == 2
    assert gate.admit(stap_a(nal(7), nal(8)), 3000)  # SPS+PPS of the keyframe
    assert gate.admit(fu_a(5, start=True), 3000)  # the IDR of the same frame
    assert gate.admit(nal(1), 6000)
    assert gate.keyframes == 1
    gate.close()
    assert not gate.admit(nal(1), 9000)
    assert gate.admit(nal(5), 12000)
    assert gate.keyframes == 2


# -- rewriting -----------------------------------------------------------------------------------

BINDING = OutputBinding(
    ssrc=0xCAFE, payload_type=96, mid="1", clock_rate=90000, first_seq=65530,
    rtx_ssrc=0xBEEF, rtx_payload_type=97,
)  # fmt: skip


def pkt(seq: int, ts: int, ssrc: int = 1234, level: tuple[bool, int] | None = None) -> RtpPacket:
    p = RtpPacket(payload_type=100, sequence_number=seq, timestamp=ts, ssrc=ssrc, payload=b"x" * 10)
    p.extensions.mid = "upstream-mid"
    p.extensions.audio_level = level
    p.extensions.transmission_offset = 7
    p.csrc = [99]
    return p


def test_rewrite_ssrc_pt_seq_and_extensions_keeps_timestamps() -> None:
    rw = RtpRewriter(BINDING)
    out = [rw.rewrite(pkt(s, 1000 + s, level=(True, 30)), 0.0, 12345) for s in (10, 11, 12)]
    assert [p.sequence_number for p in out] == [65530, 65531, 65532]
    assert [p.timestamp for p in out] == [1010, 1011, 1012]
    for p in out:
        assert (p.ssrc, p.payload_type, p.csrc) == (0xCAFE, 96, [])
        assert p.extensions.mid == "1"
        assert p.extensions.abs_send_time == 12345
        assert p.extensions.audio_level == (True, 30)
        assert p.extensions.transmission_offset is None


def test_rewrite_wraps_sequence_numbers_and_keeps_gaps() -> None:
    rw = RtpRewriter(BINDING)
    upstream = (100, 101, 104, 105, 106, 107)
    seqs = [rw.rewrite(pkt(s, 0), 0.0, None).sequence_number for s in upstream]
    assert seqs == [65530, 65531, 65534, 65535, 0, 1]  # a gap upstream stays a gap (NACKable)


def test_upstream_ssrc_change_rebases_seq_and_timestamp() -> None:
    rw = RtpRewriter(BINDING)
    rw.rewrite(pkt(500, 90_000, ssrc=1), 10.0, None)
    last = rw.rewrite(pkt(501, 93_000, ssrc=1), 10.033, None)
    first_new = rw.rewrite(pkt(7, 5, ssrc=2), 11.033, None)  # 1 s later, a new stream
    assert rw.rebases == 1
    assert first_new.sequence_number == (last.sequence_number + 1) % 65536
    assert first_new.timestamp == 93_000 + 90_000
    nxt = rw.rewrite(pkt(8, 3005, ssrc=2), 11.066, None)
    assert nxt.timestamp == first_new.timestamp + 3000
    assert rw.translate_sr(2, 5) == first_new.timestamp
    assert rw.translate_sr(1, 5) is None  # the old stream's late SR is not ours anymore


def test_sr_translation_keeps_the_avatars_mapping() -> None:
    rw = RtpRewriter(BINDING)
    assert rw.translate_sr(1234, 1) is None  # nothing forwarded yet
    rw.rewrite(pkt(1, 4_294_967_000), 0.0, None)
    assert rw.translate_sr(1234, 4_294_967_290) == 4_294_967_290
    assert rw.translate_sr(1234, 5) == 5


def test_rtx_history_answers_nacks_and_counts_misses() -> None:
    hist = RtxHistory(capacity=4)
    rw = RtpRewriter(BINDING)
    sent = [rw.rewrite(pkt(s, 0), 0.0, None) for s in range(6)]
    for p in sent:
        hist.store(p.sequence_number, p.serialize(EXTENSIONS), 0.0)
    data = hist.retransmission(sent[5].sequence_number, BINDING)
    assert data is not None
    rtx = RtpPacket.parse(data, EXTENSIONS)
    assert (rtx.ssrc, rtx.payload_type, rtx.sequence_number) == (0xBEEF, 97, 0)
    assert struct.unpack("!H", rtx.payload[:2])[0] == sent[5].sequence_number
    assert rtx.payload[2:] == sent[5].payload
    assert hist.retransmission(sent[0].sequence_number, BINDING) is None  # left the ring
    assert (hist.hits, hist.misses) == (1, 1)
    plain = OutputBinding(ssrc=1, payload_type=96, mid=None, clock_rate=48000)
    assert hist.retransmission(sent[4].sequence_number, plain) == sent[4].serialize(EXTENSIONS)
    with pytest.raises(ValueError):
        RtxHistory(0)
    with pytest.raises(ValueError):
        RtxHistory(4, horizon_s=0)


def test_rtx_history_forgets_packets_older_than_its_horizon() -> None:
    hist = RtxHistory(capacity=100, horizon_s=2.0)
    for seq in range(10):  # one packet every 0.5 s
        hist.store(seq, bytes([0x80, 96, 0, seq]) + bytes(8), seq * 0.5)
    # At 4.5 s the horizon reaches back to 2.5 s: packets 5..9 are kept, 0..4 are gone.
    assert len(hist) == 5
    assert [hist.get(s) is not None for s in range(10)] == [False] * 5 + [True] * 5
    # A sequence number used again (a rebase): the older packet's expiry leaves the newer one.
    newer = b"\x80\x60\x00\x05new" + bytes(5)
    hist.store(5, newer, 6.0)
    hist.store(11, bytes(12), 7.6)  # cut-off 5.6 s: the first 5 (2.5 s) expires
    assert hist.get(5) == newer
    assert hist.get(11) is not None


@pytest.mark.parametrize("csrc", [[], [7, 8]])
@pytest.mark.parametrize("mid", [None, "1"])
@pytest.mark.parametrize("marker", [0, 1])
def test_rtx_from_serialized_is_aiortcs_rtx(csrc: list[int], mid: str | None, marker: int) -> None:
    """Byte for byte what aiortc's own ``wrap_rtx`` gives, header extensions and CSRCs included."""
    p = RtpPacket(payload_type=96, marker=marker, sequence_number=4321, timestamp=99, ssrc=5)
    p.csrc = csrc
    p.payload = bytes(range(200))
    p.extensions.mid = mid
    p.extensions.abs_send_time = 0x123456
    p.extensions.audio_level = (True, 30)
    want = wrap_rtx(p, payload_type=97, sequence_number=17, ssrc=0xBEEF).serialize(EXTENSIONS)
    assert rtx_from_serialized(p.serialize(EXTENSIONS), 97, 17, 0xBEEF) == want


def test_rate_limiter() -> None:
    rl = RateLimiter(0.3)
    assert [rl.allow(t) for t in (0.0, 0.1, 0.29, 0.31, 0.5, 0.7)] == [
        True, False, False, True, False, True,
    ]  # fmt: skip
    assert (rl.allowed, rl.suppressed) == (3, 3)


def test_hold_queue_holds_releases_in_order_and_is_bounded() -> None:
    q: HoldQueue[int] = HoldQueue(0.05, capacity=3)
    assert q.push(1, 0.00) == []
    assert q.push(2, 0.01) == []
    assert q.pop_due(0.049) == []
    assert q.next_due() == pytest.approx(0.05)
    assert q.pop_due(0.07) == [1, 2]
    for i, t in enumerate((0.1, 0.11, 0.12)):
        assert q.push(10 + i, t) == []
    assert q.push(13, 0.13) == [10]  # full: the oldest leaves early, nothing is lost
    assert q.released_early == 1
    assert len(q) == 3
    assert q.drain() == [11, 12, 13]
    assert len(q) == 0
