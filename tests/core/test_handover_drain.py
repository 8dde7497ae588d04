"""The planned switch's drain on the transcode path (sans-I/O): the old avatar's last words in
flight pass until it has been quiet, bounded; the new avatar's speech ends it at once."""

from __future__ import annotations

from bridge.handover_drain import SwitchDrain


def test_the_old_avatars_tail_passes_until_it_has_been_quiet() -> None:
    d = SwitchDrain(now=0.0, quiet_s=0.5, max_s=1.5)
    t = 0.0
    # The turn's last beeps arrive after the commit (the link's latency), between pauses
    # shorter than the quiet: all of it passes, the new avatar's silence is held back.
    for loud_until in (0.1, 0.6):
        while t < loud_until:
            assert d.old_audio(True, 0.01, t)
            assert not d.new_audio(False, t)
            t += 0.01
        while t < loud_until + 0.4:
            assert d.old_audio(False, 0.01, t)
            t += 0.01
    assert d.ended is None
    assert abs(d.old_loud_s - 0.2) < 0.02
    # Quiet for 0.5 s after the last sound: over; the old avatar is cut, the new one passes.
    assert not d.old_audio(False, 0.01, 0.6 + 0.5)
    assert d.new_audio(False, 1.2)
    assert d.ended == "quiet"


def test_a_drain_never_outlasts_its_bound() -> None:
    d = SwitchDrain(now=10.0, quiet_s=0.5, max_s=1.5)
    t = 10.0
    while t < 11.49:
        assert d.old_audio(True, 0.01, t)  # a noisy old downlink
        t += 0.01
    assert not d.old_audio(True, 0.01, 11.5)
    assert d.ended == "max"


def test_the_new_avatars_speech_ends_the_drain_at_once() -> None:
    d = SwitchDrain(now=0.0)
    assert d.old_audio(True, 0.01, 0.1)
    assert d.new_audio(True, 0.2)  # passes: the next turn is not delayed for the old tail
    assert d.ended == "new_speech"
    assert not d.old_audio(True, 0.01, 0.21)
