"""The browser viewer across an avatar switch, as the continuity bench uses it: the page's marks
are put on the host's clock (``BrowserViewer.clock``) and split at the client's
``avatar_handover``, and the viewer keeps showing the one participant's picture and sound after
the switch (the relay path: the same tracks, the new avatar's marks paired at the browser)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.continuity import skew_after_switches
from bridge.client import BridgeClient, stream_pcm_realtime
from bridge.protocol import EventMsg
from bridge.sim.browser import Chromium
from bridge.sim.browser_viewer import BrowserViewer
from bridge.sim.liveavatar import StandInOptions
from bridge.sim.marks import beep_train
from bridge.sim.stack import StandIns
from bridge.sim.web import PageServer
from tests.pipeline.conftest import handover_daemon
from tests.pipeline.test_end_to_end import FMT, open_session

pytestmark = pytest.mark.netns

# The first avatar's cap and the switch's margin: the switch is due 12 s after the session
# started, once the viewer has joined and seen marks of the first avatar.
CAP_S = 20
MARGIN_S = 8
TURN_BEEPS = 4  # 2 s turns with a pause between them: the planned switch waits for one
TURNS_AFTER = 3
MAX_TURNS = 20  # bound: the switch is due within ~5 turns
# A frame's expectedDisplayTime is the vsync it will be shown at, up to a couple of frames after
# the callback the host's poll saw: the first frame may be timed that much after the poll.
VSYNC_SLACK_S = 0.1


@pytest.fixture
async def sim() -> AsyncIterator[StandIns]:
    options = StandInOptions(sandbox_max_duration_s=CAP_S)
    async with StandIns(render_latency_s=0.2, liveavatar=options) as stack:
        yield stack


async def test_the_viewer_marks_are_split_at_the_switch_on_the_host_clock(
    sim: StandIns, browser: Chromium, pages: PageServer, tmp_path: Path
) -> None:
    daemon = handover_daemon(tmp_path, sim, "relay", MARGIN_S)
    await daemon.start()
    try:
        async with (
            await BridgeClient.connect(daemon.socket) as client,
            BrowserViewer(
                sim.stream, "default", "viewer-handover", browser=browser, pages=pages
            ) as viewer,
        ):
            await open_session(client, "viewer-handover")
            sim.liveavatar.options.sandbox_max_duration_s = 3600  # the next session: no cap
            before_join = time.monotonic()
            await viewer.join()
            await viewer.first_frame_s()
            after_first_frame = time.monotonic()
            clock = await viewer.clock()
            first_shown = clock.host_s(float((await viewer.timeline())["first_frame_at"]))
            # The page's clock on the host's: the first frame was shown after the join began
            # and by the time the host saw it (a wrong mapping is off by seconds or more).
            assert before_join <= first_shown <= after_first_frame + VSYNC_SLACK_S, (
                before_join,
                first_shown,
                after_first_frame,
                clock,
            )

            switched: list[float] = []

            async def read() -> None:
                async for m in client.messages():
                    if isinstance(m, EventMsg) and m.event == "avatar_handover":
                        switched.append(time.monotonic())

            reader = asyncio.create_task(read())
            turns_after = 0
            for _ in range(MAX_TURNS):  # bounded
                beeps = beep_train(FMT.sample_rate, TURN_BEEPS, 500, 100).tobytes()
                await stream_pcm_realtime(client, beeps, FMT)
                await client.end_turn()
                await asyncio.sleep(1.0)
                if switched:
                    turns_after += 1
                    if turns_after >= TURNS_AFTER:
                        break
            await asyncio.sleep(1.0)  # the last marks play out
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            seen = await viewer.timeline()
            snap = await viewer._page().evaluate("window.streamPage.snapshot()")
            joins = sim.stream.stats("default", "viewer-handover")["joins_by_user"]
    finally:
        await daemon.stop()
    assert len(switched) == 1, switched
    # One participant all along: the page measures the first one it bound, so marks after the
    # switch are the same participant's, showing the new avatar.
    assert [p["userId"] for p in snap["participants"].values()] == ["avatar-bridge"], snap
    # The stand-in tells the bridge's joins from the viewer's (the bench's participants_seen).
    assert joins == {"avatar-bridge": 1, "viewer": 1}, joins
    timed = [(clock.host_s(float(m["at"])), float(m["skewMs"])) for m in seen["marks"]]
    split = skew_after_switches(timed, switched)
    # Found and paired on both sides of the switch (the figure is the bench's: not asserted).
    assert split["before_first_switch"]["samples"] >= 1, (split, seen)
    assert split["per_switch"][0]["samples"] >= 1, (split, seen)
