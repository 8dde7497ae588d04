"""Wiring: which stages a session gets, and the daemon built from the settings.

``dry_run`` sessions get a paced stand-in for the avatar (no remote is contacted). Real sessions get
the LiveAvatar uplink and one media path (:mod:`bridge.media_path`).
"""

from __future__ import annotations

from bridge.config import Settings
from bridge.daemon import Daemon
from bridge.dryrun import DryRunUplink
from bridge.media import MediaClock
from bridge.protocol import Hello
from bridge.session import StageFactory, Stages
from bridge.stages import EventSink, FailureCallback


def dry_run_factory(settings: Settings) -> StageFactory:
    queue_ms = settings.limits.uplink_queue_ms

    def make(
        hello: Hello, clock: MediaClock, events: EventSink, on_failure: FailureCallback
    ) -> Stages:
        return Stages(uplink=DryRunUplink(events, queue_ms=queue_ms))

    return make


def build_daemon(settings: Settings) -> Daemon:
    if settings.dry_run:
        return Daemon(settings, dry_run_factory(settings))
    from bridge.remote import RemoteStages  # the real services; imported only when used

    remote = RemoteStages(settings)
    daemon = Daemon(
        settings,
        remote.factory,
        startup=[remote.start],
        drain=[remote.drain],
        shutdown=[remote.aclose],
    )
    remote.active_sessions = lambda: len(daemon.sessions)
    return daemon
