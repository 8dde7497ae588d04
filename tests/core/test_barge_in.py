"""The barge-in gate (bridge/barge_in.py), without sockets: fed times, asserts verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.barge_in import SpeechGate, opus_silence_like


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


def _decode(payload: bytes) -> tuple[int, float]:
    """Samples per channel at 48 kHz and the peak magnitude, by a real Opus decoder."""
    import av
    from av.packet import Packet

    codec: Any = av.CodecContext.create("opus", "r")
    codec.sample_rate = 48_000
    codec.layout = "stereo"
    frames = codec.decode(Packet(payload))
    return sum(f.samples for f in frames), max(float(abs(f.to_ndarray()).max()) for f in frames)


def _speech_packet(ms: int, channels: int) -> bytes:
    """A real Opus packet of ``ms`` of a loud tone."""
    import av
    import numpy as np

    codec: Any = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48_000
    codec.layout = "stereo" if channels == 2 else "mono"
    codec.format = "s16"
    codec.options = {"frame_duration": str(ms)}
    codec.open()
    n = 48 * ms
    t = np.arange(n) / 48_000
    pcm = (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2")
    frame = av.AudioFrame.from_ndarray(
        np.repeat(pcm, channels).reshape(1, -1), format="s16", layout=codec.layout.name
    )
    frame.sample_rate = 48_000
    packets = codec.encode(frame) + codec.encode(None)
    return bytes(packets[0])


@pytest.mark.parametrize("ms", [10, 20, 40, 60])
@pytest.mark.parametrize("channels", [1, 2])
def test_the_relays_silence_lasts_as_long_as_the_packet_it_replaces(ms: int, channels: int) -> None:
    speech = _speech_packet(ms, channels)
    samples, _ = _decode(speech)
    silence = opus_silence_like(speech)
    assert silence is not None
    assert silence[0] & 0x04 == speech[0] & 0x04  # same channel count
    assert _decode(silence) == (samples, 0.0)


def test_not_opus_is_no_silence() -> None:
    assert opus_silence_like(b"") is None
    assert opus_silence_like(bytes((0xFB,))) is None  # code 3 without its frame count
    assert opus_silence_like(bytes((0xFB, 0x00))) is None  # zero frames
