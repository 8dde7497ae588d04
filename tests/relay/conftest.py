"""Fixtures for the relay: a LiveKit stand-in room and helpers that count relayed packets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.errors import BridgeError
from bridge.sim.livekit_server import LiveKitStandIn, SyntheticVideoTrack, ToneAudioTrack

AVATAR = "heygen"


@dataclass
class Recorder:
    """An EventSink and FailureCallback that remember what they were told."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failures: list[BridgeError] = field(default_factory=list)

    def __call__(self, event: str, /, **fields: Any) -> None:
        self.events.append((event, fields))

    def fail(self, err: BridgeError) -> None:
        self.failures.append(err)

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def livekit() -> AsyncIterator[LiveKitStandIn]:
    server = LiveKitStandIn(ping_interval_s=1, ping_timeout_s=3)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


async def make_room(
    server: LiveKitStandIn, name: str = "room", codec: str = "VP8", fps: int = 30
) -> tuple[str, str]:
    """A room with the synthetic avatar; returns (url, token for the bridge)."""
    await server.create_room(
        name,
        avatar_identity=AVATAR,
        video=SyntheticVideoTrack(320, 180, fps),
        audio=ToneAudioTrack(),
        video_codec=codec,
    )
    return server.url, server.mint_token(name, "avatar-bridge")


async def wait_for(pred: Any, timeout_s: float, what: str) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():  # noqa: ASYNC110 (polls state owned by other code)
            await asyncio.sleep(0.05)
    assert pred(), what
