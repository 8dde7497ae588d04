"""A DTLS transport of aiortc that cannot start is a failed one, not a silent hang.

aiortc starts each DTLS transport from a task it does not keep (``RTCPeerConnection.__connect``).
When ``RTCDtlsTransport.start`` raises before the handshake -- pyOpenSSL's verify callback needs
write+execute memory, which systemd's ``MemoryDenyWriteExecute=yes`` refuses (``MemoryError:
Cannot allocate write+execute memory for ffi.callback()``); a remote answer with no fingerprint
-- the exception only reaches asyncio's "Task exception was never retrieved", the transport stays
``new`` and the peer connection ``connecting`` for ever: nobody learns that media cannot flow.

:func:`install` wraps ``RTCDtlsTransport.start`` once (class level, every peer connection of the
process): such an exception is logged, counted in ``bridge_dtls_start_failures_total`` and turns
the transport ``failed``, so the peer connection's ``connectionState`` becomes ``failed`` and its
owner fails the session it serves, as for a handshake that failed.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from prometheus_client import Counter

__all__ = ["DTLS_START_FAILURES", "install"]

log = structlog.get_logger(__name__)

DTLS_START_FAILURES = Counter(
    "bridge_dtls_start_failures_total",
    "aiortc DTLS transports that could not start (each fails its peer connection)",
)

_Start = Callable[[RTCDtlsTransport, Any], Awaitable[None]]


def install() -> None:
    """Idempotent; call before creating a peer connection."""
    original: _Start = RTCDtlsTransport.start
    if getattr(original, "_bridge_guard", False):
        return

    @functools.wraps(original)
    async def start(self: RTCDtlsTransport, remoteParameters: Any) -> None:
        try:
            await original(self, remoteParameters)
        except Exception as exc:  # not CancelledError: a closing peer connection goes on closing
            DTLS_START_FAILURES.inc()
            log.error("dtls_start_failed", error=f"{type(exc).__name__}: {exc}")
            # _set_state emits "statechange": the peer connection recomputes its state.
            self._set_state(State.FAILED)

    start._bridge_guard = True  # type: ignore[attr-defined]
    RTCDtlsTransport.start = start  # type: ignore[method-assign]
