"""Headless Chromium (Debian's package) driving Stream's browser SDK against the stand-ins.

Skipped with the reason when Chromium, the page bundle (``make web``) or the test network
namespace is missing: WebRTC in the browser needs the namespace's veth (``make test``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import jwt
import pytest

from bridge.sim import netns
from bridge.sim.browser import Chromium, find_chromium
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


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    async with Chromium.launch() as b:
        yield b


@pytest.fixture
async def sfu() -> AsyncIterator[StreamStandIn]:
    async with StreamStandIn(video_codec="VP8", fast_reconnect_deadline_s=10.0) as s:
        yield s


def user_token(standin: StreamStandIn, user_id: str) -> str:
    return jwt.encode({"user_id": user_id}, standin.api_secret, algorithm="HS256")


def connect_args(standin: StreamStandIn, user_id: str, token: str | None = None) -> str:
    """The JS object literal of ``streamPage.connect`` for this stand-in."""
    import json

    return json.dumps(
        {
            "apiKey": standin.api_key,
            "token": token or user_token(standin, user_id),
            "userId": user_id,
            "baseURL": standin.browser_base_url,
            "locationHintUrl": standin.location_hint_url,
        }
    )
