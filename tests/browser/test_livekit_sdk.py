"""LiveKit's browser SDK (``livekit-client``, unmodified) in headless Chromium against the stand-in.

The page (``web/livekit.html``) joins rooms with the SDK, as many participants as the test asks,
and reports the SDK's events and the browser's own decoder (``getStats``: the inbound-rtp codec
and frame size). What is asserted comes from there and from the stand-in's wire counters, never
from what was negotiated:

* the avatar, published by a LiveKit client (the real ``livekit`` SDK: libwebrtc, simulcast) and
  forwarded by the stand-in's SFU, decodes in the announced codec and size, in both signalling
  modes at once (``/rtc/v1`` single peer connection and legacy ``/rtc``: the SDK picks the path
  from ``RoomOptions.singlePeerConnection``, default true), and a layer is chosen by the SDK's
  ``setVideoQuality`` and by its adaptive stream (the size of the element it plays in);
* a bad token surfaces as ``ConnectionError`` NotAllowed with the server's 401, not as "server
  unreachable" (the stand-in answers with the CORS headers a browser needs to read it);
* a dropped signalling WebSocket is resumed (SignalReconnecting, then Reconnected, media on);
* the browser publishes its camera with the SDK's defaults (simulcast) and the stand-in receives
  every layer, in the codec announced, and forwards one to a subscriber.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.sim.avatar_publisher import SdkAvatarPublisher
from bridge.sim.browser import BrowserError, Chromium, Page
from bridge.sim.livekit_server import LiveKitStandIn, SyntheticVideoTrack, ToneAudioTrack
from bridge.sim.web import PageServer

pytestmark = pytest.mark.netns

ROOM = "avatar-room"
AVATAR = "avatar"
# LiveAvatar's default size: the SDK publishes three distinct layers (320x180, 640x360, 1280x720).
W, H = 1280, 720
SMALL_BOX = {"width": 320, "height": 180}  # the element adaptive stream sizes its ask from
DECODE_S = 45.0  # bound on "eventually": a loaded 2-core machine runs the encoders and Chromium


@pytest.fixture
async def standin() -> AsyncIterator[LiveKitStandIn]:
    server = LiveKitStandIn()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


@pytest.fixture
async def page(browser: Chromium, pages: PageServer) -> Page:
    p = await browser.open(pages.url("livekit.html"))
    await p.wait_for("window.lkPage !== undefined", within_s=20)
    return p


async def connect(
    page: Page, standin: LiveKitStandIn, name: str, *, token: str | None = None, **opts: Any
) -> dict[str, Any]:
    """``lkPage.connect`` as participant ``name``; the SDK's result (ok, or the error's fields)."""
    args = {"url": standin.url, "token": token or standin.mint_token(ROOM, name), **opts}
    result: dict[str, Any] = await page.evaluate(
        f"lkPage.connect({json.dumps(name)}, {json.dumps(args)})", timeout_s=60
    )
    return result


async def video(page: Page, name: str) -> list[dict[str, Any]]:
    stats: list[dict[str, Any]] = await page.evaluate(f"lkPage.videoStats({json.dumps(name)})")
    return stats


async def wait_decoded(
    standin: LiveKitStandIn,
    page: Page,
    name: str,
    size: tuple[int, int],
    *,
    more_than: int = 0,
) -> dict[str, Any]:
    """The avatar's video at ``name`` once it decodes frames of ``size`` (beyond ``more_than``)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DECODE_S
    last: list[dict[str, Any]] = []
    while loop.time() < end:
        last = await video(page, name)
        for v in last:
            d = v["decoded"]
            if (
                v["identity"] == AVATAR
                and d is not None
                and (d["frameWidth"], d["frameHeight"]) == size
                and d["framesDecoded"] > more_than
            ):
                return v
        await asyncio.sleep(0.2)
    # What the SFU forwards to whom, what each asked for, and what the page's layout told the
    # SDK: a failure says which side stopped the video.
    layout = await page.evaluate(f"lkPage.layout({json.dumps(name)})")
    peers = await page.evaluate(f"lkPage.peerStats({json.dumps(name)})")
    raise AssertionError(
        f"{name}: no {size} frames decoded within {DECODE_S} s: {last}\n"
        f"forwarded: {standin.forwarded_video()}\nlayout: {layout}\npeers: {peers}\n"
        f"events: {await events(page, name)}\nstand-in: {standin.counters}\n{page.diagnostics()}"
    )


async def events(page: Page, name: str) -> list[str]:
    got: list[dict[str, Any]] = await page.evaluate(f"lkPage.events({json.dumps(name)})")
    return [e["event"] for e in got]


def layer(info: dict[str, Any], quality: str) -> tuple[int, int]:
    found = [
        (x["width"], x["height"]) for x in info["announced"]["layers"] if x["quality"] == quality
    ]
    assert found, f"no {quality} layer announced: {info['announced']}"
    return found[0]


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_sdk_decodes_the_forwarded_avatar_in_both_signalling_modes(
    standin: LiveKitStandIn, page: Page, codec: str
) -> None:
    await standin.open_room(ROOM)
    avatar = SdkAvatarPublisher(
        SyntheticVideoTrack(W, H, fps=15, pattern="ramp"),
        ToneAudioTrack(),
        width=W,
        height=H,
        codec=codec,
    )
    await avatar.start(standin.url, standin.mint_token(ROOM, AVATAR))
    try:
        paths = standin.counters.signal_paths.copy()  # the avatar's own join (the Python SDK)
        # "v1": the SDK's default (single peer connection), no layer asked for; "legacy": two
        # peer connections, adaptive stream playing into a 320x180 element.
        v1 = await connect(page, standin, "v1", singlePeerConnection=True)
        legacy = await connect(
            page, standin, "legacy", singlePeerConnection=False, adaptiveStream=True, box=SMALL_BOX
        )
        assert v1["ok"] and legacy["ok"], (v1, legacy, page.diagnostics())
        joined = standin.counters.signal_paths - paths
        assert joined == {"/rtc/v1": 1, "/rtc": 1}, joined

        # No ask: the highest layer, decoded in the announced codec at the announced size.
        full = await wait_decoded(standin, page, "v1", (W, H))
        announced = full["announced"]
        assert announced["mimeType"].lower() == f"video/{codec}".lower()
        assert (announced["width"], announced["height"]) == (W, H)
        assert full["decoded"]["codec"].lower() == f"video/{codec}".lower()
        assert layer(full, "HIGH") == (W, H)

        # Adaptive stream asks for the element's size: the smallest layer that covers it.
        low = layer(full, "LOW")
        assert low == (SMALL_BOX["width"], SMALL_BOX["height"])
        small = await wait_decoded(standin, page, "legacy", low)
        assert small["decoded"]["codec"].lower() == f"video/{codec}".lower()
        assert small["announced"]["mimeType"] == announced["mimeType"]

        # setVideoQuality moves the v1 subscriber down to the LOW layer, then back up.
        await page.evaluate("lkPage.setVideoQuality('v1', 'LOW')")
        down = await wait_decoded(
            standin, page, "v1", low, more_than=full["decoded"]["framesDecoded"]
        )
        assert down["decoded"]["codec"] == full["decoded"]["codec"]
        await page.evaluate("lkPage.setVideoQuality('v1', 'HIGH')")
        await wait_decoded(standin, page, "v1", (W, H), more_than=down["decoded"]["framesDecoded"])

        # The stand-in's wire counters: only the announced codec went out, to both subscribers.
        assert dict(standin.counters.video_codecs) == {codec: 2}
        assert set(standin.counters.video_packets_by_codec) == {codec}
        assert standin.counters.sdp_video_codecs == {codec}
        assert "disconnected" not in await events(page, "v1")
    finally:
        await avatar.aclose()


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_bad_token_is_not_allowed_and_a_dropped_signal_connection_resumes(
    standin: LiveKitStandIn, page: Page, codec: str
) -> None:
    # The avatar encoded by the stand-in (aiortc): where Chromium was once sent VP8 under an H264
    # TrackInfo after a renegotiation in /rtc/v1 mode.
    await standin.create_room(
        ROOM,
        avatar_identity=AVATAR,
        video=SyntheticVideoTrack(320, 180, fps=15),
        audio=ToneAudioTrack(),
        video_codec=codec,
    )
    # A token signed with another secret: the SDK must say "not allowed", in both modes.
    forged = LiveKitStandIn(api_key=standin.api_key, api_secret="another-secret-another-secret-00")
    for name, single in (("bad-v1", True), ("bad-legacy", False)):
        token = forged.mint_token(ROOM, name)
        bad = await connect(page, standin, name, token=token, singlePeerConnection=single)
        assert not bad["ok"], bad
        err = bad["error"]
        assert err.get("reasonName") == "NotAllowed", (err, page.diagnostics())
        assert err.get("status") == 401, err
    assert standin.counters.rejected == 2 and standin.counters.joins == 0

    # Both modes joined; their signalling WebSockets dropped (no leave): the SDK resumes them.
    for name, single in (("v1", True), ("legacy", False)):
        assert (await connect(page, standin, name, singlePeerConnection=single))["ok"]
    before = {}
    for name in ("v1", "legacy"):
        got = await wait_decoded(standin, page, name, (320, 180))
        # TrackInfo carries the published size and codec; the decoder agrees.
        assert got["announced"]["mimeType"].lower() == f"video/{codec}".lower(), got
        assert (got["announced"]["width"], got["announced"]["height"]) == (320, 180), got
        assert got["decoded"]["codec"].lower() == f"video/{codec}".lower(), got
        before[name] = got["decoded"]
    assert await standin.faults.close_signalling(ROOM) == 2
    for name in ("v1", "legacy"):
        try:
            await page.wait_for(
                f"lkPage.events('{name}').some(e => e.event === 'reconnected')", within_s=DECODE_S
            )
        except BrowserError as exc:
            raise AssertionError(
                f"{name}: {await events(page, name)}\n{page.diagnostics()}"
            ) from exc
        seen = await events(page, name)
        assert "signalReconnecting" in seen, seen
        assert "disconnected" not in seen and "reconnecting" not in seen, (
            seen
        )  # a resume, no restart
        # Media goes on over the same peer connection: more frames, same SSRC.
        after = await wait_decoded(
            standin, page, name, (320, 180), more_than=before[name]["framesDecoded"] + 30
        )
        assert after["decoded"]["ssrc"] == before[name]["ssrc"]
        assert after["decoded"]["codec"] == before[name]["codec"]
    assert dict(standin.counters.video_codecs) == {codec: 2}
    assert standin.counters.sdp_video_codecs == {codec}
    assert standin.counters.resumes == 2
    assert standin.counters.joins == 2
    assert standin.participants_in(ROOM) == 2


async def test_browser_publishes_simulcast_and_the_stand_in_forwards_it(
    standin: LiveKitStandIn, page: Page
) -> None:
    await standin.open_room(ROOM)
    # The fake camera published with the SDK's defaults, as a web app would.
    assert (await connect(page, standin, AVATAR))["ok"]
    published = await page.evaluate(f"lkPage.publish('{AVATAR}')", timeout_s=60)
    assert published["ok"], (published, page.diagnostics())
    assert (await connect(page, standin, "viewer"))["ok"]
    # The viewer decodes what the stand-in forwards: the highest layer the browser sends.
    loop = asyncio.get_running_loop()
    end = loop.time() + DECODE_S
    seen: list[dict[str, Any]] = []
    while loop.time() < end:
        seen = [
            v
            for v in await video(page, "viewer")
            if v["decoded"] and v["decoded"]["framesDecoded"] > 10
        ]
        if seen and seen[0]["decoded"]["frameWidth"] == seen[0]["announced"]["width"]:
            break
        await asyncio.sleep(0.2)
    assert seen, page.diagnostics()
    viewed = seen[0]
    announced = viewed["announced"]
    assert (viewed["decoded"]["frameWidth"], viewed["decoded"]["frameHeight"]) == (
        announced["width"],
        announced["height"],
    ), viewed
    assert viewed["decoded"]["codec"].lower() == announced["mimeType"].lower()

    # The browser's encoder (outbound-rtp) and the stand-in's wire counters agree per layer.
    sent = await page.evaluate(f"lkPage.publishedVideo('{AVATAR}')")
    rids = {s["rid"] for s in sent if s["packetsSent"] > 0}
    assert len(rids) >= 2, sent  # simulcast: the SDK's default for a camera
    tracks = standin.published_tracks(ROOM)[AVATAR]
    video_track = tracks["video"]
    received = {rid: lay.packets for rid, lay in video_track.layers.items() if lay.packets}
    assert set(received) == rids, (received, sent)
    assert video_track.info.codec.lower() == sent[0]["codec"].split("/")[1].lower()
    assert len(video_track.info.layer_sizes) == len(announced["layers"])
    assert tracks["audio"].stats["packets"] > 0
    assert dict(standin.counters.video_codecs) == {video_track.info.codec: 1}
