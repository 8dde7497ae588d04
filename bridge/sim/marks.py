"""Machine-readable sync marks: a barcode and a flash patch in video, beeps and onsets in audio.

The avatar stand-in stamps every frame it renders; the Stream stand-in reads the marks back from
what it decodes and measures A/V skew as ``flash time - onset time``. Pure numpy, no I/O.

Video geometry is relative to the frame width so a uniformly rescaled frame still decodes: the
block size is ``width / 40`` (16 px at 640x360). Two rows of 40 blocks sit at the top of the
picture, each ``1 0 <32 data bits, MSB first> <even parity> 0 1`` followed by three dark blocks.
Row 0 carries the frame number, row 1 the media time in ms (both modulo 2**32). The flash patch
is 3x3 blocks (48x48 px at 640 wide), one block in from the bottom-right corner; it is bright on
flash frames and dark otherwise. Blocks are 235 (bit 1) or 16 (bit 0), BT.601 video range.

The **lead patch** (3x3 blocks, one block left of the flash patch) says how far the mark's sound
starts after this frame's own media time, signed: luma ``LEAD_ZERO + LEAD_PER_MS * lead_ms``.
A frame covers 1/fps of media time (33 ms at 30 fps): without the lead a flash would lead its
sound by 0..1/fps depending on where the onset fell. A renderer lights a few consecutive frames
per mark (a receiver that skips presenting a frame still sees the mark) and each says its own
lead (negative after the onset), so a reader times the mark as ``shown + lead`` on the first
flash frame it sees. Renderers should give the patches neutral chroma (an RGB reader's luma is
then exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "BARCODE_BLOCKS",
    "CONTROL_FLASH",
    "FLASH_FRAMES",
    "LEAD_PER_MS",
    "LEAD_ZERO",
    "TONE_IDS",
    "FrameMarks",
    "OnsetDetector",
    "OnsetTones",
    "barcode_height",
    "beep_train",
    "coded_beeps",
    "mark_boxes",
    "onsets",
    "read_frame",
    "read_lead_ms",
    "stamp_frame",
    "tone_hz",
    "tone_id",
]

HIGH = 235
LOW = 16
_MID = (HIGH + LOW) / 2
# A sampled block this close to the middle grey is unreadable: reject rather than guess.
_MARGIN = 45.0
BARCODE_BLOCKS = 40  # blocks across the frame width
_ROW_BLOCKS = 37  # 2 guard + 32 data + parity + 2 guard
_MIN_WIDTH = 160  # below this a block is 4 px: too small to survive a codec
_FLASH_BLOCKS = 3
CONTROL_FLASH = 160  # a negative-control mark's flash: bright, told apart from HIGH by a reader
LEAD_ZERO = 140  # luma of lead 0 ms
LEAD_PER_MS = 1.25  # luma steps per ms of lead: 0.8 ms resolution
MIN_LEAD_MS = (LOW - LEAD_ZERO) / LEAD_PER_MS  # -99.2
MAX_LEAD_MS = (HIGH - LEAD_ZERO) / LEAD_PER_MS  # +76
# A renderer lights the flash patch on this many consecutive frames from the onset's frame: an
# encoder that drops frames (libwebrtc's frame dropper under load) may drop the first, and a
# reader then finds the onset's frame from the flash's end (see bridge.sim.stream.measure).
FLASH_FRAMES = 3


@dataclass(frozen=True, slots=True)
class FrameMarks:
    frame_no: int
    media_ms: int
    flash: bool


def _block(width: int) -> float:
    return width / BARCODE_BLOCKS


def barcode_height(width: int) -> int:
    """Rows of the picture the barcode covers; renderers keep their content below it."""
    return round(2 * _block(width))


def _row_bits(value: int) -> list[int]:
    data = [(value >> (31 - i)) & 1 for i in range(32)]
    return [1, 0, *data, sum(data) & 1, 0, 1]


def _edges(count: int, size: float) -> list[int]:
    return [round(i * size) for i in range(count + 1)]


def stamp_frame(
    y_plane: npt.NDArray[np.uint8],
    frame_no: int,
    media_ms: int,
    flash: bool,
    lead_ms: float = 0.0,
    control: bool = False,
) -> None:
    """Draw the barcode, the flash patch and the lead patch into ``y_plane`` (an (h, w) uint8
    view) in place. ``lead_ms``: how long after this frame's media time the flash's sound starts
    (negative: before). ``control``: the flash is a negative-control mark (drawn at
    ``CONTROL_FLASH``, still read as a flash)."""
    h, w = y_plane.shape
    b = _block(w)
    if w < _MIN_WIDTH or h < 6 * b:
        raise ValueError(f"frame {w}x{h} too small for sync marks")
    xs = _edges(BARCODE_BLOCKS, b)
    ys = _edges(2, b)
    for row, value in enumerate((frame_no & 0xFFFFFFFF, media_ms & 0xFFFFFFFF)):
        bits = _row_bits(value) + [0] * (BARCODE_BLOCKS - _ROW_BLOCKS)
        line = np.empty(w, dtype=np.uint8)
        for i, bit in enumerate(bits):
            line[xs[i] : xs[i + 1]] = HIGH if bit else LOW
        y_plane[ys[row] : ys[row + 1], :] = line
    x0, y0, x1, y1 = _flash_box(w, h)
    y_plane[y0:y1, x0:x1] = (CONTROL_FLASH if control else HIGH) if flash else LOW
    if not MIN_LEAD_MS <= lead_ms <= MAX_LEAD_MS:
        raise ValueError(f"lead {lead_ms} ms outside {MIN_LEAD_MS}..{MAX_LEAD_MS}")
    x0, y0, x1, y1 = _lead_box(w, h)
    y_plane[y0:y1, x0:x1] = round(LEAD_ZERO + LEAD_PER_MS * lead_ms)


def mark_boxes(w: int, h: int) -> list[tuple[int, int, int, int]]:
    """x0, y0, x1, y1 of the flash and lead patches (a renderer keeps their chroma neutral)."""
    return [_flash_box(w, h), _lead_box(w, h)]


def _lead_box(w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = _flash_box(w, h)
    shift = round((_FLASH_BLOCKS + 1) * _block(w))
    return x0 - shift, y0, x1 - shift, y1


def read_lead_ms(y_plane: npt.NDArray[np.uint8]) -> float | None:
    """The lead patch's value in ms (see the module doc), or None on a frame too small."""
    h, w = y_plane.shape
    b = _block(w)
    if w < _MIN_WIDTH or h < 6 * b:
        return None
    x0, y0, x1, y1 = _lead_box(w, h)
    level = _sample(y_plane, (x0 + x1) / 2, (y0 + y1) / 2, max(1, int(b / 2)))
    return (level - LEAD_ZERO) / LEAD_PER_MS


def _flash_box(w: int, h: int) -> tuple[int, int, int, int]:
    b = _block(w)
    return (
        round(w - (_FLASH_BLOCKS + 1) * b),
        round(h - (_FLASH_BLOCKS + 1) * b),
        round(w - b),
        round(h - b),
    )


def _sample(y_plane: npt.NDArray[np.uint8], cx: float, cy: float, r: int) -> float:
    x, y = int(cx), int(cy)
    return float(y_plane[y - r : y + r + 1, x - r : x + r + 1].mean())


def read_frame(y_plane: npt.NDArray[np.uint8]) -> FrameMarks | None:
    """Decode the marks of a stamped (possibly lossy-coded, uniformly rescaled) luma plane.

    Returns None when any block is ambiguous or a guard or parity check fails, e.g. on a frame
    that was never stamped.
    """
    h, w = y_plane.shape
    b = _block(w)
    if w < _MIN_WIDTH or h < 6 * b:
        return None
    # Sample the middle half of each block: block edges are where codecs smear.
    r = max(1, int(b / 4))
    values: list[int] = []
    for row in range(2):
        cy = (row + 0.5) * b
        means = [_sample(y_plane, (i + 0.5) * b, cy, r) for i in range(_ROW_BLOCKS)]
        if any(abs(m - _MID) < _MARGIN for m in means):
            return None
        bits = [1 if m > _MID else 0 for m in means]
        if bits[:2] != [1, 0] or bits[-2:] != [0, 1]:
            return None
        data = bits[2:34]
        if sum(data) & 1 != bits[34]:
            return None
        value = 0
        for bit in data:
            value = (value << 1) | bit
        values.append(value)
    x0, y0, x1, y1 = _flash_box(w, h)
    flash = _sample(y_plane, (x0 + x1) / 2, (y0 + y1) / 2, max(1, int(b / 2))) > _MID
    return FrameMarks(frame_no=values[0], media_ms=values[1], flash=flash)


class OnsetDetector:
    """Streaming onset detector: a sample where the signal turns loud after a quiet stretch.

    Energy is RMS over 5 ms windows; a window is loud at ``rms >= threshold``. An onset needs at
    least ``min_gap_ms`` of quiet windows before it and is refined to the first sample of the
    window (or the one before) whose magnitude reaches half the threshold. The start of the
    stream counts as quiet. Indices are absolute sample numbers since the detector was created.
    """

    def __init__(self, sample_rate: int, threshold: float = 1000.0, min_gap_ms: int = 100) -> None:
        self._win = max(1, sample_rate // 200)
        self._threshold = threshold
        self._min_quiet = max(1, -(-min_gap_ms * sample_rate // (1000 * self._win)))
        self._quiet = self._min_quiet
        self._pending: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._prev: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._consumed = 0  # absolute index of _pending[0]

    def feed(self, pcm: npt.NDArray[np.int16]) -> list[int]:
        buf = np.concatenate((self._pending, pcm.astype(np.int16, copy=False)))
        n = len(buf) // self._win
        found: list[int] = []
        if n:
            wins = buf[: n * self._win].astype(np.float64).reshape(n, self._win)
            rms = np.sqrt((wins * wins).mean(axis=1))
            for i in range(n):
                if rms[i] >= self._threshold:
                    if self._quiet >= self._min_quiet:
                        found.append(self._refine(buf, i))
                    self._quiet = 0
                else:
                    self._quiet += 1
            self._prev = buf[(n - 1) * self._win : n * self._win]
        self._consumed += n * self._win
        self._pending = buf[n * self._win :].copy()
        return found

    def _refine(self, buf: npt.NDArray[np.int16], i: int) -> int:
        start = i * self._win
        if i > 0:
            region = buf[start - self._win : start + self._win]
            base = start - self._win
        else:
            region = np.concatenate((self._prev, buf[: self._win]))
            base = -len(self._prev)
        hits = np.flatnonzero(np.abs(region.astype(np.int32)) >= self._threshold / 2)
        offset = int(hits[0]) if len(hits) else len(region) - self._win
        return self._consumed + base + offset


def onsets(
    pcm: npt.NDArray[np.int16],
    sample_rate: int,
    threshold: float = 1000.0,
    min_gap_ms: int = 100,
) -> list[int]:
    """Sample indices in mono ``pcm`` where energy rises after >= ``min_gap_ms`` of quiet."""
    return OnsetDetector(sample_rate, threshold, min_gap_ms).feed(pcm)


def beep_train(
    sample_rate: int,
    count: int,
    period_ms: int,
    beep_ms: int,
    freq_hz: float = 1000.0,
    amplitude: float = 0.5,
) -> npt.NDArray[np.int16]:
    """Test audio: ``count`` sine beeps, one at the start of each period, silence in between.

    Beep k starts at sample ``k * period_ms * sample_rate // 1000``. 1 ms raised-cosine ramps
    avoid clicks without moving the onset measurably.
    """
    if beep_ms >= period_ms:
        raise ValueError("beep_ms must be shorter than period_ms")
    period = period_ms * sample_rate // 1000
    beep_n = beep_ms * sample_rate // 1000
    t = np.arange(beep_n) / sample_rate
    beep = np.sin(2 * np.pi * freq_hz * t) * amplitude * 32767
    ramp = min(beep_n // 2, max(1, sample_rate // 1000))
    env = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    beep[:ramp] *= env
    beep[beep_n - ramp :] *= env[::-1]
    out = np.zeros(period * count, dtype=np.int16)
    one = beep.astype(np.int16)
    for k in range(count):
        out[k * period : k * period + beep_n] = one
    return out


# Coded beeps: beep k sounds at tone_hz(k), so that a listener tells beeps apart (which one was
# lost, which one was heard twice). Ids repeat every TONE_IDS beeps: a reader recovers the
# absolute number from the previous one as long as fewer than TONE_IDS / 2 go missing in a row.
# Tones 8 % apart, 400..2350 Hz: a jitter buffer that time-stretches a tone (NetEq on the
# transcode path's downlink) moved its measured pitch by up to 3.5 % (85 Hz at 2.4 kHz, in the
# continuity bench), so steps are relative and a reading within 40 % of a step counts.
TONE_IDS = 24
_TONE_BASE_HZ = 400.0
_TONE_RATIO = 1.08
# The window read after an onset: past its 1 ms ramp and the detector's few ms of placement
# error, within a 100 ms beep.
_TONE_WINDOW_MS = (10, 90)


def tone_hz(k: int) -> float:
    return float(_TONE_BASE_HZ * _TONE_RATIO ** (k % TONE_IDS))


def tone_id(freq_hz: float) -> int | None:
    """The id (0..TONE_IDS-1) of a tone at ``freq_hz``, or None when it is none of them."""
    if freq_hz <= 0:
        return None
    steps = math.log(freq_hz / _TONE_BASE_HZ) / math.log(_TONE_RATIO)
    k = round(steps)
    if not 0 <= k < TONE_IDS or abs(steps - k) > 0.4:
        return None
    return k


def coded_beeps(
    sample_rate: int, first: int, count: int, period_ms: int, beep_ms: int
) -> npt.NDArray[np.int16]:
    """``count`` beeps as :func:`beep_train`, beep i at ``tone_hz(first + i)``."""
    return np.concatenate(
        [beep_train(sample_rate, 1, period_ms, beep_ms, tone_hz(first + i)) for i in range(count)]
    )


class OnsetTones:
    """The dominant frequency of the sound just after each onset of a stream (see coded beeps).

    Fed the stream's consecutive mono PCM and the onsets found in it (absolute sample indices
    since creation, as :class:`OnsetDetector` numbers them); returns ``(onset, freq_hz)`` once
    the window after an onset has arrived. Keeps only the samples a pending onset needs.
    """

    def __init__(self, sample_rate: int) -> None:
        self._rate = sample_rate
        lo, hi = _TONE_WINDOW_MS
        self._lo = lo * sample_rate // 1000
        self._hi = hi * sample_rate // 1000
        self._buf: npt.NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._base = 0  # absolute index of _buf[0]
        self._pending: list[int] = []

    def feed(self, pcm: npt.NDArray[np.int16], onsets: list[int]) -> list[tuple[int, float]]:
        self._buf = np.concatenate((self._buf, pcm.astype(np.int16, copy=False)))
        self._pending.extend(onsets)
        end = self._base + len(self._buf)
        out: list[tuple[int, float]] = []
        while self._pending and self._pending[0] + self._hi <= end:
            onset = self._pending.pop(0)
            a = max(0, onset + self._lo - self._base)
            window = self._buf[a : onset + self._hi - self._base]
            out.append((onset, self._peak_hz(window)))
        # Keep from the oldest pending onset's window on, or nothing before the window a future
        # onset (at most a few ms before the newest samples) needs.
        keep_from = self._pending[0] + self._lo if self._pending else end - self._hi
        drop = max(0, min(len(self._buf), keep_from - self._base))
        self._buf = self._buf[drop:]
        self._base += drop
        return out

    def _peak_hz(self, window: npt.NDArray[np.int16]) -> float:
        if len(window) < 8:
            return 0.0
        x = window.astype(np.float64) * np.hanning(len(window))
        n = 1 << (len(x) * 4 - 1).bit_length()  # zero-padded: a finer grid to interpolate on
        mag = np.abs(np.fft.rfft(x, n))
        i = int(np.argmax(mag[1:-1])) + 1
        a, b, c = np.log(mag[i - 1 : i + 2] + 1e-9)
        shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c != 0 else 0.0
        return float((i + shift) * self._rate / n)
