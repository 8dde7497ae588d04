"""The ``viewer`` scenario: lip sync at a browser's playout, on both media paths.

One session of 360p30-VP8 per run (the avatar's codec and size: ``auto`` relays it), watched by
headless Chromium running Stream's browser SDK (:mod:`bridge.sim.browser_viewer`), ``repeat``
runs per path, relay (the default) and transcode interleaved. Per path: the median over the runs
of the viewer's |skew| p50/p95/p99 and first-10 s p95, the receivers' jitter-buffer delays
(getStats) and the arrival skew at the Stream stand-in (a diagnostic). The goals
``viewer_skew_p95/p99`` are judged on the worse path (bench/report.py). Without Chromium each
run says why in ``viewer.error`` and the goals stay "not measured".
"""

from __future__ import annotations

from typing import Any

from bench import driver, report

VARIANT = "360p30-VP8"
PATHS = ("relay", "transcode")
# The goals are judged over >= 40 marks at the viewer: 60 beeps (500 ms apart) leave room for
# those a loaded machine loses (20 s windows gave 23-35).
MIN_WINDOW_S = 30.0


async def scenario(r: Any) -> dict[str, Any]:
    v = driver.VARIANTS[VARIANT]
    window_s = r.plan.window_s if r.plan.quick else max(r.plan.window_s, MIN_WINDOW_S)
    paths_run = getattr(r.plan, "paths", PATHS)
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in paths_run}
    for rep in range(r.plan.repeat):
        for path in paths_run:
            r.say(f"viewer: {path} run {rep + 1}/{r.plan.repeat}")
            runs[path].append(
                await r._guarded(
                    driver.run_daemon(
                        v,
                        1,
                        window_s,
                        barge_in=False,
                        workroot=r.workroot,
                        media_path=path,
                        viewer=True,
                    )
                )
            )
    paths: dict[str, Any] = {}
    for path, rs in runs.items():
        paths[path] = {
            "viewer_skew_ms": {
                q: report.median_of(rs, "viewer", "skew_ms", q) for q in ("p50", "p95", "p99")
            },
            "viewer_marks": report.median_of(rs, "viewer", "skew_ms", "samples"),
            "viewer_first10s_p95_ms": report.median_of(rs, "viewer", "skew_first10s_ms", "p95"),
            "audio_jitter_buffer_ms": report.median_of(
                rs, "viewer", "receiver_delays_ms", "audio", "jitter_buffer_mean"
            ),
            "video_jitter_buffer_ms": report.median_of(
                rs, "viewer", "receiver_delays_ms", "video", "jitter_buffer_mean"
            ),
            "arrival_skew_ms": {
                q: report.median_of(rs, "skew_ms", q) for q in ("p50", "p95", "p99")
            },
            "viewer_errors": [
                run.get("error") or (run.get("viewer") or {}).get("error")
                for run in rs
                if run.get("error") or (run.get("viewer") or {}).get("error")
            ],
            "runs": rs,
        }
    return {"variant": VARIANT, "window_s": window_s, "paths": paths}
