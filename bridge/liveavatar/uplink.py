"""The LiveAvatar LITE session: REST lifecycle plus the audio WebSocket uplink.

Audio path: client PCM -> :class:`UplinkResampler` (24 kHz mono s16) -> :class:`UplinkCore`,
the sans-I/O state machine (bridge/liveavatar/uplink_core.py) that cuts each turn into
``agent.speak`` chunks (``first_chunk_ms`` then ``chunk_ms``, the tail at end of turn, sooner
when the avatar would run dry), queues them and tracks their acks -> the sender, which only
sends once the server said ``connected``. Every chunk of a turn carries the turn's
``event_id``, and so does its ``agent.speak_end``.

Queue policy: the uplink queue holds at most ``queue_ms`` of audio; a producer waits for space
(back-pressure to the socket client, counted in ``bridge_liveavatar_uplink_backpressure_total``).
Audio is only ever dropped on INTERRUPT (the unsent rest of the turn, counted in
``bridge_liveavatar_uplink_dropped_ms_total``) or after the session failed or closed.

Reliability: a dedicated receive loop always reads (acks, state, errors); protocol pings are off
and ``session.keep_alive`` goes out after ``keep_alive_s`` without traffic. On an unexpected
close, or a stall (a sent message left unacknowledged for ``ack_timeout_s`` on a connection that
stays open), the uplink reconnects once to the same ``ws_url`` and resends what the server had not
acknowledged (``agent.audio_buffer_appended`` / ``_committed`` acks, matched in order); after
that, or on a server-side end, it reports the failure and stops the paid session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from bridge.config import (
    LimitsConfig,
    LiveAvatarConfig,
    Settings,
    effective_avatar_id,
    setting_default,
)
from bridge.errors import BridgeError, ErrorCode
from bridge.liveavatar.api import LiveAvatarAPI, LiveAvatarError, StartInfo
from bridge.liveavatar.ledger import SessionLedger
from bridge.liveavatar.resample import UplinkResampler
from bridge.liveavatar.respeak import TurnRecorder, Unspoken
from bridge.liveavatar.uplink_core import Message, UplinkCore, Verdict
from bridge.media import AudioChunk, AudioFormat
from bridge.stages import AvatarRoom, EventSink, FailureCallback

log = structlog.get_logger(__name__)

WS_MAX_MESSAGE = 1 << 20
# base64 grows 4/3 plus the JSON envelope; 15 s of audio is ~960 KB, under the 1 MB cap.
MAX_CHUNK_MS = 15_000

WS_SENT = Counter("bridge_liveavatar_ws_sent_total", "Messages sent to LiveAvatar", ["type"])
WS_RECEIVED = Counter(
    "bridge_liveavatar_ws_received_total", "Server events from LiveAvatar", ["type"]
)
BACKPRESSURE = Counter(
    "bridge_liveavatar_uplink_backpressure_total", "Times a producer waited for uplink space"
)
DROPPED_MS = Counter(
    "bridge_liveavatar_uplink_dropped_ms_total",
    "Audio (ms) dropped from the uplink",
    ["reason"],
)
RESPEAK_TRIMMED_MS = Counter(
    "bridge_liveavatar_respeak_trimmed_ms_total",
    "Audio (ms) no longer kept for a re-speak after an unplanned loss (liveavatar.respeak_max_ms)",
)
RESPOKEN_MS = Counter(
    "bridge_liveavatar_respoken_ms_total",
    "Audio (ms) handed to the next avatar after an unplanned loss: the unspoken rest",
)
RECONNECTS = Counter("bridge_liveavatar_ws_reconnects_total", "WebSocket reconnect attempts")
ACK_TIMEOUTS = Counter(
    "bridge_liveavatar_ws_ack_timeouts_total", "WebSocket links given up for lack of acks"
)
FAILURES = Counter("bridge_liveavatar_session_failures_total", "Sessions failed", ["reason"])
STOP_FAILURES = Counter(
    "bridge_liveavatar_stop_failures_total", "Stops that did not succeed (left in the ledger)"
)
# Added latency, excluding the deliberate chunking: from the call that completed a chunk (the
# AUDIO frame handed over by the session, or END_TURN) to that chunk's WebSocket send returning.
ADDED_LATENCY = Histogram(
    "bridge_liveavatar_uplink_added_latency_seconds",
    "From the audio that completed an agent.speak chunk to its WebSocket send",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25,
             0.5, 1.0, 2.5),
)  # fmt: skip

# A turn's first agent.speak, in the parts of the client's first sound the bridge adds: "buffer"
# from the turn's first audio in to its first chunk complete (liveavatar.first_chunk_ms of
# audio, deliberately), "send" from then to that chunk's WebSocket send returning.
FIRST_CHUNK = Histogram(
    "bridge_liveavatar_first_chunk_seconds",
    "A turn's first agent.speak: its buffering (first audio in -> chunk complete) and its send",
    ["part"],
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 2.0),
)

_KNOWN_QUIET = frozenset({"agent.audio_buffer_cleared", "agent.speak_interrupted"})
# Server events counted under their own label; any other name counts as "other", so a server
# cannot grow the metric's label set without bound.
_KNOWN_EVENTS = _KNOWN_QUIET | {
    "session.state_updated",
    "agent.speak_started",
    "agent.speak_ended",
    "agent.state_updated",
    "agent.audio_buffer_appended",
    "agent.audio_buffer_committed",
    "error",
    "warning",
}


def _la(name: str) -> Any:
    return setting_default(LiveAvatarConfig, name)


@dataclass(frozen=True, slots=True)
class LiveAvatarOptions:
    """One session's LiveAvatar options. Defaults are the settings model's (bridge/config.py),
    never repeated here; :meth:`from_settings` builds them for a session."""

    avatar_id: str
    is_sandbox: bool = _la("is_sandbox")
    max_session_duration: int = _la("max_session_duration")
    video_quality: str = _la("video_quality")
    video_encoding: str = _la("video_encoding")
    keep_alive_s: float = _la("keep_alive_s")
    first_chunk_ms: int = _la("first_chunk_ms")
    chunk_ms: int = _la("chunk_ms")
    # A client streaming in real time would starve the avatar between 1 s chunks: when the
    # audio already sent this turn leads real time by less than this, send what we have.
    lead_low_water_ms: int = 300
    min_chunk_ms: int = 60
    queue_ms: int = setting_default(LimitsConfig, "uplink_queue_ms")
    connect_timeout_s: float = _la("connect_timeout_s")
    # The documented scope of liveavatar.connect_timeout_s includes the 'connected' state.
    ws_connect_gate_timeout_s: float = _la("connect_timeout_s")
    send_timeout_s: float = 10.0
    # A server that stops reading without closing sends no acks: a sent speak/end message left
    # unacknowledged this long counts as a dropped connection (reconnect, resend, or fail).
    ack_timeout_s: float = _la("ack_timeout_s")
    reconnects: int = 1
    # After an unplanned loss the next avatar re-speaks the unspoken rest of the turn
    # (bridge/liveavatar/respeak.py): the audio kept for it, and the most it may repeat.
    respeak_max_ms: int = _la("respeak_max_ms")
    respeak_overlap_ms: int = _la("respeak_overlap_ms")
    send_start_message: bool = False  # HeyGen's starter sends it; docs do not need it

    def __post_init__(self) -> None:
        # Range and cross-option rules (a queue holding a chunk...) are the settings model's;
        # this is the wire's own limit, which hand-built options must respect too.
        for name in ("first_chunk_ms", "chunk_ms"):
            value = getattr(self, name)
            if not 20 <= value <= MAX_CHUNK_MS:
                raise ValueError(f"{name} must be within 20..{MAX_CHUNK_MS} ms, got {value}")
        if self.keep_alive_s <= 0:
            raise ValueError("keep_alive_s must be positive")
        if self.ack_timeout_s <= 0:
            raise ValueError("ack_timeout_s must be positive")

    @classmethod
    def from_settings(
        cls, settings: Settings, overrides: Mapping[str, Any] | None = None
    ) -> LiveAvatarOptions:
        """The options of one session: the settings, with a client's HELLO ``avatar``
        overrides (``AvatarOverrides.as_dict()``) on top."""
        la = settings.liveavatar
        ov = dict(overrides or {})
        return cls(
            avatar_id=ov.get("avatar_id") or effective_avatar_id(settings),
            is_sandbox=ov.get("is_sandbox", la.is_sandbox),
            max_session_duration=ov.get("max_session_duration") or la.max_session_duration,
            video_quality=ov.get("video_quality") or la.video_quality,
            video_encoding=ov.get("video_encoding") or la.video_encoding,
            keep_alive_s=la.keep_alive_s,
            first_chunk_ms=la.first_chunk_ms,
            chunk_ms=la.chunk_ms,
            queue_ms=settings.limits.uplink_queue_ms,
            connect_timeout_s=la.connect_timeout_s,
            ws_connect_gate_timeout_s=la.connect_timeout_s,
            ack_timeout_s=la.ack_timeout_s,
            respeak_max_ms=la.respeak_max_ms,
            respeak_overlap_ms=la.respeak_overlap_ms,
        )


def _observe_first_chunk(item: Message, sent_t: float) -> None:
    FIRST_CHUNK.labels("buffer").observe(max(0.0, item.t_in - item.t_turn_in))
    FIRST_CHUNK.labels("send").observe(max(0.0, sent_t - item.t_in))


class LiveAvatarUplink:
    """One paid LiveAvatar session; implements :class:`bridge.stages.AvatarUplink`.

    The I/O around :class:`UplinkCore`, which decides what to send and when: this class runs the
    REST calls, the ledger, the resampler, the WebSocket and three tasks per connection (receive,
    send, timers). Every call into the core runs under ``_cond``, notified after each change.
    """

    def __init__(
        self,
        api: LiveAvatarAPI,
        ledger: SessionLedger,
        options: LiveAvatarOptions,
        input_format: AudioFormat,
        events: EventSink,
        on_failure: FailureCallback,
    ) -> None:
        self._api = api
        self._ledger = ledger
        self._opt = options
        self._events = events
        self._on_failure = on_failure
        self._resampler = UplinkResampler(input_format)
        self._core = UplinkCore(options)
        self._recorder = TurnRecorder(options.respeak_max_ms, options.respeak_overlap_ms)
        self._rec_turn: str | None = None  # the turn audio is recorded under
        self._lost_turns = 0
        self._lost_at: float | None = None
        self._cond = asyncio.Condition()
        self._ws: ClientConnection | None = None
        self._info: StartInfo | None = None
        self._room: AvatarRoom | None = None
        self._adopted = False
        self._started_at = 0.0
        self._session_id: str | None = None
        self._stopped = False
        self._started = False
        self._failed = False
        self._closing = False
        self._closed = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self.reconnects_used = 0

    # --- properties for the owner and tests ----------------------------------------------------

    @property
    def session_id(self) -> str | None:
        return self._session_id

    @property
    def connected(self) -> bool:
        return self._core.connected

    def buffered_ms(self) -> float:
        return self._core.buffered_ms()

    @property
    def options(self) -> LiveAvatarOptions:
        return self._opt

    @property
    def healthy(self) -> bool:
        """Started, WebSocket up, not failed or closing: fit to hand to a session."""
        return self._room is not None and not (self._failed or self._closing)

    @property
    def expires_at(self) -> float:
        """Monotonic time at which the provider's cap ends the session (after start)."""
        cap = self._info.max_session_duration if self._info is not None else None
        return self._started_at + float(cap or self._opt.max_session_duration)

    def adopt(
        self, input_format: AudioFormat, events: EventSink, on_failure: FailureCallback
    ) -> None:
        """A warm (pre-started) uplink joins a session: its client's audio format, events and
        failure callback from now on; :meth:`start` then returns the room at once."""
        if self._room is None or self._adopted:
            raise RuntimeError("only a started, unadopted uplink can be adopted")
        self._adopted = True
        self._resampler = UplinkResampler(input_format)
        self._events = events
        self._on_failure = on_failure
        self._emit("liveavatar_session", session_id=self._session_id, warm=True)
        if self._core.connected:
            self._emit("liveavatar_connected", session_id=self._session_id)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> AvatarRoom:
        if self._adopted and self._room is not None:
            return self._room  # a warm uplink: started ahead by the pool
        if self._started:
            raise RuntimeError("LiveAvatarUplink.start() called twice")
        self._started = True
        opt = self._opt
        try:
            token = await self._api.create_token(
                avatar_id=opt.avatar_id,
                is_sandbox=opt.is_sandbox,
                max_session_duration=opt.max_session_duration,
                video_quality=opt.video_quality,
                video_encoding=opt.video_encoding,
            )
        except LiveAvatarError as exc:
            raise exc.to_bridge_error() from exc
        self._session_id = token.session_id
        # Recorded before /start: a start that fails after the server began billing is still
        # stopped, now or by the next daemon's sweep.
        await self._ledger.record(token.session_id)
        # Sent once, as soon as the id exists: a client can quote it even if /start fails.
        self._emit("liveavatar_session", session_id=token.session_id)
        try:
            self._started_at = time.monotonic()
            self._info = await self._api.start(token.session_token)
            self._ws = await self._connect()
        except (LiveAvatarError, BridgeError) as exc:
            await self._stop_session("SERVER_ERROR")
            raise (exc.to_bridge_error() if isinstance(exc, LiveAvatarError) else exc) from exc
        except BaseException:
            await self._stop_session("SERVER_ERROR")
            raise
        self._run_task = asyncio.get_running_loop().create_task(
            self._run(), name=f"liveavatar-{token.session_id}"
        )
        log.info("liveavatar_started", session_id=token.session_id)
        self._room = AvatarRoom(
            session_id=self._info.session_id,
            livekit_url=self._info.livekit_url,
            livekit_token=self._info.livekit_agent_token,
            ws_url=self._info.ws_url,
        )
        return self._room

    async def _connect(self) -> ClientConnection:
        assert self._info is not None
        try:
            ws = await connect(
                self._info.ws_url,
                ping_interval=None,  # media servers stall pongs under load (spec 2.4)
                open_timeout=self._opt.connect_timeout_s,
                close_timeout=2.0,
                compression=None,  # base64 PCM does not compress; save the CPU
                max_size=WS_MAX_MESSAGE,
                proxy=None,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise BridgeError(
                ErrorCode.LIVEAVATAR_UNAVAILABLE,
                f"Could not open the LiveAvatar WebSocket: {type(exc).__name__}: {exc}",
            ) from exc
        self._core.connecting(time.monotonic())
        return ws

    async def aclose(self, reason: str = "USER_CLOSED") -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            async with self._cond:
                self._cond.notify_all()
            if self._run_task is not None:
                self._run_task.cancel()
                # Not `await task` under suppress(CancelledError): that would also swallow a
                # cancellation of this close itself (the daemon's bounded close abandoning it).
                await asyncio.wait({self._run_task})
            await self._close_ws()
            await self._stop_session(reason)
        except Exception:
            log.exception("liveavatar_close_failed", session_id=self._session_id)
        finally:
            self._closed.set()

    async def _close_ws(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3.0):
                    await ws.close()

    async def _stop_session(self, reason: str) -> None:
        sid = self._session_id
        if sid is None or self._stopped:
            return
        try:
            await self._api.stop(sid, reason)
            self._stopped = True
        except LiveAvatarError as exc:
            if exc.definitive:
                log.info("liveavatar_stop_gone", session_id=sid, status=exc.status)
                self._stopped = True
            else:
                STOP_FAILURES.inc()
                log.error("liveavatar_stop_failed", session_id=sid, error=str(exc))
                self._ledger.orphan(sid)  # stopped again on the daemon's schedule
        if self._stopped:
            await self._ledger.remove(sid)

    def _emit(self, event: str, **fields: Any) -> None:
        try:
            self._events(event, **fields)
        except Exception:
            log.exception("event_sink_failed", event_name=event)

    def _fail(self, reason: str, message: str) -> None:
        if self._closing or self._failed:
            return
        self._failed = True
        self._lost_at = time.monotonic()  # the avatar's play position stops here
        FAILURES.labels(reason).inc()
        log.warning("liveavatar_session_failed", session_id=self._session_id, reason=reason)
        try:
            self._on_failure(BridgeError(ErrorCode.LIVEAVATAR_UNAVAILABLE, message))
        except Exception:
            log.exception("failure_callback_failed")

    # --- connection supervision ----------------------------------------------------------------

    async def _run(self) -> None:
        reconnects_left = self._opt.reconnects
        while True:
            ws = self._ws
            assert ws is not None
            why = await self._serve(ws)
            if self._closing:
                return
            if why != "dropped" or reconnects_left == 0:
                # Report before any close handshake (up to 3 s; aclose does it): LiveAvatar's
                # reason is the session's cause, and its room's close is already on its way.
                self._fail(why, self._failure_text(why))
                break
            await self._close_ws()
            reconnects_left -= 1
            self.reconnects_used += 1
            RECONNECTS.inc()
            log.warning("liveavatar_ws_reconnect", session_id=self._session_id)
            async with self._cond:
                resent = self._core.connection_lost()
                self._cond.notify_all()
            log.info("liveavatar_resend", session_id=self._session_id, messages=resent)
            try:
                self._ws = await self._connect()
            except BridgeError as exc:
                self._fail("reconnect_failed", exc.message)
                break
        async with self._cond:
            self._cond.notify_all()  # wake producers waiting for space: they drop now
        await self._stop_session("SERVER_ERROR")

    def _failure_text(self, why: str) -> str:
        if why == "gate_timeout":
            return (
                "LiveAvatar never reported the session connected within "
                f"{self._opt.ws_connect_gate_timeout_s:g} s"
            )
        if why == "terminal":
            if self._opt.is_sandbox:
                return "LiveAvatar ended the sandbox session (sandbox sessions last about 1 minute)"
            return "LiveAvatar ended the session (idle timeout, max_session_duration or server)"
        return "The LiveAvatar WebSocket closed unexpectedly and could not be resumed"

    async def _serve(self, ws: ClientConnection) -> str:
        tasks = [
            asyncio.create_task(self._receive(ws)),
            asyncio.create_task(self._send_loop(ws)),
            asyncio.create_task(self._timers()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is None:
                return task.result()
        for task in done:
            exc = task.exception() if not task.cancelled() else None
            if exc is not None:
                log.error("liveavatar_task_crashed", error=repr(exc))
        return "dropped"

    async def _timers(self) -> str:
        """The core's timers: keep-alives, the connected gate, the ack watchdog."""
        async with self._cond:
            while True:
                now = time.monotonic()
                had_outgoing = self._core.has_outgoing()
                verdict = self._core.poll(now)
                if verdict is Verdict.GATE_TIMEOUT:
                    return "gate_timeout"
                if verdict is Verdict.ACK_TIMEOUT:
                    ACK_TIMEOUTS.inc()
                    log.warning("liveavatar_ack_timeout", session_id=self._session_id)
                    return "dropped"
                if not had_outgoing and self._core.has_outgoing():
                    # A keep-alive was queued: wake the sender. Not on every wake-up: each
                    # client audio frame wakes this loop, and the sender needlessly with it.
                    self._cond.notify_all()
                # Any change (a send, an ack, 'connected') may move the deadline: wake on it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, self._core.next_deadline() - now)):
                        await self._cond.wait()

    async def _receive(self, ws: ClientConnection) -> str:
        try:
            async for raw in ws:
                async with self._cond:
                    verdict = self._on_server_message(raw)
                    self._cond.notify_all()
                if verdict == "terminal":
                    return "terminal"
        except ConnectionClosed:
            pass
        return "dropped"

    def _on_server_message(self, raw: str | bytes) -> str | None:
        try:
            msg = json.loads(raw)
            kind = msg["type"]
        except (ValueError, TypeError, KeyError):
            log.warning("liveavatar_bad_server_message", size=len(raw))
            return None
        if not isinstance(kind, str):
            return None
        WS_RECEIVED.labels(kind if kind in _KNOWN_EVENTS else "other").inc()
        if kind == "session.state_updated":
            state = msg.get("state")
            if state == "connected":
                self._core.on_connected(time.monotonic())
                self._emit("liveavatar_connected", session_id=self._session_id)
            elif state in ("closing", "closed"):
                return "terminal"
        elif kind in ("agent.speak_started", "agent.speak_ended"):
            event_id = msg.get("event_id")
            if isinstance(event_id, str):
                if kind == "agent.speak_started":
                    self._recorder.speak_started(event_id, time.monotonic())
                else:
                    self._recorder.speak_ended(event_id)
            self._emit(kind.removeprefix("agent."), event_id=event_id)
        elif kind == "agent.state_updated":
            state = msg.get("new_state") or msg.get("state")
            if isinstance(state, str):
                self._emit("avatar_state", state=state)
        elif kind == "agent.audio_buffer_appended":
            self._core.acked("speak")
        elif kind == "agent.audio_buffer_committed":
            self._core.acked("end")
        elif kind == "error":
            text = json.dumps(msg.get("error"))[:300]
            log.warning("liveavatar_error_event", session_id=self._session_id, error=text)
            self._emit("liveavatar_error", message=text)
        elif kind == "warning":
            text = json.dumps(msg.get("warning"))[:300]
            log.info("liveavatar_warning_event", session_id=self._session_id, warning=text)
        elif kind not in _KNOWN_QUIET:
            log.debug("liveavatar_unknown_event", type=kind[:64])
        return None

    async def _send_loop(self, ws: ClientConnection) -> str:
        async with self._cond:
            await self._cond.wait_for(lambda: self._core.connected)
            if self._opt.send_start_message:
                self._core.queue_start()
        while True:
            async with self._cond:
                await self._cond.wait_for(self._core.has_outgoing)
                item = self._core.pop()
                self._cond.notify_all()  # room in the queue for a waiting producer
            assert item is not None
            try:
                async with asyncio.timeout(self._opt.send_timeout_s):
                    await ws.send(item.payload)
            except (ConnectionClosed, TimeoutError):
                async with self._cond:
                    self._core.unsent(item)
                return "dropped"
            WS_SENT.labels(item.kind).inc()
            now = time.monotonic()
            if item.t_in:
                ADDED_LATENCY.observe(now - item.t_in)
                if item.t_turn_in:
                    _observe_first_chunk(item, now)
            async with self._cond:
                self._core.sent(item, now)
                self._cond.notify_all()

    # --- audio path ----------------------------------------------------------------------------

    async def send_audio(self, chunk: AudioChunk) -> None:
        if self._closing:
            DROPPED_MS.labels("closed").inc(chunk.duration_s * 1000)
            return
        t_in = time.monotonic()
        pcm = self._resampler.process(chunk.samples).tobytes()
        if self._failed:
            # The avatar is lost: keep the audio for the next one (take_unspoken).
            self._record(self._rec_turn or self._lost_turn_id(), pcm)
            return
        async with self._cond:
            self._core.audio(pcm, t_in)
            self._record(self._core.turn_id, pcm)
            self._cond.notify_all()
            await self._wait_for_room()

    async def end_turn(self) -> None:
        if self._closing:
            return
        if self._failed:
            if self._rec_turn is not None:
                self._record(self._rec_turn, self._resampler.flush().tobytes())
                self._recorder.ended(self._rec_turn)
                self._rec_turn = None
            return
        if not self._core.in_turn:
            return
        t_in = time.monotonic()
        tail = self._resampler.flush().tobytes()
        async with self._cond:
            turn = self._core.turn_id
            self._record(turn, tail)
            if turn is not None:
                self._recorder.ended(turn)
            self._rec_turn = None
            self._core.end_turn(tail, t_in)
            self._cond.notify_all()
            await self._wait_for_room()

    def _record(self, turn: str | None, pcm: bytes) -> None:
        self._rec_turn = turn
        if turn is not None:
            # The avatar's play position stops at a loss: audio that came after it is unplayed,
            # so the recorder must not drop it as played (it is what the next avatar re-speaks).
            now = self._lost_at if self._lost_at is not None else time.monotonic()
            RESPEAK_TRIMMED_MS.inc(self._recorder.audio(turn, pcm, now))

    def _lost_turn_id(self) -> str:
        self._lost_turns += 1
        return f"lost-{self._lost_turns}"

    def take_unspoken(self) -> list[Unspoken]:
        """After an unplanned loss: what this avatar had not spoken yet (the rest of the turn
        it was playing, the turns after it, the audio received since), oldest first."""
        lost_at = self._lost_at if self._lost_at is not None else time.monotonic()
        parts = self._recorder.unspoken(lost_at)
        self._rec_turn = None
        return parts

    async def carry_over(self, parts: list[Unspoken]) -> None:
        """Speak a lost avatar's unspoken audio first, each part as a turn of its own; the last
        one stays open when the client has not ended it. Queued before this method's first
        await, so that audio the session sends next comes after it."""
        now = time.monotonic()
        for part in parts:
            self._core.audio(part.pcm, now)
            self._record(self._core.turn_id, part.pcm)
            RESPOKEN_MS.inc(part.ms)
            if part.ended:
                if self._core.turn_id is not None:
                    self._recorder.ended(self._core.turn_id)
                self._core.end_turn(b"", now)
                self._rec_turn = None
        async with self._cond:
            self._cond.notify_all()

    async def _wait_for_room(self) -> None:
        """Hold the producer (and so the client's socket) while its audio waits for room in
        the queue; an interrupt empties the wait, a failure or close drops it. Under _cond."""
        if not self._core.backlogged:
            return
        BACKPRESSURE.inc()
        await self._cond.wait_for(
            lambda: not self._core.backlogged or self._closing or self._failed
        )
        if self._core.backlogged:
            DROPPED_MS.labels("closed").inc(self._core.drop_backlog())

    async def interrupt(self) -> None:
        self._recorder.clear()  # nothing of it is to be re-spoken, even by a next avatar
        self._rec_turn = None
        if self._closing or self._failed:
            return
        self._resampler.reset()
        async with self._cond:
            dropped = self._core.interrupt()
            self._cond.notify_all()
        DROPPED_MS.labels("interrupt").inc(dropped)
        log.info("liveavatar_interrupt", session_id=self._session_id, dropped_ms=round(dropped))
