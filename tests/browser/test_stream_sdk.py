"""Stream's browser SDK (@stream-io/video-client, unmodified, in headless Chromium) against the
Stream stand-in: connect, join, publish, view another participant, refusals."""

from __future__ import annotations

import json

import jwt
import pytest

from bridge.sim.browser import Chromium, Page
from bridge.sim.stream import StreamStandIn
from bridge.sim.web import PageServer
from tests.browser.conftest import connect_args
from tests.stream._support import wait_for

pytestmark = pytest.mark.netns


async def open_page(browser: Chromium, pages: PageServer) -> Page:
    page = await browser.open(pages.url("stream.html"))
    await page.wait_for("window.streamPage !== undefined")
    return page


async def join(page: Page, call_id: str, *, publish: bool) -> dict[str, object]:
    args = json.dumps({"callType": "default", "callId": call_id, "publish": publish})
    result = await page.evaluate(f"window.streamPage.join({args})", timeout_s=30)
    assert isinstance(result, dict)
    return result


async def test_browser_publishes_its_camera_and_microphone(
    sfu: StreamStandIn, browser: Chromium, pages: PageServer
) -> None:
    page = await open_page(browser, pages)
    connected = await page.evaluate(
        f"window.streamPage.connect({connect_args(sfu, 'alice')})", timeout_s=30
    )
    assert connected == {"ok": True}, page.diagnostics()
    joined = await join(page, "browser-publish", publish=True)
    assert joined["ok"], (joined, page.diagnostics())
    assert await wait_for(
        lambda: sfu.stats("default", "browser-publish")["video"]["frames"] >= 30, within_s=20
    ), (sfu.stats("default", "browser-publish"), page.diagnostics())
    stats = sfu.stats("default", "browser-publish")
    (participant,) = stats["participants"]
    assert participant["user_id"] == "alice"
    assert stats["video_codec"] == "VP8"  # the payload type on the wire
    assert stats["audio"]["seconds"] > 0.5
    snap = await page.evaluate("window.streamPage.snapshot()")
    assert snap["coordinatorConnected"] and snap["joined"], snap


async def test_browser_views_another_browsers_camera_and_microphone(
    sfu: StreamStandIn, browser: Chromium, pages: PageServer
) -> None:
    publisher = await open_page(browser, pages)
    viewer = await open_page(browser, pages)
    for page, user in ((publisher, "alice"), (viewer, "bob")):
        connected = await page.evaluate(
            f"window.streamPage.connect({connect_args(sfu, user)})", timeout_s=30
        )
        assert connected == {"ok": True}, page.diagnostics()
    assert (await join(publisher, "browser-view", publish=True))["ok"], publisher.diagnostics()
    joined = await join(viewer, "browser-view", publish=False)
    assert joined["ok"], viewer.diagnostics()
    # The viewer sees alice's video: frames presented by its <video> element (forwarded RTP).
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
            f"{json.dumps(sfu.stats('default', 'browser-view')['participants'], indent=1)}"
        ) from exc
    stats = await viewer.evaluate("window.streamPage.receiverStats()")
    assert stats["video"]["codec"] == "video/VP8", stats
    assert stats["video"]["framesDecoded"] >= 30 and stats["audio"]["packetsReceived"] > 50
    snap = await viewer.evaluate("window.streamPage.snapshot()")
    (alice,) = [p for p in snap["participants"].values() if p["userId"] == "alice"]
    assert alice["width"] > 0 and alice["height"] > 0


async def test_bad_token_is_refused_with_streams_auth_error(
    sfu: StreamStandIn, browser: Chromium, pages: PageServer
) -> None:
    page = await open_page(browser, pages)
    forged = jwt.encode({"user_id": "mallory"}, "not-the-secret-" * 3, algorithm="HS256")
    result = await page.evaluate(
        f"window.streamPage.connect({connect_args(sfu, 'mallory', token=forged)})", timeout_s=30
    )
    assert result["ok"] is False, result
    error = json.loads(result["error"]) if result["error"].startswith("{") else result["error"]
    # Stream's JWT signature error (code 43), as the coordinator sends it in connection.error.
    assert "43" in json.dumps(error) and "signature" in json.dumps(error).lower(), error
    snap = await page.evaluate("window.streamPage.snapshot()")
    assert not snap["coordinatorConnected"]
    assert sfu.calls() == []
