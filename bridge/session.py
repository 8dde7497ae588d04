"""One client stream bound to one Stream call and one avatar.

The session owns the media clock and wires its stages: client audio goes to the avatar's uplink;
the avatar's rendered media comes back through the downlink into the sync stage and out to the call
publisher. It outlives its client connection (re-attach within the linger time) and any one avatar.

State machine, reported to the client as ``state`` events::

    starting -> ready <-> speaking -> draining -> closed
        \\________\\___________\\________> failed
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import structlog

from bridge import metrics
from bridge.errors import BridgeError, ErrorCode
from bridge.handover_drain import DRAIN_MAX_S
from bridge.ingest import ClientLink
from bridge.mark_queue import MarkQueue
from bridge.media import PCM, AudioChunk, AudioFormat, MediaClock
from bridge.media_path import (
    DRY_RUN,
    AvatarSwitch,
    MediaPath,
    PathBuilder,
    PathChoice,
    PathKind,
    WarmRoom,
    open_path,
)
from bridge.protocol import MAX_JSON, MAX_PAYLOAD, Hello
from bridge.stages import AvatarRoom, AvatarUplink, CarriesOver, EventSink, FailureCallback

log = structlog.get_logger(__name__)

# How often a streaming client hears how much audio the bridge holds for it.
CREDIT_INTERVAL_S = 0.25
# Events kept for a detached client and replayed when it re-attaches; also the most held back
# during an avatar switch (EventHold).
BACKLOG = 64
# A mark this close to its time when its timer fires is reached: see _marks_due.
MARK_TIMER_SLACK_S = 0.002
# Provider-side avatar losses a session recovers from before it fails like any other error.
MAX_RECOVERIES = 5
# LiveAvatar ending a session (idle cut, duration cap, server stop) closes its LiveKit room at
# once, and the room's close can be read before the WebSocket's reason. A LiveKit failure waits
# this long for a LiveAvatar one, which then wins: the cause, in causal order, not arrival order.
# The reason is sent before the room closes, so it is already in our socket buffer by then.
CAUSE_GRACE_S = 1.5


def first_cause(held: BridgeError | None, new: BridgeError) -> BridgeError:
    """The failure to report of two that end one session: a LiveAvatar failure over a LiveKit
    one (LiveAvatar's end closes the room, never the reverse), else the earlier."""
    if held is None:
        return new
    if held.code is ErrorCode.LIVEKIT_FAILED and new.code is ErrorCode.LIVEAVATAR_UNAVAILABLE:
        return new
    return held


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    SPEAKING = "speaking"
    DRAINING = "draining"
    CLOSED = "closed"
    FAILED = "failed"


TERMINAL = frozenset({State.CLOSED, State.FAILED})


Event = tuple[str, dict[str, Any]]


class EventHold:
    """A client's events held back while it is on (from an avatar switch until its
    ``avatar_handover`` is sent), sans-I/O and bounded: past ``capacity`` the hold gives up
    its order and lets everything out at once rather than grow (a client marking fast through
    a slow switch)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.holding = False
        self._held: list[Event] = []

    def start(self) -> None:
        self.holding = True

    def offer(self, event: str, fields: Mapping[str, Any]) -> list[Event]:
        """The events to deliver now, in order: none while held, else the held ones released
        early (capacity reached) followed by this one."""
        if not self.holding:
            return [(event, dict(fields))]
        self._held.append((event, dict(fields)))
        if len(self._held) <= self.capacity:
            return []
        return self.release()

    def release(self) -> list[Event]:
        """Stop holding; what was held, in order."""
        self.holding = False
        held, self._held = self._held, []
        return held


@dataclass(slots=True)
class Handover:
    """How a session replaces its avatar before the provider's cap ends it."""

    # The next LiveAvatar session (same options): a warm one from the pool when one matches,
    # with its room when it was joined for this path kind (adopted by the path, not rejoined).
    next_uplink: Callable[[PathKind], tuple[AvatarUplink, WarmRoom | None]]
    expires_at: Callable[[AvatarUplink], float]  # monotonic time the cap ends this one
    margin_s: float
    prepare_timeout_s: float = 15.0
    retry_s: float = 2.0


@dataclass(slots=True)
class Stages:
    """What a session drives: the avatar's uplink and, unless a dry run, the builder of its media
    path (:mod:`bridge.media_path` decides which one is built), and how to replace the avatar."""

    uplink: AvatarUplink
    paths: PathBuilder | None = None
    handover: Handover | None = None


class StageFactory(Protocol):
    """Builds a session's stages from its HELLO; the daemon chooses real, dry-run or test ones."""

    def __call__(
        self, hello: Hello, clock: MediaClock, events: EventSink, on_failure: FailureCallback
    ) -> Stages: ...


class Session:
    """A client stream. Driven by :class:`bridge.sessions.SessionManager`."""

    def __init__(
        self,
        hello: Hello,
        factory: StageFactory,
        *,
        linger_s: float,
        on_closed: Callable[[Session], None],
        is_draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.key = secrets.token_urlsafe(24)
        self.hello = hello
        self.fmt: AudioFormat = hello.audio
        self.clock = MediaClock()
        self.created = time.time()
        self.state = State.STARTING
        self.error: BridgeError | None = None
        self.linger_s = linger_s
        self._on_closed = on_closed
        # While the daemon drains, a vanished client is not waited for.
        self._is_draining = is_draining
        self._link: ClientLink | None = None
        self._backlog: deque[tuple[str, dict[str, Any]]] = deque(maxlen=BACKLOG)
        # Set before the stages are built (a pooled uplink reports at once). The client's events
        # from a switch until its avatar_handover, sent after it: the new avatar may start
        # speaking before the switch is measured and reported (see _handover).
        self._switch_events = EventHold(BACKLOG)
        self._closing = asyncio.Event()
        self._close_reason = "USER_CLOSED"
        self._linger_task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        # Turn bookkeeping: audio per turn for marks, and the marks waiting for playback.
        self._turn = 0
        self._turn_open = False
        self._turn_audio_s = 0.0
        self._played_turn = -1  # index of the turn whose playback started last
        self._play_start = 0.0  # monotonic time that playback began
        # A lost avatar's turn goes on at this offset on the next one (_turn_resumes).
        self._resume_offset_s = 0.0
        self._marks = MarkQueue()
        self._mark_timer: asyncio.TimerHandle | None = None  # for the queue's head only
        self._last_credit = 0.0
        self.stats: dict[str, float] = {"audio_in_s": 0.0, "turns": 0, "interrupts": 0}
        self._log = log.bind(session_id=self.id, call=f"{hello.call.type}:{hello.call.id}")
        self.stages = factory(hello, self.clock, self._event, self._fail)
        self.uplink = self.stages.uplink
        paths = self.stages.paths
        self.choice: PathChoice = paths.choice if paths is not None else DRY_RUN
        self.path: MediaPath | None = None
        self._paths: list[MediaPath] = []  # every path built, for _release
        # Avatar handover: one switch at a time; a loss is recovered by its own task.
        self._switching = asyncio.Lock()
        self._avatar_lost = False
        self._recovery: asyncio.Task[None] | None = None
        self._recoveries = 0
        # A LiveKit failure held for CAUSE_GRACE_S in case its cause (LiveAvatar's end) follows.
        self._held: BridgeError | None = None
        self._held_timer: asyncio.TimerHandle | None = None

    # ----- client link -------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self._link is not None

    def attach(self, link: ClientLink, *, resumed: bool) -> dict[str, Any]:
        """Bind a client connection; returns the READY payload."""
        if self._linger_task is not None:
            self._linger_task.cancel()
            self._linger_task = None
        old, self._link = self._link, link
        if old is not None and old is not link:
            old.send_error(
                BridgeError(ErrorCode.SESSION_CLOSED, "another connection re-attached this session")
            )
        if old is None:
            metrics.SESSIONS_ATTACHED.inc()
        backlog = list(self._backlog)
        self._backlog.clear()
        for name, fields in backlog:
            link.send_event(name, fields)
        self._log.info("client_attached", peer=link.peer, resumed=resumed)
        return {
            "v": 1,
            "session_id": self.id,
            "session_key": self.key,
            "resumed": resumed,
            "state": str(self.state),
            "audio": {
                "sample_rate": self.fmt.sample_rate,
                "channels": self.fmt.channels,
                "encoding": "s16le",
            },
            "limits": {
                "max_payload": MAX_PAYLOAD,
                "max_json": MAX_JSON,
                "linger_s": self.linger_s,
            },
        }

    def detach(self, link: ClientLink) -> None:
        """The connection went away without CLOSE: keep the session for ``linger_s``."""
        if self._link is not link:
            return  # an older connection that was already replaced
        self._link = None
        metrics.SESSIONS_ATTACHED.dec()
        if self.state in TERMINAL or self._closing.is_set():
            return
        if self._is_draining():
            self._log.info("client_detached_while_draining")
            self.close("USER_DISCONNECTED")
            return
        self._log.info("client_detached_lingering", linger_s=self.linger_s)
        self._linger_task = asyncio.get_running_loop().create_task(self._linger())

    async def _linger(self) -> None:
        await asyncio.sleep(self.linger_s)
        if self._link is None:
            self._log.info("linger_expired")
            self.close("USER_DISCONNECTED")

    def send_event(self, event: str, fields: Mapping[str, Any]) -> None:
        hold = self._switch_events
        if not hold.holding:
            self._deliver(event, fields)  # the usual case: no copy, no list
            return
        out = hold.offer(event, fields)  # empty while held; all of it once over capacity
        if out:
            self._log.warning("switch_events_released_early", released=len(out))
        for name, out_fields in out:
            self._deliver(name, out_fields)

    def _deliver(self, event: str, fields: Mapping[str, Any]) -> None:
        if self._link is not None:
            self._link.send_event(event, fields)
        else:
            self._backlog.append((event, dict(fields)))

    # ----- events from the stages ----------------------------------------------------------

    def _event(self, event: str, /, **fields: Any) -> None:
        if event == "speak_started":
            self._speech_resumes()
            self._set_state(State.SPEAKING)
            self._played_turn += 1
            self._play_start = time.monotonic() - self._resume_offset_s
            self._resume_offset_s = 0.0
            self._marks.play(self._played_turn, self._play_start)
            self._arm_marks()
        elif event == "speak_ended":
            if not fields.get("interrupted"):
                self._finish_marks()
            if self.state == State.SPEAKING:
                self._set_state(State.READY)
        self.send_event(event, fields)

    def _speech_resumes(self) -> None:
        """The avatar started a turn: a path muted by a barge-in forwards its speech again."""
        if self.path is not None:
            self.path.speak_started()

    def _fail(self, err: BridgeError, *, hold: bool = True) -> None:
        if self.state in TERMINAL or self._closing.is_set():
            return
        if self._replace_lost_avatar(err):
            return  # the avatar is replaced under the call; the client sees avatar_handover
        err = first_cause(self._held, err)
        if hold and err.code is ErrorCode.LIVEKIT_FAILED:
            if self._held is None:
                self._held = err
                self._log.info("failure_held_for_its_cause", code=str(err.code), error=err.message)
                self._held_timer = asyncio.get_running_loop().call_later(
                    CAUSE_GRACE_S, self._release_held
                )
            return
        self._fail_now(err)

    def _release_held(self) -> None:
        err, self._held, self._held_timer = self._held, None, None
        if err is not None:
            self._fail_now(err)

    def _fail_now(self, err: BridgeError) -> None:
        if self.state in TERMINAL or self._closing.is_set():
            return
        if self._held_timer is not None:
            self._held_timer.cancel()
        self._held = self._held_timer = None
        self.error = err
        metrics.REMOTE_ERRORS.labels(code=str(err.code)).inc()
        self._log.warning("session_failed", code=str(err.code), error=err.message)
        if self._link is not None:
            self._link.send_error(err)
        self.close("SERVER_ERROR")

    def _set_state(self, state: State) -> None:
        if state == self.state or self.state in TERMINAL:
            return
        if self.state == State.DRAINING and state not in TERMINAL:
            return  # draining is sticky: turns go on, but the session only ends from here
        self.state = state
        self.send_event("state", {"state": str(state)})

    # ----- lifecycle -----------------------------------------------------------------------

    def drain(self) -> None:
        """The daemon is shutting down: tell the client; it may finish its turn, then close."""
        self.send_event("draining", {})
        self._set_state(State.DRAINING)
        if not self.attached:
            self.close("USER_DISCONNECTED")  # nobody left to finish a turn for

    def close(self, reason: str = "USER_CLOSED") -> None:
        """Ask the session to end; :meth:`run` then releases every remote resource."""
        if not self._closing.is_set():
            self._close_reason = reason
            self._closing.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    async def run(self) -> None:
        """Start the stages, keep the session until closed, then release everything."""
        structlog.contextvars.bind_contextvars(session_id=self.id)
        t0 = time.monotonic()
        metrics.SESSIONS_ACTIVE.inc()
        outcome = "closed"
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._start_and_serve())
                await self._closing.wait()
                # Stage tasks end when the stages close; cancel what is left.
                raise _Closing
        except* _Closing:
            pass
        except* BridgeError as group:
            self._fail(group.exceptions[0], hold=False)  # type: ignore[arg-type]
        except* Exception as group:
            self._log.error("session_crashed", exc_info=group.exceptions[0])
            self._fail(
                BridgeError(ErrorCode.INTERNAL, "internal error; see the daemon log"), hold=False
            )
        finally:
            if self._held_timer is not None:
                self._held_timer.cancel()
            await self._release()
            outcome = "failed" if self.error is not None else "closed"
            self._set_state(State.FAILED if self.error is not None else State.CLOSED)
            if self._link is not None:
                link, self._link = self._link, None
                metrics.SESSIONS_ATTACHED.dec()
                await link.aclose()
            metrics.SESSIONS_ACTIVE.dec()
            metrics.SESSIONS_TOTAL.labels(outcome=outcome).inc()
            metrics.SESSION_SECONDS.inc(time.monotonic() - t0)
            self._log.info("session_ended", outcome=outcome, reason=self._close_reason)
            self._on_closed(self)

    async def _start_and_serve(self) -> None:
        room = await self.uplink.start()
        paths = self.stages.paths
        if paths is None:
            self._serving()
            await asyncio.Event().wait()  # until the session is closed
            return
        try:
            self.path, self.choice = await open_path(paths, room, self._paths.append)
        finally:
            self._started.set()
        self._serving()
        path, plan = self.path, self.stages.handover
        if plan is None or not isinstance(path, AvatarSwitch) or not path.can_switch:
            await path.run()
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(path.run())
            tg.create_task(self._handover_loop(path, plan))

    # ----- avatar handover -----------------------------------------------------------------

    async def _handover_loop(self, path: AvatarSwitch, plan: Handover) -> None:
        """Before the cap (minus the margin), bring up the next avatar and switch to it."""
        while True:
            # Re-read each second: an unplanned switch may have replaced the avatar meanwhile.
            wait = plan.expires_at(self.uplink) - plan.margin_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(min(wait, 1.0))
                continue
            async with self._switching:
                ok = await self._handover(path, plan, "cap")
            if not ok:
                await asyncio.sleep(plan.retry_s)

    def _replace_lost_avatar(self, err: BridgeError) -> bool:
        """The provider ended the avatar (session stopped, WebSocket closed for good, avatar or
        room gone): replace it instead of failing, when this session can switch avatars."""
        plan, path = self.stages.handover, _switchable(self.path)
        if plan is None or path is None:
            return False
        if err.code not in (ErrorCode.LIVEAVATAR_UNAVAILABLE, ErrorCode.LIVEKIT_FAILED):
            return False
        if self._is_draining():
            return False  # the session is ending: no new paid avatar for the drain to cut off
        if self._recovery is not None and not self._recovery.done():
            # One loss reports from both the uplink and the downlink, and the lost avatar's
            # receivers again when their connection closes, which can come after the recovery's
            # switch (a warm one commits within milliseconds). The first report set the flag;
            # setting it again after the switch cleared it would make the next planned switch
            # take the new avatar's turn in flight for lost: cut mid-turn, its rest re-spoken
            # (heard twice; 690 ms in the continuity bench).
            return True
        self._avatar_lost = True  # a planned switch in progress commits at once
        if self._recoveries >= MAX_RECOVERIES:
            return False
        self._recoveries += 1
        self._log.warning("avatar_lost", code=str(err.code), error=err.message)
        self._hold_marks()  # nothing plays until the next avatar resumes the turn
        self._recovery = asyncio.get_running_loop().create_task(self._recover(path, plan, err))
        return True

    async def _recover(self, path: AvatarSwitch, plan: Handover, err: BridgeError) -> None:
        """Replace the lost avatar; and the next one too when it is lost as it comes up (its
        start or room fails) or as it takes over. A loss reported while this runs is taken for
        the old avatar's last report (see _replace_lost_avatar), so after the switch the new
        avatar's own health (its uplink, its room on the path) says which it was. Within
        MAX_RECOVERIES (and not while the daemon drains), then the session fails."""
        failed_starts = 0
        try:
            while True:
                async with self._switching:
                    if not self._avatar_lost:
                        return  # a planned switch that was under way has replaced it already
                    ok = await self._handover(path, plan, "lost")
                if ok and self.uplink.healthy and path.avatar_alive:
                    return
                if self._recoveries >= MAX_RECOVERIES or self._is_draining():
                    break  # draining: no new paid avatar for the drain to cut off
                self._recoveries += 1
                self._avatar_lost = True
                during = "switch" if ok else "start"
                self._log.warning("avatar_lost_again", during=during, attempt=self._recoveries)
                metrics.AVATAR_LOST_AGAIN.labels(during=during).inc()
                if ok:
                    self._hold_marks()  # the new avatar's playback is gone with it
                else:
                    # The call has no avatar: the first retry at once (that avatar failed, not
                    # necessarily the service), later ones after plan.retry_s.
                    failed_starts += 1
                    if failed_starts > 1:
                        await asyncio.sleep(plan.retry_s)
        except Exception:
            self._log.exception("avatar_recovery_crashed")
        self._fail_now(err)

    def _hold_marks(self) -> None:
        """The avatar is lost: the marks timed from its playback wait for the next one."""
        self._marks.hold()
        self._arm_marks()

    def _turn_resumes(self, offset_s: float | None) -> None:
        """At the switch after a loss. ``offset_s``: the turn the lost avatar was playing goes
        on there on the next one; its ``speak_started`` is this turn again, and the held marks
        are timed from it. None: nothing of that turn is left, so its held marks are reached."""
        self._hold_marks()
        if offset_s is not None:
            self._played_turn -= 1
            self._resume_offset_s = offset_s
            return
        self._finish_marks()

    def _may_switch(self, deadline: float) -> bool:
        return self._avatar_lost or self._at_turn_boundary() or time.monotonic() >= deadline

    def _at_turn_boundary(self) -> bool:
        return (
            self.state != State.SPEAKING
            and not self._turn_open
            and self.uplink.buffered_ms() == 0.0
        )

    async def _handover(self, path: AvatarSwitch, plan: Handover, reason: str) -> bool:
        """Bring up the next avatar, then switch at a turn boundary. Ownership, so that every
        exit (a failure, or the session ending under it) stops what it dropped: until the
        switch the next avatar's uplink is this handover's, and its pooled room too until
        ``prepare_avatar`` (the path's from then on, left by it unless committed); from the
        switch the session owns the new uplink and this handover the old one."""
        t0 = time.monotonic()
        new, warm = plan.next_uplink(self.choice.kind)
        was_warm = warm is not None
        try:
            room = await new.start()
            prepared = await path.prepare_avatar(room, plan.prepare_timeout_s, warm)
            warm = None  # the path's now
            prepared_s = time.monotonic() - t0
            self._log.info(
                "avatar_handover_prepared",
                reason=reason,
                warm=was_warm,
                liveavatar_session=room.session_id,
            )
            # At a turn boundary: after speak_ended, in silence; never past the old one's cap.
            deadline = plan.expires_at(self.uplink) - 1.0
            while not self._may_switch(deadline):  # noqa: ASYNC110 - no event for an empty queue
                await asyncio.sleep(0.02)
        except BridgeError as exc:
            self._log.warning("avatar_handover_failed", reason=reason, error=exc.message)
            metrics.HANDOVERS.labels(reason=reason, outcome="failed").inc()
            await _drop_next(new, warm, "SERVER_ERROR")
            return False
        except BaseException:
            # The session ends while the switch waits: one shielded close, which a second
            # cancellation cannot cut short.
            await asyncio.shield(_drop_next(new, warm, "USER_CLOSED"))
            raise
        lost = self._avatar_lost
        old, self.uplink = self.uplink, new
        # From here the new avatar may speak (carried-over audio goes first) while the old one is
        # left and the picture gap measured: the client's events wait until avatar_handover is
        # sent (a speak_started ahead of it reads as the old avatar's; under load it came first).
        self._switch_events.start()
        try:
            fields = await self._switch(
                path, prepared, old, new, lost, reason, room, prepared_s, was_warm
            )
            self._deliver("avatar_handover", fields)
        finally:
            for name, held_fields in self._switch_events.release():
                self._deliver(name, held_fields)
        return True

    async def _switch(
        self,
        path: AvatarSwitch,
        prepared: Any,
        old: AvatarUplink,
        new: AvatarUplink,
        lost: bool,
        reason: str,
        room: AvatarRoom,
        prepared_s: float,
        was_warm: bool,
    ) -> dict[str, Any]:
        """The switch itself, from the swap of the uplinks; returns ``avatar_handover``'s fields."""
        try:
            respoken_ms = 0.0
            if lost and isinstance(old, CarriesOver) and isinstance(new, CarriesOver):
                # The unspoken rest of the lost avatar's turns, and the audio the client sent
                # while this one came up, go first; the client's next audio (to self.uplink)
                # follows.
                parts = old.take_unspoken()
                respoken_ms = sum(p.ms for p in parts)
                resumed = bool(parts) and parts[0].played_ms > 0
                self._turn_resumes(parts[0].from_ms / 1000 if resumed else None)
                await new.carry_over(parts)
            # Planned: the old avatar's last words still in flight reach the call first, ending
            # 0.3 s before its cap at the latest (the provider's cut would read as a loss). A
            # lost one's unplayed rest is re-spoken instead: draining it would be heard twice.
            plan = self.stages.handover
            left_s = plan.expires_at(old) - time.monotonic() - 0.3 if plan is not None else 0.0
            drain_s = 0.0 if lost else max(0.0, min(DRAIN_MAX_S, left_s))
            gap = path.commit_avatar(prepared, drain_s=drain_s)
            self._avatar_lost = False
            # The old avatar's room first, so that its leaving is not taken for a failure.
            await path.release_retired()
        finally:
            await asyncio.shield(old.aclose("USER_CLOSED"))
        gap_ms = gap()
        for _ in range(100):  # its first frame through the gate: a frame interval or so
            if gap_ms is not None or not (new.healthy and path.avatar_alive):
                break  # measured, or the new avatar is gone too (_recover replaces it)
            await asyncio.sleep(0.02)
            gap_ms = gap()
        metrics.HANDOVERS.labels(reason=reason, outcome="switched").inc()
        fields = {
            "reason": reason,
            "gap_ms": round(gap_ms, 1) if gap_ms is not None else None,
            "prepare_s": round(prepared_s, 3),
            "warm": was_warm,
            "respoken_ms": round(respoken_ms, 1),
            "liveavatar_session": room.session_id,
        }
        self._log.info("avatar_handover", **fields)
        return fields

    def _serving(self) -> None:
        choice = self.choice
        self._log.info("media_path", path=choice.kind, reason=choice.reason, detail=choice.detail)
        choice.count()
        self.send_event("media_path", {"path": str(choice.kind), "reason": choice.detail})
        self._started.set()
        self._set_state(State.READY)

    async def _release(self) -> None:
        """Close the stages together, the one that stops billing started first; never raises."""
        if self._mark_timer is not None:
            self._mark_timer.cancel()
        if self._linger_task is not None:
            self._linger_task.cancel()
        if self._recovery is not None and not self._recovery.done():
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        reason = self._close_reason
        closers: list[Callable[[], Awaitable[None]]] = [lambda: self.uplink.aclose(reason)]
        closers += [path.aclose for path in self._paths]
        if self.stages.paths is not None:
            closers.append(self.stages.paths.aclose)  # a pooled room no path took

        async def close(closer: Callable[[], Awaitable[None]]) -> None:
            try:
                await closer()
            except Exception:
                self._log.exception("stage_close_failed")

        # Together, not one after the other: a LiveAvatar /stop that takes its whole timeout must
        # not keep the avatar's room and the call joined until the daemon abandons the close
        # (both SFUs would keep a ghost participant until their reconnect windows end). Not
        # shielded: the daemon's bounded close cancels a session still closing past
        # limits.close_timeout_s, and a shielded closer would go on past it, orphaned.
        async with asyncio.TaskGroup() as tg:
            for closer in closers:
                tg.create_task(close(closer))

    # ----- what the client sends -----------------------------------------------------------

    async def on_audio(self, pcm: PCM) -> None:
        if self.state in TERMINAL or self._closing.is_set():
            raise BridgeError(ErrorCode.SESSION_CLOSED, "the session has ended", fatal=True)
        chunk = AudioChunk(pcm, self.fmt, self.clock.now_us())
        seconds = chunk.duration_s
        self._turn_open = True
        self._turn_audio_s += seconds
        self.stats["audio_in_s"] += seconds
        metrics.AUDIO_IN_SECONDS.inc(seconds)
        metrics.AUDIO_IN_BYTES.inc(pcm.nbytes)
        t0 = time.monotonic()
        await self.uplink.send_audio(chunk)
        metrics.STAGE_LATENCY.labels(stage="ingest_wait").observe(time.monotonic() - t0)
        now = time.monotonic()
        if now - self._last_credit >= CREDIT_INTERVAL_S:
            self._last_credit = now
            self.send_event("credit", {"buffered_ms": round(self.uplink.buffered_ms(), 1)})

    async def on_end_turn(self) -> None:
        if not self._turn_open:
            return  # an empty turn: nothing to end
        await self.uplink.end_turn()
        self._next_turn()
        self.stats["turns"] += 1
        metrics.TURNS.labels(how="end_turn").inc()

    async def on_interrupt(self) -> None:
        self._log.info("interrupt")
        # Marks first: the client learns which labels will never play before speech stops.
        self._clear_marks()
        # The path first: its barge-in gate is shut before LiveAvatar hears agent.interrupt, so
        # whatever the avatar plays from then on is never forwarded (bridge/barge_in.py).
        if self.path is not None:
            self.path.interrupt()
        await self.uplink.interrupt()
        self._next_turn()
        self._played_turn = self._turn - 1
        self.stats["interrupts"] += 1
        metrics.TURNS.labels(how="interrupt").inc()
        if self.state == State.SPEAKING:
            self._set_state(State.READY)

    def _clear_marks(self) -> None:
        for name in self._marks.clear():
            self.send_event("mark", {"name": name, "cleared": True})
            metrics.MARKS.labels(outcome="cleared").inc()
        self._arm_marks()

    async def on_mark(self, name: str) -> None:
        """Echo ``name`` when playback reaches the audio sent so far in this turn."""
        self._marks.add(name, self._turn, self._turn_audio_s)
        if self._turn <= self._played_turn and not self._avatar_lost:  # already playing
            self._marks.play(self._played_turn, self._play_start)
            self._arm_marks()

    async def on_close(self) -> None:
        if self._turn_open:
            await self.on_end_turn()
        self.close("USER_CLOSED")

    def _next_turn(self) -> None:
        self._turn += 1
        self._turn_open = False
        self._turn_audio_s = 0.0

    def _arm_marks(self) -> None:
        """One timer, for the head of the queue: marks are reached in the order they were sent
        (bridge/mark_queue.py)."""
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None
        due = self._marks.next_due()
        if due is not None:
            delay = max(0.0, due - time.monotonic())
            self._mark_timer = asyncio.get_running_loop().call_later(delay, self._marks_due)

    def _marks_due(self) -> None:
        self._mark_timer = None
        # A loop's timer may fire a little early (uvloop's clock counts whole milliseconds).
        self._marks_reached(self._marks.reached(time.monotonic() + MARK_TIMER_SLACK_S))
        self._arm_marks()

    def _finish_marks(self) -> None:
        """The turn being played is over: its marks are all reached, whatever the timer says."""
        self._marks_reached(self._marks.finish(self._played_turn))
        self._arm_marks()

    def _marks_reached(self, names: list[str]) -> None:
        for name in names:
            self.send_event("mark", {"name": name})
            metrics.MARKS.labels(outcome="reached").inc()

    # ----- reporting -----------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "call": {"type": self.hello.call.type, "id": self.hello.call.id},
            "state": str(self.state),
            "attached": self.attached,
            "client": self.hello.client,
            "created": self.created,
            "audio": {"sample_rate": self.fmt.sample_rate, "channels": self.fmt.channels},
            "media_path": str(self.choice.kind),
            "media_path_reason": self.choice.detail,
            "relay": (
                self.path.stats()
                if self.path is not None and self.path.kind is PathKind.RELAY
                else None
            ),
            "path_stats": self.path.stats() if self.path is not None else None,
            "uplink_buffered_ms": round(self.uplink.buffered_ms(), 1),
            "stats": dict(self.stats),
            "error": self.error.to_json() if self.error else None,
        }


async def _drop_next(new: AvatarUplink, warm: WarmRoom | None, reason: str) -> None:
    """A handover that did not switch stops the next avatar it took: the pooled room handed with
    it first, unless the path has it (so that its leaving is not taken for a failure), then its
    LiveAvatar session."""
    if warm is not None:
        await warm.aclose()
    await new.aclose(reason)


def _switchable(path: object) -> AvatarSwitch | None:
    return path if isinstance(path, AvatarSwitch) and path.can_switch else None


class _Closing(Exception):
    """Raised inside the session's task group to cancel its tasks once close() was called."""


__all__ = ["Session", "StageFactory", "Stages", "State"]
