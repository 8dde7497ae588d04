"""Receiving the rendered avatar from the LiveKit room that LiveAvatar provisions."""

from bridge.livekit.downlink import DownlinkOptions, LiveKitDownlink

__all__ = ["DownlinkOptions", "LiveKitDownlink"]
