"""Fixtures: a LiveAvatar stand-in on an ephemeral port with scaled time, and client pieces."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.errors import BridgeError
from bridge.liveavatar.api import LiveAvatarAPI
from bridge.liveavatar.ledger import SessionLedger
from bridge.liveavatar.uplink import LiveAvatarOptions, LiveAvatarUplink
from bridge.media import AudioFormat
from bridge.sim.liveavatar import LiveAvatarStandIn, StandInOptions

API_KEY = "sk-test"
AVATAR = "0f9e8d7c-6b5a-4c3d-9e2f-1a2b3c4d5e6f"
FMT24 = AudioFormat(24_000, 1)


@pytest.fixture
async def standin() -> AsyncIterator[LiveAvatarStandIn]:
    # 5 min idle -> 1.5 s; latency short so speak events come quickly.
    sim = LiveAvatarStandIn(StandInOptions(time_scale=0.005, render_latency_s=0.05))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def api(http: aiohttp.ClientSession, standin: LiveAvatarStandIn) -> LiveAvatarAPI:
    return LiveAvatarAPI(http, standin.base_url, API_KEY, 5.0, backoff_s=0.01)


@pytest.fixture
def ledger(tmp_path: Path) -> SessionLedger:
    return SessionLedger(tmp_path)


@dataclass
class Harness:
    uplink: LiveAvatarUplink
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failures: list[BridgeError] = field(default_factory=list)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.events if event == name]


MakeUplink = Callable[..., Harness]


@pytest.fixture
async def make_uplink(api: LiveAvatarAPI, ledger: SessionLedger) -> AsyncIterator[MakeUplink]:
    made: list[Harness] = []

    def make(fmt: AudioFormat = FMT24, **overrides: Any) -> Harness:
        defaults: dict[str, Any] = {
            "avatar_id": AVATAR,
            "is_sandbox": False,
            "max_session_duration": 3600,  # 18 s at the stand-in's time scale
        }
        options = LiveAvatarOptions(**(defaults | overrides))
        events: list[tuple[str, dict[str, Any]]] = []
        failures: list[BridgeError] = []

        def sink(name: str, /, **fields: Any) -> None:
            events.append((name, fields))

        uplink = LiveAvatarUplink(api, ledger, options, fmt, sink, failures.append)
        harness = Harness(uplink, events, failures)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.uplink.aclose()
