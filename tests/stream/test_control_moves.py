"""The negative control's arithmetic (bridge.sim.browser_viewer.control_moves), no browser."""

from __future__ import annotations

from typing import Any

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
