"""Interop, measured end to end (issue 16, part 4): a minute of a relay call per codec whose
avatar publishes like LiveAvatar's (the LiveKit SDK: libwebrtc, simulcast at 720p), forwarded by
the LiveKit stand-in's SFU, relayed by the daemon into the Stream stand-in, and watched there by
Chromium (libwebrtc) through Stream's browser SDK.

Faults, all seeded: 2 % loss on the LiveKit -> bridge hop (the relay NACKs upstream, the SFU
answers with RTX), on the bridge -> Stream hop (Stream's SFU NACKs, the relay answers from its
history) and on Stream's SFU -> viewer hop (the viewer NACKs, the SFU answers); and one forced
layer switch mid-call: the LiveKit SFU moves the bridge from the full layer (1280x720) to the
half one (640x360) and back, so the relay forwards a size change mid-call (its keyframe gate,
the size the Stream receiver decodes).

Asserted whatever the machine's load, from the wire or the receivers' decoders: the codec (on
Stream's wire and in the browser's inbound-rtp stats); the size asked for, the layer switches,
the sizes the relay forwarded and the Stream receiver decoded; loss repaired on each hop (NACKs
and RTX counted at both ends). Asserted when the video left LiveKit and reached Stream's SFU
without a stall (a gap over 200 ms, libwebrtc's freeze rule): no freeze in the frames the Stream
receiver completes (its jitter buffer's output: what the relay and the repaired hop delivered; its
decoder, a thread of the stand-ins' busy process, can fall behind on a loaded machine, so decoded
freezes are reported, not judged) and few at the browser, every frame the relay sent completed by
the Stream receiver and every frame Stream's SFU forwarded decoded by the browser (but the few in
flight), every decoded picture's marks
readable and in order (no corrupt picture), audio all along and lip sync within the loose bound
of the end-to-end tests (the benchmark holds the goal). On an overloaded machine (load average
15-20 seen) the source stalls (libwebrtc's encoder, the stand-ins' loop) and every receiver
freezes and drops with it, which is not the path under test: the test then says so and what it
measured. Seen then, all in the stand-ins: their sockets' receive buffers overflowing while
their loop stalls (37 % of the namespace's UDP datagrams in one run), retransmissions so late
that aiortc's jitter buffer at the Stream receiver restarts at them (a packet over 100 behind is
a new start) and decodes an old picture again (6 in one H264 run), and the avatar's audio
skipped by the SDK publisher when its renderer, on the stand-ins' loop, computes late.
One codec per test: two libwebrtc publishers at once overload the 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
from pathlib import Path
from typing import Any

import pytest

from bridge.client import BridgeClient, stream_pcm_realtime
from bridge.media import AudioFormat
from bridge.protocol import EventMsg
from bridge.sim.browser_viewer import BrowserViewer
from bridge.sim.marks import beep_train
from bridge.sim.stack import DaemonProcess, StandIns
from bridge.sim.stream import ForwardFaults, ReceiveFaults

pytestmark = [pytest.mark.netns, pytest.mark.timeout(420)]
FMT = AudioFormat(24000, 1)
CALL_S = 60  # the measured call, from the first viewer's first frame
BEEP_PERIOD_MS = 500
SWITCH_AT_S = 15.0  # the LiveKit SFU moves the bridge to the half layer...
SWITCH_FOR_S = 10.0  # ...and back to the full one after this long
LOSS = 0.02
SEEDS = {"VP8": 15, "H264": 51}
FULL, HALF = "1280x720", "640x360"
AVATAR_ID = "0f6c2f0e-9a8b-4c1d-8e7f-3a2b1c0d9e8f"  # any UUID: the stand-in accepts all
# Frames sent but not yet decoded at the moment both counts are read (a jitter buffer, a decoder
# queue, one side read a little before the other): a loaded machine, generous.
IN_FLIGHT_FRAMES = 15
MIN_FRAMES = 300  # ~1,200 in 60 s at libwebrtc's ~20 fps here; an overloaded run was ~16 fps


async def _open_session(client: BridgeClient, call_id: str) -> dict[str, dict[str, Any]]:
    await asyncio.wait_for(client.hello(f"default:{call_id}", FMT), 60)
    seen: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(60):
        while not {"avatar_ready", "published", "media_path"} <= seen.keys():
            message = await client.recv()
            assert not getattr(message, "fatal", False), message
            if isinstance(message, EventMsg):
                seen[message.event] = dict(message.fields)
    return seen


async def _speak(client: BridgeClient) -> None:
    """One turn of beeps, every 500 ms for the whole call (real time), to its end."""
    beeps = beep_train(FMT.sample_rate, CALL_S * 1000 // BEEP_PERIOD_MS, BEEP_PERIOD_MS, 100)
    await stream_pcm_realtime(client, beeps.tobytes(), FMT)
    await client.end_turn()
    async with asyncio.timeout(30):
        while True:
            message = await client.recv()
            if isinstance(message, EventMsg) and message.event == "speak_ended":
                return


async def _relay(daemon: DaemonProcess) -> dict[str, Any]:
    _, body = await asyncio.to_thread(daemon.admin, "GET", "/sessions")
    (session,) = body["sessions"]
    return dict(session["relay"])


async def _force_a_layer_switch(sim: StandIns, daemon: DaemonProcess) -> dict[str, Any]:
    """Mid-call, the LiveKit SFU sends the bridge the half layer, then its own again."""
    await asyncio.sleep(SWITCH_AT_S)
    (fwd,) = sim.livekit.forwarded_video()
    sizes = {rid: f"{w}x{h}" for rid, (w, h) in fwd["layers"].items()}
    assert sizes.get(fwd["rid"]) == FULL, fwd  # the relay asked for the full size and got it
    (half,) = [rid for rid, size in sizes.items() if size == HALF]
    before = await _relay(daemon)
    sim.livekit.faults.video_layer = half
    await asyncio.sleep(SWITCH_FOR_S)
    during = await _relay(daemon)
    sim.livekit.faults.video_layer = None
    return {"layer": half, "before": before, "during": during}


def _skew_summary(skews: list[float]) -> dict[str, Any]:
    """Median and |p95| / |p99| of the marks' skew at the Stream receiver (the goals' terms)."""
    if not skews:
        return {"marks": 0}
    mags = sorted(abs(s) for s in skews)
    return {
        "marks": len(skews),
        "median": round(statistics.median(skews), 1),
        "p95": round(mags[min(len(mags) - 1, int(0.95 * len(mags)))], 1),
        "p99": round(mags[min(len(mags) - 1, int(0.99 * len(mags)))], 1),
        "spread": round(max(skews) - min(skews), 1),
    }


def _bridge(stats: dict[str, Any]) -> dict[str, Any]:
    (bridge,) = [p for p in stats["participants"] if p["user_id"] == "avatar-bridge"]
    return dict(bridge)


def _udp_receive_buffer_errors() -> int:
    """Datagrams this network namespace dropped for a full socket receive buffer (a process
    that did not read in time: the kernel's count, /proc/net/snmp)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    head, values = [line for line in lines if line[0] == "Udp:"][:2]
    return int(values[head.index("RcvbufErrors")])


def _stalls(stats: dict[str, Any]) -> int:
    """Stalls of the bridge's video on arrival at Stream's SFU (libwebrtc's freeze rule)."""
    return int(_bridge(stats)["published"]["video"]["arrival_stalls"])


def _sink(stats: dict[str, Any], user_id: str) -> dict[str, Any]:
    """What Stream's SFU forwarded to ``user_id``: the bridge's video on its subscriber PC."""
    (viewer,) = [p for p in stats["participants"] if p["user_id"] == user_id]
    tracks = (viewer["subscriber"] or {"tracks": {}})["tracks"]
    (video,) = [t for k, t in tracks.items() if k.endswith(":video")]
    return dict(video)


async def _diagnose(viewer: BrowserViewer, sim: StandIns, call_id: str) -> str:
    page = viewer.page
    assert page is not None
    inbound = await page.evaluate("window.streamPage.receiverStats()")
    sfu = sim.stream.stats("default", call_id)
    return "\n".join(
        (json.dumps(inbound, indent=1), json.dumps(sfu["participants"], indent=1)[:4000])
    )


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_a_minute_of_libwebrtc_simulcast_relayed_through_loss_and_a_layer_switch(
    tmp_path: Path, codec: str
) -> None:
    call_id = f"interop-{codec.lower()}"
    seed = SEEDS[codec]
    async with StandIns(render_latency_s=0.2, avatar_publisher="sdk") as sim:
        daemon = DaemonProcess(
            tmp_path,
            sim.daemon_env(),
            "--set", "liveavatar.video_quality=high",
            "--set", f"liveavatar.video_encoding={codec}",
            "--set", "output.width=1280", "--set", "output.height=720",
            # A paid session: the sandbox's ~1 minute cap would end the call inside the minute.
            "--set", "liveavatar.is_sandbox=false",
            "--set", f"liveavatar.avatar_id={AVATAR_ID}",
        )  # fmt: skip
        await daemon.start()
        try:
            async with await BridgeClient.connect(daemon.socket) as client:
                seen = await _open_session(client, call_id)
                assert seen["media_path"]["path"] == "relay", seen
                assert seen["published"]["codec"] == codec, seen
                # Seeded loss on every hop for the whole call (RTX and RTCP pass).
                sim.livekit.faults.drop_seed = seed
                sim.livekit.faults.drop_rate = LOSS
                lk_dropped_before = sim.livekit.counters.video_packets_dropped
                rcvbuf_errors_before = _udp_receive_buffer_errors()
                sim.stream.set_receive_faults(
                    "default", call_id, ReceiveFaults(drop_rate=LOSS, seed=seed, kinds=("video",))
                )
                sim.stream.set_forward_faults(
                    "default", call_id, ForwardFaults(drop_rate=LOSS, seed=seed)
                )
                async with BrowserViewer(sim.stream, "default", call_id) as viewer:
                    await viewer.join("viewer-1")
                    try:
                        first_frame = await viewer.first_frame_s(within_s=30)
                    except Exception as exc:
                        raise AssertionError(await _diagnose(viewer, sim, call_id)) from exc
                    sim.stream.reset_measure("default", call_id)
                    sim.livekit.reset_forwarded_freezes()
                    stalls_before = _stalls(sim.stream.stats("default", call_id))
                    relay_before = await _relay(daemon)
                    decoded_before = (await viewer.report())["decoder"]
                    sink_before = _sink(sim.stream.stats("default", call_id), "viewer-1")
                    async with asyncio.TaskGroup() as tg:
                        switch = tg.create_task(_force_a_layer_switch(sim, daemon))
                        tg.create_task(_speak(client))
                    sim.livekit.faults.drop_rate = 0.0
                    stats = sim.stream.stats("default", call_id)
                    skews = sim.stream.measure("default", call_id).skews_ms()
                    relay = await _relay(daemon)
                    (fwd,) = sim.livekit.forwarded_video()
                    played = await viewer.report()
                    decoder = played["decoder"]
                    assert viewer.page is not None
                    inbound = await viewer.page.evaluate("window.streamPage.receiverStats()")
                    avatar = [
                        {
                            **{
                                k: getattr(la.publisher, k)
                                for k in (
                                    "frames",
                                    "audio_frames",
                                    "audio_skipped",
                                    "audio_late",
                                    "audio_not_ready",
                                )
                            },
                            # How far behind the renderer's clock its audio reached libwebrtc
                            # (the SRs' capture clock starts there: no alignment sees this).
                            "audio_lag_ms_median": round(
                                statistics.median(la.publisher.audio_lag_ms or [0.0]), 1
                            ),
                        }
                        for la in sim.liveavatar.sessions.values()
                        if la.publisher is not None
                    ]
        finally:
            assert await daemon.stop() == 0
    lk_dropped = sim.livekit.counters.video_packets_dropped - lk_dropped_before
    s = switch.result()
    video, marks, audio = stats["video"], stats["marks"], stats["audio"]
    stalled = {
        "livekit_forwarded": fwd["freezes"],
        "stream_arrival": _stalls(stats) - stalls_before,
    }
    summary = {
        "stream_receiver": {k: stats[k] for k in ("video", "marks", "audio", "sync")},
        "relay": relay,
        "livekit_forwarded": fwd,
        "viewer": decoder,
        "switch": s,
        "avatar_publisher": avatar,
        "source_stalls": stalled,
        "stream_receiver_skew_ms": _skew_summary(skews),
        # At the browser's playout (the goals' measure since issue 15; reported, not judged:
        # the benchmark holds the goal, this call carries loss on every hop and a switch).
        "viewer_skew_ms": {k: v for k, v in (played.get("skew_ms") or {}).items() if k != "values"},
        "udp_receive_buffer_errors": _udp_receive_buffer_errors() - rcvbuf_errors_before,
        "load": os.getloadavg()[0],
    }
    detail = json.dumps(summary, indent=1, default=str)
    print(f"\n{codec}: first frame {first_frame} s; LiveKit hop dropped {lk_dropped}\n{detail}")

    # Codec truth: the payload type on Stream's wire, and what the browser decodes.
    assert stats["video_codec"] == codec, detail
    assert _bridge(stats)["wire"]["video"]["codec"] == codec, detail
    assert inbound["video"]["codec"] == f"video/{codec}", inbound

    # The size: asked for in full (UpdateTrackSettings), forwarded and decoded in full, the
    # forced layer forwarded and decoded at its own size in between (the relay's gate let it
    # through: a size it did not ask for, mid-call), and the full size again after it.
    assert fwd["asked"][1:] == (1280, 720), fwd
    assert fwd["switches"] >= 2, fwd
    # Within the forced window the relay forwarded another size (the half layer; libwebrtc may
    # also have moved its layers' sizes itself under CPU load), whatever it ends on.
    assert s["during"]["video_size_changes"] > s["before"]["video_size_changes"], s
    assert relay["video_size"] == FULL, relay
    assert relay["video_size_changes"] - s["before"]["video_size_changes"] >= 2, (s, relay)
    assert video["resolution"] == FULL, video
    assert video["sizes"].get(HALF, 0) > 0, video

    # Loss repaired on each hop. LiveKit -> bridge: the relay NACKed, the SFU's RTX came.
    assert lk_dropped > 0, detail
    assert relay["upstream_nacks"] - relay_before["upstream_nacks"] > 0, relay
    assert relay["upstream_rtx"] - relay_before["upstream_rtx"] > 0, relay
    # Bridge -> Stream: Stream's SFU NACKed, the relay answered from its history.
    published = _bridge(stats)["published"]["video"]
    assert stats["receive_faults"]["dropped"] > 0, stats["receive_faults"]
    assert published["nacks_sent"] > 0 and published["rtx_received"] > 0, published
    assert relay["rtx_sent"] - relay_before["rtx_sent"] > 0, relay
    # Stream's SFU -> viewer: it NACKed, the SFU answered, libwebrtc counted the RTX.
    sink = _sink(stats, "viewer-1")
    assert sink["dropped"] > 0 and sink["nacked"] > 0, sink
    assert sink["nacks_answered"] > 0 and sink["rtx_sent"] > 0, sink
    assert decoder["nacks_sent"] > 0, decoder
    assert decoder["retransmitted_packets_received"] > 0, decoder

    if any(stalled.values()):
        print(
            f"{codec}: the video stalled before the receivers {stalled} (load average "
            f"{os.getloadavg()[0]:.1f}): freezes, frames and lip sync not judged"
        )
        return
    # No freeze in what reached the Stream receiver (the relay's hops are repaired in time): its
    # frames timed as they complete, before its decoder thread (which waits for a CPU under
    # load: one 330 ms decoded freeze with none assembled was seen at load 11). The viewer's own
    # hop drops 2 % too: a frame Chromium cannot repair in time costs it a keyframe round trip
    # (one freeze of 188 ms in a quiet run), never a long one.
    assembled = video["assembled"]
    assert assembled["freezes"] == 0, detail
    assert decoder["freeze_count"] - decoded_before["freeze_count"] <= 3, detail
    frozen_s = (decoder["total_freezes_duration_s"] or 0.0) - (
        decoded_before["total_freezes_duration_s"] or 0.0
    )
    assert frozen_s < 1.0, detail
    # Frames: every frame the relay sent was completed by the Stream receiver, and every frame
    # Stream's SFU forwarded the viewer reached its decoder (loss and the switch notwithstanding).
    sent = relay["video_frames"] - relay_before["video_frames"]
    assert sent >= MIN_FRAMES, detail
    assert assembled["frames"] >= sent - IN_FLIGHT_FRAMES, (assembled, sent, detail)
    forwarded = sink["frames"] - sink_before["frames"]
    decoded = decoder["frames_decoded"] - decoded_before["frames_decoded"]
    # Chromium gives up on a frame whose lost packet's retransmission misses its wait (2 % loss,
    # ~5 packets a 720p frame: 40 of 1,719 in a quiet run) and decodes on from the next one
    # without a freeze (asserted above): most, not every, frame.
    assert decoded >= 0.95 * forwarded - IN_FLIGHT_FRAMES, (decoded, forwarded, detail)
    # No corrupt picture: each decoded picture's stamped marks read (they carry a parity check),
    # and none after a later one, across both size changes.
    assert marks["read"] >= video["frames"] - 2, (marks, video)
    assert marks["backwards"] == 0, marks
    # Audio all along, and lip sync at the Stream receiver: most beeps paired with their
    # flash, median within the loose bound of the end-to-end tests.
    # Audio all along: nearly every beep's onset heard (a seeded drop can take the packet a beep
    # begins in), and most of the call's audio decoded (the SDK publisher, on the stand-ins'
    # loop, skips late 20 ms ticks as a real-time renderer does: 54 s of 60 in a quiet run).
    beeps = CALL_S * 1000 // BEEP_PERIOD_MS
    assert audio["onsets"] >= 0.9 * beeps, audio
    assert audio["seconds"] > 0.8 * CALL_S, audio
    assert len(skews) >= CALL_S, skews
    assert abs(statistics.median(skews)) < 100, skews
