"""Planned avatar handover on the transcode path: before the LiveAvatar session's cap the bridge
brings up the next session and switches at a turn boundary; the call keeps one participant and
its tracks, speech after the switch reaches it, the client hears ``avatar_handover``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.client import BridgeClient, stream_pcm_realtime
from bridge.sim.liveavatar import StandInOptions
from bridge.sim.marks import beep_train
from bridge.sim.stack import SMALL, DaemonProcess, StandIns
from tests.pipeline.test_end_to_end import FMT, open_session, until_event

pytestmark = pytest.mark.netns

CAP_S = 8  # the stand-in's sandbox cap, real seconds
MARGIN_S = 4  # so the switch is due 4 s after the session started


@pytest.fixture
async def capped() -> AsyncIterator[StandIns]:
    async with StandIns(liveavatar=StandInOptions(sandbox_max_duration_s=CAP_S)) as stack:
        yield stack


async def test_planned_handover_keeps_the_call_and_its_participant(
    capped: StandIns, tmp_path: Path
) -> None:
    sim = capped
    daemon = DaemonProcess(
        tmp_path,
        sim.daemon_env(),
        *SMALL,
        "--set", "output.media_path=transcode",
        "--set", f"liveavatar.handover_margin_s={MARGIN_S}",
    )  # fmt: skip
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
        assert stats["audio"]["onsets"] >= 4
        assert stats["video"]["frames"] > 30
        assert await daemon.stop() == 0
        assert sim.liveavatar.live_sessions == []
    finally:
        await daemon.stop()
