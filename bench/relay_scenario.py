"""The ``relay`` scenario of issue 12, as a hook for ``python -m bench``.

Wire it in ``bench/__main__.py`` with one line: ``SCENARIOS["relay"] = relay_scenario.scenario``
(it takes the same :class:`Runner`). What it measures, in one run:

* the transcode floor for the same variant (360p30, the avatar in VP8, transcoded to VP8) and one
  relay session: ``cpu_pct_per_session``, ``cpu_ratio_vs_floor``;
* relay sessions at 1, 2, 4, 8, 16, 32, 48 (quick: 1, 2) with the stand-ins in their light modes
  (LiveKit encodes once and fans out, Stream counts packets and decodes only the first call): CPU
  and RSS over a steady window, then a second window with one extra session started and stopped
  again and again (CPU apart: ``cpu_pct_with_churn``), until a step loses packets:
  ``max_sessions_no_drops``, ``rss_mb_per_extra_session``, ``loop_lag_p99_ms``, latency and skew
  of the fully measured call, the stand-ins' CPU apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import driver, procstat
from bench.stats import histogram_ms, metric_total
from bridge.client import BridgeClient, RemoteError
from bridge.sim.stack import DaemonProcess, StandIns

VARIANT = "360p30-VP8"
STEPS = (1, 2, 4, 8, 16, 32, 48)
QUICK_STEPS = (1, 2)


async def scenario(r: Any) -> dict[str, Any]:
    plan = r.plan
    v = driver.VARIANTS[VARIANT]
    r.say("relay: transcode floor, one session")
    floor = await r._guarded(
        driver.run_daemon(v, 1, plan.window_s, barge_in=False, workroot=r.workroot)
    )
    steps: list[dict[str, Any]] = []
    best, why = 0, "reached the last step"
    for n in QUICK_STEPS if plan.quick else STEPS:
        r.say(f"relay: {n} sessions")
        step = await r._guarded(run_relay(n, plan.window_s, r.workroot))
        steps.append(step)
        if "error" in step:
            why = f"{n} sessions failed: {step['error']}"
            break
        if step["packets_lost"] > 0 or step["errors"]:
            why = f"{n} sessions lost {step['packets_lost']} packets"
            break
        best = n
    one = steps[0] if steps and "error" not in steps[0] else {}
    floor_cpu = floor.get("cpu_pct")
    per_session = one.get("cpu_pct")
    rss = [(s["sessions"], s["rss_mb"]) for s in steps if "rss_mb" in s]
    per_extra = None
    if len(rss) >= 2:
        (n0, r0), (n1, r1) = rss[0], rss[-1]
        per_extra = round((r1 - r0) / (n1 - n0), 2)
    return {
        "variant": VARIANT,
        "cpu_pct_per_session": per_session,
        "floor_cpu_pct": floor_cpu,
        "cpu_ratio_vs_floor": (
            round(per_session / floor_cpu, 3) if per_session and floor_cpu else None
        ),
        "max_sessions_no_drops": best,
        "stopped_because": why,
        "rss_mb_per_extra_session": per_extra,
        "loop_lag_p99_ms": max(
            (s["loop_lag_ms"]["p99"] or 0.0 for s in steps if "loop_lag_ms" in s), default=None
        ),
        "latency_ms": one.get("e2e_video_latency_ms"),
        "skew_ms": one.get("skew_ms"),
        "floor": floor,
        "steps": steps,
    }


async def run_relay(sessions: int, window_s: float, workroot: Path) -> dict[str, Any]:
    """``sessions`` relay sessions in one daemon, plus one session churning during the window."""
    v = driver.VARIANTS[VARIANT]
    workdir = Path(tempfile.mkdtemp(prefix=f"relay-{sessions}-", dir=workroot))
    async with StandIns(render_latency_s=driver.RENDER_LATENCY_S, stream_codec="VP8") as sim:
        sim.livekit.preencoded = True  # read when rooms are created
        sim.stream.light = True
        daemon = DaemonProcess(
            workdir, sim.daemon_env(), "--max-sessions", str(sessions + 3), *v.daemon_flags()
        )
        clients = [driver.ClientSession(f"relay-{sessions}-{i}") for i in range(sessions)]
        # The first session's renderer feeds the shared encoder: measure that call fully.
        sim.stream.measure_fully("default", clients[0].call_id)
        result: dict[str, Any] = {"sessions": sessions, "media_path": "relay"}
        churned = 0
        try:
            await daemon.start()
            assert daemon.proc is not None
            pid = daemon.proc.pid
            await _open(clients[0], daemon)
            await asyncio.gather(*(_open(c, daemon) for c in clients[1:]))
            await asyncio.sleep(1.0)
            first = clients[0]
            sim.stream.reset_measure(
                "default", first.call_id, driver.media_origin(sim, first.liveavatar_session)
            )
            light0 = _light_totals(sim, clients)
            t0 = time.monotonic()
            # Steady window: the sessions' own cost (what the transcode floor is compared with;
            # the floor run has no churn either), and their RSS.
            cpu = procstat.CpuWindow({"daemon": pid, "standins": "self"})
            cpu.start()
            await asyncio.gather(*(driver._speak(c, driver.beeps(window_s)) for c in clients))
            steady = cpu.stop()
            rss = procstat.rss_mb(pid)
            # Churn window: one more session starting and stopping again and again (its REST,
            # joins and DTLS handshakes); the others must not stall or lose packets.
            before, _ = await driver.scrape(daemon)
            cpu.start()
            stop = asyncio.Event()
            churn = asyncio.create_task(_churn(daemon, sessions, stop))
            await asyncio.gather(*(driver._speak(c, driver.beeps(window_s)) for c in clients))
            stop.set()
            churned = await churn
            usage = cpu.stop()
            after, _ = await driver.scrape(daemon)
            light1 = _light_totals(sim, clients)
            recv = driver.receiver(
                sim.stream.measure("default", first.call_id), time.monotonic() - t0
            )
            result.update(
                window_s=round(steady["wall_s"], 1),
                cpu_pct=steady["daemon"],
                cpu_pct_per_session=round(steady["daemon"] / sessions, 2),
                standin_cpu_pct=steady["standins"],
                cpu_pct_with_churn=usage["daemon"],
                rss_mb=rss,
                loop_lag_ms=histogram_ms(
                    after, before, "bridge_event_loop_lag_seconds", {"p50": 0.5, "p99": 0.99}
                ),
                packets_relayed=metric_total(after, "bridge_relay_packets_total")
                - metric_total(before, "bridge_relay_packets_total"),
                packets_lost=light1["lost"] - light0["lost"],
                packets_received=light1["packets"] - light0["packets"],
                e2e_video_latency_ms=recv["e2e_latency_ms"],
                skew_ms=driver.skew_stats(recv["skews"]),
                frames_full_call=recv["frames"],
                churned_sessions=churned,
                codec=driver.wire_codec(sim, [c.call_id for c in clients], "VP8"),
            )
        finally:
            for c in clients:
                await driver._close(c)
            result["daemon_exit_code"] = await daemon.stop()
        result["errors"] = [e for c in clients for e in c.errors]
    return result


async def _open(c: driver.ClientSession, daemon: DaemonProcess) -> None:
    """HELLO asking for the relay; ready once the avatar is relayed and our participant is up
    (light calls are not decoded, so there is no first frame to wait for)."""
    c.client = await BridgeClient.connect(daemon.socket)
    c.hello_t = time.monotonic()
    await asyncio.wait_for(
        c.client.hello(
            f"default:{c.call_id}", driver.CLIENT_FMT, media_path="relay", client="bench"
        ),
        driver.SESSION_TIMEOUT_S,
    )
    c.reader = asyncio.create_task(c.read(), name=f"bench-read-{c.call_id}")
    await c.until("avatar_ready", "published")


def _light_totals(sim: StandIns, clients: list[driver.ClientSession]) -> dict[str, int]:
    """Packets counted and lost by the Stream stand-in's light taps, over every call."""
    out = {"packets": 0, "lost": 0}
    for c in clients:
        with contextlib.suppress(KeyError):
            for kinds in sim.stream.stats("default", c.call_id)["light"].values():
                for snap in kinds.values():
                    out["packets"] += int(snap["packets"])
                    out["lost"] += int(snap["lost"])
    return out


async def _churn(daemon: DaemonProcess, n: int, stop: asyncio.Event) -> int:
    """Start and stop one more relay session until ``stop``: the others must not stall."""
    count = 0
    while not stop.is_set():
        c = driver.ClientSession(f"relay-{n}-churn-{count}")
        try:
            await _open(c, daemon)
            await asyncio.sleep(1.0)
            count += 1
        except RemoteError:  # busy: the previous churn session is still closing
            await asyncio.sleep(0.5)
        finally:
            await driver._close(c)
    return count
