"""SDP and codec helpers of the relay publisher's offer: pure functions of strings and aiortc's
capability tables (no socket)."""

from __future__ import annotations

import contextlib
import json

import structlog
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import candidate_from_sdp

from bridge.stream.signalling import json_object

log = structlog.get_logger(__name__)


def is_codec(codec: RTCRtpCodecCapability, mime: str) -> bool:
    return codec.mimeType.lower() == mime


def fmtp_params(fmtp: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in fmtp.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def video_capabilities(codec: str, h264_fmtp: str | None) -> list[RTCRtpCodecCapability]:
    """Exactly one video codec and RTX, as aiortc can offer them."""
    caps = RTCRtpSender.getCapabilities("video").codecs
    rtx = [c for c in caps if is_rtx(c)][:1]
    candidates = [c for c in caps if c.name.upper() == codec and not is_rtx(c)]
    if codec == "H264":
        candidates = [c for c in candidates if c.parameters.get("packetization-mode") == "1"]
        wanted = fmtp_params(h264_fmtp or "").get("profile-level-id", "42e01f").lower()
        exact = [c for c in candidates if str(c.parameters.get("profile-level-id")) == wanted]
        if not exact and candidates:
            log.warning(
                "h264_profile_substituted",
                wanted=wanted,
                offered=candidates[-1].parameters.get("profile-level-id"),
            )
        candidates = exact or candidates[-1:]
    if not candidates:
        raise ValueError(f"aiortc cannot send video codec {codec!r}")
    return candidates[:1] + rtx


def fmtp_line(codec: RTCRtpCodecCapability) -> str:
    return ";".join(f"{k}={v}" for k, v in codec.parameters.items())


def payload_type(sdp: str, mid: str | None, codec: str) -> int | None:
    """The payload type the offer gives ``codec`` in the section of ``mid``."""
    section_mid: str | None = None
    rtpmaps: list[tuple[int, str]] = []
    for line in [*sdp.splitlines(), "m="]:
        if line.startswith("m="):
            if section_mid == mid:
                for pt, name in rtpmaps:
                    if name == codec:
                        return pt
            section_mid, rtpmaps = None, []
        elif line.startswith("a=mid:"):
            section_mid = line[6:].strip()
        elif line.startswith("a=rtpmap:"):
            number, _, encoding = line[9:].partition(" ")
            with contextlib.suppress(ValueError):
                rtpmaps.append((int(number), encoding.split("/")[0].upper()))
    return None


def local_candidates(sdp: str) -> list[str]:
    """Our candidates as the SFU's IceTrickle JSON (all in the first, bundled section)."""
    ufrag, mid, out = None, None, []
    lines: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m=") and mid is not None:
            break  # BUNDLE: the first section's candidates serve every section
        if line.startswith("a=mid:"):
            mid = line[6:].strip()
        elif line.startswith("a=ice-ufrag:"):
            ufrag = line[12:].strip()
        elif line.startswith("a=candidate:"):
            lines.append(line[2:].strip())
    for candidate in lines:
        out.append(
            json.dumps(
                {
                    "candidate": candidate,
                    "sdpMid": mid,
                    "sdpMLineIndex": 0,
                    "usernameFragment": ufrag,
                }
            )
        )
    return out


async def add_candidate(pc: RTCPeerConnection, candidate_json: str) -> None:
    data = json_object(candidate_json)
    line = str(data.get("candidate") or "")
    if not line:
        return
    try:
        candidate = candidate_from_sdp(line.removeprefix("candidate:"))
    except (ValueError, IndexError):
        log.debug("sfu_ice_candidate_unparsable", candidate=line)
        return
    candidate.sdpMid = data.get("sdpMid")
    candidate.sdpMLineIndex = data.get("sdpMLineIndex")
    await pc.addIceCandidate(candidate)
