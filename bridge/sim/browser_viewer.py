"""A person watching a Stream call, stood in for by headless Chromium running Stream's own
browser SDK (``web/stream.html``) against the Stream stand-in: what the demo and the bench report
as ``viewer.*`` (lip sync at the browser's playout, first frame, freezes, fps, the codec).

The page times flash frames with ``requestVideoFrameCallback`` (expected display time) plus the
mark's lead patch (where the sound starts from that frame's media time; a mark lights three
frames so a frame never presented does not lose it), and beep onsets from the audio receiver's
synchronization source (``getSynchronizationSources``, polled every 4 ms: when each packet's
audio left NetEq for playout, and its RFC 6464 level), refined over the following packets (the
packet's first pull; the onset's place inside its packet from the level ratio), on one clock
(``performance.now()``; see ``web/src/stream-page.js``). Calibration and error bound (about
+-3 ms a mark; the audio device's output latency after NetEq not included) are in
docs/sync.md, proven by a negative control (``tests/browser/test_sync_control.py``). The
WebAudio timing (an AudioWorklet on the played stream, mapped with ``getOutputTimestamp()``)
is kept as a diagnostic, ``skew_webaudio_ms``; without audio levels in the packets the report
falls back to it and says so in ``method``.

**The page's clock on the host's.** A caller that puts the viewer's marks or freezes down to its
own events (the continuity bench: skew and freezes after each avatar switch) maps the page's
``performance.now()`` onto the host's ``time.monotonic()`` with :meth:`BrowserViewer.clock`:
the page's clock is read between two host reads, and the host time of that read is their
midpoint, so the offset is off by at most half the round trip, which is kept (the smallest of a
few reads). Both clocks are monotonic, run at the same rate (Chromium's ``performance.now()`` is
the system's monotonic clock on Linux) and are never reset by the page's ``resetViewer()``:
an offset read once holds for the call (its drift over the call is read again at the end and
reported). Resetting the viewer at known host times instead would time nothing inside a window.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import jwt

from bridge.sim.browser import Chromium, Page, find_chromium
from bridge.sim.stream import StreamStandIn
from bridge.sim.web import PageServer, bundle_missing

METHOD_SSRC = (
    "flash: requestVideoFrameCallback expectedDisplayTime + the mark's lead patch; beep onset: "
    "audio delivered for playout (getSynchronizationSources timestamp, first pull over 3 packets, "
    "in-packet position from the RFC 6464 level ratio); device output latency not included"
)
METHOD_WEBAUDIO = (
    "flash: requestVideoFrameCallback expectedDisplayTime; beep onset: AudioWorklet on the played "
    "stream mapped with getOutputTimestamp() (no audio levels in the packets; WebAudio reads "
    "late by tens of ms)"
)
FIRST_WINDOW_MS = 10_000.0
# How far the figure may move from an injected offset (tests/browser/test_sync_control.py).
CONTROL_BOUND_MS = 15.0


def unavailable() -> str | None:
    """Why no browser viewer can run here (a reason to print), or None."""
    if find_chromium() is None:
        return "chromium is not installed (apt-get install chromium)"
    return bundle_missing()


def viewer_token(standin: StreamStandIn, user_id: str) -> str:
    return jwt.encode({"user_id": user_id}, standin.api_secret, algorithm="HS256")


def watch_url(pages: PageServer, standin: StreamStandIn, call_type: str, call_id: str) -> str:
    """A URL a person opens in their own browser to watch the call (everything in the hash)."""
    params = {
        "apiKey": standin.api_key,
        "token": viewer_token(standin, "watcher"),
        "userId": "watcher",
        "baseURL": standin.browser_base_url,
        "locationHintUrl": standin.location_hint_url,
        "callType": call_type,
        "callId": call_id,
    }
    from urllib.parse import urlencode

    return pages.url("stream.html") + "#" + urlencode(params)


def control_moves(
    pairs: list[dict[str, Any]],
    within_ms: float = 600.0,
    steady_ms: float | None = None,
    without_display_late: bool = False,
) -> list[float]:
    """Per control mark (``control`` set by the page), its skew minus the mean skew of the plain
    marks within ``within_ms`` of it: how far the injected offset moved the figure. With
    ``steady_ms``, a control mark counts only where those plain marks agree within it (the
    receivers' delays were steady around it: a jump between them would be read as a move).
    With ``without_display_late``, each mark's skew is taken without its frame's display
    lateness (the page's ``lateMs``: shown that much later than the promptest frame of the
    second before, against its RTP time; marks without it are left out): a loaded browser shows
    some frames a vsync or a frame late, and a steady pattern of that (two frames arriving
    together) can fall on the control marks' frames and not on their neighbours', which says
    nothing about the method."""

    def skew(p: dict[str, Any]) -> float | None:
        if not without_display_late:
            return float(p["skewMs"])
        late = p.get("lateMs")
        return None if late is None else float(p["skewMs"]) - float(late)

    plain = [(p["at"], v) for p in pairs if not p.get("control") and (v := skew(p)) is not None]
    moved = []
    for c in pairs:
        value = skew(c) if c.get("control") else None
        if value is None:
            continue
        near = [v for at, v in plain if abs(at - c["at"]) <= within_ms]
        if not near:
            continue
        if steady_ms is not None and (len(near) < 2 or max(near) - min(near) > steady_ms):
            continue
        moved.append(value - statistics.fmean(near))
    return moved


def receiver_delays(stats: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per kind, the receiver's mean jitter-buffer delay over the call so far, its target and
    minimum now (getStats, ms; video adds its mean decode time): a skew is their difference."""
    out: dict[str, dict[str, float | None]] = {}
    for kind in ("audio", "video"):
        s = stats.get(kind) or {}
        emitted = s.get("jitterBufferEmittedCount") or 0

        def per(key: str, s: dict[str, Any] = s, emitted: float = emitted) -> float | None:
            value = s.get(key)
            return round(1000 * value / emitted, 1) if value is not None and emitted else None

        out[kind] = {
            "jitter_buffer_mean": per("jitterBufferDelay"),
            "jitter_buffer_target_mean": per("jitterBufferTargetDelay"),
            "jitter_buffer_minimum_mean": per("jitterBufferMinimumDelay"),
        }
        if kind == "video":
            frames = s.get("framesDecoded") or 0
            decode = s.get("totalDecodeTime")
            out[kind]["decode_mean"] = (
                round(1000 * decode / frames, 1) if decode is not None and frames else None
            )
    audio, video = out["audio"]["jitter_buffer_mean"], out["video"]["jitter_buffer_mean"]
    decode = out["video"].get("decode_mean") or 0.0
    # What the two receivers alone make of a stream that arrives aligned: a cross-check of the
    # marks' figure that cannot wrap around the marks' period as a pairing can.
    out["difference"] = {
        "video_minus_audio": round(video + decode - audio, 1)
        if audio is not None and video is not None
        else None
    }
    return out


ALIAS_MS = 125.0  # a quarter of the marks' 500 ms period


def skew_check(skews: list[float], delays: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    """Whether the marks' median agrees with what the receivers' delays alone predict for a
    stream arriving aligned. Marks 500 ms apart, paired within 250 ms, alias a skew beyond
    that (-540 ms reads as -40): ``consistent`` false says the figure cannot be trusted."""
    difference = delays.get("difference", {}).get("video_minus_audio")
    if not skews or difference is None:
        return {"receivers_difference_ms": difference, "consistent": None}
    median = statistics.median(skews)
    return {
        "receivers_difference_ms": difference,
        "consistent": abs(median - difference) <= ALIAS_MS,
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))], 1)


def skew_summary(skews: list[float]) -> dict[str, Any]:
    """Signed median; p95/p99 of the magnitude (the goals: |skew| p95 <= 20, p99 <= 40 ms)."""
    mags = [abs(s) for s in skews]
    return {
        "p50": _pct(skews, 0.5),
        "p95": _pct(mags, 0.95),
        "p99": _pct(mags, 0.99),
        "mean": round(statistics.fmean(skews), 1) if skews else None,
        "min": round(min(skews), 1) if skews else None,
        "max": round(max(skews), 1) if skews else None,
        "samples": len(skews),
        "values": [round(s, 1) for s in skews],
    }


@dataclass(frozen=True, slots=True)
class PageClock:
    """The page's ``performance.now()`` (ms) on the host's ``time.monotonic()`` (s)."""

    offset_s: float  # host monotonic seconds at the page's performance.now() == 0
    uncertainty_ms: float  # half the round trip of the read it comes from

    def host_s(self, page_ms: float) -> float:
        return self.offset_s + page_ms / 1000.0


def marks_of(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The viewer report's plain marks (``at`` on the page's clock, ``skewMs``) by the method
    the figure uses: the audio receiver's synchronization source when it saw onsets, else
    WebAudio. Negative-control marks (bridge.sim.avatar set_mark_offset) are never in it."""
    pairs = raw["ssrc"]["skews"] if _uses_ssrc(raw) else raw["skews"]
    return [p for p in pairs if not p.get("control")]


def _uses_ssrc(raw: dict[str, Any]) -> bool:
    """Whether the figure is the audio receiver's synchronization source (it saw onsets)."""
    return int((raw.get("ssrc") or {}).get("onsets", 0)) >= 3


class BrowserViewer:
    """Headless Chromium joined to one call as a viewer. ``async with`` it, then :meth:`join`."""

    def __init__(
        self,
        standin: StreamStandIn,
        call_type: str,
        call_id: str,
        *,
        browser: Chromium | None = None,
        pages: PageServer | None = None,
    ) -> None:
        """``browser`` and ``pages``: a Chromium and a page server the caller runs (a test
        session's shared one); without them the viewer starts its own."""
        self.standin = standin
        self.call_type, self.call_id = call_type, call_id
        self._browser, self._pages = browser, pages
        self._stack = contextlib.AsyncExitStack()
        self.page: Page | None = None
        self.joined_at_ms: float | None = None
        self.reset_at_ms: float | None = None

    async def __aenter__(self) -> BrowserViewer:
        pages = self._pages
        if pages is None:
            pages = await self._stack.enter_async_context(PageServer())
        browser = self._browser
        if browser is None:
            browser = await self._stack.enter_async_context(Chromium.launch())
        self.page = await browser.open(pages.url("stream.html"))
        self._stack.push_async_callback(self.page.close)
        await self.page.wait_for("window.streamPage !== undefined")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _page(self) -> Page:
        if self.page is None:
            raise RuntimeError("the viewer is not started")
        return self.page

    async def join(self, user_id: str = "viewer") -> None:
        page = self._page()
        args = {
            "apiKey": self.standin.api_key,
            "token": viewer_token(self.standin, user_id),
            "userId": user_id,
            "baseURL": self.standin.browser_base_url,
            "locationHintUrl": self.standin.location_hint_url,
        }
        connected = await page.evaluate(f"window.streamPage.connect({json.dumps(args)})", 30)
        if not connected or not connected.get("ok"):
            raise RuntimeError(f"viewer connect failed: {connected} {page.diagnostics()}")
        self.joined_at_ms = float(await page.evaluate("performance.now()"))
        join = {"callType": self.call_type, "callId": self.call_id, "publish": False}
        joined = await page.evaluate(f"window.streamPage.join({json.dumps(join)})", 30)
        if not joined or not joined.get("ok"):
            raise RuntimeError(f"viewer join failed: {joined} {page.diagnostics()}")

    async def first_frame_s(self, within_s: float = 30.0) -> float:
        """Seconds from the viewer's join to its first frame shown."""
        page = self._page()
        at = await page.wait_for("window.streamPage.viewerReport().firstFrameAt", within_s)
        assert self.joined_at_ms is not None
        return round((float(at) - self.joined_at_ms) / 1000, 3)

    async def reset(self) -> None:
        page = self._page()
        await page.evaluate("window.streamPage.resetViewer()")
        self.reset_at_ms = float(await page.evaluate("performance.now()"))

    async def clock(self, reads: int = 10) -> PageClock:
        """The page's clock on the host's (module docstring): of ``reads`` reads, the one with
        the shortest round trip."""
        page = self._page()
        best: PageClock | None = None
        for _ in range(reads):  # bounded
            before = time.monotonic()
            page_ms = float(await page.evaluate("performance.now()"))
            after = time.monotonic()
            read = PageClock((before + after) / 2 - page_ms / 1000, 1000 * (after - before) / 2)
            if best is None or read.uncertainty_ms < best.uncertainty_ms:
                best = read
        assert best is not None
        return best

    async def timeline(self) -> dict[str, Any]:
        """What the viewer saw, each on the page's clock (map it with :meth:`clock`): the marks
        (``at``, ``skewMs``), the freezes (``at``: the frame that ended one; ``ms``: its gap),
        the first frame shown since the last reset."""
        raw = await self._page().evaluate("window.streamPage.viewerReport()")
        return {
            "marks": marks_of(raw),
            "freezes": raw.get("freezeTimes") or [],
            "first_frame_at": raw.get("firstFrameAt"),
        }

    async def receiver_stats(self) -> dict[str, Any]:
        """The page's receivers' getStats now, per kind (cumulative counters)."""
        return dict(await self._page().evaluate("window.streamPage.receiverStats()") or {})

    async def report(self) -> dict[str, Any]:
        page = self._page()
        raw = await page.evaluate("window.streamPage.viewerReport()")
        stats = await page.evaluate("window.streamPage.receiverStats()") or {}
        ssrc = raw.get("ssrc") or {}
        use_ssrc = _uses_ssrc(raw)
        pairs = marks_of(raw)
        skews = [float(s["skewMs"]) for s in pairs]
        start = self.reset_at_ms or 0.0
        first = [float(s["skewMs"]) for s in pairs if s["at"] - start < FIRST_WINDOW_MS]
        video = stats.get("video") or {}
        codec = video.get("codec")
        return {
            "skew_ms": skew_summary(skews),
            "skew_first10s_ms": skew_summary(first),
            "skew_webaudio_ms": skew_summary([float(s["skewMs"]) for s in raw["skews"]]),
            "fps": round(raw["fps"], 2) if raw.get("fps") else None,
            "freezes": raw["freezes"],
            # Frames the browser never presented: a one-frame flash mark in one is lost.
            "frames_not_presented": raw.get("notPresented"),
            "frames": raw["frames"],
            "flashes": raw["flashes"],
            "onsets": (ssrc.get("onsets") if use_ssrc else raw["onsets"]),
            "onsets_uncertain": ssrc.get("uncertain"),
            "codec": codec.split("/")[-1].upper() if codec else None,
            "decoder": {
                "frames_decoded": video.get("framesDecoded"),
                "freeze_count": video.get("freezeCount"),
                "packets_lost": video.get("packetsLost"),
                "nacks_sent": video.get("nackCount"),
                "retransmitted_packets_received": video.get("retransmittedPacketsReceived"),
                "frames_received": video.get("framesReceived"),
                "frames_dropped": video.get("framesDropped"),
                "keyframes_decoded": video.get("keyFramesDecoded"),
                "total_freezes_duration_s": video.get("totalFreezesDuration"),
            },
            "audio_output_latency_ms": raw.get("outputLatencyMs"),
            # Per flash mark: its frame's last packet's arrival (rVFC receiveTime) to its
            # expectedDisplayTime: the video receiver's share of the skew.
            "video_shown_after_receive_ms": _median(raw.get("shownAfterReceiveMs") or []),
            # What the picture's time is, per frame: rVFC expectedDisplayTime and the callback's
            # own `now`, each less the frame's presentationTime (when the compositor took it).
            # Headless Chromium 150: -0.3 ms for both, every frame (docs/sync.md, calibration).
            "video_expected_ahead_ms": _quantiles(raw.get("expectedAheadMs") or []),
            "video_callback_after_presented_ms": _quantiles(raw.get("callbackAfterMs") or []),
            "receiver_delays_ms": (delays := receiver_delays(stats)),
            "skew_check": skew_check(skews, delays),
            "method": METHOD_SSRC if use_ssrc else METHOD_WEBAUDIO,
        }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _quantiles(values: list[float]) -> dict[str, float] | None:
    """p10 / p50 / p90 of ``values`` (ms), or None without any."""
    if not values:
        return None
    s = sorted(values)
    q = {name: round(s[min(len(s) - 1, int(f * len(s)))], 1) for name, f in _QUANTILES}
    return {**q, "n": len(s)}


_QUANTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))
