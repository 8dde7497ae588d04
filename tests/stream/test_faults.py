"""The stand-in's fault knobs against the real SDK, and MP4 recording."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from bridge.sim.stream import StreamStandIn
from tests.stream._support import Recorder, drive, make_publisher, wait_for

pytestmark = pytest.mark.netns


def frames(standin: StreamStandIn, call_id: str) -> int:
    n: int = standin.stats("default", call_id)["video"]["frames"]
    return n


def audio_s(standin: StreamStandIn, call_id: str) -> float:
    return float(standin.stats("default", call_id)["audio"]["seconds"])


async def all_audio_arrives(standin: StreamStandIn, call_id: str, written_s: float) -> float:
    """Wait (bounded) until the call received what was written, less 0.3 s (the SDK's Opus
    framing and the stand-in's decoder delay): on a loaded machine the tail is still on its way
    when the writes return. Returns the seconds received."""
    await wait_for(lambda: audio_s(standin, call_id) > written_s - 0.3, 15.0)
    return audio_s(standin, call_id)


async def test_paused_video_layer_stops_video_until_resumed(standin: StreamStandIn) -> None:
    rec = Recorder()
    pub = make_publisher(standin, rec, "pause-call")
    await pub.start()
    await drive(pub, seconds=1.0)
    assert frames(standin, "pause-call") > 0
    await standin.pause_video_layer("default", "pause-call")
    await drive(pub, seconds=0.5, start_frame=30)  # lets the pause take effect
    paused_at = frames(standin, "pause-call")
    await drive(pub, seconds=1.0, start_frame=45)
    assert frames(standin, "pause-call") <= paused_at + 3  # the SDK discards paused writes
    await standin.pause_video_layer("default", "pause-call", paused=False)
    start = 75
    for _ in range(12):  # at most 6 s
        await drive(pub, seconds=0.5, start_frame=start)
        start += 15
        if frames(standin, "pause-call") >= paused_at + 20:
            break
    assert frames(standin, "pause-call") >= paused_at + 20
    stats = standin.stats("default", "pause-call")
    assert stats["video"]["freezes"] >= 1  # the pause is visible as a freeze to a viewer
    # Audio was never paused: all of it arrives.
    assert (
        await all_audio_arrives(standin, "pause-call", pub.audio_seconds) > pub.audio_seconds - 0.3
    )
    assert rec.failures == []
    await pub.aclose()


async def test_revoked_send_video_mutes_video_keeps_audio(standin: StreamStandIn) -> None:
    rec = Recorder()
    pub = make_publisher(standin, rec, "grant-call")
    await pub.start()
    await drive(pub, seconds=1.0)
    await standin.revoke_send_video("default", "grant-call")
    await drive(pub, seconds=0.3, start_frame=30)
    revoked_at = frames(standin, "grant-call")
    await drive(pub, seconds=1.0, start_frame=39)
    stats = standin.stats("default", "grant-call")
    assert stats["video"]["frames"] <= revoked_at + 3
    assert stats["participants"][0]["muted"] == ["TRACK_TYPE_VIDEO"]
    assert pub.audio_seconds > 2.0
    # Audio is not revoked: all of it arrives.
    assert (
        await all_audio_arrives(standin, "grant-call", pub.audio_seconds) > pub.audio_seconds - 0.3
    )
    assert rec.failures == []  # not fatal: the session keeps its audio
    await pub.aclose()


async def test_killed_peer_connection_is_recovered(standin: StreamStandIn) -> None:
    rec = Recorder()
    pub = make_publisher(standin, rec, "kill-call")
    await pub.start()
    await drive(pub, seconds=1.0)
    assert await standin.kill_peer_connection("default", "kill-call") == 1
    before = frames(standin, "kill-call")
    # The SDK notices a dead transport only after its ICE timeouts (~7 s here), then rejoins.
    start = 30
    for _ in range(40):  # at most 20 s
        await drive(pub, seconds=0.5, start_frame=start)
        start += 15
        if frames(standin, "kill-call") >= before + 30:
            break
    assert frames(standin, "kill-call") >= before + 30
    stats = standin.stats("default", "kill-call")
    assert stats["joins"] >= 2 or stats["sfu_connects"] >= 2
    assert stats["marks"]["backwards"] == 0
    assert rec.failures == []
    await pub.aclose()


async def test_recording_writes_a_playable_mp4(standin: StreamStandIn, tmp_path: Path) -> None:
    path = tmp_path / "call.mp4"
    standin.record("default", "rec-call", str(path))
    rec = Recorder()
    pub = make_publisher(standin, rec, "rec-call")
    await pub.start()
    await drive(pub, seconds=1.5)
    await pub.aclose()
    await standin.stop_recording("default", "rec-call")
    with av.open(str(path)) as container:
        kinds = sorted(s.type for s in container.streams)
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (640, 360)
        decoded = sum(1 for _ in container.decode(video=0))
    assert kinds == ["audio", "video"]
    assert decoded >= 30
