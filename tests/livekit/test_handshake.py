"""Smoke test of the LiveKit handshake with the raw SDK: fails naming the step an upgrade broke.

The signalling surface moved recently in the SDK (the /rtc/v1 path, mid_to_track_id, the msid
format); when an upgrade changes it again, this says which step stopped working.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType
from aiortc import RTCPeerConnection, RTCSessionDescription
from livekit import api, rtc
from livekit.protocol import rtc as lkr

from bridge.sim.avatar_publisher import SdkAvatarPublisher
from bridge.sim.livekit_server import LiveKitStandIn, SyntheticVideoTrack, ToneAudioTrack
from tests.livekit.conftest import AVATAR, open_room


async def _step(name: str, aw: object, within_s: float) -> object:
    try:
        async with asyncio.timeout(within_s):
            return await aw  # type: ignore[misc]
    except TimeoutError:
        raise AssertionError(f"handshake step '{name}' timed out after {within_s}s") from None
    except Exception as exc:
        raise AssertionError(f"handshake step '{name}' failed: {exc!r}") from exc


@pytest.mark.netns
@pytest.mark.parametrize("single_pc", [True, False], ids=["rtc-v1", "rtc-legacy"])
async def test_sdk_handshake_steps(single_pc: bool) -> None:
    server = LiveKitStandIn(ping_interval_s=1, ping_timeout_s=4)
    await server.start()
    room = rtc.Room()
    try:
        await open_room(server, "smoke")
        subscribed: dict[int, rtc.Track] = {}
        both = asyncio.Event()

        @room.on("track_subscribed")
        def _on(
            track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
        ) -> None:
            assert p.identity == AVATAR
            subscribed[track.kind] = track
            if len(subscribed) == 2:
                both.set()

        options = rtc.RoomOptions(single_peer_connection=single_pc)
        token = server.mint_token("smoke", "daemon")
        await _step(
            "1 connect (signalling + join response + ICE/DTLS)",
            room.connect(server.url, token, options),
            10,
        )
        joins = server.counters.joins
        assert joins == 1, f"handshake step '1 connect': server saw {joins} joins"
        assert AVATAR in {p.identity for p in room.remote_participants.values()}, (
            "handshake step '2 join response': the avatar is not a remote participant"
        )
        await _step(
            "3 track_subscribed for audio and video (mid_to_track_id / msid)", both.wait(), 5
        )
        video = rtc.VideoStream(subscribed[rtc.TrackKind.KIND_VIDEO])
        audio = rtc.AudioStream(
            subscribed[rtc.TrackKind.KIND_AUDIO], sample_rate=48000, num_channels=1
        )
        try:
            vev = await _step("4 first decoded video frame", anext(aiter(video)), 5)
            assert isinstance(vev, rtc.VideoFrameEvent)
            assert (vev.frame.width, vev.frame.height) == (320, 180)
            t_end = time.monotonic() + 1.5
            peak = 0
            while time.monotonic() < t_end:
                aev = await _step("5 decoded audio", anext(aiter(audio)), 5)
                assert isinstance(aev, rtc.AudioFrameEvent)
                pcm = np.frombuffer(aev.frame.data, dtype=np.int16)
                peak = max(peak, int(np.abs(pcm).max()))
            assert peak > 2000, f"handshake step '5 decoded audio': silent (peak {peak})"
        finally:
            await video.aclose()
            await audio.aclose()
        assert server.counters.signal_requests["ping_req"] >= 1, (
            "handshake step '6 keep-alive': no ping_req in 1.5 s with ping_interval=1"
        )
        assert room.connection_state == rtc.ConnectionState.CONN_CONNECTED
        await _step("7 leave", room.disconnect(), 5)
        await asyncio.sleep(0.2)
        assert server.counters.leaves == 1, "handshake step '7 leave': server saw no leave"
        assert server.participants_in("smoke") == 0
    finally:
        await room.disconnect()
        await server.aclose()


async def test_validate_endpoint_checks_token() -> None:
    server = LiveKitStandIn(api_secret="s" * 32)
    await server.start()
    try:
        await open_room(server, "val")
        good = server.mint_token("val", "daemon")
        forged = (
            api.AccessToken("devkey", "x" * 32)
            .with_identity("daemon")
            .with_grants(api.VideoGrants(room_join=True, room="val"))
            .to_jwt()
        )
        other_room = server.mint_token("nope", "daemon")
        base = server.url.replace("ws://", "http://")
        async with ClientSession() as http:
            for path in ("/rtc/validate", "/rtc/v1/validate"):
                cases = [(good, 200), (forged, 401), (other_room, 404), ("", 401)]
                for token, status in cases:
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    async with http.get(base + path, headers=headers) as resp:
                        assert resp.status == status, (path, status, await resp.text())
    finally:
        await server.aclose()


async def test_every_answer_carries_cors_headers() -> None:
    """A browser can only read an answer with CORS headers: a 401 must say "not allowed"."""
    server = LiveKitStandIn(api_secret="s" * 32)
    await server.start()
    origin = "http://app.example"
    try:
        await open_room(server, "cors")
        forged = (
            api.AccessToken("devkey", "x" * 32)
            .with_identity("daemon")
            .with_grants(api.VideoGrants(room_join=True, room="cors"))
            .to_jwt()
        )
        base = server.url.replace("ws://", "http://")
        bad = {"Origin": origin, "Authorization": f"Bearer {forged}"}
        async with ClientSession() as http:
            # The JS SDK dials the WebSocket with the token in the query, then validates.
            for path, status in [
                (f"/rtc/v1?access_token={forged}", 401),
                ("/rtc", 401),
                ("/rtc/validate", 401),
                ("/rtc/v1/validate", 401),
                ("/no/such/path", 404),
            ]:
                async with http.get(base + path, headers=bad) as resp:
                    assert resp.status == status, (path, await resp.text())
                    assert resp.headers.get("Access-Control-Allow-Origin") == origin, path
            good = {"Origin": origin, "Authorization": f"Bearer {server.mint_token('cors', 'x')}"}
            async with http.get(base + "/rtc/validate", headers=good) as resp:
                assert resp.status == 200
                assert resp.headers.get("Access-Control-Allow-Origin") == origin
            preflight = {
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            }
            for path in ("/rtc/validate", "/rtc/v1/validate", "/rtc/v1"):
                async with http.options(base + path, headers=preflight) as resp:
                    assert resp.status == 204, path
                    assert resp.headers.get("Access-Control-Allow-Origin") == origin
                    allowed = resp.headers.get("Access-Control-Allow-Headers", "").lower()
                    assert "authorization" in allowed or allowed == "*"
                    assert "GET" in resp.headers.get("Access-Control-Allow-Methods", "")
            # Without an Origin (a native client) any origin is allowed.
            async with http.get(base + "/rtc/validate") as resp:
                assert resp.status == 401
                assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    finally:
        await server.aclose()


@pytest.mark.netns
async def test_track_info_has_the_published_size_when_a_subscriber_joins() -> None:
    """The first subscriber sees the size in TrackInfo before any frame was produced."""
    from bridge.sim.avatar import AvatarRenderer

    server = LiveKitStandIn()
    await server.start()
    renderer = AvatarRenderer(854, 480, 30)  # its tracks carry no size attributes
    room = rtc.Room()
    try:
        await server.create_room(
            "size",
            avatar_identity=AVATAR,
            video=renderer.video_track(),
            audio=renderer.audio_track(),
            video_codec="VP8",
            video_size=(854, 480),
        )
        await room.connect(server.url, server.mint_token("size", "daemon"))
        avatar = next(p for p in room.remote_participants.values() if p.identity == AVATAR)
        video = [
            pub
            for pub in avatar.track_publications.values()
            if pub.kind == rtc.TrackKind.KIND_VIDEO
        ]
        assert [(pub.width, pub.height) for pub in video] == [(854, 480)]
    finally:
        await room.disconnect()
        await server.aclose()
        await renderer.aclose()


async def _signal(ws: ClientWebSocketResponse, within_s: float) -> lkr.SignalResponse:
    async with asyncio.timeout(within_s):
        while True:
            msg = await ws.receive()
            assert msg.type == WSMsgType.BINARY, f"signalling closed: {msg}"
            res = lkr.SignalResponse()
            res.ParseFromString(msg.data)
            if res.WhichOneof("message") != "pong_resp":
                return res


async def _answer(
    pc: RTCPeerConnection, ws: ClientWebSocketResponse, offer: lkr.SessionDescription
) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    answer = lkr.SessionDescription(type="answer", sdp=pc.localDescription.sdp, id=offer.id)
    await ws.send_bytes(lkr.SignalRequest(answer=answer).SerializeToString())


@pytest.mark.netns
async def test_legacy_subscriber_gets_one_offer_at_a_time() -> None:
    """The avatar publishing while a legacy subscriber's first offer is unanswered: the second
    offer waits for that answer (as LiveKit's transport does). The CI failure this pins: the
    browser's answer to offer 1 applied against offer 2, refused, and the SDK gave up."""
    server = LiveKitStandIn()
    await server.start()
    await server.open_room("race")
    pc = RTCPeerConnection()
    avatar = SdkAvatarPublisher(
        SyntheticVideoTrack(320, 180, fps=15), ToneAudioTrack(), width=320, height=180, codec="VP8"
    )
    try:
        async with ClientSession() as http:
            token = server.mint_token("race", "viewer")
            url = server.url.replace("ws://", "http://") + f"/rtc?access_token={token}"
            async with http.ws_connect(url) as ws:
                assert (await _signal(ws, 10)).WhichOneof("message") == "join"
                first = await _signal(ws, 10)
                assert first.WhichOneof("message") == "offer", first
                # Unanswered: the avatar now publishes, and the server wants a new offer.
                await avatar.start(server.url, server.mint_token("race", "avatar"))
                async with asyncio.timeout(10):
                    while server.counters.offers_deferred == 0:
                        seen = await _signal(ws, 10)
                        assert seen.WhichOneof("message") != "offer", (
                            "a second offer while the first was unanswered"
                        )
                await _answer(pc, ws, first.offer)
                second = await _signal(ws, 10)
                while second.WhichOneof("message") != "offer":
                    second = await _signal(ws, 10)
                assert second.offer.id == first.offer.id + 1
                lines = second.offer.sdp.splitlines()
                kinds = [line.split()[0] for line in lines if line.startswith("m=")]
                assert kinds.count("m=audio") == 1 and kinds.count("m=video") == 1, kinds
                await _answer(pc, ws, second.offer)
                async with asyncio.timeout(10):
                    while server.counters.renegotiations < 1:  # noqa: ASYNC110 - a plain counter
                        await asyncio.sleep(0.05)
        assert server.counters.signal_request_failures == 0
        assert server.counters.offers_deferred == 1
    finally:
        await pc.close()
        await avatar.aclose()
        await server.aclose()
