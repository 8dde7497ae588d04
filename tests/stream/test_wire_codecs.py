"""The stand-in's codec figures come from the payload types on the wire, and its SDP answer
carries only the granted codec (what Stream's SFU does). No network: two aiortc PCs negotiate
in-process, and the wire counter is fed payload types directly."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender

from bridge.sim.stream.rtp_taps import LightCounter, WireCodecs, sdp_payload_types
from bridge.sim.stream.server import _answer_only_granted

OFFER = """v=0
o=- 1 1 IN IP4 0.0.0.0
s=-
t=0 0
m=audio 9 UDP/TLS/RTP/SAVPF 111 63
a=rtpmap:111 opus/48000/2
a=rtpmap:63 red/48000/2
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103
a=rtpmap:96 VP8/90000
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:102 H264/90000
a=rtpmap:103 rtx/90000
a=fmtp:103 apt=102
"""
ANSWER_H264 = """v=0
m=audio 9 UDP/TLS/RTP/SAVPF 111
a=rtpmap:111 opus/48000/2
m=video 9 UDP/TLS/RTP/SAVPF 102 103
a=rtpmap:102 H264/90000
a=rtpmap:103 rtx/90000
"""


def test_sdp_payload_types_per_kind() -> None:
    pts = sdp_payload_types(OFFER)
    assert pts["audio"] == {111: "opus", 63: "RED"}
    assert pts["video"] == {96: "VP8", 97: "RTX", 102: "H264", 103: "RTX"}


def test_wire_codec_is_the_payload_type_seen_not_the_grant() -> None:
    wire = WireCodecs("video", lambda: ANSWER_H264, lambda: OFFER)
    assert wire.codec() is None  # nothing received: no figure, whatever was granted
    for _ in range(10):
        wire.add(102)
    for _ in range(3):
        wire.add(103)  # retransmissions are never the codec, even when they outnumber
    assert wire.codec() == "H264"
    # A publisher sending a payload type the answer does not carry is caught, named by the offer.
    for _ in range(20):
        wire.add(96)
    assert wire.codec() == "VP8 (not negotiated)"
    wire.add(120)
    assert wire.snapshot()["payload_types"]["120"] == ["PT 120 (unknown)", 1]
    assert wire.snapshot()["payload_types"]["102"] == ["H264", 10]


def test_light_counter_names_its_codec_from_the_wire() -> None:
    from aiortc.rtp import RtpPacket

    wire = WireCodecs("video", lambda: ANSWER_H264, lambda: OFFER)
    counter = LightCounter("video", codec_of=wire.name)
    idr = bytes([0x65, 0x88])  # single NAL unit, IDR
    counter.add(RtpPacket(payload_type=102, sequence_number=1, payload=idr, marker=1), False)
    assert counter.snapshot()["codec"] == "H264" and counter.keyframes == 1


@pytest.mark.parametrize("granted", ["VP8", "H264"])
async def test_answer_carries_only_the_granted_codec_and_its_rtx(granted: str) -> None:
    publisher, sfu = RTCPeerConnection(), RTCPeerConnection()
    try:
        publisher.addTransceiver("audio", direction="sendonly")
        video = publisher.addTransceiver("video", direction="sendonly")
        # The publisher offers every codec it has, as a browser does.
        video.setCodecPreferences(RTCRtpSender.getCapabilities("video").codecs)
        await publisher.setLocalDescription(await publisher.createOffer())
        offered = sdp_payload_types(publisher.localDescription.sdp)["video"]
        assert {"VP8", "H264"} <= set(offered.values())
        await sfu.setRemoteDescription(publisher.localDescription)
        _answer_only_granted(sfu, granted)
        await sfu.setLocalDescription(await sfu.createAnswer())
        answered = sdp_payload_types(sfu.localDescription.sdp)
        (primary,) = [pt for pt, name in answered["video"].items() if name != "RTX"]
        assert answered["video"][primary] == granted
        assert set(answered["video"].values()) == {granted, "RTX"}
        assert f"a=fmtp:{min(set(answered['video']) - {primary})} apt={primary}" in (
            sfu.localDescription.sdp
        )
        assert set(answered["audio"].values()) == {"opus"}
    finally:
        await publisher.close()
        await sfu.close()


def test_stream_continuity_measures_ssrcs_sequence_timestamp_steps_and_sr_jumps() -> None:
    from bridge.sim.stream.rtp_taps import StreamContinuity

    c = StreamContinuity("audio")
    ntp0 = 3_900_000_000 << 32
    c.add_sr(0, 0, 0)  # before media (aiortc's NTP 0): maps nothing
    for i in range(50):
        c.add(7, 65530 + i, 2**32 - 960 * 10 + 960 * i)  # both wrap
    c.add_sr(ntp0, 960 * 40, 50)
    c.add(7, (65530 + 49) % 65536, 960 * 40)  # a duplicate/reordered packet
    c.add(7, (65530 + 52) % 65536, 960 * 43)  # two lost
    c.add_sr(ntp0 + (1 << 32), 960 * 40 + 48000, 52)  # one second later, consistent
    c.add(9, (65530 + 53) % 65536, 960 * 44 + 48000 * 2)  # another SSRC, 2 s ahead
    c.add_sr(ntp0 + (2 << 32), 960 * 40 + 48000 * 3, 53)  # RTP 1 s further than NTP
    snap = c.snapshot()
    assert snap["ssrcs"] == [7, 9]
    assert snap["packets"] == 53 and snap["reordered"] == 1
    assert snap["max_seq_step"] == 3 and snap["lost"] == 2
    assert snap["max_ts_step_s"] == 2.02 and snap["min_ts_step_s"] == 0.0
    assert snap["srs"] == 3 and snap["srs_before_media"] == 1
    assert snap["max_sr_jump_s"] == 1.0


def test_stream_continuity_measures_the_sr_mappings_drift_from_real_time() -> None:
    from bridge.sim.stream.rtp_taps import StreamContinuity

    c = StreamContinuity("audio")
    ntp0 = 3_900_000_000 << 32
    for i in range(100):  # 2 s of 20 ms packets, arriving in real time
        c.add(7, i, 960 * i, at=100.0 + 0.02 * i)
        if i % 50 == 49:  # an SR after each second; the second one 40 ms short on RTP time
            lost = 0 if i < 50 else 1920
            rtp = 960 * i - lost
            c.add_sr(ntp0 + int(0.02 * i * 2**32), rtp, i + 1, at=100.0 + 0.02 * i + 0.001)
    for i in range(100, 110):  # then the packets' timestamps fall 100 ms behind their arrival
        c.add(7, i, 960 * i, at=100.1 + 0.02 * i)
    snap = c.snapshot()
    assert snap["srs"] == 2
    assert snap["sr_drift_s"] == {"min": 0.0, "max": 0.04, "last": 0.04, "span": 0.04}
    assert snap["sr_vs_arrival_s"]["last"] == 0.04
    assert [d for _, d in snap["sr_drift_series"]] == [0.0, 0.04]
    assert snap["rtp_vs_arrival_s"]["min"] == -0.1 and snap["rtp_vs_arrival_s"]["max"] == 0.0
