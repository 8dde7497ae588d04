"""Fixtures for the Stream publisher and stand-in tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.sim.stream import StreamStandIn


@pytest.fixture
async def standin() -> AsyncIterator[StreamStandIn]:
    async with StreamStandIn(fast_reconnect_deadline_s=3.0) as s:
        yield s
