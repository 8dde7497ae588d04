"""Stream's browser SDK (@stream-io/video-client, unmodified, in headless Chromium) against the
Stream stand-in: connect, join, publish, view another participant, refusals."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest

from bridge.sim.browser import Chromium, Page
from bridge.sim.stream import ForwardFaults, StreamStandIn
from bridge.sim.web import PageServer
from tests.browser.conftest import connect, connect_args, join, stream_page
from tests.stream._support import wait_for

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("codec", ["VP8", "H264", "VP9"])
async def test_browser_publishes_its_camera_and_microphone_in_the_granted_codec(
    browser: Chromium, pages: PageServer, codec: str
) -> None:
    """Whatever the SFU grants, the codec on the wire is the grant: the answer carries no other.

    Light mode (packets counted, not decoded): Chromium's 720p VP9 decodes slower than real
    time in the stand-in's software decoder on a loaded 2-core machine."""
    async with StreamStandIn(video_codec=codec, light=True) as sfu:
        page = await stream_page(browser, pages)
        await connect(page, sfu, "alice")
        joined = await join(page, "browser-publish", publish=True)
        assert joined["ok"], (joined, page.diagnostics())

        def counted() -> dict[str, Any]:
            light = sfu.stats("default", "browser-publish")["light"]
            return next(iter(light.values()), {})

        assert await wait_for(
            lambda: counted().get("video", {}).get("frames", 0) >= 30, within_s=20
        ), (sfu.stats("default", "browser-publish"), page.diagnostics())
        stats = sfu.stats("default", "browser-publish")
        light = counted()
        snap = await page.evaluate("window.streamPage.snapshot()")
    (participant,) = stats["participants"]
    assert participant["user_id"] == "alice"
    assert stats["video_codec"] == codec  # the payload type on the wire, named by the answer
    assert participant["wire"]["video"]["codec"] == codec
    assert participant["wire"]["audio"]["codec"] == "opus"
    assert light["video"]["codec"] == codec and light["video"]["keyframes"] >= 1
    assert light["audio"]["packets"] > 25
    assert snap["coordinatorConnected"] and snap["joined"], snap


async def test_bad_token_is_refused_with_streams_auth_error(
    sfu: StreamStandIn, browser: Chromium, pages: PageServer
) -> None:
    page = await stream_page(browser, pages)
    forged = jwt.encode({"user_id": "mallory"}, "not-the-secret-" * 3, algorithm="HS256")
    # One attempt: the SDK would try five times (with back-off) and report the same refusal.
    args = connect_args(sfu, "mallory", token=forged, attempts=1)
    result = await page.evaluate(f"window.streamPage.connect({args})", timeout_s=30)
    assert result["ok"] is False, result
    error = json.loads(result["error"]) if result["error"].startswith("{") else result["error"]
    # Stream's JWT signature error (code 43), as the coordinator sends it in connection.error.
    assert "43" in json.dumps(error) and "signature" in json.dumps(error).lower(), error
    snap = await page.evaluate("window.streamPage.snapshot()")
    assert not snap["coordinatorConnected"]
    assert sfu.calls() == []


async def two_browsers(
    sfu: StreamStandIn, browser: Chromium, pages: PageServer, call_id: str
) -> tuple[Page, Page]:
    """alice publishes her fake camera and microphone, bob views; returns once bob sees and
    hears her: frames presented by his <video> element (forwarded RTP), decoded in the granted
    codec, and her audio track. (Every test below starts from here: this is the test of a
    browser viewing another browser.)"""
    publisher = await stream_page(browser, pages)
    viewer = await stream_page(browser, pages)
    for page, user in ((publisher, "alice"), (viewer, "bob")):
        await connect(page, sfu, user)
    assert (await join(publisher, call_id, publish=True))["ok"], publisher.diagnostics()
    assert (await join(viewer, call_id, publish=False))["ok"], viewer.diagnostics()
    try:
        await viewer.wait_for(
            "Object.values(window.streamPage.snapshot().participants)"
            ".some(p => p.userId === 'alice' && p.frames >= 30 && p.audioTracks === 1)",
            within_s=30,
        )
    except Exception as exc:
        snap = await viewer.evaluate("window.streamPage.snapshot()")
        raise AssertionError(
            f"{exc}\n{json.dumps(snap, indent=1)}\n{viewer.diagnostics()}\n"
            f"{json.dumps(sfu.stats('default', call_id)['participants'], indent=1)}"
        ) from exc
    stats = await viewer.evaluate("window.streamPage.receiverStats()")
    assert stats["video"]["codec"] == "video/VP8", stats
    assert stats["video"]["framesDecoded"] >= 30 and stats["audio"]["packetsReceived"] > 50
    snap = await viewer.evaluate("window.streamPage.snapshot()")
    (alice,) = [p for p in snap["participants"].values() if p["userId"] == "alice"]
    assert alice["width"] > 0 and alice["height"] > 0
    return publisher, viewer


ALICE_FRAMES = (
    "Object.values(window.streamPage.snapshot().participants)"
    ".filter(p => p.userId === 'alice').reduce((n, p) => n + p.frames, 0)"
)


async def test_sfu_signal_drop_is_fast_reconnected_and_media_resumes(
    sfu: StreamStandIn, browser: Chromium, pages: PageServer
) -> None:
    publisher, viewer = await two_browsers(sfu, browser, pages, "fast-reconnect")
    sessions = {p["session_id"] for p in sfu.stats("default", "fast-reconnect")["participants"]}
    connects = sfu.stats("default", "fast-reconnect")["sfu_connects"]
    assert await sfu.drop_sfu_ws("default", "fast-reconnect") == 2
    # Both SDKs reconnect their signal WebSocket within the fast-reconnect deadline ...
    assert await wait_for(
        lambda: sfu.stats("default", "fast-reconnect")["sfu_connects"] >= connects + 2,
        within_s=20,
    ), (publisher.diagnostics(), viewer.diagnostics())
    for page in (publisher, viewer):
        await page.wait_for("window.streamPage.snapshot().joined", within_s=20)
    # ... as the same sessions (a fast reconnect, not a rejoin), and the media goes on.
    stats = sfu.stats("default", "fast-reconnect")
    assert {p["session_id"] for p in stats["participants"]} == sessions, stats["participants"]
    assert stats["leaves"] == []
    before = await viewer.evaluate(ALICE_FRAMES)
    await viewer.wait_for(f"{ALICE_FRAMES} >= {before + 30}", within_s=20)
    published = sfu.stats("default", "fast-reconnect")["video"]["frames"]
    assert await wait_for(
        lambda: sfu.stats("default", "fast-reconnect")["video"]["frames"] >= published + 30,
        within_s=20,
    )


async def test_rejoin_after_the_sfu_asks_for_it_resumes_media_for_the_viewer(
    sfu: StreamStandIn, browser: Chromium, pages: PageServer
) -> None:
    publisher, viewer = await two_browsers(sfu, browser, pages, "rejoin")
    (alice_before,) = [
        p["session_id"]
        for p in sfu.stats("default", "rejoin")["participants"]
        if p["user_id"] == "alice"
    ]
    joins = sfu.stats("default", "rejoin")["joins"]
    # The SFU loses alice's media transport and tells her to rejoin (SfuEvent.error, REJOIN).
    assert await sfu.kill_peer_connection("default", "rejoin") == 1

    def alice_sessions() -> list[str]:
        stats = sfu.stats("default", "rejoin")
        return [p["session_id"] for p in stats["participants"] if p["user_id"] == "alice"]

    # A full reconnect: a new coordinator join and a new SFU session replacing the old one.
    assert await wait_for(
        lambda: alice_sessions() not in ([], [alice_before]) and len(alice_sessions()) == 1,
        within_s=30,
    ), (sfu.stats("default", "rejoin")["participants"], publisher.diagnostics())
    stats = sfu.stats("default", "rejoin")
    assert stats["joins"] > joins
    assert any(x["session_id"] == alice_before for x in stats["leaves"])
    await publisher.wait_for("window.streamPage.snapshot().joined", within_s=20)
    # bob sees alice's new session and its media.
    (alice_after,) = alice_sessions()
    await viewer.wait_for(
        f"(window.streamPage.snapshot().participants['{alice_after}'] || {{frames: 0}})"
        ".frames >= 30",
        within_s=30,
    )


async def test_coordinator_connection_stays_up_through_the_sdks_health_checks(
    sfu: StreamStandIn, browser: Chromium, pages: PageServer
) -> None:
    """The SDK's first health check (25 s after ``connection.ok``) is answered, and the SDK takes
    the answer as a ``health.check`` event: what re-arms its ping timer and moves its 35 s
    no-message check on. Then past that check (which would have reconnected had the answer not
    counted) the connection is still the first one. ~37 s (two checks, ~51 s, proved the same)."""
    page = await stream_page(browser, pages)
    await connect(page, sfu, "carol")
    connected_at = time.monotonic()
    assert sfu.coordinator_connects == 1
    await page.evaluate(
        "(() => { const s = window.streamPage.state; s.healthReplies = 0;"
        " s.client.streamClient.on('health.check', () => { s.healthReplies += 1; }); })()"
    )
    # The SDK's own timer drives it: 25 s, bounded by 70.
    await page.wait_for("window.streamPage.state.healthReplies >= 1", within_s=70, every_s=0.5)
    assert sfu.health_checks >= 1
    await asyncio.sleep(max(1.0, connected_at + 36.0 - time.monotonic()))
    snap = await page.evaluate("window.streamPage.snapshot()")
    assert snap["coordinatorConnected"], (snap, page.diagnostics())
    assert sfu.coordinator_connects == 1  # never dropped and reconnected


async def test_update_subscriptions_is_honoured(
    sfu: StreamStandIn, browser: Chromium, pages: PageServer
) -> None:
    """The viewer turns incoming video off and on again: the SFU stops forwarding alice's video
    to it (audio stays, as the SDK never asks for audio) and resumes it."""
    _, viewer = await two_browsers(sfu, browser, pages, "subscriptions")

    def bob_tracks() -> set[str]:
        stats = sfu.stats("default", "subscriptions")
        (bob,) = [p for p in stats["participants"] if p["user_id"] == "bob"]
        sub = bob["subscriber"] or {"tracks": {}}
        return {key.rsplit(":", 1)[1] for key in sub["tracks"]}

    assert bob_tracks() == {"audio", "video"}
    await viewer.evaluate("window.streamPage.state.call.setIncomingVideoEnabled(false)")
    assert await wait_for(lambda: bob_tracks() == {"audio"}, within_s=15), bob_tracks()
    await viewer.evaluate("window.streamPage.state.call.setIncomingVideoEnabled(true)")
    assert await wait_for(lambda: bob_tracks() == {"audio", "video"}, within_s=15)
    before = await viewer.evaluate(ALICE_FRAMES)
    await viewer.wait_for(f"{ALICE_FRAMES} >= {before + 30}", within_s=20)


async def test_loss_towards_the_viewer_is_recovered_by_its_nacks(
    sfu: StreamStandIn, browser: Chromium, pages: PageServer
) -> None:
    """2 % of the packets the SFU forwards to the viewer are lost (seeded): Chromium NACKs them,
    the SFU answers from its history, and the picture goes on."""
    _, viewer = await two_browsers(sfu, browser, pages, "lossy-downlink")
    sfu.set_forward_faults("default", "lossy-downlink", ForwardFaults(drop_rate=0.02, seed=7))
    before = await viewer.evaluate(ALICE_FRAMES)
    await viewer.wait_for(f"{ALICE_FRAMES} >= {before + 90}", within_s=30)

    def bob_video() -> dict[str, Any]:
        stats = sfu.stats("default", "lossy-downlink")
        (bob,) = [p for p in stats["participants"] if p["user_id"] == "bob"]
        (video,) = [t for k, t in bob["subscriber"]["tracks"].items() if k.endswith(":video")]
        return dict(video)

    assert await wait_for(lambda: bob_video()["nacks_answered"] >= 1, within_s=10), bob_video()
    video = bob_video()
    assert video["dropped"] >= 1 and video["sent"] > 100, video
    received = await viewer.evaluate("window.streamPage.receiverStats()")
    assert received["video"]["nackCount"] >= 1, received
