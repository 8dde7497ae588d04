"""Owned background tasks: none dies silently.

A stage's background tasks (pumps, watchers, keyframe requests) live in a :class:`TaskSet`. A task
that ends with an exception is logged with its name, counted in
``bridge_task_failures_total{task}`` and reported once through the owner's failure callback, which
fails the session it serves (and only that one) with a clear error. Cancellation is not a failure,
and :meth:`TaskSet.aclose` cancels and awaits every task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog
from prometheus_client import Counter

from bridge.errors import BridgeError, ErrorCode
from bridge.stages import FailureCallback

log = structlog.get_logger(__name__)

TASK_FAILURES = Counter(
    "bridge_task_failures_total",
    "Background tasks that ended with an exception (each fails the session it served)",
    ["task"],
)


class TaskSet:
    """Background tasks of one stage; ``code`` is the error the session fails with."""

    def __init__(self, on_failure: FailureCallback, code: ErrorCode = ErrorCode.INTERNAL) -> None:
        self._on_failure = on_failure
        self._code = code
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.failed = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task named ``name`` (the metric label: keep it a fixed string)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        if self._closing:
            task.cancel()  # the owner is closing: the task would outlive it
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        name = task.get_name()
        self.failed += 1
        TASK_FAILURES.labels(task=name).inc()
        log.error("task_failed", task=name, exc_info=exc)
        if self._closing:
            return  # the owner is going away anyway; logged and counted
        if isinstance(exc, BridgeError):
            self._on_failure(exc)
        else:
            self._on_failure(
                BridgeError(self._code, f"internal error in {name}: {type(exc).__name__}: {exc}")
            )

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Give the tasks ``grace_s`` to end by themselves, then cancel the rest and wait for
        them. Idempotent."""
        self._closing = True
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


__all__ = ["TASK_FAILURES", "TaskSet"]
