"""Scenario 4: side by side with the Vision Agents ``liveavatar`` plugin.

``vision-agents`` 0.6.9 and ``vision-agents-plugins-liveavatar`` need ``getstream[webrtc]>=4.1,<5``,
which conflicts with the bridge's getstream 7.x, so they live in a venv of their own,
``bench/.venv-va`` (gitignored), created here with pip from the registry when missing. Their
process (bench/va_child.py) runs the plugin's unedited ``LiveAvatar`` class against the same
stand-ins with the same beeps, and its CPU is measured from ``/proc`` like the daemon's.

Why not their whole Agent with the getstream edge: an ``Agent`` needs an LLM/TTS stack and Stream's
cloud coordinator flow of getstream 4.x, which the project's Stream stand-in (written against
getstream_rtc 0.1 / getstream 7.x) is not known to serve; so, as issue 9 allows, their per-frame
path is driven through their installed classes and the output tracks are encoded with the aiortc
encoders getstream 4.x's publisher uses (VP8, Opus), without its network send. Both their default
output size (1280x720, which upscales the 360p avatar) and their cheapest (= source size) run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import procstat, report
from bench.driver import FPS, RENDER_LATENCY_S
from bridge.sim.stack import LIVEAVATAR_KEY, StandIns

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-va"
PY = VENV / "bin" / "python"
PACKAGES = ("vision-agents==0.6.9", "vision-agents-plugins-liveavatar==0.6.9")
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 60.0


def ensure_venv(say: Any) -> str | None:
    """Create bench/.venv-va when missing; returns why it cannot be used, or None."""
    check = [str(PY), "-c", "import vision_agents.plugins.liveavatar, aiortc"]
    if PY.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return None
    base = shutil.which("python3.11") or sys.executable
    say(f"creating {VENV} with pip (vision-agents needs getstream 4.x: a venv of its own)")
    try:
        subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True, timeout=120)
        done = subprocess.run(
            [str(PY), "-m", "pip", "install", "--quiet", *PACKAGES],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not create {VENV}: {exc}"
    if done.returncode != 0:
        return f"pip could not install {' '.join(PACKAGES)}: {done.stderr.strip()[-400:]}"
    if subprocess.run(check, capture_output=True, check=False).returncode != 0:
        return "the plugin does not import after installation"
    return None


async def measure_theirs(width: int, height: int, window_s: float) -> dict[str, Any]:
    async with StandIns(render_latency_s=RENDER_LATENCY_S) as sim:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        proc = await asyncio.create_subprocess_exec(
            str(PY), str(HERE / "va_child.py"),
            "--base-url", sim.liveavatar.base_url, "--api-key", LIVEAVATAR_KEY,
            "--quality", "low", "--width", str(width), "--height", str(height),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
            if b"ready" not in line:
                err = (await asyncio.wait_for(proc.stderr.read(), 10)).decode(errors="replace")
                raise RuntimeError(f"their process did not start: {err.strip()[-600:]}")
            await asyncio.sleep(1.0)
            cpu = procstat.CpuWindow({"theirs": proc.pid, "standins": "self"})
            cpu.start()
            await asyncio.sleep(window_s)
            usage = cpu.stop()
            rss = procstat.rss_mb(proc.pid)
        finally:
            proc.stdin.close()
            try:
                out, err_b = await asyncio.wait_for(proc.communicate(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                out, err_b = await proc.communicate()
        done = next((ln for ln in out.decode().splitlines() if '"done"' in ln), "{}")
        return {
            "cpu_pct": usage["theirs"],
            "standin_cpu_pct": usage["standins"],
            "rss_mb": rss,
            "window_s": usage["wall_s"],
            "counters": json.loads(done),
            "exit_code": proc.returncode,
            "stderr_tail": err_b.decode(errors="replace").strip()[-500:],
        }


async def run(runner: Any, daemon_runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    t0 = time.monotonic()
    why = await asyncio.to_thread(ensure_venv, runner.say)
    if why is not None:
        return {"skipped": why}
    window = runner.plan.va_window_s
    rows: list[dict[str, Any]] = []
    ours_runs = daemon_runs.get("360p30-VP8") or daemon_runs.get("360p30-VP9") or []
    ours_variant = "360p30-VP8" if daemon_runs.get("360p30-VP8") else "360p30-VP9"
    ours = report.median_of(ours_runs, "cpu_pct_per_session")
    rows.append(
        {
            "system": "avatar-bridge",
            "config": f"{ours_variant}, 640x360 out",
            "encoder": f"getstream_rtc libvpx {ours_variant[-3:]}",
            "cpu_pct": ours,
            "rss_mb": report.median_of(ours_runs, "rss_mb"),
            "frames_received": report.median_of(ours_runs, "frames", "received"),
            "frames_expected": report.median_of(ours_runs, "frames", "expected"),
            "e2e_latency_p50_ms": report.median_of(ours_runs, "e2e_video_latency_ms", "p50"),
        }
    )
    theirs: dict[str, dict[str, Any]] = {}
    for label, (w, h) in (("cheapest", (640, 360)), ("default", (1280, 720))):
        runner.say(f"side by side: Vision Agents plugin, {label} ({w}x{h} out)")
        res = await runner._guarded(measure_theirs(w, h, window))
        theirs[label] = res
        counters = res.get("counters", {})
        rows.append(
            {
                "system": "Vision Agents liveavatar 0.6.9",
                "config": f"{label}: 360p avatar, {w}x{h} out",
                "encoder": "aiortc VP8 (libvpx) + Opus, no network send",
                "cpu_pct": res.get("cpu_pct"),
                "rss_mb": res.get("rss_mb"),
                "frames_received": counters.get("video_in"),
                "frames_expected": None,
                "error": res.get("error"),
            }
        )
    cheapest = theirs.get("cheapest", {}).get("cpu_pct")
    ratio = round(ours / cheapest, 2) if ours and cheapest else None
    for row in rows[1:]:
        if row.get("cpu_pct") and ours:
            verdict = report.judge(ours / row["cpu_pct"], 0.5, "x")
            row["goal"] = f"ours/theirs {ours / row['cpu_pct']:.2f}: {verdict}"
    return {
        "variant": ours_variant,
        "rows": rows,
        "theirs": theirs,
        "cpu_ratio_ours_theirs": ratio,
        "cpu_ratio_ours_theirs_default": (
            round(ours / theirs["default"]["cpu_pct"], 2)
            if ours and theirs.get("default", {}).get("cpu_pct")
            else None
        ),
        "note": "against their cheapest configuration (output = source size); their frames "
        f"are counted at the encoder over the whole run; window {window:g} s, {FPS} fps",
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
