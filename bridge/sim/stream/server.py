"""A Stream Video stand-in: coordinator (JSON REST + WebSocket) and SFU (protobuf WebSocket + Twirp)
on one aiohttp app, whose media side is an aiortc peer connection per publishing session that
decodes and measures what a viewer would get, and forwards it to the call's other participants.

Clients: the real ``getstream_rtc`` SDK joins it unchanged when given ``base_url`` and ``ws_url``;
Stream's browser SDK (``@stream-io/video-client``) unchanged with ``baseURL`` =
:attr:`StreamStandIn.browser_base_url` (its URL layout, CORS, Twirp JSON, health checks sent as
JSON arrays are all served). Protocol details and pitfalls: ``specs/stream-standin.md``;
forwarding: :mod:`bridge.sim.stream.forward`. Test-only endpoints live under ``/_standin/``.

Assumptions where the real service could not be observed (from the SDKs' sources and Stream's
protocol definitions): the answer to a publisher carries only the granted codec; the SFU's ICE
candidates are not in its SDP but trickled (``SfuEvent.ice_trickle``, tagged with their ufrag), the
publisher's before the ``SetPublisher`` answer, the subscriber's after its offer (Stream's Rust SDK
buffers them because "the SFU trickles its candidates as soon as it receives our offer",
``src/rtc/peer/ice.rs``; the browser SDK's ``IceTrickleBuffer`` keys them by ufrag); call settings
of the built-in call types (:mod:`bridge.sim.stream.coordinator_models`); an unknown call type is
Stream's ``DoesNotExist`` (16, HTTP 404); a Twirp method outside ``SignalServer`` is Twirp's
``bad_route``; the location hint is answered locally (:attr:`StreamStandIn.location_hint_url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import av
import jwt
import numpy as np
import structlog
from aiohttp import WSMsgType, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.sdp import candidate_from_sdp
from getstream.video.rtc.pb.stream.video.sfu.event import events_pb2 as ev
from getstream.video.rtc.pb.stream.video.sfu.models import models_pb2 as pbm
from getstream.video.rtc.pb.stream.video.sfu.signal_rpc import signal_pb2 as sig
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

from bridge import negotiation_guard
from bridge.sim.stream.coordinator_models import BUILTIN_CALL_TYPES, get_or_create_call_response
from bridge.sim.stream.forward import (
    ForwardFaults,
    PublishedTrack,
    Subscriber,
    TrackKey,
    install_forward_tap,
)
from bridge.sim.stream.measure import CallMeasure, MarkReader, OnsetDetectorFactory
from bridge.sim.stream.recorder import Mp4Recorder
from bridge.sim.stream.rtp_taps import (
    ArrivalTimes,
    DecodableGate,
    FaultCounts,
    LightCounter,
    MediaSsrc,
    ReceiveFaults,
    StreamContinuity,
    WireCodecs,
    install_arrival_tap,
    install_assembly_tap,
    install_decodable_gate,
    install_faults,
    install_light,
    install_ssrc_tap,
    install_wire_tap,
    renack,
)
from bridge.sim.stream.vp9 import enable_vp9_receive

log = structlog.get_logger(__name__)

SIM_REQUESTS = PromCounter("sim_stream_requests_total", "Stand-in requests", ["endpoint"])
SIM_SESSIONS = Gauge("sim_stream_sfu_sessions", "SFU sessions currently joined")
SIM_FRAMES = PromCounter("sim_stream_frames_received_total", "Decoded frames", ["kind"])

OWN_CAPABILITIES = [
    "join-call",
    "read-call",
    "send-audio",
    "send-video",
    "screenshare",
    "update-call",
    "end-call",
]
_TWIRP_PREFIX = "/twirp/stream.video.sfu.signal.SignalServer/"
_MORE_INFO = "https://getstream.io/video/docs/api/errors"
# Stream API error codes (the ``code`` of the JSON error body).
_CODE_ACCESS_KEY = 2
_CODE_INPUT = 4
_CODE_DOES_NOT_EXIST = 16
_CODE_NOT_ALLOWED = 17
_CODE_TOKEN_EXPIRED = 40
_CODE_TOKEN_SIGNATURE = 43
_NET_TIMEOUT_S = 5.0
# The SDK's generated protobuf modules are untyped for mypy: messages are Any.
Pb = Any
_LEAVES_KEPT = 64
# The video codecs this SFU can receive (and so grant): aiortc decodes VP8 and H264 itself and
# VP9 through bridge.sim.stream.vp9.
GRANTABLE_CODECS = ("VP8", "H264", "VP9")
# Offer payloads that are not the video codec itself.
_AUXILIARY_CODECS = frozenset({"RTX", "RED", "ULPFEC", "FLEXFEC-03"})


# Every method of Stream's SignalServer service, with its response type (from the SDK's protos).
_SIGNAL_METHODS: dict[str, Any] = {
    m.name: GetMessageClass(m.output_type)
    for m in sig.DESCRIPTOR.services_by_name["SignalServer"].methods
}
_SIGNAL_INPUTS: dict[str, Any] = {
    m.name: GetMessageClass(m.input_type)
    for m in sig.DESCRIPTOR.services_by_name["SignalServer"].methods
}


class StandInAuthError(Exception):
    """A request the real service would refuse; carries Stream's JSON error fields."""

    def __init__(self, code: int, status: int, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "StatusCode": self.status,
            "duration": "0.00ms",
            "more_info": _MORE_INFO,
            "details": [],
            "unrecoverable": True,
        }


@dataclass(eq=False)
class _Session:
    session_id: str
    user_id: str
    call: _Call
    ws: web.WebSocketResponse | None
    joined_at: float = field(default_factory=time.monotonic)
    pub_pc: RTCPeerConnection | None = None
    pending_ice: list[str] = field(default_factory=list)
    tracks: list[int] = field(default_factory=list)
    muted: set[int] = field(default_factory=set)
    left_reason: str | None = None
    # The video codec of this session's publish option (its preferred one when the SFU has it).
    # What is granted, not what arrives: the codec figures come from ``wire``.
    video_codec: str = "VP9"
    # Payload types received per track kind, named through the publisher PC's answer.
    wire: dict[str, WireCodecs] = field(default_factory=dict)
    # Measured on the wire: one continuous RTP stream per kind (SSRC, sequence, timestamps, SRs).
    continuity: dict[str, StreamContinuity] = field(default_factory=dict)
    # Forwarding (bridge.sim.stream.forward): what this session publishes, the publishers whose
    # video it asked for (UpdateSubscriptions), and its subscriber PC.
    published: dict[str, PublishedTrack] = field(default_factory=dict)
    video_subs: set[str] = field(default_factory=set)
    subscriber: Subscriber | None = None
    expiry: asyncio.TimerHandle | None = None

    async def send(self, event: ev.SfuEvent) -> None:
        ws = self.ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await asyncio.wait_for(ws.send_bytes(event.SerializeToString()), _NET_TIMEOUT_S)


@dataclass(eq=False)
class _Call:
    call_type: str
    call_id: str
    measure: CallMeasure
    created_by: str
    video_codec: str  # the last publish option granted (not a measurement)
    sessions: dict[str, _Session] = field(default_factory=dict)
    deny_join: str | None = None
    joins: int = 0
    joins_by_user: dict[str, int] = field(default_factory=dict)  # a watcher's joins apart
    sfu_connects: int = 0
    leaves: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_LEAVES_KEPT))
    recorder: Mp4Recorder | None = None
    faults: ReceiveFaults | None = None
    fault_counts: FaultCounts = field(default_factory=FaultCounts)
    # Wire arrival of each audio RTP timestamp: decoded audio is timed by it (see ArrivalTimes).
    audio_arrivals: ArrivalTimes = field(default_factory=ArrivalTimes)
    # How the publisher answer breaks DTLS (see StreamStandIn.break_dtls); None: it does not.
    break_dtls: str | None = None
    # Light mode: decoded and measured anyway (the chosen call), else counted per session.
    full: bool = False
    light: dict[str, dict[str, LightCounter]] = field(default_factory=dict)
    # The video receiver that received packets last: the call's codec figure, measured.
    last_video_wire: WireCodecs | None = None
    # What the SFU granted the session that owns that receiver (per participant, from its
    # JoinRequest's preferred publish options; the call's default only when nobody publishes).
    last_video_grant: str | None = None
    # The hop from the SFU to the call's subscribers (loss, a video delay).
    forward_faults: ForwardFaults | None = None

    @property
    def cid(self) -> str:
        return f"{self.call_type}:{self.call_id}"


class StreamStandIn:
    """Coordinator + SFU stand-in. Use ``async with`` or ``start()`` / ``aclose()``.

    ``video_codec`` is the SFU's default video publish option ("VP9", "VP8" or "H264"); the SDK
    refuses to publish a track whose codec is not advertised. A publisher whose ``JoinRequest``
    carries ``preferred_publish_options`` gets the first preferred video codec that is in
    ``grantable_codecs`` instead (what Stream's browser SDK asks for with its preferred codec).
    A ``SetPublisher`` whose offer does not carry the granted codec is refused with the SFU's
    error. ``fast_reconnect_deadline_s`` is how long a session outlives its SFU WebSocket waiting
    for the SDK's fast reconnect.

    ``light`` mode counts and checks each session's packets and keyframes instead of decoding
    them (see :mod:`bridge.sim.stream.rtp_taps`); calls named in ``full_calls`` ("type:id"), or
    chosen later with :meth:`measure_fully`, are still decoded and measured. ``receive_faults``
    drops / delays packets on the receive hop of every call (per call: :meth:`set_receive_faults`).
    """

    def __init__(
        self,
        api_key: str = "standin-key",
        api_secret: str | None = None,
        *,
        video_codec: str = "VP9",
        grantable_codecs: Iterable[str] = GRANTABLE_CODECS,
        fast_reconnect_deadline_s: float = 5.0,
        mark_reader: MarkReader | None = None,
        onset_detector: OnsetDetectorFactory | None = None,
        light: bool = False,
        full_calls: Iterable[str] = (),
        receive_faults: ReceiveFaults | None = None,
    ) -> None:
        grantable = tuple(c.upper() for c in grantable_codecs)
        for codec in (video_codec.upper(), *grantable):
            if codec not in GRANTABLE_CODECS:
                raise ValueError(f"unsupported video codec {codec!r}")
        enable_vp9_receive()
        self.grantable_codecs = grantable
        self.light = light
        self._full_calls = set(full_calls)
        self._default_faults = receive_faults
        self.api_key = api_key
        self.api_secret = api_secret or secrets.token_urlsafe(32)
        self.video_codec = video_codec.upper()
        self.fast_reconnect_deadline_s = fast_reconnect_deadline_s
        self._mark_reader = mark_reader
        self._onset_detector = onset_detector
        self._sfu_secret = secrets.token_bytes(32)  # signs the SFU tokens this SFU hands out
        self._calls: dict[str, _Call] = {}
        self._sessions: dict[str, _Session] = {}
        self._coordinator_ws: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self.rpcs: Counter[str] = Counter()
        # Coordinator WebSockets: authenticated connections and health checks answered.
        self.coordinator_connects = 0
        self.health_checks = 0
        self._closed = False

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(middlewares=[self._count_requests, _cors])
        # Two URL layouts of one API: the server SDKs' (base URL + /api/v2/...) and the browser
        # SDK's (its baseURL ends in /video: REST at /video/call/..., WebSocket at /video/connect).
        for prefix in ("/api/v2", "/video"):
            app.router.add_get(f"{prefix}/connect", self._coordinator_ws_handler)
        for prefix in ("/api/v2/video", "/video"):
            app.router.add_post(f"{prefix}/call/{{type}}/{{id}}/join", self._join_call)
            app.router.add_post(f"{prefix}/call/{{type}}/{{id}}", self._get_or_create)
        app.router.add_route("HEAD", "/location_hint", self._location_hint)
        app.router.add_get("/ws", self._sfu_ws_handler)
        app.router.add_post(_TWIRP_PREFIX + "{method}", self._twirp)
        app.router.add_get("/_standin/calls", self._http_calls)
        app.router.add_get("/_standin/calls/{type}/{id}", self._http_stats)
        app.router.add_post("/_standin/calls/{type}/{id}/reset", self._http_reset)
        app.router.add_post("/_standin/calls/{type}/{id}/fault/{fault}", self._http_fault)
        # Short shutdown: clients (a browser SDK reconnecting) may hold connections open.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_NET_TIMEOUT_S
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self._host, self._port = host, server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("stream_standin_listening", base_url=self.base_url, codec=self.video_codec)

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def browser_base_url(self) -> str:
        """The ``baseURL`` to give Stream's browser SDK (``StreamVideoClient`` options)."""
        return f"{self.base_url}/video"

    @property
    def location_hint_url(self) -> str:
        """Where the browser SDK may ask for its location hint (else it asks Stream's CDN)."""
        return f"{self.base_url}/location_hint"

    @property
    def ws_url(self) -> str:
        """The coordinator WebSocket URL to give ``getstream_rtc.Client(ws_url=...)``."""
        return f"ws://{self._host}:{self._port}/api/v2/connect"

    @property
    def port(self) -> int:
        return self._port

    async def aclose(self) -> None:
        """Close every session, peer connection, socket and task. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for session in list(self._sessions.values()):
            await self._end_session(session, "stand-in closed")
        for ws in list(self._coordinator_ws):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), _NET_TIMEOUT_S)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for call in self._calls.values():
            if call.recorder is not None:
                await call.recorder.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("stream_standin_closed")

    async def __aenter__(self) -> StreamStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("standin_task_failed", task=name)

        task = asyncio.get_running_loop().create_task(run(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- measurement API ---------------------------------------------------------------------

    def calls(self) -> list[dict[str, Any]]:
        """Every call seen, with its participants and measurement."""
        return [self._call_stats(c) for c in self._calls.values()]

    def stats(self, call_type: str, call_id: str) -> dict[str, Any]:
        call = self._calls.get(f"{call_type}:{call_id}")
        if call is None:
            raise KeyError(f"{call_type}:{call_id}")
        return self._call_stats(call)

    def measure(self, call_type: str, call_id: str) -> CallMeasure:
        """The live measurement object of a call (for in-process harnesses: demo, bench)."""
        return self._call(call_type, call_id).measure

    def reset_measure(
        self, call_type: str, call_id: str, media_origin_t: float | None = None
    ) -> None:
        """Start the measurement afresh (after a warm-up); ``media_origin_t`` is the monotonic
        time of media_ms 0 on the sender's clock, for end-to-end latency."""
        measure = self._call(call_type, call_id).measure
        measure.reset()
        measure.media_origin_t = media_origin_t

    def record(self, call_type: str, call_id: str, path: str) -> None:
        """Record the call's decoded audio and video to an MP4 file (closed on aclose)."""
        call = self._call(call_type, call_id)
        if call.recorder is None:
            call.recorder = Mp4Recorder(path)

    async def stop_recording(self, call_type: str, call_id: str) -> None:
        call = self._call(call_type, call_id)
        if call.recorder is not None:
            recorder, call.recorder = call.recorder, None
            await recorder.aclose()

    def _call(self, call_type: str, call_id: str, created_by: str = "") -> _Call:
        cid = f"{call_type}:{call_id}"
        call = self._calls.get(cid)
        if call is None:
            measure = CallMeasure(cid, self._mark_reader, self._onset_detector)
            call = _Call(call_type, call_id, measure, created_by, self.video_codec)
            call.full = cid in self._full_calls
            call.faults = self._default_faults
            self._calls[cid] = call
        return call

    def _call_stats(self, call: _Call) -> dict[str, Any]:
        out = call.measure.snapshot()
        out["participants"] = [
            {
                "user_id": s.user_id,
                "session_id": s.session_id,
                "tracks": [pbm.TrackType.Name(t) for t in s.tracks],
                "muted": sorted(pbm.TrackType.Name(t) for t in s.muted),
                "connected": s.ws is not None and not s.ws.closed,
                "pc_state": s.pub_pc.connectionState if s.pub_pc else None,
                "granted_video_codec": s.video_codec,
                "subscriber": s.subscriber.snapshot() if s.subscriber else None,
                # The publisher's hop: RTX received and the SFU's NACKs, from the wire.
                "published": {kind: t.snapshot() for kind, t in s.published.items()},
                "wire": {kind: w.snapshot() for kind, w in s.wire.items()},
                "continuity": {kind: c.snapshot() for kind, c in s.continuity.items()},
            }
            for s in call.sessions.values()
        ]
        out["joins"] = call.joins
        out["joins_by_user"] = dict(call.joins_by_user)
        out["sfu_connects"] = call.sfu_connects
        out["leaves"] = list(call.leaves)
        # Measured: the payload type on the wire, named by the negotiated SDP. None before the
        # first video packet. The grant is reported apart and never stands in for it.
        out["video_codec"] = call.last_video_wire.codec() if call.last_video_wire else None
        out["video_codec_granted"] = call.last_video_grant or call.video_codec
        out["recording"] = call.recorder.stats() if call.recorder else None
        out["mode"] = "light" if self.light and not call.full else "full"
        out["light"] = {
            sid: {kind: counter.snapshot() for kind, counter in counters.items()}
            for sid, counters in call.light.items()
        }
        out["receive_faults"] = {
            "config": None if call.faults is None else asdict(call.faults),
            **call.fault_counts.as_dict(),
        }
        return out

    # ---- fault knobs -------------------------------------------------------------------------

    def set_receive_faults(
        self, call_type: str, call_id: str, faults: ReceiveFaults | None
    ) -> None:
        """Drop / delay this call's packets on the receive hop from now on (None: stop)."""
        self._call(call_type, call_id).faults = faults

    def set_forward_faults(
        self, call_type: str, call_id: str, faults: ForwardFaults | None
    ) -> None:
        """Loss / a video delay on the hop from the SFU to this call's subscribers (None: off)."""
        self._call(call_type, call_id).forward_faults = faults

    def measure_fully(self, call_type: str, call_id: str) -> None:
        """In light mode, decode and measure this call (its sessions that publish from now on)."""
        self._call(call_type, call_id).full = True

    def deny_join(self, call_type: str, call_id: str, reason: str | None = "denied") -> None:
        """Refuse coordinator joins of this call (403, as for a user without JoinCall);
        ``None`` allows them again."""
        self._call(call_type, call_id).deny_join = reason

    async def drop_sfu_ws(self, call_type: str, call_id: str) -> int:
        """Close the SFU WebSocket of every session in the call (the SDK reconnects)."""
        sessions = list(self._call(call_type, call_id).sessions.values())
        for s in sessions:
            if s.ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.ws.close(code=1011), _NET_TIMEOUT_S)
        return len(sessions)

    async def kill_peer_connection(
        self, call_type: str, call_id: str, *, notify: bool = True
    ) -> int:
        """Close the publisher peer connection of every session in the call.

        With ``notify`` the SFU then reports the transport failure with a REJOIN strategy, as a
        real SFU does when it loses a participant's media; without it the SDK only notices through
        its ICE timeouts (more than 20 s with getstream_rtc 0.1.0).
        """
        n = 0
        for s in list(self._call(call_type, call_id).sessions.values()):
            if s.pub_pc is not None:
                pc, s.pub_pc = s.pub_pc, None
                await pc.close()
                n += 1
                if notify:
                    err = pbm.Error(
                        code=pbm.ERROR_CODE_PARTICIPANT_MEDIA_TRANSPORT_FAILURE,
                        message="publisher transport failed",
                        should_retry=True,
                    )
                    strategy = pbm.WEBSOCKET_RECONNECT_STRATEGY_REJOIN
                    await s.send(
                        ev.SfuEvent(error=ev.Error(error=err, reconnect_strategy=strategy))
                    )
        return n

    def break_dtls(self, call_type: str, call_id: str, how: str | None = "mismatch") -> None:
        """Break the DTLS of this call's next publishers (ICE still connects; no media flows).

        ``mismatch``: the answer's fingerprint is not the SFU certificate's, so the handshake
        fails. ``missing``: the answer has no fingerprint, so the client's DTLS transport cannot
        even start (in aiortc: an exception in ``RTCDtlsTransport.start``, the same failure as
        pyOpenSSL's callback under ``MemoryDenyWriteExecute``). ``None`` repairs it.
        """
        if how not in (None, "mismatch", "missing"):
            raise ValueError(f"unknown DTLS fault {how!r}")
        self._call(call_type, call_id).break_dtls = how

    async def revoke_send_video(self, call_type: str, call_id: str) -> None:
        """Send ``call_grants_updated`` without the video grant to every session."""
        grants = pbm.CallGrants(can_publish_audio=True, can_publish_video=False)
        event = ev.SfuEvent(
            call_grants_updated=ev.CallGrantsUpdated(
                current_grants=grants, message="send-video revoked by the stand-in"
            )
        )
        for s in list(self._call(call_type, call_id).sessions.values()):
            await s.send(event)

    async def pause_video_layer(self, call_type: str, call_id: str, paused: bool = True) -> None:
        """Send ``change_publish_quality`` switching the single video layer off (or on)."""
        call = self._call(call_type, call_id)
        layer = ev.VideoLayerSetting(name="q", active=not paused, max_bitrate=1_000_000)
        sender = ev.VideoSender(
            codec=self._video_codec_pb(call.video_codec),
            layers=[layer],
            track_type=pbm.TRACK_TYPE_VIDEO,
            publish_option_id=1,
        )
        event = ev.SfuEvent(change_publish_quality=ev.ChangePublishQuality(video_senders=[sender]))
        for s in list(call.sessions.values()):
            await s.send(event)
            if not paused and s.pub_pc is not None:
                # Like an SFU activating a layer: ask for a keyframe to restart decoding.
                for receiver in s.pub_pc.getReceivers():
                    if receiver.track is not None and receiver.track.kind == "video":
                        self._spawn(_request_keyframe(receiver, repeat=3), "pli-resume")

    async def end_call(self, call_type: str, call_id: str) -> None:
        """End the call for everyone (SFU ``call_ended``): the SDK leaves for good."""
        event = ev.SfuEvent(call_ended=ev.CallEnded(reason=pbm.CALL_ENDED_REASON_ENDED))
        for s in list(self._call(call_type, call_id).sessions.values()):
            await s.send(event)

    # ---- auth --------------------------------------------------------------------------------

    def _check_user_token(self, api_key: str | None, token: str | None, user_id: str | None) -> str:
        """Verify a client JWT like the real coordinator; returns the user id it acts as."""
        if api_key != self.api_key:
            raise StandInAuthError(
                _CODE_ACCESS_KEY, 401, f'api_key not valid: no application with key "{api_key}"'
            )
        if not token:
            raise StandInAuthError(_CODE_INPUT, 401, "JWTAuth error: token is missing")
        try:
            claims = jwt.decode(
                token.removeprefix("Bearer "), self.api_secret, algorithms=["HS256"]
            )
        except jwt.ExpiredSignatureError as exc:
            raise StandInAuthError(
                _CODE_TOKEN_EXPIRED, 401, "JWTAuth error: token has expired"
            ) from exc
        except jwt.InvalidTokenError as exc:
            raise StandInAuthError(
                _CODE_TOKEN_SIGNATURE,
                401,
                "JWTAuth error: signature is not valid. Make sure the token is created using "
                f'the secret for API key "{api_key}"',
            ) from exc
        token_user = claims.get("user_id")
        if token_user is None:  # a server-side token (signed with the secret, no user_id)
            return user_id or "server"
        if user_id and user_id != token_user:
            raise StandInAuthError(
                _CODE_INPUT, 401, "JWTAuth error: user_id does not match the token's user_id"
            )
        return str(token_user)

    def _sfu_token(self, user_id: str, cid: str) -> str:
        claims = {"user_id": user_id, "call_cid": cid, "exp": int(time.time()) + 3600}
        return jwt.encode(claims, self._sfu_secret, algorithm="HS256")

    def _check_sfu_token(self, token: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(token, self._sfu_secret, algorithms=["HS256"])
        return claims

    # ---- coordinator -------------------------------------------------------------------------

    @web.middleware
    async def _count_requests(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.resource
        SIM_REQUESTS.labels(route.canonical if route else "unmatched").inc()
        if self._closed:  # shutting down: no new sessions (an SDK reconnects at once)
            return web.json_response({"error": "stand-in closing"}, status=503)
        return await handler(request)

    async def _coordinator_ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=1 << 20)
        await ws.prepare(request)
        self._coordinator_ws.add(ws)
        connection_id = str(uuid.uuid4())
        authed = False
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    decoded = json.loads(msg.data)
                except ValueError:
                    continue
                # The browser SDK sends its health checks as a JSON array of events.
                batch = decoded if isinstance(decoded, list) else [decoded]
                data = next((d for d in batch if isinstance(d, dict)), None)
                if data is None:
                    continue
                if not authed:
                    user = data.get("user_details") or {}
                    try:
                        user_id = self._check_user_token(
                            request.query.get("api_key"), data.get("token"), user.get("id")
                        )
                    except StandInAuthError as exc:
                        log.info("coordinator_ws_auth_refused", code=exc.code)
                        await ws.send_json(
                            {"type": "connection.error", "created_at": _now(), "error": exc.body()}
                        )
                        break
                    authed = True
                    self.coordinator_connects += 1
                    me = {"id": user_id, "role": "user", "name": user.get("name", user_id)}
                    await ws.send_json(
                        {
                            "type": "connection.ok",
                            "connection_id": connection_id,
                            "created_at": _now(),
                            "me": me,
                        }
                    )
                elif data.get("type") == "health.check":
                    self.health_checks += 1
                    await ws.send_json(
                        {
                            "type": "health.check",
                            "connection_id": connection_id,
                            "created_at": _now(),
                        }
                    )
        finally:
            self._coordinator_ws.discard(ws)
        await ws.close()
        return ws

    async def _location_hint(self, request: web.Request) -> web.Response:
        # Stream's hint service answers with the CDN POP that served it; the SDK keeps 3 letters.
        return web.Response(headers={"x-amz-cf-pop": "LCL1-P1"})

    def _rest_user(self, request: web.Request) -> str:
        return self._check_user_token(
            request.query.get("api_key"),
            request.headers.get("Authorization"),
            request.query.get("user_id"),
        )

    def _check_call_type(self, call_type: str, method: str) -> None:
        """Refuse a call type the app does not have, as the coordinator does (404, code 16).

        Assumed shape: Stream's JSON API error with ``DoesNotExist`` (16), the message in the
        "<Method> failed with error: ..." form its other errors use."""
        if call_type not in BUILTIN_CALL_TYPES:
            raise StandInAuthError(
                _CODE_DOES_NOT_EXIST,
                404,
                f'{method} failed with error: "call type {call_type} does not exist"',
            )

    async def _join_call(self, request: web.Request) -> web.Response:
        call_type, call_id = request.match_info["type"], request.match_info["id"]
        try:
            user_id = self._rest_user(request)
            self._check_call_type(call_type, "JoinCall")
        except StandInAuthError as exc:
            return web.json_response(exc.body(), status=exc.status)
        call = self._call(call_type, call_id, created_by=user_id)
        if call.deny_join is not None:
            err = StandInAuthError(
                _CODE_NOT_ALLOWED,
                403,
                f"JoinCall failed with error: \"User '{user_id}' with role 'user' is not allowed "
                f"to perform action JoinCall in scope 'video:{call_type}'\" ({call.deny_join})",
            )
            return web.json_response(err.body(), status=err.status)
        call.joins += 1
        call.joins_by_user[user_id] = call.joins_by_user.get(user_id, 0) + 1
        base = self.base_url
        body = get_or_create_call_response(
            call_type,
            call_id,
            created=call.joins == 1,
            created_by=call.created_by or user_id,
            own_capabilities=OWN_CAPABILITIES,
            session_id="",
        )
        body["credentials"] = {
            "server": {
                "edge_name": "standin-edge",
                "url": f"{base}/twirp",
                "ws_endpoint": f"ws://{self._host}:{self._port}/ws",
            },
            "token": self._sfu_token(user_id, call.cid),
            "ice_servers": [],
        }
        body["stats_options"] = {"reporting_interval_ms": 0, "enable_rtc_stats": False}
        log.info("coordinator_join", cid=call.cid, user_id=user_id)
        return web.json_response(body)

    async def _get_or_create(self, request: web.Request) -> web.Response:
        call_type, call_id = request.match_info["type"], request.match_info["id"]
        try:
            user_id = self._rest_user(request)
            self._check_call_type(call_type, "GetOrCreateCall")
        except StandInAuthError as exc:
            return web.json_response(exc.body(), status=exc.status)
        try:
            payload = await request.json()
        except ValueError:
            payload = {}
        data = payload.get("data") if isinstance(payload, dict) else None
        creator = str((data or {}).get("created_by_id") or user_id)
        created = f"{call_type}:{call_id}" not in self._calls
        call = self._call(call_type, call_id, created_by=creator)
        body = get_or_create_call_response(
            call_type,
            call_id,
            created=created,
            created_by=call.created_by or creator,
            own_capabilities=OWN_CAPABILITIES,
            session_id="",
        )
        return web.json_response(body)

    # ---- SFU WebSocket -----------------------------------------------------------------------

    def _video_codec_pb(self, name: str) -> pbm.Codec:
        if name == "VP9":
            return pbm.Codec(name="VP9", payload_type=98, clock_rate=90000, fmtp="profile-id=0")
        if name == "H264":
            return pbm.Codec(
                name="H264",
                payload_type=102,
                clock_rate=90000,
                fmtp="level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            )
        return pbm.Codec(name="VP8", payload_type=96, clock_rate=90000)

    def _grant_video_codec(self, jr: ev.JoinRequest) -> str:
        """The first preferred video codec this SFU can receive, else its default."""
        for option in jr.preferred_publish_options:
            if option.track_type not in (pbm.TRACK_TYPE_VIDEO, pbm.TRACK_TYPE_UNSPECIFIED):
                continue
            name = str(option.codec.name).upper()
            if name in self.grantable_codecs:
                return name
        return self.video_codec

    def _publish_options(self, video_codec: str) -> list[pbm.PublishOption]:
        audio = pbm.PublishOption(
            track_type=pbm.TRACK_TYPE_AUDIO,
            id=0,
            bitrate=64000,
            codec=pbm.Codec(
                name="opus",
                payload_type=111,
                clock_rate=48000,
                encoding_parameters="2",
                fmtp="minptime=10;useinbandfec=1",
            ),
        )
        # Single layer: aiortc receives neither simulcast nor SVC.
        video = pbm.PublishOption(
            track_type=pbm.TRACK_TYPE_VIDEO,
            id=1,
            bitrate=1_500_000,
            fps=30,
            max_spatial_layers=1,
            max_temporal_layers=1,
            use_single_layer=True,
            video_dimension=pbm.VideoDimension(width=1280, height=720),
            codec=self._video_codec_pb(video_codec),
        )
        return [audio, video]

    def _participant(self, s: _Session) -> pbm.Participant:
        p = pbm.Participant(
            user_id=s.user_id,
            session_id=s.session_id,
            track_lookup_prefix=_lookup_prefix(s.session_id),
            name=s.user_id,
            roles=["user"],
            published_tracks=s.tracks,
            connection_quality=pbm.CONNECTION_QUALITY_EXCELLENT,
        )
        p.joined_at.GetCurrentTime()
        return p

    async def _sfu_ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=1 << 20)
        await ws.prepare(request)
        session: _Session | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                try:
                    req = ev.SfuRequest.FromString(msg.data)
                except DecodeError:
                    log.warning("sfu_ws_undecodable_request")
                    continue
                kind = req.WhichOneof("request_payload")
                if kind == "join_request":
                    session = await self._on_join_request(ws, request, req.join_request)
                    if session is None:
                        break
                elif session is None:
                    continue  # nothing is valid before the join
                elif kind == "health_check_request":
                    count = pbm.ParticipantCount(total=len(session.call.sessions))
                    await session.send(
                        ev.SfuEvent(
                            health_check_response=ev.HealthCheckResponse(participant_count=count)
                        )
                    )
                elif kind == "leave_call_request":
                    session.left_reason = req.leave_call_request.reason or "left"
                    log.info("sfu_leave", session=session.session_id, reason=session.left_reason)
        finally:
            if session is not None and session.ws is ws:
                session.ws = None
                if session.left_reason is not None or self._closed:
                    await self._end_session(session, session.left_reason or "closed")
                else:
                    # Keep the session for a fast reconnect (same session id, new WebSocket).
                    loop = asyncio.get_running_loop()
                    s = session
                    session.expiry = loop.call_later(
                        self.fast_reconnect_deadline_s,
                        lambda: self._spawn(self._end_session(s, "signal lost"), "expire-session"),
                    )
        await ws.close()
        return ws

    async def _on_join_request(
        self, ws: web.WebSocketResponse, request: web.Request, jr: ev.JoinRequest
    ) -> _Session | None:
        try:
            claims = self._check_sfu_token(jr.token)
        except jwt.InvalidTokenError:
            err = pbm.Error(
                code=pbm.ERROR_CODE_UNAUTHENTICATED, message="invalid SFU token", should_retry=False
            )
            event = ev.SfuEvent(
                error=ev.Error(
                    error=err, reconnect_strategy=pbm.WEBSOCKET_RECONNECT_STRATEGY_DISCONNECT
                )
            )
            await asyncio.wait_for(ws.send_bytes(event.SerializeToString()), _NET_TIMEOUT_S)
            return None
        cid = str(claims.get("call_cid", ""))
        call_type, _, call_id = cid.partition(":")
        call = self._call(call_type, call_id)
        call.sfu_connects += 1
        details = jr.reconnect_details if jr.HasField("reconnect_details") else None
        session = self._sessions.get(jr.session_id)
        reconnected = session is not None
        if session is not None:
            if session.expiry is not None:
                session.expiry.cancel()
                session.expiry = None
            session.ws = ws
        else:
            session = _Session(
                jr.session_id,
                str(claims.get("user_id")),
                call,
                ws,
                video_codec=self._grant_video_codec(jr),
            )
            call.video_codec = session.video_codec
            if details is not None and details.previous_session_id:
                previous = self._sessions.get(details.previous_session_id)
                if previous is not None:
                    await self._end_session(previous, "rejoined")
            others = list(call.sessions.values())
            self._sessions[session.session_id] = session
            call.sessions[session.session_id] = session
            SIM_SESSIONS.set(len(self._sessions))
            joined = ev.SfuEvent(
                participant_joined=ev.ParticipantJoined(
                    call_cid=cid, participant=self._participant(session)
                )
            )
            for other in others:
                await other.send(joined)
        log.info(
            "sfu_join",
            cid=cid,
            session=session.session_id,
            user_id=session.user_id,
            reconnect=pbm.WebsocketReconnectStrategy.Name(details.strategy) if details else None,
            preferred=[o.codec.name for o in jr.preferred_publish_options],
            granted=session.video_codec,
        )
        state = pbm.CallState(
            participants=[self._participant(s) for s in call.sessions.values()],
            participant_count=pbm.ParticipantCount(total=len(call.sessions)),
        )
        state.started_at.GetCurrentTime()
        response = ev.JoinResponse(
            call_state=state,
            reconnected=reconnected,
            fast_reconnect_deadline_seconds=max(1, int(self.fast_reconnect_deadline_s)),
            publish_options=self._publish_options(session.video_codec),
        )
        await session.send(ev.SfuEvent(join_response=response))
        return session

    async def _end_session(self, session: _Session, reason: str) -> None:
        if self._sessions.get(session.session_id) is not session:
            return
        del self._sessions[session.session_id]
        call = session.call
        call.sessions.pop(session.session_id, None)
        SIM_SESSIONS.set(len(self._sessions))
        if session.expiry is not None:
            session.expiry.cancel()
        call.leaves.append(
            {"session_id": session.session_id, "user_id": session.user_id, "reason": reason}
        )
        log.info("sfu_session_ended", cid=call.cid, session=session.session_id, reason=reason)
        if session.pub_pc is not None:
            pc, session.pub_pc = session.pub_pc, None
            await pc.close()
        for track in session.published.values():
            for sink in list(track.sinks):
                sink.close()
        session.published.clear()
        if session.subscriber is not None:
            sub, session.subscriber = session.subscriber, None
            await sub.close()
        self._refresh_subscriptions(call)
        if session.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.ws.close(), _NET_TIMEOUT_S)
        left = ev.SfuEvent(
            participant_left=ev.ParticipantLeft(
                call_cid=call.cid, participant=self._participant(session)
            )
        )
        for other in list(call.sessions.values()):
            await other.send(left)

    # ---- SFU Twirp ---------------------------------------------------------------------------

    async def _twirp(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.rpcs[method] += 1
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        try:
            self._check_sfu_token(token)
        except jwt.InvalidTokenError:
            return _twirp_error("unauthenticated", "invalid or missing SFU token", 401)
        body = await request.read()
        # Twirp speaks protobuf or JSON (the browser SDK sends JSON); the answer is in kind.
        as_json = request.content_type == "application/json"
        if as_json and method in _SIGNAL_INPUTS:
            try:
                parsed = json_format.Parse(
                    body or b"{}", _SIGNAL_INPUTS[method](), ignore_unknown_fields=True
                )
            except json_format.ParseError as exc:
                return _twirp_error("malformed", str(exc), 400)
            body = parsed.SerializeToString()
        handler = self._rpc_handlers().get(method)
        if handler is None:
            response_type = _SIGNAL_METHODS.get(method)
            if response_type is None:  # not in the service: Twirp's bad_route, as any Twirp server
                return _twirp_error(
                    "bad_route",
                    f'no handler for path "{request.path}"',
                    404,
                    meta={"twirp_invalid_route": f"POST {request.path}"},
                )
            return _protobuf(response_type(), as_json)  # in the service, not modelled: default
        try:
            out = await handler(body)
        except KeyError as exc:
            return _twirp_error("not_found", f"unknown session {exc}", 404)
        except DecodeError as exc:
            return _twirp_error("malformed", str(exc), 400)
        except Exception as exc:
            log.exception("twirp_handler_failed", method=method)
            return _twirp_error("internal", str(exc), 500)
        return _protobuf(out, as_json)

    def _rpc_handlers(self) -> dict[str, Callable[[bytes], Awaitable[Pb]]]:
        async def empty_stats(_: bytes) -> Pb:
            return sig.SendStatsResponse()

        return {
            "SetPublisher": self._rpc_set_publisher,
            "IceTrickle": self._rpc_ice_trickle,
            "UpdateMuteStates": self._rpc_update_mute_states,
            "IceRestart": self._rpc_ice_restart,
            "SendStats": empty_stats,
            "UpdateSubscriptions": self._rpc_update_subscriptions,
            "SendAnswer": self._rpc_send_answer,
        }

    async def _rpc_set_publisher(self, body: bytes) -> Pb:
        req = sig.SetPublisherRequest.FromString(body)
        session = self._sessions[req.session_id]
        new_tracks = [t.track_type for t in req.tracks]
        log.info(
            "sfu_set_publisher",
            session=session.session_id,
            tracks=[(pbm.TrackType.Name(t.track_type), t.codec.name) for t in req.tracks],
            ssrcs=sorted(
                {ln.split()[0][7:] for ln in req.sdp.splitlines() if ln.startswith("a=ssrc:")}
            ),
            ufrag=_sdp_attr(req.sdp, "ice-ufrag"),
        )
        refusal = _check_offer(req, session.video_codec)
        if refusal is not None:
            log.info("sfu_set_publisher_refused", session=session.session_id, reason=refusal)
            err = pbm.Error(
                code=pbm.ERROR_CODE_PUBLISH_TRACKS_MISMATCH, message=refusal, should_retry=False
            )
            return sig.SetPublisherResponse(session_id=req.session_id, error=err)
        pc = session.pub_pc
        if pc is None or pc.connectionState in ("closed", "failed"):
            pc = session.pub_pc = self._new_publisher_pc(session)
        elif pc.remoteDescription is not None:
            _follow_ice_restart(pc, req.sdp, session.session_id)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=req.sdp, type="offer"))
        _answer_only_granted(pc, session.video_codec)
        for cand in session.pending_ice:
            await _add_candidate(pc, cand)
        session.pending_ice.clear()
        # aiortc gathers while setting the local description; like Stream's SFU, the stand-in
        # trickles them (module docstring) before it answers.
        await pc.setLocalDescription(await pc.createAnswer())
        answer, candidates = split_candidates(pc.localDescription.sdp)
        for cand in candidates:
            await session.send(_trickle_event(session, pbm.PEER_TYPE_PUBLISHER_UNSPECIFIED, cand))
        for track_type in new_tracks:
            if track_type not in session.tracks:
                session.tracks.append(track_type)
                published = ev.SfuEvent(
                    track_published=ev.TrackPublished(
                        user_id=session.user_id,
                        session_id=session.session_id,
                        type=track_type,
                        participant=self._participant(session),
                    )
                )
                for other in list(session.call.sessions.values()):
                    if other is not session:
                        await other.send(published)
        if session.call.break_dtls == "mismatch":
            answer = re.sub(
                r"(a=fingerprint:sha-256 )\S+", r"\g<1>" + ":".join(["00"] * 32), answer
            )
        elif session.call.break_dtls == "missing":
            answer = re.sub(r"a=fingerprint:.*\r\n", "", answer)
        return sig.SetPublisherResponse(sdp=answer, session_id=req.session_id)

    def _new_publisher_pc(self, session: _Session) -> RTCPeerConnection:
        # Like Stream's SFU: video added after audio, maybe mid-handshake, is still received.
        negotiation_guard.install()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        def sdp_of(which: str) -> Callable[[], str | None]:
            def read() -> str | None:
                desc = getattr(pc, which)
                return None if desc is None else str(desc.sdp)

            return read

        def on_track(track: MediaStreamTrack) -> None:
            receiver = next((r for r in pc.getReceivers() if r.track is track), None)
            call = session.call
            light = self.light and not call.full and receiver is not None
            seen = MediaSsrc()
            if receiver is not None:
                wire = WireCodecs(
                    track.kind, sdp_of("localDescription"), sdp_of("remoteDescription")
                )
                session.wire[track.kind] = wire
                if track.kind == "video":
                    call.last_video_wire = wire
                    call.last_video_grant = session.video_codec
                if light:
                    counter = LightCounter(track.kind, codec_of=wire.name)
                    call.light.setdefault(session.session_id, {})[track.kind] = counter
                    install_light(receiver, counter)
                published = PublishedTrack(
                    TrackKey(session.session_id, track.kind),
                    _lookup_prefix(session.session_id),
                    receiver,
                    self._spawn,
                )
                old = session.published.get(track.kind)
                if old is not None:
                    for sink in list(old.sinks):
                        sink.close()
                session.published[track.kind] = published
                install_forward_tap(receiver, published)
                if track.kind == "audio":
                    install_arrival_tap(receiver, call.audio_arrivals)
                elif not light:
                    install_ssrc_tap(receiver, seen)
                    install_assembly_tap(receiver, call.measure.on_video_assembled)
                    # Inside the assembly tap: a withheld frame is not handed to the decoder.
                    install_decodable_gate(
                        receiver, DecodableGate(), lambda: call.measure.on_video_withheld()
                    )
                # Faults wrap whatever handles the packets, so a decoded call NACKs the gaps.
                install_faults(
                    receiver, track.kind, lambda: call.faults, call.fault_counts, self._spawn
                )
                # Outermost: the payload types as they arrive, before faults drop any.
                continuity = StreamContinuity(track.kind)
                session.continuity[track.kind] = continuity
                install_wire_tap(receiver, wire, continuity)
            if not light:
                self._spawn(self._consume(call, track, receiver, seen), f"consume-{track.kind}")
            self._refresh_subscriptions(call)

        def on_state() -> None:
            log.info("publisher_pc_state", session=session.session_id, state=pc.connectionState)
            if pc.connectionState == "connected":
                session.call.measure.on_publisher_connected()

        pc.on("track", on_track)
        pc.on("connectionstatechange", on_state)
        return pc

    # ---- forwarding -----------------------------------------------------------------------

    def _refresh_subscriptions(self, call: _Call) -> None:
        """Give every session of the call the tracks it should receive: everyone else's audio,
        and the video it asked for (see bridge.sim.stream.forward)."""
        for session in list(call.sessions.values()):
            wanted = {
                track.key: track
                for other in call.sessions.values()
                if other is not session
                for kind, track in other.published.items()
                if kind == "audio" or other.session_id in session.video_subs
            }
            if not wanted and session.subscriber is None:
                continue
            if session.subscriber is None:
                s = session

                async def send_offer(sdp: str, s: _Session = s) -> None:
                    offer, candidates = split_candidates(sdp)
                    await s.send(ev.SfuEvent(subscriber_offer=ev.SubscriberOffer(sdp=offer)))
                    for cand in candidates:
                        await s.send(_trickle_event(s, pbm.PEER_TYPE_SUBSCRIBER, cand))

                c = call
                session.subscriber = Subscriber(
                    session.session_id,
                    send_offer,
                    _add_candidate,
                    self._spawn,
                    lambda c=c: c.forward_faults,  # type: ignore[misc]
                )
            session.subscriber.want(wanted)

    async def _rpc_update_subscriptions(self, body: bytes) -> Pb:
        req = sig.UpdateSubscriptionsRequest.FromString(body)
        session = self._sessions[req.session_id]
        session.video_subs = {
            t.session_id for t in req.tracks if t.track_type == pbm.TRACK_TYPE_VIDEO
        }
        log.info(
            "sfu_update_subscriptions",
            session=req.session_id,
            video_from=sorted(v[:8] for v in session.video_subs),
        )
        self._refresh_subscriptions(session.call)
        return sig.UpdateSubscriptionsResponse()

    async def _rpc_send_answer(self, body: bytes) -> Pb:
        req = sig.SendAnswerRequest.FromString(body)
        session = self._sessions[req.session_id]
        if req.peer_type == pbm.PEER_TYPE_SUBSCRIBER and session.subscriber is not None:
            session.subscriber.on_answer(req.sdp)
        return sig.SendAnswerResponse()

    async def _rpc_ice_trickle(self, body: bytes) -> Pb:
        req = pbm.ICETrickle.FromString(body)
        session = self._sessions[req.session_id]
        if req.peer_type == pbm.PEER_TYPE_SUBSCRIBER:
            if session.subscriber is not None:
                await session.subscriber.add_candidate(req.ice_candidate)
        elif req.peer_type == pbm.PEER_TYPE_PUBLISHER_UNSPECIFIED:
            pc = session.pub_pc
            if pc is not None and pc.remoteDescription is not None:
                await _add_candidate(pc, req.ice_candidate)
            elif len(session.pending_ice) < 64:  # bounded: a flood before SetPublisher is dropped
                session.pending_ice.append(req.ice_candidate)
        return sig.ICETrickleResponse()

    async def _rpc_update_mute_states(self, body: bytes) -> Pb:
        req = sig.UpdateMuteStatesRequest.FromString(body)
        session = self._sessions[req.session_id]
        for state in req.mute_states:
            if state.muted:
                session.muted.add(state.track_type)
            else:
                session.muted.discard(state.track_type)
        log.info(
            "sfu_mute_states",
            session=req.session_id,
            states=[(pbm.TrackType.Name(m.track_type), m.muted) for m in req.mute_states],
        )
        return sig.UpdateMuteStatesResponse()

    async def _rpc_ice_restart(self, body: bytes) -> Pb:
        req = sig.ICERestartRequest.FromString(body)
        log.info("sfu_ice_restart_requested", session=req.session_id, peer=req.peer_type)
        return sig.ICERestartResponse()

    # ---- media -------------------------------------------------------------------------------

    async def _consume(
        self,
        call: _Call,
        track: MediaStreamTrack,
        receiver: RTCRtpReceiver | None,
        seen: MediaSsrc,
    ) -> None:
        log.info("track_received", cid=call.cid, kind=track.kind)
        if track.kind != "video" or receiver is None:
            await self._decode(call, track)
            return
        self._spawn(_request_keyframe(receiver), "pli")
        async with asyncio.TaskGroup() as tg:
            # Asks again for what is still missing, as Stream's SFU does (RENACK_INTERVAL_S).
            repair = tg.create_task(renack(receiver, seen))
            await self._decode(call, track)
            repair.cancel()

    async def _decode(self, call: _Call, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            now = time.monotonic()
            SIM_FRAMES.labels(track.kind).inc()
            if isinstance(frame, av.VideoFrame):
                plane = frame.planes[0]  # Y, rows padded to line_size
                y = np.frombuffer(memoryview(plane), np.uint8).reshape(
                    frame.height, plane.line_size
                )
                call.measure.on_video(frame.width, frame.height, y[:, : frame.width], now)
            elif isinstance(frame, av.AudioFrame):
                channels = len(frame.layout.channels)
                pcm = np.asarray(frame.to_ndarray(), dtype=np.int16).reshape(-1)
                wire_t = call.audio_arrivals.get(frame.pts)
                call.measure.on_audio(pcm, frame.sample_rate, channels, now, wire_t=wire_t)
            if call.recorder is not None:
                call.recorder.put(frame)
        log.info("track_ended", cid=call.cid, kind=track.kind)

    # ---- test-only HTTP ----------------------------------------------------------------------

    async def _http_calls(self, request: web.Request) -> web.Response:
        return web.json_response(self.calls())

    async def _http_stats(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(
                self.stats(request.match_info["type"], request.match_info["id"])
            )
        except KeyError:
            return web.json_response({"error": "no such call"}, status=404)

    async def _http_reset(self, request: web.Request) -> web.Response:
        origin = request.query.get("media_origin_t")
        self.reset_measure(
            request.match_info["type"], request.match_info["id"], float(origin) if origin else None
        )
        return web.json_response({"ok": True})

    async def _http_fault(self, request: web.Request) -> web.Response:
        ct, cid, fault = (
            request.match_info["type"],
            request.match_info["id"],
            request.match_info["fault"],
        )
        if fault == "deny_join":
            self.deny_join(ct, cid, request.query.get("reason", "denied"))
        elif fault == "allow_join":
            self.deny_join(ct, cid, None)
        elif fault == "drop_sfu_ws":
            await self.drop_sfu_ws(ct, cid)
        elif fault == "kill_pc":
            await self.kill_peer_connection(ct, cid)
        elif fault == "revoke_send_video":
            await self.revoke_send_video(ct, cid)
        elif fault == "end_call":
            await self.end_call(ct, cid)
        elif fault == "break_dtls":  # ?how=mismatch|missing
            try:
                self.break_dtls(ct, cid, request.query.get("how", "mismatch"))
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
        elif fault == "receive_faults":  # ?drop_every=&drop_rate=&seed=&delay_ms=&drop_first_rtx=
            q = request.query
            try:
                faults = ReceiveFaults(
                    drop_every=int(q.get("drop_every", 0)),
                    drop_rate=float(q.get("drop_rate", 0.0)),
                    seed=int(q.get("seed", 0)),
                    delay_ms=float(q.get("delay_ms", 0.0)),
                    drop_first_rtx=q.get("drop_first_rtx", "0") in ("1", "true"),
                )
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            self.set_receive_faults(ct, cid, faults if faults.active else None)
        elif fault in ("pause_video", "resume_video"):
            await self.pause_video_layer(ct, cid, paused=fault == "pause_video")
        else:
            return web.json_response({"error": f"unknown fault {fault}"}, status=404)
        return web.json_response({"ok": True})


async def _request_keyframe(receiver: RTCRtpReceiver, repeat: int = 1) -> None:
    """Frames sent before DTLS was up are lost, the first keyframe with them: ask for a new one
    (RTCP PLI) as soon as RTP of the track arrives (``repeat`` times, 300 ms apart)."""
    sent = 0
    for _ in range(200):
        await asyncio.sleep(0.05 if sent == 0 else 0.3)
        sources = receiver.getSynchronizationSources()
        if sources:
            await receiver._send_rtcp_pli(sources[0].source)
            sent += 1
            if sent >= repeat:
                return


async def _add_candidate(pc: RTCPeerConnection, candidate_json: str) -> None:
    data = json.loads(candidate_json)
    line = str(data.get("candidate", ""))
    if not line:
        return
    cand = candidate_from_sdp(line.removeprefix("candidate:"))
    cand.sdpMid = data.get("sdpMid")
    cand.sdpMLineIndex = data.get("sdpMLineIndex")
    await pc.addIceCandidate(cand)


def _offer_video_codecs(sdp: str) -> list[str]:
    """The video codec names an offer carries (rtpmap of its video sections), RTX and FEC aside."""
    names: list[str] = []
    in_video = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            in_video = line.startswith("m=video")
        elif in_video and line.startswith("a=rtpmap:"):
            _, _, encoding = line.partition(" ")
            name = encoding.split("/")[0].upper()
            if name not in _AUXILIARY_CODECS and name not in names:
                names.append(name)
    return names


def _check_offer(req: Pb, video_codec: str) -> str | None:
    """Why a SetPublisher does not match the session's video publish option, or None."""
    videos = [t for t in req.tracks if t.track_type == pbm.TRACK_TYPE_VIDEO]
    if not videos:
        return None
    offered = _offer_video_codecs(req.sdp)
    if video_codec not in offered:
        return (
            f"publish option {video_codec} is not in the offer (offered: "
            f"{', '.join(offered) or 'none'})"
        )
    for track in videos:
        name = track.codec.name.upper()
        if name and name != video_codec:
            return f"track {track.track_id} announces codec {name}, publish option is {video_codec}"
    return None


def _lookup_prefix(session_id: str) -> str:
    """The participant's ``track_lookup_prefix``: the stream-id prefix of its forwarded tracks."""
    return session_id[:8]


def _answer_only_granted(pc: RTCPeerConnection, video_codec: str) -> None:
    """Make the answer carry only the granted publish option's codec (and its RTX), as Stream's
    SFU does: a publisher then cannot send another codec of the offer.

    aiortc answers with every codec both sides share; a publisher (Stream's browser SDK among
    them) may then send any of them, and the SFU would receive a codec it never granted.
    Private aiortc state: ``transceiver._codecs`` is both what ``createAnswer`` writes and what
    the receiver accepts. Audio keeps Opus only.
    """
    for transceiver in pc.getTransceivers():
        codecs = getattr(transceiver, "_codecs", None)
        if codecs is None:
            raise RuntimeError("aiortc moved RTCRtpTransceiver._codecs: update the stand-in")
        want = video_codec if transceiver.kind == "video" else "OPUS"
        primary = next(
            (c for c in codecs if c.mimeType.split("/")[-1].upper() == want and not is_rtx(c)),
            None,
        )
        if primary is None:
            continue  # a video offer without the grant was refused before (_check_offer)
        transceiver._codecs = [primary] + [
            c for c in codecs if is_rtx(c) and c.parameters.get("apt") == primary.payloadType
        ]


def split_candidates(sdp: str) -> tuple[str, list[str]]:
    """A local description as Stream's SFU sends it: the SDP without its ICE candidates, and
    those candidates as the ``ICETrickle.ice_candidate`` JSON the SDKs parse (an
    ``RTCIceCandidateInit``, tagged with its ``usernameFragment``: the browser SDK keeps only
    candidates of the ICE generation it applied). The sections are bundled on one transport,
    so the first section's candidates are all of them."""
    kept: list[str] = []
    candidates: list[str] = []
    mid: str | None = None
    ufrag = _sdp_attr(sdp, "ice-ufrag")
    section = -1
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            section += 1
        elif section >= 0 and line.startswith("a=mid:") and mid is None:
            mid = line.removeprefix("a=mid:")
        if line.startswith("a=candidate:"):
            if section == 0:
                candidates.append(line.removeprefix("a="))
            continue
        if line == "a=end-of-candidates":
            continue
        kept.append(line)
    inits = [
        json.dumps({"candidate": c, "sdpMid": mid, "sdpMLineIndex": 0, "usernameFragment": ufrag})
        for c in candidates
    ]
    return "\r\n".join(kept), inits


def _trickle_event(session: _Session, peer_type: int, candidate: str) -> ev.SfuEvent:
    return ev.SfuEvent(
        ice_trickle=pbm.ICETrickle(
            peer_type=peer_type, ice_candidate=candidate, session_id=session.session_id
        )
    )


def _sdp_attr(sdp: str, name: str) -> str | None:
    prefix = f"a={name}:"
    for line in sdp.splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    return None


def _follow_ice_restart(pc: RTCPeerConnection, offer_sdp: str, session_id: str) -> None:
    """Accept the SDK's ICE restart on the existing transport.

    After a fast reconnect the SDK re-offers with new ICE credentials and keeps its DTLS session.
    aiortc has no ICE restart and would reject the new connectivity checks (wrong username), so
    the remote credentials of the running aioice connection are replaced in place; DTLS and SRTP
    continue. Private aiortc state: the transport of a BUNDLE group is shared by all transceivers.
    """
    assert pc.remoteDescription is not None
    ufrag, pwd = _sdp_attr(offer_sdp, "ice-ufrag"), _sdp_attr(offer_sdp, "ice-pwd")
    if ufrag is None or pwd is None or ufrag == _sdp_attr(pc.remoteDescription.sdp, "ice-ufrag"):
        return
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        connection.remote_username, connection.remote_password = ufrag, pwd
    log.info("sfu_publisher_ice_restart", session=session_id)


@web.middleware
async def _cors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Cross-origin access as Stream's API allows it: a page on any origin may call the
    coordinator and the SFU (preflights answered, the location hint header readable)."""
    origin = request.headers.get("Origin")
    if request.method == "OPTIONS" and origin:
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    if origin and not response.prepared:  # a WebSocket upgrade has sent its headers already
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", "*"
        )
        response.headers["Access-Control-Expose-Headers"] = "x-amz-cf-pop"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


def _protobuf(message: Pb, as_json: bool = False) -> web.Response:
    if as_json:
        return web.Response(
            text=json_format.MessageToJson(message), content_type="application/json"
        )
    return web.Response(body=message.SerializeToString(), content_type="application/protobuf")


def _twirp_error(
    code: str, msg: str, status: int, meta: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"code": code, "msg": msg}
    if meta:
        body["meta"] = meta
    return web.json_response(body, status=status)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
