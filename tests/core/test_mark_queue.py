"""The MARK queue without sockets or a loop: pure functions of events and time."""

from __future__ import annotations

import random

from bridge.mark_queue import MarkQueue


def test_a_mark_falls_due_after_the_audio_before_it_once_its_turn_plays() -> None:
    q = MarkQueue()
    q.add("a", turn=0, offset_s=0.5)
    assert q.next_due() is None  # its turn has not started to play
    assert q.reached(100.0) == []
    q.play(0, start=10.0)
    assert q.next_due() == 10.5
    assert q.reached(10.49) == []
    assert q.reached(10.5) == ["a"]
    assert len(q) == 0


def test_marks_of_one_instant_come_back_in_sending_order() -> None:
    # The regression: two marks after the same audio, each once on its own timer, could fire in
    # either order. Here the head gates the rest, whatever the times.
    q = MarkQueue()
    for name in ("m1", "m2", "m3"):
        q.add(name, turn=0, offset_s=0.03)
    q.play(0, start=1.0)
    assert q.reached(1.03) == ["m1", "m2", "m3"]


def test_a_later_turn_waits_for_the_marks_left_of_an_earlier_one() -> None:
    q = MarkQueue()
    q.add("t0", turn=0, offset_s=2.0)
    q.add("t1", turn=1, offset_s=0.0)
    q.play(0, start=0.0)
    q.play(1, start=0.5)  # the next turn timed before the first one's mark is due
    assert q.reached(1.0) == []  # t1's time has come, but t0 is ahead of it
    assert q.next_due() == 2.0
    assert q.reached(2.0) == ["t0", "t1"]


def test_finishing_a_turn_reaches_its_marks_and_earlier_ones_only() -> None:
    q = MarkQueue()
    q.add("a", 0, 1.0)
    q.add("b", 0, 9.0)
    q.add("c", 1, 0.0)
    q.play(0, start=0.0)
    assert q.finish(0) == ["a", "b"]
    assert q.next_due() is None  # "c" waits for its turn to play
    q.play(1, start=5.0)
    assert q.reached(5.0) == ["c"]


def test_a_mark_sent_while_its_turn_plays_is_timed_from_that_playback() -> None:
    q = MarkQueue()
    q.play(0, start=3.0)  # nothing queued yet: a no-op
    q.add("late", 0, 0.2)
    q.play(0, start=3.0)
    assert q.next_due() == 3.2


def test_hold_untimes_every_mark_until_the_next_avatar_plays() -> None:
    q = MarkQueue()
    q.add("a", 0, 0.1)
    q.add("b", 0, 0.3)
    q.play(0, start=0.0)
    assert q.reached(0.1) == ["a"]
    q.hold()  # the avatar was lost at 0.2
    assert q.next_due() is None and q.reached(50.0) == []
    q.play(0, start=10.0)  # the next avatar resumes the turn
    assert q.reached(10.3) == ["b"]


def test_clear_returns_every_waiting_mark_in_order() -> None:
    q = MarkQueue()
    q.add("a", 0, 0.1)
    q.add("b", 1, 0.0)
    q.play(0, start=0.0)
    assert q.clear() == ["a", "b"]
    assert len(q) == 0 and q.next_due() is None


def test_any_program_reaches_marks_in_sending_order_exactly_once() -> None:
    # Seeded random programs of adds, plays, finishes, holds and clock steps: whatever comes
    # back (reached or cleared) is a prefix-ordered split of what was sent, with nothing twice.
    for seed in range(200):
        rng = random.Random(seed)
        q = MarkQueue()
        sent: list[str] = []
        out: list[str] = []
        turn, offset, now, played = 0, 0.0, 0.0, -1
        for step in range(60):
            op = rng.randrange(6)
            if op == 0:
                name = f"m{step}"
                sent.append(name)
                q.add(name, turn, offset)
            elif op == 1:
                offset += rng.choice((0.0, 0.01, 0.02))
            elif op == 2:
                turn, offset = turn + 1, 0.0
            elif op == 3 and played < turn:
                played += 1
                q.play(played, start=now)
            elif op == 4:
                out += q.finish(played) if rng.random() < 0.5 else q.clear()
            else:
                now += rng.choice((0.0, 0.005, 0.05))
                out += q.reached(now)
                if rng.random() < 0.1:
                    q.hold()
        out += q.clear()
        assert out == sent, seed
