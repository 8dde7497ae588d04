"""Planned avatar handover on the transcode path: before the LiveAvatar session's cap the bridge
brings up the next session and switches at a turn boundary; the call keeps one participant and
its tracks, speech after the switch reaches it, the client hears ``avatar_handover``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.client import BridgeClient, stream_pcm_realtime
from bridge.sim.liveavatar import StartDelays
from bridge.sim.marks import beep_train, coded_beeps, tone_id
from bridge.sim.stack import SMALL, DaemonProcess, StandIns
from tests.pipeline.conftest import handover_daemon
from tests.pipeline.test_end_to_end import FMT, open_session, until_event
from tests.pipeline.test_handover_relay import _assert_one_continuous_participant

pytestmark = pytest.mark.netns

MARGIN_S = 4  # so the switch is due 4 s after the session started


async def test_planned_handover_keeps_the_call_and_its_participant(
    capped: StandIns, tmp_path: Path
) -> None:
    sim = capped
    daemon = handover_daemon(tmp_path, sim, "transcode", MARGIN_S)
    await daemon.start()
    try:
        async with await BridgeClient.connect(daemon.socket) as client:
            events = await open_session(client, "handover")
            (first,) = [e.fields["session_id"] for e in events if e.event == "liveavatar_session"]
            seen = await until_event(client, "avatar_handover", limit_s=30)
            (handover,) = [e.fields for e in seen if e.event == "avatar_handover"]
            assert handover["reason"] == "cap"
            assert handover["gap_ms"] is not None and handover["gap_ms"] >= 0
            second = handover["liveavatar_session"]
            assert second != first
            # The old session was stopped by us before its cap ended it; the new one is live.
            assert sim.liveavatar.sessions[first].end_reason == "USER_CLOSED"
            assert sim.liveavatar.live_sessions == [second]
            # Speech after the switch is rendered by the new avatar and reaches the same call.
            sim.stream.reset_measure("default", "handover")
            await stream_pcm_realtime(
                client, beep_train(FMT.sample_rate, 6, 500, 100).tobytes(), FMT
            )
            await client.end_turn()
            await until_event(client, "speak_ended")
            await asyncio.sleep(0.5)
            renderer = sim.liveavatar.sessions[second].renderer
            assert renderer is not None and sum(renderer.received_bytes.values()) > 0
            stats = sim.stream.stats("default", "handover")
        assert stats["joins"] == 1  # one participant, never rejoined
        # SRs not checked: the transcode publisher's own NTP<->RTP mapping moves by seconds over
        # a call (4.9 s measured on video in the bench), switch or not: a separate finding.
        _assert_one_continuous_participant(stats, sr=False)
        assert stats["audio"]["onsets"] >= 4
        assert stats["video"]["frames"] > 30
        assert await daemon.stop() == 0
        assert sim.liveavatar.live_sessions == []
    finally:
        await daemon.stop()


async def test_a_dropped_avatar_is_replaced_without_an_error(
    capped: StandIns, tmp_path: Path
) -> None:
    sim = capped
    sim.liveavatar.options.sandbox_max_duration_s = 3600  # no planned switch in this test
    daemon = handover_daemon(tmp_path, sim, "transcode", 1)
    await daemon.start()
    try:
        async with await BridgeClient.connect(daemon.socket) as client:
            events = await open_session(client, "lost")
            (first,) = [e.fields["session_id"] for e in events if e.event == "liveavatar_session"]
            await sim.liveavatar.drop(first)  # the provider ends it mid-call
            seen = await until_event(client, "avatar_handover", limit_s=30)
            (handover,) = [e.fields for e in seen if e.event == "avatar_handover"]
            assert handover["reason"] == "lost"
            second = handover["liveavatar_session"]
            assert sim.liveavatar.live_sessions == [second]
            sim.stream.reset_measure("default", "lost")
            beeps = beep_train(FMT.sample_rate, 6, 500, 100).tobytes()
            await stream_pcm_realtime(client, beeps, FMT)
            await client.end_turn()
            await until_event(client, "speak_ended")  # raises on any fatal error
            await asyncio.sleep(0.5)
            stats = sim.stream.stats("default", "lost")
        assert stats["joins"] == 1
        # SRs not checked: the transcode publisher's own NTP<->RTP mapping moves by seconds over
        # a call (4.9 s measured on video in the bench), switch or not: a separate finding.
        _assert_one_continuous_participant(stats, sr=False)
        assert stats["audio"]["onsets"] >= 4
        assert daemon.metric_sum("bridge_avatar_handovers_total", 'outcome="switched"') == 1
    finally:
        await daemon.stop()
    assert sim.liveavatar.live_sessions == []


BEEPS, PERIOD_MS, BEEP_MS = 12, 500, 100  # a 6 s turn: beep k starts at k * 500 ms
MARK_AT_MS = 2400  # a mark after this much of the turn's audio: played after the drop


async def _drop_in_silence(sim: StandIns, session_id: str, after_ms: float) -> float:
    """Drop the session once its avatar has played ``after_ms`` of the turn and is in the
    quiet between two beeps (measured by the stand-in's renderer); returns that position."""
    renderer = sim.liveavatar.sessions[session_id].renderer
    assert renderer is not None
    async with asyncio.timeout(20):
        while True:
            played = sum(renderer.played_samples.values()) / 48  # 48 kHz samples -> ms
            if played >= after_ms and 250 <= played % PERIOD_MS <= 350:
                await sim.liveavatar.drop(session_id)
                return played
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("media_path", ["transcode", "relay"])
async def test_a_turn_lost_mid_way_is_finished_by_the_next_avatar(
    capped: StandIns, tmp_path: Path, media_path: str
) -> None:
    """The avatar is dropped mid-turn while the client goes on streaming it: the next avatar
    speaks the unspoken rest and what the client sent meanwhile; every beep of the turn reaches
    the call exactly once (on either media path: re-speaking is the uplink's, the switch the
    path's)."""
    sim = capped
    sim.liveavatar.options.sandbox_max_duration_s = 3600  # no planned switch in this test
    daemon = DaemonProcess(
        tmp_path,
        sim.daemon_env(),
        *SMALL,
        "--set", f"output.media_path={media_path}",
        "--set", "liveavatar.handover_margin_s=1",
    )  # fmt: skip
    await daemon.start()
    try:
        async with await BridgeClient.connect(daemon.socket) as client:
            events = await open_session(client, "respeak")
            (first,) = [e.fields["session_id"] for e in events if e.event == "liveavatar_session"]
            sim.stream.reset_measure("default", "respeak")
            # The next session takes 1.5 s to start: audio keeps coming while it comes up.
            sim.liveavatar.options.delays = StartDelays(start_s=1.5)
            beeps = beep_train(FMT.sample_rate, BEEPS, PERIOD_MS, BEEP_MS).tobytes()
            split = MARK_AT_MS * FMT.sample_rate // 1000 * 2

            async def speak() -> None:
                await stream_pcm_realtime(client, beeps[:split], FMT)
                await client.mark("m")  # reached when the turn's audio before it has played
                await stream_pcm_realtime(client, beeps[split:], FMT)
                await client.end_turn()

            # Sent while the events are read, so that they are timed as they come.
            sender = asyncio.create_task(speak())
            await until_event(client, "speak_started")
            # Mid-turn, between beeps: beeps 0..k played by the first avatar, the rest not.
            played_ms = await _drop_in_silence(sim, first, after_ms=1700)
            seen = await until_event(client, "avatar_handover", limit_s=30)
            (handover,) = [e.fields for e in seen if e.event == "avatar_handover"]
            assert handover["reason"] == "lost"
            # The client hears of the switch before anything of the new avatar: its speak_started
            # comes after avatar_handover (it came first under load: the test waited 30 s for it).
            assert "speak_started" not in [e.event for e in seen]
            # The mark's audio was not played by the lost avatar: it is not reached before the
            # next one plays it (timed from the lost one's start, it fired during the outage).
            assert "mark" not in [e.event for e in seen]
            second = handover["liveavatar_session"]
            seen = await until_event(client, "speak_started", limit_s=30)  # the new avatar's
            assert "mark" not in [e.event for e in seen]
            seen = await until_event(client, "mark", limit_s=30)
            assert seen[-1].fields == {"name": "m"}  # reached, not cleared
            await sender
            await until_event(client, "speak_ended", limit_s=30)  # the new avatar's
            await asyncio.sleep(0.5)
            stats = sim.stream.stats("default", "respeak")
        heard_before = int(played_ms // PERIOD_MS) + 1  # beeps whose onset the first one played
        renderer = sim.liveavatar.sessions[second].renderer
        assert renderer is not None
        respoken_ms = sum(renderer.played_samples.values()) / 48
        # The new avatar spoke from the drop point (back to a quiet point, at most the overlap)
        # to the turn's end: the beeps after the drop point and none before it.
        assert BEEPS * PERIOD_MS - played_ms - 1 <= respoken_ms
        assert respoken_ms <= BEEPS * PERIOD_MS - played_ms + 300 + 1
        assert (respoken_ms % PERIOD_MS) < PERIOD_MS - BEEP_MS  # it starts in the quiet
        repeated_ms = played_ms - (BEEPS * PERIOD_MS - respoken_ms)  # > 0: played twice
        old_renderer = sim.liveavatar.sessions[first].renderer
        assert old_renderer is not None
        print(
            f"drop at {played_ms:.0f} ms into the turn; {heard_before} beeps played before it; "
            f"the next avatar played {respoken_ms:.0f} ms of the turn (overlap {repeated_ms:.0f} "
            f"ms; {handover['respoken_ms']} ms carried at the switch); "
            f"beeps heard {stats['audio']['onsets']} of {BEEPS}; played by the lost avatar "
            f"{len(old_renderer.onset_media_s)}, by the next "
            f"{len(renderer.onset_media_s)}"
        )
        assert stats["joins"] == 1
        # The relay's sender reports stay consistent across the switch; the transcode
        # publisher's own mapping moves over a call, switch or not (see the tests above).
        _assert_one_continuous_participant(stats, sr=media_path == "relay")
        # The two avatars together played every beep of the turn once: none lost, none twice.
        played_onsets = len(old_renderer.onset_media_s) + len(renderer.onset_media_s)
        assert played_onsets == BEEPS
        # At the receiver none is heard twice. One may be missed there on a saturated machine
        # (seen once in a full run: 11 of 12, the avatars' 12 all played; the same shortfall as
        # the bench's beeps heard/sent before this change), so one miss is tolerated.
        assert BEEPS - 1 <= stats["audio"]["onsets"] <= BEEPS
    finally:
        await daemon.stop()
    assert sim.liveavatar.live_sessions == []


async def _replacement(sim: StandIns, known: set[str], when: str) -> str:
    """The session the daemon starts next (not in ``known``), dropped by the provider as soon
    as it started (``start``) or at its first ``agent.speak``, the audio a recovery's switch
    hands it (``switch``); or at that moment only its LiveKit room closes (``room``: the
    LiveAvatar session and its WebSocket stay up)."""
    la = sim.liveavatar
    async with asyncio.timeout(20):
        while True:
            new = [s for sid, s in la.sessions.items() if sid not in known]
            ready = [
                s
                for s in new
                if s.started
                and (when == "start" or any(m.get("type") == "agent.speak" for m in s.messages))
            ]
            if ready:
                sid = ready[0].session_id
                if when == "room":
                    await sim.livekit.close_room(f"la-{sid}")
                else:
                    await la.drop(sid)
                return sid
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("when", ["start", "switch", "room"])
async def test_a_replacement_lost_in_its_turn_is_replaced_too(
    capped: StandIns, tmp_path: Path, when: str
) -> None:
    """The provider drops the avatar mid-turn, then its replacement too: as soon as it started
    (the recovery's switch to it fails, or lands on a dead avatar), or at its first
    ``agent.speak``, as the switch hands it the turn's rest (its loss is then reported while the
    recovery still runs, when a report reads like the lost avatar's last one: it was ignored, and
    the call went on with a dead avatar), or only its room closes then. A third avatar finishes
    the turn: no error, one participant, every beep of the turn played once by the avatars
    together."""
    sim = capped
    la = sim.liveavatar
    la.options.sandbox_max_duration_s = 3600  # no planned switch in this test
    daemon = handover_daemon(tmp_path, sim, "transcode", 1)
    await daemon.start()
    try:
        async with await BridgeClient.connect(daemon.socket) as client:
            call_id = f"lost-twice-{when}"
            events = await open_session(client, call_id)
            (first,) = [e.fields["session_id"] for e in events if e.event == "liveavatar_session"]
            sim.stream.reset_measure("default", call_id)
            beeps = beep_train(FMT.sample_rate, BEEPS, PERIOD_MS, BEEP_MS).tobytes()

            async def speak() -> None:
                await stream_pcm_realtime(client, beeps, FMT)
                await client.end_turn()

            sender = asyncio.create_task(speak())
            await until_event(client, "speak_started")
            await _drop_in_silence(sim, first, after_ms=1200)
            second = await _replacement(sim, {first}, when)
            handovers: list[dict[str, Any]] = []
            while not handovers or handovers[-1]["liveavatar_session"] == second:
                seen = await until_event(client, "avatar_handover", limit_s=30)
                handovers.append(seen[-1].fields)
            third = handovers[-1]["liveavatar_session"]
            await sender
            await until_event(client, "speak_ended", limit_s=30)  # raises on a fatal error
            await asyncio.sleep(0.5)
            stats = sim.stream.stats("default", call_id)
            live = la.live_sessions
        lost_again = daemon.metric_sum("bridge_avatar_lost_again_total")
        print(f"handovers {handovers}; bridge_avatar_lost_again_total {lost_again}")
        assert third not in (first, second), handovers
        assert all(h["reason"] == "lost" for h in handovers), handovers
        assert live == [third]
        assert stats["joins"] == 1
        _assert_one_continuous_participant(stats, sr=False)
        renderers = [la.sessions[sid].renderer for sid in (first, second, third)]
        played = [len(r.onset_media_s) if r is not None else 0 for r in renderers]
        print(f"beeps played by each avatar {played}; heard {stats['audio']['onsets']}")
        heard = stats["audio"]["onsets"]
        if when == "room":
            # Whatever the second avatar plays into its closed room before the next switch
            # LiveAvatar counts as played: not re-spoken, and not heard (a limit: the uplink
            # knows what the avatar played, not what reached the call). Usually none: the switch
            # stops waiting for its first frame once its room failed ([3, 0, 9], 12 heard; the
            # first version waited 2 s for it: [3, 4, 5], 8 heard).
            assert played[2] > 0 and heard >= played[0] + played[2] - 1, (played, heard)
        else:
            assert sum(played) == BEEPS  # none lost, none re-spoken twice
            # The call heard the turn. Its receiver's count is looser than the avatars' (one
            # beep missed, or one split by a gap in the audio, on a saturated machine: 13 of 12
            # seen once with two CPU hogs beside two test workers); played twice shows above.
            assert BEEPS - 1 <= heard <= BEEPS + 1, stats["audio"]
    finally:
        await daemon.stop()
    assert la.live_sessions == []


@pytest.mark.parametrize("media_path", ["transcode", "relay"])
async def test_a_planned_switch_keeps_the_old_avatars_last_words_in_flight(
    capped: StandIns, tmp_path: Path, media_path: str
) -> None:
    """The avatar's media reaches the bridge 500 ms after it plays it (the LiveKit stand-in's
    ``latency_ms``), and a planned switch is due during a turn: it comes after the turn's
    ``speak_ended``, while the turn's last beeps are still on their way from the old avatar.
    Every beep the avatars played reaches the call once (on the transcode path 3 of 10 were
    lost: the switch shut the old downlink on them; the relay relays the old avatar until the
    new one's keyframe, which comes the same way)."""
    sim = capped
    cap_s, margin_s, turn_beeps = 20, 8, 10
    sim.liveavatar.options.sandbox_max_duration_s = cap_s
    sim.livekit.faults.latency_ms = 500.0
    daemon = handover_daemon(tmp_path, sim, media_path, margin_s)
    await daemon.start()
    try:
        async with await BridgeClient.connect(daemon.socket) as client:
            call_id = f"drain-{media_path}"
            events = await open_session(client, call_id)
            (first,) = [e.fields["session_id"] for e in events if e.event == "liveavatar_session"]
            sim.liveavatar.options.sandbox_max_duration_s = 3600  # the next session: no cap
            # The turn starts 2 s before the switch is due and ends 3 s after it (the next
            # avatar is ready by then); the switch waits for its speak_ended.
            due = sim.liveavatar.sessions[first].started_at + cap_s - margin_s
            await asyncio.sleep(max(0.0, due - 2.0 - time.monotonic()))
            sim.stream.reset_measure("default", call_id)
            pcm = coded_beeps(FMT.sample_rate, 0, turn_beeps, PERIOD_MS, BEEP_MS)
            await stream_pcm_realtime(client, pcm.tobytes(), FMT)
            await client.end_turn()
            seen = await until_event(client, "avatar_handover", limit_s=30)
            (planned,) = [e.fields for e in seen if e.event == "avatar_handover"]
            names = [e.event for e in seen]
            await asyncio.sleep(1.5)  # the latency, and the receiver's jitter buffer
            measure = sim.stream.measure("default", call_id)
            heard = [tone_id(hz) for _, hz in measure.onset_tones]
        assert planned["reason"] == "cap" and planned["respoken_ms"] == 0, planned
        assert "speak_ended" in names[: names.index("avatar_handover")], names
        played: dict[int | None, int] = {}
        for s in sim.liveavatar.sessions.values():
            for _, hz in s.renderer.onset_tones if s.renderer is not None else []:
                played[tone_id(hz)] = played.get(tone_id(hz), 0) + 1
        assert played == dict.fromkeys(range(turn_beeps), 1), played
        # Never heard twice; the turn's tail (the beeps played in its last 2 s: in flight from
        # the old avatar at its speak_ended) heard whole. One other beep may be missed by the
        # receiver's onset detector on a saturated machine (a relay call here heard 9 of 10,
        # beep 5 mid-turn, all played; see _assert_speech_heard).
        assert len(heard) == len(set(heard)), heard
        tail = set(range(turn_beeps - 2000 // PERIOD_MS, turn_beeps))
        assert tail <= set(heard), heard
        assert len(set(heard)) >= turn_beeps - 1, heard
    finally:
        await daemon.stop()
    assert sim.liveavatar.live_sessions == []
