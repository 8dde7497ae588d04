"""The client's MARKs waiting for playback: a sans-I/O queue, a pure function of events and time.

A MARK is reached when the avatar's playback gets to the audio the client sent before it. Marks
come back in the order they were sent, always: the client pairs them with its own text. So the
marks are one queue in sending order (turns never go back, and a turn's offsets only grow), and
only a *prefix* of it is ever reached. One timer for the head is all the session needs, instead
of a timer per mark, whose deadlines computed a few microseconds apart could fire two marks of the
same instant in either order.

Times are the caller's monotonic seconds; nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True)
class _Mark:
    name: str
    turn: int
    offset_s: float  # audio of the turn before the mark, in seconds
    due: float | None = None  # when playback reaches it; None until its turn plays


class MarkQueue:
    """Marks in the order the client sent them, each timed once its turn starts to play."""

    def __init__(self) -> None:
        self._marks: deque[_Mark] = deque()

    def __len__(self) -> int:
        return len(self._marks)

    def add(self, name: str, turn: int, offset_s: float) -> None:
        """The client sent a MARK after ``offset_s`` seconds of audio in turn ``turn``."""
        self._marks.append(_Mark(name, turn, offset_s))

    def play(self, turn: int, start: float) -> None:
        """Playback of ``turn`` began at ``start``: its marks, and any left of earlier turns,
        fall due after the audio before them. Marks already timed keep their time.

        The avatar plays turns in the order they were sent, so the caller's n-th
        ``speak_started`` is turn n; an interrupt clears the queue and realigns the count."""
        for mark in self._marks:
            if mark.turn > turn:
                break
            if mark.due is None:
                mark.due = start + mark.offset_s

    def next_due(self) -> float | None:
        """When the head is reached; None while its turn is not playing. Only the head counts:
        every later mark waits for it."""
        return self._marks[0].due if self._marks else None

    def reached(self, now: float) -> list[str]:
        """Pop the marks whose time has come, in order, stopping at the first that has not."""
        out: list[str] = []
        while self._marks and (due := self._marks[0].due) is not None and due <= now:
            out.append(self._marks.popleft().name)
        return out

    def finish(self, turn: int) -> list[str]:
        """Turn ``turn`` finished playing: its marks and every earlier one are reached now,
        whatever their times said."""
        out: list[str] = []
        while self._marks and self._marks[0].turn <= turn:
            out.append(self._marks.popleft().name)
        return out

    def hold(self) -> None:
        """The avatar was lost: nothing plays until the next one, which times them afresh."""
        for mark in self._marks:
            mark.due = None

    def clear(self) -> list[str]:
        """An interrupt: every waiting mark will never play (the caller reports them cleared)."""
        out = [m.name for m in self._marks]
        self._marks.clear()
        return out
