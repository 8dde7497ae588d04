"""The DTLS guard on two real aiortc peer connections over loopback: a DTLS transport that cannot
start (here: the answer carries no fingerprint) makes the peer connection ``failed`` and is
counted, where aiortc alone leaves it ``connecting`` for ever."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from prometheus_client import REGISTRY

from bridge import dtls_guard

pytestmark = pytest.mark.netns


def _failures() -> float:
    return REGISTRY.get_sample_value("bridge_dtls_start_failures_total") or 0.0


async def _connect(strip_fingerprint: bool) -> str:
    """Offer/answer between two peer connections; the offerer's state once it settles."""
    offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
    settled = asyncio.Event()

    @offerer.on("connectionstatechange")
    def _state() -> None:
        if offerer.connectionState in ("connected", "failed", "closed"):
            settled.set()

    try:
        offerer.addTransceiver("audio", direction="sendonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        answer = answerer.localDescription.sdp
        if strip_fingerprint:
            answer = re.sub(r"a=fingerprint:.*\r\n", "", answer)
        await offerer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        # Bounded: without the guard the broken case never settles.
        await asyncio.wait_for(settled.wait(), 20)
        return str(offerer.connectionState)
    finally:
        await offerer.close()
        await answerer.close()


async def test_a_dtls_transport_that_cannot_start_fails_its_peer_connection() -> None:
    dtls_guard.install()
    dtls_guard.install()  # idempotent: wrapped once
    before = _failures()
    assert await _connect(strip_fingerprint=False) == "connected"
    assert _failures() == before
    assert await _connect(strip_fingerprint=True) == "failed"
    assert _failures() == before + 1
