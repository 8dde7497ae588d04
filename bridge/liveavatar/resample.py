"""Streaming resampler from any client format to LiveAvatar's uplink format (s16 24 kHz mono)."""

from __future__ import annotations

import numpy as np
import soxr

from bridge.media import PCM, AudioFormat

UPLINK_FORMAT = AudioFormat(sample_rate=24_000, channels=1)


class UplinkResampler:
    """Downmixes to mono and resamples with one stateful soxr stream.

    The soxr stream carries its filter state across calls, so chunk joins are seamless; it
    holds back a few ms of output, which :meth:`flush` releases at the end of a turn.
    """

    def __init__(self, fmt: AudioFormat, out_rate: int = UPLINK_FORMAT.sample_rate) -> None:
        if fmt.sample_rate <= 0 or fmt.channels <= 0:
            raise ValueError(f"invalid audio format {fmt}")
        self.fmt = fmt
        self.out_rate = out_rate
        self._passthrough = fmt.sample_rate == out_rate
        self._stream = self._new_stream()

    def _new_stream(self) -> soxr.ResampleStream | None:
        if self._passthrough:
            return None
        return soxr.ResampleStream(self.fmt.sample_rate, self.out_rate, 1, dtype="int16")

    def _mono(self, pcm: PCM) -> PCM:
        if self.fmt.channels == 1:
            return pcm
        frames = len(pcm) // self.fmt.channels
        wide = pcm[: frames * self.fmt.channels].reshape(frames, self.fmt.channels)
        # Average in int32: the mean of int16 values always fits back into int16.
        mono: PCM = (wide.astype(np.int32).sum(axis=1) // self.fmt.channels).astype(np.int16)
        return mono

    def process(self, pcm: PCM) -> PCM:
        """Resample interleaved s16 ``pcm`` in the input format; returns 24 kHz mono s16."""
        mono = self._mono(pcm)
        if self._stream is None:
            return mono
        out = self._stream.resample_chunk(mono)
        return np.asarray(out, dtype=np.int16).reshape(-1)

    def flush(self) -> PCM:
        """Release the held-back tail (end of turn) and start a fresh stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._stream = self._new_stream()
        return np.asarray(out, dtype=np.int16).reshape(-1)

    def reset(self) -> None:
        """Drop any held-back audio (interrupt)."""
        self._stream = self._new_stream()
