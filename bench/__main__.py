"""``python -m bench [--quick] [--scenario NAME ...]``: the benchmarks of issue 9.

Runs the scenarios against the local stand-ins inside a private network namespace (re-executing
itself under ``bridge.sim.netns`` when needed, as the demo does), then writes
``bench/results/latest.json`` (stable keys) and ``docs/performance.md``. Every scenario is bounded
in time; one that fails is recorded with its error and the others still run. Scenarios not run
this time keep their previous results in the file, marked with the date they were measured.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import logging
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from bench import continuity, driver, relay_scenario, report, viewer_scenario
from bench.driver import VARIANTS, Variant
from bridge.sim import netns

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
DOC = ROOT / "docs" / "performance.md"


def _trace() -> str:
    """The current exception's last frames, files named from the project root: the results
    are committed, and this machine's paths must not be."""
    return traceback.format_exc(-3).replace(f"{ROOT}/", "")


@dataclass(frozen=True)
class Plan:
    """How long and how often: QUICK proves the runner works, the full plan measures."""

    quick: bool
    window_s: float
    repeat: int
    variants: tuple[str, ...]
    scaling: tuple[int, ...]
    soak_sessions: int
    soak_s: float
    soak_sample_s: float
    va_window_s: float
    # The viewer scenario's media paths (--path runs one of them only: a quicker look).
    paths: tuple[str, ...] = tuple(viewer_scenario.PATHS)

    @classmethod
    def make(cls, quick: bool, window_s: float | None, repeat: int | None) -> Plan:
        if quick:
            return cls(True, window_s or 6.0, repeat or 1, tuple(VARIANTS), (1, 2), 2, 60.0, 5.0,
                       window_s or 6.0)  # fmt: skip
        return cls(False, window_s or 20.0, repeat or 3, tuple(VARIANTS), (1, 2, 4, 6, 8), 4,
                   600.0, 15.0, window_s or 20.0)  # fmt: skip


Scenario = Callable[["Runner"], Awaitable[dict[str, Any]]]


class Runner:
    def __init__(self, plan: Plan, workroot: Path, network: str) -> None:
        self.plan = plan
        self.workroot = workroot
        self.network = network
        self.single_runs: dict[str, list[dict[str, Any]]] = {}

    def say(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    async def daemon_runs(self, *, barge_in: bool) -> dict[str, list[dict[str, Any]]]:
        """Scenario 1's measurements (cached: the floor scenario compares against them)."""
        if self.single_runs:
            return self.single_runs
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in self.plan.variants}
        for rep in range(self.plan.repeat):
            for name in self.plan.variants:
                self.say(f"single {name} run {rep + 1}/{self.plan.repeat}")
                runs[name].append(await self._guarded(self._one(VARIANTS[name], barge_in)))
        self.single_runs = runs
        return runs

    async def _one(self, v: Variant, barge_in: bool) -> dict[str, Any]:
        return await driver.run_daemon(
            v, 1, self.plan.window_s, barge_in=barge_in, workroot=self.workroot, viewer=True
        )

    async def _guarded(self, coro: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await coro
        except Exception as exc:
            self.say(f"  failed: {exc!r}")
            return {"error": f"{type(exc).__name__}: {exc}", "trace": _trace()}


async def scenario_single(r: Runner) -> dict[str, Any]:
    runs = await r.daemon_runs(barge_in=True)
    return {"variants": {name: {"runs": rs} for name, rs in runs.items()}}


async def scenario_floor(r: Runner) -> dict[str, Any]:
    daemon = await r.daemon_runs(barge_in=True)
    out: dict[str, Any] = {}
    for name in r.plan.variants:
        floors = []
        for rep in range(r.plan.repeat):
            r.say(f"floor {name} run {rep + 1}/{r.plan.repeat}")
            floors.append(await r._guarded(driver.run_floor(VARIANTS[name], r.plan.window_s)))
        ours = report.median_of(daemon.get(name, []), "cpu_pct")
        floor_cpu = report.median_of(floors, "cpu_pct")
        out[name] = {
            "cpu_pct": floor_cpu,
            "cpu_pct_spread": report.spread(floors, "cpu_pct"),
            "daemon_cpu_pct": ours,
            "overhead_pct": round(100 * (ours / floor_cpu - 1), 1) if ours and floor_cpu else None,
            "overhead_points": round(ours - floor_cpu, 1) if ours and floor_cpu else None,
            "rss_mb": report.median_of(floors, "rss_mb"),
            "skew_p50_ms": report.median_of(floors, "skew_ms", "p50"),
            "runs": floors,
        }
    return {"variants": out}


async def scenario_scaling(r: Runner) -> dict[str, Any]:
    v = VARIANTS["360p30-VP9"]
    steps: list[dict[str, Any]] = []
    best, why = 0, f"reached the plan's last step ({r.plan.scaling[-1]})"
    for n in r.plan.scaling:
        r.say(f"scaling: {n} sessions")
        step = await r._guarded(
            driver.run_daemon(v, n, r.plan.window_s, barge_in=False, workroot=r.workroot)
        )
        steps.append(step)
        if "error" in step:
            why = f"{n} sessions failed: {step['error']}"
            break
        if step.get("drops", 0) > 0:
            why = f"{n} sessions dropped {step['drops']:g} frames"
            break
        best = n
    return {"variant": v.name, "steps": steps, "max_sessions_without_drops": best,
            "stopped_because": why}  # fmt: skip


async def scenario_soak(r: Runner) -> dict[str, Any]:
    p = r.plan
    r.say(f"soak: {p.soak_sessions} sessions for {p.soak_s:g} s")
    return await driver.run_soak(
        VARIANTS["360p30-VP9"], p.soak_sessions, p.soak_s, p.soak_sample_s, r.workroot
    )


async def scenario_side_by_side(r: Runner) -> dict[str, Any]:
    from bench import va

    daemon = await r.daemon_runs(barge_in=True)
    return await va.run(r, daemon)


# A new scenario (e.g. ``relay`` for issue 12) is one entry here and a function above.
SCENARIOS: dict[str, Scenario] = {
    "single": scenario_single,
    "floor": scenario_floor,
    "scaling": scenario_scaling,
    "side_by_side": scenario_side_by_side,
    "soak": scenario_soak,
    "relay": relay_scenario.scenario,
    "continuity": continuity.scenario,
    "viewer": viewer_scenario.scenario,
}


async def run(args: argparse.Namespace, network: str) -> int:
    plan = Plan.make(args.quick, args.window, args.repeat)
    if args.variant:
        plan = dataclasses.replace(plan, variants=tuple(args.variant))
    if args.path:
        plan = dataclasses.replace(plan, paths=tuple(args.path))
    names = args.scenario or list(SCENARIOS)
    previous: dict[str, Any] = {}
    if args.out.exists():
        try:
            previous = json.loads(args.out.read_text()).get("scenarios", {})
        except (ValueError, OSError):
            previous = {}
    results: dict[str, Any] = {
        "version": 1,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "quick": plan.quick,
        "plan": plan.__dict__,
        "network": network,
        "machine": driver.machine(),
        "versions": driver.versions(),
        "scenarios": {},
        "notes": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        runner = Runner(plan, Path(tmp), network)
        for name in SCENARIOS:
            if name not in names:
                if name in previous:
                    previous[name].setdefault("measured", "in an earlier run")
                    results["scenarios"][name] = previous[name]
                continue
            t0 = time.monotonic()
            runner.say(f"scenario {name}")
            try:
                out = await SCENARIOS[name](runner)
            except Exception as exc:
                runner.say(f"scenario {name} failed: {exc!r}")
                out = {"error": f"{type(exc).__name__}: {exc}", "trace": _trace()}
            out["date"] = results["date"]
            out["elapsed_s"] = round(time.monotonic() - t0, 1)
            results["scenarios"][name] = out
            # Written after every scenario: an interrupted run keeps what it measured.
            results["goals"] = report.evaluate(results)
            report.write_json(results, args.out)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    results["goals"] = report.evaluate(results)
    if plan.quick:
        results["notes"].append("QUICK run: short windows, one repeat; figures are indicative.")
    if results["machine"]["loadavg_at_start"][0] > (results["machine"]["cores"] or 2) * 0.5:
        results["notes"].append(
            "The machine was busy when the run started (load average above half the cores): "
            "absolute figures are noisy; compare ratios measured in the same run."
        )
    report.write_json(results, args.out)
    report.write_markdown(results, args.doc)
    print(report.markdown(results))
    failed = [n for n, s in results["scenarios"].items() if "error" in s and n in names]
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short windows, fewer steps (~5 min)")
    p.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="repeatable")
    p.add_argument("--variant", action="append", choices=list(VARIANTS), help="repeatable")
    p.add_argument("--window", type=float, default=None, help="measurement window, seconds")
    p.add_argument("--repeat", type=int, default=None, help="runs per variant (interleaved)")
    p.add_argument(
        "--path",
        action="append",
        choices=list(viewer_scenario.PATHS),
        help="viewer scenario: this row only (repeatable; default all)",
    )
    p.add_argument(
        "--daemon-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a daemon setting for every run, after the variant's (repeatable; an A/B)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--doc", type=Path, default=DOC)
    args = p.parse_args(argv)
    if any("=" not in kv for kv in args.daemon_set):
        p.error("--daemon-set takes KEY=VALUE")
    driver.DAEMON_SETTINGS[:] = args.daemon_set
    if args.window is not None and not 1 <= args.window <= 120:
        p.error("--window must be within 1..120 s")
    if args.repeat is not None and not 1 <= args.repeat <= 10:
        p.error("--repeat must be within 1..10")
    if not netns.inside():
        if netns.available():
            cmd = netns.unshare_argv([sys.executable, "-m", "bench", *sys.argv[1:]])
            assert cmd is not None
            return subprocess.call(cmd, cwd=ROOT)
        network = "host"
    else:
        network = "namespace"
    # The in-process stand-ins log at info level; the benchmark's own lines are what matters.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.WARNING)
    try:
        import uvloop

        return int(uvloop.run(run(args, network)))
    except ImportError:  # pragma: no cover
        return asyncio.run(run(args, network))


if __name__ == "__main__":
    raise SystemExit(main())
