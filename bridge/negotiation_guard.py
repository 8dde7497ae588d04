"""A track negotiated while aiortc's DTLS handshake runs still starts.

aiortc 1.14 starts media from ``RTCPeerConnection.__connect``, a task spawned by every
``setLocalDescription``/``setRemoteDescription``. Each pass walks the transceivers once: it starts
ICE and DTLS, and starts the RTP senders/receivers of those whose transport is ``connected`` *at
that moment*. A renegotiation that lands while the first handshake is under way (DTLS
``connecting``) therefore starts nothing -- its own pass sees ``connecting`` and skips, and the
pass driving the handshake has already walked past the new transceiver (or saw it before its
answer set ``currentDirection``). The new track's sender or receiver never starts: no error, the
peer connection ``connected``, and no media for that track for the rest of the call.

A LiveKit subscriber hits it (the SFU offers data channels at join and the avatar's tracks a
moment later), as can any connection that gets tracks while its first handshake runs (the Stream
stand-in's viewer connections, a Stream publisher adding video after audio). It was the cause of a
red CI run: the LiveKit stand-in's senders to a browser never started, and the browser decoded
nothing in 45 s.

:func:`install` wraps ``__connect`` once (class level, every peer connection of the process):
after each pass, negotiated tracks on a connected transport that have not started are counted in
``bridge_late_track_starts_total``, logged, and the pass runs again, which starts them (aiortc's
``send``, ``receive`` and SCTP ``start`` are idempotent for what already runs).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import structlog
from aiortc import RTCPeerConnection
from prometheus_client import Counter

__all__ = ["LATE_TRACK_STARTS", "install", "unstarted"]

log = structlog.get_logger(__name__)

LATE_TRACK_STARTS = Counter(
    "bridge_late_track_starts_total",
    "aiortc RTP senders/receivers negotiated during a DTLS handshake that the guard started",
)

# The name-mangled private method aiortc spawns from set*Description; resolved at call time
# (``asyncio.ensure_future(self.__connect())``), so a class-level wrapper is what runs.
_CONNECT = "_RTCPeerConnection__connect"
# One extra pass starts everything that was negotiated; the bound only stops a pathological loop.
_MAX_EXTRA_PASSES = 3
_RECEIVING = ("recvonly", "sendrecv")

_Connect = Callable[[RTCPeerConnection], Awaitable[None]]


def unstarted(pc: RTCPeerConnection) -> list[str]:
    """Negotiated senders/receivers (by ``mid:role``) whose transport is connected but which have
    not started; empty when everything that can run runs."""
    late: list[str] = []
    if pc.connectionState == "closed":
        return late
    for t in pc.getTransceivers():
        if t.stopped or t.receiver.transport.state != "connected":
            continue
        direction = t.currentDirection or ""
        sending, receiving = direction in ("sendonly", "sendrecv"), direction in _RECEIVING
        if sending and not getattr(t.sender, "_RTCRtpSender__started", True):
            late.append(f"{t.mid}:sender")
        if receiving and not getattr(t.receiver, "_RTCRtpReceiver__started", True):
            late.append(f"{t.mid}:receiver")
    sctp = pc.sctp
    if (
        sctp is not None
        and sctp.transport.state == "connected"
        and not getattr(sctp, "_RTCSctpTransport__started", True)
        and getattr(pc, "_RTCPeerConnection__sctpRemoteCaps", None) is not None
    ):
        late.append("sctp")
    return late


def install() -> None:
    """Idempotent; call before creating a peer connection."""
    original: _Connect = getattr(RTCPeerConnection, _CONNECT)
    if getattr(original, "_bridge_guard", False):
        return

    @functools.wraps(original)
    async def connect(self: RTCPeerConnection) -> None:
        await original(self)
        for _ in range(_MAX_EXTRA_PASSES):
            late = unstarted(self)
            if not late:
                return
            LATE_TRACK_STARTS.inc(len(late))
            log.info("aiortc_late_tracks_started", tracks=late)
            await original(self)

    connect._bridge_guard = True  # type: ignore[attr-defined]
    setattr(RTCPeerConnection, _CONNECT, connect)
