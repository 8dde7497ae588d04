"""The barge-in gate (bridge/barge_in.py), without sockets: fed times, asserts verdicts."""

from __future__ import annotations

import pytest

from bridge.barge_in import SpeechGate


def test_open_until_an_interrupt_then_drops_the_old_speech() -> None:
    gate = SpeechGate(max_mute_s=5.0)
    assert gate.admit(0.0, 0.02)
    gate.interrupt(1.0)
    assert gate.muted
    assert [gate.admit(1.0 + 0.02 * i, 0.02) for i in range(10)] == [False] * 10
    assert gate.dropped == 10
    assert gate.dropped_s == pytest.approx(0.2)


def test_the_next_turn_opens_the_gate_once() -> None:
    gate = SpeechGate()
    gate.interrupt(1.0)
    assert not gate.admit(1.1)
    assert gate.speak_started(1.3) is True
    assert gate.admit(1.31)
    assert gate.speak_started(2.0) is False  # already open: nothing to resume
    assert gate.reopened == {"speak_started": 1, "timeout": 0}


def test_a_turn_started_without_an_interrupt_changes_nothing() -> None:
    gate = SpeechGate()
    assert gate.speak_started(0.5) is False
    assert gate.admit(0.6)
    assert gate.dropped == 0


def test_a_lost_speak_started_cannot_mute_the_avatar_for_good() -> None:
    gate = SpeechGate(max_mute_s=2.0)
    gate.interrupt(10.0)
    assert not gate.admit(11.99)
    assert gate.admit(12.0)  # the bound: opened by the timeout, counted as such
    assert not gate.muted
    assert gate.reopened == {"speak_started": 0, "timeout": 1}


def test_a_second_interrupt_restarts_the_mute() -> None:
    gate = SpeechGate(max_mute_s=2.0)
    gate.interrupt(0.0)
    gate.interrupt(1.5)
    assert not gate.admit(3.0)  # 1.5 s after the latest interrupt
    assert gate.admit(3.5)
    assert gate.interrupts == 2


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SpeechGate(max_mute_s=0)
