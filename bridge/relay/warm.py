"""A pooled avatar's room, joined for the relay before its HELLO (a :class:`WarmRoom`).

The pool (:mod:`bridge.pool`) joins a warm LiveAvatar session's LiveKit room with the relay's
subscriber and waits for the avatar's first keyframe; the receivers are taken over at once
(:class:`~bridge.relay.aiortc_hooks.ReceiverTap`) and their packets dropped, noting the video
SSRC and the keyframe. At the HELLO that takes it (:meth:`WarmUpstream.claim`) a keyframe is asked
of the avatar and the packets from that keyframe on are held (bounded: ``HOLD_PACKETS``) while
the relay joins the call. The relay then adopts the subscription (:meth:`WarmUpstream.adopt`):
the held packets go first, in order, then the live ones, so the call's first frame leaves as
soon as the call side is published, with no room join, avatar start or keyframe to wait for.

Only packets after the claim's keyframe are held: an older keyframe could not be sent (the delta
frames after it, dropped while warm, are what the avatar's next frames refer to).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Generic, TypeVar

import structlog
from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket
from prometheus_client import Counter

from bridge.errors import BridgeError
from bridge.livekit.subscriber import LiveKitSubscriber, ReceiverCallback, SubscriberOptions
from bridge.media_path import PathKind, join_warm_room
from bridge.relay.aiortc_hooks import ReceiverTap, RtpHandler, SrHandler
from bridge.relay.policy import layer_request
from bridge.relay.rtp import is_keyframe_start
from bridge.stages import AvatarRoom, EventSink, FailureCallback

__all__ = ["HOLD_PACKETS", "ClaimHold", "WarmUpstream", "subscriber_options"]

log = structlog.get_logger(__name__)

WARM_DROPPED = Counter(
    "bridge_relay_warm_dropped_total",
    "Packets of pooled avatars not relayed (their room is joined ahead of a HELLO)",
    ["kind"],
)
WARM_HELD = Counter(
    "bridge_relay_warm_held_total",
    "Packets of a claimed pooled avatar held from its keyframe until the relay forwards them, "
    "by outcome (sent; dropped when the hold overflowed)",
    ["outcome"],
)

# Packets held between the claim and the adoption (the call's join, a few hundred ms: ~100
# video and audio packets); past it the hold is dropped and the relay asks for a keyframe.
HOLD_PACKETS = 1000

_Handlers = dict[str, tuple[RtpHandler, SrHandler]]

T = TypeVar("T")


class ClaimHold(Generic[T]):
    """What a warm room does with each packet (sans-I/O): before the claim every packet is
    dropped; after it, packets are held from the first keyframe start on, in arrival order,
    at most ``capacity`` (one more drops the hold: the relay asks for its own keyframe);
    :meth:`drain` hands them over once, at adoption."""

    def __init__(self, capacity: int = HOLD_PACKETS) -> None:
        self.capacity = capacity
        self.claimed = False
        self.overflowed = 0  # packets dropped from a hold that overflowed
        self._held: list[T] | None = None

    def claim(self) -> None:
        self.claimed = True

    def offer(self, item: T, *, keyframe_start: bool) -> bool:
        """True: ``item`` is held; False: drop it."""
        if self.claimed and self._held is None and keyframe_start:
            self._held = []
        if self._held is None:
            return False
        if len(self._held) >= self.capacity:
            self.overflowed += len(self._held)
            self._held = None
            self.claimed = False
            return False
        self._held.append(item)
        return True

    @property
    def holds_keyframe(self) -> bool:
        """Something is held: it starts with a keyframe."""
        return self._held is not None and len(self._held) > 0

    def drain(self) -> list[T]:
        held, self._held = self._held or [], None
        self.claimed = False
        return held


def subscriber_options(
    *,
    avatar_identity: str,
    connect_timeout_s: float,
    avatar_join_timeout_s: float,
    single_peer_connection: bool = True,
    video_size: tuple[int, int] | None = None,
) -> SubscriberOptions:
    """The relay's subscriber options (the layer of ``video_size`` asked for)."""
    return SubscriberOptions(
        avatar_identity=avatar_identity,
        connect_timeout_s=connect_timeout_s,
        avatar_join_timeout_s=avatar_join_timeout_s,
        single_peer_connection=single_peer_connection,
        video_layer=layer_request(video_size),
    )


def _quiet(event: str, /, **fields: Any) -> None:
    log.debug("warm_room_event", event_name=event)


class WarmUpstream:
    """The relay's receiving side of a pooled avatar (implements :class:`WarmRoom`)."""

    kind = PathKind.RELAY

    def __init__(self, options: SubscriberOptions, codec: str, on_failure: FailureCallback) -> None:
        self.codec = codec.upper()
        self._events: EventSink = _quiet
        self._on_failure = on_failure
        self._on_receiver: ReceiverCallback | None = None  # the adopting path's, after adopt
        self.subscriber = LiveKitSubscriber(
            options,
            self._receiver,
            lambda event, /, **fields: self._events(event, **fields),
            lambda err: self._failed_with(err),
        )
        self.taps: dict[str, ReceiverTap] = {}
        self.video_ssrc: int | None = None
        self.keyframe = asyncio.Event()
        # After claim(): packets from the next keyframe on, until adoption drains them.
        self._hold: ClaimHold[tuple[str, RtpPacket, RTCRtpCodecParameters, int]] = ClaimHold()
        self._handlers: _Handlers | None = None
        self.failed = False
        self.adopted = False
        self._closed = False

    @property
    def ready(self) -> bool:
        return self.keyframe.is_set() and not (self.failed or self._closed or self.adopted)

    async def join(self, room: AvatarRoom, timeout_s: float) -> None:
        await join_warm_room(
            lambda: self.subscriber.start(room.livekit_url, room.livekit_token),
            self.keyframe,
            timeout_s,
            aclose=self.aclose,
            failed=lambda: self.failed,
            what="keyframe",
        )
        log.info("warm_room_ready", path="relay", video_ssrc=self.video_ssrc)

    async def claim(self) -> None:
        """A HELLO took this room: ask the avatar for a keyframe and hold from it on."""
        self._hold.claim()
        tap = self.taps.get("video")
        if tap is not None and self.video_ssrc is not None:
            await tap.send_pli(self.video_ssrc)

    def adopt(
        self,
        on_receiver: ReceiverCallback,
        events: EventSink,
        on_failure: FailureCallback,
        handlers: _Handlers,
    ) -> None:
        """A relay takes the subscription: the current receivers' packets go to ``handlers``
        (per kind; the held ones first), and its events, failures and the receivers of a later
        rejoin are the relay's from now on."""
        if not self.ready:
            raise RuntimeError("only a ready, unadopted warm room can be adopted")
        self.adopted = True
        self._on_receiver = on_receiver
        self._events = events
        self._on_failure = on_failure
        self._handlers = handlers

    @property
    def held_keyframe(self) -> bool:
        """Adopted with the claim's keyframe held (the relay needs not ask for one)."""
        return self._hold.holds_keyframe

    async def aclose(self) -> None:
        if self.adopted or self._closed:
            return  # adopted: the relay leaves it
        self._closed = True
        with contextlib.suppress(Exception):
            await self.subscriber.aclose()

    # -- while warm ------------------------------------------------------------------------------

    def _receiver(self, kind: str, receiver: RTCRtpReceiver, sid: str) -> None:
        if self._on_receiver is not None:
            self._on_receiver(kind, receiver, sid)  # a rejoin after adoption: the relay's
            return
        self.taps[kind] = ReceiverTap(
            receiver, lambda p, c, a: self._warm_rtp(kind, p, c, a), lambda sr: self._sr(kind, sr)
        )

    async def _warm_rtp(
        self, kind: str, packet: RtpPacket, codec: RTCRtpCodecParameters, arrival: int
    ) -> None:
        # Every tap's packets come through here, one at a time (one transport, awaited in
        # turn), so the held packets leave before any later one.
        if self._handlers is not None:
            for k, p, c, a in self._hold.drain():
                handler = self._handlers.get(k)
                if handler is not None:
                    WARM_HELD.labels("sent").inc()
                    await handler[0](p, c, a)
            handler = self._handlers.get(kind)
            if handler is not None:
                await handler[0](packet, codec, arrival)
            return
        key = kind == "video" and is_keyframe_start(self.codec, packet.payload)
        if kind == "video":
            self.video_ssrc = packet.ssrc
            if key:
                self.keyframe.set()
        overflowed = self._hold.overflowed
        if self._hold.offer((kind, packet, codec, arrival), keyframe_start=key):
            return
        if self._hold.overflowed > overflowed:  # the relay asks for its own keyframe
            WARM_HELD.labels("dropped").inc(self._hold.overflowed - overflowed)
        WARM_DROPPED.labels(kind).inc()

    def _sr(self, kind: str, sr: RtcpSrPacket) -> None:
        handler = None if self._handlers is None else self._handlers.get(kind)
        if handler is not None:
            handler[1](sr)  # before adoption the relay has no mapping to translate into

    def _failed_with(self, err: BridgeError) -> None:
        self.failed = True
        self.keyframe.set()  # wake join()
        self._on_failure(err)
