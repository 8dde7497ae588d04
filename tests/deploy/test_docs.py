"""The operator docs keep up with the code: every exported metric is explained in the runbook."""

from __future__ import annotations

import re

from tests.deploy.files import REPO

RUNBOOK = REPO / "docs" / "operations.md"


def _metric_names() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "bridge").rglob("*.py"):
        if "sim" in path.relative_to(REPO / "bridge").parts:
            continue  # the stand-ins' metrics are sim_*, not the daemon's
        names.update(re.findall(r"[\"'](bridge_[a-z0-9_]+)[\"']", path.read_text()))
    return names


def test_every_daemon_metric_is_in_the_runbook() -> None:
    names = _metric_names()
    assert "bridge_sessions_active" in names  # the scan finds the core metrics
    text = RUNBOOK.read_text()
    missing = sorted(n for n in names if f"`{n}" not in text)
    assert not missing, f"document these in docs/operations.md: {missing}"


def test_docs_link_each_other() -> None:
    for name in ("deployment.md", "operations.md", "scaling.md"):
        text = (REPO / "docs" / name).read_text()
        for target in re.findall(r"\]\(([a-z-]+\.md)\)", text):
            assert (REPO / "docs" / target).is_file(), f"{name} links to missing {target}"


def test_alert_rules_parse_and_use_real_metrics() -> None:
    import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the lock

    block = re.search(r"```yaml\n(groups:.*?)```", RUNBOOK.read_text(), re.S)
    assert block, "the runbook's alert rules block is missing"
    rules = yaml.safe_load(block.group(1))["groups"][0]["rules"]
    assert len(rules) >= 5
    known = _metric_names()
    for rule in rules:
        assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"]
        for name in re.findall(r"bridge_[a-z0-9_]+", rule["expr"]):
            assert name in known, f"{rule['alert']} uses unknown metric {name}"


def test_committed_results_name_no_machine_path() -> None:
    """Bench results and docs are committed: a traceback or log pasted from a run must not
    carry this machine's paths (the checkout's own location is the one a run would leak)."""
    root = str(REPO.resolve())
    leaks = [
        str(p.relative_to(REPO))
        for d in ("bench/results", "docs")
        for p in (REPO / d).rglob("*")
        if p.is_file() and p.suffix in (".json", ".md") and root in p.read_text()
    ]
    assert not leaks, f"absolute paths of this checkout in {leaks}"
