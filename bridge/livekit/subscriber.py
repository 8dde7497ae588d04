"""A LiveKit subscriber on aiortc that hands out the avatar's RTP receivers (for the relay).

The ``livekit`` rtc SDK only hands out decoded frames, so the relay speaks LiveKit's signalling
itself (protobuf over WebSocket, messages from ``livekit-protocol``) and receives on an aiortc
peer connection. This module only does signalling and the peer connection: whoever uses it gets
each of the avatar's receivers through ``on_receiver`` before any packet arrives, and decides what
to do with the packets.

Signalling modes (both served by LiveKit and by our stand-in):

* ``/rtc/v1`` (single peer connection, the default of current SDKs): we offer two ``recvonly``
  transceivers (audio, video) inside the join request; the server answers with
  ``mid_to_track_id``. If the avatar joins later, the server asks for media sections
  (``media_sections_requirement``) and we offer again on the same connection.
* ``/rtc`` (legacy, dual peer connection): the server offers the subscriber connection and we
  answer it; we never publish, so the publisher connection is never created.

Only the avatar's tracks are handed out (by participant identity; track sids map to participants
through the join response and participant updates). Keep-alive: ``ping_req`` every
``ping_interval`` from the join response; no pong within ``ping_timeout`` counts as a lost
signalling connection. A lost signalling connection is resumed (``reconnect`` with our sid; the
media connection stays); a refused resume (``leave`` with action RECONNECT) or a failed media
connection triggers one full reconnect (new join, new peer connection, new receivers). Anything
else -- the room ending, the avatar leaving, reconnects exhausted -- is reported once through the
failure callback as ``LIVEKIT_FAILED``, never while closing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp
import structlog
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models as lkm
from livekit.protocol import rtc as lkr
from prometheus_client import Counter

from bridge import dtls_guard, metrics, negotiation_guard
from bridge.config import LiveAvatarConfig, setting_default
from bridge.errors import BridgeError, ErrorCode
from bridge.relay.policy import LayerAsk
from bridge.stages import EventSink, FailureCallback
from bridge.tasks import TaskSet

__all__ = ["LiveKitSubscriber", "ReceiverCallback", "SubscriberOptions"]

log = structlog.get_logger(__name__)

PROTOCOL_VERSION = 16
_SEND_TIMEOUT_S = 5.0
_CLOSE_TIMEOUT_S = 5.0

RECONNECTS = Counter(
    "bridge_subscriber_reconnects_total", "LiveKit subscriber reconnects", ["kind", "outcome"]
)
FAILURES = Counter("bridge_subscriber_failures_total", "LiveKit subscriber failures", ["reason"])

# (kind, receiver, track sid): called for every avatar track, before its first packet.
ReceiverCallback = Callable[[str, RTCRtpReceiver, str], None]


@dataclass(frozen=True, slots=True)
class SubscriberOptions:
    """Defaults are the settings model's (bridge/config.py); the relay builds these from its own
    options."""

    avatar_identity: str = setting_default(LiveAvatarConfig, "avatar_identity")
    # Signalling connect + join response, and time for the avatar's two tracks to appear; the
    # documented scope of liveavatar.connect_timeout_s covers both.
    connect_timeout_s: float = setting_default(LiveAvatarConfig, "connect_timeout_s")
    avatar_join_timeout_s: float = setting_default(LiveAvatarConfig, "connect_timeout_s")
    # True: /rtc/v1 (we offer); False: legacy /rtc (the server offers).
    single_peer_connection: bool = True
    resume_attempts: int = 3
    full_reconnects: int = 1
    # The avatar's video layer to ask for (UpdateTrackSettings, as LiveKit's SDKs do); None asks
    # for nothing (the server's default).
    video_layer: LayerAsk | None = None


class _Lost(Exception):
    """The signalling connection is gone (closed, errored or silent past the ping timeout)."""


class _Rejoin(Exception):
    """The server refused to resume: start over with a new join."""


class LiveKitSubscriber:
    """Joins the avatar's room, subscribes to the avatar only, hands out its receivers."""

    def __init__(
        self,
        options: SubscriberOptions,
        on_receiver: ReceiverCallback,
        events: EventSink,
        on_failure: FailureCallback,
    ) -> None:
        self._opts = options
        self._on_receiver = on_receiver
        self._events = events
        self._on_failure = on_failure
        self._url = ""
        self._token = ""
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pc: RTCPeerConnection | None = None
        self._sid = ""
        self._ping_interval = 5.0
        self._ping_timeout = 15.0
        self._last_pong = 0.0
        self._offer_id = 0
        self._track_owner: dict[str, str] = {}  # track sid -> participant identity
        self._mid_to_track: dict[str, str] = {}
        self._handed: dict[str, RTCRtpReceiver] = {}  # kind -> current receiver
        self._tracks_ready = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        # An unexpected error in the supervisor is logged, counted and fails the session.
        self._tasks = TaskSet(lambda err: self._fail("internal", err.message))
        self._closing = False
        self._room_open = metrics.LIVEKIT_ROOMS_OPEN.labels("relay")
        self._counted = False  # in LIVEKIT_ROOMS_OPEN until aclose()
        self._failed = False
        self._send_lock = asyncio.Lock()
        self.video_mime: str | None = None
        # The avatar's video size as the server announces it (TrackInfo width/height).
        self.video_size: tuple[int, int] | None = None
        self.stats: dict[str, int] = {"resumes": 0, "rejoins": 0, "pings": 0}

    # -- public ----------------------------------------------------------------------------------

    async def start(self, url: str, token: str) -> None:
        """Join and wait until the avatar's audio and video receivers were handed out."""
        if self._http is not None:
            raise RuntimeError("LiveKitSubscriber.start called twice")
        self._url, self._token = url.rstrip("/"), token
        self._http = aiohttp.ClientSession()
        self._room_open.inc()
        self._counted = True
        try:
            async with asyncio.timeout(self._opts.connect_timeout_s):
                await self._join(resume=False)
        except TimeoutError:
            await self.aclose()
            raise BridgeError(
                ErrorCode.LIVEKIT_FAILED,
                "joining the avatar's LiveKit room timed out after "
                f"{self._opts.connect_timeout_s}s",
            ) from None
        except (aiohttp.ClientError, _Lost, _Rejoin, ValueError) as exc:
            await self.aclose()
            raise BridgeError(
                ErrorCode.LIVEKIT_FAILED, f"could not join the avatar's LiveKit room: {exc}"
            ) from exc
        self._supervisor = self._tasks.spawn(self._supervise(), "livekit_subscriber_supervisor")
        try:
            async with asyncio.timeout(self._opts.avatar_join_timeout_s):
                await self._tracks_ready.wait()
        except TimeoutError:
            await self.aclose()
            raise BridgeError(
                ErrorCode.LIVEKIT_FAILED,
                "the avatar published no audio and video within "
                f"{self._opts.avatar_join_timeout_s}s",
            ) from None
        if self._failed:
            raise BridgeError(ErrorCode.LIVEKIT_FAILED, "the avatar's LiveKit room failed")
        log.info("subscriber_ready", sid=self._sid, video=self.video_mime)

    async def aclose(self) -> None:
        """Leave the room and close the connection. Idempotent; never raises."""
        if self._closing and self._http is None:
            return
        self._closing = True
        if self._counted:
            self._counted = False
            self._room_open.dec()
        sup, self._supervisor = self._supervisor, None
        if sup is not None and sup is not asyncio.current_task():
            sup.cancel()
            await asyncio.wait({sup})  # its outcome was reported by the task set
        with contextlib.suppress(Exception):
            await self._send(leave=lkr.LeaveRequest(reason=lkm.DisconnectReason.CLIENT_INITIATED))
        await self._drop_connection()
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    @property
    def receivers(self) -> dict[str, RTCRtpReceiver]:
        return dict(self._handed)

    @property
    def failed(self) -> bool:
        """The room failed for good (reported through ``on_failure``)."""
        return self._failed

    # -- join / resume ---------------------------------------------------------------------------

    async def _join(self, *, resume: bool) -> None:
        """Open signalling; a fresh join (new PC) unless resuming. Returns once joined."""
        assert self._http is not None
        if not resume:
            await self._drop_connection()
            self._pc = self._new_pc()
        elif self._ws is not None:
            await self._close_ws()
        single = self._opts.single_peer_connection
        path = "/rtc/v1" if single else "/rtc"
        query: dict[str, str] = {"access_token": self._token}
        if single:
            join = lkr.JoinRequest(
                client_info=lkm.ClientInfo(
                    sdk=lkm.ClientInfo.PYTHON, protocol=PROTOCOL_VERSION, version="avatar-bridge"
                ),
                connection_settings=lkr.ConnectionSettings(auto_subscribe=True),
                reconnect=resume,
                participant_sid=self._sid if resume else "",
            )
            if not resume:
                join.publisher_offer.CopyFrom(await self._make_offer())
            wrapped = lkr.WrappedJoinRequest(join_request=join.SerializeToString())
            query["join_request"] = base64.urlsafe_b64encode(wrapped.SerializeToString()).decode()
        else:
            query.update(
                auto_subscribe="1",
                adaptive_stream="0",
                protocol=str(PROTOCOL_VERSION),
                sdk="python",
            )
            if resume:
                query.update(reconnect="1", sid=self._sid)
        ws = await self._http.ws_connect(
            f"{self._url}{path}?{urlencode(query)}", heartbeat=None, max_msg_size=1 << 22
        )
        self._ws = ws
        first = await self._receive(ws, wait_s=self._opts.connect_timeout_s)
        which = first.WhichOneof("message")
        if which == "leave":
            raise _Rejoin(f"server sent leave ({first.leave.action})")
        if resume:
            if which != "reconnect":
                raise _Rejoin(f"resume answered with {which}")
            self._last_pong = time.monotonic()
            self.stats["resumes"] += 1
            log.info("subscriber_resumed", sid=self._sid)
            return
        if which != "join":
            raise ValueError(f"expected a join response, got {which}")
        j = first.join
        self._sid = j.participant.sid
        if j.ping_interval > 0:
            self._ping_interval = float(j.ping_interval)
        if j.ping_timeout > 0:
            self._ping_timeout = float(j.ping_timeout)
        self._last_pong = time.monotonic()
        for p in j.other_participants:
            self._note_participant(p)
        log.info(
            "subscriber_joined",
            room=j.room.name,
            sid=self._sid,
            single_pc=single,
            others=[p.identity for p in j.other_participants],
        )

    async def _make_offer(self) -> lkr.SessionDescription:
        pc = self._pc
        assert pc is not None
        if not pc.getTransceivers():
            pc.addTransceiver("audio", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        self._offer_id += 1
        return lkr.SessionDescription(type="offer", sdp=pc.localDescription.sdp, id=self._offer_id)

    def _new_pc(self) -> RTCPeerConnection:
        dtls_guard.install()
        negotiation_guard.install()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._handed.clear()
        self._tracks_ready.clear()

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            self._maybe_hand_out(pc)

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            state = pc.connectionState
            log.info("subscriber_pc_state", state=state)
            if state in ("failed", "closed") and pc is self._pc and not self._closing:
                # Media lost (ICE/DTLS failed, or the server closed it) with signalling still
                # up: drop the signalling, so the supervisor rejoins with a new peer connection
                # (bounded by full_reconnects, then the session fails with LIVEKIT_FAILED).
                log.warning("subscriber_media_lost", state=state)
                self._tasks.spawn(self._close_ws(), "livekit_subscriber_media_lost")

        return pc

    # -- the supervisor: read signalling, keep alive, resume / rejoin -----------------------------

    async def _supervise(self) -> None:
        resumes = self._opts.resume_attempts
        rejoins = self._opts.full_reconnects
        while True:
            try:
                await self._serve()
                return  # closing
            except _Fatal as exc:
                self._fail(exc.reason, str(exc))
                return
            except (_Lost, _Rejoin) as exc:
                if self._stopping():
                    return
                pc_gone = self._pc is None or self._pc.connectionState in ("failed", "closed")
                log.warning("subscriber_signal_lost", error=str(exc), media_lost=pc_gone)
                if isinstance(exc, _Lost) and not pc_gone and resumes > 0:
                    resumes -= 1
                    if await self._resume():
                        continue
                if rejoins <= 0:
                    self._fail("reconnect_exhausted", "lost the avatar's LiveKit room")
                    return
                rejoins -= 1
                if not await self._rejoin():
                    return

    def _stopping(self) -> bool:
        return self._closing

    async def _resume(self) -> bool:
        try:
            async with asyncio.timeout(self._opts.connect_timeout_s):
                await self._join(resume=True)
        except (_Rejoin, _Lost, aiohttp.ClientError, TimeoutError, ValueError) as err:
            RECONNECTS.labels("resume", "refused").inc()
            log.warning("subscriber_resume_failed", error=str(err))
            return False
        RECONNECTS.labels("resume", "ok").inc()
        return True

    async def _rejoin(self) -> bool:
        try:
            async with asyncio.timeout(self._opts.connect_timeout_s):
                await self._join(resume=False)
        except (_Rejoin, _Lost, aiohttp.ClientError, TimeoutError, ValueError) as err:
            RECONNECTS.labels("rejoin", "failed").inc()
            self._fail("rejoin_failed", f"could not rejoin the avatar's LiveKit room: {err}")
            return False
        RECONNECTS.labels("rejoin", "ok").inc()
        self.stats["rejoins"] += 1
        self._events("avatar_reconnected", kind="rejoin")
        return True

    async def _serve(self) -> None:
        ws = self._ws
        if ws is None:
            raise _Lost("no signalling connection")
        while not self._stopping():
            wait = self._ping_interval
            try:
                resp = await self._receive(ws, wait_s=wait)
            except TimeoutError:
                if time.monotonic() - self._last_pong > self._ping_timeout:
                    raise _Lost("no pong within the ping timeout") from None
                await self._send(ping_req=lkr.Ping(timestamp=int(time.time() * 1000)))
                self.stats["pings"] += 1
                continue
            await self._handle(resp)
            if time.monotonic() - self._last_pong > self._ping_interval:
                # Busy signalling never times out the receive: ping anyway.
                await self._send(ping_req=lkr.Ping(timestamp=int(time.time() * 1000)))

    async def _handle(self, resp: lkr.SignalResponse) -> None:
        which = resp.WhichOneof("message")
        if which in ("pong_resp", "pong"):
            self._last_pong = time.monotonic()
        elif which == "offer":  # legacy: the server offers the subscriber connection
            await self._answer(resp.offer)
        elif which == "answer":  # v1: the server answers our offer
            self._mid_to_track.update(dict(resp.answer.mid_to_track_id))
            assert self._pc is not None
            stale = resp.answer.id and resp.answer.id != self._offer_id
            if stale or self._pc.signalingState != "have-local-offer":
                # We offered again (the avatar's media sections) before this answer came: only
                # the answer to our latest offer applies.
                log.info("subscriber_stale_answer", answer_id=resp.answer.id, offer=self._offer_id)
                return
            await self._pc.setRemoteDescription(RTCSessionDescription(resp.answer.sdp, "answer"))
            self._maybe_hand_out(self._pc)
        elif which == "trickle":
            await self._add_candidate(resp.trickle)
        elif which == "update":
            for p in resp.update.participants:
                self._note_participant(p)
        elif which == "media_sections_requirement":
            await self._send(offer=await self._make_offer())
        elif which == "leave":
            if resp.leave.action == lkr.LeaveRequest.RECONNECT:
                raise _Rejoin("server asked for a full reconnect")
            name = lkm.DisconnectReason.Name(resp.leave.reason)
            raise _Fatal("room_left", f"the avatar's LiveKit room ended ({name})")
        elif which == "reconnect":
            self._last_pong = time.monotonic()

    async def _answer(self, offer: lkr.SessionDescription) -> None:
        pc = self._pc
        assert pc is not None
        await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self._send(
            answer=lkr.SessionDescription(type="answer", sdp=pc.localDescription.sdp, id=offer.id)
        )
        self._maybe_hand_out(pc)

    async def _add_candidate(self, trickle: lkr.TrickleRequest) -> None:
        if self._pc is None:
            return
        if not self._opts.single_peer_connection and trickle.target != lkr.SUBSCRIBER:
            return  # the publisher connection is never created
        try:
            init = json.loads(trickle.candidateInit)
        except ValueError:
            return
        cand_sdp = str(init.get("candidate") or "")
        if not cand_sdp:
            return
        cand = candidate_from_sdp(cand_sdp.split(":", 1)[1])
        cand.sdpMid, cand.sdpMLineIndex = init.get("sdpMid"), init.get("sdpMLineIndex")
        await self._pc.addIceCandidate(cand)

    # -- tracks ----------------------------------------------------------------------------------

    def _note_participant(self, p: lkm.ParticipantInfo) -> None:
        for t in p.tracks:
            self._track_owner[t.sid] = p.identity
            if t.type == lkm.VIDEO and p.identity == self._opts.avatar_identity:
                self.video_mime = t.mime_type or self.video_mime
                if t.width and t.height:
                    self.video_size = (t.width, t.height)
        gone = p.state == lkm.ParticipantInfo.DISCONNECTED
        if p.identity == self._opts.avatar_identity and gone and not self._closing:
            self._fail("avatar_left", "the avatar left the LiveKit room")

    def _maybe_hand_out(self, pc: RTCPeerConnection) -> None:
        if pc is not self._pc or self._closing:
            return
        for t in pc.getTransceivers():
            track = t.receiver.track
            if track is None or t.kind not in ("audio", "video"):
                continue
            if self._handed.get(t.kind) is t.receiver:
                continue
            sid = self._track_sid(t, track)
            owner = self._track_owner.get(sid)
            if owner is not None and owner != self._opts.avatar_identity:
                continue  # somebody else's track
            others = any(o != self._opts.avatar_identity for o in self._track_owner.values())
            if owner is None and others:
                continue  # an unknown sid while others publish: not provably the avatar's
            self._handed[t.kind] = t.receiver
            log.info("subscriber_track", kind=t.kind, sid=sid, mid=t.mid)
            self._on_receiver(t.kind, t.receiver, sid)
            if t.kind == "video" and self._opts.video_layer is not None:
                self._tasks.spawn(
                    self._ask_layer(sid, self._opts.video_layer), "livekit_subscriber_layer"
                )
        if "audio" in self._handed and "video" in self._handed:
            self._tracks_ready.set()

    async def _ask_layer(self, sid: str, ask: LayerAsk) -> None:
        """UpdateTrackSettings for the avatar's video (a lost connection is the supervisor's
        business: a rejoin hands the receiver out again, and asks again)."""
        try:
            await self._send(
                track_setting=lkr.UpdateTrackSettings(
                    track_sids=[sid],
                    quality=cast(Any, ask.quality),  # a VideoQuality number (HIGH = 2)
                    width=ask.width,
                    height=ask.height,
                )
            )
        except _Lost as exc:
            log.warning("subscriber_layer_request_failed", error=str(exc))
            return
        log.info("subscriber_layer_requested", sid=sid, width=ask.width, height=ask.height)

    def _track_sid(self, t: RTCRtpTransceiver, track: MediaStreamTrack) -> str:
        if t.mid is not None and t.mid in self._mid_to_track:
            return self._mid_to_track[t.mid]
        return str(track.id)

    # -- plumbing --------------------------------------------------------------------------------

    async def _receive(
        self, ws: aiohttp.ClientWebSocketResponse, wait_s: float
    ) -> lkr.SignalResponse:
        while True:
            msg = await ws.receive(timeout=wait_s)
            if msg.type == aiohttp.WSMsgType.BINARY:
                return lkr.SignalResponse.FromString(msg.data)
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                raise _Lost(f"signalling closed ({msg.type.name})")

    async def _send(self, **message: Any) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise _Lost("signalling is not connected")
        data = lkr.SignalRequest(**message).SerializeToString()
        try:
            async with self._send_lock, asyncio.timeout(_SEND_TIMEOUT_S):
                await ws.send_bytes(data)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            raise _Lost(f"signalling send failed: {exc}") from exc

    async def _close_ws(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await ws.close()

    async def _drop_connection(self) -> None:
        await self._close_ws()
        pc, self._pc = self._pc, None
        if pc is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await pc.close()

    def _fail(self, reason: str, message: str) -> None:
        if self._closing or self._failed:
            return
        self._failed = True
        self._tracks_ready.set()  # wake start() if it is still waiting
        FAILURES.labels(reason).inc()
        log.warning("subscriber_failed", reason=reason)
        self._on_failure(BridgeError(ErrorCode.LIVEKIT_FAILED, message))


class _Fatal(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
