"""The relay's video hold by the forwarded frames' cadence (bridge/cadence.py), without
sockets: frame durations in, the hold out."""

from __future__ import annotations

import random

import pytest

from bridge.cadence import FRAMES, STEADY_BELOW_S, UNSTEADY_ABOVE_S, CadenceHold

HOLD_MS, ALLOWANCE_MS = 18.0, 8.0


def test_a_steady_30_fps_stream_is_held_less_once() -> None:
    c = CadenceHold(HOLD_MS, ALLOWANCE_MS)
    durations: list[float] = []
    changes = []
    for _ in range(3 * FRAMES):
        durations.append(1 / 30)
        changes.append(c.update(durations))
    # Not before FRAMES durations, then once, to the hold less the allowance.
    assert changes[: FRAMES - 1] == [None] * (FRAMES - 1)
    assert changes[FRAMES - 1] == pytest.approx(HOLD_MS - ALLOWANCE_MS)
    assert changes[FRAMES:] == [None] * (2 * FRAMES)
    assert c.steady and c.hold_ms == pytest.approx(10.0)
    assert c.deviation_ms == pytest.approx(0.0, abs=1e-6)


def test_libwebrtc_20_fps_from_a_30_fps_camera_keeps_the_full_hold() -> None:
    """LiveKit's h360 preset drops every third frame of a 30 fps source: durations alternate
    33 and 67 ms (deviation 16.7 ms), which Chromium renders without a cadence."""
    c = CadenceHold(HOLD_MS, ALLOWANCE_MS)
    durations = [(1 if i % 2 else 2) / 30 for i in range(4 * FRAMES)]
    assert all(c.update(durations[: i + 1]) is None for i in range(len(durations)))
    assert not c.steady and c.hold_ms == HOLD_MS
    assert c.deviation_ms == pytest.approx(1000 / 60, abs=0.1)


def test_seeded_jitter_within_chromiums_bound_is_still_steady() -> None:
    rng = random.Random(3030)
    c = CadenceHold(HOLD_MS, ALLOWANCE_MS)
    durations: list[float] = []
    seen = []
    for _ in range(5 * FRAMES):
        durations.append(1 / 30 + rng.gauss(0, 0.002))  # 2 ms of jitter in the timestamps
        seen.append(c.update(durations))
    assert [h for h in seen if h is not None] == [pytest.approx(HOLD_MS - ALLOWANCE_MS)]
    assert c.deviation_ms is not None and c.deviation_ms < 1000 * STEADY_BELOW_S


def test_hysteresis_between_chromiums_two_thresholds() -> None:
    """Steady below 0.45 of a 60 Hz vsync, unsteady above 0.55; between them the verdict
    stands either way (as Chromium's own cadence estimator does)."""

    def alternating(deviation_s: float) -> list[float]:
        return [1 / 30 + (deviation_s if i % 2 else -deviation_s) for i in range(FRAMES + 1)]

    between = (STEADY_BELOW_S + UNSTEADY_ABOVE_S) / 2
    c = CadenceHold(HOLD_MS, ALLOWANCE_MS)
    assert c.update(alternating(between)) is None and not c.steady  # unsteady stays so
    assert c.update(alternating(0.0)) == pytest.approx(10.0) and c.steady
    assert c.update(alternating(between)) is None and c.steady  # steady stays so
    assert c.update(alternating(UNSTEADY_ABOVE_S * 1.05)) == pytest.approx(HOLD_MS)
    assert not c.steady


def test_no_allowance_keeps_one_hold() -> None:
    c = CadenceHold(HOLD_MS, 0.0)
    assert c.update([1 / 30] * FRAMES) is None and c.hold_ms == HOLD_MS
    # And the allowance never takes the hold below zero.
    assert CadenceHold(5.0, 8.0).allowance_ms == 5.0
