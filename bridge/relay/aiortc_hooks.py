"""Every private aiortc internal the relay relies on, in one place, checked against the pin.

aiortc has no API for raw RTP: a receiver always depayloads, buffers and decodes, and a sender
always encodes or packetizes. The relay therefore takes over one receiver's packet handler and
writes into one sender's transport. These are private, name-mangled internals that any aiortc
release may move, so:

* aiortc is pinned (requirements.lock, :data:`PINNED_AIORTC`);
* :func:`missing_hooks` names every hook that is absent or changed (the hook-guard test calls
  it, so an upgrade fails loudly, naming the hook);
* :func:`ensure_compatible` runs the same check before the first relay starts.

Hooks (aiortc 1.14.0):

receiver (LiveKit side), per instance:
  ``RTCRtpReceiver._handle_rtp_packet`` is replaced (``RTCDtlsTransport._handle_rtp_data`` looks it
  up on the instance for every SRTP-decrypted, parsed packet). The replacement keeps what the
  original does before depayloading -- REMB estimation, receive statistics (so aiortc's RRs stay
  right), RTX unwrapping and NACK generation -- through ``_RTCRtpReceiver__codecs``,
  ``__rtx_ssrc``, ``__remote_streams``, ``__nack_generator``, ``__remote_bitrate_estimator``,
  ``__rtcp_ssrc``; then hands the packet to the relay. No jitter buffer, no decoder.
  ``RTCRtpReceiver._handle_rtcp_packet`` is wrapped to see the avatar's sender reports.
  ``_send_rtcp_pli`` / ``_send_rtcp_nack`` send feedback upstream.
sender (Stream side), per instance:
  ``RTCRtpSender._ssrc``, ``_rtx_ssrc``; ``transport._send_rtp`` sends serialized packets;
  ``_RTCRtpSender__ntp_timestamp/__rtp_timestamp/__packet_count/__octet_count`` feed the SRs that
  aiortc's own RTCP task sends; ``_retransmit`` (called for each NACKed sequence number) and
  ``_send_keyframe`` (called on PLI/FIR) are replaced by the relay's handlers.
class level, once:
  ``RTCRtpSender.send`` (public) is wrapped to remember the negotiated send parameters (payload
  types, mid, header extension ids): the relay gets its senders after negotiation.
"""

from __future__ import annotations

import inspect
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import aiortc
import structlog
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_APP,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
    unwrap_rtx,
)

from bridge.relay.nack import NackRequester
from bridge.relay.rtp import OutputBinding

__all__ = [
    "PINNED_AIORTC",
    "AiortcHookError",
    "ReceiverTap",
    "SenderTap",
    "ensure_compatible",
    "install_send_capture",
    "missing_hooks",
    "missing_instance_hooks",
    "send_parameters",
]

log = structlog.get_logger(__name__)

PINNED_AIORTC = "1.14.0"

_RECEIVER_ATTRS = (
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__rtx_ssrc",
    "_RTCRtpReceiver__remote_streams",
    "_RTCRtpReceiver__nack_generator",
    "_RTCRtpReceiver__remote_bitrate_estimator",
    "_RTCRtpReceiver__rtcp_ssrc",
    "_RTCRtpReceiver__decoder_thread",
    "_RTCRtpReceiver__stop_decoder",
)
_SENDER_ATTRS = (
    "_ssrc",
    "_rtx_ssrc",
    "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__packet_count",
    "_RTCRtpSender__octet_count",
)
# (owner, method, a source fragment proving the method still calls what we replace/rely on)
_METHODS: tuple[tuple[type, str, str | None], ...] = (
    (RTCDtlsTransport, "_handle_rtp_data", "receiver._handle_rtp_packet(packet, arrival_time_ms"),
    (RTCDtlsTransport, "_send_rtp", None),
    (RTCRtpReceiver, "_handle_rtp_packet", "self.__nack_generator"),
    (RTCRtpReceiver, "_handle_rtcp_packet", None),
    (RTCRtpReceiver, "_send_rtcp", None),
    (RTCRtpReceiver, "_send_rtcp_pli", None),
    (RTCRtpReceiver, "_send_rtcp_nack", None),
    (RTCRtpSender, "_handle_rtcp_packet", "await self._retransmit(seq)"),
    (RTCRtpSender, "_handle_rtcp_packet", "self._send_keyframe()"),
    (RTCRtpSender, "_retransmit", None),
    (RTCRtpSender, "_send_keyframe", None),
    (RTCRtpSender, "_run_rtcp", "self.__ntp_timestamp"),
    (RTCRtpSender, "send", "parameters"),
)


class AiortcHookError(RuntimeError):
    """aiortc changed under the relay: the message names the hooks that moved."""


def missing_hooks() -> list[str]:
    """Class-level hooks that are absent or no longer do what the relay relies on."""
    out: list[str] = []
    for owner, name, fragment in _METHODS:
        fn = getattr(owner, name, None)
        label = f"{owner.__name__}.{name}"
        if fn is None or not callable(fn):
            out.append(label)
            continue
        if fragment is not None:
            target = getattr(fn, "__wrapped__", fn)
            try:
                source = inspect.getsource(target)
            except (OSError, TypeError):
                out.append(f"{label} (source unavailable)")
                continue
            if fragment not in source:
                out.append(f"{label} (no longer contains {fragment!r})")
    return out


def missing_instance_hooks(receiver: RTCRtpReceiver, sender: RTCRtpSender) -> list[str]:
    """Instance attributes the taps use, on a real receiver and sender."""
    out = [f"RTCRtpReceiver.{a}" for a in _RECEIVER_ATTRS if not hasattr(receiver, a)]
    out += [f"RTCRtpSender.{a}" for a in _SENDER_ATTRS if not hasattr(sender, a)]
    return out


_checked = False


def ensure_compatible() -> None:
    """Raise :class:`AiortcHookError` naming every moved hook; warns on an unpinned version."""
    global _checked
    if _checked:
        return
    if aiortc.__version__ != PINNED_AIORTC:
        log.warning("aiortc_version_unpinned", found=aiortc.__version__, pinned=PINNED_AIORTC)
    missing = missing_hooks()
    if missing:
        raise AiortcHookError(
            f"aiortc {aiortc.__version__} moved hooks the relay needs: {', '.join(missing)}"
        )
    install_send_capture()
    _checked = True


# -- send parameters ---------------------------------------------------------------------------

_send_params: weakref.WeakKeyDictionary[RTCRtpSender, RTCRtpSendParameters] = (
    weakref.WeakKeyDictionary()
)


def install_send_capture() -> None:
    """Wrap ``RTCRtpSender.send`` once so each sender's negotiated parameters are remembered."""
    original = RTCRtpSender.send
    if getattr(original, "_relay_capture", False):
        return

    async def send(self: RTCRtpSender, parameters: RTCRtpSendParameters) -> None:
        _send_params[self] = parameters
        await original(self, parameters)

    send.__wrapped__ = original  # type: ignore[attr-defined]
    send._relay_capture = True  # type: ignore[attr-defined]
    RTCRtpSender.send = send  # type: ignore[method-assign]


def send_parameters(sender: RTCRtpSender) -> RTCRtpSendParameters | None:
    return _send_params.get(sender)


# -- receiver ----------------------------------------------------------------------------------

RtpHandler = Callable[[RtpPacket, RTCRtpCodecParameters, int], Awaitable[None]]
SrHandler = Callable[[RtcpSrPacket], None]


class ReceiverTap:
    """Takes over one receiver: parsed packets go to ``on_rtp``, never to the decoder.

    ``on_rtp(packet, codec, arrival_ms)`` gets original (RTX-unwrapped) packets with the codec
    their payload type maps to; ``on_sr`` sees every upstream sender report.
    """

    def __init__(self, receiver: RTCRtpReceiver, on_rtp: RtpHandler, on_sr: SrHandler) -> None:
        missing = [a for a in _RECEIVER_ATTRS if not hasattr(receiver, a)]
        if missing:
            raise AiortcHookError(f"RTCRtpReceiver lacks {', '.join(missing)}")
        self.receiver = receiver
        self._on_rtp = on_rtp
        self._on_sr = on_sr
        self.nacks_sent = 0
        self.rtx_received = 0
        self.unknown_payload = 0
        # aiortc asks once per gap; ours asks again until the packet comes (bridge/relay/nack.py).
        self.nack = NackRequester()
        # Replaced by a LiveKit rejoin or a handover: nothing more is asked of its stream.
        self.retired = False
        r: Any = receiver
        self._codecs: dict[int, RTCRtpCodecParameters] = r._RTCRtpReceiver__codecs
        self._rtx_ssrc: dict[int, int] = r._RTCRtpReceiver__rtx_ssrc
        self._streams: dict[int, StreamStatistics] = r._RTCRtpReceiver__remote_streams
        self._aiortc_nacks = r._RTCRtpReceiver__nack_generator is not None
        self._remb = r._RTCRtpReceiver__remote_bitrate_estimator
        self._orig_rtcp = receiver._handle_rtcp_packet
        r._handle_rtp_packet = self._handle_rtp
        r._handle_rtcp_packet = self._handle_rtcp
        # No packet reaches aiortc's decoder any more: end its thread (one idle thread per
        # receiver otherwise), now or as soon as receive() starts it.
        r._RTCRtpReceiver__stop_decoder()
        orig_receive = receiver.receive

        async def receive(parameters: Any) -> None:
            await orig_receive(parameters)
            r._RTCRtpReceiver__stop_decoder()

        r.receive = receive

    @property
    def decoder_running(self) -> bool:
        """Whether aiortc's decoder thread for this receiver still runs (it should not)."""
        return cast(Any, self.receiver)._RTCRtpReceiver__decoder_thread is not None

    def codecs(self) -> list[RTCRtpCodecParameters]:
        """The negotiated receive codecs (RTX excluded)."""
        return [c for c in self._codecs.values() if not is_rtx(c)]

    async def _handle_rtp(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        r: Any = self.receiver
        if self._remb is not None and packet.extensions.abs_send_time is not None:
            remb = self._remb.add(
                abs_send_time=packet.extensions.abs_send_time,
                arrival_time_ms=arrival_time_ms,
                payload_size=len(packet.payload) + packet.padding_size,
                ssrc=packet.ssrc,
            )
            rtcp_ssrc = r._RTCRtpReceiver__rtcp_ssrc
            if rtcp_ssrc is not None and remb is not None:
                fci = pack_remb_fci(*remb)
                await r._send_rtcp(
                    RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci)
                )
        codec = self._codecs.get(packet.payload_type)
        if codec is None:
            self.unknown_payload += 1
            return
        stats = self._streams.get(packet.ssrc)
        if stats is None:
            stats = self._streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)
        if is_rtx(codec):
            original_ssrc = self._rtx_ssrc.get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if original_ssrc is None or len(packet.payload) < 2 or apt not in self._codecs:
                return
            assert isinstance(apt, int)
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
            codec = self._codecs[apt]
            self.rtx_received += 1
        # aiortc's receiver would NACK (video): the relay does instead, for the stream it
        # follows (a late packet of a stream it left is neither asked for nor a restart).
        if self._aiortc_nacks and not self.retired and self.nack.follow(packet.ssrc):
            lost = self.nack.on_packet(packet.sequence_number, time.monotonic())
            if lost:
                self.nacks_sent += 1
                # Ascending, as aiortc's own: its packing of the list into PID/BLP needs it.
                await r._send_rtcp_nack(packet.ssrc, sorted(lost))
        await self._on_rtp(packet, codec, arrival_time_ms)

    def retire(self) -> None:
        """The relay replaced this receiver (a LiveKit rejoin, a handover): its stream's lost
        packets are no longer asked for (its last packets, still arriving, are not relayed)."""
        self.retired = True
        self.nack.restart()

    async def _handle_rtcp(self, packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            self._on_sr(packet)
        await self._orig_rtcp(packet)

    async def send_pli(self, media_ssrc: int) -> None:
        await self.receiver._send_rtcp_pli(media_ssrc)


# -- sender ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Negotiated:
    binding: OutputBinding
    extensions: HeaderExtensionsMap
    codec: RTCRtpCodecParameters


class SenderTap:
    """Writes rewritten packets into one sender's transport and keeps its SRs honest.

    ``on_nack(seq)`` replaces aiortc's retransmission (the relay keeps its own history);
    ``on_keyframe_request()`` replaces the encoder's forced keyframe (the relay asks upstream).
    """

    def __init__(
        self,
        sender: RTCRtpSender,
        on_nack: Callable[[int], Awaitable[None]],
        on_keyframe_request: Callable[[], None],
        first_seq: int,
    ) -> None:
        missing = [a for a in _SENDER_ATTRS if not hasattr(sender, a)]
        if missing:
            raise AiortcHookError(f"RTCRtpSender lacks {', '.join(missing)}")
        params = send_parameters(sender)
        if params is None:
            raise AiortcHookError(
                "the sender was negotiated before install_send_capture(); import bridge.relay "
                "before publishing"
            )
        self.sender = sender
        self._neg = _negotiate(sender, params, first_seq)
        s: Any = sender
        s._retransmit = on_nack
        s._send_keyframe = on_keyframe_request
        self.send_errors = 0

    @property
    def binding(self) -> OutputBinding:
        return self._neg.binding

    @property
    def codec(self) -> RTCRtpCodecParameters:
        return self._neg.codec

    def serialize(self, packet: RtpPacket) -> bytes:
        """The plaintext packet with the header extensions this sender negotiated."""
        return packet.serialize(self._neg.extensions)

    async def send(self, data: bytes) -> bool:
        """Send one serialized packet; False (counted) when the transport is not connected."""
        try:
            await self.sender.transport._send_rtp(data)
        except ConnectionError:
            self.send_errors += 1
            return False
        return True

    def count_sent(self, payload_bytes: int) -> None:
        s: Any = self.sender
        s._RTCRtpSender__packet_count += 1
        s._RTCRtpSender__octet_count += payload_bytes

    def set_sr_mapping(self, ntp_timestamp: int, rtp_timestamp: int) -> None:
        """The NTP<->RTP pair aiortc's next SR carries."""
        s: Any = self.sender
        s._RTCRtpSender__ntp_timestamp = ntp_timestamp
        s._RTCRtpSender__rtp_timestamp = rtp_timestamp


def _negotiate(sender: RTCRtpSender, params: RTCRtpSendParameters, first_seq: int) -> _Negotiated:
    codec = params.codecs[0]
    if codec.payloadType is None:
        raise AiortcHookError("the sender's codec has no payload type")
    rtx_pt = next(
        (
            c.payloadType
            for c in params.codecs
            if is_rtx(c) and c.parameters.get("apt") == codec.payloadType
        ),
        None,
    )
    ext = HeaderExtensionsMap()
    ext.configure(params)
    s: Any = sender
    binding = OutputBinding(
        ssrc=s._ssrc,
        payload_type=codec.payloadType,
        mid=params.muxId or None,
        clock_rate=codec.clockRate,
        first_seq=first_seq,
        rtx_ssrc=s._rtx_ssrc if rtx_pt is not None else None,
        rtx_payload_type=rtx_pt,
    )
    return _Negotiated(binding, ext, codec)
