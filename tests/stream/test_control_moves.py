"""The negative control's arithmetic (bridge.sim.browser_viewer.control_moves), no browser."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.sim.browser_viewer import control_moves


def marks(skews: list[float], offset: float) -> list[dict[str, Any]]:
    """One mark per second; every second one a control moved by ``offset``."""
    out = []
    for i, s in enumerate(skews):
        control = i % 2 == 1
        skew = s + (offset if control else 0.0)
        out.append({"at": 1000.0 * i, "skewMs": skew, "control": control})
    return out


def test_a_steady_receiver_gives_the_offset_back() -> None:
    pairs = marks([10.0, 12.0, 14.0, 16.0, 18.0], 80.0)
    assert control_moves(pairs, within_ms=1100) == [80.0, 80.0]
    assert control_moves(pairs, within_ms=1100, steady_ms=20.0) == [80.0, 80.0]


def test_controls_between_drifting_neighbours_are_left_out() -> None:
    # The receivers' delay jumps by 150 ms between marks 2 and 4: the control in between would
    # read the jump, not the offset.
    pairs = marks([10.0, 12.0, 14.0, 90.0, 164.0, 165.0, 166.0], -80.0)
    assert len(control_moves(pairs, within_ms=1100)) == 3
    assert control_moves(pairs, within_ms=1100, steady_ms=20.0) == [-80.0, -80.0]


def test_display_lateness_is_taken_out_when_asked() -> None:
    # Every control mark's frame shown one 30 fps frame late (a steady pattern a loaded browser
    # can fall into): the figure as seen moves by 80 + 33.3, the method's move is 80.
    pairs = marks([10.0, 12.0, 14.0, 16.0, 18.0], 80.0)
    for i, p in enumerate(pairs):
        p["lateMs"] = 33.3 if i % 2 else 0.0
        p["skewMs"] += p["lateMs"]
    assert control_moves(pairs, within_ms=1100) == pytest.approx([113.3, 113.3])
    assert control_moves(pairs, within_ms=1100, without_display_late=True) == pytest.approx(
        [80.0, 80.0]
    )
    # A mark whose lateness the page could not tell is left out, not guessed.
    pairs[1]["lateMs"] = None
    assert control_moves(pairs, within_ms=1100, without_display_late=True) == pytest.approx([80.0])
