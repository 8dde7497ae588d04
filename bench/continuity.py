"""The ``continuity`` scenario of issue 17 (first part): HELLO -> first avatar frame at the Stream
receiver, with a warm pooled LiveAvatar session and cold, under the same modelled start path
(the LiveAvatar stand-in's ``realistic`` profile: token, start, ``connected``, the avatar
joining its room and its first keyframe; see ``bridge.sim.liveavatar.StartDelays``).

Per media path: one daemon without a pool (every HELLO starts cold) and one with
``pool.size=1`` (each HELLO after the pool refilled takes a warm session), ``repeat`` sessions
each, one after the other; a warm session is taken once it has been in the pool for
``SETTLED_S`` (the measurement is ``bridge.sim.first_frame``, shared with ``demo --continuity``).

Handover, per media path: one call of ``CALL_S`` (3 minutes; ``QUICK_CALL_S`` in quick mode) across
a ``CAP_S`` cap (planned switches ``MARGIN_S`` before it) and one injected provider drop, the
client speaking in turns of coded beeps (beep k at its own tone, ``bridge.sim.marks.coded_beeps``):
``switch_gap_ms`` (planned, p50/max, as the daemon measured it), ``recovery_gap_ms`` (the unplanned
switch's picture gap) and ``recovery_s`` (drop -> the client's ``avatar_handover``),
``participants_seen`` (the bridge's joins of the call), ``errors``, and at the Stream stand-in's
receiver: ``audio_lost_ms`` (audio packets missing from the sequence on the wire, 20 ms each),
``beeps`` (which beeps the receiver heard and how often each avatar's renderer played them: every
beep not played once and heard once is listed with its turn and where it was, at the call's start,
near a switch, at the end or mid-call; a drop mid-turn re-speaks the unspoken rest of the turn on
the next avatar, ``bridge/liveavatar/respeak.py``, so a beep heard twice is a word re-spoken
twice), ``beeps_heard`` (all onsets, the older count), ``skew_after_switch_ms`` (the A/V skew of
the marks within ``SKEW_WINDOW_S`` after each switch, p50 signed, p95/p99 of the magnitude; goal
|p95| <= 20, |p99| <= 40 ms; the marks before the first switch as the baseline), the daemon's own
audio drops per second of the call (``sync_audio_dropped``, PCM-queue overflows) and the wire
``continuity`` per track (SSRCs, largest sequence step, SR jumps).

The handover call is also watched by a browser (headless Chromium running Stream's own browser
SDK, :mod:`bridge.sim.browser_viewer`): ``viewer_skew_after_switch_ms`` is the same figure as
``skew_after_switch_ms`` at the browser's playout, where the goals are judged (the stand-in's
arrival figure stays as a diagnostic: it has no jitter buffers), with the viewer's first frame
and its freezes, each freeze put down to the switch it is near, and its receivers' jitter-buffer
delays per second (``viewer.jitter_buffer_ms``: what moves the browser's figure, Chromium not
lip-syncing Stream's tracks). The viewer's marks and freezes
are timed on the page's ``performance.now()``, mapped onto this process's ``time.monotonic()``
(the client's ``avatar_handover`` times) by one clock read before the call
(``BrowserViewer.clock``: the page read between two host reads, off by at most half that round
trip, reported as ``clock_uncertainty_ms``); the same read after the call gives the drift over
the call (``clock_drift_ms``, ~0: both are the system's monotonic clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import driver, latency
from bridge.client import BridgeClient, stream_pcm_realtime
from bridge.config import StreamConfig
from bridge.protocol import EventMsg
from bridge.sim import browser_viewer, first_frame, marks
from bridge.sim.liveavatar import StandInOptions
from bridge.sim.stack import DaemonProcess, StandIns

VARIANT = "360p30-VP8"
BRIDGE_USER: str = StreamConfig.model_fields["user_id"].default  # the daemon's Stream user
PROFILE = first_frame.START_PROFILE


async def scenario(r: Any) -> dict[str, Any]:
    runs = r.plan.repeat
    out: dict[str, Any] = {"start_profile": PROFILE, "runs_per_figure": runs}
    for path in ("relay", "transcode"):
        for warm in (False, True):
            label = f"{'warm' if warm else 'cold'}_{path}"
            r.say(f"continuity: first frame, {label}")
            out[label] = await r._guarded(first_frames(path, warm, runs, r.workroot))
    for path in ("relay", "transcode"):
        r.say(f"continuity: handover, {path}")
        out[f"handover_{path}"] = await r._guarded(
            handover_call(r.workroot, path=path, quick=r.plan.quick)
        )
    for p in ("relay", "transcode"):
        h = out[f"handover_{p}"]
        out.setdefault("skew_after_switch_ms", {})[p] = h.get("skew_after_switch_ms", {}).get(
            "all_after_switches"
        )
        viewer = h.get("viewer") or {}
        out.setdefault("viewer_skew_after_switch_ms", {})[p] = (
            viewer.get("skew_after_switch_ms") or {}
        ).get("all_after_switches")
        beeps = h.get("beeps", {})
        out.setdefault("speech", {})[p] = {
            k: beeps.get(k) for k in ("sent", "lost", "heard_twice_or_more", "not_played")
        }
    relay_warm, relay_cold = out["warm_relay"], out["cold_relay"]
    out["first_frame_warm_s"] = relay_warm.get("p50_s")
    out["first_frame_cold_s"] = relay_cold.get("p50_s")
    # Per path, from the handover calls (helper figures such as first_sound_ms sit beside these).
    for key in ("switch_gap_ms", "recovery_s", "audio_lost_ms", "participants_seen"):
        out[key] = {p: out[f"handover_{p}"].get(key) for p in ("relay", "transcode")}
    out.update(await latency.figures(r))  # part 3: first_sound_ms, barge_in_ms (bench/latency.py)
    return out


async def first_frames(path: str, warm: bool, runs: int, workroot: Path) -> dict[str, Any]:
    """The bench's variant of :func:`bridge.sim.first_frame.first_frames` (the demo's too)."""
    v = driver.VARIANTS[VARIANT]
    workdir = Path(tempfile.mkdtemp(prefix=f"continuity-{path}-", dir=workroot))
    return await first_frame.first_frames(
        path,
        warm,
        runs,
        workdir,
        daemon_flags=v.daemon_flags(),
        stream_codec=v.codec,
        render_latency_s=driver.RENDER_LATENCY_S,
    )


def _log_t(entry: dict[str, Any]) -> float:
    """A daemon log entry's wall time (its ISO timestamp, UTC)."""
    stamp = str(entry.get("timestamp", "")).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp() if stamp else 0.0


def _logged(daemon: DaemonProcess, event: str) -> list[dict[str, Any]]:
    """The daemon's JSON log lines of ``event``."""
    out = []
    if daemon.log_path.exists():
        for raw in daemon.log_path.read_bytes().splitlines():
            if f'"event": "{event}"'.encode() in raw:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(raw))
    return out


CAP_S = 60  # the sandbox cap
QUICK_CAP_S = 30  # liveavatar.max_session_duration's minimum
MARGIN_S = 10
CALL_S = 180.0
QUICK_CALL_S = 45.0
DROP_AT = 0.7  # of the call
TURN_S = 3.0
# Skew after a switch: the marks whose flash the receiver saw within this long after the
# client's avatar_handover (or until the next switch, when sooner).
SKEW_WINDOW_S = 10.0
# A lost or doubled beep is put down to a switch when it was sent within this window around the
# switch's avatar_handover (its turn is played out ~0.7 s after it is sent; a turn lasts TURN_S).
NEAR_SWITCH_S = (-(TURN_S + 2.0), 2.0)
# A viewer's freeze is put down to a switch when the frame ending it was shown within this window
# around the switch's avatar_handover (the picture switches before the event: on the transcode
# path a planned switch's drain holds the event up to 1.5 s after it).
FREEZE_NEAR_SWITCH_S = (-2.0, 2.0)
# Beeps sent this early in the call are put down to its start (the Stream publisher's first
# writes block while its connection comes up: docs/continuity.md).
CALL_START_S = 8.0


async def handover_call(
    workroot: Path, *, path: str, quick: bool, pool: bool = True, viewer: bool = True
) -> dict[str, Any]:
    """One handover call (module docstring); with ``viewer``, watched by a browser too (its
    figures in ``viewer``, or why it could not run in ``viewer.error``)."""
    v = driver.VARIANTS[VARIANT]
    call_s = QUICK_CALL_S if quick else CALL_S
    cap_s = QUICK_CAP_S if quick else CAP_S
    workdir = Path(tempfile.mkdtemp(prefix="continuity-handover-", dir=workroot))
    flags = [
        *v.daemon_flags(),
        "--set", f"output.media_path={path}",
        "--set", f"liveavatar.handover_margin_s={MARGIN_S}",
        "--set", f"liveavatar.max_session_duration={cap_s}",
    ]  # fmt: skip
    if pool:
        # The next avatar comes from the pool, its room joined for this path (adopted by the
        # switch); a warm session is handed out with at least half a cap left.
        flags += ["--set", "pool.size=1", "--set", f"pool.min_remaining_s={cap_s // 2}"]
    options = StandInOptions(sandbox_max_duration_s=cap_s)
    why_not = browser_viewer.unavailable() if viewer else "not asked"
    async with (
        StandIns(
            render_latency_s=driver.RENDER_LATENCY_S, stream_codec=v.codec, liveavatar=options
        ) as sim,
        contextlib.AsyncExitStack() as stack,
    ):
        daemon = DaemonProcess(workdir, sim.daemon_env(), *flags)
        handovers: list[dict[str, Any]] = []
        errors: list[str] = []
        drop_t = 0.0
        await daemon.start()
        try:
            client = await BridgeClient.connect(daemon.socket)
            call = "continuity-handover"
            await asyncio.wait_for(client.hello(f"default:{call}", driver.CLIENT_FMT), 30)
            watcher, viewer_out = await _watch(stack, sim, call, why_not)
            current: list[str] = []

            async def read() -> None:
                async for m in client.messages():
                    if isinstance(m, EventMsg):
                        if m.event == "liveavatar_session":
                            current.append(str(m.fields["session_id"]))
                        if m.event == "avatar_handover":
                            handovers.append({**m.fields, "t": time.monotonic()})
                            current.append(str(m.fields["liveavatar_session"]))
                    else:
                        errors.append(f"{m.code}: {m.message}")

            reader = asyncio.create_task(read())
            clock: browser_viewer.PageClock | None = None
            receivers: list[tuple[float, dict[str, Any]]] = []
            sampler: asyncio.Task[None] | None = None
            if watcher is not None:
                await watcher.reset()
                clock = await watcher.clock()
                sampler = asyncio.create_task(_sample_receivers(watcher, receivers, call_s))
            t0, wall0 = time.monotonic(), time.time()
            dropped = False
            per_turn = max(1, int(TURN_S * 1000 / driver.BEEP_PERIOD_MS))
            beeps_sent = 0
            turn_starts: list[float] = []  # monotonic time each turn's first byte was sent
            sim.stream.reset_measure("default", call)
            while time.monotonic() - t0 < call_s:  # bounded: the call's length
                # Coded beeps (one tone per beep number): the receiver tells which it heard.
                turn = marks.coded_beeps(
                    driver.CLIENT_FMT.sample_rate,
                    beeps_sent,
                    per_turn,
                    driver.BEEP_PERIOD_MS,
                    driver.BEEP_MS,
                ).tobytes()
                turn_starts.append(time.monotonic())
                beeps_sent += per_turn
                await stream_pcm_realtime(client, turn, driver.CLIENT_FMT, 20)
                await client.end_turn()
                await asyncio.sleep(1.0)
                if not dropped and time.monotonic() - t0 > call_s * DROP_AT and current:
                    drop_t = time.monotonic()
                    await sim.liveavatar.drop(current[-1])
                    dropped = True
            await asyncio.sleep(2.0)
            if sampler is not None:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            if watcher is not None and clock is not None:
                viewer_out.update(await _viewer_figures(watcher, clock, t0, handovers))
                viewer_out["jitter_buffer_ms"] = jitter_buffer_by_second(
                    [(t - t0, stats) for t, stats in receivers], [h["t"] - t0 for h in handovers]
                )
            stats = sim.stream.stats("default", call)
            measure = sim.stream.measure("default", call)
            heard = [(t, hz) for t, hz in measure.onset_tones if t >= t0]
            timed_skews = measure.timed_skews_ms()
            played: list[tuple[float, float, int]] = []  # (time, hz, avatar's index in the call)
            for i, sid in enumerate(dict.fromkeys(current)):
                la = sim.liveavatar.sessions.get(sid)
                renderer = la.renderer if la is not None else None
                origin = driver.media_origin(sim, sid)
                if renderer is not None and origin is not None:
                    played += [(origin + m, hz, i) for m, hz in renderer.onset_tones]
            await client.close()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        finally:
            await daemon.stop()
    switches = _logged(daemon, "relay_avatar_switched")
    # Audio the daemon dropped (the sync stage's queue full: the publisher blocked; the Stream
    # SDK's PCM queue overflowing), per second of the call: where a beep can have gone.
    audio_dropped: dict[int, float] = {}
    for e in _logged(daemon, "sync_audio_dropped"):
        at = int(_log_t(e) - wall0)
        audio_dropped[at] = round(audio_dropped.get(at, 0.0) + float(e.get("ms", 0.0)), 1)
    overflows = [round(_log_t(e) - wall0, 1) for e in _logged(daemon, "stream_pcm_queue_overflow")]
    planned = [h["gap_ms"] for h in handovers if h["reason"] == "cap" and h["gap_ms"] is not None]
    lost = [h for h in handovers if h["reason"] == "lost"]
    parts = stats.get("participants") or [{}]
    continuity = parts[0].get("continuity", {})
    audio = continuity.get("audio", {})
    return {
        "path": path,
        "call_s": call_s,
        "cap_s": cap_s,
        "margin_s": MARGIN_S,
        "handovers": len(handovers),
        "switch_gap_ms": {
            "p50": round(statistics.median(planned), 1) if planned else None,
            "max": round(max(planned), 1) if planned else None,
            "samples": planned,
        },
        "pool": pool,
        "warm_switches": sum(1 for h in handovers if h.get("warm")),
        "prepare_s": [h.get("prepare_s") for h in handovers],
        # The relay's breakdown of each switch's gap (relay_avatar_switched in the daemon log).
        "switch_trace": [
            {
                k: e.get(k)
                for k in (
                    "gap_ms",
                    "keyframe_rtt_ms",
                    "old_last_sent_before_keyframe_ms",
                    "old_last_in_before_keyframe_ms",
                    "keyframe_in_to_sent_ms",
                    "at_keyframe",
                )
            }
            for e in switches
        ],
        "recovery_gap_ms": lost[0]["gap_ms"] if lost else None,
        "recovery_s": round(lost[0]["t"] - drop_t, 3) if lost and drop_t else None,
        # The bridge's joins only: the browser viewer watching the call joins it too.
        "participants_seen": (stats.get("joins_by_user") or {}).get(BRIDGE_USER),
        "audio_lost_ms": 20 * audio["lost"] if "lost" in audio else None,
        "beeps_sent": beeps_sent,
        "beeps_heard": stats.get("audio", {}).get("onsets"),
        "beeps": beep_accounting(
            beeps_sent,
            per_turn,
            [t - t0 for t in turn_starts],
            [(t - t0, hz) for t, hz in heard],
            [(t - t0, hz, i) for t, hz, i in played if t >= t0],
            [(h["t"] - t0, str(h["reason"])) for h in handovers],
        ),
        "skew_after_switch_ms": skew_after_switches(
            [(t - t0, sk) for t, sk in timed_skews if t >= t0],
            [h["t"] - t0 for h in handovers],
        ),
        "continuity": {
            kind: {k: c.get(k) for k in ("ssrcs", "max_seq_step", "lost", "max_sr_jump_s")}
            for kind, c in continuity.items()
        },
        "viewer": viewer_out,
        "daemon_audio_dropped_ms_by_second": audio_dropped,
        "pcm_queue_overflows_at_s": overflows,
        "errors": errors,
    }


async def _watch(
    stack: contextlib.AsyncExitStack, sim: StandIns, call: str, why_not: str | None
) -> tuple[browser_viewer.BrowserViewer | None, dict[str, Any]]:
    """A browser joined to the call as a viewer, and its figures so far (its first frame), or
    None and why not: the call's other figures stand without it."""
    if why_not is not None:
        return None, {"error": why_not}
    try:
        watcher = await stack.enter_async_context(
            browser_viewer.BrowserViewer(sim.stream, "default", call)
        )
        await watcher.join()
        return watcher, {"first_frame_s": await watcher.first_frame_s()}
    except Exception as exc:
        return None, {"error": f"{type(exc).__name__}: {exc}"[:500]}


async def _viewer_figures(
    watcher: browser_viewer.BrowserViewer,
    clock: browser_viewer.PageClock,
    t0: float,
    handovers: list[dict[str, Any]],
) -> dict[str, Any]:
    """The viewer's skew after each switch and its freezes, on the call's time (s since t0)."""
    seen = await watcher.timeline()
    report = await watcher.report()
    after = await watcher.clock()

    def call_s(page_ms: float) -> float:
        return clock.host_s(page_ms) - t0

    switches = [h["t"] - t0 for h in handovers]
    freezes = [(call_s(float(f["at"])), float(f["ms"])) for f in seen["freezes"]]
    return {
        "skew_after_switch_ms": skew_after_switches(
            [(call_s(float(m["at"])), float(m["skewMs"])) for m in seen["marks"]], switches
        ),
        "skew_ms": {k: v for k, v in report["skew_ms"].items() if k != "values"},
        "freezes": report["freezes"],
        "freezes_near_switches": freezes_near_switches(freezes, switches),
        "fps": report["fps"],
        "frames_not_presented": report["frames_not_presented"],
        "onsets_uncertain": report["onsets_uncertain"],
        "receiver_delays_ms": report["receiver_delays_ms"],
        "decoder": report["decoder"],
        "method": report["method"],
        "clock_uncertainty_ms": round(clock.uncertainty_ms, 2),
        "clock_drift_ms": round(1000 * (after.offset_s - clock.offset_s), 2),
    }


RECEIVER_PERIOD_S = 1.0


async def _sample_receivers(
    watcher: browser_viewer.BrowserViewer,
    out: list[tuple[float, dict[str, Any]]],
    call_s: float,
) -> None:
    """The viewer's receiver stats every RECEIVER_PERIOD_S (until cancelled, or the call's
    length and a minute past it)."""
    for _ in range(int((call_s + 60) / RECEIVER_PERIOD_S)):  # bounded
        with contextlib.suppress(Exception):  # a read that fails leaves a hole, not an error
            out.append((time.monotonic(), await watcher.receiver_stats()))
        await asyncio.sleep(RECEIVER_PERIOD_S)


# Around each switch: the viewer's jitter buffers this long before its avatar_handover and
# SKEW_WINDOW_S after it (a skew after a switch is their difference moving).
JB_BEFORE_S = 3.0


def jitter_buffer_by_second(
    samples: list[tuple[float, dict[str, Any]]], switches: list[float]
) -> dict[str, Any]:
    """The viewer's mean jitter-buffer delay per kind between consecutive getStats samples
    (``samples``: call time, the page's receiverStats), in ms, and per switch its mean over
    JB_BEFORE_S before and SKEW_WINDOW_S after: whether a skew after a switch is the browser's
    receivers moving (e.g. NetEq raising its target after a gap in the audio)."""
    series: list[dict[str, Any]] = []
    for (_, a), (t, b) in itertools.pairwise(samples):
        row: dict[str, Any] = {"t": round(t, 1)}
        for kind in ("audio", "video"):
            ka, kb = a.get(kind) or {}, b.get(kind) or {}
            try:
                emitted = kb["jitterBufferEmittedCount"] - ka["jitterBufferEmittedCount"]
                delay = kb["jitterBufferDelay"] - ka["jitterBufferDelay"]
            except (KeyError, TypeError):
                row[kind] = None
                continue
            row[kind] = round(1000 * delay / emitted, 1) if emitted > 0 else None
        series.append(row)

    def mean(kind: str, lo: float, hi: float) -> float | None:
        # A row covers the second that ends at its ``t``.
        values = [r[kind] for r in series if lo < r["t"] <= hi and r[kind] is not None]
        return round(statistics.fmean(values), 1) if values else None

    per = [
        {
            "at_s": round(t, 1),
            **{
                f"{kind}_{when}": mean(kind, *span)
                for kind in ("audio", "video")
                for when, span in (
                    ("before", (t - JB_BEFORE_S, t)),
                    ("after", (t, t + SKEW_WINDOW_S)),
                )
            },
        }
        for t in switches
    ]
    return {"per_switch": per, "by_second": series}


def freezes_near_switches(
    freezes: list[tuple[float, float]], switches: list[float]
) -> dict[str, Any]:
    """Every freeze (the call's time of the frame that ended it, its gap in ms) with the switch
    it is near (``FREEZE_NEAR_SWITCH_S`` around its avatar_handover) or none; per switch the
    count and the longest gap."""
    counts = [0] * len(switches)
    longest: list[float | None] = [None] * len(switches)
    listed = []
    for at, ms in freezes:
        lo, hi = FREEZE_NEAR_SWITCH_S
        near = next((i for i, t in enumerate(switches) if lo <= at - t <= hi), None)
        listed.append({"at_s": round(at, 2), "ms": round(ms, 1), "switch": near})
        if near is not None:
            counts[near] += 1
            longest[near] = max(longest[near] or 0.0, ms)
    return {
        "per_switch": [
            {
                "at_s": round(t, 1),
                "freezes": n,
                "longest_ms": None if top is None else round(top, 1),
            }
            for t, n, top in zip(switches, counts, longest, strict=True)
        ],
        "away_from_switches": sum(1 for f in listed if f["switch"] is None),
        "all": listed,
    }


def number_beeps(ids: list[int | None], first: int = 0) -> list[int | None]:
    """Absolute beep numbers from coded-tone ids (``marks.TONE_IDS`` apart), in the order heard:
    each id is taken as the number nearest the previous one (forward when it is half the id
    space ahead or less, else backward: a beep heard again). None (no tone read) stays None
    unless its neighbours are two apart."""
    n = marks.TONE_IDS
    prev = first - 1
    out: list[int | None] = []
    for k in ids:
        if k is None:
            out.append(None)
            continue
        d = (k - prev) % n
        if d > n // 2:
            d -= n
        prev += d
        out.append(prev)
    # A tone not read between two beeps one apart is the beep between them.
    for i in range(1, len(out) - 1):
        before, after = out[i - 1], out[i + 1]
        if out[i] is None and before is not None and after == before + 2:
            out[i] = before + 1
    return out


def beep_accounting(
    sent: int,
    per_turn: int,
    turn_starts: list[float],
    heard: list[tuple[float, float]],
    played: list[tuple[float, float, int]],
    switches: list[tuple[float, str]],
) -> dict[str, Any]:
    """Which coded beeps the Stream receiver heard (``heard``: onset time, tone Hz) and the
    avatars played (``played``: onset time, tone Hz, avatar index), against the ``sent`` ones:
    every beep not heard once, with where it was (its turn, the switch near it, the end of the
    call) and how often each avatar played it. Times in seconds since the call's start."""
    period_s = TURN_S / per_turn

    def numbered(events: list[tuple[float, float]]) -> tuple[dict[int, int], int]:
        ids = [marks.tone_id(hz) for _, hz in sorted(events)]
        counts: dict[int, int] = {}
        for k in number_beeps(ids):
            if k is not None:
                counts[k] = counts.get(k, 0) + 1
        return counts, ids.count(None)

    heard_n, heard_unread = numbered(heard)
    by_avatar: dict[int, dict[int, int]] = {}
    for a in sorted({i for _, _, i in played}):
        # Each avatar numbered on its own: its first beep is the one nearest the first heard
        # after it started (a renderer's onsets are few and in order).
        onsets = sorted((t, hz) for t, hz, i in played if i == a)
        ids = [marks.tone_id(hz) for _, hz in onsets]
        start = _expected_beep(onsets[0][0], turn_starts, per_turn, period_s) if onsets else 0
        first_id = next((k for k in ids if k is not None), None)
        base = start
        if first_id is not None:
            d = (first_id - start) % marks.TONE_IDS
            base = start + (d - marks.TONE_IDS if d > marks.TONE_IDS // 2 else d)
        counts: dict[int, int] = {}
        for k in number_beeps(ids, base):
            if k is not None:
                counts[k] = counts.get(k, 0) + 1
        by_avatar[a] = counts

    def where(k: int) -> str:
        turn = k // per_turn
        sent_t = turn_starts[turn] + (k % per_turn) * period_s if turn < len(turn_starts) else 0.0
        for t, reason in switches:
            if NEAR_SWITCH_S[0] <= t - sent_t <= NEAR_SWITCH_S[1]:
                return f"switch:{reason}@{t:.1f}s"
        if sent_t < CALL_START_S:
            return "call_start"
        if turn >= len(turn_starts) - 1:
            return "end_of_call"
        return "mid_call"

    odd = []
    for k in range(sent):
        if heard_n.get(k, 0) == 1 and sum(c.get(k, 0) for c in by_avatar.values()) == 1:
            continue  # played once, heard once
        odd.append(
            {
                "beep": k,
                "turn": k // per_turn,
                "heard": heard_n.get(k, 0),
                "played": {a: c[k] for a, c in by_avatar.items() if k in c},
                "where": where(k),
            }
        )
    extra = sorted(k for k in heard_n if not 0 <= k < sent)
    return {
        "sent": sent,
        "heard_once": sum(1 for k in range(sent) if heard_n.get(k, 0) == 1),
        "lost": sum(1 for k in range(sent) if k not in heard_n),
        "heard_twice_or_more": sum(1 for k in range(sent) if heard_n.get(k, 0) > 1),
        "played_twice_or_more": sum(
            1 for k in range(sent) if sum(c.get(k, 0) for c in by_avatar.values()) > 1
        ),
        "not_played": sum(1 for k in range(sent) if all(k not in c for c in by_avatar.values())),
        "unread_tones_heard": heard_unread,
        "numbers_out_of_range": extra,
        "anomalies": odd,
    }


def _expected_beep(t: float, turn_starts: list[float], per_turn: int, period_s: float) -> int:
    """The beep sent last at or before ``t`` (an avatar plays a beep after it was sent)."""
    best = 0
    for turn, start in enumerate(turn_starts):
        for j in range(per_turn):
            if start + j * period_s <= t:
                best = turn * per_turn + j
    return best


def skew_after_switches(timed: list[tuple[float, float]], switches: list[float]) -> dict[str, Any]:
    """A/V skew of the marks after each switch (``timed``: flash time, skew ms; ``switches``:
    the client's avatar_handover times), each over SKEW_WINDOW_S or until the next switch, and
    over all of them together; the marks before the first switch as the baseline."""
    per: list[dict[str, Any]] = []
    after: list[float] = []
    for i, t in enumerate(switches):
        end = min(t + SKEW_WINDOW_S, switches[i + 1] if i + 1 < len(switches) else float("inf"))
        skews = [sk for ft, sk in timed if t <= ft < end]
        after += skews
        per.append({"at_s": round(t, 1), **driver.skew_stats(skews)})
    first = switches[0] if switches else float("inf")
    return {
        "window_s": SKEW_WINDOW_S,
        "goal": {"p95": 20, "p99": 40},
        "per_switch": per,
        "all_after_switches": driver.skew_stats(after),
        "before_first_switch": driver.skew_stats([sk for ft, sk in timed if ft < first]),
    }


def markdown_lines(continuity: dict[str, Any]) -> list[str]:
    """The handover section of docs/performance.md (issue 17, part 2), from ``handover_<path>``."""
    paths = [
        p for p in ("relay", "transcode") if "handovers" in continuity.get(f"handover_{p}", {})
    ]
    if not paths:
        return []

    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    def row(title: str, get: Any) -> str:
        return (
            f"| {title} | " + " | ".join(f(get(continuity[f"handover_{p}"])) for p in paths) + " |"
        )

    def beeps(h: dict[str, Any], key: str) -> Any:
        return (h.get("beeps") or {}).get(key)

    def skew(h: dict[str, Any], part: str, q: str) -> Any:
        return ((h.get("skew_after_switch_ms") or {}).get(part) or {}).get(q)

    def vskew(h: dict[str, Any], part: str, q: str) -> Any:
        return (((h.get("viewer") or {}).get("skew_after_switch_ms") or {}).get(part) or {}).get(q)

    def vfreezes(h: dict[str, Any]) -> dict[str, Any]:
        return dict((h.get("viewer") or {}).get("freezes_near_switches") or {})

    first = continuity[f"handover_{paths[0]}"]
    return [
        "## Continuity: handover (issue 17, part 2)",
        "",
        f"One {first.get('call_s'):g} s call per path across a {first.get('cap_s')} s cap "
        f"(planned switches {first.get('margin_s')} s before it, from a warm pool) and one "
        "injected provider drop, the client speaking in turns of coded beeps; everything "
        "measured at the Stream stand-in's receiver (`bench/continuity.py`):",
        "",
        "| measure | " + " | ".join(paths) + " |",
        "|---|" + "---|" * len(paths),
        row("switches (planned + the drop)", lambda h: h.get("handovers")),
        row(
            "planned picture gap p50 / max ms (goal <= 100)",
            lambda h: f"{f(h['switch_gap_ms'].get('p50'))} / {f(h['switch_gap_ms'].get('max'))}",
        ),
        row(
            "drop -> recovered s (goal <= 2)",
            lambda h: None if h.get("recovery_s") is None else f"{h['recovery_s']:.3f}",
        ),
        row("audio packets lost on the wire, ms", lambda h: h.get("audio_lost_ms")),
        row("beeps heard once / sent", lambda h: f"{beeps(h, 'heard_once')} / {beeps(h, 'sent')}"),
        row("beeps lost", lambda h: beeps(h, "lost")),
        row("beeps heard twice (a word re-spoken)", lambda h: beeps(h, "heard_twice_or_more")),
        row("participants seen in the call", lambda h: h.get("participants_seen")),
        row(
            "skew p95 / p99 of magnitude ms, 10 s after switches (goal 20 / 40)",
            lambda h: (
                f"{f(skew(h, 'all_after_switches', 'p95'))} / "
                f"{f(skew(h, 'all_after_switches', 'p99'))}"
            ),
        ),
        row(
            "skew p95 / p99 of magnitude ms, before the first switch",
            lambda h: (
                f"{f(skew(h, 'before_first_switch', 'p95'))} / "
                f"{f(skew(h, 'before_first_switch', 'p99'))}"
            ),
        ),
        row(
            "browser viewer: skew p95 / p99 ms, 10 s after switches (goal 20 / 40)",
            lambda h: (
                f"{f(vskew(h, 'all_after_switches', 'p95'))} / "
                f"{f(vskew(h, 'all_after_switches', 'p99'))}"
            ),
        ),
        row(
            "browser viewer: skew p95 / p99 ms, before the first switch",
            lambda h: (
                f"{f(vskew(h, 'before_first_switch', 'p95'))} / "
                f"{f(vskew(h, 'before_first_switch', 'p99'))}"
            ),
        ),
        row(
            "browser viewer: freezes near switches / elsewhere",
            lambda h: (
                f"{sum(s['freezes'] for s in vfreezes(h).get('per_switch', []))} / "
                f"{vfreezes(h).get('away_from_switches')}"
            ),
        ),
        row(
            "browser viewer: first frame s", lambda h: (h.get("viewer") or {}).get("first_frame_s")
        ),
        "",
    ]
