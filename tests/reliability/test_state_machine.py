"""A stateful property test of the session state machine: the real SessionManager and Session
with the dry-run uplink, driven by hypothesis through any order of client frames.

Invariants checked after every step, per client link:
- ``state`` events follow the graph starting -> ready <-> speaking -> closed | failed;
- ``speak_started`` and ``speak_ended`` alternate, starting with ``speak_started``;
- every MARK is answered (reached or cleared) at most once, and only MARKs that were sent;
- reached MARKs come back in the order they were sent.
At teardown: after a final END_TURN and playback, every MARK of a turn that had audio, or that an
INTERRUPT ended, has been answered exactly once; after CLOSE, no session and no task is left.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Mapping
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from bridge.dryrun import DryRunUplink
from bridge.errors import BridgeError
from bridge.media import AudioFormat, MediaClock
from bridge.protocol import CallRef, Hello
from bridge.session import Stages
from bridge.sessions import SessionManager
from bridge.stages import EventSink, FailureCallback

FMT = AudioFormat(16000, 1)
LEGAL = {
    "starting": {"ready", "closed", "failed"},
    "ready": {"speaking", "closed", "failed"},
    "speaking": {"ready", "closed", "failed"},
    "closed": set(),
    "failed": set(),
}


def factory(
    hello: Hello, clock: MediaClock, events: EventSink, on_failure: FailureCallback
) -> Stages:
    return Stages(uplink=DryRunUplink(events, queue_ms=200))


class Link:
    """The client's side as the session sees it (a ClientLink), recording everything."""

    def __init__(self, name: str) -> None:
        self.peer = name
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[BridgeError] = []
        self.closed = False
        self.marks_sent: list[str] = []
        self.marks_owed: set[str] = set()  # marks that must be answered by teardown
        self.marks_in_open_turn: list[str] = []
        self.turn_has_audio = False

    def turn_over(self, *, interrupted: bool) -> None:
        """END_TURN ends a turn that has audio (an empty one carries on); INTERRUPT any turn.
        Either way the turn's marks are owed: reached, or cleared by the interrupt."""
        if self.turn_has_audio or interrupted:
            self.marks_owed.update(self.marks_in_open_turn)
            self.marks_in_open_turn.clear()
            self.turn_has_audio = False

    def send_event(self, event: str, fields: Mapping[str, Any]) -> None:
        assert not self.closed, f"event {event} after the link was closed"
        self.events.append((event, dict(fields)))

    def send_error(self, err: BridgeError) -> None:
        self.errors.append(err)

    async def aclose(self) -> None:
        self.closed = True

    def answered(self) -> list[tuple[str, bool]]:
        return [(f["name"], bool(f.get("cleared"))) for e, f in self.events if e == "mark"]


class SessionMachine(RuleBasedStateMachine):
    clients = Bundle("clients")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.manager = SessionManager(factory, max_sessions=3, linger_s=0.2)
        self.handles: dict[str, Any] = {}
        self.links: dict[str, Link] = {}
        self.names = itertools.count()

    def run(self, coro: Coroutine[Any, Any, Any], settle_s: float = 0.005) -> Any:
        async def go() -> Any:
            result = await asyncio.wait_for(coro, 5)
            await asyncio.sleep(settle_s)
            return result

        return self.loop.run_until_complete(go())

    @precondition(lambda self: len(self.handles) < 3)
    @rule(target=clients)
    def connect(self) -> str:
        name = f"c{next(self.names)}"
        link = Link(name)
        hello = Hello(CallRef("default", name), FMT)
        self.handles[name] = self.run(self.manager.open(hello, link))
        self.links[name] = link
        return name

    @rule(name=clients, ms=st.sampled_from([10, 20, 40]))
    def audio(self, name: str, ms: int) -> None:
        if name not in self.handles:
            return
        link = self.links[name]
        self.run(self.handles[name].on_audio(np.zeros(FMT.sample_rate * ms // 1000, np.int16)))
        link.turn_has_audio = True

    @rule(name=clients)
    def mark(self, name: str) -> None:
        if name not in self.handles:
            return
        label = f"{name}-m{next(self.names)}"
        self.links[name].marks_sent.append(label)
        self.links[name].marks_in_open_turn.append(label)
        self.run(self.handles[name].on_mark(label))

    @rule(name=clients)
    def end_turn(self, name: str) -> None:
        if name in self.handles:
            self.run(self.handles[name].on_end_turn())
            self.links[name].turn_over(interrupted=False)

    @rule(name=clients)
    def interrupt(self, name: str) -> None:
        if name in self.handles:
            self.run(self.handles[name].on_interrupt())
            self.links[name].turn_over(interrupted=True)

    @rule(ms=st.sampled_from([10, 50, 150]))
    def wait(self, ms: int) -> None:
        self.run(asyncio.sleep(ms / 1000))

    @rule(name=consumes(clients))
    def close(self, name: str) -> None:
        if name not in self.handles:
            return
        self.finish(name)

    def finish(self, name: str) -> None:
        """END_TURN, let playback finish, check the marks, then CLOSE."""
        handle, link = self.handles.pop(name), self.links[name]
        self.run(handle.on_end_turn())
        link.turn_over(interrupted=False)

        async def played() -> None:
            # (buffered_ms is a float sum: a residue under a millisecond is empty)
            uplink = handle.session.stages.uplink
            while uplink.buffered_ms() >= 0.5 or handle.session.state == "speaking":  # noqa: ASYNC110 - polling the session's state
                await asyncio.sleep(0.01)

        self.run(played(), settle_s=0.05)
        answered = [n for n, _ in link.answered()]
        missing = link.marks_owed - set(answered)
        assert not missing, f"marks never answered: {sorted(missing)}; events {link.events}"
        self.run(handle.on_close())
        self.run(self.manager.stop(handle.session.id), settle_s=0.01)
        assert link.closed
        assert self.manager.get(handle.session.id) is None

    @invariant()
    def events_are_legal(self) -> None:
        for link in self.links.values():
            state = "starting"
            speaking = False
            for event, fields in link.events:
                if event == "state":
                    new = fields["state"]
                    assert new in LEGAL[state], f"{state} -> {new}: {link.events}"
                    state = new
                elif event == "speak_started":
                    assert not speaking, link.events
                    speaking = True
                elif event == "speak_ended":
                    assert speaking, link.events
                    speaking = False
            answered = link.answered()
            names = [n for n, _ in answered]
            assert len(names) == len(set(names)), f"a mark answered twice: {answered}"
            assert set(names) <= set(link.marks_sent)
            reached = [n for n, cleared in answered if not cleared]
            order = {n: i for i, n in enumerate(link.marks_sent)}
            assert reached == sorted(reached, key=order.__getitem__), answered
            assert link.errors == []

    def teardown(self) -> None:
        try:
            for name in list(self.handles):
                self.finish(name)
            assert len(self.manager) == 0
            self.run(self.manager.aclose())
            leftover = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            assert leftover == [], leftover
        finally:
            self.loop.close()


# derandomize: the same 20 programs every run (seeded from the test), so a run is reproducible
# and CI never meets a new program by chance. Random exploration (300 examples a run) once found
# marks reached out of order (mark, end_turn, 10 ms and 20 ms of audio, mark, mark: one timer per
# mark, two deadlines a few microseconds apart); bridge/mark_queue.py now gates every mark behind
# the one before it, tested deterministically in tests/core/test_mark_queue.py.
SessionMachine.TestCase.settings = settings(
    derandomize=True,
    max_examples=20,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_session_state_machine = SessionMachine.TestCase
