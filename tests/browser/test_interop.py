"""Interop, measured: Chromium (libwebrtc) watches the relay's rewritten RTP for a minute through
Stream's browser SDK, with seeded loss on both hops of the Stream stand-in, and a second viewer
joins mid-call.

One call per codec carries every assertion (the browser suite is long on 2 cores): the codec
from the wire and from the browser's inbound-rtp stats; no freeze (libwebrtc's freezeCount, judged
only when the stream reached the SFU without a stall of its own: see the test);
frames decoded against frames the SFU forwarded; the viewer's NACKs answered by the SFU with RTX
(loss between the SFU and the viewer) and the SFU's NACKs answered by the bridge with RTX (loss
between the bridge and the SFU: who answers what is in bridge.sim.stream.forward's docstring);
the mid-call viewer's first frame arrives (its time is printed, the 1 s goal is the demo's and
the bench's figure, not a timed assert).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.client import BridgeClient, stream_pcm_realtime
from bridge.media import AudioFormat
from bridge.protocol import EventMsg
from bridge.sim.browser_viewer import BrowserViewer
from bridge.sim.marks import beep_train
from bridge.sim.stack import SMALL, DaemonProcess, StandIns
from bridge.sim.stream import ForwardFaults, ReceiveFaults

pytestmark = pytest.mark.netns
FMT = AudioFormat(24000, 1)
CALL_S = 60.0  # the watched call, from the first viewer's first frame
SECOND_JOINS_AT_S = 30.0
LOSS = 0.02
SEEDS = {"VP8": 15, "H264": 51}
AVATAR_ID = "0f6c2f0e-9a8b-4c1d-8e7f-3a2b1c0d9e8f"  # any UUID: the stand-in accepts all
# Frames the SFU forwarded but the browser has not decoded at the moment both are read (in its
# jitter buffer, or one side read a little before the other): a loaded machine, generous.
IN_FLIGHT_FRAMES = 15
MIN_WINDOW_FRAMES = 100  # ~30 s at 30 fps is 900; an overloaded run was seen at ~16 fps


@pytest.fixture
async def sim() -> AsyncIterator[StandIns]:
    async with StandIns(render_latency_s=0.2) as stack:
        yield stack


async def _speak(client: BridgeClient, until: float) -> None:
    """Beep turns until ``until`` (loop time): real A/V content, bounded by the call's length."""
    loop = asyncio.get_running_loop()
    beeps = beep_train(FMT.sample_rate, 6, 500, 100).tobytes()
    while loop.time() < until:
        await stream_pcm_realtime(client, beeps, FMT)
        await client.end_turn()
        await asyncio.sleep(1.0)


async def _diagnose(viewer: BrowserViewer, sim: StandIns, call_id: str) -> str:
    page = viewer.page
    assert page is not None
    snap = await page.evaluate("window.streamPage.snapshot()")
    inbound = await page.evaluate("window.streamPage.receiverStats()")
    sfu = sim.stream.stats("default", call_id)
    return "\n".join(
        (
            json.dumps(inbound, indent=1),
            json.dumps(snap, indent=1)[:4000],
            json.dumps(sfu["participants"], indent=1),
            page.diagnostics(),
        )
    )


def _bridge(stats: dict[str, Any]) -> dict[str, Any]:
    (bridge,) = [p for p in stats["participants"] if p["user_id"] == "avatar-bridge"]
    return dict(bridge)


def _stalls(stats: dict[str, Any]) -> int:
    """Stalls of the bridge's video on arrival at the SFU, so far (libwebrtc's freeze rule)."""
    return int(_bridge(stats)["published"]["video"]["arrival_stalls"])


def _sink(stats: dict[str, Any], user_id: str) -> dict[str, Any]:
    """What the SFU forwarded to ``user_id``: the bridge's video track on its subscriber PC."""
    (viewer,) = [p for p in stats["participants"] if p["user_id"] == user_id]
    tracks = (viewer["subscriber"] or {"tracks": {}})["tracks"]
    (video,) = [t for k, t in tracks.items() if k.endswith(":video")]
    return dict(video)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_chromium_watches_a_minute_of_relay_through_loss_on_both_hops(
    sim: StandIns, tmp_path: Path, codec: str
) -> None:
    call_id = f"interop-{codec.lower()}"
    seed = SEEDS[codec]
    daemon = DaemonProcess(
        tmp_path,
        sim.daemon_env(),
        *SMALL,
        "--set", f"liveavatar.video_encoding={codec}",
        # A paid session: the sandbox's ~1 minute cap would end the call inside the minute.
        "--set", "liveavatar.is_sandbox=false",
        "--set", f"liveavatar.avatar_id={AVATAR_ID}",
    )  # fmt: skip
    await daemon.start()
    loop = asyncio.get_running_loop()
    try:
        async with await BridgeClient.connect(daemon.socket) as client:
            await asyncio.wait_for(client.hello(f"default:{call_id}", FMT), 30)
            seen: dict[str, dict[str, object]] = {}
            async with asyncio.timeout(30):
                while not {"avatar_ready", "published", "media_path"} <= seen.keys():
                    message = await client.recv()
                    if isinstance(message, EventMsg):
                        seen[message.event] = dict(message.fields)
            assert seen["media_path"]["path"] == "relay", seen
            # 2 % seeded loss on both hops for the whole watched call: the bridge's video to the
            # SFU (the SFU NACKs, the bridge sends RTX) and everything the SFU forwards to the
            # viewers (they NACK, the SFU answers with RTX).
            sim.stream.set_receive_faults(
                "default", call_id, ReceiveFaults(drop_rate=LOSS, seed=seed, kinds=("video",))
            )
            sim.stream.set_forward_faults(
                "default", call_id, ForwardFaults(drop_rate=LOSS, seed=seed)
            )
            # One Chromium each: a tab that is not in front renders no frames (hidden page).
            async with (
                BrowserViewer(sim.stream, "default", call_id) as one,
                BrowserViewer(sim.stream, "default", call_id) as two,
            ):
                await one.join("viewer-1")
                try:
                    first_one = await one.first_frame_s(within_s=30)
                except Exception as exc:
                    raise AssertionError(await _diagnose(one, sim, call_id)) from exc
                stalls_before = _stalls(sim.stream.stats("default", call_id))
                start = loop.time()
                speaker = asyncio.create_task(_speak(client, start + CALL_S - 3))
                try:
                    await asyncio.sleep(SECOND_JOINS_AT_S)
                    await two.join("viewer-2")
                    first_two = await two.first_frame_s(within_s=30)
                    # The first viewer's decoder against the SFU's forwarding, one window.
                    before = (await one.report())["decoder"]
                    forwarded_before = _sink(sim.stream.stats("default", call_id), "viewer-1")
                    await asyncio.sleep(max(0.0, start + CALL_S - loop.time()))
                    after = (await one.report())["decoder"]
                    stats = sim.stream.stats("default", call_id)
                    second = (await two.report())["decoder"]
                    inbound = [
                        await v.page.evaluate("window.streamPage.receiverStats()")
                        for v in (one, two)
                        if v.page is not None
                    ]
                finally:
                    speaker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await speaker
            _, body = await asyncio.to_thread(daemon.admin, "GET", "/sessions")
            (session,) = body["sessions"]
            relay = session["relay"]
    finally:
        assert await daemon.stop() == 0
    print(
        f"\n{codec}: first frame {first_one} s after joining; a viewer joining "
        f"{SECOND_JOINS_AT_S:.0f} s into the call: first frame {first_two} s"
    )
    summary = {"viewer_1": after, "viewer_2": second, "sfu": stats["participants"]}
    detail = json.dumps(summary, indent=1)
    # The codec, from the wire (the payload type the bridge sends, named by the SDP) and from
    # the browsers' inbound-rtp stats (what libwebrtc decodes).
    assert stats["video_codec"] == codec, detail
    assert _bridge(stats)["wire"]["video"]["codec"] == codec, detail
    for received in inbound:
        assert received["video"]["codec"] == f"video/{codec}", received
    # Frames decoded ~ frames forwarded, over the window the SFU counted.
    forwarded_after = _sink(stats, "viewer-1")
    forwarded = forwarded_after["frames"] - forwarded_before["frames"]
    decoded = after["frames_decoded"] - before["frames_decoded"]
    # Some hundreds of frames in the window, whatever rate a loaded machine's source manages.
    assert forwarded >= MIN_WINDOW_FRAMES, detail
    assert decoded >= forwarded - IN_FLIGHT_FRAMES, (decoded, forwarded, detail)
    # Loss towards the viewers: they NACK, the SFU answers from its history with RTX, and
    # libwebrtc counts the retransmissions it received.
    for user, decoder in (("viewer-1", after), ("viewer-2", second)):
        sink = _sink(stats, user)
        assert sink["dropped"] > 0 and sink["nacked"] > 0, (user, sink)
        assert sink["nacks_answered"] > 0 and sink["rtx_sent"] > 0, (user, sink)
        assert decoder["nacks_sent"] > 0, (user, decoder)
        assert decoder["retransmitted_packets_received"] > 0, (user, decoder)
    # Loss towards the SFU: the SFU NACKs the bridge, the bridge (the relay) answers with RTX.
    published = _bridge(stats)["published"]["video"]
    assert stats["receive_faults"]["dropped"] > 0, stats["receive_faults"]
    assert published["nacks_sent"] > 0 and published["rtx_received"] > 0, published
    assert relay["rtx_sent"] > 0, relay
    # No freeze in the minute, for either viewer, loss notwithstanding: judged when the stream
    # reached the SFU without a stall of its own. On an overloaded machine the source (the
    # avatar's encoder, the daemon) stalls and every viewer freezes with it; that is not the
    # hop under test, so the judgement is skipped, saying so, after everything else passed.
    stalled = _stalls(stats) - stalls_before
    freezes = (after["freeze_count"], second["freeze_count"])
    if stalled:
        pytest.skip(
            f"{codec}: the bridge's video stalled {stalled} times before reaching the SFU "
            f"(machine overloaded: load average {os.getloadavg()[0]:.1f}), so the viewers' "
            f"freezes {freezes} cannot be judged; every other assertion passed"
        )
    assert freezes == (0, 0), detail
    # The mid-call viewer saw the avatar (its time to first frame is the figure printed above).
    assert first_two > 0 and second["frames_decoded"] > 0, detail
