"""The Stream stand-in's ICE candidates go out as Stream's SFU sends them: trickled
(``SfuEvent.ice_trickle``), not in the SDP (``bridge.sim.stream.server.split_candidates``).

The SDKs' own flows (tests/stream, tests/browser) connect only through these trickles, since
the stand-in's answers and offers no longer carry a candidate; here the split itself, on a
real aiortc description, and a loopback connection made from its two halves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiortc import RTCPeerConnection, RTCSessionDescription

from bridge.sim.stream.server import _add_candidate, split_candidates


async def _local_offer(pc: RTCPeerConnection) -> str:
    pc.addTransceiver("audio")
    pc.addTransceiver("video")
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


async def test_the_description_loses_its_candidates_and_each_is_trickled_once() -> None:
    pc = RTCPeerConnection()
    try:
        sdp = await _local_offer(pc)
    finally:
        await pc.close()
    stripped, trickles = split_candidates(sdp)

    lines = sdp.split("\r\n")
    in_first = lines[: [i for i, ln in enumerate(lines) if ln.startswith("m=")][1]]
    expected = [ln.removeprefix("a=") for ln in in_first if ln.startswith("a=candidate:")]
    assert expected, sdp  # aiortc gathered (the loopback at least)
    inits = [json.loads(t) for t in trickles]
    assert [i["candidate"] for i in inits] == expected
    ufrag = next(ln for ln in lines if ln.startswith("a=ice-ufrag:")).split(":", 1)[1]
    first_mid = next(ln for ln in lines if ln.startswith("a=mid:")).split(":", 1)[1]
    assert {(i["usernameFragment"], i["sdpMid"], i["sdpMLineIndex"]) for i in inits} == {
        (ufrag, first_mid, 0)
    }
    # Nothing else changed: every other line kept, in order.
    assert stripped.split("\r\n") == [
        ln for ln in lines if not ln.startswith("a=candidate:") and ln != "a=end-of-candidates"
    ]
    assert "a=candidate" not in stripped and "end-of-candidates" not in stripped


async def _connect(*, trickle: bool) -> str:
    """A loopback pair whose only candidates are the answerer's trickles (the offer goes without
    its own, so the answerer cannot reach the offerer first): the offerer's state after."""
    offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
    try:
        offer, _ = split_candidates(await _local_offer(offerer))
        await answerer.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await answerer.setLocalDescription(await answerer.createAnswer())
        answer, trickles = split_candidates(answerer.localDescription.sdp)
        await offerer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        for candidate in trickles if trickle else ():
            await _add_candidate(offerer, candidate)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20 if trickle else 2):
                while offerer.connectionState not in ("connected", "failed"):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        return str(offerer.connectionState)
    finally:
        await offerer.close()
        await answerer.close()


async def test_a_connection_comes_up_from_the_stripped_answer_and_the_trickles() -> None:
    assert await _connect(trickle=True) == "connected"


async def test_without_the_trickles_the_stripped_answer_has_nothing_to_connect_to() -> None:
    # The negative control: the candidates really are gone from the SDP.
    assert await _connect(trickle=False) != "connected"
