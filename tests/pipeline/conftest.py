"""The stand-ins in the test's loop and the daemon as a child process configured for them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bridge.sim.stack import SMALL, DaemonProcess, StandIns

StartDaemon = Callable[..., Awaitable[DaemonProcess]]


@pytest.fixture
async def sim() -> AsyncIterator[StandIns]:
    async with StandIns(render_latency_s=0.2) as stack:
        yield stack


@pytest.fixture
async def start_daemon(sim: StandIns, tmp_path: Path) -> AsyncIterator[StartDaemon]:
    started: list[DaemonProcess] = []

    async def start(*flags: str, env: dict[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(tmp_path, {**sim.daemon_env(), **(env or {})}, *SMALL, *flags)
        await d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        await d.stop()
