"""The continuity scenario's accounting of coded beeps (pure: no media, no timing)."""

from __future__ import annotations

import random

from bench.continuity import (
    beep_accounting,
    freezes_near_switches,
    jitter_buffer_by_second,
    markdown_lines,
    number_beeps,
    skew_after_switches,
)
from bridge.sim import marks
from bridge.sim.browser_viewer import PageClock


def tones(numbers: list[int], t0: float = 0.0) -> list[tuple[float, float]]:
    return [(t0 + 0.5 * i, marks.tone_hz(k)) for i, k in enumerate(numbers)]


def test_beep_numbers_are_recovered_across_the_id_space() -> None:
    rng = random.Random(17)
    sent = list(range(3 * marks.TONE_IDS))
    heard = [k for k in sent if rng.random() > 0.1]  # some lost, never half the ids in a row
    heard[30:30] = heard[26:30]  # four heard again (a turn re-spoken)
    assert number_beeps([k % marks.TONE_IDS for k in heard]) == heard
    assert number_beeps([None, 1, 2]) == [None, 1, 2]
    assert number_beeps([0, None, 2, None, 5]) == [0, 1, 2, None, 5]  # one between: inferred


def test_lost_and_twice_heard_beeps_are_placed() -> None:
    per_turn, turns = 6, 8
    starts = [4.0 * i for i in range(turns)]
    sent = per_turn * turns
    heard = [k for k in range(sent) if k not in (1, 15, 47)]  # at the start, mid-call, the end
    heard[25:25] = [22, 23, 24]  # turn 3's rest spoken again after a drop
    # Avatar 0 plays up to beep 24, avatar 1 from 22 on: 22..24 played by both, beeps 1 and 15
    # played but not heard, 47 played by none.
    played = [(0.7 + 0.5 * k, marks.tone_hz(k), 0) for k in range(25)]
    played += [(14.0 + 0.5 * i, marks.tone_hz(k), 1) for i, k in enumerate(range(22, 47))]
    out = beep_accounting(
        sent, per_turn, starts, tones(heard), played, [(13.5, "lost"), (20.0, "cap")]
    )
    assert out["lost"] == 3 and out["heard_twice_or_more"] == 3
    assert out["played_twice_or_more"] == 3 and out["not_played"] == 1
    odd = {a["beep"]: a for a in out["anomalies"]}
    assert sorted(odd) == [1, 15, 22, 23, 24, 47]
    assert odd[1]["where"] == "call_start"
    assert odd[15] == {"beep": 15, "turn": 2, "heard": 0, "played": {0: 1}, "where": "mid_call"}
    assert odd[22]["heard"] == 2 and odd[22]["played"] == {0: 1, 1: 1}
    assert odd[22]["where"] == "switch:lost@13.5s"
    assert odd[47]["played"] == {} and odd[47]["where"] == "end_of_call"


def test_skew_is_reported_per_switch_until_the_next_one() -> None:
    timed = [(float(t), float(t % 7)) for t in range(40)]
    out = skew_after_switches(timed, [10.0, 15.0, 33.0])
    assert [s["samples"] for s in out["per_switch"]] == [5, 10, 7]
    assert out["all_after_switches"]["samples"] == 22
    assert out["before_first_switch"]["samples"] == 10


def test_the_viewers_freezes_are_put_down_to_the_switch_they_are_near() -> None:
    out = freezes_near_switches(
        [(3.0, 250.0), (19.5, 400.0), (20.4, 300.0), (40.0, 900.0)], [20.0, 41.5]
    )
    assert out["per_switch"] == [
        {"at_s": 20.0, "freezes": 2, "longest_ms": 400.0},
        {"at_s": 41.5, "freezes": 1, "longest_ms": 900.0},
    ]
    assert out["away_from_switches"] == 1
    assert [f["switch"] for f in out["all"]] == [None, 0, 0, 1]
    assert freezes_near_switches([], [5.0])["per_switch"] == [
        {"at_s": 5.0, "freezes": 0, "longest_ms": None}
    ]


def test_the_viewers_jitter_buffers_are_read_per_second_and_around_each_switch() -> None:
    def stats(audio_delay_s: float, emitted: int) -> dict[str, object]:
        # getStats counters are cumulative: a second's mean is their differences' ratio.
        return {
            "audio": {"jitterBufferDelay": audio_delay_s, "jitterBufferEmittedCount": emitted},
            "video": {},
        }

    # 100 audio frames a second, held 50 ms each until t=10, then 150 ms (NetEq raised it).
    samples, delay = [(0.0, stats(0.0, 0))], 0.0
    for t in range(1, 21):
        delay += 100 * (0.05 if t <= 10 else 0.15)
        samples.append((float(t), stats(delay, 100 * t)))
    out = jitter_buffer_by_second(samples, [10.0])
    assert [r["audio"] for r in out["by_second"]] == [50.0] * 10 + [150.0] * 10
    assert all(r["video"] is None for r in out["by_second"])
    (around,) = out["per_switch"]
    assert around["audio_before"] == 50.0 and around["audio_after"] == 150.0


def test_the_pages_clock_is_put_on_the_hosts() -> None:
    clock = PageClock(offset_s=1000.0, uncertainty_ms=0.5)
    assert clock.host_s(0.0) == 1000.0
    assert clock.host_s(2500.0) == 1002.5  # the page counts ms, the host seconds


def test_the_handover_section_renders_each_path_and_skips_a_missing_one() -> None:
    handover = {
        "handovers": 4,
        "call_s": 180.0,
        "cap_s": 60,
        "margin_s": 10,
        "switch_gap_ms": {"p50": 17.2, "max": 26.7},
        "recovery_s": 0.2134,
        "audio_lost_ms": 0,
        "participants_seen": 1,
        "beeps": {"sent": 276, "heard_once": 275, "lost": 1, "heard_twice_or_more": 0},
        "skew_after_switch_ms": {
            "all_after_switches": {"p95": 28.4, "p99": 29.9},
            "before_first_switch": {"p95": 32.8, "p99": 33.5},
        },
        "viewer": {
            "first_frame_s": 1.2,
            "skew_after_switch_ms": {
                "all_after_switches": {"p95": 13.1, "p99": 19.0},
                "before_first_switch": {"p95": 12.0, "p99": 14.5},
            },
            "freezes_near_switches": {
                "per_switch": [{"freezes": 1}, {"freezes": 0}],
                "away_from_switches": 2,
            },
        },
    }
    lines = markdown_lines({"handover_relay": handover, "handover_transcode": {"error": "x"}})
    table = [ln for ln in lines if ln.startswith("| ")]
    assert table[0] == "| measure | relay |"
    assert "| beeps heard once / sent | 275 / 276 |" in table
    assert "| drop -> recovered s (goal <= 2) | 0.213 |" in table
    assert (
        "| browser viewer: skew p95 / p99 ms, 10 s after switches (goal 20 / 40) | 13.1 / 19.0 |"
        in table
    )
    assert "| browser viewer: freezes near switches / elsewhere | 1 / 2 |" in table
    # Every row has the header's number of cells: no stray pipe in a title.
    assert {ln.count("|") for ln in table} == {3}
    assert markdown_lines({}) == []
