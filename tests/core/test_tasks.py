"""Background tasks never die silently: a failing task is logged, counted and fails the session it
serves (that client only); cancellation is not a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from prometheus_client import REGISTRY

from bridge.dryrun import DryRunUplink
from bridge.errors import BridgeError, ErrorCode
from bridge.media import AudioFormat, MediaClock
from bridge.media_path import (
    KeptStream,
    MediaPath,
    PathChoice,
    PathKind,
    PathReason,
    RelayCandidate,
    RelayDecline,
)
from bridge.protocol import CallRef, Hello
from bridge.session import Stages, first_cause
from bridge.sessions import SessionManager
from bridge.stages import AvatarRoom, EventSink, FailureCallback
from bridge.tasks import TaskSet

FMT = AudioFormat(16000, 1)


def failures(task: str) -> float:
    return REGISTRY.get_sample_value("bridge_task_failures_total", {"task": task}) or 0.0


async def test_a_failing_task_is_counted_and_reported_once() -> None:
    reported: list[BridgeError] = []
    tasks = TaskSet(reported.append, ErrorCode.STREAM_FAILED)
    before = failures("unit_pump")

    async def broken() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("pump broke")

    tasks.spawn(broken(), "unit_pump")
    waiting = tasks.spawn(asyncio.sleep(3600), "unit_idle")
    await asyncio.sleep(0.05)
    assert failures("unit_pump") == before + 1
    (err,) = reported
    assert err.code is ErrorCode.STREAM_FAILED
    assert "unit_pump" in err.message and "RuntimeError: pump broke" in err.message
    await tasks.aclose()
    assert waiting.cancelled() and len(tasks) == 0
    assert failures("unit_idle") == 0  # cancelled, not failed
    assert len(reported) == 1


async def test_a_task_spawned_while_closing_does_not_outlive_its_owner() -> None:
    tasks = TaskSet(lambda err: None)
    await tasks.aclose()
    late = tasks.spawn(asyncio.sleep(3600), "unit_late")
    await asyncio.sleep(0)
    assert late.cancelled()


class _Path:
    """A media path whose background pump fails (or idles) once started."""

    kind = PathKind.TRANSCODE

    def __init__(self, on_failure: FailureCallback, broken: bool) -> None:
        self.tasks = TaskSet(on_failure)
        self.broken = broken
        self.closed = False

    async def start(self, room: AvatarRoom) -> RelayDecline | None:
        self.tasks.spawn(self._pump(), "test_media_pump")
        return None

    async def _pump(self) -> None:
        await asyncio.sleep(0.05)
        if self.broken:
            raise RuntimeError("the pump broke")
        await asyncio.Event().wait()

    async def run(self) -> None:
        await asyncio.Event().wait()

    def interrupt(self) -> None:
        pass

    def speak_started(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        self.closed = True
        await self.tasks.aclose()


class _Builder:
    choice = PathChoice(PathKind.TRANSCODE, PathReason.REQUESTED, "requested")

    def __init__(self, path: _Path) -> None:
        self.path = path

    def relay(self) -> RelayCandidate:
        raise AssertionError("not chosen")

    def can_keep(self, stream: KeptStream) -> bool:
        return False

    def transcode(self, stream: KeptStream | None) -> MediaPath:
        return self.path

    async def aclose(self) -> None:
        pass


class _Link:
    def __init__(self, name: str) -> None:
        self.peer = name
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[BridgeError] = []

    def send_event(self, event: str, fields: Mapping[str, Any]) -> None:
        self.events.append((event, dict(fields)))

    def send_error(self, err: BridgeError) -> None:
        self.errors.append(err)

    async def aclose(self) -> None:
        pass


async def test_a_failing_task_fails_its_own_session_only() -> None:
    paths: dict[str, _Path] = {}

    def factory(
        hello: Hello, clock: MediaClock, events: EventSink, on_failure: FailureCallback
    ) -> Stages:
        path = paths[hello.call.id] = _Path(on_failure, broken=hello.call.id == "broken")
        return Stages(uplink=DryRunUplink(events, queue_ms=200), paths=_Builder(path))

    manager = SessionManager(factory, max_sessions=4, linger_s=1.0)
    before = failures("test_media_pump")
    links = {name: _Link(name) for name in ("broken", "healthy")}
    handles = {
        name: await manager.open(Hello(CallRef("default", name), FMT), link)
        for name, link in links.items()
    }
    async with asyncio.timeout(5):
        while not links["broken"].errors:  # noqa: ASYNC110 (polls what the session sent)
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    (err,) = links["broken"].errors
    assert err.code is ErrorCode.INTERNAL
    assert "test_media_pump" in err.message and "the pump broke" in err.message
    assert failures("test_media_pump") == before + 1
    assert paths["broken"].closed
    states = [f["state"] for e, f in links["broken"].events if e == "state"]
    assert states[-1] == "failed"
    # The other session goes on untouched.
    assert links["healthy"].errors == []
    assert not paths["healthy"].closed
    assert len(manager) == 1
    await handles["healthy"].on_close()
    await manager.aclose()
    assert paths["healthy"].closed


class _UnansweredStop(DryRunUplink):
    """An avatar whose stop never gets an answer: its close waits until it is cancelled."""

    def __init__(self, events: EventSink) -> None:
        super().__init__(events, queue_ms=200)
        self.stop_cancelled = False

    async def aclose(self, reason: str = "USER_CLOSED") -> None:
        await super().aclose(reason)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.stop_cancelled = True
            raise


def abandoned() -> float:
    return REGISTRY.get_sample_value("bridge_sessions_close_abandoned_total") or 0.0


async def test_a_close_that_never_ends_is_abandoned_after_the_close_timeout() -> None:
    uplinks: list[_UnansweredStop] = []

    def factory(
        hello: Hello, clock: MediaClock, events: EventSink, on_failure: FailureCallback
    ) -> Stages:
        uplinks.append(_UnansweredStop(events))
        return Stages(uplink=uplinks[-1])

    manager = SessionManager(factory, max_sessions=4, linger_s=1.0)
    before = abandoned()
    handle = await manager.open(Hello(CallRef("default", "stuck"), FMT), _Link("stuck"))
    async with asyncio.timeout(5):
        await handle.session.wait_started()
        # Bounded by its close timeout (plus the unwinding of what it cancelled), not the stop.
        await manager.aclose(0.2)
    (uplink,) = uplinks
    assert uplink.stop_cancelled
    assert abandoned() == before + 1
    # The daemon's final close after its drain finds nothing more to wait for or count.
    async with asyncio.timeout(5):
        await manager.aclose(0.2)
    assert abandoned() == before + 1


def test_a_liveavatar_failure_is_the_cause_of_a_livekit_one_whatever_arrives_first() -> None:
    room = BridgeError(ErrorCode.LIVEKIT_FAILED, "room closed")
    ended = BridgeError(ErrorCode.LIVEAVATAR_UNAVAILABLE, "LiveAvatar ended the session")
    stream = BridgeError(ErrorCode.STREAM_FAILED, "call lost")
    assert first_cause(None, room) is room
    assert first_cause(room, ended) is ended  # the room's close read first: still LiveAvatar's
    assert first_cause(ended, room) is ended
    assert first_cause(room, stream) is room  # otherwise the earlier one
    assert first_cause(stream, ended) is stream
