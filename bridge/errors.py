"""Errors that end up in front of a socket client, each with a stable code.

The codes are part of the socket protocol (docs/protocol.md): clients switch on them, so they are
never renamed. ``fatal`` says whether the connection is closed after the ERROR frame.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # Protocol (the client sent something we cannot accept).
    BAD_FRAME = "bad_frame"  # unknown frame type without the ignorable flag
    FRAME_TOO_LARGE = "frame_too_large"
    BAD_JSON = "bad_json"
    BAD_HELLO = "bad_hello"  # HELLO missing or with invalid fields
    HELLO_TIMEOUT = "hello_timeout"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_FORMAT = "unsupported_format"
    NOT_READY = "not_ready"  # AUDIO or a control frame before HELLO/READY
    ODD_AUDIO_LENGTH = "odd_audio_length"  # s16 PCM must be whole frames
    UNAUTHORIZED = "unauthorized"  # missing/wrong token or peer not allowed
    UNKNOWN_SESSION = "unknown_session"  # re-attach key not found (expired or never existed)
    # Admission and lifecycle.
    BUSY = "busy"  # max_sessions reached
    DRAINING = "draining"  # the daemon is shutting down
    SESSION_CLOSED = "session_closed"
    # Remotes.
    LIVEAVATAR_AUTH = "liveavatar_auth"  # bad API key
    LIVEAVATAR_SANDBOX = "liveavatar_sandbox"  # sandbox with a non-sandbox avatar
    LIVEAVATAR_CREDITS = "liveavatar_credits"
    LIVEAVATAR_REJECTED = "liveavatar_rejected"  # validation or other 4xx
    LIVEAVATAR_UNAVAILABLE = "liveavatar_unavailable"  # 5xx, timeouts, WS lost for good
    LIVEKIT_FAILED = "livekit_failed"  # avatar room unreachable, avatar never joined or left
    STREAM_AUTH = "stream_auth"
    STREAM_FAILED = "stream_failed"
    INTERNAL = "internal"


class BridgeError(Exception):
    """An error with a protocol code and a message a user can act on."""

    def __init__(self, code: ErrorCode, message: str, *, fatal: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal

    def to_json(self) -> dict[str, object]:
        return {"code": str(self.code), "message": self.message, "fatal": self.fatal}
