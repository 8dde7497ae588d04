"""Pure statistics for the benchmarks: percentiles and Prometheus histogram quantiles."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between order statistics; None if empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, got {q}")
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(
    values: Iterable[float], qs: Mapping[str, float], ndigits: int = 1
) -> dict[str, float | None]:
    vals = list(values)
    out: dict[str, float | None] = {}
    for key, q in qs.items():
        p = percentile(vals, q)
        out[key] = None if p is None else round(p, ndigits)
    return out


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text exposition -> {(name, labels): value}; comments and junk are skipped."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = value
    return out


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_total(samples: Samples, name: str, **match: str) -> float:
    """Sum of every sample ``name`` whose labels include ``match``."""
    want = set(match.items())
    return sum(v for (n, labels), v in samples.items() if n == name and want <= labels)


def histogram_buckets(samples: Samples, name: str, **match: str) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` of histogram ``name`` (summed over other labels), sorted."""
    want = set(match.items())
    acc: dict[float, float] = {}
    for (n, labels), v in samples.items():
        if n != f"{name}_bucket" or not want <= labels:
            continue
        le = dict(labels).get("le")
        if le is None:
            continue
        bound = math.inf if le == "+Inf" else float(le)
        acc[bound] = acc.get(bound, 0.0) + v
    return sorted(acc.items())


def bucket_delta(
    after: list[tuple[float, float]], before: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Per-bound difference of two cumulative snapshots of the same histogram (a time window)."""
    prior = dict(before)
    return [(le, count - prior.get(le, 0.0)) for le, count in after]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Like PromQL's ``histogram_quantile``: linear within the bucket holding the quantile.

    Returns None without observations; a quantile in the +Inf bucket returns the highest finite
    bound (a lower bound of the truth, as Prometheus does).
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank and count > prev_count:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = (le if not math.isinf(le) else prev_le), count
    return prev_le


def histogram_ms(
    after: Samples, before: Samples, name: str, qs: Mapping[str, float], **match: str
) -> dict[str, float | None]:
    """Quantiles (ms) of the observations of ``name`` made between two scrapes, plus the count."""
    delta = bucket_delta(
        histogram_buckets(after, name, **match), histogram_buckets(before, name, **match)
    )
    out: dict[str, float | None] = {}
    for key, q in qs.items():
        v = histogram_quantile(delta, q)
        out[key] = None if v is None else round(1000 * v, 2)
    out["samples"] = delta[-1][1] if delta else 0.0
    return out
