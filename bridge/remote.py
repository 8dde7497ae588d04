"""The real services: a session's uplink and media paths built for LiveAvatar, LiveKit and Stream.

Which path runs is decided in :mod:`bridge.media_path`; :class:`RemotePaths` only builds them.

Process-wide resources live here: one aiohttp ``ClientSession`` for every LiveAvatar REST call,
and the paid-session ledger, which is swept (leftovers of a crash stopped) before the daemon
reports ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog

from bridge import metrics
from bridge.config import Settings
from bridge.liveavatar import LiveAvatarAPI, LiveAvatarOptions, LiveAvatarUplink, SessionLedger
from bridge.livekit.downlink import DownlinkOptions, LiveKitDownlink
from bridge.livekit.warm import WarmDownlink
from bridge.media import MediaClock
from bridge.media_path import (
    KeptStream,
    MediaPath,
    PathChoice,
    PathKind,
    PathReason,
    RelayCandidate,
    WarmRoom,
    choose_path,
)
from bridge.pool import WarmPool
from bridge.pool_policy import AvatarKey
from bridge.protocol import Hello
from bridge.relay.path import RelayOptions, RelayPath
from bridge.relay.warm import WarmUpstream, subscriber_options
from bridge.session import Handover, Stages
from bridge.stages import AvatarUplink, EventSink, FailureCallback
from bridge.stream.join import StreamJoinOptions
from bridge.stream.kept_session import ENCODABLE, KeptSessionPublisher
from bridge.stream.publisher import PublisherOptions, StreamPublisher
from bridge.stream.relay_publisher import StreamRelayPublisher
from bridge.stream.vp9_send import enable_vp9_send
from bridge.sync import SyncStage
from bridge.tasks import TASK_FAILURES
from bridge.transcode import TranscodePath

log = structlog.get_logger(__name__)

# Output sizes of LiveAvatar's quality levels, for choosing the media path.
QUALITY_SIZE = {
    "low": (640, 360),
    "medium": (854, 480),
    "high": (1280, 720),
    "very_high": (1920, 1080),
}


class RemoteStages:
    """Owns the shared clients; :meth:`factory` builds each session's stages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # aiortc's global codec table and encoder hook, set once while the daemon is built rather
        # than by the first session that keeps a VP9 grant (under sessions already running).
        enable_vp9_send()
        self.ledger = SessionLedger(settings.state_dir)
        metrics.LIVEAVATAR_ORPHANS.set_function(lambda: self.ledger.orphans)
        self._orphan_task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._api: LiveAvatarAPI | None = None
        self.pool: WarmPool | None = None
        # How many sessions the daemon runs now (the pool's bound); set by the wiring.
        self.active_sessions: Callable[[], int] = lambda: 0

    async def start(self) -> None:
        la = self.settings.liveavatar
        assert la.api_key is not None  # validated at start
        self._http = aiohttp.ClientSession()
        self._api = LiveAvatarAPI(
            self._http,
            la.base_url,
            la.api_key.get_secret_value(),
            la.request_timeout_s,
            stop_timeout_s=la.stop_timeout_s,
        )
        stopped = await self.ledger.sweep(self._api)
        if stopped:
            log.warning("ledger_swept", count=stopped)
        self._orphan_task = asyncio.get_running_loop().create_task(
            self._retry_orphans(self._api), name="ledger-orphans"
        )
        if self.settings.pool.size > 0:
            self.pool = WarmPool(
                self.settings,
                self._api,
                self.ledger,
                self.active_sessions,
                prejoin=self._prejoin,
            )
            self.pool.start()

    def _prejoin(self, key: AvatarKey, on_failure: FailureCallback) -> WarmRoom:
        """The receiving side of the path a HELLO with the configured media path and this key
        gets, to join a warm session's room with (bridge/pool.py)."""
        s = self.settings
        size = QUALITY_SIZE.get(key.quality)
        out = (s.output.width, s.output.height)
        choice = choose_path(s.output.media_path, key.encoding, size, out)
        if choice.kind is PathKind.RELAY:
            relay = RelayOptions.from_settings(s, key.encoding, video_size=size)
            options = subscriber_options(
                avatar_identity=relay.avatar_identity,
                connect_timeout_s=relay.connect_timeout_s,
                avatar_join_timeout_s=relay.avatar_join_timeout_s,
                single_peer_connection=relay.single_peer_connection,
                video_size=relay.video_size,
            )
            return WarmUpstream(options, key.encoding, on_failure)
        return WarmDownlink(DownlinkOptions.from_settings(s), on_failure)

    async def _retry_orphans(self, api: LiveAvatarAPI) -> None:
        """Every ``liveavatar.orphan_retry_s``: stop again the sessions whose own stop failed
        (the service was unreachable), rather than leave them billed until the next start."""
        while True:
            await asyncio.sleep(self.settings.liveavatar.orphan_retry_s)
            if not self.ledger.orphans:
                continue
            try:
                stopped = await self.ledger.retry_orphans(api)
            except Exception:  # a ledger write failed: logged and counted, tried again later
                TASK_FAILURES.labels("ledger_orphans").inc()
                log.exception("ledger_orphans_retry_failed")
                continue
            if stopped:
                log.info("ledger_orphans_stopped", count=stopped, left=self.ledger.orphans)

    async def drain(self) -> None:
        """The daemon drains: stop the warm sessions now (sessions in use finish on their own)."""
        if self.pool is not None:
            await self.pool.aclose()

    async def aclose(self) -> None:
        task, self._orphan_task = self._orphan_task, None
        if task is not None:
            task.cancel()  # what it did not stop stays in the ledger for the next start
            await asyncio.gather(task, return_exceptions=True)
        await self.drain()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def factory(
        self, hello: Hello, clock: MediaClock, events: EventSink, on_failure: FailureCallback
    ) -> Stages:
        assert self._api is not None, "start() runs before the socket opens"
        s = self.settings
        la = s.liveavatar
        ov = hello.avatar
        quality = ov.video_quality or la.video_quality
        codec = (ov.video_encoding or la.video_encoding).upper()
        options = LiveAvatarOptions.from_settings(s, ov.as_dict())
        api = self._api
        choice = choose_path(
            hello.media_path or s.output.media_path,
            codec,
            QUALITY_SIZE.get(quality),
            (s.output.width, s.output.height),
        )

        def new_uplink(
            path: PathKind | None, *, claim: bool = True
        ) -> tuple[LiveAvatarUplink, WarmRoom | None]:
            """A warm session from the pool when one matches (with its room joined when
            ``path`` is the room's), else a cold one."""
            if self.pool is not None:
                warm = self.pool.take(options, hello.audio, events, on_failure, path, claim=claim)
                if warm is not None:
                    return warm.uplink, warm.room
            cold = LiveAvatarUplink(api, self.ledger, options, hello.audio, events, on_failure)
            return cold, None

        uplink, room = new_uplink(choice.kind)
        handover = None
        if la.handover_margin_s > 0:
            handover = Handover(
                # A handover adopts the pooled room as it is (its media dropped until the
                # switch, which asks for its own keyframe): no claim.
                next_uplink=lambda kind: new_uplink(kind, claim=False),
                expires_at=_expires_at,
                margin_s=la.handover_margin_s,
                prepare_timeout_s=la.connect_timeout_s,
            )
        log.info("media_path_chosen", path=choice.kind, reason=choice.reason, codec=codec)
        return Stages(
            uplink=uplink,
            paths=RemotePaths(
                s, hello, codec, clock, events, on_failure, choice, QUALITY_SIZE.get(quality), room
            ),
            handover=handover,
        )


def _expires_at(uplink: AvatarUplink) -> float:
    assert isinstance(uplink, LiveAvatarUplink)
    return uplink.expires_at


@dataclass(slots=True)
class RemotePaths:
    """Builds a session's media paths (a :class:`bridge.media_path.PathBuilder`)."""

    settings: Settings
    hello: Hello
    codec: str
    clock: MediaClock
    events: EventSink
    on_failure: FailureCallback
    choice: PathChoice
    avatar_size: tuple[int, int] | None = None  # what LiveAvatar renders (video_quality)
    # A pooled avatar's room, joined for the chosen path before the HELLO: adopted by it.
    warm: WarmRoom | None = None

    def relay(self) -> RelayCandidate:
        call = self.hello.call
        # The relay's to adopt, or to leave when it declines: handed over once the relay exists
        # (until then this builder leaves it at aclose).
        warm = self.warm if isinstance(self.warm, WarmUpstream) else None
        relay = RelayPath(
            RelayOptions.from_settings(
                self.settings,
                self.codec,
                tuple(c for c in ENCODABLE if c != self.codec),
                video_size=self.avatar_size,
                require_size=self.choice.reason is PathReason.MATCH,
            ),
            StreamRelayPublisher(
                StreamJoinOptions.from_settings(self.settings),
                call.type,
                call.id,
                self.events,
                self.on_failure,
            ),
            self.events,
            self.on_failure,
            warm=warm,
        )
        if warm is not None:
            self.warm = None
        return relay

    async def aclose(self) -> None:
        """A pooled room that no path took (the session ended before its path was built)."""
        warm, self.warm = self.warm, None
        if warm is not None:
            log.info("pool_room_left_unused", path=str(warm.kind))
            await warm.aclose()

    def can_keep(self, stream: KeptStream) -> bool:
        return isinstance(stream, StreamRelayPublisher) and stream.granted_codec in ENCODABLE

    def transcode(self, stream: KeptStream | None) -> MediaPath:
        out, call = self.settings.output, self.hello.call
        publisher: StreamPublisher | KeptSessionPublisher
        if isinstance(stream, StreamRelayPublisher):
            publisher = KeptSessionPublisher(
                stream, width=out.width, height=out.height, pcm_queue_s=out.audio_queue_ms / 1000
            )
        else:
            publisher = StreamPublisher(
                PublisherOptions.from_settings(self.settings),
                call.type,
                call.id,
                self.events,
                self.on_failure,
            )
        sync = SyncStage(
            publisher,
            fps=out.fps,
            buffer_seconds=out.buffer_seconds,
            audio_queue_ms=out.audio_queue_ms,
            video_delay_ms=out.video_delay_ms,
            follow_receivers=out.video_delay_follows_receivers,
            cadence_allowance_ms=out.video_cadence_allowance_ms,
            audio_backlog_ms=out.audio_backlog_ms,
        )

        def new_downlink() -> LiveKitDownlink:
            return LiveKitDownlink(
                DownlinkOptions.from_settings(self.settings),
                self.clock,
                self.events,
                self.on_failure,
            )

        def adopt_warm(room: WarmRoom) -> tuple[LiveKitDownlink, WarmDownlink] | None:
            if not isinstance(room, WarmDownlink) or not room.ready:
                return None
            return room.adopt(self.clock, self.events, self.on_failure), room

        warm, self.warm = self.warm, None
        adopted = adopt_warm(warm) if warm is not None else None
        if adopted is not None:
            downlink, feeds = adopted
            return TranscodePath(
                downlink, sync, publisher, new_downlink, feeds, adopt_warm=adopt_warm
            )
        # A pooled room this path cannot adopt (it failed, or was joined for the relay that
        # declined here: that one the relay left) is left with the path.
        leave = [warm.aclose] if warm is not None else []
        return TranscodePath(
            new_downlink(), sync, publisher, new_downlink, leave=leave, adopt_warm=adopt_warm
        )
