"""WirePts: the video pts a call publisher stamps, held to the write's time (no network)."""

from __future__ import annotations

import itertools

import pytest

from bridge.media import WirePts


def test_wire_pts_keeps_the_frames_spacing_within_a_tolerance_of_the_writes() -> None:
    wp = WirePts(tolerance_s=0.015)
    # Writes a little late or early: the frames' own 33 ms spacing goes through.
    assert wp.stamp(5.0, 100.0) == 0.0
    assert wp.stamp(5.033, 100.040) == pytest.approx(0.033)
    assert wp.stamp(5.066, 100.060) == pytest.approx(0.066)
    # The frames' timeline runs 10 % fast: re-anchored to the write whenever 15 ms apart.
    stamps = [wp.stamp(5.1 + 0.0367 * k, 100.1 + 0.0333 * k) for k in range(60)]
    assert all(abs(s - (0.1 + 0.0333 * k)) <= 0.015 + 1e-9 for k, s in enumerate(stamps))
    assert wp.reanchors >= 5
    assert all(b > a for a, b in itertools.pairwise(stamps))  # never backwards
