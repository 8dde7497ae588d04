"""The benchmark runner's pure parts: statistics, /proc readers, goals and the report writer.

No media and no timing: performance is measured by ``make bench``, never asserted in tests.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from bench import procstat, report
from bench.driver import flatness, skew_stats
from bench.stats import (
    bucket_delta,
    histogram_buckets,
    histogram_ms,
    histogram_quantile,
    parse_metrics,
    percentile,
)

METRICS_BEFORE = """# HELP x a histogram
# TYPE bridge_x_seconds histogram
bridge_x_seconds_bucket{le="0.001"} 0.0
bridge_x_seconds_bucket{le="0.002"} 10.0
bridge_x_seconds_bucket{le="0.005"} 10.0
bridge_x_seconds_bucket{le="+Inf"} 10.0
bridge_x_seconds_count 10.0
bridge_asyncio_tasks 12.0
bridge_dropped_total{stage="sync",reason="video_full"} 3.0
"""
METRICS_AFTER = METRICS_BEFORE.replace('le="0.005"} 10.0', 'le="0.005"} 110.0').replace(
    'le="+Inf"} 10.0', 'le="+Inf"} 110.0'
)


def test_percentile_interpolates_and_handles_edges() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert percentile([4.0, 1.0, 3.0, 2.0], 1.0) == 4.0
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


def test_histogram_quantile_over_a_window() -> None:
    before, after = parse_metrics(METRICS_BEFORE), parse_metrics(METRICS_AFTER)
    assert after[("bridge_asyncio_tasks", frozenset())] == 12.0
    delta = bucket_delta(
        histogram_buckets(after, "bridge_x_seconds"), histogram_buckets(before, "bridge_x_seconds")
    )
    # The 100 observations of the window all fell in (2 ms, 5 ms]: the earlier 10 are gone.
    assert delta == [(0.001, 0.0), (0.002, 0.0), (0.005, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(delta, 0.5) == pytest.approx(0.0035)
    ms = histogram_ms(after, before, "bridge_x_seconds", {"p50": 0.5, "p99": 0.99})
    assert ms["samples"] == 100.0
    assert ms["p50"] == pytest.approx(3.5)
    assert histogram_quantile([(1.0, 0.0), (math.inf, 0.0)], 0.5) is None
    # A quantile in the +Inf bucket reports the highest finite bound, like PromQL.
    assert histogram_quantile([(0.01, 1.0), (math.inf, 10.0)], 0.99) == 0.01


def test_proc_readers_on_this_process_and_on_fixtures(tmp_path: Path) -> None:
    line = "4242 (a) b c) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0"
    assert procstat.parse_stat_cpu_s(line) == pytest.approx(400 / os.sysconf("SC_CLK_TCK"))
    assert procstat.parse_status_kb("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS") == 2048
    assert procstat.parse_status_kb("Name:\tx\n", "VmRSS") is None
    fake = tmp_path / "77"
    (fake / "fd").mkdir(parents=True)
    for i in range(3):
        (fake / "fd" / str(i)).touch()
    (fake / "stat").write_text(line)
    (fake / "status").write_text("VmRSS:\t10240 kB\n")
    assert procstat.open_fds(77, proc=tmp_path) == 3
    assert procstat.rss_mb(77, proc=tmp_path) == 10.0
    assert procstat.cpu_seconds("self") > 0
    assert procstat.rss_mb() > 10
    window = procstat.CpuWindow({"me": "self"})
    window.start()
    sum(i * i for i in range(20000))
    usage = window.stop()
    assert usage["me"] >= 0 and usage["wall_s"] > 0


def test_skew_and_soak_flatness() -> None:
    s = skew_stats([-30.0, -10.0, 20.0, -50.0])
    assert s["p50"] == -20.0 and s["samples"] == 4 and s["p99"] is not None
    assert s["p99"] <= 50.0
    flat = [
        {"t_s": float(t), "rss_mb": 200.0, "open_fds": 40, "asyncio_tasks": 30} for t in range(9)
    ]
    assert flatness(flat)["flat"] is True
    leak = [
        {"t_s": float(t), "rss_mb": 200.0 + 20 * t, "open_fds": 40 + t, "asyncio_tasks": 30}
        for t in range(9)
    ]
    out = flatness(leak)
    assert out["flat"] is False and out["fd_growth"] > 0 and out["rss_slope_mb_per_min"] > 0


def _results() -> dict[str, Any]:
    run = {
        "cpu_pct": 60.0,
        "cpu_pct_per_session": 60.0,
        "rss_mb": 170.0,
        "uplink_added_ms": {"p50": 0.5, "p99": 2.0},
        "downlink_added_ms": {"p50": 62.0, "p95": 66.0},
        "skew_ms": {"p50": -10.0, "p95": 25.0, "p99": 30.0},
        "video_delay_ms": 60.0,
        "drops": 0,
    }
    return {
        "date": "2026-01-01T00:00:00+00:00",
        "command": "python -m bench --quick",
        "quick": True,
        "machine": {"cpu": "test", "cores": 2},
        "versions": {"livekit": "1.2.1"},
        "scenarios": {
            "single": {"variants": {"360p30-VP9": {"runs": [run]}}},
            "floor": {"variants": {"360p30-VP9": {"cpu_pct": 50.0, "overhead_pct": 20.0}}},
            "side_by_side": {"skipped": "pip could not install it"},
            "soak": {
                "sessions": 2,
                "duration_s": 60,
                "rss_mb_start": 200.0,
                "rss_growth_mb": 4.0,
                "fd_growth": 0,
                "asyncio_task_growth": 0,
                "flat": True,
            },
        },
    }


def test_goals_and_report_writer(tmp_path: Path) -> None:
    results = _results()
    goals = {g["goal"]: g for g in report.evaluate(results)}
    assert goals["uplink_added_p99"]["status"] == "met"
    assert goals["downlink_added_p95"]["status"] == "missed by 33.0 ms"
    assert "sync hold" in goals["downlink_added_p95"]["note"]
    assert goals["skew_p95"]["status"] == "missed by 5.0 ms"
    assert goals["cpu_over_floor"]["status"] == "missed by 10.0 %"
    assert goals["cpu_ratio_va"]["status"] == "not measured"
    assert goals["soak_rss_growth"]["status"] == "met"
    results["goals"] = list(goals.values())
    out = tmp_path / "results" / "latest.json"
    report.write_json(results, out)
    assert json.loads(out.read_text())["scenarios"]["floor"]["variants"]["360p30-VP9"]
    assert not list(out.parent.glob("*.tmp"))
    doc = tmp_path / "performance.md"
    report.write_markdown(results, doc)
    text = doc.read_text()
    assert "| 360p30-VP9 |" in text and "Goals" in text
    assert "Not measured: pip could not install it" in text
    assert "missed by 33.0 ms" in text
    # Every table row has as many cells as its header.
    for block in text.split("\n\n"):
        rows = [ln for ln in block.splitlines() if ln.startswith("|")]
        if rows:
            assert len({r.count("|") for r in rows}) == 1, block


def test_viewer_goals_are_judged_on_the_judged_rows_only(tmp_path: Path) -> None:
    # The aiortc publisher's rows are diagnostics (bench/viewer_scenario.py JUDGED): a worse
    # figure there does not decide the goal, a worse judged row does.
    results = _results()
    results["scenarios"]["viewer"] = {
        "variant": "360p30-VP8",
        "paths": {
            "relay": {"judged": False, "viewer_skew_ms": {"p95": 31.0, "p99": 33.0}},
            "relay_libwebrtc": {"judged": True, "viewer_skew_ms": {"p95": 14.0, "p99": 45.0}},
        },
    }
    goals = {g["goal"]: g for g in report.evaluate(results)}
    assert (goals["viewer_skew_p95"]["measured"], goals["viewer_skew_p95"]["status"]) == (
        14.0,
        "met",
    )
    assert goals["viewer_skew_p99"]["where"] == "360p30-VP8 relay_libwebrtc"
    assert goals["viewer_skew_p99"]["status"] == "missed by 5.0 ms"
    doc = tmp_path / "performance.md"
    report.write_markdown(results, doc)
    text = doc.read_text()
    assert "| relay_libwebrtc (judged) |" in text and "| relay |" in text


def test_judge_wording() -> None:
    assert report.judge(None, 5.0, "ms") == "not measured"
    assert report.judge(4.0, 5.0, "ms") == "met"
    assert report.judge(0.75, 0.5, "x") == "missed by 0.25 x"


def test_viewer_run_row_splits_the_constant_into_the_packets_and_the_receivers() -> None:
    """A viewer run's row carries the skew the packets brought to the browser: the constant
    less the video's received-to-shown time, plus the audio jitter buffer (what a sender
    controls), next to the arrival skew at the Stream stand-in; both absent when unmeasured."""
    from bench import viewer_scenario

    run = {
        "viewer": {
            "skew_ms": {"p50": -30.2, "p95": 39.9},
            "video_shown_after_receive_ms": 7.2,
            "receiver_delays_ms": {
                "audio": {"jitter_buffer_mean": 34.8},
                "video": {"jitter_buffer_mean": 8.5},
            },
        },
        "skew_ms": {"p50": -40.0},
        "load": 5.3,
    }
    row = viewer_scenario._run_row(run)
    assert row["arrival_at_browser_ms"] == pytest.approx(-2.6)
    assert row["arrival_skew_p50_ms"] == -40.0
    empty = viewer_scenario._run_row({"viewer": {"error": "no chromium"}})
    assert empty["arrival_at_browser_ms"] is None and empty["arrival_skew_p50_ms"] is None
    lines = report._viewer_lines({"variant": "v", "paths": {"relay_libwebrtc": {"per_run": [row]}}})
    assert any("| -2.6 | -40.0 |" in line for line in lines)
    assert "transcode_libwebrtc" in viewer_scenario.PATHS
