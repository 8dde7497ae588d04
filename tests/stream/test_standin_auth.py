"""The stand-in's own auth rules and REST shapes, and the publisher's join errors (no media)."""

from __future__ import annotations

import time

import aiohttp
import jwt
import pytest
from getstream import AsyncStream
from getstream.models import CallRequest
from getstream.video.rtc.pb.stream.video.sfu.signal_rpc import signal_pb2 as sig

from bridge.errors import BridgeError, ErrorCode
from bridge.sim.stream import StreamStandIn
from bridge.stream.publisher import PublisherOptions, StreamPublisher
from bridge.stream.relay_publisher import RelayPublisherOptions
from tests.stream._support import Recorder, make_publisher

TIMEOUT = aiohttp.ClientTimeout(total=5)


def user_token(secret: str, user_id: str = "alice", **claims: object) -> str:
    return jwt.encode({"user_id": user_id, **claims}, secret, algorithm="HS256")


async def post_join(
    standin: StreamStandIn, api_key: str, token: str, user_id: str = "alice"
) -> tuple[int, dict[str, object]]:
    url = f"{standin.base_url}/api/v2/video/call/default/c1/join"
    params = {"api_key": api_key, "user_id": user_id, "connection_id": "x"}
    headers = {"Authorization": token, "stream-auth-type": "jwt"}
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.post(url, params=params, headers=headers, json={"create": True}) as resp,
    ):
        return resp.status, await resp.json()


async def test_join_with_valid_token_returns_credentials(standin: StreamStandIn) -> None:
    status, body = await post_join(standin, standin.api_key, user_token(standin.api_secret))
    assert status == 200
    creds = body["credentials"]
    assert isinstance(creds, dict)
    assert creds["server"]["ws_endpoint"].startswith("ws://127.0.0.1:")
    assert creds["token"]
    caps = body["own_capabilities"]
    assert isinstance(caps, list) and {"send-audio", "send-video"} <= set(caps)


@pytest.mark.parametrize(
    ("case", "code"),
    [("bad_key", 2), ("bad_signature", 43), ("expired", 40), ("other_user", 4)],
)
async def test_join_refusals_have_streams_error_shape(
    standin: StreamStandIn, case: str, code: int
) -> None:
    key, secret, user = standin.api_key, standin.api_secret, "alice"
    claims: dict[str, object] = {}
    if case == "bad_key":
        key = "not-the-key"
    elif case == "bad_signature":
        secret = "not-the-secret"
    elif case == "expired":
        claims = {"exp": int(time.time()) - 60}
    else:
        user = "mallory"
    token = jwt.encode({"user_id": "alice", **claims}, secret, algorithm="HS256")
    status, body = await post_join(standin, key, token, user_id=user)
    assert status == 401
    assert body["code"] == code
    assert body["StatusCode"] == 401
    assert isinstance(body["message"], str) and body["message"]
    assert standin.calls() == []  # a refused join creates nothing


async def test_denied_join_is_403_not_allowed(standin: StreamStandIn) -> None:
    standin.deny_join("default", "c1")
    status, body = await post_join(standin, standin.api_key, user_token(standin.api_secret))
    assert (status, body["code"]) == (403, 17)
    standin.deny_join("default", "c1", None)
    status, _ = await post_join(standin, standin.api_key, user_token(standin.api_secret))
    assert status == 200


async def test_coordinator_ws_refuses_bad_signature(standin: StreamStandIn) -> None:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.ws_connect(standin.ws_url, params={"api_key": standin.api_key}) as ws,
    ):
        await ws.send_json({"token": user_token("wrong"), "user_details": {"id": "alice"}})
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "connection.error"
        assert first["error"]["code"] == 43
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.ws_connect(standin.ws_url, params={"api_key": standin.api_key}) as ws,
    ):
        await ws.send_json(
            {"token": user_token(standin.api_secret), "user_details": {"id": "alice"}}
        )
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "connection.ok" and first["connection_id"]


async def test_twirp_requires_the_sfu_token(standin: StreamStandIn) -> None:
    url = f"{standin.base_url}/twirp/stream.video.sfu.signal.SignalServer/SendStats"
    body = sig.SendStatsRequest(session_id="nobody").SerializeToString()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        headers = {"Content-Type": "application/protobuf", "Authorization": "Bearer forged"}
        async with http.post(url, data=body, headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["code"] == "unauthenticated"
        _, join = await post_join(standin, standin.api_key, user_token(standin.api_secret))
        token = join["credentials"]["token"]  # type: ignore[index]
        headers["Authorization"] = f"Bearer {token}"
        async with http.post(url, data=body, headers=headers) as resp:
            assert resp.status == 200
            sig.SendStatsResponse.FromString(await resp.read())


async def test_sdk_rest_client_get_or_create(standin: StreamStandIn) -> None:
    """The SDK's strict REST models decode the stand-in's fully populated call response."""
    client = AsyncStream(
        api_key=standin.api_key, api_secret=standin.api_secret, base_url=standin.base_url
    )
    try:
        call = client.video.call("default", "rest-call")
        resp = await call.get_or_create(data=CallRequest(created_by_id="bob"))
    finally:
        await client.aclose()
    assert resp.data.call.cid == "default:rest-call"
    assert resp.data.call.created_by.id == "bob"
    assert "send-video" in {getattr(c, "value", c) for c in resp.data.own_capabilities}
    assert standin.stats("default", "rest-call")["joins"] == 0
    # The default call type's settings, not zeros: what a browser SDK publishes and starts with.
    video, audio = resp.data.call.settings.video, resp.data.call.settings.audio
    assert video.enabled and video.camera_default_on and video.camera_facing == "front"
    res = video.target_resolution
    assert (res.width, res.height) == (1280, 720) and res.bitrate and res.bitrate > 0
    assert audio.mic_default_on and audio.speaker_default_on
    assert audio.default_device == "speaker"


async def test_join_returns_the_call_types_settings(standin: StreamStandIn) -> None:
    status, body = await post_join(standin, standin.api_key, user_token(standin.api_secret))
    assert status == 200
    settings = body["call"]["settings"]  # type: ignore[index]
    assert settings["video"]["target_resolution"]["height"] == 720
    assert settings["video"]["camera_default_on"] is True
    assert settings["audio"]["mic_default_on"] is True


@pytest.mark.parametrize("path", ["join", ""])
async def test_unknown_call_type_is_refused_as_does_not_exist(
    standin: StreamStandIn, path: str
) -> None:
    url = f"{standin.base_url}/api/v2/video/call/no_such_type/c1" + (f"/{path}" if path else "")
    params = {"api_key": standin.api_key, "user_id": "alice"}
    headers = {"Authorization": user_token(standin.api_secret), "stream-auth-type": "jwt"}
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.post(url, params=params, headers=headers, json={"create": True}) as resp,
    ):
        status, body = resp.status, await resp.json()
    assert status == 404
    assert body["code"] == 16 and body["StatusCode"] == 404
    assert "no_such_type" in body["message"]
    assert standin.calls() == []


async def test_twirp_unknown_method_is_bad_route_and_known_ones_answer(
    standin: StreamStandIn,
) -> None:
    _, join = await post_join(standin, standin.api_key, user_token(standin.api_secret))
    token = join["credentials"]["token"]  # type: ignore[index]
    headers = {"Content-Type": "application/protobuf", "Authorization": f"Bearer {token}"}
    base = f"{standin.base_url}/twirp/stream.video.sfu.signal.SignalServer/"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with http.post(base + "NoSuchMethod", data=b"", headers=headers) as resp:
            assert resp.status == 404
            body = await resp.json()
        assert body["code"] == "bad_route" and "NoSuchMethod" in body["msg"]
        # In Stream's service but not modelled by the stand-in: its default (empty) response.
        request = sig.StartNoiseCancellationRequest(session_id="s").SerializeToString()
        async with http.post(
            base + "StartNoiseCancellation", data=request, headers=headers
        ) as resp:
            assert resp.status == 200
            reply = sig.StartNoiseCancellationResponse.FromString(await resp.read())
    assert not reply.HasField("error")


@pytest.mark.parametrize("case", ["bad_secret", "bad_key", "denied"])
async def test_publisher_bad_credentials_raise_stream_auth(
    standin: StreamStandIn, case: str
) -> None:
    rec = Recorder()
    overrides: dict[str, object] = {}
    if case == "bad_secret":
        overrides["api_secret"] = "not-the-secret"
    elif case == "bad_key":
        overrides["api_key"] = "not-the-key"
    else:
        standin.deny_join("default", "auth-call")
    pub = make_publisher(standin, rec, "auth-call", **overrides)
    with pytest.raises(BridgeError) as info:
        await pub.start()
    err = info.value
    assert err.code == ErrorCode.STREAM_AUTH
    assert "auth-call" in err.message and "STREAM_API_KEY" in err.message
    if case == "denied":
        assert "JoinCall" in err.message
    await pub.aclose()
    assert rec.failures == [] and rec.events == []


async def test_publisher_unreachable_is_stream_failed() -> None:
    rec = Recorder()
    opts = PublisherOptions(
        "k", "s", base_url="http://127.0.0.1:9", join_timeout_s=3.0, leave_timeout_s=1.0
    )
    pub = StreamPublisher(opts, "default", "c", rec, rec.fail)
    with pytest.raises(BridgeError) as info:
        await pub.start()
    assert info.value.code == ErrorCode.STREAM_FAILED
    await pub.aclose()


def test_ws_url_is_derived_from_a_non_production_base_url() -> None:
    opts = PublisherOptions("k", "s", base_url="http://127.0.0.1:3030")
    assert opts.resolved_ws_url() == "ws://127.0.0.1:3030/api/v2/connect"
    assert PublisherOptions("k", "s", base_url="https://h.example").resolved_ws_url() == (
        "wss://h.example/api/v2/connect"
    )
    # Stream's cloud: what the SDK dials by default, for both Stream clients alike.
    for prod in (
        PublisherOptions("k", "s"),
        PublisherOptions("k", "s", base_url="https://video.stream-io-api.com"),
        RelayPublisherOptions("k", "s", base_url="https://chat.stream-io-api.com/"),
    ):
        assert prod.resolved_ws_url() == "wss://video.stream-io-api.com/api/v2/connect"
    relay = RelayPublisherOptions("k", "s", base_url="http://127.0.0.1:3030")
    assert relay.resolved_ws_url() == opts.resolved_ws_url()
