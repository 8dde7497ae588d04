"""The aiortc LiveKit subscriber against the LiveKit stand-in: avatar packets arrive, raw."""

from __future__ import annotations

from collections import Counter

import pytest
from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket

from bridge.errors import ErrorCode
from bridge.livekit.subscriber import LiveKitSubscriber, SubscriberOptions
from bridge.relay.aiortc_hooks import ReceiverTap
from bridge.sim.livekit_server import LiveKitStandIn

from .conftest import AVATAR, Recorder, make_room, wait_for

pytestmark = pytest.mark.netns


class Taps:
    def __init__(self) -> None:
        self.packets: Counter[str] = Counter()
        self.srs: Counter[str] = Counter()
        self.taps: list[ReceiverTap] = []

    def on_receiver(self, kind: str, receiver: RTCRtpReceiver, sid: str) -> None:
        async def on_rtp(p: RtpPacket, codec: RTCRtpCodecParameters, arrival_ms: int) -> None:
            self.packets[codec.mimeType.lower()] += 1

        def on_sr(sr: RtcpSrPacket) -> None:
            self.srs[kind] += 1

        self.taps.append(ReceiverTap(receiver, on_rtp, on_sr))


@pytest.mark.parametrize("single_pc", [True, False], ids=["rtc-v1", "rtc-legacy"])
@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_avatar_packets_arrive_undecoded(
    livekit: LiveKitStandIn, recorder: Recorder, single_pc: bool, codec: str
) -> None:
    url, token = await make_room(livekit, codec=codec)
    taps = Taps()
    sub = LiveKitSubscriber(
        SubscriberOptions(avatar_identity=AVATAR, single_peer_connection=single_pc),
        taps.on_receiver,
        recorder,
        recorder.fail,
    )
    try:
        await sub.start(url, token)
        assert set(sub.receivers) == {"audio", "video"}
        await wait_for(
            lambda: taps.packets["audio/opus"] > 20 and taps.packets[f"video/{codec.lower()}"] > 20,
            10,
            "avatar packets",
        )
        await wait_for(lambda: taps.srs["video"] > 0 and taps.srs["audio"] > 0, 5, "sender reports")
        assert sub.video_mime is not None and codec.lower() in sub.video_mime.lower()
        assert livekit.counters.video_codecs[codec] == 1
    finally:
        await sub.aclose()
    assert not recorder.failures
    await wait_for(lambda: livekit.participants_in("room") == 0, 5, "left the room")
    assert livekit.counters.leaves == 1


async def test_signalling_drop_is_resumed(livekit: LiveKitStandIn, recorder: Recorder) -> None:
    url, token = await make_room(livekit)
    taps = Taps()
    sub = LiveKitSubscriber(SubscriberOptions(), taps.on_receiver, recorder, recorder.fail)
    try:
        await sub.start(url, token)
        assert await livekit.faults.close_signalling("room") == 1
        await wait_for(lambda: sub.stats["resumes"] == 1, 10, "resumed")
        before = taps.packets["video/vp8"]
        await wait_for(lambda: taps.packets["video/vp8"] > before + 10, 5, "media continues")
        assert livekit.counters.resumes == 1
    finally:
        await sub.aclose()
    assert not recorder.failures


async def test_lost_media_session_rejoins_with_new_receivers(
    livekit: LiveKitStandIn, recorder: Recorder
) -> None:
    url, token = await make_room(livekit)
    taps = Taps()
    sub = LiveKitSubscriber(SubscriberOptions(), taps.on_receiver, recorder, recorder.fail)
    try:
        await sub.start(url, token)
        first = sub.receivers["video"]
        await livekit.faults.kill_peer_connection("room")
        await wait_for(lambda: sub.stats["rejoins"] == 1, 10, "rejoined")
        await wait_for(lambda: sub.receivers.get("video") not in (None, first), 5, "new receiver")
        before = taps.packets["video/vp8"]
        await wait_for(lambda: taps.packets["video/vp8"] > before + 10, 5, "media continues")
        assert "avatar_reconnected" in recorder.names()
    finally:
        await sub.aclose()
    assert not recorder.failures


async def test_avatar_leaving_fails_the_subscriber(
    livekit: LiveKitStandIn, recorder: Recorder
) -> None:
    url, token = await make_room(livekit)
    sub = LiveKitSubscriber(SubscriberOptions(), Taps().on_receiver, recorder, recorder.fail)
    try:
        await sub.start(url, token)
        await livekit.faults.avatar_leave("room")
        await wait_for(lambda: bool(recorder.failures), 5, "failure reported")
        assert [f.code for f in recorder.failures] == [ErrorCode.LIVEKIT_FAILED]
    finally:
        await sub.aclose()


async def test_bad_token_is_a_livekit_error(livekit: LiveKitStandIn, recorder: Recorder) -> None:
    url, _ = await make_room(livekit)
    sub = LiveKitSubscriber(SubscriberOptions(), Taps().on_receiver, recorder, recorder.fail)
    with pytest.raises(Exception) as info:
        await sub.start(url, "not-a-token")
    assert getattr(info.value, "code", None) == ErrorCode.LIVEKIT_FAILED
