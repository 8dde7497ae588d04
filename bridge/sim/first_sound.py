"""The client's first AUDIO byte -> first sound at the Stream receiver, split into its parts, each
from a stamp taken where it happens (for the bench and the demo; docs/performance.md).

Stamps, all on this host's clock (the daemon's unix-time gauges are mapped onto the monotonic
clock of the process that reads them):

* ``t0``: the client wrote the turn's first AUDIO frame (the caller's own stamp);
* the daemon's ``bridge_liveavatar_first_chunk_seconds`` (buffer, send) for the turn;
* the LiveAvatar stand-in: the turn's first ``agent.speak`` in, the release of the audio frame
  carrying its first sample (the renderer's real-time playout);
* the daemon's ``bridge_avatar_audio_onset_timestamp_seconds{path,point}``: the avatar's speech
  into the media path from LiveKit (``in``) and out to the call (``out``);
* the Stream stand-in's receiver: the first onset heard at or after ``t0`` (its receipt time
  less its modelled playout hold, as for every audio figure it reports).

Parts: ``client_to_daemon`` (what is left of t0 -> the stand-in's receipt after the two uplink
parts: the socket, the resampler, the WebSocket wire), ``first_chunk_buffer``, ``uplink_send``,
``render_start`` (the stand-in's render latency), ``livekit_hop`` (playout -> into the bridge:
encode, the LiveKit stand-in, decode on the transcode path), ``path_hold`` (through the bridge),
``stream_hop`` (out of the bridge -> heard: the Stream SDK's queue and encoder on the transcode
path, the SFU stand-in, the receiver's decoding). A part whose stamp is missing is None.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

FIRST_CHUNK = "bridge_liveavatar_first_chunk_seconds"
ONSET = "bridge_avatar_audio_onset_timestamp_seconds"

PARTS = (
    "client_to_daemon",
    "first_chunk_buffer",
    "uplink_send",
    "render_start",
    "livekit_hop",
    "path_hold",
    "stream_hop",
)


def first_chunk(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """The turn's first-chunk parts (seconds), from two scrapes around exactly one turn."""
    out: dict[str, float] = {}
    for part in ("buffer", "send"):
        key = f'{part}"}}'
        total = {
            k: after[k] - before.get(k, 0.0)
            for k in after
            if k.startswith(FIRST_CHUNK) and k.endswith(key)
        }
        count = next((v for k, v in total.items() if "_count{" in k), 0.0)
        if count == 1:
            out[part] = next(v for k, v in total.items() if "_sum{" in k)
    return out


def onsets(
    after: Mapping[str, float], before: Mapping[str, float], path: str
) -> dict[str, float | None]:
    """The daemon's onset stamps for ``path`` that changed between the scrapes, as monotonic
    times of this process."""
    unix_to_mono = time.monotonic() - time.time()
    out: dict[str, float | None] = {}
    for point in ("in", "out"):
        key = f'{ONSET}{{path="{path}",point="{point}"}}'
        value = after.get(key)
        out[point] = (
            value + unix_to_mono if value is not None and value != before.get(key) else None
        )
    return out


def parts(
    t0: float,
    chunk: Mapping[str, float],
    turn: Mapping[str, Any] | None,
    bridge: Mapping[str, float | None],
    heard: Iterable[float],
) -> dict[str, Any]:
    """The parts in ms (see the module doc) and their ``total`` (t0 -> heard)."""
    heard_t = min((t for t in heard if t >= t0), default=None)
    rx = turn.get("first_audio_rx_t") if turn else None
    # The frame that carries the first sample leaves the renderer at its tick (the sample may
    # sit up to 20 ms into it; the receiver's onset includes that offset, in stream_hop).
    play = turn.get("first_frame_t") if turn else None
    into, out = bridge.get("in"), bridge.get("out")
    buffer, send = chunk.get("buffer"), chunk.get("send")

    def ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(1000 * (b - a), 1)

    values: dict[str, Any] = {
        "client_to_daemon": (
            None
            if rx is None or buffer is None or send is None
            else round(1000 * (rx - t0 - buffer - send), 1)
        ),
        "first_chunk_buffer": None if buffer is None else round(1000 * buffer, 1),
        "uplink_send": None if send is None else round(1000 * send, 1),
        "render_start": ms(rx, play),
        "livekit_hop": ms(play, into),
        "path_hold": ms(into, out),
        "stream_hop": ms(out, heard_t),
        "total": ms(t0, heard_t),
        "underruns": turn.get("underruns") if turn else None,
    }
    return values


def turn_after(stats: Mapping[str, Any], t0: float) -> Mapping[str, Any] | None:
    """The stand-in's first turn whose audio arrived at or after ``t0``."""
    turns = [t for t in stats.get("turns", {}).values() if t["first_audio_rx_t"] >= t0]
    return min(turns, key=lambda t: t["first_audio_rx_t"], default=None)
