"""One log style: every structlog event name in bridge/ (daemon and stand-ins) is a snake_case
literal, with the context in fields. A sentence or a dotted name as the event makes the logs hard
to query (`jq 'select(.event=="session_ended")'`) and drifts into three styles, as it once did."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import bridge

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"}
ROOT = Path(bridge.__file__).parent


def _receiver_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def log_events(path: Path) -> list[tuple[int, ast.expr]]:
    """(line, first argument) of every ``<something log>.<level>(...)`` call in one file."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LEVELS
            and "log" in _receiver_name(node.func.value).lower()
            and node.args
        ):
            calls.append((node.lineno, node.args[0]))
    return calls


def test_every_log_event_is_a_snake_case_literal() -> None:
    bad = []
    seen = 0
    for path in sorted(ROOT.rglob("*.py")):
        for line, arg in log_events(path):
            seen += 1
            name = arg.value if isinstance(arg, ast.Constant) else None
            if not isinstance(name, str) or not SNAKE.match(name):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {ast.unparse(arg)}")
    assert seen > 100, "the scan found almost no log calls: is it still looking at bridge/?"
    assert not bad, "log event names must be snake_case literals:\n" + "\n".join(bad)


def test_the_check_catches_each_bad_style(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "log.info('client attached')\n"
        "self._log.warning('ingest.rejected')\n"
        "logger.error(f'x {y}')\n"
        "log.info('client_attached', session_id=1)\n"
        "other.info('Not a logger')\n"
    )
    names = [ast.unparse(arg) for _, arg in log_events(sample)]
    assert names == ["'client attached'", "'ingest.rejected'", "f'x {y}'", "'client_attached'"]
    assert [bool(SNAKE.match(n.strip("'"))) for n in names] == [False, False, False, True]
