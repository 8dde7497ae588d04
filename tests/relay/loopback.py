"""A Stream side for the relay: an aiortc publisher wired to a receiver that decodes.

It has the shape of ``StreamRelayPublisher`` (join / publish / senders / aclose) without the SFU, so
the relay core is tested over real WebRTC (ICE over the namespace's veth, DTLS, SRTP) on its own.
The receiver decodes every frame, reads the synthetic avatar's frame counter, and can drop every
Nth video packet on arrival (before aiortc sees it, so its NACKs go back to the relay).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.mediastreams import MediaStreamError

from bridge.sim import marks


class IdleTrack(MediaStreamTrack):
    """A sender placeholder whose recv() never returns: the relay writes the packets."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self) -> Any:
        await asyncio.Future()


class LoopbackStream:
    def __init__(
        self, grant: str | None = None, drop_every: int = 0, drop_packets: Iterable[int] = ()
    ) -> None:
        self.grant = grant
        self.drop_every = drop_every
        # Or exactly these video packets (1-based arrival index): a fixed loss pattern.
        self.drop_packets = frozenset(drop_packets)
        self.video_seen = 0
        self.asked: str | None = None
        self.granted_codec: str | None = None
        self.pub: RTCPeerConnection | None = None
        self.sub: RTCPeerConnection | None = None
        self.frames: list[int | None] = []
        # Each decoded frame's pts (RTP ticks since the first): where a frame is missing even
        # when its marks cannot be read.
        self.pts: list[int] = []
        self.audio_samples = 0
        self.audio_rms: list[float] = []
        self.dropped = 0
        self.dropped_seqs: set[int] = set()
        self.recovered_seqs: set[int] = set()
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._video_receiver: RTCRtpReceiver | None = None

    async def join(self, preferred_video_codec: str, fallbacks: Sequence[str] = ()) -> str:
        self.asked = preferred_video_codec
        self.granted_codec = self.grant or preferred_video_codec
        return self.granted_codec

    async def publish(self, video_codec: str, h264_fmtp: str | None = None) -> None:
        pub = self.pub = RTCPeerConnection()
        sub = self.sub = RTCPeerConnection()
        ta = pub.addTransceiver(IdleTrack("audio"), direction="sendonly")
        tv = pub.addTransceiver(IdleTrack("video"), direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        want = [c for c in caps if c.mimeType.lower() == f"video/{video_codec.lower()}"]
        if video_codec.upper() == "H264":
            want = [c for c in want if c.parameters.get("packetization-mode") == "1"]
        rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
        tv.setCodecPreferences(want[:1] + rtx[:1])
        opus = [
            c
            for c in RTCRtpSender.getCapabilities("audio").codecs
            if c.mimeType.lower() == "audio/opus"
        ]
        ta.setCodecPreferences(opus)

        @sub.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            reader = self._read_video(track) if track.kind == "video" else self._read_audio(track)
            task = asyncio.ensure_future(reader)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        await pub.setLocalDescription(await pub.createOffer())
        await sub.setRemoteDescription(pub.localDescription)
        await sub.setLocalDescription(await sub.createAnswer())
        await pub.setRemoteDescription(sub.localDescription)
        async with asyncio.timeout(10):
            while pub.connectionState != "connected" or sub.connectionState != "connected":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        self._video_receiver = next(t.receiver for t in sub.getTransceivers() if t.kind == "video")
        if self.drop_every or self.drop_packets:
            self._install_drop(tv.sender._ssrc, tv.sender._rtx_ssrc)

    def _install_drop(self, video_ssrc: int, rtx_ssrc: int) -> None:
        assert self._video_receiver is not None
        transport: Any = self._video_receiver.transport
        original = transport._handle_rtp_data
        count = 0

        async def handle(data: bytes, arrival_time_ms: int) -> None:
            nonlocal count
            ssrc = int.from_bytes(data[8:12], "big")
            if ssrc == video_ssrc:
                count += 1
                self.video_seen = count
                every = self.drop_every
                if (every and count % every == 0) or count in self.drop_packets:
                    self.dropped += 1
                    self.dropped_seqs.add(int.from_bytes(data[2:4], "big"))
                    return
            elif ssrc == rtx_ssrc:
                # RTX payload starts with the original sequence number (RFC 4588); header
                # extensions (mid, abs-send-time) precede it.
                header = 12 + 4 * (data[0] & 0x0F)
                if data[0] & 0x10:
                    header += 4 + 4 * int.from_bytes(data[header + 2 : header + 4], "big")
                self.recovered_seqs.add(int.from_bytes(data[header : header + 2], "big"))
            await original(data, arrival_time_ms)

        transport._handle_rtp_data = handle

    async def send_pli(self) -> None:
        """What a Stream subscriber does when it needs a picture: PLI to the publisher."""
        assert self._video_receiver is not None and self.pub is not None
        sender = next(t.sender for t in self.pub.getTransceivers() if t.kind == "video")
        await self._video_receiver._send_rtcp_pli(sender._ssrc)

    @property
    def video_sender(self) -> RTCRtpSender:
        assert self.pub is not None
        return next(t.sender for t in self.pub.getTransceivers() if t.kind == "video")

    @property
    def audio_sender(self) -> RTCRtpSender:
        assert self.pub is not None
        return next(t.sender for t in self.pub.getTransceivers() if t.kind == "audio")

    def flush_audio(self) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pc in (self.pub, self.sub):
            if pc is not None:
                await pc.close()

    async def _read_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame: Any = await track.recv()
                yuv = frame.to_ndarray(format="yuv420p")
                m = marks.read_frame(yuv[: frame.height])
                self.frames.append(None if m is None else m.frame_no)
                self.pts.append(frame.pts)

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame: Any = await track.recv()
                pcm = frame.to_ndarray().astype(np.float64)
                self.audio_samples += frame.samples
                self.audio_rms.append(float(np.sqrt((pcm * pcm).mean())))
