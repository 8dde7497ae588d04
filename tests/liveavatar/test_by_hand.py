"""The stand-ins run by hand (as a user would, as processes) give the whole world.

``python -m bridge.sim.liveavatar`` brings its LiveKit room server along, and ``python -m
bridge.sim`` prints the environment a daemon needs; a session started against either gets a
LiveKit URL and token that a real SDK joins, with the avatar publishing in the room.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from livekit import rtc

from bridge.config import ENV_PREFIX, STANDARD_ENV

pytestmark = pytest.mark.netns

AVATAR_ID = "0f9e8d7c-6b5a-4c3d-9e2f-1a2b3c4d5e6f"


class Process:
    def __init__(self, proc: subprocess.Popen[bytes], out: Path) -> None:
        self.proc, self.out = proc, out

    async def values(self, keys: set[str], within_s: float = 20.0) -> dict[str, str]:
        """KEY=VALUE (or ``export KEY=VALUE``) lines printed so far, once all ``keys`` are."""
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            found: dict[str, str] = {}
            for line in self.out.read_text(errors="replace").splitlines():
                line = line.removeprefix("export ")
                key, sep, value = line.partition("=")
                if sep and key.isupper() and " " not in key:
                    found[key] = shlex.split(value)[0] if value else ""
            if keys <= set(found):
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.out.read_text()}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no {keys} within {within_s}s: {self.out.read_text()}")
            await asyncio.sleep(0.1)


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Process]]:
    started: list[subprocess.Popen[bytes]] = []

    def run(*args: str) -> Process:
        out = tmp_path / f"out-{len(started)}.txt"
        with out.open("wb") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT, env=os.environ
            )
        started.append(proc)
        return Process(proc, out)

    try:
        yield run
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        for proc in started:
            assert proc.returncode == 0, f"stand-in exited {proc.returncode}"


async def _start_session(base_url: str, api_key: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as http:
        body = {"mode": "LITE", "avatar_id": AVATAR_ID, "video_settings": {"quality": "low"}}
        async with http.post(
            f"{base_url}/v1/sessions/token", json=body, headers={"X-API-KEY": api_key}
        ) as resp:
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["data"]["session_token"]
        async with http.post(
            f"{base_url}/v1/sessions/start", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 201, await resp.text()
            data: dict[str, str] = (await resp.json())["data"]
            return data


async def _avatar_video_frame(url: str, token: str) -> tuple[int, int]:
    room = rtc.Room()
    got: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()

    @room.on("track_subscribed")
    def _on(track: rtc.Track, *_: object) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO and not got.done():
            got.set_result(track)

    try:
        await asyncio.wait_for(room.connect(url, token), 15)
        stream = rtc.VideoStream(await asyncio.wait_for(got, 10))
        try:
            event = await asyncio.wait_for(anext(aiter(stream)), 10)
        finally:
            await stream.aclose()
        return event.frame.width, event.frame.height
    finally:
        await room.disconnect()


async def test_liveavatar_module_brings_its_livekit_room(spawn: Callable[..., Process]) -> None:
    proc = spawn("bridge.sim.liveavatar", "--api-key", "sk-hand")
    env = await proc.values({"LIVEAVATAR_BASE_URL", "LIVEKIT_URL"})
    session = await _start_session(env["LIVEAVATAR_BASE_URL"], "sk-hand")
    assert session["livekit_url"] == env["LIVEKIT_URL"]
    size = await _avatar_video_frame(session["livekit_url"], session["livekit_client_token"])
    assert size == (640, 360)


async def test_sim_module_prints_the_daemon_environment(spawn: Callable[..., Process]) -> None:
    proc = spawn("bridge.sim")
    keys = {
        "LIVEAVATAR_API_KEY",
        "LIVEAVATAR_BASE_URL",
        "STREAM_API_KEY",
        "STREAM_API_SECRET",
        "STREAM_BASE_URL",
        "AVATAR_BRIDGE_STREAM__WS_URL",
    }
    env = await proc.values(keys)
    # Every printed variable is one the daemon's configuration reads.
    assert all(k in STANDARD_ENV or k.startswith(ENV_PREFIX) for k in keys)
    session = await _start_session(env["LIVEAVATAR_BASE_URL"], env["LIVEAVATAR_API_KEY"])
    size = await _avatar_video_frame(session["livekit_url"], session["livekit_client_token"])
    assert size == (640, 360)
    async with aiohttp.ClientSession() as http, http.get(env["STREAM_BASE_URL"]) as resp:
        assert resp.status < 500
