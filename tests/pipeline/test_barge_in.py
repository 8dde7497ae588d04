"""Barge-in end to end: after INTERRUPT no old speech reaches the call, on both media paths.

The LiveAvatar stand-in is made slow to stop (``Faults.interrupt_delay_s``): it keeps playing the
interrupted turn for that long after ``agent.interrupt`` arrived, as the avatar's audio already
in flight does on the real service, only longer, so that the test can tell. The bridge shuts its
barge-in gate (bridge/barge_in.py) before it sends ``agent.interrupt``; so every beep the avatar
plays after the stand-in received that message was played after the gate shut and must never
reach the Stream receiver. That is asserted by count (which beeps arrived), not by timing: the
receiver hears at most the beeps the avatar played before the interrupt arrived, while the
avatar demonstrably played more after it. The next turn is heard (the gate reopens at its
``speak_started``).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from bridge.client import BridgeClient
from bridge.sim.marks import beep_train
from bridge.sim.stack import StandIns
from tests.pipeline.conftest import StartDaemon
from tests.pipeline.test_end_to_end import FMT, open_session, until_event

pytestmark = pytest.mark.netns

SLOW_STOP_S = 1.5  # the stand-in plays on this long after agent.interrupt arrived
PERIOD_MS = 250
OLD_BEEPS = 24  # 6 s: far more than plays before the interrupt
NEW_BEEPS = 6
LEAD_MS = 300  # the next turn starts with silence (see the last assert)


def _frames(pcm: bytes, frame_ms: int = 20) -> list[bytes]:
    n = FMT.sample_rate * frame_ms // 1000 * 2
    return [pcm[i : i + n] for i in range(0, len(pcm), n)]


@pytest.mark.parametrize("media_path", ["relay", "transcode"])
async def test_no_old_speech_reaches_the_call_after_an_interrupt(
    sim: StandIns, start_daemon: StartDaemon, media_path: str
) -> None:
    sim.liveavatar.faults.interrupt_delay_s = SLOW_STOP_S
    daemon = await start_daemon("--set", f"output.media_path={media_path}")
    async with await BridgeClient.connect(daemon.socket) as client:
        await open_session(client, "barge")
        sim.stream.reset_measure("default", "barge")
        old = beep_train(FMT.sample_rate, OLD_BEEPS, PERIOD_MS, 60).tobytes()
        # The whole turn at once (not in real time): it is all at the avatar, queued to play.
        sender = asyncio.create_task(_send_all(client, old))
        await until_event(client, "speak_started")
        await asyncio.sleep(1.0)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await client.interrupt()
        await asyncio.sleep(SLOW_STOP_S + 0.5)  # the stand-in's slow stop is over

        lead = np.zeros(FMT.sample_rate * LEAD_MS // 1000, dtype=np.int16).tobytes()
        new = lead + beep_train(FMT.sample_rate, NEW_BEEPS, PERIOD_MS, 60).tobytes()
        await _send_all(client, new)
        await client.end_turn()
        await until_event(client, "speak_ended")
        (session,) = sim.liveavatar.sessions.values()
        renderer = session.renderer
        assert renderer is not None
        (interrupt_rx,) = session.interrupts_rx_t
        new_turn = [t for t in renderer.turns.values() if t.first_audio_rx_t > interrupt_rx]
        assert len(new_turn) == 1 and new_turn[0].first_play_t is not None
        new_start = new_turn[0].first_play_t
        measure = sim.stream.measure("default", "barge")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded: the new turn's tail on its way
            if len([t for t in measure.onset_times if t >= new_start]) >= NEW_BEEPS:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)

        origin = time.monotonic() - renderer.media_s()
        played = [origin + m for m in renderer.onset_media_s]
        played_before = [t for t in played if t < interrupt_rx]
        played_after = [t for t in played if interrupt_rx <= t < new_start]
        played_new = [t for t in played if t >= new_start]
        heard = list(measure.onset_times)
        heard_old = [t for t in heard if t < new_start]
        heard_new = [t for t in heard if t >= new_start]
        _, body = await asyncio.to_thread(daemon.admin, "GET", "/sessions")
        (described,) = body["sessions"]
        gate = described["path_stats"]["barge_in"]

    # The stand-in did play old speech after the gate shut: without it, it would be heard.
    assert len(played_after) >= 3, (played_before, played_after)
    assert len(played_new) == NEW_BEEPS
    # Which audio arrived: none of the beeps played after the gate shut.
    assert 1 <= len(heard_old) <= len(played_before), (heard_old, played_before, played_after)
    # The next turn is heard: the gate reopened at its speak_started (not by its timeout).
    # (Not asserted whole: a receiver starved of CPU can miss an onset of its own.)
    assert gate["interrupts"] == 1 and gate["reopened"] == {"speak_started": 1, "timeout": 0}
    assert not gate["muted"]
    assert len(heard_new) >= 1, heard_new
    _, body = await asyncio.to_thread(daemon.admin, "GET", "/metrics")
    assert f'bridge_barge_in_audio_dropped_total{{path="{media_path}"}}' in str(body)


async def _send_all(client: BridgeClient, pcm: bytes) -> None:
    for frame in _frames(pcm):
        await client.send_audio(frame)
