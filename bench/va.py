"""Scenario 4: side by side with the Vision Agents ``liveavatar`` plugin (placeholder)."""

from __future__ import annotations

from typing import Any


async def run(runner: Any, daemon_runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"skipped": "not implemented yet"}
