"""The LiveAvatar (HeyGen) LITE client: REST lifecycle, the audio WebSocket and a session ledger."""

from bridge.liveavatar.api import LiveAvatarAPI, LiveAvatarError, StartInfo
from bridge.liveavatar.ledger import SessionLedger
from bridge.liveavatar.uplink import LiveAvatarOptions, LiveAvatarUplink

__all__ = [
    "LiveAvatarAPI",
    "LiveAvatarError",
    "LiveAvatarOptions",
    "LiveAvatarUplink",
    "SessionLedger",
    "StartInfo",
]
