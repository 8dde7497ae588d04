"""Onsets of the avatar's speech at the bridge (bridge/first_sound.py), fed times, no sockets."""

from __future__ import annotations

from bridge.first_sound import OnsetClock


def test_an_onset_is_sound_after_enough_quiet() -> None:
    clock = OnsetClock(quiet_s=0.2)
    verdicts = [clock.feed(False, 0.02 * i) for i in range(15)]  # 300 ms of quiet
    assert not any(verdicts)
    assert clock.feed(True, 0.30) is True
    assert clock.last_onset == 0.30
    assert clock.feed(True, 0.32) is False  # speech goes on: no new onset


def test_a_short_pause_inside_speech_is_not_an_onset() -> None:
    clock = OnsetClock(quiet_s=0.2)
    clock.feed(False, 0.0)
    assert clock.feed(True, 0.5)
    clock.feed(False, 0.52)
    assert clock.feed(True, 0.62) is False  # 100 ms pause < quiet_s
    clock.feed(False, 0.64)
    assert clock.feed(True, 0.90) is True
    assert clock.last_onset == 0.90


def test_the_default_quiet_is_a_turns_start_not_a_pause() -> None:
    clock = OnsetClock()
    clock.feed(False, 0.0)
    assert clock.feed(True, 1.0)
    clock.feed(False, 1.1)
    assert clock.feed(True, 1.5) is False  # 400 ms between beeps of one turn
    clock.feed(False, 1.6)
    assert clock.feed(True, 2.6) is True  # a second of quiet: the next turn


def test_the_streams_first_sound_is_an_onset_however_short_the_quiet() -> None:
    """A session's first turn may follow its start closely: its first sound still counts."""
    clock = OnsetClock()
    clock.feed(False, 0.0)
    assert clock.feed(True, 0.1) is True
    assert clock.last_onset == 0.1
    clock.feed(False, 0.2)
    assert clock.feed(True, 0.4) is False  # afterwards the quiet must be long enough
