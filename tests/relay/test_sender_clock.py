"""Capture alignment of the relay's pacing by the avatar's sender reports
(bridge/relay/sender_clock.py), without sockets: an audio and a video stream captured on one
clock, each with its own transit to the bridge (seeded jitter), and SRs mapping RTP to that
clock as a libwebrtc sender's do."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.relay.playout import PlayoutBuffer
from bridge.relay.sender_clock import SenderClock

HOLD = 0.06
NTP_EPOCH = 3_900_000_000.0  # the sender's wall clock (s since 1900) at capture time 0


@dataclass
class Pkt:
    ssrc: int
    timestamp: int
    kind: str
    capture: float  # the sender's capture time (s): what the test checks the output against


@dataclass
class Stream:
    kind: str
    ssrc: int
    rate: int
    origin: int  # RTP timestamp at capture time 0
    transit: float  # best case, capture to the bridge
    period: float
    per_frame: int
    # How long after the capture of its RTP time an SR's NTP is: libwebrtc's audio SRs stamp
    # the moment a packet was complete (one packet's duration), its video SRs the capture.
    sr_lag: float = 0.0

    def ts(self, capture: float) -> int:
        return (self.origin + round(capture * self.rate)) % (1 << 32)

    def sr(self, capture: float, sr_late: float = 0.0) -> tuple[int, int]:
        """An SR's (NTP, RTP) at ``capture``; ``sr_late``: its NTP is a send time that late."""
        ntp = round((NTP_EPOCH + capture + self.sr_lag + sr_late) * (1 << 32))
        return ntp, self.ts(capture)


AUDIO = Stream("audio", 0xA, 48_000, 4_294_000_000, 0.010, 0.020, 1)  # wraps at ~20 s
VIDEO = Stream("video", 0xB, 90_000, 123_456, 0.045, 1 / 30, 3)  # encode + packetisation
# libwebrtc's audio as its SRs describe it (bridge/relay/sender_clock.py's module doc).
LIBWEBRTC_AUDIO = Stream("audio", 0xA, 48_000, 4_294_000_000, 0.010, 0.020, 1, sr_lag=0.020)


def events(
    streams: list[Stream],
    seconds: float,
    rng: random.Random,
    *,
    jitter: float = 0.01,
    sr_from: dict[str, float] | None = None,
    sr_late: float = 0.0,
    t0: float = 100.0,
) -> list[tuple[float, str, Any]]:
    """(our time, "rtp"|"sr", item) sorted; SRs once a second per stream from ``sr_from``."""
    out: list[tuple[float, str, Any]] = []
    for s in streams:
        n = 0
        while n * s.period < seconds:
            c = n * s.period
            arrive = t0 + c + s.transit + rng.uniform(0, jitter)
            for _ in range(s.per_frame):
                out.append((arrive, "rtp", Pkt(s.ssrc, s.ts(c), s.kind, c)))
                arrive += 0.0005
            n += 1
        start = (sr_from or {}).get(s.kind, 0.5)
        k = 0
        while start + k < seconds:
            c = start + k
            late = rng.uniform(0, sr_late)
            out.append((t0 + c + s.transit, "sr", (s.kind, s.ssrc, *s.sr(c, late))))
            k += 1
    out.sort(key=lambda e: e[0])
    return out


def pace(
    evs: list[tuple[float, str, Any]], *, enabled: bool = True, step: float = 0.0005, **kw: Any
) -> tuple[list[tuple[float, Pkt]], SenderClock, dict[str, PlayoutBuffer[Pkt]]]:
    """The relay's use: SRs into the clock; each packet pushed with its kind's lift; the pump
    releases what is due every ``step`` s. Returns (send time, packet)."""
    bufs: dict[str, PlayoutBuffer[Pkt]] = {
        "audio": PlayoutBuffer(48_000, HOLD),
        "video": PlayoutBuffer(90_000, HOLD),
    }
    clock = SenderClock(bufs, enabled=enabled, **kw)
    sent: list[tuple[float, Pkt]] = []
    t = evs[0][0]
    i = 0
    while i < len(evs) or any(len(b) for b in bufs.values()):
        while i < len(evs) and evs[i][0] <= t:
            at, what, item = evs[i]
            if what == "sr":
                clock.on_sr(*item)
            else:
                lift = clock.lift(item.kind, at)
                sent.extend((at, q) for q in bufs[item.kind].push(item, at, lift))
            i += 1
        for b in bufs.values():
            sent.extend((t, q) for q in b.pop_due(t))
        t += step
    return sent, clock, bufs


def lateness(sent: list[tuple[float, Pkt]], kind: str, after: float) -> list[float]:
    """Send time minus capture time (s) of ``kind``'s packets captured after ``after``."""
    return [t - p.capture for t, p in sent if p.kind == kind and p.capture >= after]


def spread(sent: list[tuple[float, Pkt]], after: float) -> tuple[float, float]:
    """(video - audio) of the median send-minus-capture, and the max spread of both kinds."""
    a, v = lateness(sent, "audio", after), lateness(sent, "video", after)
    a.sort()
    v.sort()
    return v[len(v) // 2] - a[len(a) // 2], max(a[-1] - a[0], v[-1] - v[0])


def test_without_srs_each_stream_keeps_its_own_transit() -> None:
    """The state before: video leaves later than the audio captured with it by the difference
    of their best-case transits (35 ms here)."""
    sent, clock, _ = pace(events([AUDIO, VIDEO], 20, random.Random(1)), enabled=False)
    diff, wobble = spread(sent, after=12)
    assert diff == pytest.approx(VIDEO.transit - AUDIO.transit, abs=0.002)
    assert wobble < 0.003
    # The diagnostic is there all the same: what the alignment would take out.
    s = clock.stats()
    assert s["aligned"] and s["video_minus_audio_transit_ms"] == pytest.approx(35, abs=1)
    assert s["lift_ms"] == {"audio": 0.0, "video": 0.0}


def test_srs_align_both_kinds_by_capture_across_a_timestamp_wrap() -> None:
    rng = random.Random(16)
    sent, clock, bufs = pace(events([AUDIO, VIDEO], 20, rng))
    diff, wobble = spread(sent, after=12)  # after the slew (35 ms at 10 %: 0.35 s) and a window
    assert abs(diff) < 0.002, diff
    assert wobble < 0.003
    # The faster stream (audio) is the one held longer; the video is on its own timing.
    assert clock.stats()["lift_ms"]["audio"] == pytest.approx(35, abs=1)
    assert clock.stats()["lift_ms"]["video"] == 0.0
    assert all(b.stats.late == 0 and b.stats.rebases == 0 for b in bufs.values())
    # The audio timestamps wrapped (origin 2^32 - 967,296: at ~20 s) and nothing moved there.
    assert max(p.timestamp for _, p in sent if p.kind == "audio") > 4_290_000_000
    assert [p.capture for _, p in sent if p.kind == "audio"] == sorted(
        p.capture for _, p in sent if p.kind == "audio"
    )


def test_until_both_kinds_have_an_sr_each_keeps_its_own_timing_then_slews() -> None:
    """The audio's first SR comes 5 s in, the video's at once: per-stream timing until 5 s,
    then the lift grows at the slew rate (no step), and the two are aligned after it."""
    evs = events([AUDIO, VIDEO], 12, random.Random(3), sr_from={"audio": 5.0, "video": 0.2})
    sent, _, bufs = pace(evs)
    before, _ = spread([(t, p) for t, p in sent if p.capture < 4.9], after=2)
    assert before == pytest.approx(0.035, abs=0.002)
    diff, _ = spread(sent, after=7)
    assert abs(diff) < 0.002
    # No step: consecutive audio packets never leave closer than 20 ms minus the slew's share.
    audio = [t for t, p in sent if p.kind == "audio" and 4.5 < p.capture < 7]
    gaps = [b - a for a, b in itertools.pairwise(audio)]
    assert min(gaps) > 0.02 - 0.003 and max(gaps) < 0.02 + 0.002 + 0.003
    assert bufs["audio"].stats.late == 0


def test_only_one_kind_with_srs_is_not_aligned() -> None:
    evs = events([AUDIO, VIDEO], 10, random.Random(4), sr_from={"audio": 0.5, "video": 99})
    sent, clock, _ = pace(evs)
    diff, _ = spread(sent, after=6)
    assert diff == pytest.approx(0.035, abs=0.002)
    assert not clock.stats()["aligned"]


def test_send_time_srs_are_taken_at_their_best_case() -> None:
    """SRs whose NTP is their send time (aiortc's), up to 30 ms late: the earliest of the last
    few is the mapping, so the alignment stays within the SRs' best case, not their jitter."""
    evs = events([AUDIO, VIDEO], 20, random.Random(5), sr_late=0.03)
    sent, _, _ = pace(evs)
    diff, _ = spread(sent, after=12)
    assert abs(diff) < 0.008, diff


@pytest.mark.parametrize("jump", [-0.05, 0.05])
def test_sr_jump_is_followed(jump: float) -> None:
    """The video's SRs map RTP to an NTP ``jump`` later from 8 s on (a new mapping for the same
    SSRC: e.g. a forwarding SFU's own send-time SRs until the publisher's came). An earlier
    mapping is taken at its first SR (the minimum), a later one once the last ``history`` SRs
    all carry it."""
    rng = random.Random(6)
    evs: list[tuple[float, str, Any]] = [
        (at, w, (i if w != "sr" or i[0] != "video" or at - 100.0 < 8 else
                 ("video", VIDEO.ssrc, *VIDEO.sr(round(at - 100.0 - VIDEO.transit), jump))))
        for at, w, i in events([AUDIO, VIDEO], 20, rng)
    ]  # fmt: skip
    seen: list[tuple[float, float]] = []  # (time in the call, the clock's video - audio ms)
    bufs: dict[str, PlayoutBuffer[Pkt]] = {
        "audio": PlayoutBuffer(48_000, HOLD),
        "video": PlayoutBuffer(90_000, HOLD),
    }
    clock = SenderClock(bufs, history=5)
    for at, what, item in evs:
        if what == "sr":
            clock.on_sr(*item)
            d = clock.stats().get("video_minus_audio_transit_ms")
            if d is not None:
                seen.append((at - 100.0, d))
        else:
            bufs[item.kind].push(item, at, clock.lift(item.kind, at))
    assert all(d == pytest.approx(35, abs=1) for t, d in seen if 1 < t < 8), seen
    moved = [t for t, d in seen if abs(d - (35 - 1000 * jump)) < 1]
    assert moved, seen
    if jump < 0:
        assert 8 <= moved[0] < 9  # at the first SR with it
    else:
        assert 12 <= moved[0] < 13  # once 5 SRs (8..12 s) carried it


def test_an_ssrc_change_falls_back_until_the_new_streams_sr() -> None:
    """A handover: both kinds change SSRC (and timestamps) at 10 s; the new video's SR comes
    before its first packet, the new audio's 2 s after its first. Per-stream timing between, and
    aligned again after; the buffers rebase once each."""
    rng = random.Random(7)
    a2 = Stream("audio", 0xA2, 48_000, 777, 0.010, 0.020, 1)
    v2 = Stream("video", 0xB2, 90_000, 4_294_900_000, 0.045, 1 / 30, 3)
    first = [e for e in events([AUDIO, VIDEO], 10, rng)]
    second = events([a2, v2], 12, rng, t0=110.0, sr_from={"audio": 2.0, "video": 0.0})
    # Captured on the same clock: the new avatar's capture times continue the old one's.
    for _, what, item in second:
        if what == "rtp":
            item.capture += 10.0
    sent, clock, bufs = pace(first + second)
    assert all(b.stats.rebases == 1 for b in bufs.values())
    gap, _ = spread([(t, p) for t, p in sent if 10.5 <= p.capture < 11.8], after=10.5)
    assert gap == pytest.approx(0.035, abs=0.004)  # the lift slewed back towards 0
    diff, _ = spread(sent, after=15)
    assert abs(diff) < 0.002
    assert clock.stats()["aligned"]


def test_offsets_disagreeing_by_more_than_the_bound_are_not_aligned() -> None:
    far = Stream("video", 0xB, 90_000, 123_456, 0.045 + 0.5, 1 / 30, 3)
    bufs: dict[str, PlayoutBuffer[Pkt]] = {
        "audio": PlayoutBuffer(48_000, HOLD, max_hold_s=2.0),
        "video": PlayoutBuffer(90_000, HOLD, max_hold_s=2.0),
    }
    clock = SenderClock(bufs)
    for at, what, item in events([AUDIO, far], 5, random.Random(8)):
        if what == "sr":
            clock.on_sr(*item)
        else:
            bufs[item.kind].push(item, at, clock.lift(item.kind, at))
    assert clock.target("audio") is None and clock.disagreed > 0
    assert clock.stats()["lift_ms"] == {"audio": 0.0, "video": 0.0}


def test_drift_between_the_senders_clock_and_ours_keeps_the_alignment() -> None:
    """Our clock runs 200 ppm fast against the sender's: both streams drift alike, each buffer's
    window follows it, and the two stay aligned."""
    rng = random.Random(9)
    evs = [(100.0 + (at - 100.0) * 1.0002, w, i) for at, w, i in events([AUDIO, VIDEO], 30, rng)]
    sent, _, bufs = pace(evs)
    for lo in (12, 20, 26):
        diff, _ = spread([(t, p) for t, p in sent if p.capture < lo + 3], after=lo)
        assert abs(diff) < 0.002, (lo, diff)
    assert all(b.stats.late == 0 for b in bufs.values())


def test_libwebrtc_audio_srs_put_the_picture_early_by_one_packet_without_the_capture_lag() -> None:
    """Audio SRs stamped when the 20 ms packet was complete: taken as capture times, the audio
    is held 20 ms too long (the picture early by a packet); ``auto`` takes one packet off."""
    evs = events([LIBWEBRTC_AUDIO, VIDEO], 20, random.Random(21))
    sent, clock, _ = pace(evs)  # the SRs as they are (audio_sr_lag=0)
    diff, _ = spread(sent, after=12)
    assert diff == pytest.approx(-0.020, abs=0.002)
    assert clock.stats()["audio_sr_lag_ms"] == 0.0
    sent, clock, bufs = pace(evs, audio_sr_lag="auto")
    diff, wobble = spread(sent, after=12)
    assert abs(diff) < 0.002, diff
    assert wobble < 0.003
    assert clock.stats()["audio_sr_lag_ms"] == pytest.approx(20.0)
    assert bufs["audio"].packet_s == pytest.approx(0.020)


@pytest.mark.parametrize("lag", ["auto", 0.010])
def test_the_capture_lag_follows_the_packet_duration_or_is_fixed(lag: Any) -> None:
    """10 ms audio packets: ``auto`` reads the 480-tick step, a fixed 10 ms does the same."""
    audio = Stream("audio", 0xA, 48_000, 77, 0.010, 0.010, 1, sr_lag=0.010)
    sent, clock, _ = pace(events([audio, VIDEO], 15, random.Random(22)), audio_sr_lag=lag)
    diff, _ = spread(sent, after=8)
    assert abs(diff) < 0.002, diff
    assert clock.stats()["audio_sr_lag_ms"] == pytest.approx(10.0)


def test_auto_capture_lag_waits_for_two_audio_packets() -> None:
    bufs: dict[str, PlayoutBuffer[Pkt]] = {
        "audio": PlayoutBuffer(48_000, HOLD),
        "video": PlayoutBuffer(90_000, HOLD),
    }
    clock = SenderClock(bufs, audio_sr_lag="auto")
    clock.on_sr("audio", 0xA, *LIBWEBRTC_AUDIO.sr(0.0))
    clock.on_sr("video", 0xB, *VIDEO.sr(0.0))
    bufs["video"].push(Pkt(0xB, VIDEO.ts(0.0), "video", 0.0), 1.0)
    bufs["audio"].push(Pkt(0xA, LIBWEBRTC_AUDIO.ts(0.0), "audio", 0.0), 1.0)
    assert clock.capture_lag("audio") is None and clock.offset("audio") is None
    assert clock.target("audio") is None  # not aligned yet: each kind on its own timing
    bufs["audio"].push(Pkt(0xA, LIBWEBRTC_AUDIO.ts(0.02), "audio", 0.02), 1.02)
    assert clock.capture_lag("audio") == pytest.approx(0.02)
    assert clock.offset("audio") is not None and clock.target("audio") is not None
    assert clock.capture_lag("video") == 0.0


@pytest.mark.parametrize("bad", [-0.001, 0.5])
def test_a_capture_lag_outside_the_lift_bound_is_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        SenderClock({"audio": PlayoutBuffer(48_000, HOLD)}, audio_sr_lag=bad)


def test_packet_duration_survives_loss_reordering_and_an_ssrc_change() -> None:
    buf: PlayoutBuffer[Pkt] = PlayoutBuffer(48_000, HOLD)
    rng = random.Random(23)
    order = [n for n in range(40) if rng.random() > 0.2]  # ~20 % lost
    order[5], order[6] = order[6], order[5]  # one reordered pair
    for i, n in enumerate(order):
        buf.push(Pkt(0xA, (4_294_967_000 + 960 * n) % (1 << 32), "audio", 0.02 * n), 1 + 0.02 * i)
    assert buf.packet_s == pytest.approx(0.020)
    buf.push(Pkt(0xC, 5, "audio", 0.0), 2.0)  # a new stream: its own duration, once known
    assert buf.packet_s is None
    buf.push(Pkt(0xC, 5 + 480, "audio", 0.01), 2.01)
    assert buf.packet_s == pytest.approx(0.010)
