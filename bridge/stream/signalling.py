"""Stream's signalling as the relay publisher speaks it: wire helpers for the coordinator
(JSON over a WebSocket and REST) and the SFU (protobuf over a WebSocket, and Twirp).

Stateless functions: the connection state (sockets, tokens, the session id) lives in
:class:`bridge.stream.relay_publisher.StreamRelayPublisher`, which drives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
from aiortc import RTCIceServer
from google.protobuf.message import DecodeError

from bridge.stream.join import StreamJoinOptions
from bridge.stream.sfu_pb import events as ev
from bridge.stream.sfu_pb import models as pbm

# The SDK's generated protobuf modules are untyped for mypy: messages are Any.
Pb = Any

TWIRP_SERVICE = "stream.video.sfu.signal.SignalServer"
NET_TIMEOUT_S = 5.0


class SfuRefused(Exception):
    """The SFU answered with an error (Twirp error or a ``models.Error`` in the response)."""


class AuthRefused(Exception):
    """The coordinator refused the credentials or the join."""


@dataclass(frozen=True, slots=True)
class SfuCredentials:
    """What the coordinator's join call answers: where and how to reach the call's SFU."""

    ws_url: str
    twirp_url: str
    token: str
    ice_servers: list[RTCIceServer]


async def connect_coordinator(
    http: aiohttp.ClientSession, opts: StreamJoinOptions
) -> tuple[aiohttp.ClientWebSocketResponse, str, str]:
    """Open the coordinator WebSocket as ``opts.user_id``; returns it, the user token and the
    connection id (``connection.ok``). The caller owns (and closes) the socket."""
    user_token = jwt.encode(
        {"user_id": opts.user_id, "iat": int(time.time()) - 5}, opts.api_secret, "HS256"
    )
    query = urlencode({"api_key": opts.api_key, "user_id": opts.user_id, "stream-auth-type": "jwt"})
    ws = await http.ws_connect(
        f"{opts.resolved_ws_url()}?{query}", heartbeat=None, timeout=ws_timeout()
    )
    try:
        await ws.send_json(
            {
                "token": user_token,
                "user_details": {"id": opts.user_id, "name": opts.user_name},
                "products": ["video"],
            }
        )
        first = await ws.receive(timeout=opts.join_timeout_s)
        hello = json_object(first.data) if first.type == aiohttp.WSMsgType.TEXT else {}
        if hello.get("type") == "connection.error":
            raise AuthRefused(stream_error_message(hello.get("error")))
        connection_id = hello.get("connection_id")
        if hello.get("type") != "connection.ok" or not connection_id:
            raise ConnectionError(f"coordinator WebSocket answered {first.type.name} {hello}")
    except BaseException:
        await close_ws(ws)
        raise
    return ws, user_token, str(connection_id)


async def join_call(
    http: aiohttp.ClientSession,
    opts: StreamJoinOptions,
    call_type: str,
    call_id: str,
    user_token: str,
    connection_id: str,
) -> SfuCredentials:
    """``POST .../call/{type}/{id}/join`` (creating the call): the SFU credentials."""
    url = f"{opts.resolved_base_url()}/api/v2/video/call/{call_type}/{call_id}/join"
    async with http.post(
        url,
        params={"api_key": opts.api_key, "user_id": opts.user_id, "connection_id": connection_id},
        json={"location": "auto", "create": True},
        headers={"Authorization": user_token, "stream-auth-type": "jwt"},
        timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT_S),
    ) as resp:
        body = json_object(await resp.text())
        if resp.status in (401, 403):
            raise AuthRefused(stream_error_message(body))
        if resp.status >= 300:
            raise ConnectionError(f"join call answered {resp.status}: {stream_error_message(body)}")
    creds = body.get("credentials") or {}
    server = creds.get("server") or {}
    out = SfuCredentials(
        ws_url=str(server.get("ws_endpoint") or ""),
        twirp_url=str(server.get("url") or "").rstrip("/"),
        token=str(creds.get("token") or ""),
        ice_servers=ice_servers(creds.get("ice_servers")),
    )
    if not (out.ws_url and out.twirp_url and out.token):
        raise ConnectionError("join call response carries no SFU credentials")
    return out


async def open_sfu(
    http: aiohttp.ClientSession,
    ws_url: str,
    opts: StreamJoinOptions,
    session_id: str,
    cid: str,
    join_request: Pb,
) -> tuple[aiohttp.ClientWebSocketResponse, Pb]:
    """Open the SFU WebSocket, send ``join_request``; the socket and the ``JoinResponse``."""
    query = urlencode(
        {
            "user_id": opts.user_id,
            "api_key": opts.api_key,
            "user_session_id": session_id,
            "cid": cid,
        }
    )
    ws = await http.ws_connect(f"{ws_url}?{query}", heartbeat=None, timeout=ws_timeout())
    try:
        await ws_send(ws, ev.SfuRequest(join_request=join_request))
        async with asyncio.timeout(opts.join_timeout_s):
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.BINARY:
                    raise ConnectionError(f"SFU WebSocket closed before joining ({msg.type})")
                event = ev.SfuEvent.FromString(msg.data)
                kind = event.WhichOneof("event_payload")
                if kind == "error":
                    raise SfuRefused(sfu_error_text(event.error.error))
                if kind == "join_response":
                    return ws, event.join_response
    except BaseException:
        await close_ws(ws)
        raise


async def twirp(
    http: aiohttp.ClientSession,
    base_url: str,
    token: str,
    method: str,
    request: Pb,
    response_type: Any,
) -> Pb:
    """One SFU Twirp call; raises :class:`SfuRefused` when the SFU says no."""
    async with http.post(
        f"{base_url}/{TWIRP_SERVICE}/{method}",
        data=request.SerializeToString(),
        headers={"Content-Type": "application/protobuf", "Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=NET_TIMEOUT_S),
    ) as resp:
        body = await resp.read()
        if resp.status != 200:
            detail = json_object(body.decode(errors="replace"))
            raise SfuRefused(
                f"{method}: {resp.status} {detail.get('code', '')} {detail.get('msg', '')}"
            )
    try:
        response = response_type.FromString(body)
    except DecodeError as exc:
        raise ConnectionError(f"{method}: undecodable response") from exc
    has_error = "error" in response.DESCRIPTOR.fields_by_name and response.HasField("error")
    if has_error and (response.error.code or response.error.message):
        raise SfuRefused(f"{method}: {sfu_error_text(response.error)}")
    return response


def ws_timeout() -> aiohttp.ClientWSTimeout:
    return aiohttp.ClientWSTimeout(ws_receive=None, ws_close=NET_TIMEOUT_S)


async def ws_send(ws: aiohttp.ClientWebSocketResponse, message: Pb) -> None:
    async with asyncio.timeout(NET_TIMEOUT_S):
        await ws.send_bytes(message.SerializeToString())


async def close_ws(ws: aiohttp.ClientWebSocketResponse | None) -> None:
    if ws is not None and not ws.closed:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(NET_TIMEOUT_S):
                await ws.close()


async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


def client_details() -> Pb:
    return pbm.ClientDetails(
        sdk=pbm.Sdk(type=pbm.SDK_TYPE_PLAIN_JAVASCRIPT, major="0", minor="1", patch="0")
    )


def json_object(text: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def stream_error_message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or "no message")
    return "no message"


def sfu_error_text(error: Pb) -> str:
    return f"{error.message} ({pbm.ErrorCode.Name(error.code)})"


def ice_servers(raw: Any) -> list[RTCIceServer]:
    servers: list[RTCIceServer] = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict) and item.get("urls"):
            servers.append(
                RTCIceServer(
                    urls=item["urls"],
                    username=item.get("username") or None,
                    credential=item.get("password") or item.get("credential") or None,
                )
            )
    return servers
