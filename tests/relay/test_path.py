"""RelayPath end to end: LiveKit stand-in -> relay -> an aiortc receiver that decodes."""

from __future__ import annotations

import itertools
import random

import pytest
from prometheus_client import REGISTRY

from bridge.media_path import RelayDecline
from bridge.relay.path import RelayOptions, RelayPath
from bridge.sim.livekit_server import LiveKitStandIn
from bridge.stages import AvatarRoom

from .conftest import AVATAR, Recorder, make_room, wait_for
from .loopback import LoopbackStream

pytestmark = pytest.mark.netns


def _source_skipped_frames() -> float:
    """Video frames the stand-ins never sent (this process, all rooms): frame numbers the
    avatar's tracks skipped, and frames the LiveKit stand-in's per-subscriber encoder never got
    (aiortc's unbuffered relay keeps only the newest when that encoder falls behind)."""
    return sum(
        REGISTRY.get_sample_value(name, {"kind": "video"}) or 0.0
        for name in (
            "sim_avatar_skipped_frames_total",
            "sim_livekit_encoder_skipped_frames_total",
        )
    )


def in_order(frames: list[int | None]) -> bool:
    """No frame shown after a later one. A repeat (the decoder showing the same picture again
    while a gap is repaired) is not disorder."""
    nums = [f for f in frames if f is not None]
    return all(b >= a for a, b in itertools.pairwise(nums))


async def start_relay(
    livekit: LiveKitStandIn, recorder: Recorder, stream: LoopbackStream, codec: str = "VP8",
    **opts: object,
) -> RelayPath:  # fmt: skip
    url, token = await make_room(livekit, codec=codec)
    relay = RelayPath(
        RelayOptions(avatar_identity=AVATAR, avatar_codec=codec, **opts),  # type: ignore[arg-type]
        stream,
        recorder,
        recorder.fail,
    )
    declined = await relay.start(AvatarRoom("s1", url, token, ""))
    assert declined is None
    return relay


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_relay_forwards_video_and_audio_undecoded(
    livekit: LiveKitStandIn, recorder: Recorder, codec: str
) -> None:
    stream = LoopbackStream()
    skipped_before = _source_skipped_frames()
    relay = await start_relay(livekit, recorder, stream, codec)
    try:
        assert stream.asked == codec
        await wait_for(lambda: len(stream.frames) >= 45, 15, "decoded frames")
        await wait_for(lambda: stream.audio_samples >= 48000, 5, "a second of audio")
        stats = relay.stats()
        assert stats["keyframes"] >= 1
        assert stats["decoder_threads"] == 0  # taken-over receivers decode nothing
        assert "avatar_ready" in recorder.names()
        # The first decoded frame is a keyframe's: every frame after it decodes, in order.
        assert sum(f is not None for f in stream.frames) >= 0.9 * len(stream.frames)
        assert in_order(stream.frames)
        nums = [f for f in stream.frames if f is not None]
        # Counters (almost) contiguous: the relay loses no frame. On a loaded machine the
        # stand-ins skip frames when their encoder falls behind (up to 44 of 91 seen); those
        # were never sent, so they are not the relay's gaps.
        never_sent = _source_skipped_frames() - skipped_before
        gaps = nums[-1] - nums[0] + 1 - len(nums)
        assert gaps <= 2 + never_sent, (gaps, never_sent)
        assert max(stream.audio_rms) > 3000  # the tone arrived, not silence
        # Both kinds went through the playout pacing (default hold), none pushed out by its bound
        # and no timing restart (one SSRC each, timestamps following the clock).
        playout = stats["playout"]
        assert playout["audio"]["packets"] >= 50 and playout["video"]["packets"] >= 45
        assert playout["audio"]["released_early"] == playout["video"]["released_early"] == 0
        assert playout["audio"]["rebases"] == playout["video"]["rebases"] == 0
        # The avatar's SRs of both kinds reach the pacing's sender clock (their own receivers'
        # RTCP, taken over): both kinds are then paced on its capture clock, within the bound.
        await wait_for(lambda: relay.stats()["sync"]["aligned"], 10, "SRs of both kinds")
        sync = relay.stats()["sync"]
        assert sync["enabled"] and sync["srs"] >= 2, sync
        assert all(0.0 <= lift <= 200.0 for lift in sync["lift_ms"].values()), sync
    finally:
        await relay.aclose()
    assert stream.closed
    assert not recorder.failures


async def test_relay_without_playout_pacing_forwards_on_arrival(
    livekit: LiveKitStandIn, recorder: Recorder
) -> None:
    stream = LoopbackStream()
    relay = await start_relay(livekit, recorder, stream, playout_hold_ms=0.0)
    try:
        await wait_for(lambda: len(stream.frames) >= 15, 15, "decoded frames")
        await wait_for(lambda: stream.audio_samples >= 48000, 5, "a second of audio")
        assert relay.stats()["playout"] == {}
    finally:
        await relay.aclose()
    assert not recorder.failures


async def test_relay_declines_a_codec_the_sfu_does_not_grant(
    livekit: LiveKitStandIn, recorder: Recorder
) -> None:
    url, token = await make_room(livekit)
    stream = LoopbackStream(grant="VP9")
    relay = RelayPath(RelayOptions(avatar_codec="VP8"), stream, recorder, recorder.fail)
    reason = await relay.start(AvatarRoom("s1", url, token, ""))
    assert reason is RelayDecline.CODEC_NOT_GRANTED
    assert livekit.counters.joins == 0  # declined before subscribing on LiveKit
    # The joined Stream session is handed over (the transcode path publishes on it), once.
    assert not stream.closed
    assert relay.take_stream() is stream and relay.take_stream() is None
    await relay.aclose()
    assert not stream.closed  # the relay no longer owns it


async def test_pli_from_the_stream_side_reaches_the_avatar(
    livekit: LiveKitStandIn, recorder: Recorder
) -> None:
    stream = LoopbackStream()
    relay = await start_relay(livekit, recorder, stream)
    try:
        await wait_for(lambda: len(stream.frames) >= 10, 15, "decoded frames")
        before_pli = livekit.counters.keyframe_requests
        before_keys = relay.stats()["keyframes"]
        await stream.send_pli()
        await wait_for(lambda: livekit.counters.keyframe_requests > before_pli, 5, "PLI upstream")
        await wait_for(lambda: relay.stats()["keyframes"] > before_keys, 5, "a new keyframe")
        assert relay.keyframe_delays_ms
    finally:
        await relay.aclose()


def loss_pattern(rng: random.Random, count: int) -> frozenset[int]:
    """``count`` video packet indices, at least 5 apart (each loss is its own gap, so each gets
    its own NACK), after the first 60 packets (the relay has taken the receiver over), within
    the first 160 (at ~1 packet a frame, 30 a second: played out in ~6 s)."""
    return frozenset(rng.sample(range(60, 160, 5), count))


async def test_nack_rtx_recovers_loss_on_both_hops(
    livekit: LiveKitStandIn, recorder: Recorder
) -> None:
    rng = random.Random(19)
    upstream, downstream = loss_pattern(rng, 4), loss_pattern(rng, 4)
    livekit.faults.drop_video_packets = upstream  # the hop from LiveKit to the relay
    stream = LoopbackStream(drop_packets=downstream)  # the hop from the relay to the receiver
    relay = await start_relay(livekit, recorder, stream)
    try:
        # Wait (no deadline on the machine's speed) until both patterns were played out.
        await wait_for(
            lambda: (
                livekit.counters.video_packets_sent > max(upstream) + 10
                and stream.video_seen > max(downstream) + 10
            ),
            60,
            "the loss patterns played out",
        )
        assert livekit.counters.video_packets_dropped == len(upstream)
        assert stream.dropped == len(downstream)
        # Upstream hop: each lost packet is a gap of its own, NACKed and back as RTX.
        await wait_for(
            lambda: (
                relay.stats()["upstream_nacks"] >= len(upstream)
                and relay.stats()["upstream_rtx"] >= len(upstream)
            ),
            30,
            "upstream NACKs answered",
        )
        # Downstream hop: every packet lost on the way to the receiver came back from the
        # relay's history as RTX.
        await wait_for(lambda: stream.dropped_seqs <= stream.recovered_seqs, 30, "downstream RTX")
        assert len(stream.dropped_seqs) == len(downstream)
        assert relay.stats()["rtx_sent"] >= len(downstream)
        # aiortc's receive jitter buffer emits one frame per arriving packet, so at ~1 packet a
        # frame it lags after each repaired gap; order is what it can show here.
        assert len(stream.frames) > 30 and in_order(stream.frames)
    finally:
        await relay.aclose()
    assert not recorder.failures


async def test_a_lost_upstream_retransmission_is_asked_for_again(
    livekit: LiveKitStandIn, recorder: Recorder
) -> None:
    """One video packet lost on the LiveKit hop and its first retransmission lost too, with no
    later loss whose NACK would carry it again: the relay asks again (bridge/relay/nack.py), so
    the packet, and the frames behind it, still reach the Stream side."""
    livekit.faults.drop_video_packets = frozenset({60})
    livekit.faults.drop_first_video_rtx = True
    stream = LoopbackStream()
    skipped_before = _source_skipped_frames()
    relay = await start_relay(livekit, recorder, stream)
    try:
        await wait_for(lambda: livekit.counters.video_rtx_dropped >= 1, 60, "the repair lost")
        await wait_for(lambda: relay.stats()["upstream_rtx"] >= 1, 30, "the second repair")
        n = len(stream.pts)
        await wait_for(lambda: len(stream.pts) >= n + 30, 30, "frames after the repair")
        stats = relay.stats()
        assert livekit.counters.video_packets_dropped == 1
        assert livekit.counters.video_rtx_dropped == 1
        assert stats["upstream_nack_retries"] >= 1 and stats["upstream_nacks_given_up"] == 0
        # Every frame decoded (but those the stand-ins never sent, see above): no hole in the
        # decoded frames' media times (the marks of some avatar frames cannot be read).
        never_sent = _source_skipped_frames() - skipped_before
        ticks = 90000 // 30
        missing = sum(round((b - a) / ticks) - 1 for a, b in itertools.pairwise(stream.pts))
        assert 0 <= missing <= 2 + never_sent, (missing, never_sent)
    finally:
        await relay.aclose()
    assert not recorder.failures


async def test_livekit_rejoin_rebases_and_restarts_on_a_keyframe(
    livekit: LiveKitStandIn, recorder: Recorder
) -> None:
    """The LiveKit peer connection is killed; the relay rejoins and rebases onto the new stream.
    A late packet of the old stream (its first keyframe, as a late retransmission would bring it)
    then reaches the relay after the new stream's: it is not relayed (an old picture shown after
    newer ones) and does not stop the new stream's video."""
    livekit.faults.late_old_keyframe_after_rejoin = 10  # the new stream's 10th video packet
    stream = LoopbackStream()
    relay = await start_relay(livekit, recorder, stream)
    try:
        await wait_for(lambda: len(stream.frames) >= 10, 15, "decoded frames")
        await livekit.faults.kill_peer_connection("room")
        await wait_for(lambda: relay.stats()["rebases"] >= 1, 15, "new upstream stream")
        await wait_for(
            lambda: livekit.counters.late_old_video_sent >= 1, 15, "the old stream's late packet"
        )
        n = len(stream.frames)
        await wait_for(lambda: len(stream.frames) >= n + 20, 10, "video after the rejoin")
        assert relay.stats()["keyframes"] >= 2
        assert in_order(stream.frames)
        stats = relay.stats()
        assert stats["stale_stream_dropped"] == livekit.counters.late_old_video_sent, stats
        assert stats["rebases"] == 1, stats  # onto the new stream, never back onto the old one
    finally:
        await relay.aclose()
    assert not recorder.failures
