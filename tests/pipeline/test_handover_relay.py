"""Avatar handover on the relay path, measured on the wire at the Stream stand-in: the call keeps
one participant with one audio and one video track, and each track one continuous RTP stream
across the switch (one SSRC, sequence numbers on without a jump, timestamps moving forward,
sender reports consistent with the packets); speech after the switch reaches the call."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.client import BridgeClient, stream_pcm_realtime
from bridge.sim.marks import beep_train, coded_beeps, tone_id
from bridge.sim.stack import StandIns
from tests.pipeline.conftest import handover_daemon
from tests.pipeline.test_end_to_end import FMT, open_session, until_event

pytestmark = pytest.mark.netns

MARGIN_S = 4  # so the switch is due 4 s after the session started
BEEPS = 6


async def _speak_and_measure(sim: StandIns, client: BridgeClient, call_id: str) -> dict[str, Any]:
    sim.stream.reset_measure("default", call_id)
    await stream_pcm_realtime(client, beep_train(FMT.sample_rate, BEEPS, 500, 100).tobytes(), FMT)
    await client.end_turn()
    await until_event(client, "speak_ended")  # raises on any fatal error
    await asyncio.sleep(0.5)
    return sim.stream.stats("default", call_id)


def _assert_one_continuous_participant(stats: dict[str, Any], *, sr: bool = True) -> None:
    assert stats["joins"] == 1  # never rejoined
    parts = stats["participants"]
    assert len(parts) == 1, (stats["sfu_connects"], stats["leaves"], parts)
    (part,) = parts
    assert sorted(part["tracks"]) == ["TRACK_TYPE_AUDIO", "TRACK_TYPE_VIDEO"]
    for kind in ("audio", "video"):
        cont = part["continuity"][kind]
        assert len(cont["ssrcs"]) == 1, (kind, cont)  # the same sender SSRC throughout
        # No jump in the sequence space (an un-rebased switch jumps by a random offset), and
        # timestamps only move forward, by about the time that passed (the video pauses for the
        # new avatar's keyframe; generous bound for a loaded machine, a random offset is hours).
        assert 0 < cont["max_seq_step"] < 64, (kind, cont)
        assert cont["min_ts_step_s"] >= 0, (kind, cont)
        assert cont["max_ts_step_s"] < 5, (kind, cont)
        # Sender reports consistent with the packets: the NTP<->RTP mapping stays put.
        assert cont["srs"] >= 2, (kind, cont)
        if sr:
            assert cont["max_sr_jump_s"] < 1.0, (kind, cont)


def _assert_speech_heard(stats: dict[str, Any]) -> None:
    (part,) = stats["participants"]
    # Not one audio packet missing from the relay's sequence space, the switch included.
    assert part["continuity"]["audio"]["max_seq_step"] == 1, part["continuity"]["audio"]
    # The beeps sent after the switch reach the call. The stand-in's onset detector has missed
    # one of six under load (5 of 6 seen once in ~6 runs, on a contiguous packet sequence):
    # one short is allowed here; the count at the viewer is the bench's figure.
    assert stats["audio"]["onsets"] >= BEEPS - 1, stats["audio"]


async def test_planned_relay_handover_keeps_one_continuous_stream(
    capped: StandIns, tmp_path: Path
) -> None:
    sim = capped
    daemon = handover_daemon(tmp_path, sim, "relay", MARGIN_S)
    await daemon.start()
    try:
        async with await BridgeClient.connect(daemon.socket) as client:
            events = await open_session(client, "relay-handover")
            paths = [e.fields["path"] for e in events if e.event == "media_path"]
            assert paths == ["relay"]
            (first,) = [e.fields["session_id"] for e in events if e.event == "liveavatar_session"]
            sim.liveavatar.options.sandbox_max_duration_s = 3600  # the next session: no cap
            seen = await until_event(client, "avatar_handover", limit_s=30)
            (handover,) = [e.fields for e in seen if e.event == "avatar_handover"]
            assert handover["reason"] == "cap"
            assert handover["gap_ms"] is not None and handover["gap_ms"] >= 0
            second = handover["liveavatar_session"]
            assert second != first
            assert sim.liveavatar.sessions[first].end_reason == "USER_CLOSED"
            assert sim.liveavatar.live_sessions == [second]
            stats = await _speak_and_measure(sim, client, "relay-handover")
            renderer = sim.liveavatar.sessions[second].renderer
            assert renderer is not None and sum(renderer.received_bytes.values()) > 0
        _assert_one_continuous_participant(stats)
        _assert_speech_heard(stats)
        assert stats["video"]["frames"] > 30
        assert daemon.metric_sum("bridge_avatar_handovers_total", 'outcome="switched"') == 1
        assert await daemon.stop() == 0
        assert sim.liveavatar.live_sessions == []
    finally:
        await daemon.stop()


async def test_unplanned_relay_handover_after_a_drop(capped: StandIns, tmp_path: Path) -> None:
    sim = capped
    sim.liveavatar.options.sandbox_max_duration_s = 3600  # no planned switch in this test
    daemon = handover_daemon(tmp_path, sim, "relay", 1)
    await daemon.start()
    try:
        async with await BridgeClient.connect(daemon.socket) as client:
            events = await open_session(client, "relay-lost")
            (first,) = [e.fields["session_id"] for e in events if e.event == "liveavatar_session"]
            await sim.liveavatar.drop(first)  # the provider ends it mid-call
            seen = await until_event(client, "avatar_handover", limit_s=30)
            (handover,) = [e.fields for e in seen if e.event == "avatar_handover"]
            assert handover["reason"] == "lost"
            second = handover["liveavatar_session"]
            assert sim.liveavatar.live_sessions == [second]
            stats = await _speak_and_measure(sim, client, "relay-lost")
        _assert_one_continuous_participant(stats)
        _assert_speech_heard(stats)
        assert daemon.metric_sum("bridge_avatar_handovers_total", 'outcome="switched"') == 1
    finally:
        await daemon.stop()
    assert sim.liveavatar.live_sessions == []


async def test_a_planned_switch_after_a_recovered_drop_waits_for_the_turn_to_end(
    capped: StandIns, tmp_path: Path
) -> None:
    """A drop replaced by a warm avatar: the lost avatar's receivers report the loss again after
    the switch committed (their connection closes ~30 ms after the room). That late report must
    not count as a new loss: the next planned switch, due while the client speaks a turn, waits
    for the turn to end and re-speaks nothing. Each coded beep is played once by the avatars and
    never heard twice in the call (it was: the planned switch cut the turn and re-spoke 690 ms
    of it in the continuity bench)."""
    sim = capped
    cap_s, margin_s, turn_beeps = 24, 8, 14
    sim.liveavatar.options.sandbox_max_duration_s = cap_s
    daemon = handover_daemon(
        tmp_path, sim, "relay", margin_s, "--set", "pool.size=1", "--set", "pool.min_remaining_s=5"
    )
    await daemon.start()
    try:
        async with await BridgeClient.connect(daemon.socket) as client:
            events = await open_session(client, "relay-drop-then-cap")
            (first,) = [e.fields["session_id"] for e in events if e.event == "liveavatar_session"]
            async with asyncio.timeout(30):
                # a warm one to replace it (a metric: no event to wait on)
                while daemon.metric_sum("bridge_pool_size") < 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await sim.liveavatar.drop(first)
            seen = await until_event(client, "avatar_handover", limit_s=30)
            (lost,) = [e.fields for e in seen if e.event == "avatar_handover"]
            assert lost["reason"] == "lost" and lost["warm"], lost
            second = sim.liveavatar.sessions[lost["liveavatar_session"]]
            # The turn starts 4 s before the planned switch is due (cap - margin) and ends 3 s
            # after; the switch then has 4 s of silence before its deadline (1 s before the cap).
            due = second.started_at + cap_s - margin_s
            await asyncio.sleep(max(0.0, due - 4.0 - time.monotonic()))
            sim.stream.reset_measure("default", "relay-drop-then-cap")
            pcm = coded_beeps(FMT.sample_rate, 0, turn_beeps, 500, 100)
            await stream_pcm_realtime(client, pcm.tobytes(), FMT)
            await client.end_turn()
            seen = await until_event(client, "avatar_handover", limit_s=30)
            (planned,) = [e.fields for e in seen if e.event == "avatar_handover"]
            names = [e.event for e in seen]
            await asyncio.sleep(1.0)
            measure = sim.stream.measure("default", "relay-drop-then-cap")
            heard = [tone_id(hz) for _, hz in measure.onset_tones]
        assert planned["reason"] == "cap" and planned["respoken_ms"] == 0, planned
        # At the turn boundary: the turn's speak_ended came before the switch.
        assert "speak_ended" in names[: names.index("avatar_handover")], names
        played: dict[int | None, int] = {}
        for s in sim.liveavatar.sessions.values():
            for _, hz in s.renderer.onset_tones if s.renderer is not None else []:
                played[tone_id(hz)] = played.get(tone_id(hz), 0) + 1
        assert played == dict.fromkeys(range(turn_beeps), 1), played
        # The receiver's onset detector may miss one under load (see _assert_speech_heard); it
        # never hears one twice.
        assert len(heard) == len(set(heard)) >= turn_beeps - 1, heard
    finally:
        await daemon.stop()
    assert sim.liveavatar.live_sessions == []
