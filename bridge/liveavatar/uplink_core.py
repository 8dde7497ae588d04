"""The uplink's state machine without I/O: 24 kHz PCM, turn events, acks and time in; the
messages to send, in order, and verdicts (stall, never connected) out.

:class:`LiveAvatarUplink` is the thin driver that feeds it from the session and the WebSocket.
Everything here is a pure function of its inputs and the ``now`` it is given, so it is tested
without sockets or clocks (tests/liveavatar/test_uplink_core.py).

Chunking: each turn (one ``event_id``) is cut into ``first_chunk_ms`` then ``chunk_ms`` pieces,
the tail at end of turn. A client that streams in real time would starve the avatar between
full chunks, so once the audio handed over this turn leads real time by less than
``lead_low_water_ms``, whatever is buffered (at least ``min_chunk_ms``) is cut at once.

Queue: a cut message waits in a backlog until the send queue has room for it (the queue holds at
most ``queue_ms`` of audio, or any single chunk when empty); the driver holds its producer while
the backlog is not empty, which is the back-pressure to the client. A message's ``seq`` is its
place in the queue.

Acks: speak and speak_end messages are acknowledged by the server in order
(``agent.audio_buffer_appended`` / ``_committed``). Popped for sending, they count as unacked;
after a lost connection the unacked ones are queued again, first and in their order, so every
byte reaches a connection that acknowledges it. An interrupt drops the turn's unsent audio and
marks what is in flight stale: its ack still counts, but it is never resent.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from bridge.liveavatar.resample import UPLINK_FORMAT

if TYPE_CHECKING:
    from bridge.liveavatar.uplink import LiveAvatarOptions

BYTES_PER_MS = UPLINK_FORMAT.bytes_per_second // 1000  # 48

Kind = Literal["speak", "end", "interrupt", "keep_alive", "start"]
ACKED_KINDS: tuple[Kind, ...] = ("speak", "end")


@dataclass(slots=True, eq=False)
class Message:
    """One WebSocket text message. The same object is resent after a reconnect."""

    kind: Kind
    payload: str
    ms: float = 0.0  # audio it carries
    event_id: str | None = None
    seq: int = 0  # its place in the send queue, set when it enters the queue
    stale: bool = False  # in flight at an interrupt: its ack counts, it is never resent
    t_in: float = 0.0  # when the input that completed it arrived (0: not measured)
    t_sent: float = 0.0  # when its last send completed on this connection (0: not sent)
    t_turn_in: float = 0.0  # the turn's first chunk only: when the turn's first audio arrived


class Verdict(StrEnum):
    """Why the current connection is given up."""

    GATE_TIMEOUT = "gate_timeout"  # never reported 'connected'
    ACK_TIMEOUT = "ack_timeout"  # open, but a sent message is never acknowledged


class UplinkCore:
    def __init__(
        self, options: LiveAvatarOptions, new_id: Callable[[], str] = lambda: uuid.uuid4().hex
    ) -> None:
        self._opt = options
        self._new_id = new_id
        self._queue: deque[Message] = deque()
        self._queued_ms = 0.0
        self._backlog: deque[Message] = deque()
        self._unacked: dict[Kind, deque[Message]] = {k: deque() for k in ACKED_KINDS}
        self._seq = 0
        # The current turn.
        self._turn_id: str | None = None
        self._first = True
        self._buf = bytearray()
        self._turn_sent_ms = 0.0  # audio of this turn cut into messages
        self._turn_t0 = 0.0  # when the turn's first chunk was cut
        self._turn_in_t = 0.0  # when the turn's first audio arrived (first-sound figures)
        # The current connection.
        self._connected = False
        self._connect_t0 = 0.0
        self._last_sent = 0.0

    # --- state for the driver -----------------------------------------------------------------

    @property
    def in_turn(self) -> bool:
        return self._turn_id is not None

    @property
    def turn_id(self) -> str | None:
        """The open turn's event_id."""
        return self._turn_id

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def backlogged(self) -> bool:
        """Messages wait for room in the queue: the producer must wait."""
        return bool(self._backlog)

    @property
    def queued_ms(self) -> float:
        return self._queued_ms

    def buffered_ms(self) -> float:
        """Audio accepted but not yet sent."""
        backlog = sum(m.ms for m in self._backlog)
        return len(self._buf) / BYTES_PER_MS + backlog + self._queued_ms

    def has_outgoing(self) -> bool:
        return self._connected and bool(self._queue)

    def unacked(self) -> list[Message]:
        return sorted((*self._unacked["speak"], *self._unacked["end"]), key=lambda m: m.seq)

    # --- producer: audio and turn events -------------------------------------------------------

    def audio(self, pcm: bytes, now: float) -> None:
        """24 kHz mono s16 of the current turn (a new turn if none is open). Empty audio opens
        a turn too: the resampler may hold a short input back until the turn's end."""
        if self._turn_id is None:
            self._turn_id = self._new_id()
            self._first = True
            self._turn_in_t = now
        if pcm:
            self._buf += pcm
            self._cut(now, final=False)

    def end_turn(self, tail: bytes, now: float) -> None:
        """Cut the rest of the turn (plus the resampler's ``tail``) and its speak_end."""
        if self._turn_id is None:
            return
        self._buf += tail
        self._cut(now, final=True)
        msg = json.dumps({"type": "agent.speak_end", "event_id": self._turn_id})
        self._backlog.append(Message("end", msg, event_id=self._turn_id))
        self._turn_id = None
        self._admit()

    def interrupt(self) -> float:
        """Drop the unsent audio of the turn, stop the avatar first thing; returns ms dropped."""
        dropped = self.buffered_ms()
        self._buf.clear()
        self._backlog.clear()
        self._turn_id = None
        self._queue = deque(m for m in self._queue if m.kind not in ACKED_KINDS)
        self._queued_ms = 0.0
        for queue in self._unacked.values():
            for m in queue:
                m.stale = True
        self._push_front(Message("interrupt", json.dumps({"type": "agent.interrupt"})))
        return dropped

    def drop_backlog(self) -> float:
        """The uplink closed or failed while the producer waited: ms dropped."""
        dropped = sum(m.ms for m in self._backlog)
        self._backlog.clear()
        return dropped

    def _cut(self, now: float, *, final: bool) -> None:
        assert self._turn_id is not None
        while self._buf:
            target_ms = self._opt.first_chunk_ms if self._first else self._opt.chunk_ms
            size = target_ms * BYTES_PER_MS
            if len(self._buf) < size and not final and not self._running_dry(now):
                break
            data = bytes(self._buf[:size])
            del self._buf[:size]
            turn_in = 0.0
            if self._first:
                self._turn_t0 = now
                self._turn_sent_ms = 0.0
                self._first = False
                turn_in = self._turn_in_t or now
            ms = len(data) / BYTES_PER_MS
            self._turn_sent_ms += ms
            payload = json.dumps(
                {
                    "type": "agent.speak",
                    "event_id": self._turn_id,
                    "audio": base64.b64encode(data).decode(),
                }
            )
            self._backlog.append(
                Message("speak", payload, ms, self._turn_id, t_in=now, t_turn_in=turn_in)
            )
        self._admit()

    def _running_dry(self, now: float) -> bool:
        """Whether the avatar's playback of this turn would soon run out of audio."""
        if self._first or len(self._buf) < self._opt.min_chunk_ms * BYTES_PER_MS:
            return False
        played_ms = (now - self._turn_t0) * 1000
        return self._turn_sent_ms - played_ms < self._opt.lead_low_water_ms

    def _admit(self) -> None:
        while self._backlog:
            head = self._backlog[0]
            if self._queued_ms and self._queued_ms + head.ms > self._opt.queue_ms:
                return
            self._backlog.popleft()
            self._push_back(head)

    def _push_back(self, msg: Message) -> None:
        msg.seq = self._next_seq()
        self._queue.append(msg)
        self._queued_ms += msg.ms

    def _push_front(self, msg: Message) -> None:
        msg.seq = self._next_seq()
        self._queue.appendleft(msg)
        self._queued_ms += msg.ms

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # --- sender --------------------------------------------------------------------------------

    def queue_start(self) -> None:
        """HeyGen's starter's optional 'start' message, ahead of everything."""
        start = {"type": "start", "encoding": "pcm_s16le", "sample_rate": 24000, "channels": 1}
        self._push_front(Message("start", json.dumps(start)))

    def pop(self) -> Message | None:
        """The next message to send; from now on a speak/end one waits for its ack."""
        if not self._connected or not self._queue:
            return None
        msg = self._queue.popleft()
        self._queued_ms -= msg.ms
        if not self._queue:
            self._queued_ms = 0.0  # no float residue in an empty queue
        if msg.kind in ACKED_KINDS:
            self._unacked[msg.kind].append(msg)
        self._admit()
        return msg

    def sent(self, msg: Message, now: float) -> None:
        msg.t_sent = self._last_sent = now
        msg.t_in = msg.t_turn_in = 0.0  # a resend is not measured again

    def unsent(self, msg: Message) -> None:
        """Its send failed (the connection is going): acked kinds are resent with the unacked
        ones; others go back to the front of the queue."""
        if msg.kind not in ACKED_KINDS:
            self._queue.appendleft(msg)
            self._queued_ms += msg.ms

    # --- receiver ------------------------------------------------------------------------------

    def acked(self, kind: Literal["speak", "end"]) -> Message | None:
        """The server acknowledged the oldest unacked message of ``kind``."""
        queue = self._unacked[kind]
        return queue.popleft() if queue else None

    # --- connection ----------------------------------------------------------------------------

    def connecting(self, now: float) -> None:
        """A new WebSocket is open; nothing is sent before the server says 'connected'."""
        self._connected = False
        self._connect_t0 = now

    def on_connected(self, now: float) -> None:
        if not self._connected:
            self._connected = True
            self._last_sent = now

    def connection_lost(self) -> int:
        """Queue every unacked, non-stale message again, first and in order; returns how many.
        Stale ones are forgotten: the new connection will not acknowledge them."""
        pending = [m for m in self.unacked() if not m.stale]
        for queue in self._unacked.values():
            queue.clear()
        for msg in reversed(pending):
            msg.t_sent = 0.0
            self._queue.appendleft(msg)  # keeps its seq: its place in the turn
            self._queued_ms += msg.ms
        self._connected = False
        return len(pending)

    # --- time ----------------------------------------------------------------------------------

    def poll(self, now: float) -> Verdict | None:
        """Run the timers: queues a keep-alive when due; a verdict ends the connection."""
        opt = self._opt
        if not self._connected:
            if now - self._connect_t0 >= opt.ws_connect_gate_timeout_s:
                return Verdict.GATE_TIMEOUT
            return None
        oldest = self._oldest_sent()
        if oldest and now - oldest >= opt.ack_timeout_s:
            return Verdict.ACK_TIMEOUT
        if now - self._last_sent >= opt.keep_alive_s:
            msg = {"type": "session.keep_alive", "event_id": self._new_id()}
            self._push_back(Message("keep_alive", json.dumps(msg)))
            self._last_sent = now  # once per quiet period, even before it is sent
        return None

    def next_deadline(self) -> float:
        """When :meth:`poll` has something to do, unless an input comes first."""
        opt = self._opt
        if not self._connected:
            return self._connect_t0 + opt.ws_connect_gate_timeout_s
        deadline = self._last_sent + opt.keep_alive_s
        oldest = self._oldest_sent()
        if oldest:
            deadline = min(deadline, oldest + opt.ack_timeout_s)
        return deadline

    def _oldest_sent(self) -> float:
        return min(
            (m.t_sent for q in self._unacked.values() for m in q if m.t_sent > 0), default=0.0
        )


__all__ = ["ACKED_KINDS", "BYTES_PER_MS", "Message", "UplinkCore", "Verdict"]
