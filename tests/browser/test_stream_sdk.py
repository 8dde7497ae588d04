"""Stream's browser SDK (@stream-io/video-client, unmodified, in headless Chromium) against the
Stream stand-in: connect, join, publish, view another participant, refusals."""

from __future__ import annotations

import json

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
