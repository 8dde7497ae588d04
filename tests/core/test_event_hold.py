"""The client's events held during an avatar switch, without sockets: order kept, bounded."""

from __future__ import annotations

from bridge.session import EventHold


def test_events_pass_through_when_not_holding() -> None:
    hold = EventHold(4)
    assert hold.offer("mark", {"name": "a"}) == [("mark", {"name": "a"})]
    assert hold.release() == []


def test_held_events_come_out_in_order_at_release() -> None:
    hold = EventHold(4)
    hold.start()
    assert hold.offer("speak_started", {}) == []
    assert hold.offer("mark", {"name": "a"}) == []
    assert hold.release() == [("speak_started", {}), ("mark", {"name": "a"})]
    assert not hold.holding
    assert hold.offer("mark", {"name": "b"}) == [("mark", {"name": "b"})]


def test_past_its_capacity_the_hold_lets_everything_out_in_order() -> None:
    hold = EventHold(3)
    hold.start()
    names = [f"m{i}" for i in range(5)]
    out = [hold.offer("mark", {"name": n}) for n in names]
    assert out[:3] == [[], [], []]
    assert [f["name"] for _, f in out[3]] == names[:4]  # the fourth releases all four
    assert not hold.holding
    assert out[4] == [("mark", {"name": "m4"})]
    assert hold.release() == []  # the switch's end finds nothing left


def test_fields_are_copied_when_held() -> None:
    hold = EventHold(2)
    hold.start()
    fields = {"name": "a"}
    hold.offer("mark", fields)
    fields["name"] = "changed"
    assert hold.release() == [("mark", {"name": "a"})]
