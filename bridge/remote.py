"""The real services: a session's stages built for LiveAvatar, LiveKit and Stream.

Process-wide resources live here: one aiohttp ``ClientSession`` for every LiveAvatar REST call,
and the paid-session ledger, which is swept (leftovers of a crash stopped) before the daemon
reports ready.
"""

from __future__ import annotations

import dataclasses

import aiohttp
import structlog

from bridge.config import Settings
from bridge.liveavatar import LiveAvatarAPI, LiveAvatarOptions, LiveAvatarUplink, SessionLedger
from bridge.livekit.downlink import DownlinkOptions, LiveKitDownlink
from bridge.media import MediaClock
from bridge.protocol import Hello
from bridge.relay.path import RELAY_CODECS, RelayOptions, RelayPath
from bridge.session import Stages
from bridge.stages import EventSink, FailureCallback
from bridge.stream.publisher import PublisherOptions, StreamPublisher
from bridge.stream.relay_publisher import RelayPublisherOptions, StreamRelayPublisher
from bridge.sync import SyncStage

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
        self.ledger = SessionLedger(settings.state_dir)
        self._http: aiohttp.ClientSession | None = None
        self._api: LiveAvatarAPI | None = None

    async def start(self) -> None:
        la = self.settings.liveavatar
        assert la.api_key is not None  # validated at start
        self._http = aiohttp.ClientSession()
        self._api = LiveAvatarAPI(
            self._http, la.base_url, la.api_key.get_secret_value(), la.request_timeout_s
        )
        stopped = await self.ledger.sweep(self._api)
        if stopped:
            log.warning("stopped LiveAvatar sessions left by an earlier run", count=stopped)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def factory(
        self, hello: Hello, clock: MediaClock, events: EventSink, on_failure: FailureCallback
    ) -> Stages:
        assert self._api is not None, "start() runs before the socket opens"
        s = self.settings
        la, out, st = s.liveavatar, s.output, s.stream
        ov = hello.avatar
        quality = ov.video_quality or la.video_quality
        uplink = LiveAvatarUplink(
            self._api,
            self.ledger,
            LiveAvatarOptions.from_settings(s, ov.as_dict()),
            hello.audio,
            events,
            on_failure,
        )
        assert st.api_key is not None and st.api_secret is not None  # validated at start
        # What both Stream publishers (transcode and relay) need to join the call.
        stream_join = RelayPublisherOptions(
            api_key=st.api_key.get_secret_value(),
            api_secret=st.api_secret.get_secret_value(),
            base_url=st.base_url,
            ws_url=st.ws_url,
            user_id=st.user_id,
            user_name=st.user_name,
            join_timeout_s=st.join_timeout_s,
        )
        publisher = StreamPublisher(
            PublisherOptions(
                **dataclasses.asdict(stream_join),
                video_codec=out.video_codec,
                width=out.width,
                height=out.height,
                fps=out.fps,
                pcm_queue_s=out.audio_queue_ms / 1000.0,
            ),
            hello.call.type,
            hello.call.id,
            events,
            on_failure,
        )
        sync = SyncStage(
            publisher,
            fps=out.fps,
            buffer_seconds=out.buffer_seconds,
            audio_queue_ms=out.audio_queue_ms,
            video_delay_ms=out.video_delay_ms,
        )
        downlink = LiveKitDownlink(
            DownlinkOptions.from_settings(s),
            clock,
            events,
            on_failure,
        )
        codec = (ov.video_encoding or la.video_encoding).upper()
        path, reason = self._media_path(hello, quality, codec)
        relay = None
        if path == "relay":
            # The transcode stages above stay as the fallback if the SFU grants another codec.
            relay = RelayPath(
                RelayOptions(
                    avatar_identity=la.avatar_identity,
                    avatar_codec=codec,
                    video_hold_ms=out.relay_video_hold_ms,
                    connect_timeout_s=la.connect_timeout_s,
                    avatar_join_timeout_s=la.connect_timeout_s,
                ),
                StreamRelayPublisher(
                    stream_join,
                    hello.call.type,
                    hello.call.id,
                    events,
                    on_failure,
                ),
                events,
                on_failure,
            )
        log.info("media path chosen", path=path, reason=reason, codec=codec, quality=quality)
        return Stages(
            uplink=uplink,
            downlink=downlink,
            publisher=publisher,
            sync=sync,
            media_path=path,
            media_path_reason=reason,
            relay=relay,
        )

    def _media_path(self, hello: Hello, quality: str, codec: str) -> tuple[str, str]:
        """relay | transcode, and why. The SFU's codec grant is checked when the relay starts."""
        wanted = hello.media_path or self.settings.output.media_path
        size = QUALITY_SIZE.get(quality)
        out = (self.settings.output.width, self.settings.output.height)
        if wanted == "transcode":
            return "transcode", "requested"
        if codec not in RELAY_CODECS:
            return "transcode", f"the relay cannot carry the avatar's {codec}"
        if wanted == "relay":
            if size != out:
                return "relay", f"requested (the avatar's {size} is sent as is, not {out})"
            return "relay", "requested"
        if size != out:
            return "transcode", f"avatar {size} differs from the output size {out}"
        return "relay", f"the avatar's {codec} {size} matches the output"
