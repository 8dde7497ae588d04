"""The stand-ins in the test's loop and the daemon as a child process configured for them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bridge.sim.liveavatar import StandInOptions
from bridge.sim.stack import SMALL, DaemonProcess, StandIns

StartDaemon = Callable[..., Awaitable[DaemonProcess]]

CAP_S = 8  # the handover tests' sandbox cap, real seconds


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


@pytest.fixture
async def capped() -> AsyncIterator[StandIns]:
    """The stand-ins with LiveAvatar's sandbox cap at ``CAP_S``: the handover tests'."""
    async with StandIns(liveavatar=StandInOptions(sandbox_max_duration_s=CAP_S)) as stack:
        yield stack


def handover_daemon(
    tmp_path: Path, sim: StandIns, media_path: str, margin_s: float, *flags: str
) -> DaemonProcess:
    """A daemon on ``media_path`` that switches avatars ``margin_s`` before the cap."""
    return DaemonProcess(
        tmp_path,
        sim.daemon_env(),
        *SMALL,
        "--set", f"output.media_path={media_path}",
        "--set", f"liveavatar.handover_margin_s={margin_s}",
        *flags,
    )  # fmt: skip
