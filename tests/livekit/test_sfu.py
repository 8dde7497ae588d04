"""The stand-in SFU's forwarding core, without sockets: layer choice, rewriting, continuity."""

from __future__ import annotations

import itertools
import random
import socket
from dataclasses import dataclass

import pytest

from bridge.sim.sfu import (
    LayerForwarder,
    is_keyframe,
    parse_vp8_descriptor,
    rewrite_vp8_descriptor,
    select_rid,
)


def vp8_payload(picture_id: int, tl0: int, tid: int, key: bool, start: bool = True) -> bytes:
    """A libwebrtc-style VP8 descriptor (X, I with 15-bit id, L, T) plus a frame header byte."""
    b0 = 0x80 | (0x10 if start else 0)
    desc = bytes(
        [b0, 0xE0, 0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF, tl0 & 0xFF, tid << 6]
    )
    return desc + bytes([0x00 if key else 0x01]) + b"\x9d\x01\x2a" + bytes(8)


def test_vp8_descriptor_parse_and_rewrite() -> None:
    payload = vp8_payload(0x1234, 200, 1, key=True)
    d = parse_vp8_descriptor(payload)
    assert d is not None
    assert (d.size, d.start, d.pid, d.picture_id, d.picture_id_bits) == (6, True, 0, 0x1234, 15)
    assert (d.tl0picidx, d.tid, d.keyidx) == (200, 1, None)
    out = rewrite_vp8_descriptor(payload, d, 0x7FFF + 3, 300, None)
    e = parse_vp8_descriptor(out)
    assert e is not None and (e.picture_id, e.tl0picidx, e.tid) == (2, 300 % 256, 1)
    assert out[e.size :] == payload[d.size :], "the VP8 payload itself is untouched"
    short = bytes([0x90, 0x80, 0x05, 0x00])  # 7-bit picture id
    s = parse_vp8_descriptor(short)
    assert s is not None and (s.picture_id, s.picture_id_bits, s.size) == (5, 7, 3)
    assert parse_vp8_descriptor(bytes([0x90, 0x80, 0x85])) is None  # truncated 15-bit id
    assert parse_vp8_descriptor(b"") is None


def test_keyframe_detection() -> None:
    assert is_keyframe("VP8", vp8_payload(1, 0, 0, key=True))
    assert not is_keyframe("VP8", vp8_payload(1, 0, 0, key=False))
    assert not is_keyframe("VP8", vp8_payload(1, 0, 0, key=True, start=False))
    idr, sps, slice_ = bytes([0x65, 0]), bytes([0x67, 0]), bytes([0x41, 0])
    assert is_keyframe("H264", idr) and is_keyframe("H264", sps)
    assert not is_keyframe("H264", slice_)
    stap = bytes([0x78]) + len(sps).to_bytes(2, "big") + sps
    assert is_keyframe("H264", stap)
    assert is_keyframe("H264", bytes([0x7C, 0x85, 0]))  # FU-A start of an IDR
    assert not is_keyframe("H264", bytes([0x7C, 0x05, 0]))  # FU-A continuation
    assert not is_keyframe("H264", b"")


def test_layer_selection_like_livekit() -> None:
    layers = {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}
    assert select_rid(layers) == "f"
    assert select_rid(layers, quality=0) == "q"
    assert select_rid(layers, quality=1) == "h"
    assert select_rid(layers, quality=2) == "f"
    assert select_rid({"q": (320, 180), "h": (640, 360)}, quality=2) == "h"  # clamped
    assert select_rid(layers, width=600, height=300) == "h"
    assert select_rid(layers, width=4000, height=3000) == "f"
    assert select_rid({}) is None


@dataclass
class Layer:
    """A synthetic publisher layer: its own random sequence and timestamp origins (seeded)."""

    rid: str
    seq: int
    ts: int
    picture_id: int
    tl0: int

    def frame(self, key: bool, packets: int = 3) -> list[tuple[str, int, int, bool, bytes]]:
        out = []
        for i in range(packets):
            payload = vp8_payload(self.picture_id, self.tl0, 0, key=key, start=i == 0)
            out.append((self.rid, self.seq, self.ts, i == packets - 1, payload))
            self.seq = (self.seq + 1) % 65536
        self.ts = (self.ts + 3000) % (1 << 32)
        self.picture_id = (self.picture_id + 1) % 32768
        self.tl0 = (self.tl0 + 1) % 256
        return out


def layers(seed: int) -> dict[str, Layer]:
    rng = random.Random(seed)
    return {
        rid: Layer(
            rid,
            rng.randrange(65536),
            rng.randrange(1 << 32),
            rng.randrange(32768),
            rng.randrange(256),
        )
        for rid in ("q", "h")
    }


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_switch_keeps_one_continuous_stream(seed: int) -> None:
    src = layers(seed)
    fwd = LayerForwarder("VP8")
    fwd.set_target("q")
    assert fwd.wants_keyframe(0) == "q"
    assert fwd.wants_keyframe(100) is None, "rate limited"
    assert fwd.wants_keyframe(300) == "q"
    sent = []
    now = 1000

    def step(key: dict[str, bool]) -> None:
        nonlocal now
        for rid, layer in src.items():
            for pkt in layer.frame(key.get(rid, False)):
                out = fwd.forward(*pkt, now_ms=now)
                if out is not None:
                    sent.append((rid, out))
        now += 33

    step({})  # no keyframe yet: nothing forwarded
    assert sent == [] and fwd.stats.dropped_waiting_keyframe == 3
    step({"q": True})
    for _ in range(5):
        step({})
    assert {rid for rid, _ in sent} == {"q"} and len(sent) == 18
    assert sent[0][1].switched and sent[0][1].keyframe
    fwd.set_target("h")
    assert fwd.wants_keyframe(now) == "h"
    step({})  # h has no keyframe yet: q continues
    assert sent[-1][0] == "q"
    step({"h": True})
    for _ in range(3):
        step({})
    rids = [rid for rid, _ in sent]
    assert rids == ["q"] * 24 + ["h"] * 12, "q until h's keyframe, then only h"
    assert fwd.wants_keyframe(now + 1000) is None
    assert fwd.stats.switches == 1
    seqs = [o.sequence_number for _, o in sent]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs)), "no gap"
    tss = [o.timestamp for _, o in sent]
    assert all(0 <= (b - a) % (1 << 32) < (1 << 31) for a, b in itertools.pairwise(tss))
    frame_starts = [o for _, o in sent if parse_vp8_descriptor(o.payload).start]  # type: ignore[union-attr]
    assert all(b.timestamp != a.timestamp for a, b in itertools.pairwise(frame_starts))
    pids = [parse_vp8_descriptor(o.payload).picture_id for o in frame_starts]  # type: ignore[union-attr]
    assert all((b - a) % 32768 == 1 for a, b in itertools.pairwise(pids)), pids
    tl0s = [parse_vp8_descriptor(o.payload).tl0picidx for o in frame_starts]  # type: ignore[union-attr]
    assert all((b - a) % 256 == 1 for a, b in itertools.pairwise(tl0s)), tl0s
    # A NACK for a forwarded packet maps back to the publisher's layer and sequence number.
    _last_rid, last = sent[-1]
    assert fwd.source_of(last.sequence_number) == ("h", (src["h"].seq - 1) % 65536)
    # Sender reports: only the forwarded layer's, shifted like its packets.
    assert fwd.translate_sr("q", 123, 0) is None
    h = src["h"]
    ntp_rtp = fwd.translate_sr("h", 456, (h.ts - 3000) % (1 << 32))
    assert ntp_rtp == (456, last.timestamp)


def test_late_packets_before_the_switch_point_are_dropped() -> None:
    src = layers(7)
    fwd = LayerForwarder("VP8")
    fwd.set_target("q")
    for pkt in src["q"].frame(True):
        fwd.forward(*pkt, now_ms=0)
    fwd.set_target("h")
    old = src["h"].frame(False)
    for pkt in src["h"].frame(True):
        assert fwd.forward(*pkt, now_ms=40) is not None
    # A packet of h from before its keyframe arrives late: its number would reuse q's range.
    assert fwd.forward(*old[0], now_ms=50) is None
    # A late packet after the switch point is forwarded with the same mapping.
    late = src["h"].frame(False)
    assert fwd.forward(*late[1], now_ms=60) is not None
    out = fwd.forward(*late[0], now_ms=61)
    assert out is not None and fwd.source_of(out.sequence_number) == ("h", late[0][1])


def test_a_nack_for_a_packet_lost_on_the_way_in_maps_to_the_publisher() -> None:
    src = layers(11)
    fwd = LayerForwarder("VP8")
    fwd.set_target("q")
    frame = src["q"].frame(True, packets=4)
    outs = [fwd.forward(*frame[i], now_ms=0) for i in (0, 1, 3)]  # packet 2 never arrived
    assert all(o is not None for o in outs)
    missing = (outs[1].sequence_number + 1) % 65536  # type: ignore[union-attr]
    assert fwd.source_of(missing) == ("q", frame[2][1])


def test_a_late_packet_after_a_skipped_padding_probe_keeps_its_own_number() -> None:
    """libwebrtc pads the layer it probes on; a media packet that arrives after a later padding
    probe was skipped (reordered, or an RTX repair) maps to the number it had before the skip,
    and a NACK for a packet that never arrived maps back through that skip too."""
    src = layers(12)
    fwd = LayerForwarder("VP8")
    fwd.set_target("q")
    frame = src["q"].frame(True, packets=5)  # source numbers s .. s+4
    first = fwd.forward(*frame[0], now_ms=0)
    assert first is not None
    fwd.skip_padding("q", frame[0][1] + 2)  # s+2 is a padding probe: not forwarded
    # s+1 is delayed: s+3 and s+4 arrive first.
    later = [fwd.forward(*frame[i], now_ms=1) for i in (3, 4)]
    late = fwd.forward(*frame[1], now_ms=2)
    assert late is not None and later[0] is not None and later[1] is not None
    base = first.sequence_number
    out = [late.sequence_number, later[0].sequence_number, later[1].sequence_number]
    assert out == [(base + i) % 65536 for i in (1, 2, 3)]  # no collision, no hole
    assert fwd.source_of((base + 1) % 65536) == ("q", frame[1][1])


def test_a_nack_for_a_packet_lost_before_a_padding_probe_maps_to_the_publisher() -> None:
    src = layers(13)
    fwd = LayerForwarder("VP8")
    fwd.set_target("q")
    frame = src["q"].frame(True, packets=5)
    first = fwd.forward(*frame[0], now_ms=0)
    # s+1 is lost on the way in; s+2 is padding; s+3, s+4 arrive.
    fwd.skip_padding("q", frame[0][1] + 2)
    outs = [fwd.forward(*frame[i], now_ms=1) for i in (3, 4)]
    assert first is not None and all(o is not None for o in outs)
    missing = (first.sequence_number + 1) % 65536
    assert outs[0].sequence_number == (first.sequence_number + 2) % 65536  # type: ignore[union-attr]
    assert fwd.source_of(missing) == ("q", frame[1][1])


OFFER = "\r\n".join(
    [
        "v=0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=sendonly",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=rid:q send",
        "a=rid:h send",
        "a=rid:f send",
        "a=simulcast:send q;h;f",
        "",
    ]
)
ANSWER = "\r\n".join(
    [
        "v=0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=recvonly",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=rtpmap:96 VP8/90000",
        "",
    ]
)


def test_the_answer_accepts_the_offered_simulcast() -> None:
    from bridge.sim.livekit_forward import accept_simulcast, sections_by_mid

    answer = sections_by_mid(accept_simulcast(OFFER, ANSWER))
    video = answer["1"]
    assert video.attr("rid") == ["q recv", "h recv", "f recv"]
    assert video.attr("simulcast") == ["recv q;h;f"]
    exts = video.attr("extmap")
    assert "10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in exts
    assert "11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id" in exts
    assert answer["0"].attr("rid") == [] and answer["0"].attr("extmap") == []  # audio untouched
    # Idempotent on an answer that already has them.
    twice = accept_simulcast(OFFER, accept_simulcast(OFFER, ANSWER))
    again = sections_by_mid(twice)["1"]
    assert again.attr("extmap").count(exts[-1]) == 1
    assert again.attr("rid") == ["q recv", "h recv", "f recv"]


def test_a_late_packet_does_not_move_the_picture_id_back_for_the_next_switch() -> None:
    """A repaired packet of an older frame arrives after newer frames: the next layer's keyframe
    still gets a picture id and TL0PICIDX past every one sent (Chromium's frame buffer drops a
    frame whose id it has decoded past, and LiveKit's VP8 munger continues from the highest)."""
    src = layers(21)
    fwd = LayerForwarder("VP8")
    fwd.set_target("q")
    first = src["q"].frame(True)
    for pkt in first[:2]:
        fwd.forward(*pkt, now_ms=0)
    sent = []
    for n in range(3):  # newer frames, before the late packet comes
        for pkt in src["q"].frame(False):
            out = fwd.forward(*pkt, now_ms=40 * (n + 1))
            assert out is not None
            sent.append(parse_vp8_descriptor(out.payload))
    late = fwd.forward(*first[2], now_ms=150)
    assert late is not None, "a late packet of the current layer is forwarded"
    fwd.set_target("h")
    key = None
    for pkt in src["h"].frame(True):
        key = key or fwd.forward(*pkt, now_ms=160)
    assert key is not None and key.switched
    d = parse_vp8_descriptor(key.payload)
    assert d is not None and sent[-1] is not None
    assert d.picture_id == (sent[-1].picture_id + 1) % 32768  # type: ignore[operator]
    assert d.tl0picidx == (sent[-1].tl0picidx + 1) % 256  # type: ignore[operator]


def test_keyframes_forwarded_whole_are_counted() -> None:
    """The diagnostics a stuck subscriber is judged by: a keyframe counts as whole once every
    packet from its first to its marker went out, late ones included."""
    src = layers(22)
    fwd = LayerForwarder("VP8")
    fwd.set_target("q")
    key = src["q"].frame(True, packets=4)
    for i in (0, 1, 3):  # packet 2 lost on the way in
        fwd.forward(*key[i], now_ms=0)
    assert (fwd.stats.keyframes, fwd.stats.keyframes_whole) == (1, 0)
    for pkt in src["q"].frame(False):
        fwd.forward(*pkt, now_ms=40)
    assert fwd.stats.keyframes_whole == 0
    fwd.forward(*key[2], now_ms=60)  # the publisher's retransmission
    assert (fwd.stats.keyframes, fwd.stats.keyframes_whole) == (1, 1)
    assert fwd.stats.last_whole_keyframe_ms == 60
    for pkt in src["q"].frame(True):
        fwd.forward(*pkt, now_ms=80)
    assert (fwd.stats.keyframes, fwd.stats.keyframes_whole) == (2, 2)


def _rmem_max() -> int:
    with open("/proc/sys/net/core/rmem_max") as f:
        return int(f.read())


async def test_a_publisher_connection_gets_a_wide_receive_buffer() -> None:
    """The publisher's ICE sockets (a real aiortc connection, gathered on loopback) are widened
    past the kernel's default so a briefly starved loop does not lose the padding-heavy stream."""
    from aiortc import RTCPeerConnection

    from bridge.sim.livekit_forward import RECV_BUFFER_BYTES, widen_receive_buffers

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        dtls = pc.getTransceivers()[0].receiver.transport
        default = min(
            s.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            for s in dtls.transport._connection._protocols
        )
        granted = widen_receive_buffers(dtls)
        assert granted, "the gathered sockets were found"
        # Linux reports twice what was set; without privilege it stops at net.core.rmem_max.
        cap = _rmem_max()
        assert all(g >= min(RECV_BUFFER_BYTES, cap) for g in granted), (granted, cap)
        assert all(g >= default for g in granted)
    finally:
        await pc.close()
