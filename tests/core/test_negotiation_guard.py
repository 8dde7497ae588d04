"""The negotiation guard on two real aiortc peer connections over loopback.

The signalling order of a LiveKit subscriber (data channels first, the avatar's tracks a moment
later) or a Stream viewer connection (a participant's tracks added while it connects): a second
offer/answer lands while the first DTLS handshake runs. aiortc alone never starts the second
negotiation's RTP sender and receiver (checked by hand: without ``install()`` the receiving track
gets no frame and ``unstarted`` lists ``1:sender`` and ``1:receiver``); with the guard it plays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aioice
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack
from prometheus_client import REGISTRY

from bridge import negotiation_guard

pytestmark = pytest.mark.netns

# Generous: on a connected loopback pair the first audio frame arrives within ~100 ms.
FIRST_FRAME_S = 20.0


def _late_starts() -> float:
    return REGISTRY.get_sample_value("bridge_late_track_starts_total") or 0.0


async def _negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


def _hold_ice(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """ICE checks wait until the returned event is set: the handshake the first negotiation
    starts is still under way when the second one lands, however loaded the machine (under
    load it once finished first). aioice's, not the bridge's, code is held."""
    gate = asyncio.Event()
    connect: Callable[[aioice.Connection], Awaitable[None]] = aioice.Connection.connect

    async def held(self: aioice.Connection, *args: Any, **kwargs: Any) -> None:
        await gate.wait()
        await connect(self, *args, **kwargs)

    monkeypatch.setattr(aioice.Connection, "connect", held)
    return gate


async def _first_frame_of_a_track_negotiated_mid_handshake(
    ice: asyncio.Event,
) -> tuple[str, str]:
    """(DTLS state when the second answer was applied, what the received track got)."""
    offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
    received: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @answerer.on("track")
    def _track(track: MediaStreamTrack) -> None:
        if not received.done():
            received.set_result(track)

    try:
        offerer.createDataChannel("signal")
        await _negotiate(offerer, answerer)  # data channel only: handshake starts now
        offerer.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await _negotiate(offerer, answerer)  # the track, while the handshake is under way
        sctp = offerer.sctp
        assert sctp is not None
        dtls_at_second_answer = str(sctp.transport.state)
        ice.set()
        track = await asyncio.wait_for(received, FIRST_FRAME_S)
        try:
            await asyncio.wait_for(track.recv(), FIRST_FRAME_S)
            got = "frame"
        except TimeoutError:
            got = f"no frame; unstarted {negotiation_guard.unstarted(offerer)}"
            got += f" / {negotiation_guard.unstarted(answerer)}"
        return dtls_at_second_answer, got
    finally:
        await offerer.close()
        await answerer.close()


async def test_a_track_negotiated_during_the_dtls_handshake_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    negotiation_guard.install()
    negotiation_guard.install()  # idempotent: wrapped once
    before = _late_starts()
    dtls_state, got = await _first_frame_of_a_track_negotiated_mid_handshake(_hold_ice(monkeypatch))
    # The case under test: the second answer landed before DTLS was up.
    assert dtls_state in ("new", "connecting"), dtls_state
    assert got == "frame"
    # Both ends had a late track: the offerer's sender and the answerer's receiver.
    assert _late_starts() >= before + 2
