"""A protocol-faithful LiveAvatar (HeyGen) LITE stand-in: REST + the audio WebSocket.

It enforces what the real service enforces (see shared/specs/liveavatar-lite-protocol.md): the
auth kind per endpoint, mode LITE for a ``ws_url``, sandbox pinned to the sandbox avatar with a
short cap, the 5-minute idle timeout and ``max_session_duration`` (both scaled by
``time_scale``), the 1 MB WebSocket message cap, base64 errors as ``error`` events, client events
before ``connected`` silently dropped, single-use session tokens and FastAPI-style 422 bodies.
Each started session gets an :class:`~bridge.sim.avatar.AvatarRenderer`; when a LiveKit stand-in
is given, its tracks are published into a room there.

The start path takes time, as the real one does (:class:`StartDelays`, chosen by a named
profile): minting the token, starting the session, the WebSocket reporting ``connected``, the
avatar joining its room and its first keyframe. The test stack uses ``instant`` (all zero, so
the suite stays fast); the demo and the bench choose ``realistic`` explicitly. The session ends
as the real one does: at ``max_session_duration`` (``MAX_DURATION_REACHED``), after the idle
timeout (``IDLE_TIMEOUT``), or when a test injects a provider-side drop (:meth:`drop`,
``Faults.drop_session_after_s``): the LiveAvatar sessions that vanish mid-call in
livekit/agents#4204 and pipecat#3029.

Run by hand: ``python -m bridge.sim.liveavatar --port 8900 --api-key sk-test`` starts it with its
own LiveKit stand-in (``--no-livekit`` for REST and WebSocket only); ``python -m bridge.sim``
starts every stand-in and prints the environment a daemon needs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import secrets
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aiohttp import WSMsgType, web
from aiortc.mediastreams import MediaStreamTrack
from prometheus_client import Counter, Gauge

from bridge.sim.avatar import RESOLUTIONS, AvatarRenderer, RendererEvent

log = structlog.get_logger(__name__)

SANDBOX_AVATAR_ID = "dd73ea75-1218-4ef3-92ce-606d5f7fbc0a"
WS_MAX_MESSAGE = 1 << 20
STOP_REASONS = frozenset(
    {
        "UNKNOWN",
        "USER_DISCONNECTED",
        "SERVER_ERROR",
        "IDLE_TIMEOUT",
        "NO_CREDITS",
        "USER_CLOSED",
        "AVATAR_DELETED",
        "MAX_DURATION_REACHED",
        "ZOMBIE_SESSION_REAP",
        "AGENT_HANG_UP",
    }
)
QUALITIES = frozenset(RESOLUTIONS)
ENCODINGS = frozenset({"H264", "VP8"})

SIM_LA_LIVE = Gauge("sim_liveavatar_live_sessions", "Started, not yet ended stand-in sessions")
SIM_LA_REQUESTS = Counter(
    "sim_liveavatar_requests_total", "Stand-in REST requests", ["endpoint", "status"]
)
SIM_LA_WS_IN = Counter("sim_liveavatar_ws_messages_total", "Client WS messages", ["type"])
SIM_LA_DROPPED = Counter(
    "sim_liveavatar_ws_dropped_before_connected_total", "Client events dropped before connected"
)


@dataclass(frozen=True, slots=True)
class StartDelays:
    """Seconds each step of the start path takes.

    No public source publishes LiveAvatar's start-path timings, so the ``realistic`` figures are
    assumptions, chosen from what is public: livekit/agents#5581 measures exactly this
    ("avatar_join_latency": session start -> avatar participant joined with a video track) but
    publishes no figure; HeyGen's forum reports 2.5-3.6 s from a speak request to the avatar
    talking on the older Streaming Avatar API (movio-api.readme.io discuss thread "Streaming
    Avatar latency"), a different measure that bounds how slow the service can be; a LiveKit room
    connect of ~2.2 s is reported for ElevenLabs' hosted rooms (elevenlabs-swift-sdk#91). So:
    a fast REST token (0.3 s), a start that provisions the room and a media worker (1.5 s), the
    WebSocket's ``connected`` soon after (0.3 s), the avatar in its room ~1.5 s after the start
    and its first keyframe 0.3 s later: ~3.6 s cold, the order of magnitude users complain about.
    Replace them with measured values once a sandbox run is possible.
    """

    token_s: float = 0.0  # POST /v1/sessions/token
    start_s: float = 0.0  # POST /v1/sessions/start
    connected_s: float = 0.0  # WebSocket open -> session.state_updated 'connected'
    avatar_join_s: float = 0.0  # /start answered -> the avatar's media flows in its room
    first_keyframe_s: float = 0.0  # the avatar's media flows -> its first video frame


START_PROFILES: dict[str, StartDelays] = {
    "instant": StartDelays(),
    "realistic": StartDelays(
        token_s=0.3, start_s=1.5, connected_s=0.3, avatar_join_s=1.5, first_keyframe_s=0.3
    ),
}


class _HeldTrack(MediaStreamTrack):
    """A renderer track that yields nothing until ``release_at`` (monotonic), then relays it:
    the avatar joining late, or its first keyframe coming late. The participant is listed by the
    LiveKit stand-in at once; only its media starts later, which is what a receiver measures."""

    def __init__(self, inner: MediaStreamTrack, release_at: float) -> None:
        super().__init__()
        self.kind = inner.kind
        self._inner = inner
        self._release_at = release_at

    async def recv(self) -> Any:
        wait = self._release_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        return await self._inner.recv()

    def stop(self) -> None:
        super().stop()
        self._inner.stop()


class LiveKitRooms(Protocol):
    """What the LiveKit stand-in offers (typed here so this module does not depend on it)."""

    @property
    def url(self) -> str: ...

    async def create_room(
        self,
        room: str,
        *,
        avatar_identity: str,
        video: MediaStreamTrack,
        audio: MediaStreamTrack,
        video_codec: str,
        video_size: tuple[int, int] | None = None,
    ) -> None: ...

    async def open_room(self, room: str) -> None: ...

    def mint_token(self, room: str, identity: str) -> str: ...

    async def close_room(self, room: str) -> None: ...


@dataclass(slots=True)
class StandInOptions:
    api_keys: frozenset[str] = frozenset({"sk-test"})
    # None accepts any avatar id; otherwise unknown ids are rejected like a deleted avatar.
    known_avatars: frozenset[str] | None = None
    tier_max_duration_s: int = 3600
    sandbox_max_duration_s: int = 60
    idle_timeout_s: float = 300.0
    # Real seconds per nominal second for idle/max-duration timers (0.01: 5 min -> 3 s).
    time_scale: float = 1.0
    render_latency_s: float = 0.2
    fps: int = 30
    avatar_identity: str = "heygen"
    agent_identity: str = "agent"
    audio_counts_as_activity: bool = True
    allow_reconnect: bool = True
    ws_host: str | None = None  # host in ws_url; defaults to the bound host
    # How the rendered avatar reaches its LiveKit room. "sdk": as LiveAvatar's does, a LiveKit
    # client (the real SDK, libwebrtc, simulcast) publishing into the room, forwarded SFU-style
    # to subscribers. "aiortc": the LiveKit stand-in encodes the tracks itself per subscriber
    # (or once, pre-encoded): cheaper, for large-scale benches; not libwebrtc's RTP.
    publisher: str = "aiortc"
    # The "sdk" publisher's frame-rate cap. None: LiveKit's preset for the size, as a client
    # that sets no encoding gets (360p: 20 fps, every third of the renderer's 30 frames
    # dropped; 720p: 30). A steady 30 fps at 360p is what a relay bench of the cadence needs.
    publisher_max_fps: float | None = None
    delays: StartDelays = field(default_factory=StartDelays)


@dataclass(slots=True)
class Faults:
    """Knobs tests set on a running stand-in. Counts decrement as they fire."""

    token_status: int | None = None  # fail /token with this status
    start_status: int | None = None  # fail /start with this status (token stays unused)
    start_failures: int = 0  # how many /start calls fail with start_status (0 = all)
    delay_s: float = 0.0  # delay every REST response
    drop_ws_after: int | None = None  # close the session's first WS after N client messages
    refuse_stops: int = 0  # answer the next N /stop calls with 503
    # /stop answers nothing while set (a frozen or overloaded service), then 503 once cleared:
    # a stop the daemon gave up on stays undone, for its next start's ledger sweep to stop.
    hang_stops: bool = False
    never_connected: bool = False
    connect_delay_s: float = 0.0  # delay between connecting and connected
    no_credits: bool = False
    # End every session this many real seconds after its start, as a provider-side drop.
    drop_session_after_s: float | None = None
    drop_reason: str = "SERVER_ERROR"
    # Session ids whose WebSocket stalls: while listed, the server reads and answers nothing on
    # it (messages wait unprocessed, back-pressure builds), but the connection stays open.
    stall_ws: set[str] = field(default_factory=set)
    # agent.interrupt takes effect this long after it arrived (a provider slow to stop: the old
    # speech goes on meanwhile, as audio already in flight does); the WebSocket waits with it.
    interrupt_delay_s: float = 0.0
    # End a session by closing its room before telling the WebSocket why (the order is not part
    # of the protocol; the daemon must name the cause either way).
    room_closed_first: bool = False


@dataclass(slots=True)
class SimSession:
    session_id: str
    token: str
    avatar_id: str
    is_sandbox: bool
    mode: str
    quality: str
    encoding: str
    max_duration_s: int
    ws_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    token_used: bool = False
    started: bool = False
    ended: bool = False
    end_reason: str | None = None
    renderer: AvatarRenderer | None = None
    publisher: Any = None  # SdkAvatarPublisher when options.publisher == "sdk"
    publish_task: asyncio.Task[None] | None = None
    room: str | None = None
    ws: web.WebSocketResponse | None = None
    ws_connections: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    started_at: float = 0.0
    timer: asyncio.Task[None] | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)  # client messages, for tests
    dropped_before_connected: int = 0
    interrupts_rx_t: list[float] = field(default_factory=list)  # agent.interrupt arrivals


def _envelope(code: int, data: Any, message: str) -> dict[str, Any]:
    return {"code": code, "data": data, "message": message}


def _error(status: int, message: str) -> web.Response:
    return web.json_response(_envelope(status, None, message), status=status)


def _validation(errors: list[tuple[list[str | int], str, str]]) -> web.Response:
    detail = [{"loc": loc, "msg": msg, "type": typ} for loc, msg, typ in errors]
    return web.json_response({"detail": detail}, status=422)


class LiveAvatarStandIn:
    """The stand-in service. ``async start()`` binds it; ``base_url`` is then the REST root."""

    def __init__(
        self, options: StandInOptions | None = None, *, livekit: LiveKitRooms | None = None
    ) -> None:
        self.options = options or StandInOptions()
        self.faults = Faults()
        self.livekit = livekit
        self.sessions: dict[str, SimSession] = {}
        self._by_token: dict[str, str] = {}
        self.stop_calls: list[tuple[str, str]] = []  # (session_id, reason), for tests
        self.requests: dict[str, int] = {"token": 0, "start": 0, "stop": 0}
        self.drops: list[str] = []  # sessions ended by an injected drop, for tests
        self._runner: web.AppRunner | None = None
        self._bg: set[asyncio.Task[None]] = set()  # event sends, owned so none is lost or leaked
        self._host = "127.0.0.1"
        self._port = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/sessions/token", self._token)
        self.app.router.add_post("/v1/sessions/start", self._start)
        self.app.router.add_post("/v1/sessions/stop", self._stop)
        self.app.router.add_get("/v1/ws/{session_id}", self._ws)
        # Not LiveAvatar's API: what the stand-in measured, for benches and demos.
        self.app.router.add_get("/_sim/stats", self._stats)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self._host = host
        self._port = int(self._runner.addresses[0][1])
        log.info("liveavatar_standin_started", url=self.base_url)

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def live_sessions(self) -> list[str]:
        """Ids of started sessions that have not ended (what would be billed)."""
        return [s.session_id for s in self.sessions.values() if s.started and not s.ended]

    async def aclose(self) -> None:
        for session in list(self.sessions.values()):
            await self._end(session, "SERVER_ERROR")
        for task in list(self._bg):
            task.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- what the stand-in measured ------------------------------------------------------------

    def playback_stats(self, session_id: str) -> dict[str, Any]:
        """The session's playback-buffer model (underruns) and per-turn first-sound stamps
        (monotonic seconds: the turn's first audio in, its first sample's playout)."""
        session = self.sessions.get(session_id)
        renderer = session.renderer if session is not None else None
        if session is None or renderer is None:
            return {}
        return {
            "underruns": renderer.underruns,
            "underrun_ms": round(1000 * renderer.underrun_s, 1),
            "render_latency_ms": round(1000 * renderer.render_latency_s, 1),
            "turns": {
                eid: {
                    "first_audio_rx_t": t.first_audio_rx_t,
                    "first_play_t": t.first_play_t,
                    "first_frame_t": t.first_frame_t,
                    "underruns": t.underruns,
                    "underrun_ms": round(1000 * t.underrun_s, 1),
                }
                for eid, t in renderer.turns.items()
            },
            "interrupts_rx_t": list(session.interrupts_rx_t),
        }

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {sid: self.playback_stats(sid) for sid in self.sessions if self.sessions[sid].started}
        )

    # --- REST ----------------------------------------------------------------------------------

    async def _delay(self, modelled_s: float = 0.0) -> None:
        wait = self.faults.delay_s + modelled_s
        if wait > 0:
            await asyncio.sleep(wait)

    @staticmethod
    async def _json_body(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        try:
            raw = await request.read()
        except ConnectionResetError:
            # The client left mid-request (a daemon stopped while its pool refilled): nothing was
            # started, and the answer goes nowhere; not a server error.
            log.info("liveavatar_client_gone", path=request.path)
            return None, web.Response(status=400, text="client gone")
        if not raw.strip():
            return {}, None
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return None, _validation([(["body", 0], f"JSON decode error: {exc}", "json_invalid")])
        if not isinstance(body, dict):
            return None, _validation([(["body"], "Input should be an object", "dict_type")])
        return body, None

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    async def _token(self, request: web.Request) -> web.Response:
        await self._delay(self.options.delays.token_s)
        self.requests["token"] += 1
        response = await self._token_inner(request)
        SIM_LA_REQUESTS.labels("token", str(response.status)).inc()
        return response

    async def _token_inner(self, request: web.Request) -> web.Response:
        if self.faults.token_status is not None:
            return _error(self.faults.token_status, "Injected failure")
        key = request.headers.get("X-API-KEY")
        if key is None or key not in self.options.api_keys:
            # A session token in Bearer form cannot mint tokens; neither can a wrong key.
            return _error(401, "Invalid or missing API key")
        body, bad = await self._json_body(request)
        if bad is not None or body is None:
            return bad or _error(400, "bad body")
        errors: list[tuple[list[str | int], str, str]] = []
        mode = body.get("mode", "FULL")
        if mode not in ("FULL", "LITE"):
            errors.append((["body", "mode"], "Input should be 'FULL' or 'LITE'", "enum"))
        avatar_id = body.get("avatar_id")
        if avatar_id is None:
            errors.append((["body", "avatar_id"], "Field required", "missing"))
        else:
            try:
                uuid.UUID(str(avatar_id))
            except ValueError:
                errors.append(
                    (["body", "avatar_id"], "Input should be a valid UUID", "uuid_parsing")
                )
        is_sandbox = body.get("is_sandbox", False)
        if not isinstance(is_sandbox, bool):
            errors.append((["body", "is_sandbox"], "Input should be a valid boolean", "bool_type"))
        vs = body.get("video_settings") or {}
        if not isinstance(vs, dict):
            errors.append((["body", "video_settings"], "Input should be an object", "dict_type"))
            vs = {}
        quality = vs.get("quality", "high")
        if quality not in QUALITIES:
            msg = "Input should be 'very_high', 'high', 'medium' or 'low'"
            errors.append((["body", "video_settings", "quality"], msg, "enum"))
        encoding = vs.get("encoding", "H264")
        if encoding not in ENCODINGS:
            errors.append(
                (["body", "video_settings", "encoding"], "Input should be 'H264' or 'VP8'", "enum")
            )
        duration = body.get("max_session_duration", self.options.tier_max_duration_s)
        if duration is None:
            duration = self.options.tier_max_duration_s
        if not isinstance(duration, int) or isinstance(duration, bool) or duration <= 0:
            msg = "Input should be a positive integer"
            errors.append((["body", "max_session_duration"], msg, "int_type"))
        if errors:
            return _validation(errors)
        assert isinstance(duration, int)
        if is_sandbox and avatar_id != SANDBOX_AVATAR_ID:
            return _error(400, f"Sandbox mode only supports the sandbox avatar {SANDBOX_AVATAR_ID}")
        known = self.options.known_avatars
        if not is_sandbox and known is not None and avatar_id not in known:
            return _error(404, f"Avatar {avatar_id} not found")
        if duration > self.options.tier_max_duration_s:
            return _error(
                400,
                f"max_session_duration exceeds your plan's limit of "
                f"{self.options.tier_max_duration_s} s",
            )
        if self.faults.no_credits and not is_sandbox:
            return _error(402, "Insufficient credits")
        if is_sandbox:
            duration = min(duration, self.options.sandbox_max_duration_s)
        session = SimSession(
            session_id=str(uuid.uuid4()),
            token=secrets.token_urlsafe(32),
            avatar_id=str(avatar_id),
            is_sandbox=is_sandbox,
            mode=str(mode),
            quality=str(quality),
            encoding=str(encoding),
            max_duration_s=duration,
        )
        self.sessions[session.session_id] = session
        self._by_token[session.token] = session.session_id
        data = {"session_id": session.session_id, "session_token": session.token}
        return web.json_response(_envelope(100, data, "Session token created"))

    async def _start(self, request: web.Request) -> web.Response:
        await self._delay(self.options.delays.start_s)
        self.requests["start"] += 1
        response = await self._start_inner(request)
        SIM_LA_REQUESTS.labels("start", str(response.status)).inc()
        return response

    async def _start_inner(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        if token is None:
            return _error(401, "Missing bearer session token")
        sid = self._by_token.get(token)
        if sid is None:
            return _error(401, "Invalid session token")
        session = self.sessions[sid]
        if self.faults.start_status is not None:
            status = self.faults.start_status
            if self.faults.start_failures > 0:
                self.faults.start_failures -= 1
                if self.faults.start_failures == 0:
                    self.faults.start_status = None
            return _error(status, "Injected failure")
        body, bad = await self._json_body(request)
        if bad is not None:
            return bad
        if body and body.get("session_id") not in (None, sid):
            return _error(400, "session_id does not match the session token")
        if session.token_used:
            return _error(400, "Session token already used")
        if session.ended:
            return _error(400, "Session has ended")
        session.token_used = True
        await self._launch(session, request)
        data: dict[str, Any] = {
            "session_id": sid,
            "livekit_url": self.livekit.url if self.livekit else "ws://127.0.0.1:1",
            "livekit_client_token": self._mint(session, "client"),
            "livekit_agent_token": self._mint(session, self.options.agent_identity),
            "max_session_duration": session.max_duration_s,
            "ws_url": self._ws_url(session, request) if session.mode == "LITE" else None,
        }
        return web.json_response(_envelope(100, data, "Session started"), status=201)

    def _mint(self, session: SimSession, identity: str) -> str:
        if self.livekit is not None and session.room is not None:
            return self.livekit.mint_token(session.room, identity)
        return f"unconnected-{secrets.token_urlsafe(8)}"

    def _ws_url(self, session: SimSession, request: web.Request) -> str:
        host = self.options.ws_host or self._host
        return f"ws://{host}:{self._port}/v1/ws/{session.session_id}?t={session.ws_secret}"

    async def _launch(self, session: SimSession, request: web.Request) -> None:
        width, height = RESOLUTIONS[session.quality]
        renderer = AvatarRenderer(
            width,
            height,
            self.options.fps,
            self.options.render_latency_s,
            listener=lambda ev: self._on_render_event(session, ev),
        )
        renderer.start()
        session.renderer = renderer
        session.started = True
        session.started_at = session.last_activity = time.monotonic()
        SIM_LA_LIVE.inc()
        if self.livekit is not None and self.options.publisher == "sdk":
            room = f"la-{session.session_id}"
            session.room = room
            await self.livekit.open_room(room)
            # The avatar joins after /start answers, as LiveAvatar's does.
            session.publish_task = asyncio.get_running_loop().create_task(
                self._publish(session, renderer, width, height)
            )
        elif self.livekit is not None:
            room = f"la-{session.session_id}"
            session.room = room
            delays = self.options.delays
            video, audio = renderer.video_track(), renderer.audio_track()
            if delays.avatar_join_s > 0 or delays.first_keyframe_s > 0:
                joined = session.started_at + delays.avatar_join_s
                audio = _HeldTrack(audio, joined)
                video = _HeldTrack(video, joined + delays.first_keyframe_s)
            await self.livekit.create_room(
                room,
                avatar_identity=self.options.avatar_identity,
                video=video,
                audio=audio,
                video_codec=session.encoding,
                video_size=(width, height),
            )
        session.timer = asyncio.get_running_loop().create_task(self._expiry(session))

    async def _publish(
        self, session: SimSession, renderer: AvatarRenderer, width: int, height: int
    ) -> None:
        from bridge.sim.avatar_publisher import SdkAvatarPublisher  # the SDK only when used

        assert self.livekit is not None and session.room is not None
        publisher = SdkAvatarPublisher(
            renderer.video_track(),
            renderer,
            width=width,
            height=height,
            codec=session.encoding,
            max_fps=self.options.publisher_max_fps,
        )
        session.publisher = publisher
        token = self.livekit.mint_token(session.room, self.options.avatar_identity)
        try:
            await publisher.start(self.livekit.url, token)
        except Exception:
            # The room stays without its avatar: the daemon's avatar-join timeout reports it.
            log.exception("liveavatar_standin_publish_failed", session_id=session.session_id)

    async def _stop(self, request: web.Request) -> web.Response:
        if self.faults.hang_stops:
            await self._stops_released()
            SIM_LA_REQUESTS.labels("stop", "503").inc()
            return _error(503, "Service temporarily unavailable")
        await self._delay()
        self.requests["stop"] += 1
        response = await self._stop_inner(request)
        SIM_LA_REQUESTS.labels("stop", str(response.status)).inc()
        return response

    async def _stops_released(self) -> None:
        while self.faults.hang_stops:  # noqa: ASYNC110 - a test's knob, polled
            await asyncio.sleep(0.05)

    async def _stop_inner(self, request: web.Request) -> web.Response:
        key = request.headers.get("X-API-KEY")
        bearer = self._bearer(request)
        token_sid = self._by_token.get(bearer) if bearer else None
        if not ((key is not None and key in self.options.api_keys) or token_sid is not None):
            return _error(401, "Invalid or missing credentials")
        body, bad = await self._json_body(request)
        if bad is not None or body is None:
            return bad or _error(400, "bad body")
        sid = body.get("session_id", token_sid)
        reason = body.get("reason", "UNKNOWN")
        errors: list[tuple[list[str | int], str, str]] = []
        if sid is None:
            errors.append((["body", "session_id"], "Field required", "missing"))
        if reason not in STOP_REASONS:
            errors.append((["body", "reason"], "Input should be a valid stop reason", "enum"))
        if errors:
            return _validation(errors)
        if token_sid is not None and key is None and sid != token_sid:
            return _error(403, "Session token does not belong to this session")
        if self.faults.refuse_stops > 0:
            self.faults.refuse_stops -= 1
            return _error(503, "Service temporarily unavailable")
        session = self.sessions.get(str(sid))
        if session is None:
            return _error(404, "Session not found")
        self.stop_calls.append((session.session_id, str(reason)))
        await self._end(session, str(reason))
        return web.json_response(_envelope(100, None, "Session stopped"))

    # --- session end ---------------------------------------------------------------------------

    async def drop(self, session_id: str, reason: str = "SERVER_ERROR") -> None:
        """Injected provider-side loss: the session ends now as if the service ended it (the
        WebSocket says ``closing``/``closed`` and closes, the avatar leaves, the room closes)."""
        session = self.sessions[session_id]
        self.drops.append(session_id)
        await self._end(session, reason)

    async def _expiry(self, session: SimSession) -> None:
        scale = self.options.time_scale
        idle = self.options.idle_timeout_s * scale
        hard_stop = session.started_at + session.max_duration_s * scale
        while not session.ended:
            now = time.monotonic()
            if now >= hard_stop:
                await self._end(session, "MAX_DURATION_REACHED", from_timer=True)
                return
            drop_after = self.faults.drop_session_after_s
            if drop_after is not None and now >= session.started_at + drop_after:
                self.drops.append(session.session_id)
                await self._end(session, self.faults.drop_reason, from_timer=True)
                return
            talking = session.renderer is not None and session.renderer.state == "talking"
            if talking:
                session.last_activity = now
            if now - session.last_activity >= idle:
                await self._end(session, "IDLE_TIMEOUT", from_timer=True)
                return
            wake = min(hard_stop, session.last_activity + idle) - now
            if drop_after is not None:
                wake = min(wake, session.started_at + drop_after - now)
            await asyncio.sleep(max(0.005, min(wake, 0.25)))

    async def _end(self, session: SimSession, reason: str, *, from_timer: bool = False) -> None:
        if session.ended:
            return
        session.ended = True
        session.end_reason = reason
        if session.started:
            SIM_LA_LIVE.dec()
        log.info("liveavatar_standin_session_ended", session_id=session.session_id, reason=reason)
        if session.timer is not None and not from_timer:
            session.timer.cancel()
        ws = session.ws
        if self.faults.room_closed_first:
            await self._close_room(session)
        if ws is not None and not ws.closed:
            await self._send(session, {"type": "session.state_updated", "state": "closing"})
            await self._send(session, {"type": "session.state_updated", "state": "closed"})
        # Renderer and room first: they must not wait on the client's close handshake.
        await self._close_room(session)
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)

    async def _close_room(self, session: SimSession) -> None:
        """Stop the renderer and close the session's LiveKit room (once)."""
        if session.publish_task is not None:
            session.publish_task.cancel()
            await asyncio.gather(session.publish_task, return_exceptions=True)
        if session.publisher is not None:
            await session.publisher.aclose()
        if session.renderer is not None:
            await session.renderer.aclose()
        if self.livekit is not None and session.room is not None:
            try:
                await asyncio.wait_for(self.livekit.close_room(session.room), 5.0)
            except Exception:
                log.exception("liveavatar_standin_close_room_failed", room=session.room)

    # --- WebSocket -----------------------------------------------------------------------------

    async def _send(self, session: SimSession, message: dict[str, Any]) -> None:
        ws = session.ws
        if ws is None or ws.closed or session.session_id in self.faults.stall_ws:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await asyncio.wait_for(ws.send_str(json.dumps(message)), 5.0)

    def _on_render_event(self, session: SimSession, ev: RendererEvent) -> None:
        msg: dict[str, Any]
        if ev.kind in ("speak_started", "speak_ended"):
            msg = {"type": f"agent.{ev.kind}", "event_id": ev.event_id, "task": {"id": ev.event_id}}
        elif ev.kind == "speak_interrupted":
            msg = {"type": "agent.speak_interrupted", "event_id": ev.event_id}
        elif ev.kind == "state":
            msg = {
                "type": "agent.state_updated",
                "previous_state": ev.previous_state,
                "new_state": ev.state,
                "state": ev.state,
            }
        else:
            return
        task = asyncio.get_running_loop().create_task(self._send(session, msg))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.match_info["session_id"])
        if (
            session is None
            or not session.started
            or session.ended
            or not secrets.compare_digest(request.query.get("t", ""), session.ws_secret)
        ):
            raise web.HTTPForbidden(text="unknown or ended session")
        if session.ws_connections >= 1 and not self.options.allow_reconnect:
            raise web.HTTPForbidden(text="session already connected once")
        ws = web.WebSocketResponse(max_msg_size=WS_MAX_MESSAGE, autoping=True)
        await ws.prepare(request)
        if session.ws is not None and not session.ws.closed:
            await session.ws.close(code=4000, message=b"replaced by a new connection")
        session.ws = ws
        session.ws_connections += 1
        first_connection = session.ws_connections == 1
        connected = False
        received = 0
        await self._send(session, {"type": "session.state_updated", "state": "connecting"})

        async def announce() -> None:
            nonlocal connected
            if self.faults.never_connected:
                return
            wait = self.faults.connect_delay_s + self.options.delays.connected_s
            if wait > 0:
                await asyncio.sleep(wait)
            connected = True
            await self._send(session, {"type": "session.state_updated", "state": "connected"})

        announcer = asyncio.get_running_loop().create_task(announce())
        try:
            async for msg in ws:
                # A stall holds this message and reads no further until it is lifted; if the
                # connection is closed or replaced meanwhile, the held message is lost in flight.
                if session.session_id in self.faults.stall_ws:
                    while session.session_id in self.faults.stall_ws:
                        if ws.closed or session.ws is not ws:
                            break
                        await asyncio.sleep(0.05)
                    if ws.closed or session.ws is not ws:
                        break
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.BINARY:
                        await self._error_event(session, "Binary frames are not supported")
                    continue
                received += 1
                drop_after = self.faults.drop_ws_after
                if first_connection and drop_after is not None and received >= drop_after:
                    # Lost in flight: the message that hit the limit is not processed.
                    await ws.close(code=1011, message=b"injected drop")
                    break
                if not connected:
                    session.dropped_before_connected += 1
                    SIM_LA_DROPPED.inc()
                    continue
                await self._handle(session, str(msg.data))
        finally:
            announcer.cancel()
            if session.ws is ws:
                session.ws = None
        return ws

    async def _error_event(self, session: SimSession, message: str) -> None:
        error = {"type": "invalid_request_error", "message": message}
        await self._send(session, {"type": "error", "error": error})

    async def _handle(self, session: SimSession, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            await self._error_event(session, "invalid JSON")
            return
        if not isinstance(msg, dict):
            await self._error_event(session, "message must be a JSON object")
            return
        kind = msg.get("type")
        SIM_LA_WS_IN.labels(kind if isinstance(kind, str) and len(kind) < 40 else "invalid").inc()
        session.messages.append(
            {k: v for k, v in msg.items() if k != "audio"}
            | {"audio_len": len(msg.get("audio") or "")}
        )
        del session.messages[:-2000]
        renderer = session.renderer
        assert renderer is not None
        event_id = msg.get("event_id")
        eid = str(event_id) if event_id is not None else "default"
        now = time.monotonic()
        if kind == "agent.speak":
            try:
                audio = base64.b64decode(str(msg.get("audio", "")), validate=True)
            except (binascii.Error, ValueError):
                await self._error_event(session, "invalid base64 audio data")
                return
            if self.options.audio_counts_as_activity:
                session.last_activity = now
            renderer.push_audio(audio, eid)
            await self._send(session, {"type": "agent.audio_buffer_appended", "event_id": event_id})
        elif kind == "agent.speak_end":
            if self.options.audio_counts_as_activity:
                session.last_activity = now
            renderer.end_turn(eid)
            await self._send(
                session, {"type": "agent.audio_buffer_committed", "event_id": event_id}
            )
        elif kind == "agent.interrupt":
            session.last_activity = now
            session.interrupts_rx_t.append(now)
            if self.faults.interrupt_delay_s > 0:
                await asyncio.sleep(self.faults.interrupt_delay_s)
            renderer.interrupt()
            await self._send(session, {"type": "agent.audio_buffer_cleared"})
        elif kind == "session.keep_alive":
            session.last_activity = now
        elif kind == "start":
            if msg.get("sample_rate", 24000) != 24000 or msg.get("channels", 1) != 1:
                warning = {"message": "only pcm_s16le 24000 Hz mono is supported"}
                await self._send(session, {"type": "warning", "warning": warning})
        elif kind in ("agent.start_listening", "agent.stop_listening"):
            session.last_activity = now
        else:
            warning = {"message": f"unknown event type {kind!r}"}
            await self._send(session, {"type": "warning", "warning": warning})


async def _serve(args: argparse.Namespace) -> None:
    # Imported here: the module stays usable without the LiveKit stand-in's media stack.
    from bridge.sim.livekit_server import LiveKitStandIn

    options = StandInOptions(
        api_keys=frozenset(args.api_key),
        time_scale=args.time_scale,
        render_latency_s=args.render_latency,
        fps=args.fps,
        publisher=args.publisher,
        delays=START_PROFILES[args.profile],
    )
    livekit = None if args.no_livekit else LiveKitStandIn()
    standin = LiveAvatarStandIn(options, livekit=livekit)
    try:
        if livekit is not None:
            await livekit.start(args.host, args.livekit_port)
        await standin.start(args.host, args.port)
        # KEY=VALUE lines: what a daemon (or a script) reads to point at this world.
        print(f"LIVEAVATAR_BASE_URL={standin.base_url}", flush=True)
        if livekit is not None:
            print(f"LIVEKIT_URL={livekit.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await standin.aclose()
        if livekit is not None:
            await livekit.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="LiveAvatar LITE stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", action="append", default=None)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--render-latency", type=float, default=0.2)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--livekit-port", type=int, default=0, help="its LiveKit stand-in's port")
    parser.add_argument(
        "--publisher",
        choices=("sdk", "aiortc"),
        default="sdk",
        help="sdk: the avatar publishes with the LiveKit SDK (libwebrtc, simulcast); "
        "aiortc: the LiveKit stand-in encodes it itself",
    )
    parser.add_argument(
        "--no-livekit",
        action="store_true",
        help="no LiveKit stand-in: sessions get an unreachable livekit_url (REST/WS tests only)",
    )
    parser.add_argument(
        "--profile", choices=sorted(START_PROFILES), default="instant", help="start-path delays"
    )
    args = parser.parse_args(argv)
    if not args.api_key:
        args.api_key = ["sk-test"]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
