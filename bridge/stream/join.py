"""How the bridge joins a Stream call: one options type and one URL resolution for both Stream
clients (the ``getstream_rtc`` SDK publisher and the relay's own signalling).

``base_url`` None means Stream's cloud. ``ws_url`` None derives the coordinator WebSocket from
the base URL: Stream's cloud answers on its own host (what the SDK dials by default), any other
host (a stand-in, a proxy) on ``ws(s)://<host>/api/v2/connect``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from bridge.config import Settings, StreamConfig, setting_default

# The Stream SDK's own defaults (getstream_rtc's Rust client); the settings model holds the URL.
PRODUCTION_BASE_URL: str = setting_default(StreamConfig, "base_url")
PRODUCTION_WS_URL = "wss://video.stream-io-api.com/api/v2/connect"
PRODUCTION_HOSTS = ("chat.stream-io-api.com", "video.stream-io-api.com")


@dataclass(frozen=True, slots=True)
class StreamJoinOptions:
    api_key: str
    api_secret: str
    base_url: str | None = PRODUCTION_BASE_URL
    ws_url: str | None = setting_default(StreamConfig, "ws_url")
    user_id: str = setting_default(StreamConfig, "user_id")
    user_name: str = setting_default(StreamConfig, "user_name")
    join_timeout_s: float = setting_default(StreamConfig, "join_timeout_s")
    leave_timeout_s: float = 5.0  # not an option: leaving is best effort

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamJoinOptions:
        st = settings.stream
        assert st.api_key is not None and st.api_secret is not None  # validated at start
        return cls(
            api_key=st.api_key.get_secret_value(),
            api_secret=st.api_secret.get_secret_value(),
            base_url=st.base_url,
            ws_url=st.ws_url,
            user_id=st.user_id,
            user_name=st.user_name,
            join_timeout_s=st.join_timeout_s,
        )

    def resolved_base_url(self) -> str:
        return (self.base_url or PRODUCTION_BASE_URL).rstrip("/")

    def resolved_ws_url(self) -> str:
        if self.ws_url is not None:
            return self.ws_url
        parts = urlsplit(self.resolved_base_url())
        if parts.hostname in PRODUCTION_HOSTS:
            return PRODUCTION_WS_URL
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, "/api/v2/connect", "", ""))

    def is_production(self) -> bool:
        return urlsplit(self.resolved_base_url()).hostname in PRODUCTION_HOSTS


__all__ = ["PRODUCTION_BASE_URL", "PRODUCTION_WS_URL", "StreamJoinOptions"]
