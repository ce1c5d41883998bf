"""Small inline SVG charts and the series behind them, for reports read offline.

A report goes to a compliance officer as one file: no JavaScript, no fonts or
scripts fetched from the network, nothing but SVG elements whose text is
escaped. The series functions are pure (numbers in, numbers out) so the
figures a chart shows can be tested without rendering anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

SPARKS = "▁▂▃▄▅▆▇█"
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
WIDTH, HEIGHT = 640, 220
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 28, 40


@dataclass(frozen=True, kw_only=True, slots=True)
class Span:
    """Something that happened over ``[start, end]`` (seconds) and counted ``amount``."""

    start: float
    end: float
    amount: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Bin:
    lo: float
    hi: float
    count: int


def bucket_edges(start: float, end: float, buckets: int) -> list[float]:
    """``buckets + 1`` equal edges over ``[start, end]``; an empty window gets one second."""
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    width = (end - start if end > start else 1.0) / buckets
    return [start + i * width for i in range(buckets + 1)]


def spread(spans: Sequence[Span], edges: Sequence[float]) -> list[float]:
    """Each span's amount shared among the buckets it overlaps, in proportion to the overlap.

    A chunk that ran from second 3 to 7 over buckets of 2 s adds a quarter, a half and a
    quarter of its rows to three buckets: throughput is not lumped where chunks happen to end.
    A span of no length counts whole in the bucket holding its instant.
    """
    totals = [0.0] * (len(edges) - 1)
    for s in spans:
        lo, hi = min(s.start, s.end), max(s.start, s.end)
        if hi == lo:
            totals[_bucket_of(lo, edges)] += s.amount
            continue
        for i in range(len(totals)):
            overlap = min(hi, edges[i + 1]) - max(lo, edges[i])
            if overlap > 0:
                # The share first: amount × overlap can underflow where the share cannot.
                totals[i] += s.amount * (overlap / (hi - lo))
    return totals


def per_bucket(instants: Sequence[tuple[float, float]], edges: Sequence[float]) -> list[float]:
    """Sum of ``(instant, amount)`` pairs per bucket (instants outside go to the nearest end)."""
    totals = [0.0] * (len(edges) - 1)
    for at, amount in instants:
        totals[_bucket_of(at, edges)] += amount
    return totals


def _bucket_of(at: float, edges: Sequence[float]) -> int:
    for i in range(len(edges) - 1):
        if at < edges[i + 1]:
            return i
    return len(edges) - 2


def histogram(values: Sequence[float], bins: int = 12) -> list[Bin]:
    """Equal-width bins over ``[min, max]``; the last bin includes the maximum."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi == lo:
        return [Bin(lo=lo, hi=hi, count=len(values))]
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    return [Bin(lo=lo + i * width, hi=lo + (i + 1) * width, count=c) for i, c in enumerate(counts)]


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten not below ``value`` (axis top)."""
    if value <= 0:
        return 1.0
    power = math.pow(10.0, math.floor(math.log10(value)))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10.0 * power  # pragma: no cover - the loop always returns


def sparkline(values: Sequence[float]) -> str:
    """One block character per value, for text reports (empty input, empty string)."""
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * len(SPARKS)))] for v in values)


def fmt(value: float) -> str:
    """Short axis label: 12, 1.5k, 2.3M, 0.25."""
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if a >= 1e3:
        return f"{value / 1e3:.3g}k"
    if a >= 1 or a == 0:
        return f"{value:.3g}"
    return f"{value:.2g}"


def _frame(title: str, x_label: str, y_label: str, top: float, body: list[str]) -> str:
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" class="chart">',
        f"<title>{escape(title)}</title>",
        f'<text x="{WIDTH / 2:.0f}" y="16" text-anchor="middle" font-size="13" '
        f'font-family="sans-serif">{escape(title)}</text>',
    ]
    for i in range(5):
        y = MARGIN_TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#ddd"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10" '
            f'font-family="sans-serif">{escape(fmt(top * i / 4))}</text>'
        )
    parts.append(
        f'<text x="{MARGIN_LEFT + plot_w / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle" '
        f'font-size="11" font-family="sans-serif">{escape(x_label)}</text>'
        f'<text x="12" y="{MARGIN_TOP + plot_h / 2:.0f}" text-anchor="middle" font-size="11" '
        f'font-family="sans-serif" transform="rotate(-90 12 {MARGIN_TOP + plot_h / 2:.0f})">'
        f"{escape(y_label)}</text>"
    )
    return "".join([*parts, *body, "</svg>"])


def line_chart(
    xs: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    x_label: str,
    y_label: str,
) -> str:
    """One polyline per named series over ``xs``, a shared y axis from 0 to a round top, and
    a legend naming each series in its colour."""
    if any(len(ys) != len(xs) for ys in series.values()):
        raise ValueError("every series needs one value per x")
    top = nice_ceiling(max((max(ys, default=0.0) for ys in series.values()), default=0.0))
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    width = (x1 - x0) or 1.0
    body = [
        f'<text x="{MARGIN_LEFT}" y="{HEIGHT - 22}" font-size="10" font-family="sans-serif">'
        f"{escape(fmt(x0))}</text>"
        f'<text x="{MARGIN_LEFT + plot_w}" y="{HEIGHT - 22}" text-anchor="end" font-size="10" '
        f'font-family="sans-serif">{escape(fmt(x1))}</text>'
    ]
    for n, (name, ys) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        points = [
            (MARGIN_LEFT + (x - x0) / width * plot_w, MARGIN_TOP + plot_h - y / top * plot_h)
            for x, y in zip(xs, ys, strict=True)
        ]
        body.append(
            f'<text x="{MARGIN_LEFT + 8 + 150 * n}" y="{MARGIN_TOP + 12}" font-size="10" '
            f'font-family="sans-serif" fill="{colour}">{escape(name)}</text>'
        )
        if not points:
            continue
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        body.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}">'
            f"<title>{escape(name)}</title></polyline>"
        )
        body.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{colour}"/>' for x, y in points)
    return _frame(title, x_label, y_label, top, body)


def bar_chart(bins: Sequence[Bin], *, title: str, x_label: str, y_label: str) -> str:
    """One bar per bin, labelled with its lower bound (a histogram)."""
    top = nice_ceiling(float(max((b.count for b in bins), default=0)))
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    slot = plot_w / max(len(bins), 1)
    body = []
    for i, b in enumerate(bins):
        h = b.count / top * plot_h
        x = MARGIN_LEFT + i * slot
        body.append(
            f'<rect x="{x + 1:.1f}" y="{MARGIN_TOP + plot_h - h:.1f}" width="{slot - 2:.1f}" '
            f'height="{h:.1f}" fill="#2ca02c"><title>{escape(fmt(b.lo))}-{escape(fmt(b.hi))}: '
            f"{b.count}</title></rect>"
            f'<text x="{x + slot / 2:.1f}" y="{HEIGHT - 24}" text-anchor="middle" font-size="9" '
            f'font-family="sans-serif">{escape(fmt(b.lo))}</text>'
        )
    return _frame(title, x_label, y_label, top, body)
