"""The relay's participant in the Stream call: Stream's signalling on our own code and the media on
an aiortc peer connection, so the relay can write the avatar's encoded packets into its senders.

``getstream_rtc`` does not export its encoded writes, so this module speaks the protocol itself
(the messages are the protobuf modules the ``getstream`` package ships; the wire calls are in
:mod:`bridge.stream.signalling`, the offer's SDP helpers in :mod:`bridge.stream.sdp`, the
session's state and its reactions to the SFU here):

* coordinator: WebSocket ``/api/v2/connect`` authenticated with a user JWT (first frame
  ``connection.ok``), then ``POST /api/v2/video/call/{type}/{id}/join`` for the SFU credentials;
* SFU WebSocket: ``JoinRequest`` with ``preferred_publish_options`` asking for the avatar's codec
  (what Stream's browser SDK sends for a preferred codec), ``JoinResponse`` with the granted
  publish options, health checks, the SFU's events, ``LeaveCallRequest``;
* SFU Twirp: ``SetPublisher`` (offer + ``TrackInfo`` matching the publish option), ``IceTrickle``
  both ways, ``UpdateMuteStates``.

A lost SFU WebSocket is resumed with a fast reconnect (same session, the peer connection is kept:
media does not go through the WebSocket). When the SFU no longer knows the session, asks for a
rejoin or migration, or the call ends, the failure callback is told once; the owner closes.

The senders' tracks are placeholders whose ``recv()`` never returns: aiortc's own send loop idles
and the relay writes packets into the senders' transport directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp
import structlog
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from bridge import dtls_guard, negotiation_guard
from bridge.errors import BridgeError, ErrorCode
from bridge.stages import EventSink, FailureCallback
from bridge.stream.join import StreamJoinOptions
from bridge.stream.sdp import (
    add_candidate,
    fmtp_line,
    is_codec,
    local_candidates,
    payload_type,
    video_capabilities,
)
from bridge.stream.sfu_pb import events as ev
from bridge.stream.sfu_pb import models as pbm
from bridge.stream.sfu_pb import signal as sig
from bridge.stream.signalling import (
    NET_TIMEOUT_S,
    AuthRefused,
    SfuRefused,
    client_details,
    close_ws,
    connect_coordinator,
    drain,
    join_call,
    open_sfu,
    sfu_error_text,
    twirp,
    ws_send,
)
from bridge.tasks import TaskSet

log = structlog.get_logger(__name__)

JOINS = Counter("bridge_relay_publisher_joins_total", "Stream joins of the relay", ["result"])
SFU_EVENTS = Counter(
    "bridge_relay_publisher_sfu_events_total", "SFU events that matter to the relay", ["kind"]
)
SFU_RECONNECTS = Counter(
    "bridge_relay_publisher_sfu_reconnects_total", "SFU WebSocket fast reconnects", ["result"]
)
ICE_DROPPED = Counter(
    "bridge_relay_publisher_ice_candidates_dropped_total",
    "SFU ICE candidates dropped because the pre-answer buffer was full",
)

# The SDK's generated protobuf modules are untyped for mypy: messages are Any.
Pb = Any

_HEALTH_INTERVAL_S = 10.0
# No health check answer for this long means the SFU WebSocket is dead even if TCP says otherwise.
_HEALTH_DEADLINE_S = 30.0
_DEFAULT_RECONNECT_DEADLINE_S = 10.0
_RECONNECT_BACKOFF_S = (0.1, 0.5, 1.0, 2.0)
# SFU candidates that arrive before the answer is applied; a flood beyond this is dropped.
_PENDING_ICE_MAX = 64
_OPUS = "audio/opus"


# How the relay joins Stream: the same options (and URLs) as the SDK publisher.
RelayPublisherOptions = StreamJoinOptions


class _IdleTrack(MediaStreamTrack):
    """A sender's placeholder: ``recv()`` never returns, so aiortc's send loop idles."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self) -> Any:
        await asyncio.Future()


class StreamRelayPublisher:
    """Publishes one audio and one video sender into ``call_type:call_id`` for the relay.

    ``join()`` then ``publish()`` (each raises :class:`BridgeError` STREAM_AUTH / STREAM_FAILED);
    afterwards a call that ends for good is reported once through ``on_failure``. ``aclose()``
    leaves the call, idempotent.
    """

    def __init__(
        self,
        options: RelayPublisherOptions,
        call_type: str,
        call_id: str,
        events: EventSink,
        on_failure: FailureCallback,
    ) -> None:
        self._opts = options
        self._call_type, self._call_id = call_type, call_id
        self._events = events
        self._on_failure = on_failure
        self._session_id = str(uuid.uuid4())
        self._http: aiohttp.ClientSession | None = None
        self._coord_ws: aiohttp.ClientWebSocketResponse | None = None
        self._sfu_ws: aiohttp.ClientWebSocketResponse | None = None
        self._sfu_ws_url = ""
        self._sfu_token = ""
        self._twirp_url = ""
        self._ice_servers: list[RTCIceServer] = []
        self._publish_options: list[Pb] = []
        self._reconnect_deadline_s = _DEFAULT_RECONNECT_DEADLINE_S
        self._pc: RTCPeerConnection | None = None
        self._audio_tx: RTCRtpTransceiver | None = None
        self._video_tx: RTCRtpTransceiver | None = None
        self._track_infos: list[Pb] = []
        self._pending_ice: list[str] = []
        self._pc_settled = asyncio.Event()  # connected, failed or closed
        self._last_health = 0.0
        self._tasks = TaskSet(lambda err: self._fail(err.message), ErrorCode.STREAM_FAILED)
        self._joined = False
        self._closing = False
        self._closed = False
        self._failed = False
        self.granted_codec: str | None = None
        self.video_codec: str | None = None
        # Called with (active, max_bitrate) when the SFU changes our video layer
        # (ChangePublishQuality); the relay maps it upstream where it can.
        self.on_publish_quality: Callable[[bool, int], None] | None = None
        # Called with False when the SFU revokes our send-video grant and True when it gives it
        # back; the relay stops and resumes forwarding video. Audio is not affected.
        self.on_send_video: Callable[[bool], None] | None = None
        self._video_granted = True
        self.sfu_reconnects = 0
        self._log = log.bind(cid=f"{call_type}:{call_id}", user_id=options.user_id)

    # ---- public surface ------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def video_sender(self) -> RTCRtpSender:
        if self._video_tx is None:
            raise RuntimeError("publish() has not run")
        return self._video_tx.sender

    @property
    def audio_sender(self) -> RTCRtpSender:
        if self._audio_tx is None:
            raise RuntimeError("publish() has not run")
        return self._audio_tx.sender

    async def join(self, preferred_video_codec: str, fallbacks: Sequence[str] = ()) -> str:
        """Authenticate, join the call and the SFU asking for ``preferred_video_codec``
        ("VP8" | "H264"), then ``fallbacks`` in order; returns the video codec of the publish
        option the SFU granted."""
        if self._joined or self._closing:
            raise RuntimeError("join() called twice or after aclose()")
        t0 = time.monotonic()
        self._log.info(
            "relay_stream_joining",
            base_url=self._opts.resolved_base_url(),
            preferred=preferred_video_codec,
        )
        try:
            async with asyncio.timeout(self._opts.join_timeout_s):
                granted = await self._join([c.upper() for c in (preferred_video_codec, *fallbacks)])
        except Exception as exc:
            JOINS.labels("error").inc()
            await self._teardown()
            raise self._join_error(exc) from exc
        except BaseException:  # cancelled or interrupted: clean up, let it through unchanged
            JOINS.labels("error").inc()
            await self._teardown()
            raise
        JOINS.labels("ok").inc()
        self._joined = True
        self.granted_codec = granted
        self._log.info(
            "relay_stream_joined",
            join_s=round(time.monotonic() - t0, 3),
            preferred=preferred_video_codec,
            granted=granted,
        )
        return granted

    async def publish(
        self,
        video_codec: str,
        h264_fmtp: str | None = None,
        *,
        audio_source: MediaStreamTrack | None = None,
        video_source: MediaStreamTrack | None = None,
        media_path: str = "relay",
    ) -> None:
        """Create the publisher peer connection (Opus + exactly ``video_codec`` and its RTX),
        ``SetPublisher``, trickle, unmute, and wait until it is connected.

        ``audio_source`` / ``video_source`` replace the idle placeholders with tracks aiortc
        encodes itself (the transcode path on a declined relay's session, and tests; the relay
        leaves them None and writes packets).
        """
        if not self._joined or self._closing:
            raise RuntimeError("publish() needs a joined, open publisher")
        if self._pc is not None:
            raise RuntimeError("publish() called twice")
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self._opts.join_timeout_s):
                await self._publish(video_codec.upper(), h264_fmtp, audio_source, video_source)
        except Exception as exc:
            await self._close_pc()
            raise self._publish_error(exc) from exc
        except BaseException:  # cancelled or interrupted: clean up, let it through unchanged
            await self._close_pc()
            raise
        self.video_codec = video_codec.upper()
        self._log.info(
            "relay_stream_publishing",
            codec=self.video_codec,
            connect_s=round(time.monotonic() - t0, 3),
        )
        self._events(
            "published",
            call_type=self._call_type,
            call_id=self._call_id,
            codec=self.video_codec,
            media_path=media_path,
        )

    async def aclose(self) -> None:
        """Leave the call: no task, socket or peer connection is left. Idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        await self._teardown()
        self._log.info("relay_stream_left", sfu_reconnects=self.sfu_reconnects)

    # ---- join ----------------------------------------------------------------------------------

    async def _join(self, preferred: list[str]) -> str:
        opts = self._opts
        self._http = http = aiohttp.ClientSession()
        coord, user_token, connection_id = await connect_coordinator(http, opts)
        self._coord_ws = coord
        self._spawn(self._coordinator_loop(coord), "relay_publisher_coordinator")
        creds = await join_call(
            http, opts, self._call_type, self._call_id, user_token, connection_id
        )
        self._sfu_ws_url, self._twirp_url, self._sfu_token = (
            creds.ws_url,
            creds.twirp_url,
            creds.token,
        )
        self._ice_servers = creds.ice_servers
        preferred_options = [
            pbm.PublishOption(
                track_type=pbm.TRACK_TYPE_VIDEO, codec=pbm.Codec(name=name, clock_rate=90000)
            )
            for name in preferred
        ]
        response = await self._sfu_connect(
            ev.JoinRequest(
                token=self._sfu_token,
                session_id=self._session_id,
                unified_session_id=self._session_id,
                client_details=client_details(),
                preferred_publish_options=preferred_options,
            )
        )
        self._publish_options = list(response.publish_options)
        if response.fast_reconnect_deadline_seconds > 0:
            self._reconnect_deadline_s = float(response.fast_reconnect_deadline_seconds)
        video = self._option(pbm.TRACK_TYPE_VIDEO)
        if video is None:
            raise ConnectionError("the SFU granted no video publish option")
        self._spawn(self._sfu_loop(), "relay_publisher_sfu")
        self._spawn(self._health_loop(), "relay_publisher_health")
        return str(video.codec.name).upper()

    async def _sfu_connect(self, join_request: Pb) -> Pb:
        """Open the SFU WebSocket, send ``join_request`` and return the ``JoinResponse``."""
        assert self._http is not None
        ws, response = await open_sfu(
            self._http,
            self._sfu_ws_url,
            self._opts,
            self._session_id,
            f"{self._call_type}:{self._call_id}",
            join_request,
        )
        self._sfu_ws = ws
        self._last_health = time.monotonic()
        return response

    def _option(self, track_type: int) -> Pb | None:
        return next((o for o in self._publish_options if o.track_type == track_type), None)

    def _join_error(self, exc: BaseException) -> BridgeError:
        where = self._opts.resolved_base_url()
        cid = f"{self._call_type}:{self._call_id}"
        if isinstance(exc, AuthRefused):
            return BridgeError(
                ErrorCode.STREAM_AUTH,
                f"Stream refused the bridge joining call {cid} as {self._opts.user_id!r}: {exc} "
                "(check STREAM_API_KEY / STREAM_API_SECRET and the call type's JoinCall "
                "permission for this user)",
            )
        if isinstance(exc, TimeoutError):
            return BridgeError(
                ErrorCode.STREAM_FAILED,
                f"joining Stream call {cid} at {where} timed out after "
                f"{self._opts.join_timeout_s:.0f} s",
            )
        return BridgeError(
            ErrorCode.STREAM_FAILED, f"could not join Stream call {cid} at {where}: {exc}"
        )

    # ---- publish -------------------------------------------------------------------------------

    async def _publish(
        self,
        video_codec: str,
        h264_fmtp: str | None,
        audio_source: MediaStreamTrack | None,
        video_source: MediaStreamTrack | None,
    ) -> None:
        audio_option = self._option(pbm.TRACK_TYPE_AUDIO)
        video_option = self._option(pbm.TRACK_TYPE_VIDEO)
        assert video_option is not None  # join() checked it
        video_caps = video_capabilities(video_codec, h264_fmtp)
        audio_caps = [c for c in RTCRtpSender.getCapabilities("audio").codecs if is_codec(c, _OPUS)]

        self._pc_settled.clear()
        dtls_guard.install()
        negotiation_guard.install()
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))
        pc.on("connectionstatechange", self._on_pc_state)
        audio_track = audio_source or _IdleTrack("audio")
        video_track = video_source or _IdleTrack("video")
        self._audio_tx = pc.addTransceiver(audio_track, direction="sendonly")
        self._video_tx = pc.addTransceiver(video_track, direction="sendonly")
        self._audio_tx.setCodecPreferences(audio_caps)
        self._video_tx.setCodecPreferences(video_caps)
        # aiortc gathers every host candidate here: they are in the offer, and trickled too.
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        video_pb_codec = pbm.Codec(
            name=video_codec,
            payload_type=payload_type(offer, self._video_tx.mid, video_codec) or 0,
            clock_rate=90000,
            fmtp=fmtp_line(video_caps[0]),
        )
        dimension = video_option.video_dimension
        self._track_infos = [
            pbm.TrackInfo(
                track_id=audio_track.id,
                track_type=pbm.TRACK_TYPE_AUDIO,
                mid=self._audio_tx.mid or "",
                codec=audio_option.codec if audio_option is not None else None,
                publish_option_id=audio_option.id if audio_option is not None else 0,
            ),
            pbm.TrackInfo(
                track_id=video_track.id,
                track_type=pbm.TRACK_TYPE_VIDEO,
                mid=self._video_tx.mid or "",
                codec=video_pb_codec,
                publish_option_id=video_option.id,
                # One layer: the avatar's single encoding, relayed as it is.
                layers=[
                    pbm.VideoLayer(
                        rid="f",
                        video_dimension=pbm.VideoDimension(
                            width=dimension.width, height=dimension.height
                        ),
                        bitrate=video_option.bitrate,
                        fps=video_option.fps or 30,
                        quality=pbm.VIDEO_QUALITY_HIGH,
                    )
                ],
            ),
        ]
        response = await self._twirp(
            "SetPublisher",
            sig.SetPublisherRequest(
                sdp=offer, session_id=self._session_id, tracks=self._track_infos
            ),
            sig.SetPublisherResponse,
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.sdp, type="answer"))
        pending, self._pending_ice = self._pending_ice, []
        for candidate in pending:
            await add_candidate(pc, candidate)
        for candidate in local_candidates(offer):
            await self._twirp(
                "IceTrickle",
                pbm.ICETrickle(
                    peer_type=pbm.PEER_TYPE_PUBLISHER_UNSPECIFIED,
                    ice_candidate=candidate,
                    session_id=self._session_id,
                ),
                sig.ICETrickleResponse,
            )
        await self._twirp(
            "UpdateMuteStates",
            sig.UpdateMuteStatesRequest(
                session_id=self._session_id,
                mute_states=[
                    sig.TrackMuteState(track_type=pbm.TRACK_TYPE_AUDIO, muted=False),
                    sig.TrackMuteState(track_type=pbm.TRACK_TYPE_VIDEO, muted=False),
                ],
            ),
            sig.UpdateMuteStatesResponse,
        )
        await self._pc_settled.wait()
        if pc.connectionState != "connected":
            raise ConnectionError(f"publisher peer connection {pc.connectionState}")

    def _on_pc_state(self) -> None:
        pc = self._pc
        if pc is None:
            return
        state = pc.connectionState
        self._log.info("relay_publisher_pc_state", state=state)
        if state in ("connected", "failed", "closed"):
            self._pc_settled.set()
        if self.video_codec is None:
            return  # still publishing: publish() raises
        if state == "failed":
            self._fail("the media transport to the Stream SFU failed")
        elif state == "closed":
            # Not by us (aclose() drops self._pc first): the SFU ended DTLS; no media flows.
            self._fail("the Stream SFU closed the media transport")

    def _publish_error(self, exc: BaseException) -> BridgeError:
        cid = f"{self._call_type}:{self._call_id}"
        if isinstance(exc, SfuRefused):
            return BridgeError(
                ErrorCode.STREAM_FAILED, f"the Stream SFU refused the relay's publisher: {exc}"
            )
        if isinstance(exc, TimeoutError):
            return BridgeError(
                ErrorCode.STREAM_FAILED,
                f"publishing into Stream call {cid} did not connect within "
                f"{self._opts.join_timeout_s:.0f} s",
            )
        return BridgeError(ErrorCode.STREAM_FAILED, f"publishing into Stream call {cid}: {exc}")

    async def _twirp(self, method: str, request: Pb, response_type: Any) -> Pb:
        assert self._http is not None
        return await twirp(
            self._http, self._twirp_url, self._sfu_token, method, request, response_type
        )

    # ---- background loops ----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.spawn(coro, name)

    async def _coordinator_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Answer nothing, read everything: the coordinator only needs the socket kept open
        (it ends the connection when the socket closes); a health check every 25 s."""
        reader = asyncio.get_running_loop().create_task(drain(ws))
        try:
            while not reader.done():
                await asyncio.wait({reader}, timeout=25.0)
                if not reader.done():
                    with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                        async with asyncio.timeout(NET_TIMEOUT_S):
                            await ws.send_json({"type": "health.check"})
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if not self._closing:
            # Media does not depend on it; the SFU session lives on. Logged, not fatal.
            self._log.warning("stream_coordinator_ws_closed")

    async def _sfu_loop(self) -> None:
        """Read SFU events; when the WebSocket drops, fast-reconnect or fail once."""
        while not self._closing:
            ws = self._sfu_ws
            if ws is not None:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        await self._on_sfu_message(msg.data)
                    elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                        break
                    if self._failed:
                        return
            if self._closing or self._failed:
                return
            self._log.warning("stream_sfu_ws_lost")
            if not await self._fast_reconnect():
                return

    async def _fast_reconnect(self) -> bool:
        await close_ws(self._sfu_ws)
        self._sfu_ws = None
        deadline = time.monotonic() + self._reconnect_deadline_s
        attempt = 0
        last_error = "no attempt"
        while time.monotonic() < deadline and not self._closing:
            attempt += 1
            request = ev.JoinRequest(
                token=self._sfu_token,
                session_id=self._session_id,
                unified_session_id=self._session_id,
                client_details=client_details(),
                fast_reconnect=True,
                reconnect_details=ev.ReconnectDetails(
                    strategy=pbm.WEBSOCKET_RECONNECT_STRATEGY_FAST,
                    announced_tracks=self._track_infos,
                    reconnect_attempt=attempt,
                    reason="websocket lost",
                ),
            )
            try:
                response = await self._sfu_connect(request)
            except (SfuRefused, ConnectionError, OSError, TimeoutError, aiohttp.ClientError) as e:
                last_error = str(e) or type(e).__name__
                delay = _RECONNECT_BACKOFF_S[min(attempt - 1, len(_RECONNECT_BACKOFF_S) - 1)]
                await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))
                continue
            if not response.reconnected:
                SFU_RECONNECTS.labels("session_lost").inc()
                self._fail("the Stream SFU no longer knew the relay's session after a reconnect")
                return False
            self.sfu_reconnects += 1
            SFU_RECONNECTS.labels("ok").inc()
            self._log.info("stream_sfu_ws_resumed", attempt=attempt)
            return True
        if self._closing:
            return False
        SFU_RECONNECTS.labels("failed").inc()
        self._fail(
            f"the Stream SFU WebSocket could not be resumed within "
            f"{self._reconnect_deadline_s:.0f} s ({last_error})"
        )
        return False

    async def _health_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(_HEALTH_INTERVAL_S)
            ws = self._sfu_ws
            if ws is None or ws.closed:
                continue  # the SFU loop is reconnecting
            if time.monotonic() - self._last_health > _HEALTH_DEADLINE_S:
                self._log.warning("stream_sfu_health_check_timeout")
                await close_ws(ws)  # the SFU loop sees the close and reconnects
                continue
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                await ws_send(ws, ev.SfuRequest(health_check_request=ev.HealthCheckRequest()))

    async def _on_sfu_message(self, data: bytes) -> None:
        try:
            event = ev.SfuEvent.FromString(data)
        except DecodeError:
            self._log.warning("stream_sfu_event_undecodable")
            return
        kind = event.WhichOneof("event_payload")
        if kind == "health_check_response":
            self._last_health = time.monotonic()
        elif kind == "ice_trickle":
            trickle = event.ice_trickle
            if trickle.peer_type != pbm.PEER_TYPE_PUBLISHER_UNSPECIFIED:
                return
            pc = self._pc
            if pc is not None and pc.remoteDescription is not None:
                await add_candidate(pc, trickle.ice_candidate)
            elif len(self._pending_ice) < _PENDING_ICE_MAX:
                self._pending_ice.append(trickle.ice_candidate)
            else:
                ICE_DROPPED.inc()
        elif kind == "error":
            SFU_EVENTS.labels("error").inc()
            error, strategy = event.error.error, event.error.reconnect_strategy
            self._log.warning(
                "stream_sfu_error",
                error=sfu_error_text(error),
                strategy=pbm.WebsocketReconnectStrategy.Name(strategy),
            )
            if strategy == pbm.WEBSOCKET_RECONNECT_STRATEGY_FAST and self._sfu_ws is not None:
                await close_ws(self._sfu_ws)  # the SFU loop reconnects
            elif strategy != pbm.WEBSOCKET_RECONNECT_STRATEGY_UNSPECIFIED:
                # Disconnect, rejoin or migrate: a new session is the owner's decision.
                self._fail(f"the Stream SFU ended the relay's session: {sfu_error_text(error)}")
        elif kind == "call_ended":
            SFU_EVENTS.labels("call_ended").inc()
            self._fail("the Stream call ended")
        elif kind == "go_away":
            SFU_EVENTS.labels("go_away").inc()
            self._log.warning("stream_sfu_going_away")
        elif kind == "change_publish_quality":
            SFU_EVENTS.labels("publish_quality").inc()
            self._on_publish_quality_event(event.change_publish_quality)
        elif kind == "call_grants_updated":
            SFU_EVENTS.labels("grants_updated").inc()
            grants = event.call_grants_updated.current_grants
            self._log.warning(
                "stream_grants_updated",
                audio=grants.can_publish_audio,
                video=grants.can_publish_video,
                message=event.call_grants_updated.message,
            )
            self._on_video_grant(bool(grants.can_publish_video))
        elif kind == "ice_restart":
            SFU_EVENTS.labels("ice_restart").inc()
            self._log.warning("stream_sfu_ice_restart_requested")

    def _on_publish_quality_event(self, change: Pb) -> None:
        for sender in change.video_senders:
            layers = list(sender.layers)
            active = any(layer.active for layer in layers) if layers else True
            bitrate = max((layer.max_bitrate for layer in layers), default=0)
            self._log.info("stream_publish_quality_changed", active=active, max_bitrate=bitrate)
            callback = self.on_publish_quality
            if callback is not None:
                callback(active, bitrate)

    def _on_video_grant(self, granted: bool) -> None:
        if granted == self._video_granted:
            return
        self._video_granted = granted
        callback = self.on_send_video
        if callback is not None:
            callback(granted)
        if self._pc is not None:
            # Tell the SFU the video track is muted while we may not send it (as Stream's SDKs do).
            self._spawn(self._update_video_mute(muted=not granted), "relay_publisher_mute")

    async def _update_video_mute(self, *, muted: bool) -> None:
        request = sig.UpdateMuteStatesRequest(
            session_id=self._session_id,
            mute_states=[sig.TrackMuteState(track_type=pbm.TRACK_TYPE_VIDEO, muted=muted)],
        )
        try:
            await self._twirp("UpdateMuteStates", request, sig.UpdateMuteStatesResponse)
        except (SfuRefused, ConnectionError, TimeoutError, aiohttp.ClientError) as exc:
            # Not fatal: the packets stop either way; the SFU just shows the track unmuted.
            self._log.warning("stream_video_mute_update_failed", muted=muted, error=str(exc))

    def _fail(self, message: str) -> None:
        if self._closing or self._failed:
            return
        self._failed = True
        self._log.warning("relay_publisher_failed", reason=message)
        self._on_failure(
            BridgeError(
                ErrorCode.STREAM_FAILED,
                f"Stream call {self._call_type}:{self._call_id}: {message}",
            )
        )

    # ---- teardown ------------------------------------------------------------------------------

    async def _teardown(self) -> None:
        self._closing = True
        timeout = self._opts.leave_timeout_s
        ws = self._sfu_ws
        if ws is not None and not ws.closed:
            leave = ev.LeaveCallRequest(session_id=self._session_id, reason="user requested leave")
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                await ws_send(ws, ev.SfuRequest(leave_call_request=leave))
        await self._tasks.aclose()
        await self._close_pc()
        await close_ws(self._sfu_ws)
        await close_ws(self._coord_ws)
        self._sfu_ws = self._coord_ws = None
        http, self._http = self._http, None
        if http is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await http.close()

    async def _close_pc(self) -> None:
        pc, self._pc = self._pc, None
        if pc is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._opts.leave_timeout_s):
                    await pc.close()
