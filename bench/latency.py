"""Issue 17 part 3, in the ``continuity`` scenario: first sound and barge-in per media path, and
the first-chunk trade-off.

* ``first_sound_ms``: per path, the client's first AUDIO byte -> first sound at the Stream
  receiver, split into parts measured where they happen (:mod:`bridge.sim.first_sound`); p50 of
  ``turns`` turns of one session, a real-time client (``stream_pcm_realtime``), the default
  ``liveavatar.first_chunk_ms``.
* ``barge_in_ms``: per path, INTERRUPT -> the last old audio at the receiver (the steady-tone
  measure of the single scenario, ``driver._barge_in``), p50/max of ``turns`` interrupts.
* ``first_chunk_tradeoff``: per ``liveavatar.first_chunk_ms`` in :data:`FIRST_CHUNKS`, a
  real-time client whose audio is produced at 1x but delivered with seeded jitter
  (:func:`send_jittered`; the same sequence for every size), the relay path: first sound p50
  and the LiveAvatar stand-in's playback-buffer underruns (bridge/sim/avatar.py), per turn.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from bench import driver
from bridge.client import BridgeClient, stream_pcm_realtime
from bridge.sim import first_sound
from bridge.sim.stack import DaemonProcess, StandIns

VARIANT = "360p30-VP8"
FIRST_CHUNKS = (600, 400, 300, 200, 100)
TURN_S = 4.0
QUIET_S = 1.0  # between turns: the onsets need quiet before the speech
# The client's delivery: each 20 ms frame late by U(0, JITTER_MS), and with STALL_P a stall of
# STALL_MS (what follows it then arrives in a burst). Assumptions for a TTS stream over a
# network, not measured figures.
# A barge-in sample this far before the interrupt means the avatar had not started the tone yet
# (a loaded machine): the last loud audio is the previous run's.
NOT_HEARD_MS = -500.0
SEED = 17
JITTER_MS = 50.0
STALL_P = 0.01
STALL_MS = 200.0


async def figures(r: Any) -> dict[str, Any]:
    """The part-3 keys of the continuity scenario (one dict, merged by the caller)."""
    turns = 2 if r.plan.quick else 5
    sound: dict[str, Any] = {}
    barge: dict[str, Any] = {}
    for path in ("relay", "transcode"):
        r.say(f"continuity: first sound and barge-in, {path}")
        res = await r._guarded(first_sound_and_barge_in(path, turns, r.workroot))
        sound[path] = res.get("first_sound", res)
        barge[path] = res.get("barge_in", res)
    r.say("continuity: first-chunk trade-off (jittered real-time client)")
    tradeoff = await r._guarded(first_chunk_tradeoff(turns, r.workroot))
    return {
        "first_sound_ms": sound,
        "barge_in_ms": barge,
        "first_chunk_tradeoff": tradeoff,
    }


async def _session(
    sim: StandIns, workroot: Path, path: str, *flags: str
) -> tuple[DaemonProcess, driver.ClientSession]:
    v = driver.VARIANTS[VARIANT]
    workdir = Path(tempfile.mkdtemp(prefix=f"latency-{path}-", dir=workroot))
    daemon = DaemonProcess(workdir, sim.daemon_env(), *v.daemon_flags(), *flags)
    await daemon.start()
    c = driver.ClientSession(f"latency-{path}")
    await driver._open(c, daemon, sim, path)
    return daemon, c


async def _turn(
    daemon: DaemonProcess, sim: StandIns, c: driver.ClientSession, path: str, jitter: Any = None
) -> dict[str, Any]:
    """One turn of beeps; its first-sound parts."""
    assert c.client is not None
    await asyncio.sleep(QUIET_S)
    before = await asyncio.to_thread(daemon.metrics)
    pcm = driver.beeps(TURN_S)
    t0 = time.monotonic()
    sending: Coroutine[Any, Any, object] = (
        stream_pcm_realtime(c.client, pcm, driver.CLIENT_FMT, 20)
        if jitter is None
        else send_jittered(c.client, pcm, jitter)
    )
    sender = asyncio.create_task(sending)
    try:
        measure = sim.stream.measure("default", c.call_id)
        await driver.poll(lambda: any(t >= t0 for t in measure.onset_times), 15)
        # Scraped at the first sound, not after the turn: the daemon's onset stamps are the
        # latest, and a loaded machine can stretch a pause inside the turn into a new one.
        await asyncio.sleep(0.3)
        after = await asyncio.to_thread(daemon.metrics)
    finally:
        await sender
    await c.client.end_turn()
    await asyncio.sleep(1.0)  # the turn's tail plays out
    stats = sim.liveavatar.playback_stats(c.liveavatar_session or "")
    return first_sound.parts(
        t0,
        first_sound.first_chunk(before, after),
        first_sound.turn_after(stats, t0),
        first_sound.onsets(after, before, path),
        measure.onset_times,
    )


def _p50(turns: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (*first_sound.PARTS, "total"):
        values = [t[key] for t in turns if t.get(key) is not None]
        out[key] = round(statistics.median(values), 1) if values else None
    out["samples_total"] = [t.get("total") for t in turns]
    return out


async def first_sound_and_barge_in(path: str, turns: int, workroot: Path) -> dict[str, Any]:
    v = driver.VARIANTS[VARIANT]
    async with StandIns(render_latency_s=driver.RENDER_LATENCY_S, stream_codec=v.codec) as sim:
        daemon, c = await _session(sim, workroot, path)
        try:
            measured = [await _turn(daemon, sim, c, path) for _ in range(turns)]
            barge: list[float] = []
            not_heard = 0
            for _ in range(turns):
                ms = await driver._barge_in(c, sim)
                if ms is not None and ms < NOT_HEARD_MS:
                    not_heard += 1  # the tone had not started when interrupted: no figure
                elif ms is not None:
                    barge.append(ms)
        finally:
            await driver._close(c)
            await daemon.stop()
    return {
        "first_sound": {"p50": _p50(measured), "turns": measured},
        "barge_in": {
            "p50": round(statistics.median(barge), 1) if barge else None,
            "max": round(max(barge), 1) if barge else None,
            "samples": barge,
            "tone_not_heard": not_heard,
            "goal_ms": 50,
        },
    }


async def send_jittered(client: BridgeClient, pcm: bytes, rng: random.Random) -> None:
    """Audio produced at 1x (frame i exists at i x 20 ms) delivered late by a seeded jitter, in
    order (a late frame holds back the ones behind it, which then follow in a burst)."""
    n = driver.CLIENT_FMT.sample_rate * 20 // 1000 * 2
    start = time.monotonic()
    due = start
    for i in range(0, len(pcm), n):
        late = rng.uniform(0.0, JITTER_MS) + (STALL_MS if rng.random() < STALL_P else 0.0)
        due = max(due, start + (i // n + 1) * 0.02 + late / 1000)
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await client.send_audio(pcm[i : i + n])


async def first_chunk_tradeoff(turns: int, workroot: Path) -> dict[str, Any]:
    v = driver.VARIANTS[VARIANT]
    rows: list[dict[str, Any]] = []
    for chunk_ms in FIRST_CHUNKS:
        async with StandIns(render_latency_s=driver.RENDER_LATENCY_S, stream_codec=v.codec) as sim:
            flags = ("--set", f"liveavatar.first_chunk_ms={chunk_ms}")
            daemon, c = await _session(sim, workroot, "relay", *flags)
            rng = random.Random(SEED)  # the same delivery for every size
            try:
                measured = [await _turn(daemon, sim, c, "relay", jitter=rng) for _ in range(turns)]
            finally:
                await driver._close(c)
                await daemon.stop()
        totals = [t["total"] for t in measured if t.get("total") is not None]
        underruns = [t.get("underruns") or 0 for t in measured]
        rows.append(
            {
                "first_chunk_ms": chunk_ms,
                "first_sound_p50_ms": round(statistics.median(totals), 1) if totals else None,
                "underruns": sum(underruns),
                "turns": len(measured),
                "turns_with_underruns": sum(1 for u in underruns if u),
                "underruns_per_turn": underruns,
            }
        )
    clean: list[int] = [r["first_chunk_ms"] for r in rows if r["turns"] and r["underruns"] == 0]
    return {
        "client": {
            "seed": SEED,
            "jitter_ms": JITTER_MS,
            "stall_p_per_frame": STALL_P,
            "stall_ms": STALL_MS,
            "turn_s": TURN_S,
            "media_path": "relay",
        },
        "rows": rows,
        "smallest_without_underruns_ms": min(clean) if clean else None,
    }


def markdown_lines(continuity: dict[str, Any]) -> list[str]:
    """The part-3 section of docs/performance.md, from the continuity scenario's keys."""
    sound = continuity.get("first_sound_ms")
    if not isinstance(sound, dict):
        return []

    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)

    paths = [p for p in ("relay", "transcode") if isinstance(sound.get(p), dict)]
    lines = [
        "## Conversation latency (issue 17, part 3)",
        "",
        "The client's first AUDIO byte -> first sound at the Stream receiver, p50 of the turns of "
        "one session (a real-time client, default `liveavatar.first_chunk_ms`, the stand-in's "
        f"{driver.RENDER_LATENCY_S * 1000:g} ms render latency), each part from stamps taken "
        "where it happens (`bridge/sim/first_sound.py`):",
        "",
        "| part (ms) | " + " | ".join(paths) + " |",
        "|---|" + "---|" * len(paths),
    ]
    for key in (*first_sound.PARTS, "total"):
        cells = [f(sound[p].get("p50", {}).get(key)) for p in paths]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    barge = continuity.get("barge_in_ms") or {}
    lines += [
        "",
        "Barge-in, INTERRUPT -> last old audio at the receiver (goal < 50 ms; the bridge stops "
        "forwarding the avatar's old speech itself, `bridge/barge_in.py`):",
        "",
        "| path | p50 ms | max ms | samples | Goals |",
        "|---|---|---|---|---|",
    ]
    for p in ("relay", "transcode"):
        b = barge.get(p) or {}
        worst = b.get("max")
        verdict = "–" if worst is None else "met" if worst < 50 else f"missed by {worst - 50:.1f}"
        lines.append(
            f"| {p} | {f(b.get('p50'))} | {f(worst)} | {b.get('samples', b.get('error', ''))} "
            f"| {verdict} |"
        )
    trade = continuity.get("first_chunk_tradeoff") or {}
    rows = trade.get("rows") or []
    if rows:
        client = trade.get("client", {})
        lines += [
            "",
            "First chunk against underruns of the avatar's playback buffer (the LiveAvatar "
            "stand-in's model), relay path, a real-time client whose audio is produced at 1x and "
            f"delivered with seeded jitter (seed {client.get('seed')}: each 20 ms frame late by "
            f"U(0, {client.get('jitter_ms')}) ms, a {client.get('stall_ms')} ms stall with "
            f"p={client.get('stall_p_per_frame')} per frame; the same sequence for every size):",
            "",
            "| first_chunk_ms | first sound p50 ms | underruns | turns with underruns |",
            "|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['first_chunk_ms']} | {f(row['first_sound_p50_ms'])} | "
                f"{row['underruns']} | {row['turns_with_underruns']}/{row['turns']} |"
            )
        lines += [
            "",
            "Smallest first chunk without underruns: "
            f"**{f(trade.get('smallest_without_underruns_ms'))} ms** (the default of "
            "`liveavatar.first_chunk_ms` is chosen from this table).",
        ]
    return [*lines, ""]
