"""The downlink with the real SDK against the stand-in: media, lifecycle, faults, shutdown."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from bridge.errors import BridgeError, ErrorCode
from bridge.livekit.downlink import JITTER_POLL_MS
from bridge.sim.livekit_server import LiveKitStandIn
from tests.livekit.conftest import Harness, MakeDownlink, open_room

pytestmark = pytest.mark.netns


def _assert_media_flows(h: Harness, width: int, height: int, seconds: float) -> None:
    frames = list(h.sink.video)
    assert {(w, hh) for w, hh, _, _ in frames} == {(width, height)}
    pts = [p for _, _, p, _ in frames]
    assert all(b > a for a, b in itertools.pairwise(pts)), "video pts must increase"
    # Loose functional bounds (30 fps published): no timing assertions beyond "it flows".
    assert h.sink.video_total >= 0.6 * 30 * seconds, h.sink.video_total
    audio_s = sum(c.duration_s for c in h.sink.audio)
    assert audio_s >= 0.6 * seconds, audio_s
    assert h.sink.audio_rms(last=200) > 1000, "audio is silent"
    fmt = h.sink.audio[-1].fmt
    assert (fmt.sample_rate, fmt.channels) == (48000, 1)
    assert h.sink.audio[-1].samples.dtype == np.int16


@pytest.mark.parametrize("single_pc", [None, False], ids=["rtc-v1", "rtc-legacy"])
async def test_receives_avatar_media_and_events(
    standin: LiveKitStandIn, make_downlink: MakeDownlink, single_pc: bool | None
) -> None:
    await open_room(standin)
    # The receivers' stats are read only when the transcode hold follows them (opt-in).
    h = await make_downlink(single_peer_connection=single_pc, jitter_poll_ms=JITTER_POLL_MS)
    ready = await h.wait_ready()
    assert ready["since_start_ms"] >= 0
    await asyncio.sleep(2.0)
    _assert_media_flows(h, 320, 180, 2.0)
    video_events = [f for e, f in h.events if e == "avatar_video"]
    assert video_events[0] == {"width": 320, "height": 180, "fps": None}
    with_fps = [f for f in video_events if f["fps"] is not None]
    assert with_fps and 20 <= with_fps[0]["fps"] <= 40, video_events
    assert standin.counters.video_codecs == {"VP8": 1}
    assert not h.failures
    _assert_jitter_buffers_read(h)


def _assert_jitter_buffers_read(h: Harness) -> None:
    """The audio receiver's cumulative jitter-buffer counters reach the sink, growing (the sync
    stage aligns video on them: bridge/sync.py); the video receiver's are never read (reading
    them can abort the process: bridge/livekit/downlink.py)."""
    readings = list(h.sink.jitter_buffer)
    assert {r.kind for r in readings} == {"audio"}, readings[-4:]
    assert len(readings) >= 2, readings
    first, last = readings[0], readings[-1]
    assert last.emitted > first.emitted and last.delay_s > first.delay_s, (first, last)
    assert all(b.at_ns >= a.at_ns for a, b in itertools.pairwise(readings))


async def test_frame_marks_read_back_in_order(
    standin: LiveKitStandIn, make_downlink: MakeDownlink
) -> None:
    source = await open_room(standin, width=640, height=360)
    h = await make_downlink(read_marks=True)
    await h.wait_ready()
    await asyncio.sleep(2.0)
    numbers = [n for _, _, _, n in h.sink.video if n is not None]
    assert len(numbers) >= 0.8 * h.sink.video_total, "most frames must carry readable marks"
    assert all(b > a for a, b in itertools.pairwise(numbers)), "marks out of order"
    assert numbers[-1] <= source.frames_sent


async def test_h264_when_requested(standin: LiveKitStandIn, make_downlink: MakeDownlink) -> None:
    await open_room(standin, codec="H264")
    h = await make_downlink()
    await h.wait_ready()
    await asyncio.sleep(1.0)
    assert standin.counters.video_codecs == {"H264": 1}
    _assert_media_flows(h, 320, 180, 1.0)


async def test_avatar_leave_reaches_on_failure(
    standin: LiveKitStandIn, make_downlink: MakeDownlink
) -> None:
    await open_room(standin)
    h = await make_downlink()
    await h.wait_ready()
    await standin.faults.avatar_leave("room-1")
    err = await h.wait_failure(5.0)
    assert err.code == ErrorCode.LIVEKIT_FAILED
    assert "left" in err.message
    await asyncio.sleep(0.3)
    assert len(h.failures) == 1, "failure is reported once"


async def test_room_close_reaches_on_failure(
    standin: LiveKitStandIn, make_downlink: MakeDownlink
) -> None:
    await open_room(standin)
    h = await make_downlink()
    await h.wait_ready()
    await standin.close_room("room-1")
    err = await h.wait_failure(5.0)
    assert err.code == ErrorCode.LIVEKIT_FAILED
    assert standin.rooms_open == 0


async def test_signalling_drop_resumes_and_media_continues(
    standin: LiveKitStandIn, make_downlink: MakeDownlink
) -> None:
    await open_room(standin)
    h = await make_downlink()
    await h.wait_ready()
    assert await standin.faults.close_signalling("room-1") == 1
    before = h.sink.video_total
    await h.wait_for(lambda: standin.counters.resumes >= 1, 5.0, "the SDK's resume")
    await h.wait_for(lambda: h.sink.video_total >= before + 45, 5.0, "frames after the resume")
    assert not h.failures
    assert standin.counters.joins == 1, "a resume, not a new join"


async def test_peer_connection_loss_full_reconnect(
    standin: LiveKitStandIn, make_downlink: MakeDownlink
) -> None:
    await open_room(standin)
    h = await make_downlink()
    await h.wait_ready()
    await standin.faults.kill_peer_connection("room-1")
    await h.wait_for(lambda: standin.counters.joins >= 2, 8.0, "the SDK's full reconnect")
    before = h.sink.video_total
    await h.wait_for(lambda: h.sink.video_total >= before + 30, 8.0, "frames on the new tracks")
    assert not h.failures, h.failures


@pytest.mark.parametrize("single_pc", [None, False], ids=["rtc-v1", "rtc-legacy"])
async def test_avatar_joins_late(
    standin: LiveKitStandIn, make_downlink: MakeDownlink, single_pc: bool | None
) -> None:
    standin.faults.avatar_join_delay_s = 1.0
    await open_room(standin)
    h = await make_downlink(single_peer_connection=single_pc)
    assert h.event("avatar_ready") is None
    await h.wait_ready(8.0)
    await asyncio.sleep(1.0)
    _assert_media_flows(h, 320, 180, 1.0)


async def test_avatar_never_joins_times_out(
    standin: LiveKitStandIn, make_downlink: MakeDownlink
) -> None:
    standin.faults.avatar_join_delay_s = 60.0
    await open_room(standin)
    h = await make_downlink(avatar_join_timeout_s=1.0)
    err = await h.wait_failure(5.0)
    assert err.code == ErrorCode.LIVEKIT_FAILED
    assert "within 1.0s" in err.message


async def test_rooms_and_clients_at_once(
    standin: LiveKitStandIn, make_downlink: MakeDownlink
) -> None:
    await open_room(standin, "room-a")
    await open_room(standin, "room-b", width=480, height=270)
    hs = [
        await make_downlink("room-a"),
        await make_downlink("room-a", single_peer_connection=False),
        await make_downlink("room-b"),
    ]
    for h in hs:
        await h.wait_ready()
    assert standin.participants_in("room-a") == 2
    assert standin.participants_in("room-b") == 1
    await asyncio.sleep(1.0)
    assert {w for w, _, _, _ in hs[2].sink.video} == {480}
    await hs[0].downlink.aclose()
    await asyncio.sleep(0.3)
    assert standin.participants_in("room-a") == 1
    await standin.close_room("room-b")
    await hs[2].wait_failure(5.0)
    assert not hs[1].failures, "closing one room leaves the other alone"


async def test_aclose_leaves_nothing_running(
    standin: LiveKitStandIn, make_downlink: MakeDownlink
) -> None:
    await open_room(standin)
    before = set(asyncio.all_tasks())
    h = await make_downlink()
    await h.wait_ready()
    await asyncio.gather(h.downlink.aclose(), h.downlink.aclose())  # idempotent, concurrent
    await h.downlink.aclose()
    await standin.close_room("room-1")
    # The stand-in's own peer-connection tasks wind down asynchronously: give them a moment.
    for _ in range(30):
        leftover = set(asyncio.all_tasks()) - before - {asyncio.current_task()}
        if not leftover:
            break
        await asyncio.sleep(0.1)
    assert not leftover, [t.get_coro() for t in leftover]
    assert not h.failures, "closing is not a failure"
    total = h.sink.video_total
    await asyncio.sleep(0.3)
    assert h.sink.video_total == total, "nothing is delivered after aclose"


async def test_bad_token_is_rejected(standin: LiveKitStandIn, make_downlink: MakeDownlink) -> None:
    await open_room(standin)
    forged = LiveKitStandIn(api_secret="another-secret-another-secret-00").mint_token(
        "room-1", "daemon"
    )
    with pytest.raises(BridgeError) as info:
        await make_downlink(token=forged, connect_timeout_s=10.0)
    assert info.value.code == ErrorCode.LIVEKIT_FAILED
    assert standin.counters.rejected >= 1
    assert standin.counters.joins == 0


async def test_connect_timeout(make_downlink: MakeDownlink) -> None:
    # A TCP listener that never answers the WebSocket upgrade.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(BridgeError) as info:
            await make_downlink(url=f"ws://127.0.0.1:{port}", connect_timeout_s=1.0)
        assert info.value.code == ErrorCode.LIVEKIT_FAILED
        assert "timed out" in info.value.message
    finally:
        server.close()


async def test_renderer_tracks_marks_and_speech(
    standin: LiveKitStandIn, make_downlink: MakeDownlink
) -> None:
    from bridge.sim import marks
    from bridge.sim.avatar import AvatarRenderer

    renderer = AvatarRenderer(640, 360, 30)
    renderer.start()
    try:
        await standin.create_room(
            "room-1",
            avatar_identity="heygen",
            video=renderer.video_track(),
            audio=renderer.audio_track(),
            video_codec="VP8",
        )
        h = await make_downlink(read_marks=True)
        await h.wait_ready()
        speech = marks.beep_train(24000, count=4, period_ms=250, beep_ms=100)
        renderer.push_audio(speech.tobytes(), "turn-1")
        renderer.end_turn("turn-1")
        await asyncio.sleep(2.0)
        numbers = [n for _, _, _, n in h.sink.video if n is not None]
        assert len(numbers) >= 0.8 * h.sink.video_total, "most frames must carry readable marks"
        assert all(b > a for a, b in itertools.pairwise(numbers)), "marks out of order"
        assert {(w, hh) for w, hh, _, _ in h.sink.video} == {(640, 360)}
        peak = max(int(np.abs(c.samples).max()) for c in h.sink.audio)
        assert peak > 5000, f"the uplinked beeps did not come back (peak {peak})"
    finally:
        await standin.close_room("room-1")
        await renderer.aclose()
