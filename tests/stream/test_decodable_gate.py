"""The Stream stand-in's decodable gate on aiortc's own video jitter buffer, without sockets.

A VP9 stream loses one packet for good (a CI run: lost while the SDK restarted ICE, NACKed for
seconds, never retransmitted). aiortc's jitter buffer waits, then skips the broken frame and hands
the decoder the inter frames after it, which decode into corrupt pictures (the run read a mark
out of order from one). Behind the gate, nothing after the break reaches the decoder until the
keyframe, as in a viewer's libwebrtc.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from bridge.sim.stream.rtp_taps import DecodableGate, gate_jitter_buffer

PT = 98
CODECS = {PT: RTCRtpCodecParameters(mimeType="video/VP9", clockRate=90000, payloadType=PT)}
PACKETS_PER_FRAME = 2
TS_STEP = 3000  # 30 fps
LOST_FRAME = 5
KEYFRAME_AT = 90  # the answer to the PLI; the 128-packet buffer overflows well before
# aiortc hands out one frame per packet added: the frames held behind the gap drain by then.
FRAMES = 200


def _packets(frames: int, keyframes: set[int]) -> list[tuple[int, RtpPacket]]:
    """(frame number, packet) of a VP9 stream, RFC 9628 descriptors: B on a frame's first
    packet, P on every packet of an inter frame."""
    out = []
    for n in range(frames):
        for k in range(PACKETS_PER_FRAME):
            first, last = k == 0, k == PACKETS_PER_FRAME - 1
            descriptor = (0x00 if n in keyframes else 0x40) | (0x08 if first else 0)
            descriptor |= 0x04 if last else 0
            packet = RtpPacket(
                payload_type=PT,
                sequence_number=(1000 + n * PACKETS_PER_FRAME + k) & 0xFFFF,
                timestamp=n * TS_STEP,
                marker=last,
                payload=bytes([descriptor]) + bytes([n]) * 10,
            )
            packet._data = packet.payload  # type: ignore[attr-defined]  # what depayload sets
            out.append((n, packet))
    return out


def _decoded(gated: bool) -> tuple[list[int], int, int]:
    """(frames handed to the decoder, PLIs asked, frames withheld) for the lossy stream."""
    jitter = JitterBuffer(capacity=128, is_video=True)
    withheld = []
    if gated:
        gate_jitter_buffer(jitter, CODECS, DecodableGate(), lambda: withheld.append(1))
    decoded, plis = [], 0
    lost = {LOST_FRAME * PACKETS_PER_FRAME}  # the first packet of frame 5, for good
    for i, (_, packet) in enumerate(_packets(FRAMES, {0, KEYFRAME_AT})):
        if i in lost:
            continue
        pli, frame = jitter.add(packet)
        plis += pli
        if isinstance(frame, JitterFrame):
            decoded.append(frame.timestamp // TS_STEP)
    return decoded, plis, len(withheld)


def test_after_an_unrepaired_loss_only_the_keyframe_resumes_decoding() -> None:
    plain, plain_plis, _ = _decoded(gated=False)
    gated, gated_plis, withheld = _decoded(gated=True)
    # aiortc alone: the break is skipped and the inter frames after it go to the decoder (the
    # broken frame too, its second packet alone).
    assert plain_plis == gated_plis >= 1
    before = [n for n in plain if n < LOST_FRAME]
    broken = [n for n in plain if LOST_FRAME <= n < KEYFRAME_AT]
    resumed = [n for n in plain if n >= KEYFRAME_AT]
    assert before and LOST_FRAME in broken and resumed[:1] == [KEYFRAME_AT], plain
    # Gated: nothing between the break and the keyframe, everything else as aiortc has it.
    assert gated == before + resumed
    assert withheld == len(broken)


def test_a_stream_without_breaks_passes_whole() -> None:
    jitter = JitterBuffer(capacity=128, is_video=True)
    withheld: list[int] = []
    gate_jitter_buffer(jitter, CODECS, DecodableGate(), lambda: withheld.append(1))
    decoded = []
    for _, packet in _packets(40, {0}):
        _, frame = jitter.add(packet)
        if frame is not None:
            decoded.append(frame.timestamp // TS_STEP)
    # A frame is complete when the next one's first packet arrives: all but the last.
    assert decoded == list(range(39)) and withheld == []
