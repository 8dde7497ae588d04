"""StreamRelayPublisher (Stream signalling on our code, media on aiortc) against the stand-in SFU.

The relay writes packets into the publisher's senders; here aiortc's own encoder feeds them
instead (``video_source``), so the stand-in receives real VP8 / H264 over SRTP and decodes it.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import AsyncIterator
from typing import Any

import av
import numpy as np
import pytest
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from bridge.errors import BridgeError, ErrorCode
from bridge.sim import marks
from bridge.sim.stream import ReceiveFaults, StreamStandIn
from bridge.stream.relay_publisher import RelayPublisherOptions, StreamRelayPublisher
from tests.stream._support import Recorder, wait_for

W, H, FPS = 640, 360, 30
# One video packet in this many lost: further apart than aiortc's receiver keeps a hole (128
# packets; this grey picture is about one packet a frame).
DROP_EVERY = 135


class MarkedVideoTrack(MediaStreamTrack):
    """Grey 640x360 frames carrying the frame-number marks, paced at 30 fps (bounded count)."""

    kind = "video"

    def __init__(self, limit: int = 30 * FPS) -> None:
        super().__init__()
        self.sent = 0
        self._limit = limit
        self._t0: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.sent >= self._limit:
            raise MediaStreamError  # bounded: a test never runs this long
        if self._t0 is None:
            self._t0 = time.monotonic()
        i = self.sent
        await asyncio.sleep(max(0.0, self._t0 + i / FPS - time.monotonic()))
        buf = np.full(W * H * 3 // 2, 128, np.uint8)
        media_ms = round(i * 1000 / FPS)
        marks.stamp_frame(buf[: W * H].reshape(H, W), i, media_ms, media_ms % 500 < 100)
        frame = av.VideoFrame.from_ndarray(buf.reshape(H * 3 // 2, W), format="yuv420p")
        frame.pts = i * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        self.sent += 1
        return frame


def make_relay(
    standin: StreamStandIn, rec: Recorder, call_id: str, **overrides: Any
) -> StreamRelayPublisher:
    opts: dict[str, Any] = {
        "api_key": standin.api_key,
        "api_secret": standin.api_secret,
        "base_url": standin.base_url,
        "ws_url": standin.ws_url,
        "join_timeout_s": 10.0,
    }
    opts.update(overrides)
    return StreamRelayPublisher(RelayPublisherOptions(**opts), "default", call_id, rec, rec.fail)


def relay_tasks() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task() and t.get_name().startswith("relay-publisher")
    ]


def frames(standin: StreamStandIn, call_id: str) -> int:
    n: int = standin.stats("default", call_id)["video"]["frames"]
    return n


@pytest.fixture
async def multi_codec() -> AsyncIterator[StreamStandIn]:
    """A stand-in whose default is VP9 (what getstream_rtc needs) granting VP8 and H264."""
    async with StreamStandIn(fast_reconnect_deadline_s=3.0) as s:
        yield s


@pytest.mark.netns
@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_granted_codec_published_and_decoded(multi_codec: StreamStandIn, codec: str) -> None:
    standin, rec = multi_codec, Recorder()
    call_id = f"relay-{codec.lower()}"
    pub = make_relay(standin, rec, call_id)
    assert await pub.join(codec) == codec
    video = MarkedVideoTrack()
    await pub.publish(codec, video_source=video, audio_source=AudioStreamTrack())
    assert pub.video_sender.track is video
    assert pub.video_sender.transport.state == "connected"
    assert [e for e, _ in rec.events] == ["published"]
    assert rec.events[0][1]["codec"] == codec

    assert await wait_for(lambda: frames(standin, call_id) >= 45, within_s=8)
    stats = standin.stats("default", call_id)
    # Measured from the payload types on the wire, named by the negotiated answer.
    assert stats["video_codec"] == codec and stats["video_codec_granted"] == codec
    assert stats["video"]["resolution"] == f"{W}x{H}"
    # Every frame after the first decodable one arrives, in order.
    assert stats["marks"]["in_order"] and stats["marks"]["read"] >= 40
    assert stats["marks"]["last"] >= stats["marks"]["first"] + 40
    assert stats["audio"]["seconds"] > 0.5
    (participant,) = stats["participants"]
    assert participant["user_id"] == "avatar-bridge"
    assert participant["tracks"] == ["TRACK_TYPE_AUDIO", "TRACK_TYPE_VIDEO"]
    assert participant["muted"] == [] and participant["pc_state"] == "connected"
    wire = participant["wire"]
    assert wire["video"]["codec"] == codec and wire["audio"]["codec"] == "opus"
    assert {name for name, _ in wire["video"]["payload_types"].values()} <= {codec, "RTX"}

    await pub.aclose()
    await pub.aclose()  # idempotent
    assert await wait_for(lambda: standin.stats("default", call_id)["participants"] == [])
    leaves = standin.stats("default", call_id)["leaves"]
    assert [(x["user_id"], x["reason"]) for x in leaves] == [
        ("avatar-bridge", "user requested leave")
    ]
    assert rec.failures == []
    assert relay_tasks() == []


async def test_unsupported_preference_gets_the_default() -> None:
    async with StreamStandIn(video_codec="VP8", grantable_codecs=("VP8", "VP9")) as standin:
        rec = Recorder()
        pub = make_relay(standin, rec, "no-h264")
        assert await pub.join("H264") == "VP8"
        assert pub.granted_codec == "VP8"
        await pub.aclose()
    assert rec.failures == []


@pytest.mark.netns
async def test_offer_not_matching_the_publish_option_is_refused(
    multi_codec: StreamStandIn,
) -> None:
    rec = Recorder()
    pub = make_relay(multi_codec, rec, "mismatch")
    assert await pub.join("VP8") == "VP8"
    with pytest.raises(BridgeError) as info:
        await pub.publish("H264")
    assert info.value.code == ErrorCode.STREAM_FAILED
    assert "ERROR_CODE_PUBLISH_TRACKS_MISMATCH" in info.value.message
    assert "VP8" in info.value.message and "H264" in info.value.message
    (participant,) = multi_codec.stats("default", "mismatch")["participants"]
    assert participant["tracks"] == [] and participant["pc_state"] is None
    await pub.aclose()
    assert rec.failures == [] and relay_tasks() == []


async def test_wrong_secret_is_stream_auth() -> None:
    async with StreamStandIn() as standin:
        rec = Recorder()
        pub = make_relay(standin, rec, "auth", api_secret="not-the-secret-" * 3)
        with pytest.raises(BridgeError) as info:
            await pub.join("VP8")
        assert info.value.code == ErrorCode.STREAM_AUTH
        assert "signature is not valid" in info.value.message
        assert "not-the-secret-" not in info.value.message
        await pub.aclose()
        assert relay_tasks() == []


async def test_denied_join_is_stream_auth() -> None:
    async with StreamStandIn() as standin:
        standin.deny_join("default", "denied")
        rec = Recorder()
        pub = make_relay(standin, rec, "denied")
        with pytest.raises(BridgeError) as info:
            await pub.join("VP8")
        assert info.value.code == ErrorCode.STREAM_AUTH
        assert "JoinCall" in info.value.message
        await pub.aclose()


async def test_unreachable_stream_is_stream_failed() -> None:
    async with StreamStandIn() as standin:
        base = standin.base_url
    rec = Recorder()
    opts = RelayPublisherOptions("k", "s" * 32, base_url=base, join_timeout_s=3.0)
    pub = StreamRelayPublisher(opts, "default", "gone", rec, rec.fail)
    with pytest.raises(BridgeError) as info:
        await pub.join("VP8")
    assert info.value.code == ErrorCode.STREAM_FAILED
    await pub.aclose()
    assert relay_tasks() == []


@pytest.mark.netns
async def test_sfu_websocket_drop_is_resumed_and_media_continues(
    multi_codec: StreamStandIn,
) -> None:
    standin, rec = multi_codec, Recorder()
    pub = make_relay(standin, rec, "drop")
    await pub.join("VP8")
    await pub.publish("VP8", video_source=MarkedVideoTrack())
    assert await wait_for(lambda: frames(standin, "drop") >= 15, within_s=8)
    assert await standin.drop_sfu_ws("default", "drop") == 1
    assert await wait_for(lambda: pub.sfu_reconnects == 1, within_s=5)
    before = frames(standin, "drop")
    assert await wait_for(lambda: frames(standin, "drop") >= before + 20, within_s=5)
    stats = standin.stats("default", "drop")
    assert stats["sfu_connects"] == 2 and stats["leaves"] == []
    (participant,) = stats["participants"]
    assert participant["connected"] and participant["session_id"] == pub.session_id
    assert stats["marks"]["in_order"]
    assert rec.failures == []
    await pub.aclose()


@pytest.mark.netns
async def test_call_ended_and_rejoin_request_report_stream_failed_once(
    multi_codec: StreamStandIn,
) -> None:
    standin, rec = multi_codec, Recorder()
    pub = make_relay(standin, rec, "ended")
    await pub.join("VP8")
    await pub.publish("VP8")  # placeholders: nothing is sent, the transport still connects
    await standin.end_call("default", "ended")
    assert await wait_for(lambda: bool(rec.failures), within_s=5)
    await standin.kill_peer_connection("default", "ended")  # asks for a rejoin: not reported again
    await asyncio.sleep(0.3)
    assert [f.code for f in rec.failures] == [ErrorCode.STREAM_FAILED]
    assert "call ended" in rec.failures[0].message
    await pub.aclose()
    assert relay_tasks() == []


@pytest.mark.netns
async def test_light_mode_counts_packets_and_still_measures_the_chosen_call() -> None:
    async with StreamStandIn(light=True, full_calls=["default:full"]) as standin:
        rec = Recorder()
        light_pub = make_relay(standin, rec, "light")
        full_pub = make_relay(standin, rec, "full")
        assert await light_pub.join("H264") == "H264"
        assert await full_pub.join("VP8") == "VP8"
        await light_pub.publish(
            "H264", video_source=MarkedVideoTrack(), audio_source=AudioStreamTrack()
        )
        await full_pub.publish("VP8", video_source=MarkedVideoTrack())

        def light_video() -> dict[str, Any]:
            sessions = standin.stats("default", "light")["light"]
            return dict(sessions.get(light_pub.session_id, {}).get("video", {}))

        assert await wait_for(lambda: light_video().get("frames", 0) >= 45, within_s=8)
        assert await wait_for(lambda: frames(standin, "full") >= 45, within_s=8)
        light, full = standin.stats("default", "light"), standin.stats("default", "full")
        await asyncio.gather(light_pub.aclose(), full_pub.aclose())
    assert light["mode"] == "light" and full["mode"] == "full"
    assert light["video"]["frames"] == 0  # counted, never decoded
    video = light["light"][light_pub.session_id]["video"]
    audio = light["light"][light_pub.session_id]["audio"]
    assert video["codec"] == "H264" and video["first_is_keyframe"] is True
    assert video["keyframes"] >= 1 and video["lost"] == 0 and video["duplicates"] == 0
    assert video["packets"] >= video["frames"] >= 45
    assert audio["packets"] >= 25 and audio["lost"] == 0
    assert full["light"] == {} and full["marks"]["in_order"]
    assert rec.failures == []


@pytest.mark.netns
@pytest.mark.parametrize(
    "faults",
    [
        ReceiveFaults(drop_every=25, kinds=("video",)),
        ReceiveFaults(drop_rate=0.05, seed=1, delay_ms=30.0),
    ],
    ids=["every-25th", "random-5pct-delayed"],
)
async def test_receive_hop_losses_are_recovered_by_nack_and_rtx(
    multi_codec: StreamStandIn, faults: ReceiveFaults
) -> None:
    standin, rec = multi_codec, Recorder()
    standin.set_receive_faults("default", "lossy", faults)
    pub = make_relay(standin, rec, "lossy")
    await pub.join("VP8")
    await pub.publish("VP8", video_source=MarkedVideoTrack())
    assert await wait_for(lambda: frames(standin, "lossy") >= 75, within_s=10)
    stats = standin.stats("default", "lossy")
    await pub.aclose()
    counts = stats["receive_faults"]
    assert counts["config"]["drop_every"] == faults.drop_every
    assert counts["dropped"] >= 2, counts
    # aiortc's receiver NACKed the gaps and the publisher's sender answered with RTX.
    assert counts["rtx_received"] >= counts["dropped"] - counts["dropped_rtx"] - 2
    assert (counts["delayed"] > 0) == (faults.delay_ms > 0)
    marks = stats["marks"]
    assert marks["in_order"] and marks["read"] >= 70
    assert marks["missing"] <= 1, marks  # recovered: at most a frame given up at the edge
    assert rec.failures == []


@pytest.mark.netns
async def test_a_lost_retransmission_is_asked_for_again(multi_codec: StreamStandIn) -> None:
    """A packet lost, and its first retransmission lost too. aiortc's receiver NACKs a gap once,
    when a later packet reveals it; the stand-in asks again every RENACK_INTERVAL_S for what is
    still missing, as Stream's (Pion's) SFU does. Without that the next NACK would wait for the
    next loss, here further away than aiortc's jitter buffer (128 packets) holds a hole: the
    frames behind it would be given up. Counted in frames, not timed."""
    standin, rec = multi_codec, Recorder()
    faults = ReceiveFaults(drop_every=DROP_EVERY, drop_first_rtx=True, kinds=("video",))
    standin.set_receive_faults("default", "relost", faults)
    pub = make_relay(standin, rec, "relost")
    await pub.join("VP8")
    await pub.publish("VP8", video_source=MarkedVideoTrack())
    assert await wait_for(lambda: frames(standin, "relost") >= 300, within_s=30)
    stats = standin.stats("default", "relost")
    await pub.aclose()
    counts = stats["receive_faults"]
    lost = counts["dropped"] - counts["dropped_rtx"]
    assert lost >= 2 and counts["dropped_rtx"] >= 1, counts  # a repair lost too
    marks = stats["marks"]
    assert marks["in_order"] and marks["read"] >= 295, marks
    assert marks["missing"] <= 1, marks  # every repair came: no frame given up
    assert stats["video"]["assembled"]["frames"] >= marks["read"], stats["video"]
    assert rec.failures == []
