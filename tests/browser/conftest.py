"""Headless Chromium (Debian's package) driving Stream's browser SDK against the stand-ins.

Skipped with the reason when Chromium, the page bundle (``make web``) or the test network
namespace is missing: WebRTC in the browser needs the namespace's veth (``make test``).

One Chromium serves the whole session (its start-up and shutdown cost seconds per test on a
loaded machine); each test gets its own handle on it, in its own event loop, and its tabs (with
their peer connections and fake devices) are closed when the test ends. Pages are served from a
new port per test, so no page state (origin storage) carries over from one test to the next.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import jwt
import pytest

from bridge.sim import netns
from bridge.sim.browser import Chromium, ChromiumProcess, Page, find_chromium
from bridge.sim.stack import StandIns
from bridge.sim.stream import StreamStandIn
from bridge.sim.web import PageServer, bundle_missing


def _skip_reason() -> str | None:
    if find_chromium() is None:
        return "chromium is not installed (apt-get install chromium; .ci/run does)"
    missing = bundle_missing()
    if missing is not None:
        return missing
    if not netns.inside():
        return "browser WebRTC tests run inside the test network namespace (make test)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    if reason is None:
        return
    for item in items:
        if "tests/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
async def pages() -> AsyncIterator[PageServer]:
    async with PageServer() as server:
        yield server


@pytest.fixture(scope="session")
def chromium() -> Iterator[ChromiumProcess]:
    shared = ChromiumProcess()
    try:
        yield shared
    finally:
        shared.stop()


@pytest.fixture
async def browser(chromium: ChromiumProcess) -> AsyncIterator[Chromium]:
    async with Chromium.attach(chromium) as b:
        yield b


@pytest.fixture
async def sim() -> AsyncIterator[StandIns]:
    """The whole stack of stand-ins (a daemon's tests start it against them)."""
    async with StandIns(render_latency_s=0.2) as stack:
        yield stack


@pytest.fixture
async def sfu() -> AsyncIterator[StreamStandIn]:
    async with StreamStandIn(video_codec="VP8", fast_reconnect_deadline_s=10.0) as s:
        yield s


def user_token(standin: StreamStandIn, user_id: str) -> str:
    return jwt.encode({"user_id": user_id}, standin.api_secret, algorithm="HS256")


def connect_args(
    standin: StreamStandIn, user_id: str, token: str | None = None, attempts: int | None = None
) -> str:
    """The JS object literal of ``streamPage.connect`` for this stand-in (``attempts``: the
    SDK's ``maxConnectUserRetries``, 5 when not given)."""
    args: dict[str, object] = {
        "apiKey": standin.api_key,
        "token": token or user_token(standin, user_id),
        "userId": user_id,
        "baseURL": standin.browser_base_url,
        "locationHintUrl": standin.location_hint_url,
    }
    if attempts is not None:
        args["maxConnectUserRetries"] = attempts
    return json.dumps(args)


async def stream_page(browser: Chromium, pages: PageServer) -> Page:
    """A tab on ``stream.html`` (Stream's browser SDK), loaded."""
    page = await browser.open(pages.url("stream.html"))
    await page.wait_for("window.streamPage !== undefined")
    return page


async def connect(page: Page, standin: StreamStandIn, user_id: str) -> None:
    """``streamPage.connect`` as ``user_id``, asserted to succeed."""
    result = await page.evaluate(
        f"window.streamPage.connect({connect_args(standin, user_id)})", timeout_s=30
    )
    assert result == {"ok": True}, (result, page.diagnostics())


async def join(page: Page, call_id: str, *, publish: bool) -> dict[str, object]:
    """``streamPage.join`` of ``default:call_id``; the SDK's result."""
    args = json.dumps({"callType": "default", "callId": call_id, "publish": publish})
    result = await page.evaluate(f"window.streamPage.join({args})", timeout_s=30)
    assert isinstance(result, dict)
    return result


async def join_as_viewer(
    browser: Chromium, pages: PageServer, standin: StreamStandIn, call_id: str
) -> Page:
    """A browser viewer joined to ``default:call_id``, not publishing."""
    page = await stream_page(browser, pages)
    await connect(page, standin, "viewer")
    joined = await join(page, call_id, publish=False)
    assert joined["ok"], (joined, page.diagnostics())
    return page
