"""The ``viewer`` scenario: lip sync at a browser's playout, on both media paths.

One session of 360p30-VP8 per run (the avatar's codec and size: ``auto`` relays it), watched by
headless Chromium running Stream's browser SDK (:mod:`bridge.sim.browser_viewer`), ``repeat``
runs per row interleaved: relay (the default path), relay with the avatar published by
libwebrtc (``relay_libwebrtc``, see PATHS) and transcode. Each run's row in ``per_run`` puts the
viewer's constant beside its parts (jitter buffers, the video's received-to-shown time, the
relay's capture alignment). Per path: the median over the runs
of the viewer's |skew| p50/p95/p99 and first-10 s p95, the receivers' jitter-buffer delays
(getStats) and the arrival skew at the Stream stand-in (a diagnostic). The goals
``viewer_skew_p95/p99`` are judged on the worse of the ``JUDGED`` rows (bench/report.py).
Without Chromium each run says why in ``viewer.error`` and the goals stay "not measured".
"""

from __future__ import annotations

from typing import Any

from bench import driver, report

VARIANT = "360p30-VP8"
# Row -> (media path, how the avatar reaches LiveKit). "relay" keeps the stand-in's aiortc
# publisher (the rows before): its SRs carry send times, so the relay's capture alignment has
# nothing to take out there. "relay_libwebrtc": the avatar published by the LiveKit SDK, as
# LiveAvatar's is, whose SRs map to its capture clock (bridge/relay/sender_clock.py).
# "transcode_libwebrtc": the transcode path behind that publisher. The transcode path times its
# video by arrival, not by SRs, so the publisher's own A/V offset reaches the viewer: the aiortc
# publisher sends each 20 ms of audio at its first sample, libwebrtc (a real capture device's
# timing) at its last (docs/sync.md, "The transcode path's constant").
PATHS: dict[str, tuple[str, str | None]] = {
    "relay": ("relay", None),
    "relay_libwebrtc": ("relay", "sdk"),
    "transcode": ("transcode", None),
    "transcode_libwebrtc": ("transcode", "sdk"),
}
# The rows the goals are judged on: the avatar published as LiveAvatar's is (libwebrtc, LiveKit's
# SDK). The aiortc publisher is the stand-in's own cheap one, whose 30 fps rows sit 10-15 ms later
# at the browser (docs/sync.md, "The relay's hold, centred on libwebrtc"): diagnostics.
JUDGED = ("relay_libwebrtc", "transcode_libwebrtc")
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
            media_path, publisher = PATHS[path]
            r.say(f"viewer: {path} run {rep + 1}/{r.plan.repeat}")
            runs[path].append(
                await r._guarded(
                    driver.run_daemon(
                        v,
                        1,
                        window_s,
                        barge_in=False,
                        workroot=r.workroot,
                        media_path=media_path,
                        viewer=True,
                        avatar_publisher=publisher,
                    )
                )
            )
    return {"variant": VARIANT, "window_s": window_s, "paths": summarize(runs)}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per row, its runs' figures (the medians over the runs, each run's line, the runs)."""
    paths: dict[str, Any] = {}
    for path, rs in runs.items():
        paths[path] = {
            "judged": path in JUDGED,
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
            "per_run": [_run_row(run) for run in rs],
            "viewer_errors": [
                run.get("error") or (run.get("viewer") or {}).get("error")
                for run in rs
                if run.get("error") or (run.get("viewer") or {}).get("error")
            ],
            "runs": rs,
        }
    return paths


def _run_row(run: dict[str, Any]) -> dict[str, Any]:
    """One run in a line: the viewer's constant (its median skew) next to what makes it up.
    ``relay_video_minus_audio_ms`` is how much longer the video took from capture (the avatar's
    SRs) to the bridge than the audio in their best cases; with ``relay_aligned`` the relay
    paced that out (``relay_lift_ms``), without it that difference went on to the viewer."""
    viewer = run.get("viewer") or {}
    delays = viewer.get("receiver_delays_ms") or {}
    sync = run.get("relay_sync") or {}
    p50 = (viewer.get("skew_ms") or {}).get("p50")
    audio_jb = (delays.get("audio") or {}).get("jitter_buffer_mean")
    shown = viewer.get("video_shown_after_receive_ms")
    # The constant less the browser's receivers' share (the flash frame's received-to-shown
    # time, less the audio jitter buffer): the A/V offset the packets brought to the browser,
    # which is what a sender controls (docs/sync.md, "The transcode path's constant").
    at_browser = None
    if p50 is not None and shown is not None and audio_jb is not None:
        at_browser = round(p50 - shown + audio_jb, 1)
    return {
        "viewer_skew_p50_ms": p50,
        "arrival_at_browser_ms": at_browser,
        "arrival_skew_p50_ms": (run.get("skew_ms") or {}).get("p50"),
        "viewer_skew_p95_ms": (viewer.get("skew_ms") or {}).get("p95"),
        "audio_jb_ms": audio_jb,
        "video_jb_ms": (delays.get("video") or {}).get("jitter_buffer_mean"),
        "video_shown_after_receive_ms": shown,
        "relay_aligned": bool(sync.get("enabled")) and bool(sync.get("aligned")),
        "relay_video_minus_audio_ms": sync.get("video_minus_audio_transit_ms"),
        "relay_lift_ms": sync.get("lift_ms"),
        "load": run.get("load"),
    }
