"""Goals, the results file and the markdown table (docs/performance.md). Pure functions."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

# The project's targets (issue 9). ``limit`` is an upper bound on ``measured``.
GOALS: dict[str, tuple[str, float, str]] = {
    "uplink_added_p99": ("uplink added latency p99", 5.0, "ms"),
    "downlink_added_p95": ("downlink added latency p95", 33.0, "ms"),
    "skew_p95": ("A/V skew magnitude p95", 20.0, "ms"),
    "skew_p99": ("A/V skew magnitude p99", 40.0, "ms"),
    "viewer_skew_p95": ("A/V skew magnitude p95 at the browser's playout", 20.0, "ms"),
    "viewer_skew_p99": ("A/V skew magnitude p99 at the browser's playout", 40.0, "ms"),
    "cpu_over_floor": ("CPU beyond the codec floor", 10.0, "%"),
    "cpu_ratio_va": ("CPU per session, ours / Vision Agents", 0.5, "x"),
    "soak_rss_growth": ("soak RSS growth (last vs first quarter)", 5.0, "%"),
}


def judge(measured: float | None, limit: float, unit: str) -> str:
    """``met``, ``missed by N unit`` or ``not measured``."""
    if measured is None:
        return "not measured"
    if measured <= limit:
        return "met"
    by = measured - limit
    return f"missed by {by:.2f} {unit}" if unit == "x" else f"missed by {by:.1f} {unit}"


def median_of(runs: list[dict[str, Any]], *path: str) -> float | None:
    """Median of a numeric field over repeated runs (None values skipped)."""
    vals = []
    for r in runs:
        v: Any = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, int | float):
            vals.append(float(v))
    return round(statistics.median(vals), 2) if vals else None


def spread(runs: list[dict[str, Any]], *path: str) -> dict[str, float | None]:
    vals = [median_of([r], *path) for r in runs]
    nums = [v for v in vals if v is not None]
    return {
        "min": min(nums) if nums else None,
        "median": round(statistics.median(nums), 2) if nums else None,
        "max": max(nums) if nums else None,
    }


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The goal table: for each goal the worst relevant measurement and its verdict."""
    sc = results.get("scenarios", {})
    single = sc.get("single", {}).get("variants", {})
    rows: list[dict[str, Any]] = []

    def worst(key: str, *path: str) -> tuple[float | None, str]:
        best: tuple[float | None, str] = (None, "")
        for name, v in single.items():
            m = v.get(key) if key else None
            val = median_of(v.get("runs", []), *path) if m is None else m
            if val is not None and (best[0] is None or val > best[0]):
                best = (val, name)
        return best

    def add(goal: str, measured: float | None, where: str, note: str = "") -> None:
        title, limit, unit = GOALS[goal]
        rows.append(
            {
                "goal": goal,
                "title": title,
                "target": f"< {limit:g} {unit}" if unit != "x" else f"<= {limit:g}",
                "measured": measured,
                "where": where,
                "status": judge(measured, limit, unit),
                "note": note,
            }
        )

    v, w = worst("", "uplink_added_ms", "p99")
    add("uplink_added_p99", v, w)
    v, w = worst("", "downlink_added_ms", "p95")
    hold = next((x.get("runs", [{}])[0].get("video_delay_ms") for x in single.values()), None)
    add(
        "downlink_added_p95",
        v,
        w,
        f"includes the deliberate sync hold (output.video_delay_ms {hold:g} ms + the downlink's "
        "audio jitter buffer + the publisher's PCM queue)"
        if hold
        else "",
    )
    v, w = worst("", "skew_ms", "p95")
    add("skew_p95", v, w)
    v, w = worst("", "skew_ms", "p99")
    add("skew_p99", v, w)
    note = "Stream's browser SDK in headless Chromium (bridge/sim/browser_viewer.py)"
    viewer_paths = sc.get("viewer", {}).get("paths", {})
    for q in ("p95", "p99"):
        v, w = worst("", "viewer", "skew_ms", q)
        # The viewer scenario's judged rows count too (bench/viewer_scenario.py JUDGED): the
        # worse of all. A result from before rows were marked has every row judged.
        for path, p in viewer_paths.items():
            if not p.get("judged", True):
                continue
            pv = (p.get("viewer_skew_ms") or {}).get(q)
            if pv is not None and (v is None or pv > v):
                v, w = pv, f"{sc['viewer'].get('variant', '')} {path}".strip()
        add(f"viewer_skew_{q}", v, w, note)
    floor = sc.get("floor", {}).get("variants", {})
    over = [
        (x.get("overhead_pct"), n) for n, x in floor.items() if x.get("overhead_pct") is not None
    ]
    o, n = max(over) if over else (None, "")
    add("cpu_over_floor", o, n, "relative to the floor's CPU, same run")
    va = sc.get("side_by_side", {})
    add("cpu_ratio_va", va.get("cpu_ratio_ours_theirs"), va.get("variant", ""), va.get("note", ""))
    soak = sc.get("soak", {})
    growth = None
    if soak.get("rss_mb_start"):
        growth = round(100 * soak["rss_growth_mb"] / soak["rss_mb_start"], 1)
    add(
        "soak_rss_growth",
        growth,
        f"{soak.get('sessions', '?')} sessions, {soak.get('duration_s', '?')} s" if soak else "",
        ""
        if not soak
        else f"fds +{soak.get('fd_growth')}, tasks +{soak.get('asyncio_task_growth')}",
    )
    return rows


def write_json(results: dict[str, Any], path: Path) -> None:
    """Atomic: a crash mid-write leaves the previous results intact (``*.tmp`` is gitignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _goal_cell(checks: list[tuple[float | None, float, str]]) -> str:
    verdicts = [judge(m, lim, unit) for m, lim, unit in checks]
    missed = [v for v in verdicts if v.startswith("missed")]
    if missed:
        return "; ".join(missed)
    return "met" if any(v == "met" for v in verdicts) else "–"


def _wire(runs: list[dict[str, Any]]) -> str:
    """The codecs the Stream receiver saw on the wire in these runs (flagged when not the one
    the variant's name claims); "?" for runs made before the figure was measured."""
    seen = sorted({c for r in runs for c in (r.get("codec") or {}).get("on_the_wire", [])})
    claimed = {str((r.get("codec") or {}).get("claimed")) for r in runs if r.get("codec")}
    if not seen:
        return "?"
    text = ", ".join(seen)
    return text if set(seen) <= claimed else f"{text} (claimed {', '.join(sorted(claimed))}!)"


def markdown(results: dict[str, Any]) -> str:
    m, sc = results.get("machine", {}), results.get("scenarios", {})
    lines = [
        "# Performance",
        "",
        "Written by `make bench` (`python -m bench`); do not edit by hand. Raw figures:",
        "`bench/results/latest.json`. CPU is % of one core (user + system, all threads, from",
        "`/proc/PID/stat`); the stand-ins run in the benchmark's own process, reported apart.",
        "",
        f"- date: {results.get('date')}",
        f"- command: `{results.get('command')}`" + (" (QUICK)" if results.get("quick") else ""),
        f"- machine: {m.get('cpu')}, {m.get('cores')} cores, Linux {m.get('kernel')}, "
        f"Python {m.get('python')}, load average at start {m.get('loadavg_at_start')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items()),
        "",
    ]
    single = sc.get("single", {}).get("variants", {})
    floor = sc.get("floor", {}).get("variants", {})
    if single:
        lines += [
            "## One session (median of runs)",
            "",
            "| variant | codec on the wire | daemon CPU % | floor CPU % | over floor | "
            "stand-ins CPU % | RSS MB | "
            "uplink p50/p99 ms | downlink p50/p95 ms | skew p50/p95/p99 ms | barge-in ms | "
            "first frame s | drops | browser viewer skew p50/p95/p99 ms | Goals |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, v in single.items():
            runs = v.get("runs", [])

            def med(*p: str, _runs: list[dict[str, Any]] = runs) -> float | None:
                return median_of(_runs, *p)

            fl = floor.get(name, {})
            up99, dn95 = med("uplink_added_ms", "p99"), med("downlink_added_ms", "p95")
            s95, s99 = med("skew_ms", "p95"), med("skew_ms", "p99")
            over = fl.get("overhead_pct")
            goals = _goal_cell(
                [(up99, 5.0, "ms"), (dn95, 33.0, "ms"), (s95, 20.0, "ms"), (s99, 40.0, "ms"),
                 (over, 10.0, "%")]
            )  # fmt: skip
            lines.append(
                f"| {name} | {_wire(runs)} | {_f(med('cpu_pct'))} | {_f(fl.get('cpu_pct'))} | "
                f"{_f(over)} % | {_f(med('standin_cpu_pct'))} | {_f(med('rss_mb'))} | "
                f"{_f(med('uplink_added_ms', 'p50'), 2)} / {_f(up99, 2)} | "
                f"{_f(med('downlink_added_ms', 'p50'))} / {_f(dn95)} | "
                f"{_f(med('skew_ms', 'p50'))} / {_f(s95)} / {_f(s99)} | "
                f"{_f(med('barge_in_ms'))} | {_f(med('first_frame_s'), 2)} | "
                f"{_f(med('drops'), 0)} | {_f(med('viewer', 'skew_ms', 'p50'))} / "
                f"{_f(med('viewer', 'skew_ms', 'p95'))} / {_f(med('viewer', 'skew_ms', 'p99'))} | "
                f"{goals} |"
            )
        lines += [
            "",
            "Downlink added latency is LiveKit frame → Stream write "
            "(`bridge_sync_video_added_seconds`): the deliberate sync hold "
            "(`output.video_delay_ms` plus the downlink's audio jitter buffer and "
            "the publisher's PCM queue, docs/sync.md) plus the lateness past it "
            "(`bridge_sync_video_late_seconds`). Uplink added latency excludes the deliberate "
            "chunking (`bridge_liveavatar_uplink_added_latency_seconds`). Skew is measured at the "
            "Stream stand-in's receiver (flash − beep, negative = picture early); p95/p99 are of "
            "its magnitude.",
            "",
        ]
    if floor:
        lines += [
            "## Codec floor (decode + encode, no bridge logic; median of runs)",
            "",
            "| variant | floor CPU % (min/med/max) | daemon CPU % | overhead | floor RSS MB | "
            "floor skew p50 ms | Goals |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, fl in floor.items():
            sp = fl.get("cpu_pct_spread", {})
            lines.append(
                f"| {name} | {_f(sp.get('min'))} / {_f(fl.get('cpu_pct'))} / {_f(sp.get('max'))} "
                f"| {_f(fl.get('daemon_cpu_pct'))} | {_f(fl.get('overhead_pct'))} % | "
                f"{_f(fl.get('rss_mb'))} | {_f(fl.get('skew_p50_ms'))} | "
                f"{_goal_cell([(fl.get('overhead_pct'), 10.0, '%')])} |"
            )
        lines.append("")
    scaling = sc.get("scaling", {})
    if scaling.get("steps"):
        lines += [
            "## Scaling (concurrent 360p30 VP9 sessions)",
            "",
            "| sessions | daemon CPU % | per session | stand-ins CPU % | RSS MB | frames "
            "received/expected | drops | skew p95 ms | Goals |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for st in scaling["steps"]:
            fr = st.get("frames", {})
            lines.append(
                f"| {st.get('sessions')} | {_f(st.get('cpu_pct'))} | "
                f"{_f(st.get('cpu_pct_per_session'))} | {_f(st.get('standin_cpu_pct'))} | "
                f"{_f(st.get('rss_mb'))} | {fr.get('received')}/{fr.get('expected')} | "
                f"{_f(st.get('drops'), 0)} | {_f(st.get('skew_ms', {}).get('p95'))} | "
                f"{'met' if not st.get('drops') else 'frames dropped'} |"
            )
        lines += [
            "",
            f"Max sessions without drops on this machine: "
            f"**{scaling.get('max_sessions_without_drops')}** "
            f"(stopped: {scaling.get('stopped_because')}).",
            "",
        ]
    va = sc.get("side_by_side", {})
    if va:
        lines += ["## Side by side with the Vision Agents liveavatar plugin", ""]
        if va.get("skipped"):
            lines += [f"Not measured: {va.get('skipped')}", ""]
        else:
            lines += [
                "| system | configuration | encoder | CPU % per session | RSS MB | frames "
                "received/expected | e2e video latency p50 ms | Goals |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for row in va.get("rows", []):
                lines.append(
                    f"| {row.get('system')} | {row.get('config')} | {row.get('encoder')} | "
                    f"{_f(row.get('cpu_pct'))} | {_f(row.get('rss_mb'))} | "
                    f"{row.get('frames_received')}/{row.get('frames_expected')} | "
                    f"{_f(row.get('e2e_latency_p50_ms'))} | {row.get('goal', '–')} |"
                )
            lines += [
                "",
                f"Ratio ours/theirs (CPU per session): **{_f(va.get('cpu_ratio_ours_theirs'), 2)}**"
                f" ({va.get('note', '')})",
                "",
            ]
            relay_cpu = sc.get("relay", {}).get("cpu_pct_per_session")
            theirs = min(
                (r["cpu_pct"] for r in va.get("rows", [])[1:] if r.get("cpu_pct")), default=None
            )
            if relay_cpu and theirs:
                lines += [
                    f"With the bridge's default media path, the encoded relay (same 360p30 VP8 "
                    f"avatar, same run, see the Relay section): {_f(relay_cpu)} % per session, "
                    f"ours/theirs **{relay_cpu / theirs:.2f}** (goal <= 0.5: "
                    f"{judge(relay_cpu / theirs, 0.5, 'x')}).",
                    "",
                ]
    soak = sc.get("soak", {})
    if soak.get("error"):
        lines += ["## Soak", "", f"Failed: {soak['error']}", ""]
    elif soak:
        lines += [
            "## Soak",
            "",
            "| sessions | duration s | daemon CPU % | RSS MB first→last quarter | RSS slope MB/min "
            "| fd growth | asyncio task growth | Goals |",
            "|---|---|---|---|---|---|---|---|",
            f"| {soak.get('sessions')} | {soak.get('duration_s')} | {_f(soak.get('cpu_pct'))} | "
            f"{_f(soak.get('rss_mb_start'))} → {_f(soak.get('rss_mb_end'))} | "
            f"{_f(soak.get('rss_slope_mb_per_min'), 2)} | {soak.get('fd_growth')} | "
            f"{soak.get('asyncio_task_growth')} | "
            f"{'met (flat)' if soak.get('flat') else 'not flat'} |",
            "",
        ]
    relay = sc.get("relay", {})
    if relay.get("error"):
        lines += ["## Relay (issue 12)", "", f"Failed: {relay['error']}", ""]
    elif relay:
        ratio = relay.get("cpu_ratio_vs_floor")
        lag = relay.get("loop_lag_p99_ms")
        rss = relay.get("rss_mb_per_extra_session")
        best = relay.get("max_sessions_no_drops") or 0
        steps_ok = [s for s in relay.get("steps", []) if "cpu_pct" in s]
        marginal = None
        if len(steps_ok) >= 2:
            a, b = steps_ok[0], steps_ok[-1]
            marginal = (b["cpu_pct"] - a["cpu_pct"]) / (b["sessions"] - a["sessions"])
        floor_cpu = relay.get("floor_cpu_pct")
        lines += [
            "## Relay (issue 12)",
            "",
            f"Variant {relay.get('variant')}: encoded packets forwarded, no decode. "
            f"Stopped because: {relay.get('stopped_because')}.",
            "",
            "One relay session carries the daemon's fixed cost (asyncio, RTCP, ICE consent, "
            "metrics); each further session adds "
            f"**{_f(marginal, 2)} %** of a core"
            + (
                f", {marginal / floor_cpu:.3f} of the transcode floor"
                if marginal and floor_cpu
                else ""
            )
            + ".",
            "",
            "| measure | value | goal | Goals |",
            "|---|---|---|---|",
            f"| CPU per session % | {_f(relay.get('cpu_pct_per_session'))} | | |",
            f"| transcode floor CPU % (same run) | {_f(relay.get('floor_cpu_pct'))} | | |",
            f"| ratio relay / floor | {_f(ratio, 3)} | <= 0.1 | {judge(ratio, 0.1, 'x')} |",
            f"| max sessions without loss | {best} | >= 32 | "
            f"{'met' if best >= 32 else f'missed (reached {best})'} |",
            f"| RSS per extra session MB | {_f(rss, 2)} | <= 2 | {judge(rss, 2.0, 'MB')} |",
            f"| event-loop lag p99 ms | {_f(lag, 1)} | <= 20 | {judge(lag, 20.0, 'ms')} |",
            "",
            "CPU and RSS are of a steady window; a second window adds one session started and "
            "stopped again and again (its CPU apart), where loss and loop lag are measured.",
            "",
            "| sessions | daemon CPU % | with churn % | stand-ins CPU % | packets lost "
            "| loop lag p99 ms | RSS MB |",
            "|---|---|---|---|---|---|---|",
        ]
        for st in relay.get("steps", []):
            if "error" in st:
                lines.append(f"| {st.get('sessions', '?')} | failed: {st['error']} | | | | | |")
                continue
            lines.append(
                f"| {st.get('sessions')} | {_f(st.get('cpu_pct'))} | "
                f"{_f(st.get('cpu_pct_with_churn'))} | {_f(st.get('standin_cpu_pct'))} | "
                f"{st.get('packets_lost')} | "
                f"{_f((st.get('loop_lag_ms') or {}).get('p99'))} | {_f(st.get('rss_mb'))} |"
            )
        lines.append("")
    lines += _handover_lines(sc.get("continuity", {}))
    lines += _latency_lines(sc.get("continuity", {}))
    lines += _viewer_lines(sc.get("viewer", {}))
    goals = results.get("goals", [])
    if goals:
        lines += ["## Goals", "", "| goal | target | measured | where | Goals | note |"]
        lines.append("|---|---|---|---|---|---|")
        for g in goals:
            lines.append(
                f"| {g['title']} | {g['target']} | {_f(g['measured'], 2)} | {g['where']} | "
                f"{g['status']} | {g['note']} |"
            )
        lines.append("")
    notes: list[str] = results.get("notes", [])
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _viewer_lines(viewer: dict[str, Any]) -> list[str]:
    """The viewer scenario: lip sync at a browser's playout per media path (medians of runs)."""
    if not viewer:
        return []
    if viewer.get("error"):
        return ["## Lip sync at a browser viewer", "", f"Failed: {viewer['error']}", ""]
    lines = [
        "## Lip sync at a browser viewer",
        "",
        f"Variant {viewer.get('variant')}, one session per run, watched by Stream's browser SDK "
        "in headless Chromium (bridge/sim/browser_viewer.py); medians over the runs. Skew is "
        "picture - sound at playout; the receivers' jitter-buffer means are getStats'. The "
        "goals are judged on the rows marked *judged*: the avatar published by libwebrtc, as "
        "LiveAvatar's is; the aiortc publisher's rows are diagnostics (docs/sync.md).",
        "",
        "| path | viewer skew p50 / \\|p95\\| / \\|p99\\| ms | marks | first 10 s \\|p95\\| ms "
        "| audio / video jitter buffer ms | arrival skew at the SFU p50 / \\|p95\\| ms "
        "| viewer errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, p in viewer.get("paths", {}).items():
        sk, arr = p.get("viewer_skew_ms") or {}, p.get("arrival_skew_ms") or {}
        errors = "; ".join(str(e)[:80] for e in p.get("viewer_errors") or []) or "-"
        name = f"{path} (judged)" if p.get("judged", True) else path
        lines.append(
            f"| {name} | {_f(sk.get('p50'))} / {_f(sk.get('p95'))} / {_f(sk.get('p99'))} | "
            f"{_f(p.get('viewer_marks'), 0)} | {_f(p.get('viewer_first10s_p95_ms'))} | "
            f"{_f(p.get('audio_jitter_buffer_ms'))} / {_f(p.get('video_jitter_buffer_ms'))} | "
            f"{_f(arr.get('p50'))} / {_f(arr.get('p95'))} | {errors} |"
        )
    rows = [(path, r) for path, p in viewer.get("paths", {}).items() for r in p.get("per_run", [])]
    if rows:
        lines += [
            "",
            "Per run: the viewer's median skew (a constant within a run) beside its parts: the "
            "receivers' jitter buffers, the skew the packets brought to the browser (the "
            "constant less video received-to-shown, plus the audio jitter buffer), the arrival "
            "skew at the Stream stand-in and, on the relay, how much longer the video took than "
            "the audio from the avatar's capture (its SRs) to the bridge in their best cases, "
            "which the relay's SR alignment holds the audio for (lift).",
            "",
            "| path | viewer skew p50 / \\|p95\\| ms | audio / video JB ms | video received to "
            "shown ms | at the browser's arrival ms | arrival at the stand-in ms | relay video "
            "- audio ms | relay lift audio / video ms | aligned | load |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for path, r in rows:
            lift = r.get("relay_lift_ms") or {}
            lines.append(
                f"| {path} | {_f(r.get('viewer_skew_p50_ms'))} / {_f(r.get('viewer_skew_p95_ms'))} "
                f"| {_f(r.get('audio_jb_ms'))} / {_f(r.get('video_jb_ms'))} "
                f"| {_f(r.get('video_shown_after_receive_ms'))} "
                f"| {_f(r.get('arrival_at_browser_ms'))} | {_f(r.get('arrival_skew_p50_ms'))} "
                f"| {_f(r.get('relay_video_minus_audio_ms'))} "
                f"| {_f(lift.get('audio'))} / {_f(lift.get('video'))} "
                f"| {r.get('relay_aligned')} | {_f(r.get('load'))} |"
            )
    lines.append("")
    return lines


def write_markdown(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(results))


def _handover_lines(continuity: dict[str, Any]) -> list[str]:
    from bench import continuity as scenario  # the scenario's own rendering (issue 17, part 2)

    return scenario.markdown_lines(continuity)


def _latency_lines(continuity: dict[str, Any]) -> list[str]:
    from bench import latency  # the scenario's own rendering (issue 17, part 3)

    return latency.markdown_lines(continuity)
