"""The LiveAvatar stand-in's own rules, exercised with a plain HTTP/WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from prometheus_client import REGISTRY

from bridge.sim.avatar import AvatarRenderer
from bridge.sim.liveavatar import (
    SANDBOX_AVATAR_ID,
    START_PROFILES,
    LiveAvatarStandIn,
    StartDelays,
    _HeldTrack,
)

from .conftest import API_KEY, AVATAR

LITE = {"mode": "LITE", "avatar_id": AVATAR, "max_session_duration": 3600}


async def post(
    http: aiohttp.ClientSession, url: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    async with http.post(url, json=body, headers=hdrs) as resp:
        return resp.status, await resp.json(content_type=None)


async def token(
    http: aiohttp.ClientSession, sim: LiveAvatarStandIn, body: dict[str, Any] = LITE
) -> tuple[str, str]:
    status, data = await post(http, f"{sim.base_url}/v1/sessions/token", body, X_API_KEY=API_KEY)
    assert status == 200, data
    return data["data"]["session_id"], data["data"]["session_token"]


async def started(
    http: aiohttp.ClientSession, sim: LiveAvatarStandIn, body: dict[str, Any] = LITE
) -> dict[str, Any]:
    _, tok = await token(http, sim, body)
    status, data = await post(
        http, f"{sim.base_url}/v1/sessions/start", {}, Authorization=f"Bearer {tok}"
    )
    assert status == 201, data
    return dict(data["data"])


async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str, wait_s: float = 5.0) -> Any:
    deadline = time.monotonic() + wait_s
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        data = json.loads(msg.data)
        if data["type"] == kind:
            return data


async def test_auth_kinds(http: aiohttp.ClientSession, standin: LiveAvatarStandIn) -> None:
    base = standin.base_url
    assert (await post(http, f"{base}/v1/sessions/token", LITE))[0] == 401
    assert (await post(http, f"{base}/v1/sessions/token", LITE, X_API_KEY="nope"))[0] == 401
    sid, tok = await token(http, standin)
    # A session token cannot mint; an API key cannot start.
    bearer = f"Bearer {tok}"
    assert (await post(http, f"{base}/v1/sessions/token", LITE, Authorization=bearer))[0] == 401
    status, body = await post(http, f"{base}/v1/sessions/start", {}, X_API_KEY=API_KEY)
    assert status == 401 and set(body) == {"code", "data", "message"}
    status, body = await post(http, f"{base}/v1/sessions/start", {}, Authorization=bearer)
    assert status == 201 and body["data"]["ws_url"] and body["data"]["livekit_agent_token"]
    # Single use.
    assert (await post(http, f"{base}/v1/sessions/start", {}, Authorization=bearer))[0] == 400
    # Stop accepts the session token (without a body id) ...
    stop = {"reason": "USER_CLOSED"}
    assert (await post(http, f"{base}/v1/sessions/stop", stop, Authorization=bearer))[0] == 200
    assert standin.live_sessions == []
    # ... or the API key with an id.
    data = await started(http, standin)
    body2 = {"session_id": data["session_id"], "reason": "USER_CLOSED"}
    assert (await post(http, f"{base}/v1/sessions/stop", body2, X_API_KEY=API_KEY))[0] == 200
    assert (await post(http, f"{base}/v1/sessions/stop", body2))[0] == 401
    assert standin.live_sessions == []
    assert sid in standin.sessions


async def test_validation_422_shapes(
    http: aiohttp.ClientSession, standin: LiveAvatarStandIn
) -> None:
    url = f"{standin.base_url}/v1/sessions/token"
    status, body = await post(http, url, {"mode": "LITE"}, X_API_KEY=API_KEY)
    assert status == 422
    assert body["detail"][0] == {
        "loc": ["body", "avatar_id"],
        "msg": "Field required",
        "type": "missing",
    }
    bad = LITE | {"video_settings": {"quality": "ultra", "encoding": "AV1"}}
    status, body = await post(http, url, bad, X_API_KEY=API_KEY)
    assert status == 422
    assert [d["loc"][-1] for d in body["detail"]] == ["quality", "encoding"]
    async with http.post(url, data=b"{nope", headers={"X-API-KEY": API_KEY}) as resp:
        assert resp.status == 422
        assert (await resp.json())["detail"][0]["type"] == "json_invalid"
    stop = {"session_id": "x", "reason": "BORED"}
    status, body = await post(http, f"{standin.base_url}/v1/sessions/stop", stop, X_API_KEY=API_KEY)
    assert status == 422 and body["detail"][0]["loc"] == ["body", "reason"]


async def test_sandbox_and_mode(http: aiohttp.ClientSession, standin: LiveAvatarStandIn) -> None:
    url = f"{standin.base_url}/v1/sessions/token"
    status, body = await post(http, url, LITE | {"is_sandbox": True}, X_API_KEY=API_KEY)
    assert status == 400 and "sandbox" in body["message"].lower()
    sandbox = LITE | {"is_sandbox": True, "avatar_id": SANDBOX_AVATAR_ID}
    data = await started(http, standin, sandbox)
    assert data["max_session_duration"] == 60
    # Mode defaults to FULL: no ws_url then.
    full = {"avatar_id": AVATAR, "max_session_duration": 60}
    assert (await started(http, standin, full))["ws_url"] is None
    over = LITE | {"max_session_duration": 10**6}
    assert (await post(http, url, over, X_API_KEY=API_KEY))[0] == 400


async def test_ws_rules(http: aiohttp.ClientSession, standin: LiveAvatarStandIn) -> None:
    standin.faults.connect_delay_s = 0.3
    data = await started(http, standin)
    session = standin.sessions[data["session_id"]]
    async with http.ws_connect(data["ws_url"], max_msg_size=0) as ws:
        first = json.loads((await ws.receive(timeout=5)).data)
        assert first == {"type": "session.state_updated", "state": "connecting"}
        # Before connected: silently dropped, no error.
        await ws.send_str(json.dumps({"type": "agent.speak", "event_id": "e0", "audio": "AAAA"}))
        assert await next_of(ws, "session.state_updated") == {
            "type": "session.state_updated",
            "state": "connected",
        }
        assert session.dropped_before_connected == 1
        renderer = session.renderer
        assert renderer is not None and renderer.received_bytes == {}
        # Bad base64 is an error event, the connection stays.
        await ws.send_str(json.dumps({"type": "agent.speak", "event_id": "e1", "audio": "@@@"}))
        err = await next_of(ws, "error")
        assert err["error"] == {
            "type": "invalid_request_error",
            "message": "invalid base64 audio data",
        }
        # Good audio is acked and played; unknown types give a warning.
        pcm = (np.sin(np.arange(4800) / 5) * 9000).astype(np.int16).tobytes()
        audio = base64.b64encode(pcm).decode()
        await ws.send_str(json.dumps({"type": "agent.speak", "event_id": "e1", "audio": audio}))
        assert (await next_of(ws, "agent.audio_buffer_appended"))["event_id"] == "e1"
        await ws.send_str(json.dumps({"type": "agent.speak_end", "event_id": "e1"}))
        assert await next_of(ws, "agent.audio_buffer_committed")
        started_ev = await next_of(ws, "agent.speak_started")
        assert started_ev == {"type": "agent.speak_started", "event_id": "e1", "task": {"id": "e1"}}
        assert (await next_of(ws, "agent.speak_ended"))["event_id"] == "e1"
        await ws.send_str(json.dumps({"type": "agent.dance"}))
        assert "agent.dance" in (await next_of(ws, "warning"))["warning"]["message"]
        # The 1 MB cap closes the connection (1009, message too big).
        big = "A" * (1 << 20)
        await ws.send_str(json.dumps({"type": "agent.speak", "event_id": "e2", "audio": big}))
        msg = await ws.receive(timeout=5)
        while msg.type == aiohttp.WSMsgType.TEXT:
            msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009
    assert renderer.received_bytes == {"e1": len(pcm)}


async def test_ws_rejects_bad_secret(
    http: aiohttp.ClientSession, standin: LiveAvatarStandIn
) -> None:
    data = await started(http, standin)
    bad = data["ws_url"].split("?")[0] + "?t=wrong"
    try:
        async with http.ws_connect(bad):
            raise AssertionError("connected with a wrong secret")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 403


async def test_idle_timeout_closes_session(
    http: aiohttp.ClientSession, standin: LiveAvatarStandIn
) -> None:
    data = await started(http, standin)
    async with http.ws_connect(data["ws_url"]) as ws:
        assert await next_of(ws, "session.state_updated")  # connecting
        assert (await next_of(ws, "session.state_updated"))["state"] == "connected"
        t0 = time.monotonic()
        states: list[str] = []
        while len(states) < 2:
            ev = await next_of(ws, "session.state_updated", wait_s=5)
            assert ev is not None
            states.append(ev["state"])
        # 5 min scaled by 0.005 = 1.5 s.
        assert 1.0 < time.monotonic() - t0 < 3.0
        assert states == ["closing", "closed"]
        assert (await ws.receive(timeout=5)).type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
        )
    assert standin.sessions[data["session_id"]].end_reason == "IDLE_TIMEOUT"
    assert standin.live_sessions == []
    assert standin.sessions[data["session_id"]].renderer.closed  # type: ignore[union-attr]


async def test_fault_knobs(http: aiohttp.ClientSession, standin: LiveAvatarStandIn) -> None:
    base = standin.base_url
    standin.faults.delay_s = 0.2
    t0 = time.monotonic()
    sid, tok = await token(http, standin)
    assert time.monotonic() - t0 >= 0.2
    standin.faults.delay_s = 0
    standin.faults.start_status, standin.faults.start_failures = 429, 1
    bearer = f"Bearer {tok}"
    assert (await post(http, f"{base}/v1/sessions/start", {}, Authorization=bearer))[0] == 429
    assert (await post(http, f"{base}/v1/sessions/start", {}, Authorization=bearer))[0] == 201
    standin.faults.refuse_stops = 1
    body = {"session_id": sid, "reason": "USER_CLOSED"}
    assert (await post(http, f"{base}/v1/sessions/stop", body, X_API_KEY=API_KEY))[0] == 503
    assert standin.live_sessions == [sid]
    assert (await post(http, f"{base}/v1/sessions/stop", body, X_API_KEY=API_KEY))[0] == 200
    assert standin.live_sessions == []
    unknown = {"session_id": "nope", "reason": "USER_CLOSED"}
    assert (await post(http, f"{base}/v1/sessions/stop", unknown, X_API_KEY=API_KEY))[0] == 404
    await asyncio.sleep(0)


async def test_start_path_delays_are_modelled(
    http: aiohttp.ClientSession, standin: LiveAvatarStandIn
) -> None:
    standin.options.delays = StartDelays(token_s=0.2, start_s=0.3, connected_s=0.2)
    t0 = time.monotonic()
    _, tok = await token(http, standin)
    t_token = time.monotonic()
    status, data = await post(
        http, f"{standin.base_url}/v1/sessions/start", {}, Authorization=f"Bearer {tok}"
    )
    t_start = time.monotonic()
    assert status == 201
    # Lower bounds only: each step takes at least its modelled time.
    assert t_token - t0 >= 0.2
    assert t_start - t_token >= 0.3
    async with http.ws_connect(data["data"]["ws_url"]) as ws:
        t_ws = time.monotonic()
        assert (await next_of(ws, "session.state_updated"))["state"] == "connecting"
        assert (await next_of(ws, "session.state_updated"))["state"] == "connected"
        assert time.monotonic() - t_ws >= 0.2


async def test_avatar_media_is_held_until_it_joins_and_keys() -> None:
    renderer = AvatarRenderer(320, 240, 30, 0.05)
    renderer.start()
    release = time.monotonic() + 0.3
    video = _HeldTrack(renderer.video_track(), release)
    try:
        frame = await asyncio.wait_for(video.recv(), 5)
        assert time.monotonic() >= release
        assert (frame.width, frame.height) == (320, 240)
        assert START_PROFILES["instant"] == StartDelays()
        realistic = START_PROFILES["realistic"]
        assert realistic.avatar_join_s > 0 and realistic.first_keyframe_s > 0
    finally:
        video.stop()
        await renderer.aclose()


async def test_injected_drop_ends_the_session_like_the_provider(
    http: aiohttp.ClientSession, standin: LiveAvatarStandIn
) -> None:
    data = await started(http, standin)
    sid = data["session_id"]
    async with http.ws_connect(data["ws_url"]) as ws:
        assert (await next_of(ws, "session.state_updated"))["state"] == "connecting"
        assert (await next_of(ws, "session.state_updated"))["state"] == "connected"
        await standin.drop(sid)
        assert (await next_of(ws, "session.state_updated"))["state"] == "closing"
        assert (await next_of(ws, "session.state_updated"))["state"] == "closed"
    assert standin.sessions[sid].end_reason == "SERVER_ERROR"
    assert standin.drops == [sid]
    assert standin.live_sessions == []
    # The timed fault drops every session that long after its start.
    standin.faults.drop_session_after_s = 0.3
    later = await started(http, standin)
    async with asyncio.timeout(10):
        while standin.sessions[later["session_id"]].end_reason is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert standin.sessions[later["session_id"]].end_reason == "SERVER_ERROR"
    assert standin.drops == [sid, later["session_id"]]


async def test_session_cap_ends_the_session(
    http: aiohttp.ClientSession, standin: LiveAvatarStandIn
) -> None:
    # 200 nominal seconds at time_scale 0.005 = 1 s; keep-alives do not extend the cap.
    data = await started(http, standin, {**LITE, "max_session_duration": 200})
    async with http.ws_connect(data["ws_url"]) as ws:

        async def keep_alive() -> None:
            for _ in range(200):  # bounded: 20 s at most
                await ws.send_str(json.dumps({"type": "session.keep_alive"}))
                await asyncio.sleep(0.1)

        sender = asyncio.create_task(keep_alive())
        try:
            states = []
            while "closed" not in states:
                ev = await next_of(ws, "session.state_updated", wait_s=10)
                assert ev is not None
                states.append(ev["state"])
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await sender
    assert standin.sessions[data["session_id"]].end_reason == "MAX_DURATION_REACHED"


async def test_a_client_gone_mid_request_is_not_a_server_error(
    standin: LiveAvatarStandIn, http: aiohttp.ClientSession, caplog: Any
) -> None:
    """A daemon stopped while its pool refills leaves mid-request: the stand-in answers it as a
    bad request that goes nowhere (``liveavatar_client_gone``), starts nothing, logs no server
    error (it used to log aiohttp's traceback at ERROR), and serves on."""

    def answered_400() -> float:
        labels = {"endpoint": "token", "status": "400"}
        return REGISTRY.get_sample_value("sim_liveavatar_requests_total", labels) or 0.0

    url = urlsplit(standin.base_url)
    _, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        b"POST /v1/sessions/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-API-KEY: {API_KEY}\r\nContent-Length: 400\r\n\r\n".encode()
        + b'{"mode": "LITE"'
    )
    await writer.drain()
    before, answered = standin.requests["token"], answered_400()
    for _ in range(500):  # bounded: the handler is reading the body
        if standin.requests["token"] > before:
            break
        await asyncio.sleep(0.01)
    writer.close()
    await writer.wait_closed()
    for _ in range(500):  # bounded: the handler sees the reset
        if answered_400() > answered:
            break
        await asyncio.sleep(0.01)
    assert answered_400() == answered + 1
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert standin.sessions == {}
    assert (await token(http, standin)) is not None  # and it serves the next client
