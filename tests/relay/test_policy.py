"""The relay's per-packet policy without sockets: keyframe gate, hold, pause/resume, SSRC changes,
keyframe requests, and the first sequence number. Packets and time are arguments."""

from __future__ import annotations

import random
import struct

from aiortc.rtp import RtpPacket
from livekit.protocol import models as lkm

from bridge.relay.policy import (
    VIDEO_QUALITY_HIGH,
    LayerAsk,
    StreamFollower,
    VideoPolicy,
    declines_announced_size,
    layer_request,
)
from bridge.relay.rtp import first_sequence_number

from .test_rtp import vp8


def packet(seq: int, *, key: bool = False, ssrc: int = 1111, ts: int | None = None) -> RtpPacket:
    payload = vp8(key=key) if key else vp8(key=False, start=False)
    return RtpPacket(
        payload_type=96,
        sequence_number=seq,
        timestamp=ts if ts is not None else seq * 3000,
        ssrc=ssrc,
        payload=payload,
    )


def policy(hold_s: float = 0.0, capacity: int = 8) -> VideoPolicy[RtpPacket]:
    return VideoPolicy("VP8", hold_s=hold_s, hold_capacity=capacity, pli_min_interval_s=0.3)


def test_video_waits_for_a_keyframe_then_flows() -> None:
    p = policy()
    dropped = [p.admit(packet(n), 0.0) for n in range(3)]
    assert all(v.dropped == "waiting_for_keyframe" and not v.send for v in dropped)
    assert p.wants_keyframe()
    key = p.admit(packet(3, key=True), 1.0)
    assert key.first_keyframe and key.send and key.send[0].sequence_number == 3
    assert p.first_keyframe_t == 1.0 and not p.wants_keyframe()
    after = p.admit(packet(4), 1.01)
    assert [x.sequence_number for x in after.send] == [4] and not after.first_keyframe
    assert p.gate.dropped == 3 and p.gate.keyframes == 1


def test_keyframe_requests_are_rate_limited_and_their_delay_measured() -> None:
    p = policy()
    assert p.ask_keyframe(0.0, have_upstream=True).outcome == "no_upstream"  # no packet yet
    p.admit(packet(1), 0.0)
    assert p.ask_keyframe(0.0, have_upstream=False).outcome == "no_upstream"
    assert p.ask_keyframe(0.1, have_upstream=True).send
    assert p.ask_keyframe(0.2, have_upstream=True).outcome == "rate_limited"
    assert p.ask_keyframe(0.41, have_upstream=True).send
    p.admit(packet(2, key=True), 0.35)
    assert p.keyframe_delays_ms == [250.0]  # from the first request still pending
    assert (p.pli.allowed, p.pli.suppressed) == (2, 1)


def test_an_ssrc_change_closes_the_gate_and_asks_for_a_keyframe() -> None:
    p = policy()
    p.admit(packet(1, key=True), 0.0)
    assert p.admit(packet(2), 0.0).send
    verdict = p.admit(packet(500, ssrc=2222), 0.5)
    assert verdict.keyframe_request == "ssrc_change"
    assert verdict.dropped == "waiting_for_keyframe"
    assert p.admit(packet(501, key=True, ssrc=2222), 0.6).send
    assert p.gate.keyframes == 2


def test_a_new_subscription_restarts_on_a_keyframe() -> None:
    p = policy()
    assert not p.new_subscription()  # before the first keyframe: the start loop asks already
    p.admit(packet(1, key=True), 0.0)
    assert p.new_subscription()  # ask now
    assert p.admit(packet(2), 0.1).dropped == "waiting_for_keyframe"


def test_hold_releases_video_when_due_in_order() -> None:
    p = policy(hold_s=0.02)
    first = p.admit(packet(1, key=True), 0.0)
    assert first.held and not first.send
    p.admit(packet(2), 0.005)
    assert p.next_due() == 0.02
    assert p.due(0.019) == []
    assert [x.sequence_number for x in p.due(0.021)] == [1]
    assert [x.sequence_number for x in p.due(0.03)] == [2]
    assert p.next_due() is None


def test_a_full_hold_releases_the_oldest_early() -> None:
    p = policy(hold_s=1.0, capacity=3)
    verdicts = [p.admit(packet(n, key=n == 0), n * 0.001) for n in range(5)]
    early = [x.sequence_number for v in verdicts for x in v.send]
    assert early == [0, 1]  # two over capacity, oldest first, none lost
    assert sum(v.released_early for v in verdicts) == 2 == p.hold.released_early
    assert [x.sequence_number for x in p.due(10.0)] == [2, 3, 4]


def test_pause_drops_held_and_arriving_video_resume_waits_for_a_keyframe() -> None:
    p = policy(hold_s=0.05)
    p.admit(packet(1, key=True), 0.0)
    p.admit(packet(2), 0.01)
    change = p.set_blocked("grant_revoked", blocked=True)
    assert change.paused and change.held_dropped == 2
    assert p.due(1.0) == []  # held video was not sent
    paused = p.admit(packet(3), 0.1)
    assert paused.dropped == "paused_by_sfu" and paused.keyframe_request is None
    assert not p.wants_keyframe()  # no PLIs while the SFU does not want video
    # A second reason while paused changes nothing visible; both must clear to resume.
    second = p.set_blocked("layer_paused", blocked=True)
    assert second.changed and not second.paused
    assert not p.set_blocked("grant_revoked", blocked=False).resumed
    assert p.admit(packet(4, key=True), 0.2).dropped == "paused_by_sfu"
    resumed = p.set_blocked("layer_paused", blocked=False)
    assert resumed.resumed
    assert p.admit(packet(5), 0.3).dropped == "waiting_for_keyframe"
    assert p.wants_keyframe()
    assert p.admit(packet(6, key=True), 0.4).held
    assert p.paused_dropped == 4  # two held, two on arrival
    assert not p.set_blocked("layer_paused", blocked=False).changed  # idempotent


def test_an_ssrc_change_while_paused_asks_for_no_keyframe() -> None:
    p = policy()
    p.admit(packet(1, key=True), 0.0)
    p.set_blocked("layer_paused", blocked=True)
    verdict = p.admit(packet(9, ssrc=3333), 0.1)
    assert verdict.keyframe_request is None and verdict.dropped == "paused_by_sfu"


def test_first_sequence_number_is_in_the_lower_half() -> None:
    rng = random.Random(19)
    draws = [first_sequence_number(rng) for _ in range(2000)]
    assert all(0 <= d < 1 << 15 for d in draws)
    assert max(draws) > 30000 and min(draws) < 2000  # the whole lower half is used


def test_an_avatar_switch_waits_for_the_new_avatars_keyframe_and_asks_for_it_at_once() -> None:
    p = policy()
    p.admit(packet(1, key=True), 0.0)
    assert p.switch_upstream(3333)  # ask the new avatar for a keyframe now
    assert p.upstream_ssrc == 3333  # the request goes to the new avatar
    assert p.ask_keyframe(0.5, have_upstream=True).send
    # Its packets are the same stream for the policy now: no second request, gate closed.
    verdict = p.admit(packet(700, ssrc=3333), 0.55)
    assert verdict.dropped == "waiting_for_keyframe" and verdict.keyframe_request is None
    assert p.admit(packet(701, key=True, ssrc=3333), 0.6).send


def test_an_avatar_switch_while_paused_asks_for_no_keyframe() -> None:
    p = policy()
    p.admit(packet(1, key=True), 0.0)
    p.set_blocked("layer_paused", blocked=True)
    assert not p.switch_upstream(None)
    assert p.upstream_ssrc == 1111  # unknown yet: learnt from its first packet


# -- the layer size (a simulcast SFU switching layers) ---------------------------------------------


def sized(seq: int, size: tuple[int, int] | None, ts: int | None = None) -> RtpPacket:
    """A VP8 packet: a keyframe start of ``size``, or (None) an interframe continuation."""
    if size is None:
        payload = bytes([0x00, 0x01, 0x02, 0x03])
    else:
        frame = b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", *size)
        payload = bytes([0x10]) + frame + b"\x00" * 8
    return RtpPacket(
        payload_type=96,
        sequence_number=seq,
        timestamp=ts if ts is not None else seq * 3000,
        ssrc=1111,
        payload=payload,
    )


def sized_policy(want: tuple[int, int] | None = (1280, 720)) -> VideoPolicy[RtpPacket]:
    return VideoPolicy(
        "VP8", hold_s=0.0, hold_capacity=8, pli_min_interval_s=0.3, want_size=want, size_wait_s=2
    )


def test_the_gate_waits_for_a_keyframe_of_the_size_asked_for() -> None:
    p = sized_policy()
    small = p.admit(sized(1, (640, 360)), 0.0)  # the SFU starts on a lower layer
    assert small.dropped == "waiting_for_size" and not small.send
    assert p.admit(sized(2, None, ts=3000), 0.03).dropped == "waiting_for_size"  # same frame
    assert p.admit(sized(3, None), 0.06).dropped == "waiting_for_keyframe"
    assert p.wants_keyframe()
    full = p.admit(sized(4, (1280, 720)), 0.5)
    assert full.first_keyframe and full.send and full.size_changed is None
    assert p.size == (1280, 720) and p.size_dropped == 2 and p.size_changes == 0


def test_after_the_wait_any_layer_is_better_than_no_picture() -> None:
    p = sized_policy()
    assert p.admit(sized(1, (640, 360)), 10.0).dropped == "waiting_for_size"
    assert p.admit(sized(2, (640, 360)), 11.9).dropped == "waiting_for_size"
    late = p.admit(sized(3, (640, 360)), 12.0)  # size_wait_s after the gate started waiting
    assert late.first_keyframe and late.send and p.size == (640, 360)


def test_a_layer_switch_mid_call_is_a_size_change_not_a_gate() -> None:
    p = sized_policy()
    p.admit(sized(1, (1280, 720)), 0.0)
    assert p.admit(sized(2, None), 0.03).send
    down = p.admit(sized(3, (640, 360)), 0.06)  # the SFU switched at the lower layer's keyframe
    assert down.send and down.size_changed == (640, 360) and not down.first_keyframe
    assert p.admit(sized(4, (640, 360)), 1.0).size_changed is None  # same size: no change
    up = p.admit(sized(5, (1280, 720)), 2.0)
    assert up.size_changed == (1280, 720) and p.size_changes == 2
    assert p.size_dropped == 0


def test_without_a_size_asked_for_the_first_keyframe_opens_the_gate() -> None:
    p = sized_policy(want=None)
    assert p.admit(sized(1, (320, 180)), 0.0).first_keyframe and p.size == (320, 180)


def test_the_layer_asked_of_livekit_and_the_announced_size_decision() -> None:
    assert VIDEO_QUALITY_HIGH == lkm.VideoQuality.HIGH
    assert layer_request((1280, 720)) == LayerAsk(VIDEO_QUALITY_HIGH, 1280, 720)
    assert layer_request(None) == LayerAsk(VIDEO_QUALITY_HIGH, 0, 0)
    want = (640, 360)
    assert declines_announced_size(require_match=True, announced=(1280, 720), wanted=want)
    assert not declines_announced_size(require_match=True, announced=want, wanted=want)
    # A forced relay sends what comes; an unknown announced size is no reason to decline.
    assert not declines_announced_size(require_match=False, announced=(1280, 720), wanted=want)
    assert not declines_announced_size(require_match=True, announced=(0, 0), wanted=want)
    assert not declines_announced_size(require_match=True, announced=None, wanted=want)


# -- late packets after a rebase ----------------------------------------------------------------


def test_a_late_packet_of_the_stream_left_behind_is_dropped_and_keeps_the_gate_open() -> None:
    """A LiveKit rejoin: the relay rebased onto the new stream (2222). A late packet or a
    retransmission of the old one (1111), even a keyframe, is not relayed (the rewriter would
    rebase back onto it: an old picture after newer ones) and does not close the gate."""
    p = policy()
    p.admit(packet(1, key=True), 0.0)
    p.admit(packet(2), 0.03)
    assert p.admit(packet(900, ssrc=2222), 0.5).keyframe_request == "ssrc_change"
    assert p.admit(packet(901, key=True, ssrc=2222), 0.6).send
    for late in (packet(3), packet(1, key=True), packet(2)):
        verdict = p.admit(late, 0.65)
        assert verdict.dropped == "stale_stream" and not verdict.send
        assert verdict.keyframe_request is None
    assert p.gate.open and p.upstream_ssrc == 2222 and p.stale_dropped == 3
    assert [x.sequence_number for x in p.admit(packet(902, ssrc=2222), 0.7).send] == [902]
    assert p.gate.keyframes == 2  # the old keyframe was not counted either


def test_streams_left_behind_are_remembered_boundedly() -> None:
    p = policy()
    for ssrc in range(1, 12):  # ten rebases, each onto a new stream
        p.admit(packet(ssrc * 100, key=True, ssrc=ssrc), float(ssrc))
    assert p.admit(packet(1000, ssrc=10), 20.0).dropped == "stale_stream"
    assert p.admit(packet(300, ssrc=3), 20.0).dropped == "stale_stream"
    # The oldest were forgotten (8 kept): such a packet is a new stream again.
    assert p.admit(packet(100, ssrc=1), 20.0).keyframe_request == "ssrc_change"


def test_an_avatar_switch_retires_the_old_avatars_stream() -> None:
    p = policy()
    p.admit(packet(1, key=True), 0.0)
    p.switch_upstream(2222)
    assert p.admit(packet(50, key=True, ssrc=2222), 0.4).send
    assert p.admit(packet(2), 0.45).dropped == "stale_stream"  # the old avatar's, still coming
    assert p.gate.open


def test_a_packet_from_before_the_restart_keyframe_is_dropped() -> None:
    """After a rejoin the gate turned packets 900-904 away (no keyframe yet) and the relay
    NACKed one of them; its retransmission comes after keyframe 905 opened the gate. Rewritten
    it would go out behind the keyframe, on sequence numbers the receivers already had."""
    p = policy()
    p.admit(packet(1, key=True), 0.0)
    for seq in (900, 901, 903, 904):
        assert p.admit(packet(seq, ssrc=2222), 0.5).dropped == "waiting_for_keyframe"
    assert p.admit(packet(905, key=True, ssrc=2222), 0.6).send
    assert p.admit(packet(906, ssrc=2222), 0.61).send
    late = p.admit(packet(902, ssrc=2222), 0.62)  # the retransmission
    assert late.dropped == "before_keyframe" and not late.send
    assert p.before_keyframe_dropped == 1 and p.gate.open
    # A late packet after the keyframe (a repair the receivers need) still goes.
    assert p.admit(packet(907, ssrc=2222), 0.63).send
    assert p.admit(packet(908, ssrc=2222), 0.64).send
    assert p.admit(packet(906, ssrc=2222), 0.65).send  # reordered, or its retransmission


def test_the_restart_keyframes_own_frame_is_not_before_it() -> None:
    """H264: the gate may open on the IDR while the SPS/PPS packet of the same frame (same
    timestamp, an earlier sequence number) comes back later as a retransmission."""
    p = policy()
    p.admit(packet(10, key=True, ts=9000), 0.0)
    assert p.admit(packet(9, ts=9000), 0.01).send  # same frame: relayed
    assert p.admit(packet(8, ts=6000), 0.02).dropped == "before_keyframe"


def test_the_restart_rule_survives_the_sequence_wrap_and_then_lets_go() -> None:
    p = policy()
    p.admit(packet(65530, key=True, ts=0), 0.0)
    assert p.admit(packet(3, ts=3000), 0.01).send  # wrapped: after the keyframe
    assert p.admit(packet(65529, ts=1), 0.02).dropped == "before_keyframe"
    # Far past the keyframe (2^14 packets) it is no longer compared: a later stream position
    # half the sequence space on must not be taken for one before it.
    for seq in range(4, 20000, 1000):
        p.admit(packet(seq % 65536, ts=seq * 3000 + 3000), 1.0)
    assert p.admit(packet(20000), 2.0).send
    assert p.admit(packet(33000), 3.0).send  # 32,006 past the keyframe: not "before" it


def test_a_resume_after_a_pause_restarts_the_rule_on_the_new_keyframe() -> None:
    p = policy()
    p.admit(packet(1, key=True), 0.0)
    p.admit(packet(2), 0.03)
    p.set_blocked("grant_revoked", blocked=True)
    p.admit(packet(3), 0.1)
    p.set_blocked("grant_revoked", blocked=False)
    assert p.admit(packet(10, key=True), 0.5).send
    assert p.admit(packet(4), 0.55).dropped == "before_keyframe"  # from before the pause


def test_a_stream_follower_drops_only_streams_it_left() -> None:
    """The rule audio shares with video: after a rejoin the relay follows the new stream; a late
    packet of the old one is stale (relayed, the rewriter would rebase back and the two
    streams' audio would interleave), an unknown stream is a new one to follow."""
    f = StreamFollower(keep=2)
    assert f.follow(1111) is None and not f.is_stale(1111)
    assert f.follow(2222) == 1111
    assert f.is_stale(1111) and not f.is_stale(2222) and not f.is_stale(3333)
    assert f.follow(2222) is None  # the same stream: nothing left
    f.follow(3333)
    f.follow(4444)
    assert f.is_stale(2222) and f.is_stale(3333)
    assert not f.is_stale(1111)  # forgotten (2 kept): a new stream again
    f.follow(2222)  # asked for by name: current, no longer stale
    assert f.current == 2222 and not f.is_stale(2222) and f.is_stale(4444)
